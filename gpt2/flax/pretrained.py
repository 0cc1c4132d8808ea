"""The base class of every Flax model: config, from_pretrained / save_pretrained, dtype plumbing, embeddings
utilities, transformers' FlaxPreTrainedModel conventions (``params``, ``params=``, ``init_cache``).

A translation of gpt2/torch/pretrained.py: the same public methods in the same order, each with its JAX meaning.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ..common.config import GPT2Config


class _Frozen:
    """Holds the config for a module. NNX keeps a module's non-array attributes in its GraphDef, which jax.jit
    hashes; a GPT2Config is mutable (unhashable), so it sits in this holder, hashed by identity."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


class _ConfigAttribute:
    """``model.config``: the model's GPT2Config (read and written as a plain attribute), stored in a ``_Frozen``."""

    def __get__(self, obj, owner=None):
        return self if obj is None else obj._config.value

    def __set__(self, obj, config) -> None:
        obj._config = _Frozen(config)


class FlaxGPT2PreTrainedModel(nnx.Module):
    """Base of every Flax model class: config, from_pretrained / save_pretrained, embeddings utilities, and
    transformers' Flax conventions: ``model.params`` (a pytree of the weights, what optax trains), ``model(...,
    params=...)`` (the same model with other weights: a pure function of them under jax.jit / jax.grad),
    ``init_cache(batch, max_length)``."""

    base_model_prefix = "transformer"
    config = _ConfigAttribute()

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
        config.validate()
        # The model's own copy: heads set fields of their own (num_labels=1 of the double heads model, the
        # problem_type a classification loss infers), and the caller's config must not change under it.
        self.config = config.copy()
        self._dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)

    @property
    def trunk(self):
        return getattr(self, self.base_model_prefix, self)

    @property
    def dtype(self):
        """The computation dtype (transformers' Flax ``dtype``); the weights are ``param_dtype``."""
        return self._dtype

    def _with_params(self, params) -> "FlaxGPT2PreTrainedModel":
        """This model with ``params`` (a pytree shaped as ``model.params``) in place of its weights: a new module
        sharing nothing mutable with this one, built inside whatever trace the call is in."""
        graphdef, state = nnx.split(self)
        state = nnx.State(state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)
