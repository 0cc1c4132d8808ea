"""Beam search (and beam sampling) for generate(): gpt2/torch/beam_search.py (transformers 4.57's vectorized
``_beam_search``) step for step, as the body of a ``tf.while_loop`` that traces under XLA.

Per batch item, ``num_beams`` running beams and ``num_beams`` finished hypotheses are kept in fixed-size tensors.
Each step takes the top K = max(2, 1 + number of eos ids) * num_beams continuations over all beams (sampled without
replacement when do_sample: the top K of the log-probabilities plus Gumbel noise); those that end (eos,
max_length) may enter the finished set with score ``sum of log-probs / generated_length ** length_penalty`` if they
are among the top num_beams; the best num_beams that do not end keep running. Generation stops when no running beam
can beat the worst finished one (the ``early_stopping`` heuristics), when every batch item has num_beams finished
hypotheses and early_stopping is True, or at max_length. The numbers -1e9 and the length used by each heuristic are
transformers', kept as they are so that sequences and sequences_scores come out the same.

Lengths here count slots of the ids buffer, which starts with the prompt bucket's padding (``shift`` slots):
``cur - prompt`` (tokens generated) and ``max_length - prompt`` are the same numbers as torch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from .logits_process import gumbel, record_step, run_processors
from .stopping import Stop

if TYPE_CHECKING:  # generation.py imports this module: the Decoder is only named here, never imported at run time
    from .generation import Decoder

NEG = -1.0e9  # transformers' "impossible" score


def _gather(tensor: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """tensor (B, K, ...) -> (B, k, ...): the beams ``indices`` (B, k) of each batch item."""
    return tf.gather(tensor, indices, batch_dims=1)


def _penalty(length, length_penalty: float) -> tf.Tensor:
    """``length ** length_penalty`` as torch computes it (a Python float), then fp32 as torch divides by it."""
    return tf.cast(tf.pow(tf.cast(length, tf.float64), length_penalty), tf.float32)


def _put(buffer: tf.Tensor, column, values: tf.Tensor) -> tf.Tensor:
    """buffer (B, K, L) with ``values`` (B, K) written at the traced ``column``."""
    return tf.where(tf.range(buffer.shape[-1]) == column, values[:, :, None], buffer)


def beam_search(decoder: Decoder, input_ids: tf.Tensor, *, static, shift, max_length, processors, stop: Stop,
                seed):
    """``input_ids`` (B * num_beams, C): the ids buffer, each prompt repeated num_beams times, the prompt in its
    first ``prompt`` slots, the rest filled as transformers fills it. Returns the finished hypotheses, their scores
    and beam indices, the number of steps and the per-step records (generation.py cuts them on the host)."""

    num_beams, early_stopping, length_penalty = static.num_beams, static.early_stopping, static.length_penalty
    eos, V = list(static.eos), decoder.model.config.vocab_size
    BN, C = input_ids.shape
    B, prompt_len = BN // num_beams, int(decoder.prompt_positions.shape[1])
    steps = C - prompt_len
    keep = max(2, 1 + len(eos)) * num_beams
    top_num_beam_mask = tf.range(keep) < num_beams

    running_sequences = tf.reshape(input_ids, [B, num_beams, C])
    sequences = running_sequences
    # only the first beam's continuations at step one (the beams are equal)
    running_beam_scores = tf.concat([tf.zeros([B, 1]), tf.fill([B, num_beams - 1], NEG)], axis=1)
    beam_scores = tf.fill([B, num_beams], NEG)
    is_sent_finished = tf.zeros([B, num_beams], tf.bool)
    can_improve = tf.ones([B, 1], tf.bool)
    running_beam_indices = tf.fill([B, num_beams, steps], -1)
    beam_indices = running_beam_indices
    batch_offset = tf.range(B)[:, None] * num_beams
    logits = decoder._first_logits(input_ids[:, :prompt_len])
    scores_rec = tf.zeros([BN, steps, V] if static.record_scores else [0])
    logits_rec = tf.zeros([BN, steps, V] if static.record_logits else [0])

    def body(cur, running_sequences, running_beam_scores, sequences, beam_scores, is_sent_finished, can_improve,
             running_beam_indices, beam_indices, logits, scores_rec, logits_rec, done, state):
        decoder._load(state)
        flat = tf.reshape(running_sequences, [BN, C])  # the ids buffer: slots >= cur not written yet
        log_probs = run_processors(processors, tf.roll(flat, -shift, axis=1), cur - shift,
                                   tf.nn.log_softmax(logits, axis=-1))
        if static.record_scores:
            scores_rec = record_step(scores_rec, cur - prompt_len, log_probs)
        if static.record_logits:
            logits_rec = record_step(logits_rec, cur - prompt_len, logits)
        log_probs = tf.reshape(tf.reshape(log_probs, [B, num_beams, V]) + running_beam_scores[:, :, None],
                               [B, num_beams * V])

        # The top K continuations over all beams (or K sampled without replacement).
        if static.do_sample:
            topk_indices = tf.math.top_k(log_probs + gumbel(tf.shape(log_probs), seed, cur), k=keep).indices
            topk_log_probs = tf.gather(log_probs, topk_indices, batch_dims=1)
        else:
            topk_log_probs, topk_indices = tf.math.top_k(log_probs, k=keep)
        topk_beams = topk_indices // V
        topk_running_beam_indices = _gather(running_beam_indices, topk_beams)
        topk_running_sequences = _put(_gather(running_sequences, topk_beams), cur, topk_indices % V)
        topk_running_beam_indices = _put(topk_running_beam_indices, cur - prompt_len, topk_beams + batch_offset)
        hits = tf.reshape(stop(tf.reshape(topk_running_sequences, [B * keep, C]), cur + 1), [B, keep])

        # The best num_beams continuations that did not end keep running.
        topk_running_log_probs = topk_log_probs + tf.cast(hits, tf.float32) * NEG
        best = tf.math.top_k(topk_running_log_probs, k=num_beams).indices
        running_sequences = _gather(topk_running_sequences, best)
        running_beam_scores = _gather(topk_running_log_probs, best)
        running_beam_indices = _gather(topk_running_beam_indices, best)

        # Those that ended among the top num_beams may enter the finished set, length-penalised.
        just_finished = hits & top_num_beam_mask[None, :]
        candidate = topk_log_probs / _penalty(cur + 1 - prompt_len, length_penalty)
        full = tf.reduce_all(is_sent_finished, axis=-1, keepdims=True) & (early_stopping is True)
        candidate += tf.cast(full, tf.float32) * NEG
        candidate += tf.cast(~can_improve, tf.float32) * NEG
        candidate += tf.cast(~just_finished, tf.float32) * NEG
        merged = tf.math.top_k(tf.concat([beam_scores, candidate], axis=1), k=num_beams).indices
        sequences = _gather(tf.concat([sequences, topk_running_sequences], axis=1), merged)
        beam_scores = _gather(tf.concat([beam_scores, candidate], axis=1), merged)
        beam_indices = _gather(tf.concat([beam_indices, topk_running_beam_indices], axis=1), merged)
        is_sent_finished = _gather(tf.concat([is_sent_finished, just_finished], axis=1), merged)

        decoder.reorder(tf.reshape(tf.gather(running_beam_indices, cur - prompt_len, axis=2), [-1]))
        cur += 1

        # Can a running beam still beat the worst finished hypothesis? (transformers' heuristics)
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur - prompt_len
        best_running = running_beam_scores[:, :1] / _penalty(best_length, length_penalty)
        worst_finished = tf.where(is_sent_finished, tf.reduce_min(beam_scores, axis=1, keepdims=True), NEG)
        can_improve = can_improve & tf.reduce_any(best_running > worst_finished, axis=-1, keepdims=True)
        all_full = tf.reduce_all(is_sent_finished) & (early_stopping is True)
        done = ~tf.reduce_any(can_improve) | all_full | tf.reduce_all(hits)

        kept = decoder._state()
        last = tf.reshape(tf.gather(running_sequences, cur - 1, axis=2), [BN, 1])

        def step():
            out = decoder(last)
            return out, decoder._state()

        logits, state = tf.cond(done, lambda: (logits, kept), step)
        return (cur, running_sequences, running_beam_scores, sequences, beam_scores, is_sent_finished, can_improve,
                running_beam_indices, beam_indices, logits, scores_rec, logits_rec, done, state)

    loop = tf.while_loop(
        lambda *v: ~v[12], body,
        (tf.constant(prompt_len, tf.int32), running_sequences, running_beam_scores, sequences, beam_scores,
         is_sent_finished, can_improve, running_beam_indices, beam_indices, logits, scores_rec, logits_rec,
         tf.constant(False), decoder._state()), maximum_iterations=steps)
    cur, sequences, beam_scores, beam_indices = loop[0], loop[3], loop[4], loop[8]
    return dict(ids=tf.reshape(sequences, [BN, C]), beam_scores=beam_scores, beam_indices=beam_indices,
                steps=cur - prompt_len, scores=loop[10], logits=loop[11])
