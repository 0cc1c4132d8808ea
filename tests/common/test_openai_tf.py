"""gpt2.common.formats.openai_tf: a TF-free reader of TensorFlow tensor bundles, checked against TensorFlow itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gpt2.common.formats import openai_tf
from gpt2.common.formats.openai_tf import BundleError, find_prefix, key_of, read_bundle

N_LAYER, N_EMBD, N_VOCAB, N_CTX = 2, 8, 11, 6


def _openai_model(rng) -> dict[str, np.ndarray]:
    """A tiny model with OpenAI's names and shapes (gpt-2/src/model.py)."""
    C = N_EMBD
    arrays = {"model/wte": (N_VOCAB, C), "model/wpe": (N_CTX, C), "model/ln_f/g": (C,), "model/ln_f/b": (C,)}
    for i in range(N_LAYER):
        for scope, (n_in, n_out) in {"attn/c_attn": (C, 3 * C), "attn/c_proj": (C, C),
                                      "mlp/c_fc": (C, 4 * C), "mlp/c_proj": (4 * C, C)}.items():
            arrays[f"model/h{i}/{scope}/w"], arrays[f"model/h{i}/{scope}/b"] = (1, n_in, n_out), (n_out,)
        for ln in ("ln_1", "ln_2"):
            arrays[f"model/h{i}/{ln}/g"] = arrays[f"model/h{i}/{ln}/b"] = (C,)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in arrays.items()}


def _others(rng) -> dict[str, np.ndarray]:
    """Other dtypes and corner shapes, and enough long names that the index spans several blocks."""
    arrays = {
        "x/half": rng.standard_normal((3, 5)).astype(np.float16),
        "x/bfloat16": rng.standard_normal((4, 3)).astype(ml_dtypes.bfloat16),
        "x/int32": rng.integers(-1000, 1000, (2, 3, 4)).astype(np.int32),
        "x/int64": rng.integers(-(2**40), 2**40, 5),
        "x/float64": rng.standard_normal(7),
        "x/uint8": rng.integers(0, 256, 9).astype(np.uint8),
        "x/bool": rng.random(6) > 0.5,
        "x/scalar": np.float32(2.5),
        "x/empty": np.zeros((0, 4), np.float32),
        "x/strings": np.array([b"gpt-2", b"", b"\xff\x00" * 100], dtype=object),
        "x/big": rng.standard_normal((300, 70)).astype(np.float32),  # the vectorized crc32c path
    }
    for i in range(300):  # ~2 KB names: the index is several 256 KiB blocks
        arrays[f"many/{i:03d}/" + "n" * 2000] = np.arange(i % 5, dtype=np.int32)
    return arrays


def _save(tf, prefix, arrays: dict[str, np.ndarray]) -> None:
    names = sorted(arrays)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(arrays[name]) for name in names])


def _tf_read(tf, prefix) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        array = got[name]
        assert (array.dtype, array.shape) == (expected.dtype, expected.shape), name
        assert array.flags.c_contiguous, name
        assert np.array_equal(array, expected), name


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def bundle(tf, tmp_path_factory):
    """(prefix, arrays) of a SaveV2 bundle: the tiny OpenAI model plus the other dtypes."""
    rng = np.random.default_rng(0)
    arrays = {**_openai_model(rng), **_others(rng)}
    prefix = tmp_path_factory.mktemp("bundle") / "model.ckpt"
    _save(tf, prefix, arrays)
    return prefix, arrays


def _copy(bundle, tmp_path):
    prefix, _ = bundle
    for path in prefix.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / prefix.name


# -- reading ---------------------------------------------------------------------------------------------------------
def test_read_bundle_matches_tensorflow(tf, bundle):
    prefix, arrays = bundle
    got = read_bundle(prefix)
    _assert_same(got, _tf_read(tf, prefix))
    _assert_same({k: got[k] for k in ("model/wte", "x/bfloat16", "x/scalar")},
                 {k: np.asarray(arrays[k]) for k in ("model/wte", "x/bfloat16", "x/scalar")})
    assert got["x/bfloat16"].dtype == ml_dtypes.bfloat16 and got["x/scalar"].shape == ()


def test_the_index_spans_several_blocks(bundle):
    data, where = Path(f"{bundle[0]}.index").read_bytes(), "index"
    _, pos = openai_tf._handle(data[-48:], 0, where)
    index, _ = openai_tf._handle(data[-48:], pos, where)
    assert len(list(openai_tf._entries(openai_tf._block(data, index, where), where))) >= 3


