"""Logits processors and warpers for generate(), with transformers 4.57's semantics.

Which processors run, with which options and in which order, is decided framework-free
(gpt2/common/decoding.py ``processor_specs``, ``PROCESSOR_ORDER``); ``build_processors`` turns that list into torch
functions. Each is ``(ids, length, scores (B, V)) -> scores``: ``ids`` is the fixed-size (B, max_length) buffer of
the run, of which only the first ``length`` positions are written; a processor reads nothing at or past
``length`` (repetition penalty: ids[:, :length]; no_repeat_ngram: the n-grams below it; forced eos: length alone), so
TF and JAX can write the same processors inside a compiled loop. The caller's transformers-style processors,
``(ids (B, t), scores) -> scores``, are adapted at this boundary by slicing (``custom_processor``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..common.decoding import ProcessorSpec

# (ids buffer (B, max_length), length, scores (B, V)) -> scores
Processor = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def build_processors(specs: list[ProcessorSpec], *, vocab_size: int, device, custom=(),
                     prefix_fn=None) -> list[Processor]:
    """The processors of ``specs``, in their order; the caller's ``custom`` callables (transformers' interface)
    where the "custom" entry stands; ``prefix_fn`` for the "prefix_allowed_tokens" entry."""
    out: list[Processor] = []
    for spec in specs:
        if spec.name == "custom":
            out += [custom_processor(fn) for fn in custom]
        elif spec.name == "prefix_allowed_tokens":
            out.append(_prefix_allowed(prefix_fn, **spec.options))
        else:
            out.append(_BUILDERS[spec.name](vocab_size=vocab_size, device=device, **spec.options))
    return out


def custom_processor(fn) -> Processor:
    """A caller's processor called as transformers calls it: with the ids so far (B, t)."""
    def apply(ids, length, scores):
        return fn(ids[:, :length], scores)
    return apply


def run_processors(processors: list[Processor], ids: torch.Tensor, length: int, scores: torch.Tensor) -> torch.Tensor:
    for processor in processors:
        scores = processor(ids, length, scores)
    return scores


# -- processors -------------------------------------------------------------------------------------------------------
def _sequence_bias(*, bias: dict[tuple, float], vocab_size: int, device) -> Processor:
    """Add ``bias[seq]`` to the last token of ``seq`` when the ids end with the rest of it (bad words: -inf)."""
    single = torch.zeros(vocab_size, dtype=torch.float32, device=device)
    for seq, b in bias.items():
        if len(seq) == 1:
            single[seq[0]] = b
    longer = [(torch.tensor(seq[:-1], device=device), seq[-1], b) for seq, b in bias.items() if len(seq) > 1]

    def apply(ids, length, scores):
        total = torch.zeros_like(scores) + single
        for prefix, last, b in longer:
            if len(prefix) + 1 <= length:
                match = torch.eq(ids[:, length - len(prefix): length], prefix).prod(dim=1).bool()
                total[:, last] += torch.where(match, torch.tensor(b, device=device), torch.tensor(0.0, device=device))
        return scores + total
    return apply


def _repetition_penalty(*, penalty: float, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):  # every id so far, prompt (and its padding) included, penalised once
        seen = ids[:, :length]
        score = torch.gather(scores, 1, seen)
        return scores.scatter(1, seen, torch.where(score < 0, score * penalty, score / penalty))
    return apply


def _no_repeat_ngram(*, n: int, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):  # ban every token that would complete an n-gram already in the row
        if length < n:  # (transformers: no n-gram is complete yet)
            return scores
        grams = ids[:, :length].unfold(1, n, 1)  # (B, length - n + 1, n)
        hit = (grams[:, :, :-1] == ids[:, None, length - n + 1: length]).all(-1)  # (B, length - n + 1)
        rows, cols = hit.nonzero(as_tuple=True)
        scores = scores.clone()
        scores[rows, grams[rows, cols, -1]] = -math.inf
        return scores
    return apply


def _min_length(*, min_length: int, eos: list[int], vocab_size: int, device) -> Processor:
    """No eos before ``min_length`` ids (min_length and min_new_tokens both resolve to it)."""
    return _fill_columns(eos, lambda length: length < min_length, vocab_size=vocab_size, device=device)


def _fill_columns(tokens, when, *, vocab_size: int, device) -> Processor:
    """-inf in the columns ``tokens`` (ids outside the vocabulary ignored, as torch.isin does) when ``when(length)``:
    a copy of the scores with a few columns filled (index_fill), not a pass over the vocabulary (torch.where with a
    (V,) mask: ~5x the time on the CPU for one row, and split over ATen's threads)."""
    columns = torch.tensor(sorted({int(i) for i in tokens if 0 <= int(i) < vocab_size}), dtype=torch.long,
                           device=device)
    return lambda ids, length, s: s.index_fill(1, columns, -math.inf) if when(length) else s


