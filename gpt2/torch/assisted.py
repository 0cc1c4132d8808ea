"""Assisted (speculative) greedy decoding: ``generate(..., assistant_model=small_model)``, as transformers'.

A small model drafts up to ``num_assistant_tokens`` tokens greedily; the main model scores them all in one forward;
the longest prefix that agrees with the main model's own (processed) argmax is kept, plus the main model's token at
the first disagreement. Every kept token is the main model's greedy choice, so the output is greedy decoding's --
only the number of main-model forwards changes. Drafting stops early when the assistant's top probability falls
below ``assistant_confidence_threshold``; with ``num_assistant_tokens_schedule="heuristic"`` the draft length grows
by 2 after a fully accepted draft and shrinks by 1 otherwise. Batch size 1 without padding, greedy only: what
transformers 4.57 supports too (it refuses larger batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cache import KVCache
from .logits_process import run_processors


def check_assistant(model, assistant, cfg, *, input_ids, attention_mask, max_length: int, streamer,
                    other_inputs: bool) -> None:
    """Refuse what assisted decoding does not do, naming it (``other_inputs``: inputs_embeds / token_type_ids)."""
    if other_inputs:
        raise ValueError("assistant_model works from input_ids alone (no inputs_embeds / token_type_ids)")
    if not callable(getattr(assistant, "forward", None)) or not hasattr(assistant, "config"):
        raise TypeError(f"assistant_model must be a GPT-2 language model, got {type(assistant).__name__}")
    if assistant.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"assistant_model has a vocabulary of {assistant.config.vocab_size} tokens, the model "
                         f"{model.config.vocab_size}: they must share the tokenizer")
    if input_ids.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
        raise ValueError("assisted generation works on one unpadded prompt (batch size 1), as in transformers")
    if cfg.do_sample or cfg.num_beams > 1:
        raise ValueError("assisted generation is greedy here: do_sample and num_beams > 1 are not supported with "
                         "assistant_model")
    if cfg.return_dict_in_generate or streamer is not None:
        raise ValueError("assisted generation returns the ids only: return_dict_in_generate and streamer are not "
                         "supported with assistant_model")
    if assistant.config.n_positions < max_length:
        raise ValueError(f"assistant_model has {assistant.config.n_positions} positions, the generation needs "
                         f"{max_length}")


class _Runner:
    """One model over a static cache that can be cut back: ``feed(ids (1, n))`` -> logits (n, V) in fp32."""

    def __init__(self, model, max_length: int, device) -> None:
        self.model, self.cache = model, KVCache.for_model(model, 1, max_length, device)

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, return_dict=True)
        return out.logits[0].float()

    def keep(self, length: int) -> None:
        self.cache.crop(length)


def assisted_greedy(model, assistant, input_ids, *, processors, cfg, stop, max_length: int):
    """The ids (1, T') of greedy decoding, computed with drafts from ``assistant``."""
    device, T = input_ids.device, input_ids.shape[1]
    ids = torch.empty((1, max_length), dtype=torch.long, device=device)
    ids[:, :T] = input_ids
    main, draft = _Runner(model, max_length, device), _Runner(assistant, max_length, device)
    main_logits = main.feed(input_ids)[-1:]  # (1, V): the next position's
    draft.feed(input_ids)  # the assistant holds the prompt too
    cur, n_draft = T, int(cfg.num_assistant_tokens)
    threshold = cfg.assistant_confidence_threshold
    while True:
        # The main model's token at ``cur`` (its logits are known): the first token of this round.
        token = torch.argmax(run_processors(processors, ids, cur, main_logits[-1:]), dim=-1)
        ids[:, cur] = token
        cur += 1
        if bool(stop(ids[:, :cur]).all()):
            break
        # Draft up to n_draft tokens after it with the assistant (its cache lacks ``token`` and the tokens it
        # drafted last round that were not kept).
        draft.keep(cur - 1)
        step_logits, drafted = draft.feed(ids[:, draft.cache.get_seq_length(): cur])[-1:], 0
        budget = min(n_draft, max_length - cur - 1)
        while drafted < budget:
            scores = run_processors(processors, ids, cur + drafted, step_logits)
            ids[:, cur + drafted] = torch.argmax(scores, dim=-1)
            drafted += 1
            if threshold and float(F.softmax(scores, dim=-1).max()) < threshold:
                break
            if drafted < budget:
                step_logits = draft.feed(ids[:, cur + drafted - 1: cur + drafted])
        # The main model scores ``token`` and the draft in one forward: logits for positions cur .. cur + drafted.
        main_logits = main.feed(ids[:, cur - 1: cur + drafted])  # (drafted + 1, V)
        accepted = 0
        while accepted < drafted:
            scores = run_processors(processors, ids, cur + accepted, main_logits[accepted: accepted + 1])
            if int(torch.argmax(scores, dim=-1)) != int(ids[0, cur + accepted]):
                break
            accepted += 1
            if bool(stop(ids[:, :cur + accepted]).all()):
                return ids[:, :cur + accepted]
        cur += accepted
        main.keep(cur)  # the rejected part of the draft leaves the cache; logits for ``cur`` stay in hand
        main_logits = main_logits[accepted: accepted + 1]
        if cfg.num_assistant_tokens_schedule == "heuristic":
            n_draft = n_draft + 2 if accepted == drafted else max(1, n_draft - 1)
    return ids[:, :cur]
