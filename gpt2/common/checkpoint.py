"""Checkpoints: one canonical in-memory form, and every file format to and from it.

The canonical form is a dict of named numpy arrays with transformers' PyTorch names and layouts: the trunk under
``transformer.`` (``transformer.h.0.attn.c_attn.weight``, Conv1D weights as [in, out]), heads at the top level
(``lm_head.weight`` only when untied, ``score.weight``, ``classifier.*``, ``qa_outputs.*``,
``multiple_choice_head.summary.*``). Each format module in ``gpt2.common.formats`` says, tensor by tensor, which name
and which layout op it uses (``key_of``); this module does the rest once for all of them: detection, reading,
renaming, layout ops, validation against the config, writing.

>>> from gpt2.common.checkpoint import load_checkpoint, save_checkpoint
>>> state, config = load_checkpoint("some-folder")                   # any format
>>> save_checkpoint(state, "out", config, format="tf")                 # tf_model.h5 that transformers' TF loads
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from . import files, hub
from .config import GPT2Config

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


def _expected_shape_message(where: str, name: str, shape, want, config: GPT2Config) -> str:
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
            raise CheckpointError(_expected_shape_message(where, key, declared, shapes[name], config))
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


# -- validation ------------------------------------------------------------------------------------------------------
def validate(state: dict[str, np.ndarray], config: GPT2Config, where: str) -> dict[str, np.ndarray]:
    """Check names, shapes, dtypes and finiteness against ``config``; drop a tied lm_head. Returns the state, every
    array in native byte order (a big-endian array would be written byte-swapped by formats that store raw bytes).

    Every problem is a CheckpointError naming ``where`` and the tensor.
    """
    expected = trunk_shapes(config)
    heads = head_shapes(config)
    missing = [n for n in expected if n not in state]
    for head in heads_of(state):
        expected.update(heads[head])
        missing += [n for n in heads[head] if n not in state]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{where}: missing tensors {shown}")
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise CheckpointError(f"{where}: unexpected tensors {', '.join(map(repr, unknown[:8]))}")
    for name, array in state.items():
        if not isinstance(array, np.ndarray):
            raise CheckpointError(f"{where}: tensor {name!r} is a {type(array).__name__}, not a numpy array")
        if tuple(array.shape) != tuple(expected[name]):
            raise CheckpointError(_expected_shape_message(where, name, array.shape, expected[name], config))
        if not is_float_dtype(array.dtype):
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {array.dtype}, expected a float type")
        if not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise CheckpointError(f"{where}: tensor {name!r} has {bad} non-finite values (NaN or inf)")
    state = {name: native(array) for name, array in state.items()}
    if "lm_head.weight" in state and config.tie_word_embeddings:
        if not np.array_equal(state["lm_head.weight"], state["transformer.wte.weight"]):
            warnings.warn(
                f"{where}: lm_head.weight differs from transformer.wte.weight but the config ties them "
                f"(tie_word_embeddings=True); the model uses wte, as transformers does", stacklevel=3,
            )
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state


# -- formats ---------------------------------------------------------------------------------------------------------
# format -> (module in gpt2.common.formats, file suffix). Order = preference when a folder holds several.
_FORMATS = {
    "safetensors": ("safetensors_format", ".safetensors"),
    "pytorch": ("torch_bin", ".bin"),
    "tf": ("keras_h5", ".h5"),
    "flax": ("flax_msgpack", ".msgpack"),
    "openai": ("openai_tf", ".index"),
}
FORMAT_NAMES = tuple(_FORMATS)
WRITABLE_FORMATS = FORMAT_NAMES[:-1]  # OpenAI's format is read only


def _formats():
    return {fmt: importlib.import_module(f"{__package__}.formats.{module}") for fmt, (module, _) in _FORMATS.items()}


def format_module(fmt: str):
    formats = _formats()
    if fmt not in formats:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(formats)}")
    return formats[fmt]


def detect_format(folder: str | os.PathLike) -> tuple[str, Path]:
    """(format, main file) of the checkpoint in a local folder, in preference order; FileNotFoundError when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r}")
    check_complete(folder)
    for fmt, module in _formats().items():
        found = module.find(folder)
        if found is not None:
            return fmt, found
    raise FileNotFoundError(
        f"no checkpoint in {str(folder)!r}: expected one of "
        "model.safetensors[.index.json], pytorch_model.bin[.index.json], tf_model.h5, flax_model.msgpack, "
        "or an OpenAI model.ckpt.index"
    )


def check_complete(folder: str | os.PathLike) -> None:
    """CheckpointError when a save into ``folder`` has not finished (its marker is there): the weights and
    config.json may then be of different saves, or of two formats at once. See docs/checkpoints.md."""
    info = files.interrupted_save(folder)
    if info is None:
        return
    if info["running"]:
        raise CheckpointError(
            f"{folder}: a save into this folder is in progress (pid {info['pid']} on {info['host']}, started "
            f"{info['started']}); load it when the save has finished (or delete {info['path']} if none runs)")
    raise CheckpointError(
        f"{folder}: an interrupted save left this folder inconsistent (started {info['started']}, pid "
        f"{info['pid']}); save again or delete {info['path']}")


def resolve_checkpoint(
    name_or_path: str | os.PathLike, *, revision=None, cache_dir=None, local_files_only=False
) -> tuple[str, Path]:
    """(format, local main file) for a folder, a weights file, or a hub name (local HF cache first).
    A local folder that a save has not finished writing is a CheckpointError (``check_complete``)."""
    path = Path(name_or_path)
    if path.is_dir() or path.is_file():
        check_complete(path if path.is_dir() else path.parent)
    if path.is_file():
        name = path.name[: -len(".index.json")] if path.name.endswith(".index.json") else path.name
        for fmt, (_, suffix) in _FORMATS.items():
            if name.endswith(suffix):
                return fmt, path
        suffixes = ", ".join(s for _, s in _FORMATS.values())
        raise ValueError(f"{str(path)!r}: not a checkpoint file (expected a name ending in {suffixes})")
    if hub.local_folder(path) is not None:
        return detect_format(path)
    for allow_download in ((False, True) if not local_files_only else (False,)):
        for fmt, module in _formats().items():
            for filename in module.FILENAMES:
                found = hub.resolve_file(name_or_path, filename, revision=revision, cache_dir=cache_dir,
                                         local_files_only=not allow_download)
                if found is not None and _shards_available(name_or_path, found, revision, cache_dir,
                                                            local_files_only or not allow_download):
                    return fmt, found
    raise FileNotFoundError(f"no checkpoint for {str(name_or_path)!r}: looked in {hub.describe_lookup(name_or_path)}")


def _shards_available(name, main: Path, revision, cache_dir, local_files_only: bool) -> bool:
    """For a hub checkpoint's shard index: whether every shard it lists is (or now, downloaded, is) in the cache."""
    if not main.name.endswith(".index.json"):
        return True
    from .formats.pt_layout import shard_files

    return all(
        hub.resolve_file(name, shard, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        is not None
        for shard in sorted(set(shard_files(main).values()))
    )


def load_checkpoint(
    name_or_path: str | os.PathLike,
    config: GPT2Config | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], GPT2Config]:
    """Read any supported checkpoint into the canonical form; returns (state, config).

    ``config`` defaults to the config.json beside the weights (hparams.json for OpenAI's format). Everything is read
    and validated before anything is returned: nothing is ever half-loaded. ``progress(nbytes)`` is called as
    tensors are read.
    """
    fmt, main = resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only)
    if config is None:
        local = fmt == "openai" or Path(name_or_path).exists() or (main.parent / "config.json").is_file()
        config = GPT2Config.from_pretrained(main.parent if local else name_or_path, revision=revision,
                                            cache_dir=cache_dir, local_files_only=local_files_only)
    state = format_module(fmt).read(main, config, progress)
    return validate(state, config, str(main)), config


