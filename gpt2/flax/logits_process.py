"""Logits processors and warpers for generate(), with transformers 4.57's semantics, in jax.numpy.

Which processors run, with which options and in which order, is decided framework-free
(gpt2/common/decoding.py ``processor_specs``, ``PROCESSOR_ORDER``); ``build_processors`` turns that list into pure JAX
functions, the same ones as gpt2/torch/logits_process.py and gpt2/tf/logits_process.py. Each is
``(ids, length, scores (B, V)) -> scores``: ``ids`` is the fixed-size (B, max_length) int buffer of the run, of which
only the first ``length`` positions are written; ``length`` is a scalar int (a Python int, or a traced int32 inside
``jax.jit``), so every processor traces inside the ``lax.while_loop`` of generate(): nothing branches on ``length`` in
Python, no shape depends on it (slices at a traced offset have a static size; "what is below length" is a mask), and
nothing reads at or past ``length``. Scores are float32 (generate() upcasts bf16 logits before the processors).

Static and traced options. The options that fix shapes or constants are Python values closed over (``k``, ``n``,
``keep``, token ids, ``eos``, ``bias``); generation.py keeps them in its compile key. The length-dependent ones
(``min_length``, ``at_length``, ``start``: common/host_loop.py's TRACED_OPTIONS) may be traced int32 scalars, so one
compiled loop serves every prompt length and max_new_tokens; the float options (``temperature``, ``penalty``, ``p``,
``min_p``, ``mass``, ``epsilon``, ``eta``, ``factor``) may be traced float32 scalars too (no recompile per value).

Randomness (sampling, beam sampling). A step's noise comes from ``jax.random.fold_in(key, step)``: one key for the
run, the step a traced counter, so a fixed key gives the same tokens whatever the chunking of the loop. ``sample``
draws one token per row from softmax(scores) by the Gumbel-max trick (argmax(scores + Gumbel noise)); tokens at -inf
are never drawn. ``gumbel`` gives the noise itself, whose top k over ``scores + noise`` draws k tokens without
replacement (beam sampling, as tf/beam_search.py does). ``uniform`` is the (0, 1) noise both are built on.

The caller's Python processors and prefix_allowed_tokens_fn cannot run inside the compiled loop (generate() refuses
them by name before anything is traced; ``build_processors`` refuses them too).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..common.decoding import ProcessorSpec

# (ids buffer (B, max_length), length, scores (B, V)) -> scores
Processor = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

_NO_PYTHON = "JAX decodes in one compiled lax.while_loop, which cannot call Python"


def build_processors(specs: list[ProcessorSpec], *, vocab_size: int, custom=(), prefix_fn=None) -> list[Processor]:
    """The processors of ``specs``, in their order. The "custom" entry (the caller's processors) and
    "prefix_allowed_tokens" call Python per step, which the compiled loop cannot: generate() refuses those
    arguments before building, so a non-empty ``custom`` or a "prefix_allowed_tokens" spec is refused here too.

    Example::

        specs = processor_specs(cfg, plan(cfg, ...), vocab_size=V)
        processors = build_processors(specs, vocab_size=V)
        scores = run_processors(processors, ids_buffer, length, logits)  # inside jax.jit
    """
    out: list[Processor] = []
    for spec in specs:
        if spec.name == "custom":
            if custom:
                raise ValueError(f"logits_processor is not supported in flax ({_NO_PYTHON} processors between "
                                 f"steps)")
        elif spec.name == "prefix_allowed_tokens":
            raise ValueError(f"prefix_allowed_tokens_fn is not supported in flax ({_NO_PYTHON} per row and step)")
        elif spec.name not in _BUILDERS:
            raise ValueError(f"unknown logits processor {spec.name!r} (known: {sorted(_BUILDERS)})")
        else:
            out.append(_BUILDERS[spec.name](vocab_size=vocab_size, **spec.options))
    return out


def run_processors(processors: list[Processor], ids: jax.Array, length, scores: jax.Array) -> jax.Array:
    for processor in processors:
        scores = processor(ids, length, scores)
    return scores


def _length(length) -> jax.Array:
    return jnp.asarray(length, jnp.int32)


def _tail(ids: jax.Array, length: jax.Array, n: int) -> jax.Array:
    """ids[:, length - n: length] (B, n), at a traced offset with a static size (clamped at 0: callers ignore it
    when length < n)."""
    start = jnp.maximum(length - n, 0)
    return jax.lax.dynamic_slice_in_dim(ids, start, n, axis=1)


def _row_mask(tokens: jax.Array, keep: jax.Array, vocab_size: int) -> jax.Array:
    """(B, V) bool: row b holds token v for some position p with keep[b, p] (tokens (B, P) int, keep (B, P) bool).
    A scatter-max, not a (B, P, V) comparison: P is max_length and V 50257."""
    B = tokens.shape[0]
    rows = jnp.arange(B)[:, None]
    tokens = jnp.clip(tokens.astype(jnp.int32), 0, vocab_size - 1)  # junk past length: keep is False there
    hits = jnp.zeros((B, vocab_size), jnp.int32).at[rows, tokens].max(keep.astype(jnp.int32))
    return hits > 0


def _column(tokens, vocab_size: int) -> np.ndarray:
    """(V,) bool constant: True at ``tokens`` (ids outside the vocabulary are ignored, as torch's mask does)."""
    mask = np.zeros(vocab_size, dtype=bool)
    mask[[int(t) for t in tokens if 0 <= int(t) < vocab_size]] = True
    return mask


# -- processors -------------------------------------------------------------------------------------------------------
def _sequence_bias(*, bias: dict[tuple, float], vocab_size: int) -> Processor:
    """Add ``bias[seq]`` to the last token of ``seq`` when the ids end with the rest of it (bad words: -inf)."""
    single = np.zeros(vocab_size, dtype=np.float32)
    for seq, b in bias.items():
        if len(seq) == 1:
            single[seq[0]] = b
    longer = [(np.asarray(seq[:-1], np.int32), _column([seq[-1]], vocab_size), b)
              for seq, b in bias.items() if len(seq) > 1]

    def apply(ids, length, scores):
        length = _length(length)
        total = jnp.zeros_like(scores) + single
        for prefix, column, b in longer:
            n = len(prefix)
            match = jnp.all(_tail(ids, length, n).astype(jnp.int32) == prefix, axis=1)
            match = match & (length >= n + 1)  # torch: only when the ids hold the prefix and one token more
            total = total + jnp.where(match[:, None] & column[None, :], jnp.float32(b), 0.0)
        return scores + total
    return apply


def _repetition_penalty(*, penalty, vocab_size: int) -> Processor:
    def apply(ids, length, scores):  # every id so far, prompt (and its padding) included, penalised once
        written = jnp.arange(ids.shape[1])[None, :] < _length(length)  # one row: the written positions
        seen = _row_mask(ids, jnp.broadcast_to(written, ids.shape), vocab_size)
        return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)
    return apply


def _no_repeat_ngram(*, n: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):  # ban every token that would complete an n-gram already in the row
        length = _length(length)
        L = ids.shape[1]
        if L < n:  # a static shape: no n-gram fits in the buffer
            return scores
        starts = L - n + 1  # every n-gram start in the buffer; those past length - n are masked off below
        grams = jnp.stack([ids[:, k: k + starts] for k in range(n)], axis=-1)  # (B, length - n + 1, n)
        tail = _tail(ids, length, n - 1)  # the last n - 1 ids
        hit = jnp.all(grams[:, :, :-1] == tail[:, None, :], axis=-1)  # (B, length - n + 1)
        hit = hit & (jnp.arange(starts)[None, :] <= length - n)  # n-grams lying below length (none when length < n)
        banned = _row_mask(grams[:, :, -1], hit, vocab_size)
        return jnp.where(banned, -jnp.inf, scores)
    return apply


def _min_length(*, min_length, eos: list[int], vocab_size: int) -> Processor:
    """No eos before ``min_length`` ids (min_length and min_new_tokens both resolve to it)."""
    eos_mask = _column(eos, vocab_size)

    def apply(ids, length, scores):
        return jnp.where(eos_mask[None, :] & (_length(length) < min_length), -jnp.inf, scores)
    return apply


def _force(*, token, at_length, vocab_size: int) -> Processor:
    column = _column([token], vocab_size)

    def apply(ids, length, scores):
        forced = jnp.where(column[None, :], jnp.zeros_like(scores), -jnp.inf)
        return jnp.where(_length(length) == at_length, forced, scores)
    return apply


def _remove_invalid(*, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        info = jnp.finfo(scores.dtype)
        out = jnp.where(jnp.isnan(scores), jnp.zeros_like(scores), scores)
        out = jnp.where(scores == jnp.inf, info.max, out)
        return jnp.where(scores == -jnp.inf, info.min, out)
    return apply


def _decay_penalty(*, start, factor, eos: list[int], vocab_size: int) -> Processor:
    eos_mask = _column(eos, vocab_size)
    # torch multiplies by the Python float factor ** n - 1 (float64, then fp32); without x64, expm1(n log factor) in
    # fp32 keeps that relative precision where factor ** n - 1 in fp32 would cancel (factor near 1)
    log_factor = math.log(factor) if isinstance(factor, (int, float)) else jnp.log(factor)

    def apply(ids, length, scores):
        length = _length(length)
        grow = jnp.expm1((length - start).astype(jnp.float32) * log_factor).astype(scores.dtype)
        penalties = jnp.where(eos_mask[None, :], jnp.abs(scores) * grow, jnp.zeros_like(scores))
        return jnp.where(length > start, scores + penalties, scores)
    return apply


def _suppress(*, tokens, at_length, vocab_size: int) -> Processor:
    """-inf for ``tokens``, at every step (``at_length`` None) or when the ids are ``at_length`` long."""
    mask = _column(tokens, vocab_size)

    def apply(ids, length, scores):
        now = mask[None, :] if at_length is None else mask[None, :] & (_length(length) == at_length)
        return jnp.where(now, -jnp.inf, scores)
    return apply


def _renormalize(*, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        return jax.nn.log_softmax(scores, axis=-1)
    return apply


# -- warpers (sampling only): filtered tokens get -inf, at least ``keep`` tokens stay --------------------------------
def _unsort(sorted_values: jax.Array, sorted_indices: jax.Array) -> jax.Array:
    """The inverse of gathering by ``sorted_indices`` along the last axis (torch's ``scatter(1, indices, x)``)."""
    rows = jnp.arange(sorted_values.shape[0])[:, None]
    return jnp.zeros_like(sorted_values).at[rows, sorted_indices].set(sorted_values)


def _first(n: int, like: jax.Array) -> jax.Array:
    """(1, V) bool: True at the first ``n`` sorted positions."""
    return jnp.arange(like.shape[-1])[None, :] < n


def _temperature(*, temperature, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        return scores / temperature
    return apply


def _top_k(*, k: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        kth = jax.lax.top_k(scores, min(k, scores.shape[-1]))[0][..., -1:]
        return jnp.where(scores < kth, -jnp.inf, scores)
    return apply


def _top_p(*, p, keep: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        sorted_indices = jnp.argsort(scores, axis=-1, stable=True)  # ascending, ties in id order (torch's sort)
        sorted_logits = jnp.take_along_axis(scores, sorted_indices, axis=-1)
        remove = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1) <= (1 - p)
        remove = remove & ~(jnp.arange(scores.shape[-1])[None, :] >= scores.shape[-1] - keep)
        return jnp.where(_unsort(remove, sorted_indices), -jnp.inf, scores)
    return apply


def _min_p(*, min_p, keep: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        probs = jax.nn.softmax(scores, axis=-1)
        remove = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
        sorted_indices = jnp.argsort(scores, axis=-1, descending=True, stable=True)
        sorted_remove = jnp.take_along_axis(remove, sorted_indices, axis=-1) & ~_first(keep, scores)
        return jnp.where(_unsort(sorted_remove, sorted_indices), -jnp.inf, scores)
    return apply


def _typical(*, mass, keep: int, vocab_size: int) -> Processor:
    def apply(ids, length, scores):
        normalized = jax.nn.log_softmax(scores, axis=-1)
        ent = -jnp.nansum(normalized * jnp.exp(normalized), axis=-1, keepdims=True)
        shifted = jnp.abs(-normalized - ent)
        sorted_indices = jnp.argsort(shifted, axis=-1, stable=True)
        sorted_scores = jnp.take_along_axis(shifted, sorted_indices, axis=-1)
        sorted_logits = jnp.take_along_axis(scores, sorted_indices, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        last = jnp.minimum(jnp.sum(cumulative < mass, axis=1), scores.shape[-1] - 1)
        remove = sorted_scores > jnp.take_along_axis(sorted_scores, last[:, None], axis=-1)
        remove = remove & ~_first(keep, scores)
        return jnp.where(_unsort(remove, sorted_indices), -jnp.inf, scores)
    return apply


def _cutoff(threshold, keep: int) -> Processor:
    """epsilon / eta sampling: drop tokens whose probability is below threshold(scores), keeping the top ``keep``."""
    def apply(ids, length, scores):
        remove = jax.nn.softmax(scores, axis=-1) < threshold(scores)
        kth = jax.lax.top_k(scores, min(keep, scores.shape[-1]))[0][..., -1:]
        return jnp.where(remove & (scores < kth), -jnp.inf, scores)
    return apply


def _epsilon(*, epsilon, keep: int, vocab_size: int) -> Processor:
    def threshold(s):
        return epsilon
    return _cutoff(threshold, keep)


def _eta(*, eta, keep: int, vocab_size: int) -> Processor:
    def threshold(s):
        # the entropy of softmax(s), with -inf log-probabilities clamped as torch's Categorical.entropy does
        log_p = jnp.maximum(jax.nn.log_softmax(s, axis=-1), jnp.finfo(s.dtype).min)
        entropy = -jnp.sum(log_p * jax.nn.softmax(s, axis=-1), axis=-1, keepdims=True)
        eta_ = jnp.asarray(eta, s.dtype)
        return jnp.minimum(eta_, jnp.sqrt(eta_) * jnp.exp(-entropy))
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
    """buffer (rows, steps, V) with ``values`` (rows, V) written at ``step`` (a traced int: a dynamic update slice)."""
    return jax.lax.dynamic_update_slice_in_dim(buffer, values[:, None, :].astype(buffer.dtype), step, axis=1)


def uniform(shape, key, step) -> jax.Array:
    """Uniform float32 in (0, 1), never 0 or 1, from ``fold_in(key, step)``: the same bits eagerly and under jit."""
    return jax.random.uniform(jax.random.fold_in(key, step), shape, jnp.float32,
                              minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)


def gumbel(shape, key, step) -> jax.Array:
    """Gumbel(0, 1) noise keyed by (key, step): argmax(scores + noise) samples softmax(scores) (the Gumbel-max
    trick), the top k of it samples k without replacement (beam sampling)."""
    return -jnp.log(-jnp.log(uniform(shape, key, step)))


def sample(key, step, scores: jax.Array) -> jax.Array:
    """One token per row (B,) int32 drawn from softmax(scores (B, V)) with the noise of ``(key, step)``; a token at
    -inf is never drawn. Reproducible: a fixed key and step give the same tokens.

    Example::

        key = jax.random.key(0)
        tokens = sample(key, step, run_processors(processors, ids, length, logits))
    """
    return jnp.argmax(scores + gumbel(scores.shape, key, step), axis=-1).astype(jnp.int32)
