"""Our Flax classes and transformers' Flax classes (test-only oracle, flax.linen) read each other's
flax_model.msgpack with the same outputs (1e-4): ours loads in FlaxGPT2LMHeadModel and FlaxGPT2Model, and theirs
(transformers' save_pretrained of a Flax model) loads in ours."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_flax, requires_transformers

pytestmark = [requires_flax, requires_transformers]

CFG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49)
IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]], dtype=np.int32)
MASK = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=np.int32)


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _ours(cls_name: str, tied: bool):
    """Our Flax model with every weight off its init (biases and LayerNorms too, so a swapped one shows)."""
    import jax

    import gpt2.flax as ours
    from gpt2.common.config import GPT2Config

    model = getattr(ours, cls_name)(GPT2Config(**CFG, tie_word_embeddings=tied), seed=3)
    leaves, tree = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    model.params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return model


def _output(out, kwargs) -> np.ndarray:
    """The logits (or hidden states) at real tokens: a padding query's output is not compared (transformers' Flax
    model spreads it over every key, ours and transformers' PyTorch model over the keys before it)."""
    array = np.asarray(out.logits if hasattr(out, "logits") else out.last_hidden_state)
    return array[kwargs["attention_mask"] == 1] if "attention_mask" in kwargs else array


@pytest.mark.parametrize("cls_name, tied", [("FlaxGPT2LMHeadModel", True), ("FlaxGPT2LMHeadModel", False),
                                            ("FlaxGPT2Model", True)])
def test_our_msgpack_loads_in_transformers_flax_classes(cls_name, tied, tmp_path):
    ours = _ours(cls_name, tied)
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "flax_model.msgpack").is_file()
    theirs = getattr(_hf(), cls_name).from_pretrained(tmp_path)
    for kwargs in ({}, {"attention_mask": MASK}):
        np.testing.assert_allclose(_output(theirs(IDS, **kwargs), kwargs), _output(ours(IDS, **kwargs), kwargs),
                                   atol=1e-4, rtol=0)


def test_our_lm_msgpack_loads_in_transformers_base_model(tmp_path):
    """transformers strips the ``transformer`` level for its base model: our LM file serves FlaxGPT2Model too."""
    ours = _ours("FlaxGPT2LMHeadModel", True)
    ours.save_pretrained(tmp_path)
    theirs = _hf().FlaxGPT2Model.from_pretrained(tmp_path)
    np.testing.assert_allclose(np.asarray(theirs(IDS).last_hidden_state),
                               np.asarray(ours.transformer(IDS).last_hidden_state), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cls_name", ["FlaxGPT2LMHeadModel", "FlaxGPT2Model"])
def test_transformers_flax_save_pretrained_loads_in_ours(cls_name, tmp_path):
    import gpt2.flax as ours_module

    T = _hf()
    theirs = getattr(T, cls_name)(T.GPT2Config(**CFG), seed=0)
    theirs.save_pretrained(tmp_path)
    ours = getattr(ours_module, cls_name).from_pretrained(tmp_path)
    for kwargs in ({}, {"attention_mask": MASK}):
        np.testing.assert_allclose(_output(ours(IDS, **kwargs), kwargs), _output(theirs(IDS, **kwargs), kwargs),
                                   atol=1e-4, rtol=0)
    if cls_name == "FlaxGPT2Model":  # their base model's file (no ``transformer`` level) into our LM head
        lm = ours_module.FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
        np.testing.assert_allclose(np.asarray(lm.transformer(IDS).last_hidden_state),
                                   np.asarray(theirs(IDS).last_hidden_state), atol=1e-4, rtol=0)
