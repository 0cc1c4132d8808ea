"""Logits processors and warpers for generate(), in transformers 4.57's order and with its semantics.

Each processor is a function (ids so far (B, t), scores (B, V)) -> scores; ``logits_processors`` builds the list a
GenerationConfig asks for, ``run_processors`` applies it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..common.generation import GenerationConfig

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids so far (B, t), scores (B, V)) -> scores


# -- logits processors, in transformers' order ----------------------------------------------------------------------
def logits_processors(cfg: GenerationConfig, vocab_size: int, prompt_length: int, min_length: int, max_length: int,
                      eos: list[int], device, custom: list[Processor] = (), prefix_fn=None) -> list[Processor]:
    """The processors ``cfg`` asks for, in the order of transformers 4.57's ``_get_logits_processor``; the caller's
    ``custom`` ones after them; the warpers (temperature, top_k, top_p, min_p, typical_p, epsilon, eta) only when
    sampling, with filter value -inf and min_tokens_to_keep 1 (beam sampling: number of eos ids + 1)."""
    out: list[Processor] = []
    eos_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    eos_mask[[i for i in eos if i < vocab_size]] = True
    if cfg.sequence_bias is not None:
        bias = cfg.sequence_bias
        out.append(_sequence_bias({tuple(k): float(v) for k, v in (bias.items() if isinstance(bias, dict) else bias)},
                                  vocab_size, device))
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        out.append(_repetition_penalty(float(cfg.repetition_penalty)))
    if cfg.no_repeat_ngram_size:
        out.append(_no_repeat_ngram(cfg.no_repeat_ngram_size))
    if cfg.bad_words_ids is not None:  # a bad word that is one eos id is dropped (transformers' rule)
        words = [w for w in cfg.bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        out.append(_sequence_bias({tuple(w): -math.inf for w in words}, vocab_size, device))
    if eos and min_length > 0:  # min_length and min_new_tokens: both are "no eos before min_length"
        out.append(lambda ids, s: torch.where(eos_mask, -math.inf, s) if ids.shape[-1] < min_length else s)
    if prefix_fn is not None:
        out.append(_prefix_allowed(prefix_fn, cfg.num_beams))
    if cfg.forced_bos_token_id is not None:
        out.append(_force(cfg.forced_bos_token_id, lambda n: n == 1))
    if cfg.forced_eos_token_id is not None:
        out.append(_force(cfg.forced_eos_token_id, lambda n: n == max_length - 1))
    if cfg.remove_invalid_values:
        out.append(_remove_invalid)
    if cfg.exponential_decay_length_penalty is not None:
        out.append(_decay_penalty(*cfg.exponential_decay_length_penalty, prompt_length, list(eos)))
    if cfg.suppress_tokens is not None:
        out.append(_suppress(cfg.suppress_tokens, vocab_size, device, lambda n: True))
    if cfg.begin_suppress_tokens is not None:
        begin = prompt_length if (prompt_length > 1 or cfg.forced_bos_token_id is None) else prompt_length + 1
        out.append(_suppress(cfg.begin_suppress_tokens, vocab_size, device, lambda n: n == begin))
    out += list(custom)
    if cfg.do_sample:
        keep = len(eos) + 1 if cfg.num_beams > 1 and eos else (2 if cfg.num_beams > 1 else 1)
        if cfg.temperature is not None and cfg.temperature != 1.0:
            out.append(lambda ids, s, t=float(cfg.temperature): s / t)
        if cfg.top_k is not None and cfg.top_k != 0:
            out.append(_top_k(max(cfg.top_k, keep)))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            out.append(_top_p(float(cfg.top_p), keep))
        if cfg.min_p is not None:
            out.append(_min_p(float(cfg.min_p), keep))
        if cfg.typical_p is not None and cfg.typical_p < 1.0:
            out.append(_typical(float(cfg.typical_p), keep))
        if cfg.epsilon_cutoff is not None and 0.0 < cfg.epsilon_cutoff < 1.0:
            out.append(_cutoff(lambda s, e=float(cfg.epsilon_cutoff): e, keep))
        if cfg.eta_cutoff is not None and 0.0 < cfg.eta_cutoff < 1.0:
            eps = torch.tensor(float(cfg.eta_cutoff), device=device)
            out.append(_cutoff(lambda s: torch.min(eps, torch.sqrt(eps) * torch.exp(
                -torch.distributions.Categorical(logits=s).entropy()))[..., None], keep))
    if cfg.renormalize_logits:
        out.append(lambda ids, s: s.log_softmax(dim=-1))
    return out


def _sequence_bias(bias: dict[tuple, float], vocab_size: int, device) -> Processor:
    """Add ``bias[seq]`` to the last token of ``seq`` when the ids end with the rest of it (bad words: -inf)."""
    outside = sorted({t for seq in bias for t in seq if t >= vocab_size})
    if outside:
        raise ValueError(f"bad_words_ids / sequence_bias name token ids {outside} outside the vocabulary "
                         f"(0..{vocab_size - 1})")
    single = torch.zeros(vocab_size, dtype=torch.float32, device=device)
    for seq, b in bias.items():
        if len(seq) == 1:
            single[seq[0]] = b
    longer = [(torch.tensor(seq[:-1], device=device), seq[-1], b) for seq, b in bias.items() if len(seq) > 1]

    def apply(ids, scores):
        total = torch.zeros_like(scores) + single
        for prefix, last, b in longer:
            if len(prefix) + 1 <= ids.shape[1]:
                match = torch.eq(ids[:, -len(prefix):], prefix).prod(dim=1).bool()
                total[:, last] += torch.where(match, torch.tensor(b, device=device), torch.tensor(0.0, device=device))
        return scores + total
    return apply


def _repetition_penalty(penalty: float) -> Processor:
    def apply(ids, scores):  # every id so far, prompt (and its padding) included, penalised once
        score = torch.gather(scores, 1, ids)
        return scores.scatter(1, ids, torch.where(score < 0, score * penalty, score / penalty))
    return apply


def _no_repeat_ngram(n: int) -> Processor:
    def apply(ids, scores):  # ban every token that would complete an n-gram already in the row
        if ids.shape[1] < n:  # (transformers: no n-gram is complete yet)
            return scores
        grams = ids.unfold(1, n, 1)  # (B, L - n + 1, n)
        hit = (grams[:, :, :-1] == ids[:, None, ids.shape[1] - n + 1:]).all(-1)  # (B, L - n + 1)
        rows, cols = hit.nonzero(as_tuple=True)
        scores = scores.clone()
        scores[rows, grams[rows, cols, -1]] = -math.inf
        return scores
    return apply


def _force(token, when) -> Processor:
    def apply(ids, scores):
        if not when(ids.shape[-1]):
            return scores
        forced = torch.full_like(scores, -math.inf)
        forced[:, token] = 0
        return forced
    return apply


def _remove_invalid(ids, scores):
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == math.inf, torch.finfo(scores.dtype).max, out)
    return torch.where(scores == -math.inf, torch.finfo(scores.dtype).min, out)


def _decay_penalty(start: int, factor: float, prompt_length: int, eos: list[int]) -> Processor:
    start = start + prompt_length

    def apply(ids, scores):
        if ids.shape[-1] <= start:
            return scores
        penalties = torch.zeros_like(scores)
        penalties[:, eos] = torch.abs(scores[:, eos]) * (pow(factor, ids.shape[-1] - start) - 1)
        return scores + penalties
    return apply


def _suppress(tokens, vocab_size: int, device, when) -> Processor:
    mask = torch.isin(torch.arange(vocab_size, device=device), torch.tensor(list(tokens), device=device))
    return lambda ids, s: torch.where(mask, -math.inf, s) if when(ids.shape[-1]) else s


def _top_k(k: int) -> Processor:
    def apply(ids, scores):
        kth = torch.topk(scores, min(k, scores.size(-1)))[0][..., -1, None]
        return scores.masked_fill(scores < kth, -math.inf)
    return apply


def _top_p(p: float, keep: int) -> Processor:
    def apply(ids, scores):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
        remove[..., -keep:] = 0
        return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)
    return apply


def _min_p(min_p: float, keep: int) -> Processor:
    def apply(ids, scores):
        probs = torch.softmax(scores, dim=-1)
        remove = probs < min_p * probs.max(dim=-1, keepdim=True)[0]
        sorted_indices = torch.argsort(scores, descending=True, dim=-1)
        sorted_remove = torch.gather(remove, dim=-1, index=sorted_indices)
        sorted_remove[..., :keep] = False
        return scores.masked_fill(sorted_remove.scatter(1, sorted_indices, sorted_remove), -math.inf)
    return apply


def _typical(mass: float, keep: int) -> Processor:
    def apply(ids, scores):
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
    def apply(ids, scores):
        remove = scores.softmax(dim=-1) < threshold(scores)
        kth = torch.topk(scores, min(keep, scores.size(-1)))[0][..., -1, None]
        return scores.masked_fill(remove & (scores < kth), -math.inf)
    return apply


def _prefix_allowed(fn, num_beams: int) -> Processor:
    """transformers' PrefixConstrainedLogitsProcessor: only ``fn(batch_id, row ids)`` may follow each row."""
    def apply(ids, scores):
        mask = torch.full_like(scores, -math.inf)
        for row, sent in enumerate(ids):
            allowed = fn(row // num_beams, sent)
            if len(allowed) == 0:
                raise ValueError(f"prefix_allowed_tokens_fn returned no allowed token for batch {row // num_beams} "
                                 f"(beam {row % num_beams}): it must allow at least one")
            mask[row, allowed] = 0
        return scores + mask

    return apply


def run_processors(processors: list[Processor], ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for processor in processors:
        scores = processor(ids, scores)
    return scores
