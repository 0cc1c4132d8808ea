"""The canonical form of a GPT-2 checkpoint, and the table appliers every format module uses.

The canonical form is a dict of named numpy arrays with transformers' PyTorch names and layouts: the trunk under
``transformer.`` (Conv1D weights as [in, out]), heads at the top level. This module knows those names and shapes
(for a config), the layout ops a format may apply to a tensor, and ``from_format`` / ``to_format``, which apply a
format's ``key_of`` table. It imports no format and not ``gpt2.common.checkpoint``: the format modules and
checkpoint.py both import it, so the import graph has no cycle (checkpoint -> formats -> canonical).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from ..config import GPT2Config

# The heads, by the name of their first tensor, with the transformers class that owns them.
HEAD_CLASSES = {
    "lm_head": "GPT2LMHeadModel",
    "multiple_choice_head": "GPT2DoubleHeadsModel",
    "score": "GPT2ForSequenceClassification",
    "classifier": "GPT2ForTokenClassification",
    "qa_outputs": "GPT2ForQuestionAnswering",
}

# Buffers that old transformers versions saved with the weights (the causal mask and its fill value). They carry no
# learned values: dropped on read.
_BUFFER = re.compile(r"(^|\.)h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, incomplete, or not matching its config. Names file and tensor."""


# -- the canonical names ---------------------------------------------------------------------------------------------
def trunk_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes of the trunk (GPT2Model) for ``config``."""
    C, I = config.n_embd, config.inner_dim
    shapes = {"transformer.wte.weight": (config.vocab_size, C), "transformer.wpe.weight": (config.n_positions, C)}
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        layer = {"ln_1": None, "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "ln_2": None,
                 "mlp.c_fc": (C, I), "mlp.c_proj": (I, C)}
        if config.add_cross_attention:
            layer.update({"crossattention.c_attn": (C, 2 * C), "crossattention.q_attn": (C, C),
                          "crossattention.c_proj": (C, C), "ln_cross_attn": None})
        for name, w in layer.items():
            shapes[p + name + ".weight"] = w if w is not None else (C,)  # None: a LayerNorm
            shapes[p + name + ".bias"] = (w[1],) if w is not None else (C,)
    shapes["transformer.ln_f.weight"] = shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def head_shapes(config: GPT2Config) -> dict[str, dict[str, tuple[int, ...]]]:
    """For each head, its canonical names and shapes under ``config``."""
    C, L = config.n_embd, config.num_labels
    summary = L if (config.summary_proj_to_labels and L > 0) else C
    return {
        "lm_head": {"lm_head.weight": (config.vocab_size, C)},
        "multiple_choice_head": (
            {"multiple_choice_head.summary.weight": (summary, C), "multiple_choice_head.summary.bias": (summary,)}
            if config.summary_use_proj else {}
        ),
        "score": {"score.weight": (L, C)},
        "classifier": {"classifier.weight": (L, C), "classifier.bias": (L,)},
        "qa_outputs": {"qa_outputs.weight": (2, C), "qa_outputs.bias": (2,)},
    }


def all_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every canonical name a checkpoint for ``config`` may hold, with its shape."""
    shapes = trunk_shapes(config)
    for head in head_shapes(config).values():
        shapes.update(head)
    return shapes


def heads_of(state: dict[str, np.ndarray]) -> list[str]:
    """The heads present in a canonical state (``lm_head`` only when untied)."""
    return [h for h in HEAD_CLASSES if any(k.split(".")[0] == h for k in state)]


def architecture_of(state: dict[str, np.ndarray], config: GPT2Config) -> str:
    """The transformers class name that this state is the weights of (tied LM heads leave no tensor)."""
    for head in heads_of(state):
        if head != "lm_head":
            return HEAD_CLASSES[head]
    if "lm_head.weight" in state or (config.architectures or [""])[0] != "GPT2Model":
        return "GPT2LMHeadModel"
    return "GPT2Model"


# -- layout ops ------------------------------------------------------------------------------------------------------
# op name -> (canonical -> format, format -> canonical). The tables in conversion/ list which tensor uses which.
LAYOUT_OPS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "copy": (lambda a: a, lambda a: a),
    "transpose": (lambda a: np.ascontiguousarray(a.T), lambda a: np.ascontiguousarray(a.T)),  # [out, in] <-> [in, out]
    "bias_row": (lambda a: a.reshape(1, -1), lambda a: a.reshape(-1)),  # Keras Conv1D bias: [1, n]
    "openai_conv": (lambda a: a[None], lambda a: a.reshape(a.shape[1:]) if a.ndim == 3 and a.shape[0] == 1 else a),
}
LAYOUT_DOC = {
    "copy": "same array",
    "transpose": "2-D transpose ([out, in] <-> [in, out])",
    "bias_row": "[n] <-> [1, n]",
    "openai_conv": "[in, out] <-> [1, in, out]",
}


def to_format(state: dict[str, np.ndarray], key_of, where: str, lazy: bool = False) -> dict:
    """Canonical -> a format's names and layouts, by its ``key_of``. Refuses a tensor the format cannot hold.
    ``lazy``: the values are zero-argument functions that make each array when called (a streaming writer then
    holds one converted tensor at a time)."""
    out = {}
    for name, array in state.items():
        mapped = key_of(name)
        if mapped is None:
            raise CheckpointError(f"{where}: this format has no place for the tensor {name!r}")
        key, op = mapped
        convert = LAYOUT_OPS[op][0]
        out[key] = (lambda convert=convert, array=array: convert(array)) if lazy else convert(array)
    return out


