"""TF generate() against our PyTorch generate() (itself tested token for token against transformers 4.57.6's) on
the same random tiny checkpoints: the same token ids, beam scores and beam indices; the XLA-compiled loop equal to
the eager one; one compiled function per prompt bucket (counted traces); the weights captured as variables, not
constants; reproducible sampling; the refusals.

The random weights use initializer_range=0.4 (as tests/torch/test_generate.py) so that next-token distributions
are peaked: greedy and beam comparisons test decisions, not float ties. Most cases run the eager loop
(disable_compile=True: the same traced code, run op by op, nothing to compile); the compiled cases share a few
functions (module-scoped models, the same shapes and options), since each XLA compile takes seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf, requires_torch]
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

CONFIG = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.4,
              bos_token_id=0, eos_token_id=None, pad_token_id=None)
PAD = 3
IDS = np.array([[PAD, PAD, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15], [PAD, 40, 41, 42, 43, 44]])
MASK = (IDS != PAD).astype(np.int64)
SEEDS = [0, 1, 2]


def make_pair(folder, seed=0, **config):
    """Our torch model with random weights, saved, and our TF model loaded from the same files."""
    import gpt2.tf as ours_tf
    import gpt2.torch as ours_torch
    from gpt2.common.config import GPT2Config

    torch.manual_seed(seed)
    model = ours_torch.GPT2LMHeadModel(GPT2Config(**{**CONFIG, **config})).eval()
    model.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, ours_tf.TFGPT2LMHeadModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """seed -> (torch model, TF model, eos): eos = two tokens greedy decoding produces early in rows 0 and 1."""
    out = {}
    for seed in SEEDS:
        ours, tfm = make_pair(tmp_path_factory.mktemp(f"seed{seed}"), seed)
        free = ours.generate(torch.tensor(IDS), attention_mask=torch.tensor(MASK), max_new_tokens=12)
        out[seed] = ours, tfm, [int(free[0, 9]), int(free[1, 13])]
    return out


def run(model, *args, **kwargs):
    """generate() on either framework with numpy inputs; the result's tensors as numpy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.nn.Module):
            args = [torch.tensor(a) for a in args]
            if "attention_mask" in kwargs:
                kwargs["attention_mask"] = torch.tensor(kwargs["attention_mask"])
        return model.generate(*args, **kwargs)


def ids_of(out) -> np.ndarray:
    out = getattr(out, "sequences", out)
    return out.numpy() if hasattr(out, "numpy") else np.asarray(out)


def assert_same_ids(a, b):
    a, b = ids_of(a), ids_of(b)
    assert a.shape == b.shape, (a, b)
    assert np.array_equal(a, b), (a, b)


# -- greedy (eager loop; compiled below) ------------------------------------------------------------------------------
GREEDY = {
    "plain": lambda eos, free: {},
    "min_new_tokens": lambda eos, free: dict(min_new_tokens=9),
    "min_length": lambda eos, free: dict(min_length=14),
    "repetition_penalty": lambda eos, free: dict(repetition_penalty=1.5),
    "repetition_penalty<1": lambda eos, free: dict(repetition_penalty=0.7),
    "no_repeat_ngram_2": lambda eos, free: dict(no_repeat_ngram_size=2),
    "no_repeat_ngram_1": lambda eos, free: dict(no_repeat_ngram_size=1),
    "bad_words": lambda eos, free: dict(bad_words_ids=[[eos[0]], [int(free[2, 7])], [int(free[1, 6]), int(free[1, 7])],
                                                       [40, 41, 42, 43, 44, 9]]),
    "sequence_bias": lambda eos, free: dict(sequence_bias=[[[int(free[0, 7])], -4.0], [[12, 13, 14, 15], 5.0]]),
    "suppress": lambda eos, free: dict(suppress_tokens=[int(free[1, 6])], begin_suppress_tokens=[int(free[0, 6])]),
    "forced_eos": lambda eos, free: dict(forced_eos_token_id=eos[1], min_new_tokens=3),
    "decay": lambda eos, free: dict(exponential_decay_length_penalty=(2, 1.5), renormalize_logits=True),
    "invalid": lambda eos, free: dict(remove_invalid_values=True, bad_words_ids=[[7]]),
}


