"""Atomic file writes: a temporary file in the destination folder, then a rename.

A crash or an exception half-way through a save leaves the previous file (or no file) in place, never a truncated
one that a later load would half-read.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error it is removed.

    For writers that insist on opening the file themselves (h5py, torch.save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash never leaves a renamed empty file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """Parse a JSON file; FileNotFoundError / ValueError naming the file (and ``what`` it should have been)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid {what} ({e})") from None


def from_json_file(cls, path: str | os.PathLike, what: str, overrides: dict):
    """``cls.from_dict(<the file>, **overrides)``, with any error naming the file."""
    data = read_json(path, what)
    try:
        return cls.from_dict(data, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))
