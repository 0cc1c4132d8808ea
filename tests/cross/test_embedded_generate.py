"""The model shipped in the package, loaded by name (offline, no download) in torch, tf and flax: the same logits
from the fp16-stored weights run in fp32, and the same greedy text, made of the training text's words."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from frameworks import ADAPTERS, NAMES, adapter
from gpt2.common import embedded, hub
from gpt2.common.tokenizer_fast import GPT2TokenizerFast

WORDS = Path(__file__).resolve().parents[1] / "data" / "kjv-words.txt"  # scripts/train_embedded.py writes it
PROMPT = "In the beginning"
NEW_TOKENS = 20
# "In the beginning God created the heaven and the earth. And the earth was" (the Bible's first verse).
IDS = np.array([[818, 262, 3726, 1793, 2727, 262, 9538, 290, 262, 4534, 13, 843, 262, 4534, 373]])


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Offline, from an empty folder, and any download is a failure."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError(f"the embedded model must resolve without the hub (asked for {args})")

    patch.setattr(hub, "_download", no_download)
    yield
    patch.undo()


@pytest.fixture(scope="module")
def results():
    """Per framework: (logits of IDS, greedy ids of PROMPT), the model loaded once by its name."""
    prompt = np.array([GPT2TokenizerFast.from_pretrained(embedded.NAME)(PROMPT)["input_ids"]])
    found = {}
    for name in NAMES:
        adapt = ADAPTERS[name]
        if adapt.skip_reason() is not None:
            continue
        model = getattr(adapt.module(), adapt.prefix + "GPT2LMHeadModel").from_pretrained(embedded.NAME)
        if name == "torch":
            import torch

            model = model.eval()
            assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp16 on disk, fp32 by default
        found[name] = (adapt.logits(model, IDS), adapt.greedy(model, prompt, np.ones_like(prompt), NEW_TOKENS))
    return prompt, found


def _get(results, name):
    adapter(name)  # the skip, with its reason, when the framework cannot run here
    return results[1][name]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "torch"])
def test_equal_logits(results, name):
    reference, _ = _get(results, "torch")
    logits, _ = _get(results, name)
    assert logits.shape == reference.shape == (1, IDS.shape[1], 50257)
    np.testing.assert_allclose(logits, reference, atol=1e-3, rtol=0)


def test_a_trained_model(results):
    logits = _get(results, "torch")[0][0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -logp[np.arange(IDS.shape[1] - 1), IDS[0, 1:]].mean()
    assert nll < 5.0, nll  # on the Bible's first verse; chance is log(50257) = 10.8, the random init's ~10.9


@pytest.mark.parametrize("name", NAMES)
def test_greedy_text_is_the_same_real_words(results, name):
    prompt, _ = results
    ids = _get(results, name)[1]
    assert ids.shape == (1, prompt.shape[1] + NEW_TOKENS) and (ids[:, :prompt.shape[1]] == prompt).all()
    reference = _get(results, "torch")[1]
    np.testing.assert_array_equal(ids, reference)
    text = GPT2TokenizerFast.from_pretrained(embedded.NAME).decode(ids[0])
    assert text.startswith(PROMPT)
    vocabulary = set(WORDS.read_text(encoding="utf-8").split())
    words = re.findall(r"[A-Za-z]+", text[len(PROMPT):])
    if re.search(r"[A-Za-z]$", text):
        words = words[:-1]  # the last word may be cut by the token limit
    assert len(words) >= 8 and len({w.lower() for w in words}) >= 4, text  # words, and not one word repeated
    triples = list(zip(words, words[1:], words[2:]))
    assert len(set(triples)) == len(triples), f"a loop: {text!r}"  # generation_config's repetition_penalty
    unknown = [w for w in words if w.lower() not in vocabulary]
    assert not unknown, f"not words of the training text: {unknown} in {text!r}"
