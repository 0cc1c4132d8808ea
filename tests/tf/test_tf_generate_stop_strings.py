"""TF generate() with stop_strings and streamers: the compiled loop runs in chunks and the host checks the strings
and feeds the streamer between them (gpt2/common/host_loop.py ``run_in_chunks``). Against our PyTorch generate() (tested
against transformers 4.57.6's StopStringCriteria in tests/torch/test_stop_strings.py) on the same random tiny
checkpoints: the same tokens, rows stopping inside a chunk and on its boundary, with and without eos (padding after
a row's stop, or not), scores when recorded, the same streamer calls; sampling stops where its free run says; the
refusals.

The tokenizer is a stand-in (token i decodes to a fixed short text), so that stop strings can straddle tokens of
a 100-token vocabulary.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf, requires_torch]
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from test_tf_generate import IDS, MASK, PAD, ids_of, make_pair, run  # noqa: E402


class Texts:
    """A stand-in tokenizer: token i decodes to texts[i] (one to three characters)."""

    def __init__(self, vocab_size: int = 100, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        letters = list("abcdefgh \n")
        self.texts = ["".join(rng.choice(letters, size=rng.integers(1, 4))) for _ in range(vocab_size)]

    def decode(self, ids) -> str:
        return "".join(self.texts[int(i)] for i in ids)


TOKENIZER = Texts()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("stop"), 0)


def straddling(free: np.ndarray, start: int, row: int, step: int) -> str:
    """A stop string made of the end of token ``step`` - 1 and the start of token ``step`` of ``row``'s output, so
    that it first occurs (at the latest) when that token is written."""
    before, at = TOKENIZER.texts[free[row, start + step - 1]], TOKENIZER.texts[free[row, start + step]]
    return before[-1:] + at[:1]


def free_run(model, **kwargs) -> np.ndarray:
    return ids_of(run(model, IDS, attention_mask=MASK, **kwargs))


@pytest.mark.parametrize("eos", [None, [8, 84]], ids=["no-eos", "eos"])  # 8, 84: late in the free runs
@pytest.mark.parametrize("steps", [(2, 10, 5), (7, 8, 1), (12, 3, 6)], ids=["inside-chunks", "chunk-boundary",
                                                                          "late"])
def test_greedy_stops_like_torch(pair, eos, steps):
    """Each row gets a stop string of its own (the chunks are 8 steps: stops inside one, at its last step, past
    it)."""
    ours, tfm = pair
    kwargs = dict(max_new_tokens=16, eos_token_id=eos, pad_token_id=PAD)
    free = free_run(ours, **kwargs)
    T = IDS.shape[1]
    stops = [straddling(free, T, row, step) for row, step in enumerate(steps)]
    want = free_run(ours, stop_strings=stops, tokenizer=TOKENIZER, **kwargs)
    assert want.shape[1] <= T + max(steps) + 1 < free.shape[1]  # every row stopped, the last at its step or before
    got = free_run(tfm, stop_strings=stops, tokenizer=TOKENIZER, **kwargs)
    assert np.array_equal(got, want), (got, want)
    eager = free_run(tfm, stop_strings=stops, tokenizer=TOKENIZER, disable_compile=True, **kwargs)
    assert np.array_equal(eager, want)


def test_scores_when_recorded_are_torch_scores(pair):
    """With output_scores the host checks after every step: a stopped row's later scores are those of its padding,
    as in torch."""
    ours, tfm = pair
    kwargs = dict(max_new_tokens=12, eos_token_id=[97], pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True)
    free = free_run(ours, max_new_tokens=12, eos_token_id=[97], pad_token_id=PAD)
    stops = [straddling(free, IDS.shape[1], 0, 3)]
    want = run(ours, IDS, attention_mask=MASK, stop_strings=stops, tokenizer=TOKENIZER, **kwargs)
    got = run(tfm, IDS, attention_mask=MASK, stop_strings=stops, tokenizer=TOKENIZER, **kwargs)
    assert np.array_equal(ids_of(got), ids_of(want))
    assert len(got.scores) == len(want.scores)
    for a, b in zip(got.scores, want.scores):
        a, b = a.numpy(), b.numpy()
        finite = np.isfinite(b)
        assert np.array_equal(np.isfinite(a), finite)
        np.testing.assert_allclose(a[finite], b[finite], atol=1e-4, rtol=1e-4)


def test_sampling_stops_where_its_free_run_says(pair):
    """Sampling draws the same tokens with or without stop strings (the noise is keyed by seed and step); the
    output is the free run up to the step where every row had stopped, later tokens of stopped rows padded."""
    _, tfm = pair
    kwargs = dict(max_new_tokens=16, eos_token_id=[97], pad_token_id=PAD, do_sample=True, seed=3)
    free = free_run(tfm, **kwargs)
    T = IDS.shape[1]
    stop = straddling(free, T, 2, 9)
    got = free_run(tfm, stop_strings=stop, tokenizer=TOKENIZER, **kwargs)
    # where each row first shows the string ending inside its last token (StopStrings' rule, checked by brute force)
    ends = []
    for row in free:
        for t in range(T, free.shape[1]):
            text, last = TOKENIZER.decode(row[:t + 1]), TOKENIZER.texts[row[t]]
            if text.find(stop, max(0, len(text) - len(last) - len(stop) + 1)) != -1 or row[t] == 97:
                ends.append(t + 1)
                break
        else:
            ends.append(free.shape[1])
    assert got.shape[1] == max(ends)
    for b, end in enumerate(ends):
        assert np.array_equal(got[b, :end], free[b, :end])
        assert (got[b, end:] == PAD).all()


def test_refusals(pair):
    _, tfm = pair
    with pytest.raises(ValueError, match="tokenizer"):
        tfm.generate(IDS, max_new_tokens=3, stop_strings=["a"])
    with pytest.raises(ValueError, match="stop_strings with beam search"):
        tfm.generate(IDS, max_new_tokens=3, num_beams=2, stop_strings=["a"], tokenizer=TOKENIZER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="stop_strings is not supported there"):
            tf.function(tfm.generate)(tf.constant(IDS), max_new_tokens=2, stop_strings=["a"], tokenizer=TOKENIZER)


class Recorder:
    """A streamer that keeps what generate() hands it: the prompt, then each step's tokens, then the end."""

    def __init__(self) -> None:
        self.puts, self.ended = [], 0

    def put(self, value) -> None:
        self.puts.append(np.asarray(value.numpy() if hasattr(value, "numpy") else value).tolist())

    def end(self) -> None:
        self.ended += 1