def test_saver_checkpoint_with_checkpoint_file(tf, tmp_path):
    """What OpenAI shipped: tf.compat.v1.train.Saver output (checkpoint, .index, .data, .meta)."""
    arrays = _openai_model(np.random.default_rng(1))
    with tf.Graph().as_default():
        variables = [tf.compat.v1.get_variable(name, initializer=value) for name, value in arrays.items()]
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "model.ckpt"))
    prefix = find_prefix(tmp_path)
    assert prefix == tmp_path / "model.ckpt"
    _assert_same(read_bundle(prefix), arrays)


def test_several_shards(tf, tmp_path):
    for i in range(2):
        _save(tf, tmp_path / f"part{i}", {f"x{i}": np.full(3, i, np.float32), f"y{i}": np.arange(4 + i)})
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(tmp_path / "part0"), str(tmp_path / "part1")],
                                  destination_prefix=str(tmp_path / "merged"))
    assert (tmp_path / "merged.data-00001-of-00002").is_file()
    _assert_same(read_bundle(tmp_path / "merged"), _tf_read(tf, tmp_path / "merged"))


def test_crc32c_against_known_values():
    assert openai_tf._crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert openai_tf._crc32c(b"") == 0

    def slow(data: bytes) -> int:
        reg = 0xFFFFFFFF
        for byte in data:
            reg ^= byte
            for _ in range(8):
                reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
        return reg ^ 0xFFFFFFFF

    rng = np.random.default_rng(2)
    for n in (3, 1023, 1024, 4099, 70001):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert openai_tf._crc32c(data) == openai_tf._crc32c(data, chunk=1000) == slow(data.tobytes()), n


def test_the_reader_needs_neither_tensorflow_nor_protobuf():
    code = ("import sys, gpt2.common.formats.openai_tf; "
            "sys.exit(any(m.split('.')[0] in ('tensorflow', 'google') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- find_prefix -----------------------------------------------------------------------------------------------------
def test_find_prefix(bundle, tmp_path):
    prefix = _copy(bundle, tmp_path)
    assert find_prefix(tmp_path) == prefix  # no `checkpoint` file: the single .index
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run1/model.ckpt"\n')
    assert find_prefix(tmp_path) == prefix  # a stale absolute path: its name here
    (tmp_path / "other.index").write_bytes(b"")
    assert find_prefix(tmp_path) == prefix  # `checkpoint` says which
    (tmp_path / "checkpoint").unlink()
    with pytest.raises(BundleError, match="several bundles"):
        find_prefix(tmp_path)
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "x"\n')
    assert find_prefix(tmp_path) == prefix
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    assert find_prefix(tmp_path) == prefix


def test_find_prefix_without_a_bundle(tmp_path):
    assert find_prefix(tmp_path) is None
    (tmp_path / "hparams.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    assert find_prefix(tmp_path) is None
    assert find_prefix(tmp_path / "missing") is None


# -- errors ----------------------------------------------------------------------------------------------------------
def test_missing_files(bundle, tmp_path):
    prefix = _copy(bundle, tmp_path)
    with pytest.raises(FileNotFoundError, match="other.ckpt.index"):
        read_bundle(tmp_path / "other.ckpt")
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    data.unlink()
    with pytest.raises(FileNotFoundError, match="model.ckpt.data-00000-of-00001"):
        read_bundle(prefix)


def test_truncated_data_file_names_the_tensor(bundle, tmp_path):
    prefix = _copy(bundle, tmp_path)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:_entry_fields(prefix, "x/big")[4][-1] + 10])  # cut through x/big
    with pytest.raises(BundleError, match=r"data-00000-of-00001: tensor 'x/big'.*past the end"):
        read_bundle(prefix)


def test_corrupt_data_fails_the_checksum(bundle, tmp_path):
    prefix = _copy(bundle, tmp_path)
    offset = _entry_fields(prefix, "x/big")[4][-1]
    data = bytearray((tmp_path / "model.ckpt.data-00000-of-00001").read_bytes())
    data[offset + 1000] ^= 0x10
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tensor 'x/big': checksum mismatch"):
        read_bundle(prefix)


@pytest.mark.parametrize("cut", [1, 8, 47, 48, 100, 0.5, 0.99])
def test_truncated_index(bundle, tmp_path, cut):
    prefix = _copy(bundle, tmp_path)
    index = tmp_path / "model.ckpt.index"
    data = index.read_bytes()
    index.write_bytes(data[:len(data) - cut] if isinstance(cut, int) else data[:int(len(data) * cut)])
    with pytest.raises(BundleError, match="model.ckpt.index"):
        read_bundle(prefix)


