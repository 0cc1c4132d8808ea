"""The JAX logits processors equal torch's on the same inputs (same specs from common/decoding.py, same scores), read
nothing at or past ``length``, and trace under jax.jit with ``length`` and the numeric options traced; record_step;
the JAX Stop against torch's; sampling reproducible for a fixed key and distributed as softmax(scores)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")

from gpt2.common.decoding import ProcessorSpec, merge, plan, processor_specs  # noqa: E402
from gpt2.flax import logits_process as jxp  # noqa: E402
from gpt2.flax.stopping import Stop  # noqa: E402
from gpt2.torch import logits_process as ptp  # noqa: E402
from gpt2.torch.stopping import Stop as TorchStop  # noqa: E402

V, B, MAX = 12, 3, 20
PAD = 0

EVERY_PROCESSOR = dict(
    sequence_bias=[[[1, 2], 0.5], [[3], -1.0], [[2, 4, 5], 2.0]], repetition_penalty=1.3, no_repeat_ngram_size=2,
    bad_words_ids=[[4, 5], [6]], min_new_tokens=3, forced_bos_token_id=None, forced_eos_token_id=7,
    remove_invalid_values=True, exponential_decay_length_penalty=(1, 1.2), suppress_tokens=[8],
    begin_suppress_tokens=[9], eos_token_id=7, pad_token_id=PAD, renormalize_logits=True,
)
WARPERS = dict(do_sample=True, temperature=0.8, top_k=6, top_p=0.9, min_p=0.05, typical_p=0.95, epsilon_cutoff=0.01,
               eta_cutoff=0.01)
CASES = {
    "processors": EVERY_PROCESSOR, "warpers": {**EVERY_PROCESSOR, **WARPERS},
    "ngram3": dict(no_repeat_ngram_size=3, repetition_penalty=0.7), "top_p": dict(do_sample=True, top_p=0.5),
    "min_p": dict(do_sample=True, min_p=0.2), "typical": dict(do_sample=True, typical_p=0.5),
    "eta": dict(do_sample=True, eta_cutoff=0.2), "epsilon": dict(do_sample=True, epsilon_cutoff=0.1),
    "top_k": dict(do_sample=True, top_k=3, temperature=1.7), "forced_bos": dict(forced_bos_token_id=3),
    "min_length": dict(min_length=8, eos_token_id=[7, 2], pad_token_id=PAD),
    "decay": dict(exponential_decay_length_penalty=(0, 1.01), eos_token_id=[7, 2], pad_token_id=PAD),
    "beam_sample": dict(do_sample=True, num_beams=2, top_k=1, top_p=0.3, min_p=0.5, eos_token_id=[7, 2]),
}
LENGTHS = [1, 2, 3, 5, 6, 8, MAX - 1]
# generation.py traces these (common/host_loop.py TRACED_OPTIONS plus the float options): one compiled loop for many
TRACED_INTS = ("min_length", "at_length", "start")
TRACED_FLOATS = ("temperature", "penalty", "p", "min_p", "mass", "epsilon", "eta", "factor")


def _specs(options, prompt_length=5, vocab_size=V, max_length=MAX):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = merge(None, max_new_tokens=max_length - prompt_length, **options)
        run = plan(cfg, input_length=prompt_length, max_positions=None, vocab_size=vocab_size,
                   has_attention_mask=True)
    return processor_specs(cfg, run, vocab_size=vocab_size)


def _split(specs):
    """The specs with every traceable option taken out (a static key) and those options' values, in order."""
    static, numbers = [], []
    for spec in specs:
        traced = tuple(k for k in spec.options if k in TRACED_INTS + TRACED_FLOATS and spec.options[k] is not None)
        numbers += [spec.options[k] for k in traced]
        static.append((spec.name, {k: v for k, v in spec.options.items() if k not in traced}, traced))
    return static, numbers


def _jitted(specs, vocab_size):
    """One compiled function for ``specs``: ``length`` and every traceable option are arguments."""
    static, numbers = _split(specs)

    def run(ids, length, scores, numbers):
        built, i = [], 0
        for name, options, traced in static:
            options = dict(options)
            for k in traced:
                options[k], i = numbers[i], i + 1
            built.append(ProcessorSpec(name, options))
        return jxp.run_processors(jxp.build_processors(built, vocab_size=vocab_size), ids, length, scores)

    compiled = jax.jit(run)
    ints = set(TRACED_INTS)
    kinds = [k for _, _, traced in static for k in traced]
    return lambda ids, length, scores: compiled(
        ids, jnp.int32(length), scores,
        [jnp.int32(v) if k in ints else jnp.float32(v) for k, v in zip(kinds, numbers)])


_COMPILED: dict[str, object] = {}  # one compiled function per case, shared by the lengths (all traced)


def _compiled(case):
    if case not in _COMPILED:
        _COMPILED[case] = _jitted(_specs(CASES[case]), V)
    return _COMPILED[case]


def _inputs(length, seed):
    rng = np.random.default_rng(seed)
    written = rng.integers(0, 6, (B, length))  # few distinct ids: n-grams and prefixes repeat
    written[1, : min(3, length - 1)] = PAD  # a left-padded row
    scores = rng.standard_normal((B, V)).astype(np.float32) * 2
    scores[0, 3] = scores[0, 5]  # a tie
    scores[2] = np.round(scores[2])  # many ties: sorts must break them as torch does
    scores[1, 10] = -np.inf  # an id already banned (bad words, an earlier processor)
    return written, scores


def _torch(specs, written, scores, vocab_size=V, max_length=MAX):
    length = written.shape[1]
    ids = torch.from_numpy(np.pad(written, ((0, 0), (0, max_length - length)), constant_values=PAD))
    return ptp.run_processors(ptp.build_processors(specs, vocab_size=vocab_size, device="cpu"), ids, length,
                              torch.from_numpy(scores.copy())).numpy()


def _assert_same(got, want, what):
    got = np.asarray(got)
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), (what, got, want)
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5, err_msg=str(what))


@pytest.mark.parametrize("case", list(CASES))
def test_same_scores_as_torch_jitted_and_eager(case):
    specs = _specs(CASES[case])
    processors = jxp.build_processors(specs, vocab_size=V)
    for length in LENGTHS:
        written, scores = _inputs(length, seed=length)
        want = _torch(specs, written, scores)
        for junk in (0, 11, 99):  # what lies past ``length`` must not matter (99: not even a token)
            buffer = np.full((B, MAX), junk, dtype=np.int32)
            buffer[:, :length] = written
            jitted = _compiled(case)(jnp.asarray(buffer), length, jnp.asarray(scores))
            _assert_same(jitted, want, (case, length, junk, "jit"))
            if junk == 11:  # eager, with Python options and a Python length
                eager = jxp.run_processors(processors, jnp.asarray(buffer), length, jnp.asarray(scores))
                _assert_same(eager, want, (case, length, junk, "eager"))


def test_each_processor_alone():
    """Every builder on its own (a bug in one is not hidden by a later -inf or log_softmax)."""
    specs = [s for case in CASES.values() for s in _specs(case) if s.name != "custom"]
    assert {s.name for s in specs} == set(jxp._BUILDERS)  # the cases cover every processor
    for spec in specs:
        processors = jxp.build_processors([spec], vocab_size=V)
        for length in (1, 2, 4, MAX - 1):
            written, scores = _inputs(length, seed=100 + length)
            buffer = np.full((B, MAX), 11, dtype=np.int32)
            buffer[:, :length] = written
            got = jxp.run_processors(processors, jnp.asarray(buffer), length, jnp.asarray(scores))
            _assert_same(got, _torch([spec], written, scores), (spec, length))


def test_remove_invalid_values_as_torch():
    (spec,) = [s for s in _specs(dict(remove_invalid_values=True)) if s.name == "remove_invalid_values"]
    scores = np.array([[0.5, np.nan, np.inf, -np.inf] * 3] * B, dtype=np.float32)
    written = np.ones((B, 4), dtype=np.int64)
    want = _torch([spec], written, scores)
    got = np.asarray(jxp.run_processors(jxp.build_processors([spec], vocab_size=V), jnp.zeros((B, MAX), jnp.int32),
                                        4, jnp.asarray(scores)))
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()


def test_realistic_chain_at_gpt2_vocabulary():
    """A GPT-2-sized chain (50257 tokens): repetition penalty, n-grams, bad words, temperature, top-k, top-p."""
    vocab, max_length, rows = 50257, 40, 2
    options = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.92, repetition_penalty=1.15,
                   no_repeat_ngram_size=3, bad_words_ids=[[198, 198], [50], [7, 8, 9]], eos_token_id=50256,
                   pad_token_id=50256, min_new_tokens=2)
    specs = _specs(options, prompt_length=8, vocab_size=vocab, max_length=max_length)
    compiled = _jitted(specs, vocab)
    rng = np.random.default_rng(0)
    for length in (8, 9, 23):
        written = rng.integers(0, 60, (rows, length))  # repeats, some of them the bad words' prefixes
        written[0, :2] = 50256  # left padding
        written[1, length - 2:] = [7, 8]
        scores = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
        want = _torch(specs, written, scores, vocab_size=vocab, max_length=max_length)
        buffer = np.full((rows, max_length), 50256, dtype=np.int32)
        buffer[:, :length] = written
        got = compiled(jnp.asarray(buffer), length, jnp.asarray(scores))
        _assert_same(got, want, length)
        assert 1 <= np.isfinite(np.asarray(got)).sum(-1).min() <= 50