@pytest.mark.parametrize("case", list(GREEDY))
def test_greedy_matches_torch(pairs, case):
    ours, tfm, eos = pairs[SEEDS[list(GREEDY).index(case) % len(SEEDS)]]  # each case on one of the checkpoints
    free = ids_of(run(ours, IDS, attention_mask=MASK, max_new_tokens=12))
    kwargs = dict(max_new_tokens=16, eos_token_id=eos + [99], pad_token_id=PAD, **GREEDY[case](eos, free))
    assert_same_ids(run(ours, IDS, attention_mask=MASK, **kwargs),
                    run(tfm, IDS, attention_mask=MASK, disable_compile=True, **kwargs))


def test_greedy_unpadded_default_lengths_and_inferred_mask(pairs):
    ours, tfm, eos = pairs[1]
    for args, kwargs in [((IDS[1:2],), {}), ((IDS[1:2],), dict(max_length=10)), ((), dict(max_new_tokens=5)),
                         ((IDS,), dict(max_new_tokens=8, pad_token_id=PAD, eos_token_id=eos))]:
        assert_same_ids(run(ours, *args, **kwargs), run(tfm, *args, disable_compile=True, **kwargs))


# -- beam search ----------------------------------------------------------------------------------------------------
BEAM = {
    "4-lp0.5-early-2seq": dict(num_beams=4, length_penalty=0.5, early_stopping=True, num_return_sequences=2),
    "3-lp2-never": dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    "3-false": dict(num_beams=3, early_stopping=False),
    "3-early": dict(num_beams=3, early_stopping=True),
    "4-lp-1-false-2seq": dict(num_beams=4, length_penalty=-1.0, num_return_sequences=2),
    "3-ngram-min": dict(num_beams=3, no_repeat_ngram_size=2, min_new_tokens=4, repetition_penalty=1.2),
}


@pytest.mark.parametrize("case", list(BEAM))
def test_beam_search_matches_torch(pairs, case):
    ours, tfm, eos = pairs[SEEDS[list(BEAM).index(case) % len(SEEDS)]]
    kwargs = dict(max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True, **BEAM[case])
    a = run(ours, IDS, attention_mask=MASK, **kwargs)
    b = run(tfm, IDS, attention_mask=MASK, disable_compile=True, **kwargs)
    assert_same_ids(a, b)
    np.testing.assert_allclose(a.sequences_scores.numpy(), b.sequences_scores.numpy(), atol=1e-5, rtol=1e-5)
    assert np.array_equal(a.beam_indices.numpy(), b.beam_indices.numpy())
    assert len(a.scores) == len(b.scores)
    for x, y in zip(a.scores, b.scores):
        x, y = x.numpy(), y.numpy()
        assert np.array_equal(np.isinf(x), np.isinf(y))
        np.testing.assert_allclose(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed, eos_at, length_penalty, num_beams", [
    (0, (0, 7), 1.0, 2), (1, (2, 10), 2.0, 3), (2, (2, 10), 1.0, 4)])
def test_beam_search_never_stops_at_max_length(pairs, seed, eos_at, length_penalty, num_beams):
    ours, tfm, _ = pairs[seed]
    free = ids_of(run(ours, IDS, attention_mask=MASK, max_new_tokens=12))
    kwargs = dict(max_new_tokens=16, eos_token_id=[int(free[eos_at])], pad_token_id=PAD, num_beams=num_beams,
                  length_penalty=length_penalty, early_stopping="never", return_dict_in_generate=True,
                  output_scores=True)
    a = run(ours, IDS, attention_mask=MASK, **kwargs)
    b = run(tfm, IDS, attention_mask=MASK, disable_compile=True, **kwargs)
    assert_same_ids(a, b)
    np.testing.assert_allclose(a.sequences_scores.numpy(), b.sequences_scores.numpy(), atol=1e-5, rtol=1e-5)


