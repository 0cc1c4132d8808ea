"""Flax generate() against our PyTorch generate() (itself tested token for token against transformers 4.57.6's) on
the same random tiny checkpoint: the same token ids, scores, beam scores and beam indices; one compiled function per
bucket and option signature (counted traces); reproducible sampling; stop strings and streamers; the refusals.

The random weights use initializer_range=0.4 (as tests/torch/test_generate.py) so that next-token distributions
are peaked: greedy and beam comparisons test decisions, not float ties. One module-scoped model pair; the cases
share few option signatures, since each one is a compilation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_flax, requires_torch

pytestmark = [requires_flax, requires_torch]
jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

CONFIG = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.4,
              bos_token_id=0, eos_token_id=None, pad_token_id=None)
PAD = 3
IDS = np.array([[PAD, PAD, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15], [PAD, 40, 41, 42, 43, 44]])
MASK = (IDS != PAD).astype(np.int64)


@pytest.fixture(scope="module")
def pair():
    """(torch model, flax model with the same weights, eos): eos = two tokens greedy decoding makes early in rows
    0 and 1."""
    import gpt2.torch as ours_torch
    from gpt2.common.config import GPT2Config
    from gpt2.flax.heads import FlaxGPT2LMHeadModel
    from gpt2.flax.weights import load_canonical

    torch.manual_seed(0)
    tm = ours_torch.GPT2LMHeadModel(GPT2Config(**CONFIG)).eval()
    fm = FlaxGPT2LMHeadModel(GPT2Config(**CONFIG))
    missing, unused = load_canonical(fm, tm.state_to_canonical())
    assert not missing and not unused
    free = run(tm, IDS, attention_mask=MASK, max_new_tokens=12)
    return tm, fm, [int(free[0, 9]), int(free[1, 13])]


def run(model, *args, **kwargs):
    """generate() on either framework with numpy inputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.nn.Module):
            args = [torch.tensor(a) for a in args]
            if "attention_mask" in kwargs:
                kwargs["attention_mask"] = torch.tensor(kwargs["attention_mask"])
            return model.generate(*args, **kwargs)
        out = model.generate(*args, **kwargs)  # Flax: an output object always (transformers' Flax convention)
        return out if kwargs.get("return_dict_in_generate") else out.sequences


