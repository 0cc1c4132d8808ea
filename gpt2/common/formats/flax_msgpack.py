"""flax_model.msgpack: transformers' Flax parameter tree, read and written with msgpack, no JAX.

The file is flax.serialization's msgpack: nested maps of string keys, arrays as msgpack extension type 1 holding
``(shape, dtype name, C-order bytes)``, arrays over 2**30 bytes split into ``{"__msgpack_chunked_array__": True,
"shape": {...}, "chunks": {"0": ..., "1": ...}}``. transformers' Flax GPT-2 tree: ``transformer/wte/embedding``,
``transformer/h/<i>/ln_1/{scale,bias}``, Conv1D ``kernel`` stored as [out, in] (FlaxConv1D transposes it at call
time: the transpose of the PyTorch Conv1D weight), ``lm_head/kernel`` [in, out] when untied. A bare FlaxGPT2Model
has no ``transformer`` level; both are read. Heads transformers has no Flax class for (score, classifier,
qa_outputs, multiple_choice_head) are written as flax.linen.Dense would hold them: ``kernel`` [in, out], ``bias``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import files
from .canonical import HEAD_CLASSES, CheckpointError, Lazy, from_format, to_format

FORMAT = "flax"
FILENAMES = ("flax_model.msgpack",)
_EXT_NDARRAY, _EXT_NPSCALAR = 1, 3
_CHUNKED = "__msgpack_chunked_array__"
_MAX_CHUNK = 2**30
_LAYER_NORMS = ("ln_1", "ln_2", "ln_cross_attn", "ln_f")


def find(folder: Path) -> Path | None:
    path = folder / FILENAMES[0]
    return path if path.is_file() else None


def key_of(name: str) -> tuple[str, str]:
    parts = name.split(".")
    module, leaf = parts[:-1], parts[-1]
    if leaf == "bias":
        return "/".join(module + ["bias"]), "copy"
    if module[-1] in ("wte", "wpe"):
        return "/".join(module + ["embedding"]), "copy"
    if module[-1] in _LAYER_NORMS:
        return "/".join(module + ["scale"]), "copy"
    # Conv1D kernels are [out, in] in transformers' Flax GPT-2; Dense kernels (heads, lm_head) are [in, out].
    # Both are the transpose of the PyTorch weight: Conv1D's is [in, out], Linear's [out, in].
    return "/".join(module + ["kernel"]), "transpose"


def aliases(key: str):
    yield key
    if key.split("/")[0] not in ("transformer", *HEAD_CLASSES):
        yield "transformer/" + key


def _dtype(name: bytes | str) -> np.dtype:
    name = name.decode() if isinstance(name, bytes) else name
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _decode_ext(code: int, data: bytes):
    import msgpack

    if code not in (_EXT_NDARRAY, _EXT_NPSCALAR):
        raise ValueError(f"unsupported msgpack extension type {code}")
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"array shape {shape!r} is not a list of sizes")
    if not isinstance(buffer, bytes):
        raise ValueError(f"array data is a {type(buffer).__name__}, not bytes")
    dtype = _dtype(dtype_name)
    if dtype.hasobject:
        raise ValueError(f"refusing object dtype {dtype}")
    # the data is a view of bytes already read (np.frombuffer copies nothing): a declared shape that disagrees with
    # the byte count is refused here, a shape that disagrees with the config by from_format.
    if len(buffer) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"array of shape {tuple(shape)} and dtype {dtype} with {len(buffer)} bytes of data")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _encode_ext(obj):
    import msgpack

    if isinstance(obj, np.ndarray):
        data = msgpack.packb((obj.shape, obj.dtype.name, np.ascontiguousarray(obj).tobytes()), use_bin_type=True)
        return msgpack.ExtType(_EXT_NDARRAY, data)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _unique_map(pairs) -> dict:
    """A msgpack map as a dict; a key present twice (a dict would keep the last silently) is refused."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice!r} appears twice in one map; refused as ambiguous")
    return out