def test_python_processors_are_refused_by_name():
    specs = _specs({})
    with pytest.raises(ValueError, match="logits_processor is not supported in flax"):
        jxp.build_processors(specs, vocab_size=V, custom=[lambda ids, s: s])
    with pytest.raises(ValueError, match="prefix_allowed_tokens_fn is not supported in flax"):
        jxp.build_processors([ProcessorSpec("prefix_allowed_tokens", {"num_beams": 1})], vocab_size=V)
    assert jxp.build_processors(specs, vocab_size=V) == []  # the "custom" marker alone builds nothing


# -- record_step ------------------------------------------------------------------------------------------------------
def test_record_step_writes_one_step_at_a_traced_index():
    rows, steps = 3, 5
    values = np.arange(rows * V, dtype=np.float32).reshape(rows, V)
    write = jax.jit(jxp.record_step)
    buffer, want = jnp.zeros((rows, steps, V), jnp.float32), np.zeros((rows, steps, V), np.float32)
    for step in (0, 3, steps - 1):  # each write keeps the earlier ones
        got = np.asarray(write(buffer, jnp.int32(step), jnp.asarray(values + step)))
        want[:, step] = values + step
        np.testing.assert_array_equal(got, want)
        buffer = jnp.asarray(got)
    eager = np.asarray(jxp.record_step(jnp.zeros((rows, steps, V)), 2, jnp.asarray(values)))
    assert np.array_equal(eager[:, 2], values) and not eager[:, [0, 1, 3, 4]].any()


# -- Stop -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eos", [[], [7], [7, 2]])
def test_stop_equals_torch_jitted(eos):
    max_length = 9
    stop = Stop(eos=eos, max_length=max_length)
    reference = TorchStop(eos=eos, max_length=max_length, max_time=None, device="cpu")
    traced = jax.jit(lambda ids, length, limit: Stop(eos=eos, max_length=limit)(ids, length))
    rng = np.random.default_rng(len(eos))
    buffer = rng.integers(0, V, (4, MAX)).astype(np.int32)
    buffer[:, 3] = [7, 2, 5, 7]  # rows ending on each eos, or none
    for length in (1, 4, 5, max_length - 1, max_length, MAX):
        want = reference(torch.from_numpy(buffer[:, :length].astype(np.int64))).numpy()
        for got in (stop(jnp.asarray(buffer), length), traced(jnp.asarray(buffer), jnp.int32(length),
                                                             jnp.int32(max_length))):
            assert got.dtype == jnp.bool_ and got.shape == (4,)
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"eos={eos} length={length}")


def test_stop_refuses_host_criteria_by_name():
    for kwargs, name in ((dict(max_time=1.0), "max_time"), (dict(stop_strings=object()), "stop_strings"),
                         (dict(criteria=[lambda ids, s: None]), "stopping_criteria")):
        with pytest.raises(ValueError, match=f"{name} is not supported in flax"):
            Stop(eos=[1], max_length=4, **kwargs)


# -- sampling ---------------------------------------------------------------------------------------------------------
def test_sampling_is_reproducible_and_keyed_by_step():
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((64, V)).astype(np.float32))
    key = jax.random.key(1)
    draw = jax.jit(jxp.sample)
    first = np.asarray(draw(key, jnp.int32(3), scores))
    assert first.dtype == np.int32 and first.shape == (64,)
    np.testing.assert_array_equal(first, np.asarray(draw(key, jnp.int32(3), scores)))
    np.testing.assert_array_equal(first, np.asarray(jxp.sample(key, 3, scores)))  # eager draws the same bits
    assert not np.array_equal(first, np.asarray(draw(key, jnp.int32(4), scores)))  # another step, other noise
    assert not np.array_equal(first, np.asarray(draw(jax.random.key(2), jnp.int32(3), scores)))  # another key
    noise = np.asarray(jxp.gumbel((4, V), key, 3))
    assert np.isfinite(noise).all() and noise.dtype == np.float32
    u = np.asarray(jxp.uniform((1000, V), key, 0))
    assert (u > 0).all() and (u < 1).all()


def test_sampling_follows_softmax():
    """Frequencies of many rows' draws against softmax(scores), within 5 standard errors (a fixed key: no flake)."""
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]), dtype=np.float32)
    logits = np.concatenate([logits, np.full(V - 4, -np.inf, np.float32)])
    rows = 20000
    tokens = np.asarray(jxp.sample(jax.random.key(0), 7, jnp.broadcast_to(jnp.asarray(logits), (rows, V))))
    freq = np.bincount(tokens, minlength=V) / rows
    p = np.exp(logits)
    assert (freq[4:] == 0).all()  # -inf is never drawn
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / rows) + 1e-9)


