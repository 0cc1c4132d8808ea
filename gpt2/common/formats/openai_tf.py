"""OpenAI's original GPT-2 checkpoint (``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001``), read without TF.

The two files are a TensorFlow *tensor bundle* (TF's tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc,proto}):

- ``<prefix>.index`` is an SSTable, LevelDB's table format (leveldb doc/table_format.md; TF keeps its own copy in
  tsl/lib/io/table*). The file ends with a 48-byte footer: two BlockHandles (varint offset, varint size; the
  metaindex, unused here, then the index), zero padding, and the magic 0xdb4775248b80fb57 (little-endian). The index
  block maps separator keys to the BlockHandles of the data blocks. Every block is followed by a 1-byte compression
  type (0: none; TF writes bundles uncompressed) and a masked crc32c of the block plus that byte. Inside a block,
  entries are prefix-compressed: varint shared, varint non_shared, varint value_length, key suffix, value; the block
  ends with uint32 restart offsets and their uint32 count (restarts only speed up seeks; a full scan skips them).
- In that table the empty key holds a BundleHeaderProto (num_shards = 1, endianness = 2) and every other key is a
  tensor name whose value is a BundleEntryProto: dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5,
  crc32c = 6 (fixed32, masked), slices = 7. Protobuf wire format is decoded by hand: it is a few lines.
- The bytes of a tensor are ``<prefix>.data-<shard:05d>-of-<num_shards:05d>`` at [offset, offset + size), raw
  little-endian in C order. Strings are varint lengths, a 4-byte masked crc32c of the lengths, then the bytes.

Every checksum is checked (a corrupt 500 MB download must not load as garbage weights): crc32c is computed by
numpy over thousands of lanes at once (see ``_crc32c``), a few hundred MB/s.

>>> arrays = read_bundle(find_prefix("models/124M"))   # {"model/wte": array(50257, 768), ...}
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
from pathlib import Path

import ml_dtypes
import numpy as np

from .canonical import CheckpointError, Lazy, from_format

FORMAT = "openai"
FILENAMES = ("model.ckpt.index",)  # the name OpenAI's download uses; find() accepts any prefix

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
_STRING = 7
# tensorflow/core/framework/types.proto: DataType -> numpy dtype (the file is little-endian)
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 7: object, 8: "<c8", 9: "<i8", 10: "?",
           14: ml_dtypes.bfloat16, 17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8"}


class BundleError(CheckpointError):
    """A tensor bundle that cannot be read: truncated, corrupt, or using a feature this reader does not support."""


# -- crc32c (Castagnoli), vectorized ---------------------------------------------------------------------------------
_POLY = 0x82F63B78  # reflected
_BITS = np.arange(32, dtype=np.uint32)


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _byte_table()
_TABLE_LIST = _TABLE.tolist()


def _linear(images: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apply the GF(2)-linear map on 32-bit registers given by the images of the 32 bits to each value of ``v``."""
    bits = (v[:, None] >> _BITS) & 1
    return np.bitwise_xor.reduce(np.where(bits, images, np.uint32(0)), axis=1).astype(np.uint32)


