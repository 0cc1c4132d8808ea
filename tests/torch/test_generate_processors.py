"""The PyTorch logits processors built from common/decoding.py's specs: they take (ids buffer, length, scores) and
read nothing at or past ``length`` (so TF / JAX can trace the same ones over a fixed-size buffer), in
PROCESSOR_ORDER; transformers-style processors are adapted by slicing."""

from __future__ import annotations

import warnings

import pytest

from conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

from gpt2.common.decoding import PROCESSOR_ORDER, merge, plan, processor_specs  # noqa: E402
from gpt2.torch.logits_process import build_processors, run_processors  # noqa: E402

V, B, MAX = 12, 3, 20

EVERY_PROCESSOR = dict(
    sequence_bias=[[[1, 2], 0.5], [[3], -1.0]], repetition_penalty=1.3, no_repeat_ngram_size=2,
    bad_words_ids=[[4, 5], [6]], min_new_tokens=3, forced_bos_token_id=None, forced_eos_token_id=7,
    remove_invalid_values=True, exponential_decay_length_penalty=(1, 1.2), suppress_tokens=[8],
    begin_suppress_tokens=[9], eos_token_id=7, pad_token_id=0, renormalize_logits=True,
)
WARPERS = dict(do_sample=True, temperature=0.8, top_k=6, top_p=0.9, min_p=0.05, typical_p=0.95, epsilon_cutoff=0.01,
               eta_cutoff=0.01)


def _processors(options, custom=(), prefix_fn=None, prompt_length=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = merge(None, max_new_tokens=MAX - prompt_length, **options)
        run = plan(cfg, input_length=prompt_length, max_positions=None, vocab_size=V, has_attention_mask=True)
    specs = processor_specs(cfg, run, vocab_size=V, has_prefix_fn=prefix_fn is not None)
    return specs, build_processors(specs, vocab_size=V, device="cpu", custom=custom, prefix_fn=prefix_fn)


@pytest.mark.parametrize("options", [EVERY_PROCESSOR, {**EVERY_PROCESSOR, **WARPERS}])
@pytest.mark.parametrize("length", [1, 2, 5, 6, 8, MAX - 2])
def test_processors_read_only_below_length(options, length):
    seen = []
    specs, processors = _processors(options, custom=[lambda ids, s: seen.append(ids.clone()) or s],
                                    prefix_fn=lambda batch, row: [i for i in range(V) if i != int(row[-1])])
    skipped = {"forced_bos"} | (set() if options.get("do_sample") else set(WARPERS) - {"do_sample"})
    assert [s.name for s in specs] == [n for n in PROCESSOR_ORDER if n not in skipped]
    g = torch.Generator().manual_seed(length)
    written = torch.randint(0, V, (B, length), generator=g)
    scores = torch.randn(B, V, generator=g)
    results = []
    for junk in (0, 11):  # what lies past ``length`` must not matter
        buffer = torch.full((B, MAX), junk, dtype=torch.long)
        buffer[:, :length] = written
        results.append(run_processors(processors, buffer, length, scores.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    assert all(torch.equal(ids, written) for ids in seen)  # the caller's processor saw the ids so far, (B, length)


def test_forced_tokens_and_min_length_follow_length():
    _, processors = _processors(dict(forced_bos_token_id=3, forced_eos_token_id=7, eos_token_id=7, pad_token_id=0,
                                     min_length=4), prompt_length=1)
    buffer, scores = torch.zeros((1, MAX), dtype=torch.long), torch.zeros(1, V)
    assert int(run_processors(processors, buffer, 1, scores).argmax()) == 3  # forced bos after one token
    assert run_processors(processors, buffer, 3, scores)[0, 7] == -float("inf")  # no eos before min_length
    assert int(run_processors(processors, buffer, MAX - 1, scores).argmax()) == 7  # forced eos at the end
