"""What the two PyTorch-named formats (model.safetensors, pytorch_model.bin) share: names, aliases, sharding.

Their tensor names are the canonical ones (transformers' PyTorch state dict), so ``key_of`` is the identity. A
checkpoint of a bare GPT2Model has no ``transformer.`` prefix; the reader accepts both spellings. Sharded
checkpoints follow transformers: ``<stem>-00001-of-00003<ext>`` files and ``<stem><ext>.index.json`` with a
``weight_map``. A save writes new shards under names no file has, then the index (the switch), then removes the
old files, so a reader sees the old checkpoint or the new one, never an index pointing at missing shards.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import files
from .canonical import HEAD_CLASSES, CheckpointError, parse_size

ReadFile = Callable[[Path], Iterator[tuple[str, np.ndarray]]]
WriteFile = Callable[[dict[str, np.ndarray], Path], None]


def key_of(name: str) -> tuple[str, str]:
    return name, "copy"


def aliases(key: str):
    yield key
    if not key.startswith("transformer.") and key.split(".")[0] not in HEAD_CLASSES:
        yield "transformer." + key


def find(folder: Path, filenames: tuple[str, ...]) -> Path | None:
    for name in filenames:
        if (folder / name).is_file():
            return folder / name
    return None


def shard_files(index_path: Path) -> dict[str, str]:
    """The weight_map of a sharded checkpoint's index (tensor -> shard file name), validated."""
    try:
        index = files.read_json(index_path, "shard index")  # bounded nesting, a dict
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a dict of file names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a valid shard index ({type(e).__name__}: {e})") from None
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:
            raise CheckpointError(f"{index_path}: shard {shard!r} is not a plain file name")
    return weight_map


def read(main: Path, read_file: ReadFile, index_key: Callable[[str], str] = lambda k: k
         ) -> Iterator[tuple[str, np.ndarray]]:
    """All tensors of a single file, or of every shard listed by an index (each shard read once), lazily.
    ``index_key``: the name a shard file uses for an index entry (TF shards drop the model name)."""
    if not main.name.endswith(".index.json"):
        yield from read_file(main)
        return
    weight_map = {index_key(k): v for k, v in shard_files(main).items()}
    seen = set()
    shards = sorted(set(weight_map.values()))
    for shard in shards:  # check all shards exist before reading any
        if not (main.parent / shard).is_file():
            raise FileNotFoundError(f"{main}: shard {shard!r} is missing from {str(main.parent)!r}")
    for shard in shards:
        path = main.parent / shard
        for name, array in read_file(path):
            if weight_map.get(name) != shard:
                raise CheckpointError(f"{path}: tensor {name!r} is not listed for this shard in {main.name}")
            seen.add(name)
            yield name, array
    absent = sorted(set(weight_map) - seen)
    if absent:
        raise CheckpointError(f"{main}: tensor {absent[0]!r} is listed in the index but not in its shard")


def shard_pattern(filename: str) -> re.Pattern:
    """Names of this format's shards: transformers' ``<stem>-0000k-of-0000n.<ext>``, or with the tag this writer
    adds when those names are taken (``<stem>-0000k-of-0000n-<6 hex>.<ext>``)."""
    stem, ext = filename.rsplit(".", 1)
    return re.compile(rf"^{re.escape(stem)}-\d{{5}}-of-\d{{5}}(-[0-9a-f]{{6}})?\.{re.escape(ext)}$")


def weight_files(folder: Path, filenames: tuple[str, ...]) -> list[Path]:
    """This format's weight files in ``folder``, in an order that removes them safely one by one: the single file,
    the index, then the shards (those the index lists, and any named as shards)."""
    single = folder / filenames[0]
    found = [single] if single.is_file() else []
    if len(filenames) < 2:
        return found
    listed: set[str] = set()
    index = folder / filenames[1]
    if index.is_file():
        found.append(index)
        with contextlib.suppress(CheckpointError):
            # only names with this format's extension: a hostile index must not list config.json for removal
            ext = "." + filenames[0].rsplit(".", 1)[1]
            listed = {name for name in shard_files(index).values() if name.endswith(ext)}
    pattern = shard_pattern(filenames[0])
    for path in sorted(folder.iterdir()):
        if path not in found and path.is_file() and (path.name in listed or pattern.match(path.name)):
            found.append(path)
    return found


def _shard_names(folder: Path, filename: str, n: int) -> list[str]:
    """Names for n new shards that no file in ``folder`` has: transformers' standard ones when all are free, else
    the same with a short tag. The old shards then stay intact until the new index replaces the old one."""
    stem, ext = filename.rsplit(".", 1)
    names = [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)]
    while any((folder / name).exists() for name in names):
        tag = secrets.token_hex(3)
        names = [f"{stem}-{i:05d}-of-{n:05d}-{tag}.{ext}" for i in range(1, n + 1)]
    return names


def write(state: dict[str, np.ndarray], stage: files.FolderWrite, filename: str, write_file: WriteFile,
          max_shard_size: int | str | None, progress: Callable[[int], None] | None = None,
          index_name: Callable[[str], str] = lambda n: n,
          errors: tuple[type[BaseException], ...] = ()) -> list[Path]:
    """Stage one file, or shards of at most ``max_shard_size`` bytes plus an index, in ``stage`` (the caller
    commits: new shards first, under fresh names, then the index, whose rename is what switches the folder to
    them; old files go after). ``write_file(part, path)`` writes ``path``; ``errors``: its exception types for a
    failed write (reported as an OSError naming the file). ``index_name``: the index's name for a tensor (TF
    indexes put the model name first)."""
    folder = stage.folder
    limit = parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in state.items():
        if limit is not None and shards[-1] and size + array.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        paths = [folder / filename]
        with stage.path(paths[0], errors) as tmp:
            write_file(state, tmp)
        if progress is not None:
            progress(sum(a.nbytes for a in state.values()))
        return paths
    paths, weight_map = [], {}
    for shard, name in zip(shards, _shard_names(folder, filename, len(shards))):
        path = folder / name
        with stage.path(path, errors) as tmp:
            write_file(shard, tmp)
        if progress is not None:
            progress(sum(a.nbytes for a in shard.values()))
        paths.append(path)
        weight_map.update({index_name(key): name for key in shard})
    index = {"metadata": {"total_size": int(sum(a.nbytes for a in state.values()))}, "weight_map": weight_map}
    paths.append(folder / f"{filename}.index.json")
    stage.write_text(paths[-1], json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths
