"""The base class of every Flax model: config, from_pretrained / save_pretrained, dtype plumbing, embeddings
utilities, transformers' FlaxPreTrainedModel conventions (``params``, ``params=``, ``init_cache``).

A translation of gpt2/torch/pretrained.py: the same public methods in the same order, each with its JAX meaning.
from_pretrained is the framework-free policy of gpt2/common/loading.py (options, config and overrides, reading and
validating the checkpoint, the report) around the two NNX steps: build the model abstractly (``nnx.eval_shape``:
shapes and dtypes, no memory, no random init), then give every parameter its array from the canonical state
(weights.py) -- each weight is allocated once, already in its dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..common import hub, loading
from ..common.checkpoint import save_checkpoint
from ..common.config import GPT2Config
from . import weights

# dtype= / param_dtype= names. float64 needs jax_enable_x64 (off by default: JAX would compute in float32).
_DTYPES = ("float32", "bfloat16", "float16")
# save_pretrained formats: transformers' Flax file, or safetensors (which every framework's classes load)
_SAVE_FORMATS = {"msgpack": "flax", "safetensors": "safetensors"}


def resolve_dtype(dtype, plan: loading.LoadPlan | None = None, *, name: str = "dtype"):
    """dtype / param_dtype argument -> a numpy dtype: None is float32, "auto" is the checkpoint's, a name
    ("bfloat16", "jnp.bfloat16", "torch.bfloat16") or a dtype (``jnp.bfloat16``, ``np.float16``)."""
    if dtype is None:
        return jnp.dtype(jnp.float32)
    if isinstance(dtype, str) and dtype == "auto":
        if plan is None:
            raise ValueError(f"{name}='auto' means the checkpoint's dtype: only from_pretrained takes it")
        dtype = plan.checkpoint_dtype()
    if isinstance(dtype, str):
        key = dtype.removeprefix("jnp.").removeprefix("jax.numpy.").removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"{name} must be one of {', '.join(_DTYPES)} or 'auto', got {dtype!r}")
        return jnp.dtype(key)
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be a dtype name or a JAX / numpy dtype, got {dtype!r}") from None
    if resolved.name not in _DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(_DTYPES)} or 'auto', got {resolved.name!r}")
    return resolved


class _Frozen:
    """Holds the config for a module. NNX keeps a module's non-array attributes in its GraphDef, which jax.jit
    hashes; a GPT2Config is mutable (unhashable), so it sits in this holder, hashed by identity."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


def hold(value) -> _Frozen:
    """``value`` in a holder hashed by identity (``.value`` reads it): how a module keeps a mutable object (the
    config; generation.py's generation_config) among its static attributes."""
    return _Frozen(value)


class _ConfigAttribute:
    """``model.config``: the model's GPT2Config (read and written as a plain attribute), stored in a ``_Frozen``."""

    def __get__(self, obj, owner=None):
        return self if obj is None else obj._config.value

    def __set__(self, obj, config) -> None:
        obj._config = hold(config)