def test_garbled_index_never_crashes(tf, tmp_path):
    """Any flipped byte gives a BundleError naming the index, or (footer padding) the right answer."""
    arrays = _openai_model(np.random.default_rng(3))
    _save(tf, tmp_path / "m", arrays)
    index = tmp_path / "m.index"
    data = index.read_bytes()
    for pos in range(0, len(data), max(1, len(data) // 300)):
        garbled = bytearray(data)
        garbled[pos] ^= 0x41
        index.write_bytes(bytes(garbled))
        try:
            _assert_same(read_bundle(tmp_path / "m"), arrays)
        except BundleError as e:
            assert "m.index" in str(e), pos


# Hand-edited entries, via a minimal SSTable writer and protobuf's "the last occurrence of a field wins".
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _write_table(path, table: dict[bytes, bytes], compression: int = 0) -> None:
    def block(entries) -> bytes:
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart, at 0
        crc = openai_tf._crc32c(body + bytes([compression]))
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        return body + bytes([compression]) + masked.to_bytes(4, "little")

    data = block(sorted(table.items()))
    meta = block([])
    index = block([(max(table), _varint(0) + _varint(len(data) - 5))])
    footer = _varint(len(data)) + _varint(len(meta) - 5) + _varint(len(data) + len(meta)) + _varint(len(index) - 5)
    footer = footer.ljust(40, b"\0") + (0xDB4775248B80FB57).to_bytes(8, "little")
    path.write_bytes(data + meta + index + footer)


def _entry_fields(prefix, name: str) -> dict:
    table = openai_tf._table(Path(f"{prefix}.index"))
    return openai_tf._proto(table[name.encode()], name)


@pytest.mark.parametrize("key, extra, message", [
    ("x/int32", _field(1, 99), "unsupported dtype"),
    ("x/int32", _field(7, b""), "slices"),
    ("x/int32", _field(5, 4), r"bytes for shape \(2, 3, 4\)"),
    ("x/int32", _field(4, 10**12), "past the end"),
    ("x/int32", _field(3, 5), "shard 5"),
    ("x/int32", _field(2, _field(2, _field(1, 2**64 - 1))), "unknown or absurd"),
    ("x/int32", b"\x0f", "wire type"),
    ("x/int32", b"\x08", "truncated"),
    ("", _field(2, 1), "big-endian"),
])
def test_bad_entries(bundle, tmp_path, key, extra, message):
    prefix = _copy(bundle, tmp_path)
    table = openai_tf._table(tmp_path / "model.ckpt.index")
    assert read_bundle(prefix)  # the rewritten index is fine as it is
    table[key.encode()] += extra
    _write_table(tmp_path / "model.ckpt.index", table)
    with pytest.raises(BundleError, match=message) as info:
        read_bundle(prefix)
    assert key in str(info.value) and "model.ckpt" in str(info.value)


def test_compressed_and_headerless_tables(bundle, tmp_path):
    prefix = _copy(bundle, tmp_path)
    table = openai_tf._table(tmp_path / "model.ckpt.index")
    _write_table(tmp_path / "model.ckpt.index", table, compression=1)
    with pytest.raises(BundleError, match="compressed"):
        read_bundle(prefix)
    del table[b""]
    _write_table(tmp_path / "model.ckpt.index", table)
    with pytest.raises(BundleError, match="no bundle header"):
        read_bundle(prefix)


# -- names -----------------------------------------------------------------------------------------------------------
def test_key_of():
    assert key_of("transformer.wte.weight") == ("model/wte", "copy")
    assert key_of("transformer.wpe.weight") == ("model/wpe", "copy")
    assert key_of("transformer.h.3.attn.c_attn.weight") == ("model/h3/attn/c_attn/w", "openai_conv")
    assert key_of("transformer.h.3.attn.c_attn.bias") == ("model/h3/attn/c_attn/b", "copy")
    assert key_of("transformer.h.11.ln_2.weight") == ("model/h11/ln_2/g", "copy")
    assert key_of("transformer.ln_f.bias") == ("model/ln_f/b", "copy")
    for name in ("lm_head.weight", "score.weight", "transformer.h.0.crossattention.c_attn.weight",
                 "transformer.h.0.ln_cross_attn.weight", "transformer.h.0.attn.bias", "wte.weight",
                 "transformer.h.01.ln_1.weight", "transformer.h.0.mlp.c_fc.weight.extra"):
        assert key_of(name) is None, name


def test_key_of_covers_openai_checkpoint_exactly():
    """Every tensor of OpenAI's checkpoint is reached by exactly one canonical trunk name, with the right layout."""
    arrays = _openai_model(np.random.default_rng(4))
    canonical = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
    for i in range(N_LAYER):
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            canonical += [f"transformer.h.{i}.{module}.weight", f"transformer.h.{i}.{module}.bias"]
    keys = [key_of(name) for name in canonical]
    assert sorted(k for k, _ in keys) == sorted(arrays)
    for name, op in keys:
        assert (op == "openai_conv") == (arrays[name].ndim == 3 and arrays[name].shape[0] == 1), name