def test_peaked_and_top_k_1_sampling_are_argmax():
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((32, V)).astype(np.float32)
    argmax = scores.argmax(-1)
    peaked = scores.copy()
    peaked[np.arange(32), argmax] += 60.0  # e**-60: no other token in 32 rows x 12 steps
    top_k = jxp.build_processors(_specs(dict(do_sample=True, top_k=1, temperature=0.5)), vocab_size=V)
    ids = jnp.zeros((32, MAX), jnp.int32)
    for step in range(12):
        key = jax.random.key(step)
        np.testing.assert_array_equal(np.asarray(jxp.sample(key, step, jnp.asarray(peaked))), argmax)
        warped = jxp.run_processors(top_k, ids, 5, jnp.asarray(scores))
        np.testing.assert_array_equal(np.asarray(jxp.sample(key, step, warped)), argmax)


def test_gumbel_top_k_draws_without_replacement_as_beam_sampling_does():
    scores = jnp.asarray(np.log([[0.4, 0.3, 0.2, 0.1] + [1e-30] * (V - 4)], dtype=np.float32))
    rows = jnp.broadcast_to(scores, (5000, V))
    picked = np.asarray(jax.lax.top_k(rows + jxp.gumbel(rows.shape, jax.random.key(3), 0), 2)[1])
    assert (picked < 4).all() and (picked[:, 0] != picked[:, 1]).all()
    # the first of the two is a plain draw from softmax(scores)
    freq = np.bincount(picked[:, 0], minlength=V)[:4] / 5000
    np.testing.assert_array_less(np.abs(freq - [0.4, 0.3, 0.2, 0.1]), 0.03)
    assert math.isclose(float(jnp.mean(jxp.gumbel((200000,), jax.random.key(4), 1))), 0.5772, abs_tol=0.01)


def test_processors_and_stop_inside_a_while_loop_as_torch_greedy():
    """A toy decode loop (next logits: a table row of the last token) under jit + lax.while_loop, greedy with
    processors and Stop, against the same loop in torch, step by step in Python."""
    rng = np.random.default_rng(9)
    table = rng.standard_normal((V, V)).astype(np.float32)
    prompt = rng.integers(1, 6, (B, 4))
    options = dict(repetition_penalty=1.5, no_repeat_ngram_size=2, bad_words_ids=[[3, 4]], min_new_tokens=4,
                   eos_token_id=7, pad_token_id=PAD)
    specs = _specs(options, prompt_length=4)

    processors, stop = ptp.build_processors(specs, vocab_size=V, device="cpu"), TorchStop(
        eos=[7], max_length=MAX, max_time=None, device="cpu")
    ids = torch.zeros((B, MAX), dtype=torch.long)
    ids[:, :4] = torch.from_numpy(prompt)
    done = torch.zeros(B, dtype=torch.bool)
    for length in range(4, MAX):
        scores = ptp.run_processors(processors, ids, length, torch.from_numpy(table)[ids[:, length - 1]])
        ids[:, length] = torch.where(done, PAD, scores.argmax(-1))
        done = done | stop(ids[:, : length + 1])
        if done.all():
            break
    want = ids.numpy()

    @jax.jit
    def decode(ids, start, min_length):
        traced = [ProcessorSpec(s.name, {**s.options, "min_length": min_length}) if s.name == "min_length" else s
                  for s in specs]
        processors, stop = jxp.build_processors(traced, vocab_size=V), Stop(eos=[7], max_length=MAX)

        def body(carry):
            ids, length, done = carry
            last = jax.lax.dynamic_index_in_dim(ids, length - 1, axis=1, keepdims=False)
            scores = jxp.run_processors(processors, ids, length, jnp.asarray(table)[last])
            token = jnp.where(done, PAD, jnp.argmax(scores, -1).astype(jnp.int32))
            ids = jax.lax.dynamic_update_slice_in_dim(ids, token[:, None], length, axis=1)
            return ids, length + 1, done | stop(ids, length + 1)

        def running(carry):
            return ~jnp.all(carry[2])
        return jax.lax.while_loop(running, body, (ids, start, jnp.zeros(B, bool)))[0]

    buffer = np.zeros((B, MAX), np.int32)
    buffer[:, :4] = prompt
    (spec,) = [s for s in specs if s.name == "min_length"]
    got = np.asarray(decode(jnp.asarray(buffer), jnp.int32(4), jnp.int32(spec.options["min_length"])))
    np.testing.assert_array_equal(got, want)
    assert (want[:, 4:] != PAD).any()
