"""Canonical arrays <-> this framework's parameters: a rename plus one transpose, and nothing else.

The canonical form (gpt2/common/checkpoint.py) has transformers' PyTorch names and Conv1D layout [in, out]; our
projections are ``nn.Linear`` ([out, in]), so those weights are transposed here and nowhere else. Everything else
is a rename: a bare GPT2Model's parameter ``wte.weight`` is ``transformer.wte.weight``. The whole table:

    canonical (transformers' PyTorch)                      torch                             op
    transformer.<path>, for a GPT2Model alone              <path>                            rename
    h.<i>.{attn,crossattention}.{c_attn,q_attn,c_proj}.weight, h.<i>.mlp.{c_fc,c_proj}.weight
                                                  [in, out]  nn.Linear.weight [out, in]      transpose
    everything else (embeddings, LayerNorms, biases, heads)  the same name                  copy
    lm_head.weight when tied                               not stored: it is wte.weight      --
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import torch
import torch.nn as nn

from ..common.numerics import cast_overflow_error

# The Conv1D weights: canonical [in, out], nn.Linear [out, in].
CONV1D = re.compile(r"\.h\.\d+\.(attn|crossattention|mlp)\.(c_attn|q_attn|c_proj|c_fc)\.weight$")


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor (shared memory where the dtype allows)."""
    if array.dtype.name == "bfloat16":  # numpy's bfloat16 (ml_dtypes) has no torch twin: reinterpret the bits
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    with warnings.catch_warnings():  # read-only (memory-mapped) arrays are only read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array on the host (bfloat16 as ml_dtypes' bfloat16)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def canonical_name(model: nn.Module, name: str) -> str:
    """The canonical name of one of ``model``'s parameters (a trunk alone gets the ``transformer.`` prefix)."""
    return name if model.trunk is not model else f"transformer.{name}"


def _tied(model: nn.Module) -> bool:
    return bool(model.config.tie_word_embeddings)


def state_to_canonical(model: nn.Module) -> dict[str, np.ndarray]:
    """``model``'s weights in the canonical form (a tied lm_head is left out, as in transformers' files)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and _tied(model):
            continue
        cname = canonical_name(model, name)
        array = to_numpy(tensor.t() if CONV1D.search(cname) else tensor)
        state[cname] = np.ascontiguousarray(array)
    return state


def load_canonical(model: nn.Module, state: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Copy canonical arrays into ``model``'s parameters (cast to each parameter's dtype, on its device); returns
    (the model's parameter names the state lacks, the canonical names the model does not use). A shape that differs
    is a ValueError naming the tensor; a cast that overflows (fp32 -> fp16 above 65504) is one too."""
    params = model.state_dict(keep_vars=True)
    used, missing = set(), []
    with torch.no_grad():
        for name, param in params.items():
            if name == "lm_head.weight" and _tied(model):
                continue
            cname = canonical_name(model, name)
            if cname not in state:
                missing.append(name)
                continue
            tensor = to_torch(state[cname])
            tensor = tensor.t() if CONV1D.search(cname) else tensor
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"tensor {cname!r}: checkpoint shape {tuple(tensor.shape)}, model expects "
                                 f"{tuple(param.shape)}")
            param.copy_(tensor)
            if param.dtype != tensor.dtype and not bool(torch.isfinite(param).all()):
                # checkpoints are checked finite when read, so this is the cast (fp32 -> fp16 above 65504)
                raise cast_overflow_error(cname, float(tensor.abs().max()), dtype_name(tensor.dtype),
                                          dtype_name(param.dtype))
            used.add(cname)
    return missing, sorted(set(state) - used)
