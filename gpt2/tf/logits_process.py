"""Logits processors and warpers for generate(), with transformers 4.57's semantics, in TensorFlow ops.

Which processors run, with which options and in which order, is decided framework-free
(gpt2/common/decoding.py ``processor_specs``, ``PROCESSOR_ORDER``); ``build_processors`` turns that list into TF
functions, the same ones as gpt2/torch/logits_process.py. Each is ``(ids, length, scores (B, V)) -> scores``:
``ids`` is the fixed-size (B, max_length) buffer of the run, of which only the first ``length`` positions are
written; ``length`` is a scalar int tensor (or a Python int), so every processor traces inside the compiled
``tf.while_loop`` of generate(): nothing branches on ``length`` in Python, no shape depends on it (slices at a
traced offset have a static size; "what is below length" is a mask), and nothing reads at or past ``length``.
The caller's Python processors cannot run inside the compiled loop (generate() refuses them, see generation.py).
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from ..common.decoding import ProcessorSpec

# (ids buffer (B, max_length), length, scores (B, V)) -> scores
Processor = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def build_processors(specs: list[ProcessorSpec], *, vocab_size: int, custom=(), prefix_fn=None) -> list[Processor]:
    """The processors of ``specs``, in their order. The "custom" entry (the caller's processors) and
    "prefix_allowed_tokens" call Python per step, which the compiled loop cannot: generate() refuses those
    arguments before building, so a non-empty ``custom`` or a "prefix_allowed_tokens" spec is refused here too."""
    out: list[Processor] = []
    for spec in specs:
        if spec.name == "custom":
            if custom:
                raise ValueError("logits_processor is not supported in tf (TF decodes in one compiled loop, which "
                                 "cannot call Python processors between steps)")
        elif spec.name == "prefix_allowed_tokens":
            raise ValueError("prefix_allowed_tokens_fn is not supported in tf (TF decodes in one compiled loop, "
                             "which cannot call a Python function per row and step)")
        else:
            out.append(_BUILDERS[spec.name](vocab_size=vocab_size, **spec.options))
    return out


def run_processors(processors: list[Processor], ids: tf.Tensor, length, scores: tf.Tensor) -> tf.Tensor:
    for processor in processors:
        scores = processor(ids, length, scores)
    return scores


def _length(length) -> tf.Tensor:
    return tf.cast(length, tf.int32)


def _tail(ids: tf.Tensor, length: tf.Tensor, n: int) -> tf.Tensor:
    """ids[:, length - n: length] (B, n), at a traced offset with a static size (clamped at 0: callers ignore it
    when length < n)."""
    start = tf.maximum(length - n, 0)
    return tf.slice(ids, tf.stack([0, start]), tf.stack([tf.shape(ids)[0], n]))


def _row_mask(tokens: tf.Tensor, keep: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """(B, V) bool: row b holds token v for some position p with keep[b, p] (tokens (B, P) int, keep (B, P) bool)."""
    B, P = tf.shape(tokens)[0], tf.shape(tokens)[1]
    rows = tf.broadcast_to(tf.range(B)[:, None], [B, P])
    tokens = tf.clip_by_value(tf.cast(tokens, tf.int32), 0, vocab_size - 1)
    index = tf.stack([rows, tokens], axis=-1)  # B x P pairs (row, token)
    hits = tf.tensor_scatter_nd_max(tf.zeros([B, vocab_size], tf.int32), tf.reshape(index, [-1, 2]),
                                    tf.reshape(tf.cast(keep, tf.int32), [-1]))
    return hits > 0


# -- processors -------------------------------------------------------------------------------------------------------
def _sequence_bias(*, bias: dict[tuple, float], vocab_size: int) -> Processor:
    """Add ``bias[seq]`` to the last token of ``seq`` when the ids end with the rest of it (bad words: -inf)."""
    single = [0.0] * vocab_size
    for seq, b in bias.items():
        if len(seq) == 1:
            single[seq[0]] = b
    single = tf.constant(single, tf.float32)
    longer = [(tf.constant(seq[:-1], tf.int64), seq[-1], b) for seq, b in bias.items() if len(seq) > 1]

    def apply(ids, length, scores):
        length = _length(length)
        total = tf.zeros_like(scores) + single
        for prefix, last, b in longer:
            n = int(prefix.shape[0])
            match = tf.reduce_all(tf.equal(tf.cast(_tail(ids, length, n), tf.int64), prefix), axis=1)
            match = match & (length >= n + 1)  # torch: only when the ids hold the prefix and one token more
            column = tf.one_hot(last, vocab_size, on_value=True, off_value=False, dtype=tf.bool)
            total = total + tf.where(match[:, None] & column[None, :], tf.constant(b, tf.float32), 0.0)
        return scores + total
    return apply


def _repetition_penalty(*, penalty: float, vocab_size: int) -> Processor:
    def apply(ids, length, scores):  # every id so far, prompt (and its padding) included, penalised once
        written = tf.range(tf.shape(ids)[1])[None, :] < _length(length)  # one row: the written positions
        seen = _row_mask(ids, tf.broadcast_to(written, tf.shape(ids)), vocab_size)
        return tf.where(seen, tf.where(scores < 0, scores * penalty, scores / penalty), scores)
    return apply


def _no_repeat_ngram(*, n: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):  # ban every token that would complete an n-gram already in the row
        length = _length(length)
        L = ids.shape[1]
        if L < n:
            return scores
        starts = L - n + 1  # every n-gram start in the buffer; those past length - n are masked off below
        grams = tf.stack([ids[:, k: k + starts] for k in range(n)], axis=-1)  # (B, length - n + 1, n)
        tail = _tail(ids, length, n - 1)  # the last n - 1 ids
        hit = tf.reduce_all(tf.equal(grams[:, :, :-1], tail[:, None, :]), axis=-1)  # (B, length - n + 1)
        hit = hit & (tf.range(starts)[None, :] <= length - n)  # n-grams lying below length (none when length < n)
        banned = _row_mask(grams[:, :, -1], hit, vocab_size)
        return tf.where(banned, tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _min_length(*, min_length: int, eos: list[int], vocab_size: int) -> Processor:
    """No eos before ``min_length`` ids (min_length and min_new_tokens both resolve to it)."""
    eos_mask = tf.constant([i in eos for i in range(vocab_size)])

    def apply(ids, length, scores):
        return tf.where(eos_mask[None, :] & (_length(length) < min_length), tf.constant(-math.inf, scores.dtype),
                        scores)
    return apply


def _force(*, token, at_length: int, vocab_size: int) -> Processor:
    column = tf.constant([i == token for i in range(vocab_size)])

    def apply(ids, length, scores):
        forced = tf.where(column[None, :], tf.zeros_like(scores), tf.constant(-math.inf, scores.dtype))
        return tf.where(_length(length) == at_length, forced, scores)
    return apply


def _remove_invalid(*, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        out = tf.where(tf.math.is_nan(scores), tf.zeros_like(scores), scores)
        out = tf.where(scores == math.inf, tf.constant(scores.dtype.max, scores.dtype), out)
        return tf.where(scores == -math.inf, tf.constant(scores.dtype.min, scores.dtype), out)
    return apply


def _decay_penalty(*, start: int, factor: float, eos: list[int], vocab_size: int) -> Processor:
    eos_mask = tf.constant([i in eos for i in range(vocab_size)])

    def apply(ids, length, scores):
        length = _length(length)
        # pow in float64 as Python's (torch multiplies by the Python float), then fp32
        grow = tf.cast(tf.pow(tf.constant(factor, tf.float64), tf.cast(length - start, tf.float64)) - 1.0,
                       scores.dtype)
        penalties = tf.where(eos_mask[None, :], tf.abs(scores) * grow, tf.zeros_like(scores))
        return tf.where(length > start, scores + penalties, scores)
    return apply


def _suppress(*, tokens, at_length: int | None, vocab_size: int) -> Processor:
    """-inf for ``tokens``, at every step (``at_length`` None) or when the ids are ``at_length`` long."""
    mask = tf.constant([i in set(tokens) for i in range(vocab_size)])

    def apply(ids, length, scores):
        now = mask[None, :] if at_length is None else mask[None, :] & (_length(length) == at_length)
        return tf.where(now, tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _renormalize(*, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        return tf.nn.log_softmax(scores, axis=-1)
    return apply


# -- warpers (sampling only): filtered tokens get -inf, at least ``keep`` tokens stay --------------------------------
def _unsort(sorted_values: tf.Tensor, sorted_indices: tf.Tensor) -> tf.Tensor:
    """The inverse of gathering by ``sorted_indices`` along the last axis (torch's ``scatter(1, indices, x)``)."""
    return tf.gather(sorted_values, tf.argsort(sorted_indices, axis=-1), batch_dims=1)


def _first(n: int, like: tf.Tensor) -> tf.Tensor:
    """(1, V) bool: True at the first ``n`` sorted positions."""
    return tf.range(tf.shape(like)[-1])[None, :] < n


def _temperature(*, temperature: float, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        return scores / temperature
    return apply


def _top_k(*, k: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        kth = tf.math.top_k(scores, min(k, scores.shape[-1])).values[..., -1:]
        return tf.where(scores < kth, tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _top_p(*, p: float, keep: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        sorted_indices = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)
        sorted_logits = tf.gather(scores, sorted_indices, batch_dims=1)
        remove = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1) <= (1 - p)
        remove = remove & ~(tf.range(tf.shape(scores)[-1])[None, :] >= tf.shape(scores)[-1] - keep)
        return tf.where(_unsort(remove, sorted_indices), tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _min_p(*, min_p: float, keep: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        probs = tf.nn.softmax(scores, axis=-1)
        remove = probs < min_p * tf.reduce_max(probs, axis=-1, keepdims=True)
        sorted_indices = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
        sorted_remove = tf.gather(remove, sorted_indices, batch_dims=1) & ~_first(keep, scores)
        return tf.where(_unsort(sorted_remove, sorted_indices), tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _typical(*, mass: float, keep: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        normalized = tf.nn.log_softmax(scores, axis=-1)
        p_log_p = normalized * tf.exp(normalized)
        ent = -tf.reduce_sum(tf.where(tf.math.is_nan(p_log_p), tf.zeros_like(p_log_p), p_log_p), -1, keepdims=True)
        shifted = tf.abs(-normalized - ent)
        sorted_indices = tf.argsort(shifted, axis=-1, direction="ASCENDING", stable=True)
        sorted_scores = tf.gather(shifted, sorted_indices, batch_dims=1)
        cumulative = tf.cumsum(tf.nn.softmax(tf.gather(scores, sorted_indices, batch_dims=1), axis=-1), axis=-1)
        last = tf.minimum(tf.reduce_sum(tf.cast(cumulative < mass, tf.int32), axis=1), tf.shape(scores)[-1] - 1)
        remove = sorted_scores > tf.gather(sorted_scores, last[:, None], batch_dims=1)
        remove = remove & ~_first(keep, scores)
        return tf.where(_unsort(remove, sorted_indices), tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _cutoff(threshold, keep: int) -> Processor:
    """epsilon / eta sampling: drop tokens whose probability is below threshold(scores), keeping the top ``keep``."""
    def apply(ids, length, scores):
        remove = tf.nn.softmax(scores, axis=-1) < threshold(scores)
        kth = tf.math.top_k(scores, min(keep, scores.shape[-1])).values[..., -1:]
        return tf.where(remove & (scores < kth), tf.constant(-math.inf, scores.dtype), scores)
    return apply


def _epsilon(*, epsilon: float, keep: int, vocab_size: int) -> Processor:
    return _cutoff(lambda s: epsilon, keep)


def _eta(*, eta: float, keep: int, vocab_size: int) -> Processor:
    def threshold(s):
        # the entropy of softmax(s), with -inf log-probabilities clamped as torch's Categorical.entropy does
        log_p = tf.maximum(tf.nn.log_softmax(s, axis=-1), s.dtype.min)
        entropy = -tf.reduce_sum(log_p * tf.nn.softmax(s, axis=-1), axis=-1, keepdims=True)
        return tf.minimum(tf.constant(eta, s.dtype), math.sqrt(eta) * tf.exp(-entropy))
    return _cutoff(threshold, keep)


# The builder of each name of PROCESSOR_ORDER ("custom" and "prefix_allowed_tokens" take the caller's callables).
_BUILDERS = {
    "sequence_bias": _sequence_bias, "repetition_penalty": _repetition_penalty, "no_repeat_ngram": _no_repeat_ngram,
    "bad_words": _sequence_bias, "min_length": _min_length, "forced_bos": _force, "forced_eos": _force,
    "remove_invalid_values": _remove_invalid, "exponential_decay_length_penalty": _decay_penalty,
    "suppress_tokens": _suppress, "begin_suppress_tokens": _suppress, "temperature": _temperature, "top_k": _top_k,
    "top_p": _top_p, "min_p": _min_p, "typical_p": _typical, "epsilon_cutoff": _epsilon, "eta_cutoff": _eta,
    "renormalize_logits": _renormalize,
}


# -- what the compiled loops share: per-step records and sampling noise -------------------------------------------
def record_step(buffer, step, values):
    """buffer (rows, steps, V) with ``values`` (rows, V) written at ``step``."""
    rows = tf.shape(values)[0]
    return tf.tensor_scatter_nd_update(buffer, tf.stack([tf.range(rows), tf.fill([rows], step)], axis=1), values)


def _mul32(a: tf.Tensor, b: int) -> tf.Tensor:
    """(a * b) mod 2**32 for int64 ``a`` in [0, 2**32), in halves so that no product overflows int64."""
    low, high = tf.bitwise.bitwise_and(a, 0xFFFF), tf.bitwise.right_shift(a, 16)
    return tf.bitwise.bitwise_and(low * b + tf.bitwise.left_shift(tf.bitwise.bitwise_and(high * b, 0xFFFF), 16),
                                  0xFFFFFFFF)


def _mix(x: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's 32-bit finalizer (fmix32): every input bit flips each output bit with probability ~1/2."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, 0x85EBCA6B)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 13))
    x = _mul32(x, 0xC2B2AE35)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def uniform(shape, seed, step) -> tf.Tensor:
    """Uniform floats in (0, 1) from a counter-based hash of (seed, step, element index), in integer ops that
    give the same bits eagerly and under XLA (TF's stateless RNG kernels do not: XLA's Philox differs from the CPU
    kernel's)."""
    seed = tf.cast(tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0xFFFFFFFF), tf.int64)
    key = _mix(tf.bitwise.bitwise_xor(_mix(seed[0]), seed[1]))
    key = _mix(tf.bitwise.bitwise_xor(key, _mul32(tf.cast(step, tf.int64) + 1, 0x9E3779B9)))
    counter = tf.reshape(tf.range(tf.reduce_prod(shape), dtype=tf.int64), shape)
    bits = _mix(_mix(tf.bitwise.bitwise_xor(_mul32(counter, 0x9E3779B9), key)))
    # 24 random bits, centred in their interval: never 0 or 1
    return (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel(shape, seed, step) -> tf.Tensor:
    """Gumbel(0, 1) noise keyed by (seed, step): argmax(scores + noise) samples softmax(scores) (the Gumbel-max
    trick), the top k of it samples k without replacement (beam sampling)."""
    return -tf.math.log(-tf.math.log(uniform(shape, seed, step)))
