"""One adapter per framework for the cross-framework tests: load our model from a folder, run it, get numpy back.

Each adapter speaks its framework's calling conventions (transformers' for each: ``GPT2LMHeadModel``,
``TFGPT2LMHeadModel``, ``FlaxGPT2LMHeadModel``) and gives the tests the same three things:

- ``load(folder, cls="GPT2LMHeadModel")``: our ``from_pretrained`` for that head class (the prefix is added);
- ``logits(model, ids, attention_mask=None, position_ids=None)``: the LM logits, float32 numpy (B, T, V), on CPU;
- ``greedy(model, ids, attention_mask, max_new_tokens)``: greedy ``generate()``'s ids (prompt + new), int64 numpy.

``skip_reason()`` says why a framework cannot run here (None when it can): its library is not installed, or our
package for it (gpt2.torch / gpt2.tf / gpt2.flax) does not exist yet (no folder, no __init__.py, or no heads.py:
files still being written). A package that exists but fails to import, or lacks a class, is NOT a skip: ``load``
raises its ImportError (or AttributeError), so a broken package fails the tests instead of hiding behind a skip.

Inputs are numpy arrays; each adapter converts them (torch tensors, int32 for TF and JAX ids).
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest


class Adapter(abc.ABC):
    """What every framework's adapter shares: the availability check and the class lookup."""

    name: str = ""
    package: str = ""  # our package for this framework
    libraries: tuple[str, ...] = ()  # the third-party modules it needs
    prefix: str = ""  # transformers' class-name prefix: "", "TF", "Flax"

    def skip_reason(self) -> str | None:
        for library in self.libraries:
            if importlib.util.find_spec(library) is None:
                return f"{library} is not installed"
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            return f"{self.package} does not exist yet"
        if spec.origin is None:  # a folder without __init__.py: a namespace package, still being written
            return f"{self.package} has no __init__.py yet"
        if not (Path(spec.origin).parent / "heads.py").is_file():  # where DESIGN.md puts the LM head class
            return f"{self.package} has no heads.py yet ({self.prefix}GPT2LMHeadModel is not written)"
        return None

    def module(self):
        self._environment()
        return importlib.import_module(self.package)

    def _environment(self) -> None:
        """Process settings the framework reads when it is first imported (none by default)."""

    def load(self, folder: str | os.PathLike, cls: str = "GPT2LMHeadModel"):
        """Our ``from_pretrained`` for ``prefix + cls`` (in eval mode where the framework has one)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the loading report's notes on a random checkpoint
            return getattr(self.module(), self.prefix + cls).from_pretrained(Path(folder))

    @abc.abstractmethod
    def logits(self, model, ids, attention_mask=None, position_ids=None) -> np.ndarray:
        """The LM logits of ``model`` (an LM head class) as float32 numpy (B, T, V)."""

    @abc.abstractmethod
    def greedy(self, model, ids, attention_mask, max_new_tokens: int) -> np.ndarray:
        """Greedy ``generate()``: the prompt and ``max_new_tokens`` new ids, int64 numpy (B, T + max_new_tokens)."""

    def __repr__(self) -> str:
        return self.name


def _float32(value) -> np.ndarray:
    out = np.asarray(value)
    assert out.dtype == np.float32, f"expected float32 logits, got {out.dtype}"
    return out


class TorchAdapter(Adapter):
    name, package, libraries, prefix = "torch", "gpt2.torch", ("torch",), ""

    def load(self, folder, cls="GPT2LMHeadModel"):
        return super().load(folder, cls).eval()

    @staticmethod
    def _tensors(**arrays):
        import torch

        return {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in arrays.items() if v is not None}

    def logits(self, model, ids, attention_mask=None, position_ids=None):
        import torch

        with torch.no_grad():
            out = model(**self._tensors(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids))
        return _float32(out.logits.cpu().numpy())

    def greedy(self, model, ids, attention_mask, max_new_tokens):
        import torch

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(**self._tensors(input_ids=ids, attention_mask=attention_mask),
                                 max_new_tokens=max_new_tokens, do_sample=False)
        return out.cpu().numpy().astype(np.int64)


class TFAdapter(Adapter):
    name, package, libraries, prefix = "tf", "gpt2.tf", ("tensorflow", "keras"), "TF"

    def _environment(self):
        # gpt2.tf needs Keras 3's TensorFlow backend (it is the default; a KERAS_BACKEND already set is kept: gpt2.tf
        # then refuses it by name); TF's C++ logs stay quiet (tests/conftest.py sets it before anything imports TF).
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    @staticmethod
    def _tensors(**arrays):
        return {k: np.asarray(v, dtype=np.int32) for k, v in arrays.items() if v is not None}

    def logits(self, model, ids, attention_mask=None, position_ids=None):
        out = model(**self._tensors(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids),
                    training=False)
        return _float32(out.logits.numpy())

    def greedy(self, model, ids, attention_mask, max_new_tokens):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(**self._tensors(input_ids=ids, attention_mask=attention_mask),
                                 max_new_tokens=max_new_tokens, do_sample=False)
        return np.asarray(out).astype(np.int64)


class FlaxAdapter(Adapter):
    """transformers' FlaxGPT2 conventions: ``model(ids, attention_mask=, position_ids=).logits`` (a jax array) and
    ``model.generate(ids, attention_mask=, max_new_tokens=, do_sample=False).sequences``."""

    name, package, libraries, prefix = "flax", "gpt2.flax", ("jax", "flax"), "Flax"

    @staticmethod
    def _arrays(**arrays):
        import jax.numpy as jnp

        return {k: jnp.asarray(np.asarray(v, dtype=np.int32)) for k, v in arrays.items() if v is not None}

    def logits(self, model, ids, attention_mask=None, position_ids=None):
        out = model(**self._arrays(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids))
        return _float32(np.asarray(out.logits))

    def greedy(self, model, ids, attention_mask, max_new_tokens):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(**self._arrays(input_ids=ids, attention_mask=attention_mask),
                                 max_new_tokens=max_new_tokens, do_sample=False)
        return np.asarray(out.sequences).astype(np.int64)


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (TorchAdapter(), TFAdapter(), FlaxAdapter())}
NAMES = tuple(ADAPTERS)
PAIRS = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]  # torch-tf, torch-flax, tf-flax


def adapter(name: str) -> Adapter:
    """The adapter for ``name``, or a pytest skip saying why that framework cannot run here."""
    found = ADAPTERS[name]
    reason = found.skip_reason()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return found


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """Position ids as generate() derives them (transformers' prepare_inputs_for_generation): the mask's running count
    minus one, and 1 on padding (any value in range: padding is never attended to)."""
    mask = np.asarray(attention_mask, dtype=np.int64)
    return np.where(mask == 0, 1, mask.cumsum(-1) - 1)