@pytest.mark.parametrize("stop", [False, True], ids=["streamer", "streamer-and-stop-strings"])
def test_streamer_gets_what_torch_hands_it(pair, stop):
    """The prompt, then every step's tokens (padding of finished rows included) up to the last step, then end():
    the same calls as torch's generate makes, though they come a chunk of steps at a time."""
    ours, tfm = pair
    kwargs = dict(max_new_tokens=12, eos_token_id=[8, 84], pad_token_id=PAD)
    if stop:
        free = free_run(ours, **kwargs)
        kwargs.update(stop_strings=[straddling(free, IDS.shape[1], row, step) for row, step in enumerate((2, 9, 5))],
                      tokenizer=TOKENIZER)
    want, got = Recorder(), Recorder()
    expected = free_run(ours, streamer=want, **kwargs)
    assert np.array_equal(free_run(tfm, streamer=got, **kwargs), expected)
    assert got.puts == want.puts and got.ended == want.ended == 1
    assert len(got.puts) == 1 + expected.shape[1] - IDS.shape[1]


def test_streamer_with_beam_search_is_refused(pair):
    _, tfm = pair
    with pytest.raises(ValueError, match="streamer cannot be used with beam search"):
        tfm.generate(IDS, max_new_tokens=3, num_beams=2, streamer=Recorder())
