"""The TF logits processors equal torch's on the same inputs (same specs from common/decoding.py, same scores),
read nothing at or past ``length``, and trace inside an XLA-compiled function with ``length`` a tensor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf, requires_torch]
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from gpt2.common.decoding import merge, plan, processor_specs  # noqa: E402
from gpt2.tf import logits_process as tfp  # noqa: E402
from gpt2.torch import logits_process as ptp  # noqa: E402

V, B, MAX = 12, 3, 20

EVERY_PROCESSOR = dict(
    sequence_bias=[[[1, 2], 0.5], [[3], -1.0], [[2, 4, 5], 2.0]], repetition_penalty=1.3, no_repeat_ngram_size=2,
    bad_words_ids=[[4, 5], [6]], min_new_tokens=3, forced_bos_token_id=None, forced_eos_token_id=7,
    remove_invalid_values=True, exponential_decay_length_penalty=(1, 1.2), suppress_tokens=[8],
    begin_suppress_tokens=[9], eos_token_id=7, pad_token_id=0, renormalize_logits=True,
)
WARPERS = dict(do_sample=True, temperature=0.8, top_k=6, top_p=0.9, min_p=0.05, typical_p=0.95, epsilon_cutoff=0.01,
               eta_cutoff=0.01)
CASES = {
    "processors": EVERY_PROCESSOR, "warpers": {**EVERY_PROCESSOR, **WARPERS},
    "ngram3": dict(no_repeat_ngram_size=3, repetition_penalty=0.7), "top_p": dict(do_sample=True, top_p=0.5),
    "min_p": dict(do_sample=True, min_p=0.2), "typical": dict(do_sample=True, typical_p=0.5),
    "eta": dict(do_sample=True, eta_cutoff=0.2), "epsilon": dict(do_sample=True, epsilon_cutoff=0.1),
    "top_k": dict(do_sample=True, top_k=3, temperature=1.7), "forced_bos": dict(forced_bos_token_id=3),
    "min_length": dict(min_length=8, eos_token_id=[7, 2], pad_token_id=0),
}


def _specs(options, prompt_length=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = merge(None, max_new_tokens=MAX - prompt_length, **options)
        run = plan(cfg, input_length=prompt_length, max_positions=None, vocab_size=V, has_attention_mask=True)
    return processor_specs(cfg, run, vocab_size=V)


@pytest.fixture(scope="module")
def compiled():
    """One XLA function per case, shared by the lengths (``length`` is traced)."""
    out = {}
    for name, options in CASES.items():
        processors = tfp.build_processors(_specs(options), vocab_size=V)
        out[name] = tf.function(lambda ids, length, s, p=processors: tfp.run_processors(p, ids, length, s),
                                jit_compile=True)
    return out


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 8, MAX - 1])
def test_same_scores_as_torch_in_xla_and_eager(case, length, compiled):
    specs = _specs(CASES[case])
    rng = np.random.default_rng(length)
    written = rng.integers(0, 6, (B, length))  # few distinct ids: n-grams and prefixes repeat
    scores = rng.standard_normal((B, V)).astype(np.float32) * 2
    scores[0, 3] = scores[0, 5]  # a tie
    want = ptp.run_processors(ptp.build_processors(specs, vocab_size=V, device="cpu"),
                              torch.from_numpy(np.pad(written, ((0, 0), (0, MAX - length)))), length,
                              torch.from_numpy(scores.copy())).numpy()
    processors = tfp.build_processors(specs, vocab_size=V)
    for junk in (0, 11):  # what lies past ``length`` must not matter
        buffer = np.full((B, MAX), junk, dtype=np.int32)
        buffer[:, :length] = written
        eager = tfp.run_processors(processors, tf.constant(buffer), length, tf.constant(scores)).numpy()
        xla = compiled[case](tf.constant(buffer), tf.constant(length, tf.int32), tf.constant(scores)).numpy()
        for got in (eager, xla):
            assert np.array_equal(np.isneginf(got), np.isneginf(want)), (case, length, got, want)
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_python_processors_are_refused_by_name():
    specs = _specs({})
    with pytest.raises(ValueError, match="logits_processor"):
        tfp.build_processors(specs, vocab_size=V, custom=[lambda ids, s: s])