def _force(*, token, at_length: int, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        if length != at_length:
            return scores
        forced = torch.full_like(scores, -math.inf)
        forced[:, token] = 0
        return forced
    return apply


def _remove_invalid(*, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        out = torch.where(scores != scores, 0.0, scores)
        out = torch.where(scores == math.inf, torch.finfo(scores.dtype).max, out)
        return torch.where(scores == -math.inf, torch.finfo(scores.dtype).min, out)
    return apply


def _decay_penalty(*, start: int, factor: float, eos: list[int], vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        if length <= start:
            return scores
        penalties = torch.zeros_like(scores)
        penalties[:, eos] = torch.abs(scores[:, eos]) * (pow(factor, length - start) - 1)
        return scores + penalties
    return apply


def _suppress(*, tokens, at_length: int | None, vocab_size: int, device) -> Processor:
    """-inf for ``tokens``, at every step (``at_length`` None) or when the ids are ``at_length`` long."""
    return _fill_columns(tokens, lambda length: at_length in (None, length), vocab_size=vocab_size, device=device)


def _prefix_allowed(fn, num_beams: int) -> Processor:
    """transformers' PrefixConstrainedLogitsProcessor: only ``fn(batch_id, row ids)`` may follow each row."""
    def apply(ids, length, scores):
        mask = torch.full_like(scores, -math.inf)
        for row, sent in enumerate(ids[:, :length]):
            allowed = fn(row // num_beams, sent)
            if len(allowed) == 0:
                raise ValueError(f"prefix_allowed_tokens_fn returned no allowed token for batch {row // num_beams} "
                                 f"(beam {row % num_beams}): it must allow at least one")
            mask[row, allowed] = 0
        return scores + mask
    return apply


def _renormalize(*, vocab_size: int, device) -> Processor:
    return lambda ids, length, s: s.log_softmax(dim=-1)


# -- warpers (sampling only): filtered tokens get -inf, at least ``keep`` tokens stay --------------------------------
def _temperature(*, temperature: float, vocab_size: int, device) -> Processor:
    return lambda ids, length, s: s / temperature


def _top_k(*, k: int, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        kth = torch.topk(scores, min(k, scores.size(-1)))[0][..., -1, None]
        return scores.masked_fill(scores < kth, -math.inf)
    return apply


def _top_p(*, p: float, keep: int, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
        remove[..., -keep:] = 0
        return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)
    return apply


def _min_p(*, min_p: float, keep: int, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        probs = torch.softmax(scores, dim=-1)
        remove = probs < min_p * probs.max(dim=-1, keepdim=True)[0]
        sorted_indices = torch.argsort(scores, descending=True, dim=-1)
        sorted_remove = torch.gather(remove, dim=-1, index=sorted_indices)
        sorted_remove[..., :keep] = False
        return scores.masked_fill(sorted_remove.scatter(1, sorted_indices, sorted_remove), -math.inf)
    return apply


def _typical(*, mass: float, keep: int, vocab_size: int, device) -> Processor:
    def apply(ids, length, scores):
        normalized = F.log_softmax(scores, dim=-1)
        ent = -(normalized * torch.exp(normalized)).nansum(-1, keepdim=True)
        sorted_scores, sorted_indices = torch.sort(torch.abs(-normalized - ent), descending=False)
        cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < mass).sum(dim=1).clamp_(max=sorted_scores.shape[-1] - 1)
        remove = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
        remove[..., :keep] = 0
        return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)
    return apply


def _cutoff(threshold, keep: int) -> Processor:
    """epsilon / eta sampling: drop tokens whose probability is below threshold(scores), keeping the top ``keep``."""
    def apply(ids, length, scores):
        remove = scores.softmax(dim=-1) < threshold(scores)
        kth = torch.topk(scores, min(keep, scores.size(-1)))[0][..., -1, None]
        return scores.masked_fill(remove & (scores < kth), -math.inf)
    return apply


def _epsilon(*, epsilon: float, keep: int, vocab_size: int, device) -> Processor:
    return _cutoff(lambda s: epsilon, keep)


def _eta(*, eta: float, keep: int, vocab_size: int, device) -> Processor:
    eps = torch.tensor(eta, device=device)
    return _cutoff(lambda s: torch.min(eps, torch.sqrt(eps) * torch.exp(
        -torch.distributions.Categorical(logits=s).entropy()))[..., None], keep)


# The builder of each name of PROCESSOR_ORDER ("custom" and "prefix_allowed_tokens" take the caller's callables).
_BUILDERS = {
    "sequence_bias": _sequence_bias, "repetition_penalty": _repetition_penalty, "no_repeat_ngram": _no_repeat_ngram,
    "bad_words": _sequence_bias, "min_length": _min_length, "forced_bos": _force, "forced_eos": _force,
    "remove_invalid_values": _remove_invalid, "exponential_decay_length_penalty": _decay_penalty,
    "suppress_tokens": _suppress, "begin_suppress_tokens": _suppress, "temperature": _temperature, "top_k": _top_k,
    "top_p": _top_p, "min_p": _min_p, "typical_p": _typical, "epsilon_cutoff": _epsilon, "eta_cutoff": _eta,
    "renormalize_logits": _renormalize,
}
