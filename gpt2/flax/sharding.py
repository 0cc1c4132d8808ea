"""Placing a Flax model, its inputs and its KV cache on a ``jax.sharding.Mesh`` (a framework-only file: torch and
TF have no counterpart; tests/test_structure.py names it in FRAMEWORK_ONLY).

The mesh has two axes: "data" (the batch) and "model" (tensor parallelism, Megatron-LM style: Shoeybi et al.
2019, section 3). model.py annotates every kernel, bias and embedding with the axis each dimension is split over
(``PARTITIONS``: the projections into the heads and the MLP's hidden layer by output columns, the projections back
by input rows, the embedding tables by their C columns, since the 50257-row vocabulary divides by no device count);
LayerNorms are replicated. Nothing here changes the model's code: the weights are placed once, and XLA's sharding
propagation (GSPMD) splits every computation that reads them and inserts the all-reduces, in an eager call as under
``jax.jit``. Results equal one device's up to the order of floating-point sums.

>>> from gpt2.flax import FlaxGPT2LMHeadModel
>>> from gpt2.flax.sharding import make_mesh, shard_model, shard_batch
>>> mesh = make_mesh(data=2, model=2)                  # 4 devices
>>> model = shard_model(FlaxGPT2LMHeadModel.from_pretrained("my-gpt2"), mesh)
>>> ids, mask = shard_batch(mesh, ids, mask)           # the batch split over "data"
>>> logits = model(ids, attention_mask=mask).logits    # sharded (B over "data")

Axes an annotation names that the mesh lacks are replicated (a model annotated for "model" runs on a data-only
mesh); a dimension that does not divide by its axis' size is a ValueError naming the parameter.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"


def make_mesh(data: int = 1, model: int | None = None, *, devices=None) -> Mesh:
    """A ``Mesh`` with axes ("data", "model") of sizes ``data`` x ``model`` over ``devices`` (default:
    ``jax.devices()``, all of them: ``model`` defaults to the devices left after ``data``). Axis types are
    ``Auto``: XLA propagates the weights' shardings through the model's unannotated code."""
    devices = list(jax.devices() if devices is None else devices)
    for name, size in (("data", data), ("model", model)):
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1):
            raise ValueError(f"make_mesh: {name}={size!r} must be a positive int")
    if model is None:
        if len(devices) % data:
            raise ValueError(f"make_mesh: data={data} does not divide the {len(devices)} devices")
        model = len(devices) // data
    if data * model > len(devices):
        raise ValueError(f"make_mesh: data={data} x model={model} = {data * model} devices, {len(devices)} available "
                         f"(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts)")
    grid = np.asarray(devices[:data * model], dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def _axis_size(mesh: Mesh, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[n] for n in names)


def _on_mesh(spec, mesh: Mesh) -> PartitionSpec:
    """``spec`` with the axis names ``mesh`` lacks replaced by None (replicated along that dimension)."""
    kept = []
    for axis in spec:
        names = axis if isinstance(axis, tuple) else (axis,)
        names = tuple(n for n in names if n is not None and n in mesh.shape)
        kept.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*kept)


def _checked(path: str, shape: tuple, spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    if len(spec) > len(shape):
        raise ValueError(f"parameter {path!r} of shape {shape} is annotated with {len(spec)} axes {tuple(spec)}")
    for dim, axis in enumerate(spec):
        if axis is not None and shape[dim] % _axis_size(mesh, axis):
            raise ValueError(f"parameter {path!r}: dimension {dim} of shape {shape} ({shape[dim]}) does not divide by "
                             f"the mesh axis {axis!r} of size {_axis_size(mesh, axis)}")
    return spec


def _path(keys) -> str:
    """A parameter's attribute path (``transformer.h.0.mlp.c_fc.kernel``) from its pytree keys."""
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keys]
    return ".".join(names[:-1] if names and names[-1] == "value" else names)  # the Variable's own "value" key


