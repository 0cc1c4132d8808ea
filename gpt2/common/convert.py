"""Convert a checkpoint between formats: read whatever a source holds, write an HF-layout folder.

>>> from gpt2 import convert
>>> convert("openai/124M", "gpt2-tf", to="tf")    # OpenAI's TF checkpoint -> tf_model.h5 + config + vocabulary
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from . import hub
from .checkpoint import WRITABLE_FORMATS, load_checkpoint, resolve_checkpoint, save_checkpoint
from .numerics import cast_checked

# Files copied beside the weights when the source has them (the tokenizer and generation settings).
SIDE_FILES = (
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json",
)
DTYPES = ("float32", "float16", "bfloat16")
# OpenAI's names for the same vocabulary files: encoder.json is vocab.json, vocab.bpe is merges.txt.
OPENAI_VOCAB = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str = "safetensors",
    *,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Path]:
    """Read the checkpoint at ``src`` (any format) and write ``dst`` in format ``to``; returns the files written.

    ``to`` is one of safetensors, pytorch, tf, flax. ``dst`` gets config.json, the weights, and the vocabulary and
    generation files when the source has them. ``dtype`` (float32, float16, bfloat16) casts the weights on the way;
    by default they keep their stored dtype. ``progress(phase, done_bytes, total_bytes)`` follows the work.
    """
    if to not in WRITABLE_FORMATS:
        raise ValueError(f"--to must be one of {', '.join(WRITABLE_FORMATS)}, got {to!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for what, value in (("source", src), ("destination", dst)):
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
            # Path("") is ".": an empty destination would write into the current folder, an empty source read it
            raise ValueError(f"the {what} must be a folder, file or model name, got {value!r}")
    fmt, main = resolve_checkpoint(src, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"destination {str(dst)!r} exists and is not a folder")

    def ticker(phase: str, total: int):
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            progress(phase, done, total)

        return tick if progress is not None else None

    size = _checkpoint_bytes(main)
    state, config = load_checkpoint(src, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                    progress=ticker(f"reading {main.name}", size), resolved=(fmt, main))
    if dtype is not None:
        import ml_dtypes

        target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
        underflow = 0
        for name in state:  # one tensor at a time: a refused cast leaves nothing written
            state[name], lost = cast_checked(name, state[name], target)
            underflow += lost
        if underflow:
            warnings.warn(f"casting to {dtype}: {underflow} nonzero weights are too small for {dtype} and became "
                          f"0", stacklevel=2)
        config.dtype = dtype
    total = sum(a.nbytes for a in state.values())
    side = _side_files(src, main, fmt, revision, cache_dir, local_files_only)
    return save_checkpoint(state, dst, config, format=to, max_shard_size=max_shard_size,
                           progress=ticker(f"writing {to}", total), side_files=side)


def _checkpoint_bytes(main: Path) -> int:
    if main.name.endswith(".index.json"):
        return sum(p.stat().st_size for p in main.parent.iterdir() if p.is_file() and p != main)
    if main.name.endswith(".index"):  # OpenAI: the data files beside the index
        return sum(p.stat().st_size for p in main.parent.glob(main.name[: -len(".index")] + ".data-*"))
    return main.stat().st_size


def _side_files(src, main: Path, fmt: str, revision, cache_dir, local_files_only) -> dict[str, Path]:
    """{name in the destination: source file} for the vocabulary and generation files the source has."""
    wanted = {name: name for name in SIDE_FILES}
    if fmt == "openai":  # its vocabulary comes under OpenAI's names
        wanted = {**{n: n for n in SIDE_FILES if n not in OPENAI_VOCAB.values()}, **OPENAI_VOCAB}
    local = Path(src).exists()
    found = {}
    for source_name, dest_name in wanted.items():
        if local or fmt == "openai":
            path = main.parent / source_name
            path = path if path.is_file() else None
        else:
            path = hub.resolve_file(src, source_name, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only)
        if path is not None:
            found[dest_name] = path
    return found
