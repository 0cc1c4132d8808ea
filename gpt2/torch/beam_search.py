"""Beam search (and beam sampling) for generate(): transformers 4.57's vectorized ``_beam_search``, step for step.

Per batch item, ``num_beams`` running beams and ``num_beams`` finished hypotheses are kept in fixed-size tensors.
Each step takes the top K = max(2, 1 + number of eos ids) * num_beams continuations over all beams (sampled without
replacement when do_sample); those that end (eos, max_length) may enter the finished set with score
``sum of log-probs / generated_length ** length_penalty`` if they are among the top num_beams; the best num_beams
that do not end keep running. Generation stops when no running beam can beat the worst finished one (the
``early_stopping`` heuristics), when every batch item has num_beams finished hypotheses and early_stopping is True,
or at max_length. The numbers -1e9 and the length used by each heuristic are transformers', kept as they are so
that sequences and sequences_scores come out the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..common.decoding import Plan, StepRecord
from ..common.generation import GenerationConfig
from ..common.outputs import GenerateBeamDecoderOnlyOutput
from .logits_process import run_processors
from .stopping import Stop

if TYPE_CHECKING:  # generation.py imports this module: the Decoder is only named here, never imported at run time
    from .generation import Decoder

NEG = -1.0e9  # transformers' "impossible" score


def _gather(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) -> (B, k, ...): the beams ``indices`` (B, k) of each batch item."""
    while indices.dim() < tensor.dim():
        indices = indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, indices, dim=1)


def beam_search(decoder: Decoder, input_ids: torch.Tensor, *, run: Plan, cfg: GenerationConfig, processors,
                stop: Stop, generator: torch.Generator | None = None):
    """``input_ids`` (B * num_beams, T), each prompt repeated num_beams times. Returns the ids of the best
    num_return_sequences hypotheses per item (B * num_return_sequences, T'), or the output object."""
    num_beams, n_return, early_stopping = cfg.num_beams, cfg.num_return_sequences, cfg.early_stopping
    length_penalty, max_length, eos, pad = cfg.length_penalty, run.max_length, list(run.eos), run.pad
    V, device = decoder.model.config.vocab_size, input_ids.device
    BN, cur_len = input_ids.shape
    B, prompt_len = BN // num_beams, cur_len
    keep = max(2, 1 + len(eos)) * num_beams
    top_num_beam_mask = torch.arange(keep, device=device) < num_beams
    fill = (pad if pad else eos[0]) if eos else -1  # transformers' `pad or eos[0] if eos is not None else -1`

    running_sequences = torch.full((B, num_beams, max_length), fill, dtype=torch.int64, device=device)
    running_sequences[:, :, :cur_len] = input_ids.view(B, num_beams, cur_len)
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((B, num_beams), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = NEG  # only the first beam's continuations at step one (the beams are equal)
    beam_scores = torch.full((B, num_beams), NEG, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((B, num_beams), dtype=torch.bool, device=device)
    can_improve = torch.ones((B, 1), dtype=torch.bool, device=device)
    running_beam_indices = torch.full((B, num_beams, max_length - cur_len), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    record = StepRecord(cfg)
    batch_offset = torch.arange(B, device=device).view(-1, 1) * num_beams

    while True:
        flat = running_sequences.view(BN, max_length)  # the ids buffer: positions >= cur_len not written yet
        logits = decoder(flat[:, :cur_len] if cur_len == prompt_len else flat[:, cur_len - 1: cur_len])
        log_probs = run_processors(processors, flat[:, run.offset:], cur_len - run.offset,
                                   F.log_softmax(logits, dim=-1))
        record.add(scores=log_probs.clone() if record.scores is not None else None, logits=logits,
                   output=decoder.last_output)
        log_probs = (log_probs.view(B, num_beams, V) + running_beam_scores[:, :, None]).reshape(B, num_beams * V)

        # The top K continuations over all beams (or K sampled without replacement).
        if cfg.do_sample:
            topk_indices = torch.multinomial(F.softmax(log_probs, dim=-1), keep, generator=generator)
            topk_log_probs = torch.gather(log_probs, 1, topk_indices)
        else:
            topk_log_probs, topk_indices = torch.topk(log_probs, k=keep)
        topk_beams = topk_indices // V
        topk_running_beam_indices = _gather(running_beam_indices, topk_beams)
        topk_running_sequences = _gather(running_sequences, topk_beams)
        topk_running_sequences[:, :, cur_len] = topk_indices % V
        topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beams + batch_offset
        hits = stop(topk_running_sequences[:, :, : cur_len + 1].reshape(B * keep, cur_len + 1),
                    record.get("scores")).view(B, keep)

        # The best num_beams continuations that did not end keep running.
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * NEG
        best = torch.topk(topk_running_log_probs, k=num_beams)[1]
        running_sequences = _gather(topk_running_sequences, best)
        running_beam_scores = _gather(topk_running_log_probs, best)
        running_beam_indices = _gather(topk_running_beam_indices, best)

        # Those that ended among the top num_beams may enter the finished set, length-penalised.
        just_finished = hits & top_num_beam_mask[None, :]
        candidate = topk_log_probs / ((cur_len + 1 - prompt_len) ** length_penalty)
        full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        candidate += full.to(torch.float32) * NEG
        candidate += (~can_improve).to(torch.float32) * NEG
        candidate += (~just_finished) * NEG
        merged = torch.topk(torch.cat((beam_scores, candidate), dim=1), k=num_beams)[1]
        sequences = _gather(torch.cat((sequences, topk_running_sequences), dim=1), merged)
        beam_scores = _gather(torch.cat((beam_scores, candidate), dim=1), merged)
        beam_indices = _gather(torch.cat((beam_indices, topk_running_beam_indices), dim=1), merged)
        is_sent_finished = _gather(torch.cat((is_sent_finished, just_finished), dim=1), merged)

        decoder.reorder(running_beam_indices[..., cur_len - prompt_len].reshape(-1).long())
        cur_len += 1

        # Can a running beam still beat the worst finished hypothesis? (transformers' heuristics)
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_beam_scores[:, :1] / (best_length ** length_penalty)
        worst_finished = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], NEG)
        can_improve = can_improve & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        all_full = bool(torch.all(is_sent_finished)) and early_stopping is True
        if not bool(torch.any(can_improve)) or all_full or bool(torch.all(hits)):
            break

    sequences = sequences[:, :n_return].reshape(B * n_return, max_length)
    beam_scores = beam_scores[:, :n_return].reshape(B * n_return)
    beam_indices = beam_indices[:, :n_return].reshape(B * n_return, -1)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())  # beam_indices is -1 past each hypothesis' end
    sequences, beam_indices = sequences[:, run.offset: prompt_len + generated], beam_indices[:, :generated]
    if not cfg.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=beam_scores if cfg.output_scores else None, scores=record.get("scores"),
        logits=record.get("logits"), beam_indices=beam_indices, attentions=record.get("attentions"),
        hidden_states=record.get("hidden_states"), past_key_values=decoder.cache)