def param_shardings(model: nnx.Module, mesh: Mesh) -> nnx.State:
    """The ``NamedSharding`` of every array of ``model``'s state on ``mesh`` (a State shaped as
    ``nnx.state(model)``), from the partitioning annotations (none: replicated). Checks that every split dimension
    divides by its axis' size: a ValueError naming the parameter otherwise. For ``jax.jit(..., in_shardings=...)``
    or ``jax.device_put``."""
    state = nnx.state(model)
    specs = nnx.get_partition_spec(state)

    def sharding(keys, spec, value):
        spec = _checked(_path(keys), tuple(value.shape), _on_mesh(spec, mesh), mesh)
        return NamedSharding(mesh, spec)

    # leaves of both trees are the raw values (Variables are pytree nodes in NNX 0.12 states)
    return jax.tree.map_with_path(sharding, specs, state, is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place ``model``'s weights on ``mesh`` by their annotations (in place; returns ``model``). Every check runs
    before anything moves. Any Flax model of this package; a model built with ``param_dtype=bfloat16`` keeps it."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (make_mesh builds one), got {type(mesh).__name__}")
    shardings = param_shardings(model, mesh)
    nnx.update(model, jax.device_put(nnx.state(model), shardings))
    return model


def model_mesh(model: nnx.Module) -> Mesh | None:
    """The mesh ``model``'s weights are placed on (``shard_model``), or None for a model on one device."""
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Dimension 0 (the batch) over "data", the others replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA if DATA in mesh.shape else None, *([None] * (ndim - 1))))


def shard_batch(mesh: Mesh, *arrays):
    """Each array (ids, masks, positions, embeddings: batch first) placed with its batch split over "data"; None
    passes through. One array in, one out; several in, a tuple out. The batch must divide by the "data" axis."""
    size = mesh.shape.get(DATA, 1)
    out = []
    for i, array in enumerate(arrays):
        if array is None:
            out.append(None)
            continue
        array = np.asarray(array) if not isinstance(array, jax.Array) else array
        if array.ndim == 0 or array.shape[0] % size:
            raise ValueError(f"shard_batch: argument {i} has shape {tuple(array.shape)}; its batch (dimension 0) must "
                             f"divide by the mesh axis 'data' of size {size}")
        out.append(jax.device_put(array, batch_sharding(mesh, array.ndim)))
    return out[0] if len(out) == 1 else tuple(out)


def cache_sharding(mesh: Mesh) -> NamedSharding:
    """The layout of a KV cache buffer (B, nh, L, hs): batch over "data", heads over "model" (each device keeps the
    keys and values of the heads its c_attn columns compute)."""
    return NamedSharding(mesh, PartitionSpec(DATA if DATA in mesh.shape else None,
                                             MODEL if MODEL in mesh.shape else None, None, None))


def _cache_spec(mesh: Mesh, shape) -> PartitionSpec:
    B, nh = shape[0], shape[1]
    data = DATA if DATA in mesh.shape and B % mesh.shape[DATA] == 0 else None
    model = MODEL if MODEL in mesh.shape and nh % mesh.shape[MODEL] == 0 else None
    return PartitionSpec(data, model, None, None)


def shard_cache(cache, mesh: Mesh):
    """``cache`` (a KVCache; any pytree of (B, nh, L, hs) buffers) with every buffer laid out as
    ``cache_sharding``: placed (``jax.device_put``) outside a trace, constrained
    (``jax.lax.with_sharding_constraint``) inside one, so a compiled decoding loop keeps the layout. A batch or head
    count that does not divide by its axis leaves that dimension replicated. Scalars (a write position) stay
    replicated."""

    def place(x):
        if getattr(x, "ndim", 0) != 4:
            return x
        sharding = NamedSharding(mesh, _cache_spec(mesh, x.shape))
        if isinstance(x, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(x, sharding)
        return jax.device_put(x, sharding)

    return jax.tree.map(place, cache)