class Lazy:
    """A tensor a reader has found but not read: its declared ``shape`` and ``dtype``, and ``load()`` to read it.

    Readers hand these to ``from_format``, which checks the declaration against the config before ``load()`` runs:
    a small file that declares a huge tensor (an HDF5 dataset never written, a compressed record) is refused before
    it can allocate anything. ``load()`` must be called before the reader is advanced (files are open only while
    their reader runs).
    """

    __slots__ = ("shape", "dtype", "load")

    def __init__(self, shape: tuple[int, ...], dtype, load: Callable[[], np.ndarray]) -> None:
        self.shape, self.dtype, self.load = tuple(int(d) for d in shape), dtype, load


def is_float_dtype(dtype) -> bool:
    """float16/32/64 or bfloat16. bfloat16 is matched by identity: ml_dtypes reports kind 'V' for it, as numpy does
    for structured (void) dtypes, which are not numbers at all."""
    if not isinstance(dtype, np.dtype):
        return False
    return (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or dtype.newbyteorder("=") == _BFLOAT16


def native(array: np.ndarray) -> np.ndarray:
    """``array`` in this machine's byte order (a converted copy only when it is not already). Writers such as
    flax.serialization write raw bytes with the dtype's name only, so a big-endian array would come out byte-swapped;
    the canonical form is native, once, here."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


_CANONICAL_SHAPE = {  # what each layout op's format -> canonical direction makes of a shape, without any data
    "copy": lambda s: s,
    "transpose": lambda s: s[::-1],
    "bias_row": lambda s: (math.prod(s),),
    "openai_conv": lambda s: s[1:] if len(s) == 3 and s[0] == 1 else s,
}


def expected_shape_message(where: str, name: str, shape, want, config: GPT2Config) -> str:
    return (
        f"{where}: tensor {name!r} has shape {tuple(shape)}, the config wants {tuple(want)} "
        f"(vocab_size={config.vocab_size}, n_positions={config.n_positions}, n_embd={config.n_embd}, "
        f"n_inner={config.n_inner}, num_labels={config.num_labels})"
    )


def from_format(raw: Iterable[tuple[str, "np.ndarray | Lazy"]], key_of, config: GPT2Config, where: str,
                aliases: Callable[[str], Iterable[str]] = lambda k: (k,),
                progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """A format's (name, array or Lazy) pairs -> canonical, by its ``key_of`` inverted over every name ``config``
    allows.

    Each tensor's declared shape and dtype are checked against the config before it is read (a ``Lazy`` is loaded
    only then; a tensor the config has no place for is never read). Two names for one tensor (``h.0...`` beside
    ``transformer.h.0...``, an old and a new spelling) are an error, never last-one-wins. Arrays come out in native
    byte order. ``progress(nbytes)`` is called as each tensor arrives. ``aliases(key)`` gives the spellings a reader
    accepts for a key (older writers' names, a missing prefix).
    """
    inverse = {}
    shapes = all_shapes(config)
    for name in shapes:
        mapped = key_of(name)
        if mapped is not None:
            inverse[mapped[0]] = (name, mapped[1])
    state, source, unexpected = {}, {}, []
    for key, value in raw:
        if progress is not None:
            progress(math.prod(value.shape) * getattr(value.dtype, "itemsize", 0))
        hit = next((inverse[a] for a in aliases(key) if a in inverse), None)
        if hit is None:
            if not _BUFFER.search(key):
                unexpected.append(key)
            continue
        name, op = hit
        if name in source:
            again = "is listed twice" if source[name] == key else f"and {source[name]!r} both hold it"
            raise CheckpointError(f"{where}: two tensors for {name!r}: {key!r} {again}; refusing to pick one")
        source[name] = key
        declared = tuple(value.shape)
        if _CANONICAL_SHAPE[op](declared) != shapes[name]:
            raise CheckpointError(expected_shape_message(where, key, declared, shapes[name], config))
        if not is_float_dtype(value.dtype):
            raise CheckpointError(f"{where}: tensor {key!r} has dtype {value.dtype}, expected a float type")
        array = value.load() if isinstance(value, Lazy) else value
        if not isinstance(array, np.ndarray) or array.shape != declared or array.dtype != value.dtype:
            got = f"{getattr(array, 'shape', '?')} {getattr(array, 'dtype', type(array).__name__)}"
            raise CheckpointError(f"{where}: tensor {key!r} declared {declared} {value.dtype} but read as {got}")
        state[name] = native(LAYOUT_OPS[op][1](array))
    if unexpected:
        shown = ", ".join(repr(k) for k in sorted(unexpected)[:8])
        more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
        raise CheckpointError(
            f"{where}: tensors that a GPT-2 with this config does not have: {shown}{more} "
            f"(n_layer={config.n_layer}, add_cross_attention={config.add_cross_attention})"
        )
    return state


def max_file_bytes(config: GPT2Config) -> int:
    """The most bytes a checkpoint file for ``config`` can need: every tensor it may hold at 8 bytes a value, the
    causal-mask buffers old transformers versions saved, and 1 MiB for names and headers. Readers refuse records
    larger than this before reading them."""
    values = sum(math.prod(s) for s in all_shapes(config).values())
    buffers = 2 * config.n_layer * (config.n_positions ** 2 + 1) * (2 if config.add_cross_attention else 1)
    return 8 * (values + buffers) + (1 << 20)


def parse_size(size: int | str | None) -> int | None:
    """"5GB" / "500MB" / "10KiB" / 1000 -> bytes (decimal units as transformers, binary with 'i')."""
    if size is None or isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size: cannot read {size!r}; write e.g. 5GB, 500MB or a number of bytes")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))
