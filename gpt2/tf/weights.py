"""Canonical arrays <-> this framework's variables: a rename plus one transpose, and nothing else.

The canonical form (gpt2/common/checkpoint.py) has transformers' PyTorch names and Conv1D layout [in, out]. Keras
``Dense.kernel`` is [in, out] too, so the trunk's projections copy as they are; the heads, stored [out, in] as
torch ``nn.Linear`` weights, are the one transpose. Variables are found by ATTRIBUTE PATH
(``model.transformer.h[0].attn.c_attn.kernel``), never by Keras variable names or paths, which depend on the scopes
the model was built under. The whole table:

    canonical (transformers' PyTorch)                      Keras 3                              op
    transformer.<path>, for a TFGPT2Model alone            <path>                               rename
    <...>.weight of an embedding (wte, wpe)                Embedding.embeddings [V, C]          copy
    transformer.<...>.{c_attn,q_attn,c_proj,c_fc}.weight   Dense.kernel [in, out]               copy
    <...>.ln_*.weight / .bias                              LayerNormalization.gamma / .beta     copy
    <...>.bias of a projection or head                     Dense.bias                           copy
    {lm_head, score, classifier, qa_outputs, multiple_choice_head.summary}.weight [out, in]
                                                           Dense.kernel [in, out]               transpose
    lm_head.weight when tied                               not stored: the head reads wte       --
"""

from __future__ import annotations

import keras
import numpy as np

from ..common.numerics import cast_checked

# The attributes that are checkpoint names: the walk below follows these and nothing else (a tied head holding a
# reference to wte, a dropout layer or a cache never show up as weights).
CHILDREN = ("transformer", "wte", "wpe", "h", "ln_1", "attn", "ln_cross_attn", "crossattention", "ln_2", "mlp",
            "c_attn", "q_attn", "c_proj", "c_fc", "ln_f", "lm_head", "multiple_choice_head", "summary", "score",
            "classifier", "qa_outputs")
# A leaf layer's variable attribute -> the canonical suffix (Dense, LayerNormalization, Embedding, or a layer of
# our own that keeps torch's names).
LEAVES = {"kernel": "weight", "embeddings": "weight", "gamma": "weight", "weight": "weight", "beta": "bias",
          "bias": "bias"}


def to_numpy(value) -> np.ndarray:
    """A variable or tensor as a numpy array on the host (bfloat16 as ml_dtypes' bfloat16, as TF gives it)."""
    if isinstance(value, keras.Variable):
        value = value.value
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def numpy_dtype(dtype) -> np.dtype:
    """A Keras / TF dtype (name or object) as a numpy dtype (bfloat16 through ml_dtypes)."""
    name = getattr(dtype, "name", dtype)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype) -> str:
    return numpy_dtype(dtype).name


def _transposed(cname: str, attribute: str) -> bool:
    """Heads are stored [out, in] (torch Linear), Dense kernels are [in, out]: the one transpose of the map."""
    return attribute == "kernel" and not cname.startswith("transformer.")


def variables(model) -> dict[str, tuple[str, keras.Variable, bool]]:
    """canonical name -> (the model's own path for it, the variable, transposed?) for every weight of ``model``.

    The model's own path is what a missing-weights report names (``score.weight``; a trunk alone ``wte.weight``)."""
    prefix = "transformer." if model.trunk is model else ""
    found: dict[str, tuple[str, keras.Variable, bool]] = {}

    def walk(obj, path: str) -> None:
        if isinstance(obj, keras.Variable):  # a weight made with add_weight and kept under a checkpoint name
            found[prefix + path + ".weight"] = (path + ".weight", obj, False)
            return
        if isinstance(obj, (list, tuple)):  # the blocks, self.h
            for i, item in enumerate(obj):
                walk(item, f"{path}.{i}")
            return
        if not isinstance(obj, keras.layers.Layer):
            return
        for attribute, suffix in LEAVES.items():
            var = getattr(obj, attribute, None)  # Dense.kernel and Embedding.embeddings are properties
            if isinstance(var, keras.Variable):
                cname = prefix + path + "." + suffix
                found[cname] = (path + "." + suffix, var, _transposed(cname, attribute))
        for name in CHILDREN:
            if name == "lm_head" and model.config.tie_word_embeddings:
                continue  # tied: the head is wte itself, saved once under transformer.wte.weight
            child = getattr(obj, name, None)
            if child is not None and not callable(child) or isinstance(child, keras.layers.Layer):
                walk(child, f"{path}.{name}" if path else name)

    walk(model, "")
    return found


def state_to_canonical(model) -> dict[str, np.ndarray]:
    """``model``'s weights in the canonical form (a tied lm_head is left out, as in transformers' files)."""
    _check_built(model)
    state = {}
    for cname, (_, var, transpose) in variables(model).items():
        array = to_numpy(var)
        state[cname] = np.ascontiguousarray(array.T if transpose else array)
    return state


def load_canonical(model, state: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Assign canonical arrays to ``model``'s variables (cast on the host to each variable's dtype); returns (the
    model's weight paths the state lacks, the canonical names the model does not use). A shape that differs is a
    ValueError naming the tensor; a cast that overflows (fp32 -> fp16 above 65504) is one too, before any variable
    changes. The model must be built (from_pretrained builds it)."""
    _check_built(model)
    plan, missing = [], []
    for cname, (own, var, transpose) in variables(model).items():
        if cname not in state:
            missing.append(own)
            continue
        array = np.asarray(state[cname])
        array = array.T if transpose else array
        if tuple(array.shape) != tuple(var.shape):
            raise ValueError(f"tensor {cname!r}: checkpoint shape {tuple(state[cname].shape)}, model expects "
                             f"{tuple(var.shape)[::-1] if transpose else tuple(var.shape)}")
        array, _ = cast_checked(cname, array, numpy_dtype(var.dtype))
        plan.append((var, np.ascontiguousarray(array)))
    for var, array in plan:  # every check passed: only now does the model change
        var.assign(array)
    used = {cname for cname in variables(model)} & set(state)
    return missing, sorted(set(state) - used)


def _check_built(model) -> None:
    if not model.built:
        raise ValueError(f"{type(model).__name__} has no weights yet: build it first (call it once, e.g. "
                         f"model(tf.constant([[0]])), or load it with from_pretrained)")