# -- scores, logits, transition scores ------------------------------------------------------------------------------
def test_scores_logits_and_transition_scores(pairs):
    ours, tfm, eos = pairs[2]
    kwargs = dict(max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True, output_logits=True, repetition_penalty=1.3, bad_words_ids=[[9]])
    a = run(ours, IDS, attention_mask=MASK, **kwargs)
    b = run(tfm, IDS, attention_mask=MASK, disable_compile=True, **kwargs)
    assert_same_ids(a, b)
    assert len(a.scores) == len(b.scores) == len(b.logits) == b.sequences.shape[1] - IDS.shape[1]
    for x, y in zip(a.scores + a.logits, b.scores + b.logits):
        x, y = x.numpy(), y.numpy()
        assert x.shape == y.shape == (3, 100)
        assert np.array_equal(np.isinf(x), np.isinf(y))
        np.testing.assert_allclose(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0),
                                   atol=1e-4, rtol=0)
    for normalize in (False, True):
        want = ours.compute_transition_scores(a.sequences, a.scores, normalize_logits=normalize).numpy()
        got = tfm.compute_transition_scores(b.sequences, b.scores, normalize_logits=normalize).numpy()
        np.testing.assert_allclose(np.nan_to_num(got, neginf=0), np.nan_to_num(want, neginf=0), atol=1e-4)
    beam = dict(kwargs, num_beams=3, num_return_sequences=2, output_logits=False)
    a, b = run(ours, IDS, attention_mask=MASK, **beam), run(tfm, IDS, attention_mask=MASK, disable_compile=True,
                                                           **beam)
    want = ours.compute_transition_scores(a.sequences, a.scores, a.beam_indices).numpy()
    got = tfm.compute_transition_scores(b.sequences, b.scores, b.beam_indices).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


# -- compiled: equal to the eager loop and to torch; one function per bucket ------------------------------------------
COMPILED = {
    "greedy": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=2),
    "beam": dict(num_beams=3, num_return_sequences=2, length_penalty=0.8),
}


@pytest.fixture(scope="module")
def compiled_pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("compiled"), 1)


@pytest.mark.parametrize("case", list(COMPILED))
def test_compiled_equals_eager_and_torch_and_does_not_retrace_in_bucket(compiled_pair, case):
    ours, tfm = compiled_pair
    kwargs = dict(max_new_tokens=10, eos_token_id=[7, 21], pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True, **COMPILED[case])
    xla = run(tfm, IDS, attention_mask=MASK, **kwargs)
    eager = run(tfm, IDS, attention_mask=MASK, disable_compile=True, **kwargs)
    assert_same_ids(xla, eager)
    assert_same_ids(xla, run(ours, IDS, attention_mask=MASK, **kwargs))
    for x, y in zip(xla.scores, eager.scores):
        np.testing.assert_allclose(np.nan_to_num(x.numpy(), neginf=0), np.nan_to_num(y.numpy(), neginf=0),
                                   atol=1e-4)
    traces = tfm.__dict__["_generate_traces"]
    # prompts of 5 and 7 tokens share the bucket of 6 (8 slots), as do 10 and 13 new tokens (16 slots)
    for ids, mask, new in [(IDS[:, 1:], MASK[:, 1:], 13), (np.concatenate([IDS[:, :1], IDS], 1),
                                                           np.concatenate([MASK[:, :1], MASK], 1), 10)]:
        got = run(tfm, ids, attention_mask=mask, **{**kwargs, "max_new_tokens": new})
        assert_same_ids(got, run(ours, ids, attention_mask=mask, **{**kwargs, "max_new_tokens": new}))
    assert tfm.__dict__["_generate_traces"] == traces, "a prompt length in the same bucket retraced"


def test_weights_are_captured_as_variables_not_constants(compiled_pair):
    """The compiled function reads the Keras variables as resource inputs: no constant copy of the weights (which
    would make compile time and memory grow with the model), and new weights are used without recompiling."""
    _, tfm = compiled_pair
    kwargs = dict(max_new_tokens=10, eos_token_id=[7, 21], pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True, **COMPILED["greedy"])
    run(tfm, IDS, attention_mask=MASK, **kwargs)  # the function of the compiled greedy test (kept on the model)
    wte = tfm.config.vocab_size * tfm.config.n_embd
    for fn in tfm.__dict__["_generate_functions"].values():
        for concrete in fn._list_all_concrete_functions():
            sizes = [int(np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim]))
                     for node in concrete.graph.as_graph_def().node if node.op == "Const"]
            assert max(sizes) < wte, f"a constant of {max(sizes)} elements: weights baked into the graph"
            handles = [t for t in concrete.captured_inputs if t.dtype == tf.resource]
            assert len(handles) >= len(tfm.weights)


def test_compiled_functions_hold_one_copy_of_the_blocks(compiled_pair):
    """The prompt's forward runs before the compiled function (generation.py ``prefill``): each block's four
    projections appear once in it (the one-token step), not twice, for greedy decoding and beam search alike."""
    _, tfm = compiled_pair
    for case in COMPILED:
        run(tfm, IDS, attention_mask=MASK, max_new_tokens=10, eos_token_id=[7, 21], pad_token_id=PAD, **COMPILED[case])
    for fn in tfm.__dict__["_generate_functions"].values():
        for concrete in fn._list_all_concrete_functions():
            graph = concrete.graph.as_graph_def()
            nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
            assert sum(node.op == "MatMul" for node in nodes) == 4 * tfm.config.n_layer


