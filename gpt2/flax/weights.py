"""Canonical arrays <-> this framework's parameters: a rename plus one transpose, and nothing else.

The canonical form (gpt2/common/checkpoint.py) has transformers' PyTorch names and Conv1D layout [in, out]. NNX
``Linear.kernel`` is [in, out] too, so the trunk's projections copy as they are; the heads, stored [out, in] as
torch ``nn.Linear`` weights, are the one transpose. Parameters are found by ATTRIBUTE PATH
(``model.transformer.h[0].attn.c_attn.kernel``), the same walk as the other frameworks. The whole table:

    canonical (transformers' PyTorch)                      Flax NNX                              op
    transformer.<path>, for a FlaxGPT2Model alone          <path>                                rename
    <...>.weight of an embedding (wte, wpe)                Embed.embedding [V, C]                copy
    transformer.<...>.{c_attn,q_attn,c_proj,c_fc}.weight   Linear.kernel [in, out]               copy
    <...>.ln_*.weight / .bias                              LayerNorm.scale / .bias               copy
    <...>.bias of a projection or head                     Linear.bias                           copy
    {lm_head, score, classifier, qa_outputs, multiple_choice_head.summary}.weight [out, in]
                                                           Linear.kernel [in, out]               transpose
    lm_head.weight when tied                               not stored: the head reads wte        --
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..common.numerics import cast_checked

# The attributes that are checkpoint names: the walk below follows these and nothing else (a tied head holding a
# reference to wte, a dropout layer or a function never show up as weights).
CHILDREN = ("transformer", "wte", "wpe", "h", "ln_1", "attn", "ln_cross_attn", "crossattention", "ln_2", "mlp",
            "c_attn", "q_attn", "c_proj", "c_fc", "ln_f", "lm_head", "multiple_choice_head", "summary", "score",
            "classifier", "qa_outputs")
# A leaf module's parameter attribute -> the canonical suffix (Linear, LayerNorm, Embed, or a module of our own
# that keeps torch's names).
LEAVES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "weight": "weight", "bias": "bias"}


def to_numpy(value) -> np.ndarray:
    """A parameter or array as a numpy array on the host (bfloat16 as ml_dtypes' bfloat16, as JAX gives it)."""
    if isinstance(value, nnx.Variable):
        value = value.get_value()
    return np.asarray(jax.device_get(value))


def dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def _transposed(cname: str, attribute: str) -> bool:
    """Heads are stored [out, in] (torch Linear), NNX kernels are [in, out]: the one transpose of the map."""
    return attribute == "kernel" and not cname.startswith("transformer.")


def variables(model) -> dict[str, tuple[str, nnx.Param, bool]]:
    """canonical name -> (the model's own path for it, the parameter, transposed?) for every weight of ``model``.

    The model's own path is what a missing-weights report names (``score.weight``; a trunk alone ``wte.weight``)."""
    prefix = "transformer." if model.trunk is model else ""
    tied = model.config.tie_word_embeddings
    found: dict[str, tuple[str, nnx.Param, bool]] = {}

    def walk(obj, path: str) -> None:
        if isinstance(obj, nnx.Param):  # a weight kept under a checkpoint name (a module of our own)
            found[prefix + path + ".weight"] = (path + ".weight", obj, False)
            return
        if isinstance(obj, (list, tuple, nnx.List)):  # the blocks, self.h
            for i, item in enumerate(obj):
                walk(item, f"{path}.{i}")
            return
        if not isinstance(obj, nnx.Module):
            return
        for attribute, suffix in LEAVES.items():
            var = getattr(obj, attribute, None)
            if isinstance(var, nnx.Param):
                cname = prefix + path + "." + suffix
                found[cname] = (path + "." + suffix, var, _transposed(cname, attribute))
        for name in CHILDREN:
            if name == "lm_head" and tied:
                continue  # tied: the head is wte itself, saved once under transformer.wte.weight
            child = getattr(obj, name, None)
            if child is not None:
                walk(child, f"{path}.{name}" if path else name)

    walk(model, "")
    return found


def state_to_canonical(model) -> dict[str, np.ndarray]:
    """``model``'s weights in the canonical form (a tied lm_head is left out, as in transformers' files)."""
    state = {}
    for cname, (_, var, transpose) in variables(model).items():
        array = to_numpy(var)
        state[cname] = np.ascontiguousarray(array.T if transpose else array)
    return state


def load_canonical(model, state: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Assign canonical arrays to ``model``'s parameters (cast on the host to each parameter's dtype); returns (the
    model's weight paths the state lacks, the canonical names the model does not use). A shape that differs is a
    ValueError naming the tensor; a cast that overflows (fp32 -> fp16 above 65504) is one too, before any parameter
    changes. Works on an abstract model (``nnx.eval_shape``): each parameter gets a real array."""
    plan, missing = [], []
    found = variables(model)
    for cname, (own, var, transpose) in found.items():
        if cname not in state:
            missing.append(own)
            continue
        array = np.asarray(state[cname])
        array = array.T if transpose else array
        shape = tuple(var.get_value().shape)
        if tuple(array.shape) != shape:
            raise ValueError(f"tensor {cname!r}: checkpoint shape {tuple(state[cname].shape)}, model expects "
                             f"{shape[::-1] if transpose else shape}")
        array, _ = cast_checked(cname, array, np.dtype(var.get_value().dtype))
        plan.append((var, array))
    for var, array in plan:  # every check passed: only now does the model change
        var.set_value(jnp.asarray(array))
    return missing, sorted(set(state) - set(found))
