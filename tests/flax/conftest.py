"""Shared Flax test helpers: a tiny config, our PyTorch model with random weights (the reference), its outputs and
ours as numpy.

pytest imports every conftest.py under the one module name ``conftest`` (tests/ has no __init__.py), so once this
file is loaded, ``from conftest import requires_flax`` anywhere reads THIS module: it re-exports every public name
of tests/conftest.py first, so that those imports keep working in every folder. When several folders are collected
``conftest`` may be another folder's: a test module loads this file by path for the Flax helpers below
(tests/flax/test_flax_pretrained.py's ``_helpers``), and this file re-exports tests/tf/conftest.py's names for
the TF modules that then read it.
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


def _tf_conftest():
    """tests/tf/conftest.py (numpy only at module level), under the name tests/flax/test_flax_models.py loads it."""
    name = "_gpt2_tests_tf_conftest"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "tf" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_root = _root_conftest()
globals().update({k: v for k, v in vars(_root).items() if not k.startswith("_")})
# When pytest is given several folders it loads their conftest.py files first, and the last one is ``conftest``
# for every test module: tests/tf's modules may then read this file, so it offers their names too.
globals().update({k: v for k, v in vars(_tf_conftest()).items() if not k.startswith("_") and k not in globals()})

# Small enough for milliseconds, odd enough to catch transposes (n_embd != vocab != positions); num_labels=3 so the
# classification heads differ in width from everything else.
FLAX_BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49, num_labels=3)
FLAX_CLASSES = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
                "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"]
FLAX_IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]])
OUTPUT_KEYS = ("logits", "mc_logits", "start_logits", "end_logits", "last_hidden_state")


def flax_config(**kw):
    from gpt2.common.config import GPT2Config

    return GPT2Config(**{**FLAX_BASE, **kw})


def ids_for(cls_name: str) -> np.ndarray:
    """The test ids, with a choices axis for the double heads model."""
    return FLAX_IDS[None] if cls_name == "GPT2DoubleHeadsModel" else FLAX_IDS


def reference_torch_model(cls_name: str, seed: int = 0, **kw):
    """Our PyTorch model with every weight off its init (biases and LayerNorms too: a missed or swapped one shows)."""
    import torch

    import gpt2.torch as pt

    torch.manual_seed(seed)
    model = getattr(pt, cls_name)(flax_config(**kw), attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def torch_outputs(model, ids) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids))
    return {k: out[k].float().numpy() for k in OUTPUT_KEYS if k in out.keys()}


def flax_outputs(model, ids, **kwargs) -> dict[str, np.ndarray]:
    out = model(ids, **kwargs)
    return {k: np.asarray(getattr(out, k), dtype=np.float32) for k in OUTPUT_KEYS
            if getattr(out, k, None) is not None}


def assert_close(a: dict, b: dict, atol=1e-4) -> None:
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)