@functools.lru_cache(maxsize=None)
def _zeros(n: int) -> np.ndarray:
    """Images of the 32 basis registers after n zero bytes (a CRC register update is linear in the register)."""
    if n == 1:
        basis = np.uint32(1) << _BITS
        return _TABLE[basis & 0xFF] ^ (basis >> 8)
    half = _zeros(n // 2)
    twice = _linear(half, half)
    return _linear(_zeros(1), twice) if n % 2 else twice


@functools.lru_cache(maxsize=8)
def _step(lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """16-bit lookup tables (low half, high half) of "advance the register by 4 * lanes zero bytes"."""
    images, half = _zeros(4 * lanes), np.arange(1 << 16, dtype=np.uint32)
    return _linear(images, half), _linear(images, half << 16)


def _crc_raw(data: np.ndarray, reg: int) -> int:
    """The CRC register after ``data`` (uint8) starting from ``reg`` (no final xor).

    Cut the data into rows of ``lanes`` words; lane i holds words i, i + lanes, ... Horner's rule per lane (r <- shift
    by one row of zeros, then xor the word) runs as numpy ops across all lanes; the CRC of the data is then the raw
    CRC of the lane registers read as a message. Leading zero bytes do not change a raw CRC from register 0, so the
    data is zero-padded in front, and the starting register is folded into the first 4 data bytes.
    """
    n = data.size
    if n < 1024:
        for byte in data.tobytes():
            reg = _TABLE_LIST[(reg ^ byte) & 0xFF] ^ (reg >> 8)
        return reg
    lanes = 1 << min(16, (n // 1024).bit_length() - 1)  # >= 256 words per lane
    rows = -(-n // (4 * lanes))
    buf = np.zeros(rows * lanes * 4, np.uint8)
    buf[-n:] = data
    buf[buf.size - n:buf.size - n + 4] ^= np.frombuffer(reg.to_bytes(4, "little"), np.uint8)
    lo, hi = _step(lanes)
    r = np.zeros(lanes, np.uint32)
    for word in buf.view("<u4").reshape(rows, lanes):
        r = lo[r & 0xFFFF] ^ hi[r >> 16] ^ word
    return _crc_raw(r.astype("<u4").view(np.uint8), 0)


def _crc32c(data: np.ndarray | bytes, chunk: int = 1 << 26) -> int:
    data = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data.reshape(-1).view(np.uint8)
    reg = 0xFFFFFFFF
    for start in range(0, data.size, chunk):  # chunks bound the padded copy
        reg = _crc_raw(data[start:start + chunk], reg)
    return reg ^ 0xFFFFFFFF


def _unmask(crc: int) -> int:
    """LevelDB/TF store rot15(crc) + 0xa282ead8 so that a CRC of data containing CRCs stays well mixed."""
    rot = (crc - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# -- protobuf wire format --------------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while shift < 70:
        if pos >= len(buf):
            break
        byte = buf[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
    raise BundleError(f"{where}: truncated or malformed varint")


def _proto(buf: bytes, where: str) -> dict[int, list]:
    """Field number -> values (int for varint/fixed, bytes for length-delimited), in order."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 2:
            size, pos = _varint(buf, pos, where)
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        else:
            raise BundleError(f"{where}: malformed protobuf (wire type {wire})")
        if pos > len(buf):
            raise BundleError(f"{where}: truncated protobuf")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def _field(fields: dict, number: int, kind: type, where: str, default=0):
    value = fields.get(number, [default])[-1]  # protobuf: the last occurrence wins
    if not isinstance(value, kind):
        raise BundleError(f"{where}: malformed protobuf (field {number})")
    return value


# -- SSTable ---------------------------------------------------------------------------------------------------------
def _handle(buf: bytes, pos: int, where: str) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos, where)
    size, pos = _varint(buf, pos, where)
    return (offset, size), pos


def _block(data: bytes, handle: tuple[int, int], where: str) -> bytes:
    offset, size = handle
    if offset + size + 5 > len(data):
        raise BundleError(f"{where}: block [{offset}, {offset + size + 5}) past the end of the file "
                          f"({len(data)} bytes; truncated?)")
    kind, crc = data[offset + size], int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    if _crc32c(data[offset:offset + size + 1]) != _unmask(crc):
        raise BundleError(f"{where}: checksum mismatch in the block at offset {offset} (corrupt file)")
    if kind != 0:
        raise BundleError(f"{where}: compressed block (type {kind}); only uncompressed tables are supported")
    return data[offset:offset + size]


def _entries(block: bytes, where: str):
    """(key, value) of each entry of a block, in order."""
    end = len(block) - 4 * (int.from_bytes(block[-4:], "little") + 1)  # entries, then uint32 restarts and count
    if len(block) < 4 or end < 0:
        raise BundleError(f"{where}: malformed block (restart array)")
    key, pos = b"", 0
    while pos < end:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        size, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + size > end:
            raise BundleError(f"{where}: malformed block entry at {pos}")
        key, pos = key[:shared] + block[pos:pos + unshared], pos + unshared
        yield key, block[pos:pos + size]
        pos += size


def _table(path: Path) -> dict[bytes, bytes]:
    data, where = path.read_bytes(), str(path)
    if len(data) < _FOOTER or int.from_bytes(data[-8:], "little") != _MAGIC:
        raise BundleError(f"{where}: not a TensorFlow bundle index (no table footer magic; truncated?)")
    _metaindex, pos = _handle(data[-_FOOTER:], 0, where)
    index, _ = _handle(data[-_FOOTER:], pos, where)
    table = {}
    for _, value in _entries(_block(data, index, where), where):
        table.update(_entries(_block(data, _handle(value, 0, where)[0], where), where))
    return table


# -- the bundle ------------------------------------------------------------------------------------------------------
def find_prefix(folder) -> Path | None:
    """The checkpoint prefix in ``folder`` (``folder/model.ckpt``); None when the folder holds no bundle.

    The ``checkpoint`` text file names it (``model_checkpoint_path: "model.ckpt"``, relative to the folder or
    absolute; a stale absolute path falls back to its name in this folder); without one, the single ``*.index``.
    """
    folder = Path(folder)
    state = folder / "checkpoint"
    if state.is_file():
        match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
        if match:
            named = folder / re.sub(r"\\(.)", r"\1", match.group(1))  # text-format escapes: \" and \\ in practice
            for prefix in (named, folder / named.name):
                if Path(f"{prefix}.index").is_file():
                    return prefix
    indexes = sorted(p for p in folder.glob("*.index") if p.is_file())
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise BundleError(f"{folder}: several bundles ({names}) and no `checkpoint` file naming one of them")
    return indexes[0].with_suffix("") if indexes else None


def _shape(buf: bytes, where: str) -> tuple[int, ...]:
    """TensorShapeProto: repeated dim = 2 (each a message with size = 1); unknown_rank = 3."""
    fields = _proto(buf, where)
    if _field(fields, 3, int, where):
        raise BundleError(f"{where}: shape of unknown rank")
    dims = tuple(_field(_proto(dim, where), 1, int, where) for dim in fields.get(2, []))
    if any(d >= 1 << 62 for d in dims):  # int64 -1 (unknown) arrives as 2**64 - 1
        raise BundleError(f"{where}: shape {dims} has an unknown or absurd dimension")
    return dims


def _strings(raw: bytes, count: int, where: str) -> tuple[np.ndarray, bytes]:
    """A string tensor's bytes -> (object array of bytes, the bytes its crc32c covers)."""
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = _varint(raw, pos, where)
        lengths.append(length)
    body = pos + 4  # after the lengths' checksum
    if body + sum(lengths) != len(raw):
        raise BundleError(f"{where}: string lengths do not add up to the entry size")
    # TF checksums the lengths as little-endian uint32 (uint64 past 4 GiB), then the 4 checksum bytes and the strings
    covered = b"".join(n.to_bytes(4 if n < 1 << 32 else 8, "little") for n in lengths) + raw[pos:]
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i], body = raw[body:body + length], body + length
    return out, covered


def _entry(value: bytes, name: str, index: Path, shards: list[tuple[Path, object, int]]) -> Lazy:
    """A tensor's entry, checked against its data file, as a Lazy: nothing is read until ``load()``."""
    where = f"{index}: tensor {name!r}"
    fields = _proto(value, where)
    if fields.get(7):
        raise BundleError(f"{where} is saved in slices (a partitioned variable); not supported")
    code = _field(fields, 1, int, where)
    if code not in _DTYPES:
        raise BundleError(f"{where}: unsupported dtype (DataType enum {code})")
    dtype = np.dtype(_DTYPES[code])
    shape = _shape(_field(fields, 2, bytes, where, b""), where)
    shard, offset, size = (_field(fields, i, int, where) for i in (3, 4, 5))
    if shard >= len(shards):
        raise BundleError(f"{where}: shard {shard} but the bundle has {len(shards)}")
    path, file, file_size = shards[shard]
    where = f"{path}: tensor {name!r}"
    if offset + size > file_size:
        raise BundleError(f"{where}: bytes [{offset}, {offset + size}) past the end of the file ({file_size} bytes)")
    count = math.prod(shape)
    if code != _STRING and size != count * dtype.itemsize:
        raise BundleError(f"{where}: {size} bytes for shape {shape} of {dtype} ({count * dtype.itemsize} expected)")

    def load() -> np.ndarray:
        data = np.empty(size, np.uint8)  # owned and writable; C order as written
        file.seek(offset)
        if file.readinto(data) != size:
            raise BundleError(f"{where}: short read")
        if code == _STRING:
            array, covered = _strings(data.tobytes(), count, where)
        else:
            array, covered = data.view(dtype), data
        if _crc32c(covered) != _unmask(_field(fields, 6, int, where)):
            raise BundleError(f"{where}: checksum mismatch (corrupt data file)")
        return array.reshape(shape)

    return Lazy(shape, dtype, load)


def iter_bundle(prefix):
    """Each tensor of the bundle at ``prefix`` as (TF name, Lazy), lazily: every entry is checked against its data
    file (bounds, size for its shape and dtype) as it comes, its bytes read (and checksummed) only by ``load()``, so
    a reader can refuse a tensor it has no use for (an optimizer slot, a wrong shape) without reading it.

    FileNotFoundError for a missing index or data file; BundleError (naming the file and tensor) for anything
    truncated, corrupt or unsupported.
    """
    index = Path(f"{prefix}.index")
    if not index.is_file():
        raise FileNotFoundError(errno.ENOENT, "no TensorFlow bundle index", str(index))
    table = _table(index)
    if b"" not in table:
        raise BundleError(f"{index}: no bundle header (the entry with the empty key)")
    header = _proto(table.pop(b""), f"{index}: header")
    if _field(header, 2, int, str(index)) != 0:
        raise BundleError(f"{index}: big-endian bundle; only little-endian bundles are supported")
    num_shards = _field(header, 1, int, str(index))
    if not 1 <= num_shards < 1 << 20:
        raise BundleError(f"{index}: header says {num_shards} shards")
    shards = []
    try:
        for i in range(num_shards):
            path = Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}")
            if not path.is_file():
                raise FileNotFoundError(errno.ENOENT, "no TensorFlow bundle data file", str(path))
            file = open(path, "rb")
            shards.append((path, file, os.fstat(file.fileno()).st_size))
        for key, value in table.items():
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise BundleError(f"{index}: tensor name {key!r} is not UTF-8") from None
            yield name, _entry(value, name, index, shards)
    finally:
        for _, file, _ in shards:
            file.close()


def read_bundle(prefix) -> dict[str, np.ndarray]:
    """Every tensor of the bundle at ``prefix`` (``.../model.ckpt``): TF name -> array, TF's dtype and shape.

    FileNotFoundError for a missing index or data file; BundleError (naming the file and tensor) for anything
    truncated, corrupt or unsupported. All checksums are verified.
    """
    return {name: lazy.load() for name, lazy in iter_bundle(prefix)}


# -- the table of names ----------------------------------------------------------------------------------------------
_TOP = {"transformer.wte.weight": "model/wte", "transformer.wpe.weight": "model/wpe",
        "transformer.ln_f.weight": "model/ln_f/g", "transformer.ln_f.bias": "model/ln_f/b"}
_LAYER = re.compile(r"transformer\.h\.(0|[1-9]\d*)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
                    r"\.(weight|bias)")


def key_of(name: str) -> tuple[str, str] | None:
    """Canonical name -> (OpenAI's name, layout op), or None where OpenAI's checkpoint has no such tensor.

    OpenAI's names follow gpt-2/src/model.py: LayerNorm g/b, conv1d w/b with w stored as [1, in, out] ("openai_conv").
    """
    if name in _TOP:
        return _TOP[name], "copy"
    match = _LAYER.fullmatch(name)
    if match is None:
        return None
    layer, module, param = match.groups()
    scope = f"model/h{layer}/{module.replace('.', '/')}"
    if module.startswith("ln_"):
        return f"{scope}/{'g' if param == 'weight' else 'b'}", "copy"
    return (f"{scope}/w", "openai_conv") if param == "weight" else (f"{scope}/b", "copy")


# -- the format interface (see gpt2/common/formats/__init__.py) -----------------------------------------------------
def find(folder: Path) -> Path | None:
    """The bundle's ``.index`` file in ``folder``, or None."""
    prefix = find_prefix(folder)
    return Path(f"{prefix}.index") if prefix is not None else None


def read(main: Path, config, progress=None) -> dict[str, np.ndarray]:
    raw = iter_bundle(Path(str(main)[: -len(".index")]))
    return from_format(raw, key_of, config, str(main), progress=progress)