class FlaxGPT2PreTrainedModel(nnx.Module):
    """Base of every Flax model class: config, from_pretrained / save_pretrained, embeddings utilities, and
    transformers' Flax conventions: ``model.params`` (a pytree of the weights, what optax trains), ``model(...,
    params=...)`` (the same model with other weights: a pure function of them under jax.jit / jax.grad),
    ``init_cache(batch, max_length)``.

    >>> model = FlaxGPT2LMHeadModel.from_pretrained("gpt2-folder", dtype="bfloat16")   # bf16 compute, fp32 weights
    >>> loss_fn = lambda params: model(ids, params=params, labels=ids).loss
    >>> grads = jax.jit(jax.grad(loss_fn))(model.params)                              # a pytree like model.params
    >>> model.params = optax.apply_updates(model.params, updates)                      # replaces the weights
    >>> model.save_pretrained("out")                        # config.json + flax_model.msgpack (transformers' layout)
    """

    base_model_prefix = "transformer"
    config = _ConfigAttribute()

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
        config.validate()
        # The model's own copy: heads set fields of their own (num_labels=1 of the double heads model, the
        # problem_type a classification loss infers), and the caller's config must not change under it.
        self.config = config.copy()
        self._dtype = resolve_dtype(dtype)
        self.param_dtype = resolve_dtype(param_dtype, name="param_dtype")

    def __setattr__(self, name: str, value) -> None:
        if name == "params":  # the property's setter, before NNX's check for arrays kept as static attributes
            type(self).params.fset(self, value)
            return
        super().__setattr__(name, value)

    # -- set-up -----------------------------------------------------------------------------------------------------
    def post_init(self, attn_implementation: str | None = None) -> None:
        """The end of every constructor: one config object for the model and its trunk (a change such as
        resize_token_embeddings' vocab_size shows in both), the attention. The init is each parameter's NNX
        initializer (N(0, initializer_range), residual projections scaled, set where the layers are made); a tied
        head has no parameter to tie (it reads wte)."""
        trunk = self.trunk
        if trunk is not self and isinstance(trunk, FlaxGPT2PreTrainedModel):
            trunk.config = self.config
        self.set_attn_implementation(attn_implementation or "eager")

    def set_attn_implementation(self, name: str) -> None:
        """Only "eager": attention in plain jax.numpy ops, which XLA fuses under jit. torch's "sdpa" and
        "flash_attention_2" are torch kernels, with no JAX counterpart here."""
        if name != "eager":
            raise ValueError(f"attn_implementation={name!r} is not available in JAX: torch's 'sdpa' and "
                             f"'flash_attention_2' are torch kernels; JAX runs 'eager' (plain ops, fused by XLA "
                             f"under jit)")
        self.attn_implementation = name

    @property
    def trunk(self):
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self):
        """The jax.Device holding the first parameter (for a model sharded over a mesh, the first of its devices
        by id: the parameters' ``.sharding`` tells the whole placement)."""
        first = jax.tree.leaves(nnx.state(self, nnx.Param))[0]
        return min(first.devices(), key=lambda d: d.id)

    @property
    def dtype(self):
        """The computation dtype (transformers' Flax ``dtype``); the weights are ``param_dtype``."""
        return self._dtype

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of weights (a tied head counts once). Every nnx.Param is trainable in JAX (freezing is the
        optimizer's business: optax.masked), so ``only_trainable`` changes nothing."""
        return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self, nnx.Param)))

    # -- embeddings -------------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nnx.Embed:
        return self.trunk.wte

    def set_input_embeddings(self, value: nnx.Embed) -> None:
        if not isinstance(value, nnx.Embed):
            raise TypeError(f"input embeddings must be an nnx.Embed, got {type(value).__name__}")
        self.trunk.wte = value
        self.tie_weights()

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, value: nnx.Module) -> None:
        if not hasattr(self, "lm_head"):
            raise ValueError(f"{type(self).__name__} has no output embeddings (lm_head)")
        self.lm_head = value

    def enable_input_require_grads(self) -> None:
        """A no-op in JAX: jax.grad differentiates with respect to whatever it is given (torch needs a hook for
        PEFT with frozen embeddings; JAX does not)."""

    def disable_input_require_grads(self) -> None:
        """A no-op, as enable_input_require_grads."""

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the parameters (and, with ``return_buffers``, of any other array state), as transformers'."""
        state = nnx.state(self) if return_buffers else nnx.state(self, nnx.Param)
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))

    def tie_weights(self) -> None:
        """A tied head has no parameter of its own: it reads the trunk's wte when it runs. A head with a
        ``tie(embedding)`` method is pointed at the trunk's current table (after set_input_embeddings or
        resize_token_embeddings replaced it)."""
        head = self.get_output_embeddings()
        tie = getattr(head, "tie", None)
        if head is not None and self.config.tie_word_embeddings and callable(tie):
            tie(self.trunk.wte)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                *, seed: int = 0):
        """Grow or shrink the token table (and an untied lm_head); new rows get the init N(0, initializer_range)
        from ``seed``. Returns the table (an nnx.Embed)."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        rows, width = old.embedding.get_value().shape
        size = new_num_tokens if new_num_tokens is not None else rows
        if pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        head = self.get_output_embeddings()
        untied_head = head is not None and not self.config.tie_word_embeddings
        if untied_head and not isinstance(head, nnx.Linear):
            raise NotImplementedError(f"{type(self).__name__}.resize_token_embeddings: the untied lm_head is a "
                                      f"{type(head).__name__}, not an nnx.Linear whose columns can be resized")
        keep = min(size, rows)
        key_table, key_head = jax.random.split(jax.random.key(seed))
        std = self.config.initializer_range
        table = old.embedding.get_value()
        fresh = std * jax.random.normal(key_table, (size - keep, width), jnp.float32)
        new = nnx.eval_shape(lambda: nnx.Embed(size, width, dtype=old.dtype, param_dtype=old.param_dtype,
                                               rngs=nnx.Rngs(0)))
        # replace() keeps the parameter's metadata (its partitioning annotation)
        new.embedding = old.embedding.replace(jnp.concatenate([table[:keep], fresh.astype(table.dtype)]))
        self.trunk.wte = new
        if untied_head:
            kernel = head.kernel.get_value()  # [in, vocab]
            fresh = std * jax.random.normal(key_head, (kernel.shape[0], size - keep), jnp.float32)
            new_head = nnx.eval_shape(lambda: nnx.Linear(kernel.shape[0], size, use_bias=False, dtype=head.dtype,
                                                         param_dtype=head.param_dtype, rngs=nnx.Rngs(0)))
            if head.bias is not None:
                raise NotImplementedError(f"{type(self).__name__}.resize_token_embeddings: an lm_head with a bias")
            new_head.kernel = head.kernel.replace(
                jnp.concatenate([kernel[:, :keep], fresh.astype(kernel.dtype)], axis=1))
            self.lm_head = new_head
        self.config.vocab_size = size
        self.trunk.config.vocab_size = size  # the same object once post_init has run; a copy otherwise
        self.tie_weights()
        return new

    # -- training utilities -----------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block's activations in the backward pass (nnx.remat) instead of storing them."""
        self.trunk.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.trunk.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.trunk, "gradient_checkpointing", False))

    # -- canonical state (weights.py maps it) -----------------------------------------------------------------------
    def state_to_canonical(self) -> dict[str, np.ndarray]:
        """The model's weights in the canonical form (gpt2/common/checkpoint.py), as every format is written."""
        return weights.state_to_canonical(self)

    def load_canonical(self, state: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
        """Assign canonical arrays to the parameters; returns (missing weight paths, unused canonical names)."""
        result = weights.load_canonical(self, state)
        self.tie_weights()
        return result

    # -- transformers' Flax conventions -----------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """The weights as a pure nested dict of arrays (``nnx.state(model, nnx.Param).to_pure_dict()``: the
        attribute paths, ``{"transformer": {"h": {0: {"attn": {"c_attn": {"kernel": ...}}}}}}``): what jax.grad
        differentiates and optax updates. Pass it back as ``model(..., params=...)`` or assign it."""
        return nnx.state(self, nnx.Param).to_pure_dict()

    @params.setter
    def params(self, params: dict) -> None:
        """Replace the weights: ``params`` must have this model's paths and shapes (a ValueError names the first
        that differs); each array is cast to its parameter's dtype (load with ``param_dtype=`` to change it)."""
        state = self._params_state(params, cast=True)
        nnx.update(self, state)

    def init_cache(self, batch_size: int, max_length: int):
        """A static KV cache for ``batch_size`` sequences of up to ``max_length`` tokens (zeros in the computation
        dtype), as transformers' Flax ``init_cache``; pass it as ``past_key_values`` with an attention mask of
        ``max_length`` columns."""
        from .cache import KVCache

        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"init_cache: {name} must be a positive integer, got {value!r}")
        if max_length > self.config.n_positions:
            raise ValueError(f"init_cache: max_length={max_length} exceeds n_positions={self.config.n_positions}")
        return KVCache.for_model(self, batch_size, max_length)

    def _params_state(self, params, *, cast: bool) -> nnx.State:
        """This model's nnx.Param state with the arrays of ``params`` (a pytree shaped as ``model.params``; keys of
        the blocks may be ints or their strings). Paths and shapes are checked here, statically (also under a
        trace); ``cast``: each array in its parameter's dtype, else as given."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be a nested dict shaped as model.params, got {type(params).__name__}")
        state = nnx.state(self, nnx.Param)
        own = {_path(k): v for k, v in nnx.to_flat_state(state)}
        given = {}
        for keys, value in jax.tree_util.tree_flatten_with_path(params)[0]:
            given[_path(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in keys))] = value
        if given.keys() != own.keys():
            lacking, extra = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
            raise ValueError(f"params do not match {type(self).__name__}'s weights: "
                             + "; ".join(f"{what} {', '.join(names)}" for what, names in
                                         (("missing", lacking), ("not in the model", extra)) if names))
        flat = []
        for path, var in own.items():
            value = given[path]
            shape, want = tuple(var.get_value().shape), var.get_value().dtype
            if tuple(np.shape(value)) != shape:
                raise ValueError(f"params[{path!r}]: shape {tuple(np.shape(value))}, the model's is {shape}")
            if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
                raise TypeError(f"params[{path!r}]: dtype {jnp.result_type(value)}, expected a floating dtype")
            flat.append((path, jnp.asarray(value, want) if cast else jnp.asarray(value)))
        new = dict(flat)
        return nnx.from_flat_state([(key, var.replace(new[_path(key)])) for key, var in nnx.to_flat_state(state)])

    def _with_params(self, params) -> "FlaxGPT2PreTrainedModel":
        """This model with ``params`` (a pytree shaped as ``model.params``) in place of its weights: a new module
        sharing nothing mutable with this one, built inside whatever trace the call is in. The arrays are used as
        given (their dtypes too, as transformers' ``params=``)."""
        graphdef, _, rest = nnx.split(self, nnx.Param, ...)
        return nnx.merge(graphdef, self._params_state(params, cast=False), rest)

    # -- files ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, config: GPT2Config | None = None, dtype=None,
                        param_dtype=None, attn_implementation: str | None = None, seed: int = 0,
                        revision: str | None = None, cache_dir=None, local_files_only: bool = False,
                        use_safetensors: bool | None = None, output_loading_info: bool = False,
                        _do_init: bool = True, **kwargs):
        """Load any checkpoint format (flax_model.msgpack, safetensors, pytorch_model.bin, tf_model.h5, OpenAI's).

        ``dtype``: the computation dtype (transformers' Flax meaning); ``param_dtype``: the weights' dtype. Each:
        None (float32), "auto" (the checkpoint's), "float32", "bfloat16", "float16" or a JAX / numpy dtype.
        ``use_safetensors=True``: only a safetensors checkpoint will do. ``output_loading_info``: also return
        transformers' dict of missing / unexpected keys. ``seed``: the init of weights the checkpoint lacks (a
        new head), which are reported with a warning, as transformers does. Other keyword arguments override
        config fields (``num_labels=3``); transformers' loading options that change nothing here (from_pt, ...)
        are accepted, the ones not offered are a TypeError naming them, as is an unknown name. torch's
        ``torch_dtype``, ``device`` and ``device_map`` are refused: place a model with ``jax.device_put`` or
        shard it over a mesh.
        """
        for name in ("torch_dtype", "device", "device_map"):
            if name in kwargs:
                hint = "use dtype= / param_dtype=" if name == "torch_dtype" else (
                    "JAX places arrays on its default device: move the model with jax.device_put, or load under "
                    "jax.default_device(...) or a Mesh")
                raise TypeError(f"{cls.__name__}.from_pretrained(): {name}= is torch's; {hint}")
        if not _do_init:
            raise TypeError(f"{cls.__name__}.from_pretrained(): _do_init=False is not supported (an NNX model always "
                            f"holds its weights; take them as model.params)")
        plan = loading.prepare(cls.__name__, pretrained_model_name_or_path, config=config, revision=revision,
                               cache_dir=cache_dir, local_files_only=local_files_only,
                               use_safetensors=use_safetensors, **kwargs)
        compute = resolve_dtype(dtype, plan)
        stored = resolve_dtype(param_dtype, plan, name="param_dtype")
        # shapes and dtypes only: no memory, no random init for weights that are overwritten next
        model = nnx.eval_shape(lambda: cls(plan.config, dtype=compute, param_dtype=stored))
        model.set_attn_implementation(attn_implementation or "eager")
        missing, unused = model.load_canonical(plan.state)
        model._init_missing(missing, seed)
        abstract = [".".join(map(str, k)) for k, v in nnx.to_flat_state(nnx.state(model))
                    if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
        if abstract:  # a variable neither in the checkpoint nor initialised: a bug here, never a silent zero
            raise RuntimeError(f"{cls.__name__}.from_pretrained(): no value for {', '.join(abstract)}")
        info = loading.report(plan, missing, unused)
        return (model, info) if output_loading_info else model

    def _init_missing(self, missing: list[str], seed: int) -> None:
        """Give the weights a checkpoint lacked (their model paths, as load_canonical reports them) GPT-2's init:
        LayerNorm weights 1, biases 0, other weights N(0, initializer_range), residual projections (c_proj)
        scaled by 1/sqrt(2 n_layer) -- torch's _init_weights, one key per weight from ``seed``."""
        if not missing:
            return
        own = {path: var for path, var, _ in weights.variables(self).values()}
        std = self.config.initializer_range
        key = jax.random.key(seed)
        for i, path in enumerate(missing):
            var = own[path]
            shape, dtype = var.get_value().shape, var.get_value().dtype
            module, leaf = path.split(".")[-2:] if "." in path else ("", path)
            if leaf == "bias":
                value = jnp.zeros(shape, dtype)
            elif module.startswith("ln_"):
                value = jnp.ones(shape, dtype)
            else:
                scale = std / math.sqrt(2 * self.config.n_layer) if module == "c_proj" else std
                value = (scale * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)).astype(dtype)
            var.set_value(value)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload model", private: bool | None = None,
                    token=None, max_shard_size: int | str | None = None, create_pr: bool = False,
                    safe_serialization: bool = False, revision: str | None = None, *, format: str | None = None):
        """save_pretrained into a temporary folder, then upload it to ``repo_id`` (needs huggingface_hub)."""
        return hub.push_to_hub(
            lambda folder: self.save_pretrained(folder, safe_serialization=safe_serialization,
                                                max_shard_size=max_shard_size, format=format),
            repo_id, commit_message=commit_message, private=private, token=token, create_pr=create_pr,
            revision=revision)

    def save_pretrained(self, save_directory, params=None, safe_serialization: bool = False,
                        max_shard_size: int | str | None = None, *, format: str | None = None) -> None:
        """Write config.json and flax_model.msgpack in transformers' Flax layout (its FlaxGPT2 classes load it), or
        model.safetensors (``format="safetensors"`` or ``safe_serialization=True``: every framework's classes
        load it), with generation_config.json for generative models: one transaction (docs/checkpoints.md).
        ``params``: save these weights (a pytree shaped as ``model.params``) instead of the model's.
        ``max_shard_size`` shards safetensors; flax_model.msgpack is written as one file."""
        if format is None:
            format = "safetensors" if safe_serialization else "msgpack"
        if format not in _SAVE_FORMATS:
            raise ValueError(f"save_pretrained: format must be one of {', '.join(_SAVE_FORMATS)}, got {format!r}")
        if safe_serialization and format != "safetensors":
            raise ValueError(f"save_pretrained: safe_serialization=True asks for safetensors, format={format!r} for "
                             f"another")
        model = self if params is None else self._with_params(params)
        state = model.state_to_canonical()
        config = self.config.copy()
        config.dtype = state["transformer.wte.weight"].dtype.name
        save_checkpoint(state, Path(save_directory), config, format=_SAVE_FORMATS[format],
                        max_shard_size=max_shard_size, architecture=type(self).__name__.removeprefix("Flax"),
                        side_files=self._files_to_save())

    def _files_to_save(self) -> dict[str, str]:
        """{file name: text} that save_pretrained writes beside the weights and config.json."""
        return {}


def _path(keys) -> str:
    """A parameter's path as one dotted string ("transformer.h.0.attn.c_attn.kernel"): int and str block keys
    alike."""
    return ".".join(str(k) for k in keys)