def np_of(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_same_ids(a, b):
    a, b = np_of(getattr(a, "sequences", a)), np_of(getattr(b, "sequences", b))
    assert a.shape == b.shape and np.array_equal(a, b), (a, b)


def traces(model) -> int:
    from gpt2.flax.generation import trace_count
    return trace_count(model)


# -- greedy ----------------------------------------------------------------------------------------------------------
def test_greedy_left_padded_equals_torch_and_buckets_do_not_recompile(pair):
    tm, fm, _ = pair
    assert_same_ids(run(tm, IDS, attention_mask=MASK, max_new_tokens=12),
                    run(fm, IDS, attention_mask=MASK, max_new_tokens=12))
    before = traces(fm)
    # another prompt length in the same bucket (5 and 6 -> 8) and another max_new_tokens in the same bucket
    # (10 and 12 -> 16): the same compiled prefill and loop
    assert_same_ids(run(tm, IDS[:, 1:], attention_mask=MASK[:, 1:], max_new_tokens=10),
                    run(fm, IDS[:, 1:], attention_mask=MASK[:, 1:], max_new_tokens=10))
    assert traces(fm) == before
    # a prompt without padding, no mask (batch 1): greedy equals torch's (another batch: one more prefill and loop)
    assert_same_ids(run(tm, IDS[1:2], max_new_tokens=9), run(fm, IDS[1:2], max_new_tokens=9))
    assert traces(fm) == before + 2


def test_several_eos_and_padding_equal_torch(pair):
    tm, fm, eos = pair
    kw = dict(attention_mask=MASK, max_new_tokens=14, eos_token_id=eos, pad_token_id=1)
    a, b = run(tm, IDS, **kw), run(fm, IDS, **kw)
    assert_same_ids(a, b)
    out = np_of(b)
    assert (out[0, 10:] == 1).all() and (out[1, 14:] == 1).all()  # finished rows padded with pad_token_id
    # every row finished early: the output ends at the step where the last one finished, as torch's
    kw = dict(attention_mask=MASK, max_new_tokens=14, eos_token_id=eos + [int(np_of(a)[2, 7])], pad_token_id=1)
    assert_same_ids(run(tm, IDS, **kw), run(fm, IDS, **kw))


def test_processors_equal_torch(pair):
    tm, fm, eos = pair
    kw = dict(attention_mask=MASK, max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=2,
              bad_words_ids=[[62], [45, 7]], sequence_bias={(97,): -2.0}, min_new_tokens=5, eos_token_id=eos,
              pad_token_id=1)
    assert_same_ids(run(tm, IDS, **kw), run(fm, IDS, **kw))


def test_scores_logits_and_transition_scores_equal_torch(pair):
    tm, fm, eos = pair
    kw = dict(attention_mask=MASK, max_new_tokens=10, eos_token_id=eos, pad_token_id=1, return_dict_in_generate=True,
              output_scores=True, output_logits=True, repetition_penalty=1.2)
    a, b = run(tm, IDS, **kw), run(fm, IDS, **kw)
    assert_same_ids(a, b)
    assert len(a.scores) == len(b.scores) == len(a.logits) == len(b.logits)
    for x, y in zip(a.scores + a.logits, b.scores + b.logits):
        x, y = np_of(x), np_of(y)
        finite = np.isfinite(x)
        assert np.array_equal(finite, np.isfinite(y)) and np.abs(x[finite] - y[finite]).max() < 1e-4
    ta = np_of(tm.compute_transition_scores(a.sequences, a.scores, normalize_logits=True))
    fa = np_of(fm.compute_transition_scores(b.sequences, b.scores, normalize_logits=True))
    assert np.allclose(ta, fa, atol=1e-4)


# -- beam search ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("early_stopping, length_penalty", [(False, 0.7), (True, 1.0)])
def test_beam_search_equals_torch(pair, early_stopping, length_penalty):
    tm, fm, eos = pair
    kw = dict(attention_mask=MASK, num_beams=3, num_return_sequences=2, max_new_tokens=8, eos_token_id=eos,
              pad_token_id=1, early_stopping=early_stopping, length_penalty=length_penalty,
              return_dict_in_generate=True, output_scores=True)
    a, b = run(tm, IDS, **kw), run(fm, IDS, **kw)
    assert_same_ids(a, b)
    assert np.array_equal(np_of(a.beam_indices), np_of(b.beam_indices))
    assert np.abs(np_of(a.sequences_scores) - np_of(b.sequences_scores)).max() < 1e-4
    for x, y in zip(a.scores, b.scores):
        x, y = np_of(x), np_of(y)
        finite = np.isfinite(x)
        assert np.array_equal(finite, np.isfinite(y)) and np.abs(x[finite] - y[finite]).max() < 1e-4
    ta = np_of(tm.compute_transition_scores(a.sequences, a.scores, a.beam_indices))
    fa = np_of(fm.compute_transition_scores(b.sequences, b.scores, b.beam_indices))
    assert np.allclose(ta, fa, atol=1e-4)


# -- sampling ---------------------------------------------------------------------------------------------------------
def test_sampling_reproducible_and_traced_options(pair):
    tm, fm, eos = pair
    kw = dict(attention_mask=MASK, max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9, top_k=20)
    a = np_of(run(fm, IDS, prng_key=jax.random.key(1), **kw))
    assert np.array_equal(a, np_of(run(fm, IDS, prng_key=jax.random.key(1), **kw)))
    assert np.array_equal(a, np_of(run(fm, IDS, seed=1, **kw)))
    assert np.array_equal(a, np_of(run(fm, IDS, prng_key=jax.random.PRNGKey(1), **kw)))  # legacy uint32 key
    assert not np.array_equal(a, np_of(run(fm, IDS, prng_key=jax.random.key(2), **kw)))
    assert a.shape == (3, 18) and np.array_equal(a[:, :6], IDS)
    before = traces(fm)
    run(fm, IDS, prng_key=jax.random.key(1), **{**kw, "temperature": 0.7, "top_p": 0.8})  # traced floats
    assert traces(fm) == before
    # top_k=1 leaves one token per row: sampling is greedy decoding, torch's tokens
    greedy = run(tm, IDS, attention_mask=MASK, max_new_tokens=12)
    assert_same_ids(greedy, run(fm, IDS, attention_mask=MASK, max_new_tokens=12, do_sample=True, top_k=1))
    # every warper traces and keeps the drawn tokens in the vocabulary
    out = np_of(run(fm, IDS, attention_mask=MASK, max_new_tokens=6, do_sample=True, min_p=0.05, typical_p=0.9,
                    epsilon_cutoff=1e-3, eta_cutoff=1e-3, num_return_sequences=2, eos_token_id=eos, pad_token_id=1))
    assert out.shape[0] == 6 and out.min() >= 0 and out.max() < CONFIG["vocab_size"]


def test_beam_sampling_reproducible(pair):
    _, fm, eos = pair
    kw = dict(attention_mask=MASK, num_beams=2, do_sample=True, max_new_tokens=6, eos_token_id=eos, pad_token_id=1)
    a = np_of(run(fm, IDS, seed=3, **kw))
    assert np.array_equal(a, np_of(run(fm, IDS, seed=3, **kw))) and a.shape[0] == 3


# -- the host loop: stop strings, streamers -------------------------------------------------------------------------------
class Letters:
    """A tokenizer whose token i decodes to one letter: stop strings made of letters."""

    def decode(self, ids):
        return "".join(chr(ord("a") + int(i) % 26) for i in ids)


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def put(self, value) -> None:
        self.calls.append(np_of(value).copy())

    def end(self) -> None:
        self.calls.append("end")


def test_stop_strings_and_streamer_equal_torch(pair):
    tm, fm, eos = pair
    free = np_of(run(tm, IDS, attention_mask=MASK, max_new_tokens=12))
    text = Letters().decode(free[0, 9:11])  # two tokens row 0 makes: it stops there, the others later or never
    kw = dict(attention_mask=MASK, max_new_tokens=12, stop_strings=[text], tokenizer=Letters(), eos_token_id=eos,
              pad_token_id=1)
    assert_same_ids(run(tm, IDS, **kw), run(fm, IDS, **kw))
    ta, fa = Recorder(), Recorder()
    a = run(tm, IDS, attention_mask=MASK, max_new_tokens=12, streamer=ta, eos_token_id=eos, pad_token_id=1)
    b = run(fm, IDS, attention_mask=MASK, max_new_tokens=12, streamer=fa, eos_token_id=eos, pad_token_id=1)
    assert_same_ids(a, b)
    assert len(ta.calls) == len(fa.calls) and fa.calls[-1] == "end"
    for x, y in zip(ta.calls[:-1], fa.calls[:-1]):
        assert np.array_equal(x, y)


# -- refusals ---------------------------------------------------------------------------------------------------------
def test_bad_inputs_refused_by_name(pair):
    _, fm, _ = pair
    with pytest.raises(ValueError, match=r"token ids in 0\.\.99, got values 0\.\.100"):
        fm.generate(np.array([[0, 100]]))
    with pytest.raises(ValueError, match="non-empty 2-D integer"):
        fm.generate(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="shape of input_ids"):
        fm.generate(IDS, attention_mask=MASK[:, 1:])
    with pytest.raises(ValueError, match="max_time"):
        fm.generate(IDS, max_time=1.0)
    with pytest.raises(ValueError, match="logits_processor is not supported in flax"):
        fm.generate(IDS, logits_processor=[print])
    with pytest.raises(ValueError, match="output_attentions"):
        fm.generate(IDS, return_dict_in_generate=True, output_attentions=True)
    with pytest.raises(ValueError, match="stop_strings with beam search"):
        fm.generate(IDS, num_beams=2, stop_strings=["a"], tokenizer=Letters())
    with pytest.raises(ValueError, match="streamer cannot be used with beam search"):
        fm.generate(IDS, num_beams=2, streamer=Recorder())
    with pytest.raises(ValueError, match="prng_key must be"):
        fm.generate(IDS, do_sample=True, prng_key=np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        fm.generate(IDS, max_new_token=3)
    with pytest.raises(ValueError, match="n_positions=64"):
        fm.generate(IDS, max_new_tokens=64)
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda ids: fm.generate(ids, max_new_tokens=2))(jnp.asarray(IDS))


def test_params_argument_runs_other_weights_without_retracing(pair):
    from flax import nnx

    _, fm, _ = pair
    params = nnx.state(fm, nnx.Param).to_pure_dict()
    same = np_of(run(fm, IDS, attention_mask=MASK, max_new_tokens=12))
    before = traces(fm)
    assert np.array_equal(same, np_of(run(fm, IDS, attention_mask=MASK, max_new_tokens=12, params=params)))
    other = jax.tree_util.tree_map(lambda a: a * -1.0, params)
    assert not np.array_equal(same, np_of(run(fm, IDS, attention_mask=MASK, max_new_tokens=12, params=other)))
    assert traces(fm) == before  # the weights are an argument of the compiled functions, not constants
