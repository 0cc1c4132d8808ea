"""What the two PyTorch-named formats (model.safetensors, pytorch_model.bin) share: names, aliases, sharding.

Their tensor names are the canonical ones (transformers' PyTorch state dict), so ``key_of`` is the identity. A
checkpoint of a bare GPT2Model has no ``transformer.`` prefix; the reader accepts both spellings. Sharded
checkpoints follow transformers: ``<stem>-00001-of-00003<ext>`` files and ``<stem><ext>.index.json`` with a
``weight_map``; the index is written last, so a reader never sees an index pointing at missing shards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import files
from ..checkpoint import HEAD_CLASSES, CheckpointError, parse_size

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
        index = json.loads(index_path.read_text(encoding="utf-8"))
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


def write(state: dict[str, np.ndarray], folder: Path, filename: str, write_file: WriteFile,
          max_shard_size: int | str | None, progress: Callable[[int], None] | None = None,
          index_name: Callable[[str], str] = lambda n: n) -> list[Path]:
    """One file, or shards of at most ``max_shard_size`` bytes plus an index; stale files of the other kind go.
    ``index_name``: the index's name for a tensor (TF indexes put the model name first)."""
    limit = parse_size(max_shard_size)
    stem, ext = filename.rsplit(".", 1)
    stale = re.compile(rf"^{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.{re.escape(ext)}$")
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
        write_file(state, paths[0])
        if progress is not None:
            progress(sum(a.nbytes for a in state.values()))
        index = folder / f"{filename}.index.json"
        index.unlink(missing_ok=True)
    else:
        n = len(shards)
        paths, weight_map = [], {}
        for i, shard in enumerate(shards, 1):
            path = folder / f"{stem}-{i:05d}-of-{n:05d}.{ext}"
            write_file(shard, path)
            if progress is not None:
                progress(sum(a.nbytes for a in shard.values()))
            paths.append(path)
            weight_map.update({index_name(name): path.name for name in shard})
        index = {"metadata": {"total_size": int(sum(a.nbytes for a in state.values()))}, "weight_map": weight_map}
        paths.append(folder / f"{filename}.index.json")
        files.write_text(paths[-1], json.dumps(index, indent=2, sort_keys=True) + "\n")
        (folder / filename).unlink(missing_ok=True)
    keep = {p.name for p in paths}
    for old in folder.iterdir():
        if stale.match(old.name) and old.name not in keep:
            old.unlink()
    return paths
