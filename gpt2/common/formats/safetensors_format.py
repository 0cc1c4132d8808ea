"""model.safetensors (and sharded model.safetensors.index.json): transformers' PyTorch names and layouts.

transformers' TF classes write model.safetensors too (``save_pretrained(safe_serialization=True)``), with their
TF weight names and layouts and the metadata ``{"format": "tf"}``: those files are read with tf_model.h5's names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import files
from .canonical import CheckpointError, Lazy, from_format
from . import keras_h5, pt_layout

FORMAT = "safetensors"
FILENAMES = ("model.safetensors", "model.safetensors.index.json")
key_of = pt_layout.key_of


def find(folder: Path) -> Path | None:
    return pt_layout.find(folder, FILENAMES)


# safetensors' dtype names -> numpy; names absent here (F8_*, ...) stay strings and fail from_format's float check.
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": "bfloat16", "I8": np.int8,
           "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
           "U64": np.uint64, "BOOL": np.bool_}


def _dtype(name: str):
    if name == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[name]) if name in _DTYPES else name


def _read_file(path: Path):
    """Each tensor as a Lazy (shape and dtype from the header; the data read only when from_format asks)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")

    def lazy(f, name):
        def load():
            try:
                return f.get_tensor(name)
            except (SafetensorError, OSError, ValueError, TypeError) as e:
                raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({e})") from None

        info = f.get_slice(name)
        return Lazy(info.get_shape(), _dtype(info.get_dtype()), load)

    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                yield name, lazy(f, name)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _write_file(state: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    # written straight to disk: no whole-file buffer in memory
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata={"format": "pt"})


def _written_by(main: Path) -> str | None:
    """The ``format`` metadata of the (first) file: "pt", "tf", ... or None."""
    from safetensors import SafetensorError, safe_open

    first = main
    if main.name.endswith(".index.json"):
        shards = sorted(set(pt_layout.shard_files(main).values()))
        first = main.parent / shards[0] if shards else main
    if not first.is_file():
        return None  # the reader names the missing file
    try:
        with safe_open(str(first), framework="numpy") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError, TypeError):
        return None  # the reader reports the damage


def read(main: Path, config, progress=None) -> dict[str, np.ndarray]:
    if _written_by(main) == "tf":  # transformers' TF names: the h5 format's table, the model name dropped
        raw = pt_layout.read(main, _read_file, index_key=keras_h5.strip_model_name)
        return from_format(raw, keras_h5.key_of, config, str(main), keras_h5.aliases, progress)
    raw = pt_layout.read(main, _read_file)
    return from_format(raw, key_of, config, str(main), pt_layout.aliases, progress)


def write(state, stage: files.FolderWrite, config, *, max_shard_size=None, progress=None) -> list[Path]:
    from safetensors import SafetensorError  # what save_file raises on a failed write (a full disk...)

    return pt_layout.write(state, stage, FILENAMES[0], _write_file, max_shard_size, progress,
                           errors=(SafetensorError,))
