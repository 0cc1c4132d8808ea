"""model.safetensors (and sharded model.safetensors.index.json): transformers' PyTorch names and layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import files
from ..checkpoint import CheckpointError, from_format
from . import pt_layout

FORMAT = "safetensors"
FILENAMES = ("model.safetensors", "model.safetensors.index.json")
key_of = pt_layout.key_of


def find(folder: Path) -> Path | None:
    return pt_layout.find(folder, FILENAMES)


def _read_file(path: Path):
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _write_file(state: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    with files.atomic_path(path) as tmp:  # written straight to disk: no whole-file buffer in memory
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp), metadata={"format": "pt"})


def read(main: Path, config, progress=None) -> dict[str, np.ndarray]:
    raw = pt_layout.read(main, _read_file)
    return from_format(raw, key_of, config, str(main), pt_layout.aliases, progress)


def write(state, folder: Path, config, *, max_shard_size=None, progress=None) -> list[Path]:
    return pt_layout.write(state, folder, FILENAMES[0], _write_file, max_shard_size, progress)
