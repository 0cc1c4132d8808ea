"""pytorch_model.bin (and sharded pytorch_model.bin.index.json): transformers' PyTorch names and layouts.

Read with ``torch.load(weights_only=True)`` only: the unpickler then builds tensors and plain containers and refuses
every other object, so a checkpoint can never run code. PyTorch is needed for this format and for no other.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .. import files
from ..checkpoint import CheckpointError, from_format
from . import pt_layout

FORMAT = "pytorch"
FILENAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
key_of = pt_layout.key_of


def find(folder: Path) -> Path | None:
    return pt_layout.find(folder, FILENAMES)


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading or writing pytorch_model.bin needs PyTorch: pip install 'gpt2[torch]' "
            "(or convert the checkpoint to safetensors where PyTorch is installed)"
        ) from None
    return torch


def _to_numpy(tensor, torch) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _from_numpy(array: np.ndarray, torch):
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch.from_numpy wants a writable buffer; share it otherwise (no copy)
        array = array.copy()
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _read_file(path: Path):
    torch = _torch()
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to unpickle (weights_only=True allows tensors only): {first}") from None
    except Exception as e:  # torch.load on damaged bytes raises anything from RuntimeError to IndexError
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).strip()[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found a {type(obj).__name__}")
    for name, tensor in obj.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
    for name, tensor in obj.items():
        yield name, _to_numpy(tensor, torch)


def _write_file(state: dict[str, np.ndarray], path: Path) -> None:
    torch = _torch()
    tensors = {name: _from_numpy(array, torch) for name, array in state.items()}
    torch.save(tensors, str(path))


def read(main: Path, config, progress=None) -> dict[str, np.ndarray]:
    raw = pt_layout.read(main, _read_file)
    return from_format(raw, key_of, config, str(main), pt_layout.aliases, progress)


def write(state, stage: files.FolderWrite, config, *, max_shard_size=None, progress=None) -> list[Path]:
    # torch.save reports a failed write (a full disk...) as a RuntimeError ("unexpected pos ...")
    return pt_layout.write(state, stage, FILENAMES[0], _write_file, max_shard_size, progress,
                           errors=(RuntimeError,))