def save_checkpoint(
    state: dict[str, np.ndarray],
    save_directory: str | os.PathLike,
    config: GPT2Config,
    *,
    format: str = "safetensors",
    max_shard_size: int | str | None = None,
    write_config: bool = True,
    progress: Callable[[int], None] | None = None,
    architecture: str | None = None,
    side_files: dict[str, "Path | str"] | None = None,
) -> "SavedFiles":
    """Write a canonical state (and config.json) to a folder in ``format``; returns the files written (a list, whose
    ``removed`` lists the files the save removed).

    The state is validated first. ``max_shard_size`` (bytes or "5GB") shards the safetensors, pytorch and tf
    formats as transformers does. ``architecture`` (a transformers class name) goes to config.json; by default it
    is inferred from the heads present. ``side_files`` ({name in the folder: source file}) are copied in by the same
    transaction: a Path is copied (the vocabulary and generation files that ``convert`` carries over), a str is
    the file's text (a model's generation_config.json).

    The save is one transaction (``files.FolderWrite``): every file is written under a temporary name first, so a
    failure while writing (a full disk) changes nothing; then the files are renamed into place, and the weights of
    an earlier save (old shards, another format's files, which would otherwise win the format order) are removed,
    with a warning naming any other format's files. A crash during that last step leaves a marker that makes every
    load refuse the folder until a save completes. Temporary files that killed saves left are removed.
    """
    if format not in WRITABLE_FORMATS:
        raise ValueError(f"cannot write format {format!r}; expected one of {', '.join(WRITABLE_FORMATS)}")
    save_directory = Path(save_directory)
    if save_directory.is_file():
        raise ValueError(f"{str(save_directory)!r} is a file, expected a folder")
    state = validate(dict(state), config, "state to save")
    from .formats.pt_layout import weight_files

    module = format_module(format)
    with files.FolderWrite(save_directory) as stage:
        written = SavedFiles(module.write(state, stage, config, max_shard_size=max_shard_size, progress=progress))
        if write_config:
            config = config.copy()
            config.architectures = [architecture or architecture_of(state, config)]
            config.validate()
            stage.write_text(save_directory / "config.json", config.to_json_string())
            written.append(save_directory / "config.json")
        for name, source in (side_files or {}).items():
            target = save_directory / name
            if isinstance(source, str):
                stage.write_text(target, source)
            elif target.exists() and Path(source).resolve() == target.resolve():
                continue  # converting in place: the file is already there
            else:
                with stage.path(target) as tmp:
                    shutil.copyfile(source, tmp)
            written.append(target)
        # One model per folder: a file of any writable format not written now is an earlier save's (OpenAI's files
        # stay: they never win the format order, and no save can write them back).
        stale = [p for fmt in WRITABLE_FORMATS for p in weight_files(save_directory, format_module(fmt).FILENAMES)
                 if p not in written]
        own = set(weight_files(save_directory, module.FILENAMES))
        stage.commit(remove=stale)
    written.removed = stage.cleaned + stage.removed
    others = [p.name for p in stage.removed if p not in own]
    if others:
        warnings.warn(f"saving {format} weights into {str(save_directory)!r} removed the weights of other formats "
                      f"there, so that the folder holds one model: {', '.join(others)}", stacklevel=2)
    if stage.cleaned:
        warnings.warn(f"removed {len(stage.cleaned)} temporary files that interrupted saves left in "
                      f"{str(save_directory)!r}: {', '.join(p.name for p in stage.cleaned)}", stacklevel=2)
    return written


class SavedFiles(list):
    """The files a save wrote (a list of paths), with ``removed``: the files it removed (an earlier save's weights,
    other formats' weights, temporary files of killed saves)."""

    def __init__(self, paths: Iterable[Path] = (), removed: Iterable[Path] = ()) -> None:
        super().__init__(paths)
        self.removed = list(removed)


def parse_size(size: int | str | None) -> int | None:
    """"5GB" / "500MB" / "10KiB" / 1000 -> bytes (decimal units as transformers, binary with 'i')."""
    if size is None or isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size: cannot read {size!r}; write e.g. 5GB, 500MB or a number of bytes")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))