def _chunked(tree: dict, prefix: str, path: Path) -> Lazy:
    """A chunked array as a Lazy: its declared shape and its chunks' dtype; the chunks are joined (a copy as large as
    the declared array) only once from_format has checked that shape against the config."""
    try:
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        if not chunks or not all(isinstance(c, np.ndarray) and c.dtype == chunks[0].dtype for c in chunks):
            raise ValueError("chunks are not arrays of one dtype")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or sum(c.size for c in chunks) != math.prod(shape):
            raise ValueError(f"chunks of {sum(c.size for c in chunks)} values for shape {shape}")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: chunked array {prefix!r} is malformed ({e})") from None
    return Lazy(shape, chunks[0].dtype, lambda: np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape))


def _flatten(tree, prefix: str, out: dict, path: Path) -> None:
    if isinstance(tree, dict) and tree.get(_CHUNKED) is True:
        out[prefix] = _chunked(tree, prefix, path)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            # A key holding "/" ("transformer/wte" beside the nested transformer -> wte) would flatten onto another
            # path and silently replace its tensor; flax never writes one.
            if not isinstance(key, str) or "/" in key or not key:
                raise CheckpointError(f"{path}: key {key!r} under {prefix or 'the root'!r} is not a plain name "
                                      "(a non-empty string without '/'); refused as ambiguous")
            name = f"{prefix}/{key}" if prefix else key
            _flatten(value, name, out, path)
    elif isinstance(tree, np.ndarray):
        out[prefix] = tree
    else:
        raise CheckpointError(f"{path}: {prefix!r} is a {type(tree).__name__}, expected an array or a map")


def read_raw(path: Path) -> dict:
    """Every leaf of the tree (an array, or a Lazy for a chunked one), keyed by its '/'-joined path."""
    import msgpack

    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_decode_ext, raw=False, strict_map_key=False,
                               object_pairs_hook=_unique_map)
        out: dict = {}
        _flatten(tree, "", out, path)
    except (RecursionError, msgpack.StackError):  # msgpack's C unpacker stops at 1024 levels, _flatten sooner
        raise CheckpointError(f"{path}: maps nested too deeply for a parameter tree") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable Flax msgpack file ({type(e).__name__}: {e})") from None
    return out


def read(main: Path, config, progress=None) -> dict[str, np.ndarray]:
    return from_format(read_raw(main).items(), key_of, config, str(main), aliases, progress)


def _chunk(array: np.ndarray):
    if array.nbytes <= _MAX_CHUNK:
        return array
    step = max(1, _MAX_CHUNK // array.dtype.itemsize)
    flat = array.reshape(-1)
    chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
    return {_CHUNKED: True, "shape": {str(i): d for i, d in enumerate(array.shape)},
            "chunks": {str(i): c for i, c in enumerate(chunks)}}


def write(state, stage: files.FolderWrite, config, *, max_shard_size=None, progress=None) -> list[Path]:
    """Stream the tree into the file, one tensor at a time (the whole file is never held in memory), atomically."""
    import msgpack

    if max_shard_size is not None:
        raise ValueError("flax_model.msgpack is written as one file; max_shard_size applies to safetensors and pytorch")
    path = stage.folder / FILENAMES[0]
    tree: dict = {}
    for key, make in to_format(state, key_of, str(path), lazy=True).items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = make  # converted (transposed) only when written
    packer = msgpack.Packer(default=_encode_ext, use_bin_type=True)
    with stage.path(path) as tmp, open(tmp, "wb") as f:
        def emit(node) -> None:  # the same bytes msgpack.packb(tree) gives: map header, then key, value, ...
            if callable(node):
                array = node()
                emit(_chunk(array))
                if progress is not None:
                    progress(array.nbytes)
            elif isinstance(node, dict):
                f.write(packer.pack_map_header(len(node)))
                for key, value in node.items():
                    f.write(packer.pack(key))
                    emit(value)
            else:
                f.write(packer.pack(node))

        emit(tree)
    return [path]
