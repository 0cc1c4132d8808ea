"""Beam search (and beam sampling) for generate(): gpt2/torch/beam_search.py (transformers 4.57's vectorized
``_beam_search``) step for step, as the body of a ``lax.while_loop`` under ``jax.jit`` (gpt2/tf/beam_search.py is
the same translation in TF).

Per batch item, ``num_beams`` running beams and ``num_beams`` finished hypotheses are kept in fixed-size arrays.
Each step takes the top K = max(2, 1 + number of eos ids) * num_beams continuations over all beams (sampled without
replacement when do_sample: the top K of the log-probabilities plus Gumbel noise keyed by ``fold_in(key, step)``);
those that end (eos, max_length) may enter the finished set with score ``sum of log-probs / generated_length **
length_penalty`` if they are among the top num_beams; the best num_beams that do not end keep running. Generation
stops when no running beam can beat the worst finished one (the ``early_stopping`` heuristics), when every batch
item has num_beams finished hypotheses and early_stopping is True, or at max_length. The numbers -1e9 and the length
used by each heuristic are transformers', kept as they are so that sequences and sequences_scores come out the same.

Lengths here count slots of the ids buffer, which starts with the prompt bucket's padding (``shift`` slots):
``cur - prompt`` (tokens generated) and ``max_length - prompt`` are the same numbers as torch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .logits_process import gumbel, record_step, run_processors
from .stopping import Stop

if TYPE_CHECKING:  # generation.py imports this module: the Decoder is only named here, never imported at run time
    from .generation import Decoder

NEG = -1.0e9  # transformers' "impossible" score


def _gather(array: jax.Array, indices: jax.Array) -> jax.Array:
    """array (B, K, ...) -> (B, k, ...): the beams ``indices`` (B, k) of each batch item."""
    indices = indices.reshape(indices.shape + (1,) * (array.ndim - indices.ndim))
    return jnp.take_along_axis(array, indices, axis=1)


def _penalties(capacity: int, length_penalty: float) -> np.ndarray:
    """``length ** length_penalty`` for every length 0..capacity as torch computes it (a Python float, float64),
    then float32 as torch divides by it: a table read at the traced length (JAX computes in float32 without x64)."""
    with np.errstate(divide="ignore"):
        return np.array([float(n) ** length_penalty if n or length_penalty >= 0 else np.inf
                         for n in range(capacity + 1)], dtype=np.float32)


def _put(buffer: jax.Array, column, values: jax.Array) -> jax.Array:
    """buffer (B, K, L) with ``values`` (B, K) written at the traced ``column``."""
    return jnp.where(jnp.arange(buffer.shape[-1]) == column, values[:, :, None].astype(buffer.dtype), buffer)


def beam_search(decoder: Decoder, input_ids: jax.Array, *, logits: jax.Array, static, shift, max_length, processors,
                stop: Stop, key) -> dict:
    """``input_ids`` (B * num_beams, C): the ids buffer, each prompt repeated num_beams times, the prompt in its
    first ``prompt`` slots, the rest filled as transformers fills it; ``logits`` (B * num_beams, V): the prompt's
    next-token logits (the prefill's). Returns the finished hypotheses, their scores and beam indices, the number of
    steps and the per-step records (generation.py cuts them on the host)."""
    num_beams, early_stopping, length_penalty = static.num_beams, static.early_stopping, static.length_penalty
    eos, V = list(static.eos), decoder.model.config.vocab_size
    BN, C = input_ids.shape
    B, prompt_len = BN // num_beams, int(decoder.prompt_positions.shape[1])
    steps = C - prompt_len
    keep = max(2, 1 + len(eos)) * num_beams
    top_num_beam_mask = jnp.arange(keep) < num_beams
    penalties = jnp.asarray(_penalties(C, length_penalty))

    running_sequences = input_ids.reshape(B, num_beams, C)
    sequences = running_sequences
    # only the first beam's continuations at step one (the beams are equal)
    running_beam_scores = jnp.concatenate([jnp.zeros((B, 1)), jnp.full((B, num_beams - 1), NEG)], axis=1)
    beam_scores = jnp.full((B, num_beams), NEG)
    is_sent_finished = jnp.zeros((B, num_beams), bool)
    can_improve = jnp.ones((B, 1), bool)
    running_beam_indices = jnp.full((B, num_beams, steps), -1, jnp.int32)
    beam_indices = running_beam_indices
    batch_offset = jnp.arange(B, dtype=jnp.int32)[:, None] * num_beams
    scores_rec = jnp.zeros((BN, steps, V) if static.record_scores else (0,), jnp.float32)
    logits_rec = jnp.zeros((BN, steps, V) if static.record_logits else (0,), jnp.float32)

    def body(v):
        (cur, running_sequences, running_beam_scores, sequences, beam_scores, is_sent_finished, can_improve,
         running_beam_indices, beam_indices, logits, scores_rec, logits_rec, done, state) = v
        decoder._load(state)
        flat = running_sequences.reshape(BN, C)  # the ids buffer: slots >= cur not written yet
        log_probs = run_processors(processors, jnp.roll(flat, -shift, axis=1), cur - shift,
                                   jax.nn.log_softmax(logits, axis=-1))
        if static.record_scores:
            scores_rec = record_step(scores_rec, cur - prompt_len, log_probs)
        if static.record_logits:
            logits_rec = record_step(logits_rec, cur - prompt_len, logits)
        log_probs = (log_probs.reshape(B, num_beams, V) + running_beam_scores[:, :, None]).reshape(B, num_beams * V)

        # The top K continuations over all beams (or K sampled without replacement).
        if static.do_sample:
            topk_indices = jax.lax.top_k(log_probs + gumbel(log_probs.shape, key, cur - prompt_len), keep)[1]
            topk_log_probs = jnp.take_along_axis(log_probs, topk_indices, axis=1)
        else:
            topk_log_probs, topk_indices = jax.lax.top_k(log_probs, keep)
        topk_beams = topk_indices // V
        topk_running_beam_indices = _gather(running_beam_indices, topk_beams)
        topk_running_sequences = _put(_gather(running_sequences, topk_beams), cur, topk_indices % V)
        topk_running_beam_indices = _put(topk_running_beam_indices, cur - prompt_len, topk_beams + batch_offset)
        hits = stop(topk_running_sequences.reshape(B * keep, C), cur + 1).reshape(B, keep)

        # The best num_beams continuations that did not end keep running.
        topk_running_log_probs = topk_log_probs + hits.astype(jnp.float32) * NEG
        best = jax.lax.top_k(topk_running_log_probs, num_beams)[1]
        running_sequences = _gather(topk_running_sequences, best)
        running_beam_scores = _gather(topk_running_log_probs, best)
        running_beam_indices = _gather(topk_running_beam_indices, best)

        # Those that ended among the top num_beams may enter the finished set, length-penalised.
        just_finished = hits & top_num_beam_mask[None, :]
        candidate = topk_log_probs / penalties[cur + 1 - prompt_len]
        full = jnp.all(is_sent_finished, axis=-1, keepdims=True) & (early_stopping is True)
        candidate += full.astype(jnp.float32) * NEG
        candidate += (~can_improve).astype(jnp.float32) * NEG
        candidate += (~just_finished).astype(jnp.float32) * NEG
        merged = jax.lax.top_k(jnp.concatenate([beam_scores, candidate], axis=1), num_beams)[1]
        sequences = _gather(jnp.concatenate([sequences, topk_running_sequences], axis=1), merged)
        beam_scores = _gather(jnp.concatenate([beam_scores, candidate], axis=1), merged)
        beam_indices = _gather(jnp.concatenate([beam_indices, topk_running_beam_indices], axis=1), merged)
        is_sent_finished = _gather(jnp.concatenate([is_sent_finished, just_finished], axis=1), merged)

        decoder.reorder(jax.lax.dynamic_index_in_dim(running_beam_indices, cur - prompt_len, axis=2,
                                                     keepdims=False).reshape(-1))
        cur = cur + 1

        # Can a running beam still beat the worst finished hypothesis? (transformers' heuristics)
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur - prompt_len
        best_running = running_beam_scores[:, :1] / penalties[best_length]
        worst_finished = jnp.where(is_sent_finished, jnp.min(beam_scores, axis=1, keepdims=True), NEG)
        can_improve = can_improve & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        all_full = jnp.all(is_sent_finished) & (early_stopping is True)
        done = ~jnp.any(can_improve) | all_full | jnp.all(hits)

        kept = decoder._state()
        last = jax.lax.dynamic_index_in_dim(running_sequences, cur - 1, axis=2, keepdims=False).reshape(BN, 1)

        def step(_):
            return decoder(last), decoder._state()

        def skip(_):
            return logits, kept

        logits, state = jax.lax.cond(done, skip, step, None)
        decoder.last_output = None  # the branch's values stay in the branch
        return (cur, running_sequences, running_beam_scores, sequences, beam_scores, is_sent_finished, can_improve,
                running_beam_indices, beam_indices, logits, scores_rec, logits_rec, done, state)

    def more(v):
        return ~v[12] & (v[0] < C)

    loop = jax.lax.while_loop(
        more, body,
        (jnp.asarray(prompt_len, jnp.int32), running_sequences, running_beam_scores, sequences, beam_scores,
         is_sent_finished, can_improve, running_beam_indices, beam_indices, logits, scores_rec, logits_rec,
         jnp.asarray(False), decoder._state()))
    cur, sequences, beam_scores, beam_indices = loop[0], loop[3], loop[4], loop[8]
    return dict(ids=sequences.reshape(BN, C), beam_scores=beam_scores, beam_indices=beam_indices,
                steps=cur - prompt_len, scores=loop[10], logits=loop[11])
