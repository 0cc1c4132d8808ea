"""pytorch_model.bin (and sharded pytorch_model.bin.index.json): transformers' PyTorch names and layouts.

Read with ``torch.load(weights_only=True)`` only: the unpickler then builds tensors and plain containers and refuses
every other object, so a checkpoint can never run code. PyTorch is needed for this format and for no other.
"""

from __future__ import annotations

import functools
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from .. import files
from .canonical import CheckpointError, from_format, max_file_bytes
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


def _check_records(path: Path, limit: int) -> None:
    """Refuse a zip checkpoint whose records could make torch.load allocate more than ``limit`` bytes.

    torch.save writes every record of its zip uncompressed (STORED, aligned for mmap), so a record's size on disk is
    its size in memory and the file's size bounds what loading it takes. A compressed (deflated) record breaks that
    bound (1 MiB on disk can inflate to gigabytes before anything is checked) and no writer of this format makes one,
    so it is refused outright rather than trusted up to a size. Stored records must also fit the file and, all
    together, what the config allows (``max_file_bytes``). torch's legacy (non-zip) format is read as it is: its
    storages are raw bytes of the file, never inflated.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            records = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (zip: {e})") from None
    size, total = path.stat().st_size, 0
    for r in records:
        if r.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: record {r.filename!r} is compressed (zip method {r.compress_type}); torch.save stores "
                f"records uncompressed, and a compressed one could inflate far past its size on disk: refused")
        if r.file_size != r.compress_size or r.file_size > size:
            raise CheckpointError(f"{path}: record {r.filename!r} declares {r.file_size} bytes "
                                  f"({r.compress_size} stored, file of {size} bytes): damaged or forged")
        total += r.file_size
    if total > limit:
        raise CheckpointError(f"{path}: records hold {total} bytes, more than a checkpoint for this config can need "
                              f"({limit} bytes: every tensor at 8 bytes a value, plus 1 MiB)")


def _read_file(path: Path, limit: int):
    torch = _torch()
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    _check_records(path, limit)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message goes on to advise weights_only=False, i.e. running the file's code: never repeat it.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: holds objects other than tensors{what}; refused without running any of its code "
            "(only tensors in plain containers are read from a pickle)") from None
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
    raw = pt_layout.read(main, functools.partial(_read_file, limit=max_file_bytes(config)))
    return from_format(raw, key_of, config, str(main), pt_layout.aliases, progress)


def write(state, stage: files.FolderWrite, config, *, max_shard_size=None, progress=None) -> list[Path]:
    # torch.save reports a failed write (a full disk...) as a RuntimeError ("unexpected pos ...")
    return pt_layout.write(state, stage, FILENAMES[0], _write_file, max_shard_size, progress,
                           errors=(RuntimeError,))