# -- sampling ---------------------------------------------------------------------------------------------------------
def test_sampling_reproducible_from_a_seed_compiled_and_eager(compiled_pair):
    _, tfm = compiled_pair
    kwargs = dict(max_new_tokens=10, do_sample=True, top_k=20, top_p=0.95, temperature=1.3, pad_token_id=PAD,
                  num_return_sequences=2)
    first = ids_of(run(tfm, IDS, attention_mask=MASK, seed=7, **kwargs))
    assert first.shape == (6, 16)
    assert_same_ids(first, run(tfm, IDS, attention_mask=MASK, seed=7, **kwargs))
    assert_same_ids(first, run(tfm, IDS, attention_mask=MASK, seed=7, disable_compile=True, **kwargs))
    others = [ids_of(run(tfm, IDS, attention_mask=MASK, seed=s, **kwargs)) for s in (8, 9)]
    assert not all(np.array_equal(first, o) for o in others)
    # top_k=1 sampling is greedy decoding
    assert_same_ids(run(tfm, IDS, attention_mask=MASK, max_new_tokens=6, do_sample=True, top_k=1, seed=3,
                        disable_compile=True),
                    run(tfm, IDS, attention_mask=MASK, max_new_tokens=6, disable_compile=True))


def test_sampling_follows_the_distribution():
    """The Gumbel-max draw samples softmax(scores): frequencies over many rows match the probabilities."""
    from gpt2.tf.logits_process import gumbel

    scores = tf.math.log(tf.constant([[0.5, 0.3, 0.15, 0.05]]))
    draws = tf.argmax(tf.repeat(scores, 20000, axis=0) + gumbel([20000, 4], tf.constant([1, 2]), 5), axis=-1)
    freq = np.bincount(draws.numpy(), minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)


# -- refusals and bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(stop_strings=["a"]), "stop_strings"), (dict(max_time=1.0), "max_time"),
    (dict(stopping_criteria=[lambda ids, s: None]), "stopping_criteria"),
    (dict(logits_processor=[lambda ids, s: s]), "logits_processor"),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: [1]), "prefix_allowed_tokens_fn"),
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
    (dict(return_dict_in_generate=True, output_attentions=True), "output_attentions"),
])
def test_refused_by_name(pairs, kwargs, name):
    _, tfm, _ = pairs[0]
    with pytest.raises(ValueError, match=name):
        tfm.generate(IDS, max_new_tokens=2, **kwargs)


def test_bad_input_is_checked_on_the_host(pairs):
    _, tfm, _ = pairs[0]
    with pytest.raises(ValueError, match="0..99"):
        tfm.generate(np.array([[1, 100]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="integer"):
        tfm.generate(np.array([[1.0, 2.0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask"):
        tfm.generate(IDS, attention_mask=MASK[:, 1:], max_new_tokens=2)
    with pytest.raises(ValueError, match="n_positions"):
        tfm.generate(IDS, max_new_tokens=100)
    with pytest.raises(TypeError, match="tempreature"):
        tfm.generate(IDS, max_new_tokens=2, tempreature=0.5)


def test_inside_a_user_xla_function(compiled_pair):
    """tf.function(model.generate, jit_compile=True): the same tokens, padded to max_length as transformers' TF
    generate() returns them under XLA."""
    ours, tfm = compiled_pair
    kwargs = dict(max_new_tokens=10, eos_token_id=[7, 21], pad_token_id=PAD, **COMPILED["greedy"])
    want = ids_of(run(tfm, IDS, attention_mask=MASK, **kwargs))
    xla = tf.function(tfm.generate, jit_compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = xla(tf.constant(IDS), attention_mask=tf.constant(MASK), **kwargs).numpy()
    assert got.shape == (3, IDS.shape[1] + 10)
    assert np.array_equal(got[:, :want.shape[1]], want)
    assert (got[:, want.shape[1]:] == PAD).all()
    with pytest.raises(ValueError, match="return_dict_in_generate"):
        tf.function(tfm.generate)(tf.constant(IDS), max_new_tokens=2, return_dict_in_generate=True)
