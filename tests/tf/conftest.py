"""Shared TensorFlow test helpers: tiny configs, random checkpoints made by transformers' PyTorch GPT-2 (the
oracle), the same canonical weights loaded into our PyTorch model and into our TF model.

pytest imports every conftest.py under the one module name ``conftest`` (tests/ has no __init__.py), so once this
file is loaded, ``from conftest import requires_torch`` anywhere reads THIS module: it re-exports every public name
of tests/conftest.py first, so that those imports keep working in every folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np


def _root_conftest():
    name = "_gpt2_tests_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_root = _root_conftest()
globals().update({k: v for k, v in vars(_root).items() if not k.startswith("_")})

# A config small enough for milliseconds and odd enough to catch transposes (n_embd != vocab != positions).
BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49)
CONFIGS = {
    "default": {},
    "flags": dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    "unscaled": dict(scale_attn_weights=False),
    "relu-inner": dict(activation_function="relu", n_inner=24),
    "gelu-exact": dict(activation_function="gelu"),
    "quick-gelu": dict(activation_function="quick_gelu"),
    "untied": dict(tie_word_embeddings=False),
}
CLASSES = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
           "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"]
IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]])
LEFT_PAD = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
POSITIONS = np.maximum(LEFT_PAD.cumsum(-1) - 1, 0)


def transformers_model(cls_name: str, seed: int = 0, **config):
    """transformers' eager PyTorch model (test-only oracle) with random weights, in eval mode."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(**{**BASE, **config}, attn_implementation="eager")
    return getattr(transformers, cls_name)(hf_config).eval()


def canonical_from_transformers(model) -> dict[str, np.ndarray]:
    """transformers' PyTorch state dict IS the canonical form (HF names, Conv1D [in, out]), less its causal-mask
    buffers and a tied lm_head; a bare GPT2Model's names get the ``transformer.`` prefix."""
    tied = model.config.tie_word_embeddings
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or (name == "lm_head.weight" and tied):
            continue
        if type(model).__name__ == "GPT2Model":
            name = f"transformer.{name}"
        state[name] = tensor.detach().numpy().copy()
    return state


def gpt2_config(**config):
    from gpt2.common.config import GPT2Config

    return GPT2Config(**{**BASE, **config})


def torch_model(cls_name: str, state: dict[str, np.ndarray], **config):
    """Our PyTorch model (gpt2.torch) with the canonical weights ``state``."""
    import gpt2.torch as ours

    model = getattr(ours, cls_name)(gpt2_config(**config), attn_implementation="eager").eval()
    missing, unused = model.load_canonical(state)
    assert not missing and not unused, (missing, unused)
    return model


def tf_model(cls_name: str, state: dict[str, np.ndarray] | None = None, **config):
    """Our TF model (``TF`` + cls_name), built without a forward, with the canonical weights ``state`` if given.

    Weights are set through gpt2/tf/weights.py's load_canonical (by attribute path)."""
    import importlib

    module = importlib.import_module("gpt2.tf.model" if cls_name == "GPT2Model" else "gpt2.tf.heads")
    cls = getattr(module, "TF" + cls_name)
    model = cls(gpt2_config(**config))
    model.build()
    if state is not None:
        from gpt2.tf.weights import load_canonical

        missing, unused = load_canonical(model, state)
        assert not missing and not unused, (missing, unused)
    return model


def triple(cls_name: str, seed: int = 0, **config):
    """(transformers' PyTorch eager model, our PyTorch model, our TF model) on the same random weights."""
    theirs = transformers_model(cls_name, seed, **config)
    state = canonical_from_transformers(theirs)
    return theirs, torch_model(cls_name, state, **config), tf_model(cls_name, state, **config)


def to_numpy(value) -> np.ndarray:
    """A torch or TF tensor (or array) as a float64 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().float().numpy()
    elif hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, dtype=np.float64)


def torch_inputs(kwargs: dict) -> dict:
    """The same keyword arguments with numpy arrays as torch tensors."""
    import torch

    return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def assert_outputs_close(reference, ours, keys, tol=1e-4) -> int:
    """Compare the fields ``keys`` present in both outputs; returns how many were compared (a test asserts > 0)."""
    checked = 0
    for key in keys:
        a, b = getattr(reference, key, None), getattr(ours, key, None)
        if a is None:
            continue
        assert b is not None, f"{key}: the reference has it, ours is None"
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), atol=tol, rtol=0, err_msg=key)
        checked += 1
    return checked

