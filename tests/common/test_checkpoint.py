"""Every format's reader and writer, on canonical states built here (framework-free, plus PyTorch for .bin)."""

import json
import os
import warnings

import ml_dtypes
import numpy as np
import pytest

from conftest import TINY, has
from gpt2.common import checkpoint as ckpt
from gpt2.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.demo import random_state

FORMATS = [f for f in ckpt.WRITABLE_FORMATS if f != "pytorch" or has("torch")]
HEAD_SETS = [(), ("score",), ("classifier",), ("qa_outputs",), ("multiple_choice_head",)]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("heads", HEAD_SETS, ids=lambda h: "+".join(h) or "trunk")
def test_round_trip_every_head(fmt, heads, tmp_path):
    config = GPT2Config(**TINY, num_labels=3 if heads != ("multiple_choice_head",) else 1)
    state = random_state(config, heads=heads)
    save_checkpoint(state, tmp_path, config, format=fmt)
    back, config2 = load_checkpoint(tmp_path)
    assert_same(state, back)
    assert config2.architectures == [ckpt.architecture_of(state, config)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_cross_attention_untied_and_dtypes(fmt, tmp_path):
    config = GPT2Config(**TINY, add_cross_attention=True, tie_word_embeddings=fmt == "tf", n_inner=12)
    heads = () if fmt == "tf" else ("lm_head",)
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float32):
        state = {k: v.astype(dtype) for k, v in random_state(config, heads=heads).items()}
        save_checkpoint(state, tmp_path / np.dtype(dtype).name, config, format=fmt)
        back, _ = load_checkpoint(tmp_path / np.dtype(dtype).name)
        if fmt == "tf" and dtype is ml_dtypes.bfloat16:  # HDF5 has no bfloat16: stored as float32, exactly
            back = {k: v.astype(dtype) for k, v in back.items()}
        assert_same(state, back)


def test_tf_refuses_untied_lm_head(tmp_path):
    config = GPT2Config(**TINY, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match="lm_head"):
        save_checkpoint(random_state(config, heads=("lm_head",)), tmp_path, config, format="tf")
    assert not (tmp_path / "tf_model.h5").exists()


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f in ("safetensors", "pytorch")])
def test_sharded(fmt, tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    written = save_checkpoint(state, tmp_path, config, format=fmt, max_shard_size=600)
    index = next(p for p in written if p.name.endswith(".index.json"))
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) > 3 and set(weight_map) == set(state)
    back, _ = load_checkpoint(tmp_path)
    assert_same(state, back)
    # writing unsharded afterwards removes the old shards and index
    save_checkpoint(state, tmp_path, config, format=fmt)
    assert not index.exists() and not any("-of-" in p.name for p in tmp_path.iterdir())
    assert_same(state, load_checkpoint(tmp_path)[0])


def test_sharded_missing_shard_and_unlisted_tensor(tmp_path):
    config = GPT2Config(**TINY)
    written = save_checkpoint(random_state(config), tmp_path, config, max_shard_size="1KB")
    shards = sorted(p for p in written if p.name.startswith("model-"))
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["transformer.wte.weight"] = shards[-1].name  # lie about where a tensor is
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="transformer.wte.weight"):
        load_checkpoint(tmp_path)
    shards[0].unlink()
    with pytest.raises(FileNotFoundError, match=shards[0].name):
        load_checkpoint(tmp_path)


def test_parse_size():
    assert ckpt.parse_size("5GB") == 5 * 10**9 and ckpt.parse_size("2MiB") == 2 * 2**20
    assert ckpt.parse_size(123) == 123 and ckpt.parse_size("10kB") == 10_000
    with pytest.raises(ValueError, match="max_shard_size"):
        ckpt.parse_size("lots")


def test_prefix_absent_and_old_buffers(tmp_path):
    """A bare GPT2Model checkpoint (no ``transformer.`` prefix), with the mask buffers old versions saved."""
    from safetensors.numpy import save_file

    config = GPT2Config(**TINY)
    state = random_state(config)
    bare = {k[len("transformer."):]: v for k, v in state.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 7, 7), dtype=np.float32))
    bare["h.0.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    save_file(bare, str(tmp_path / "model.safetensors"))
    config.save_pretrained(tmp_path)
    assert_same(state, load_checkpoint(tmp_path)[0])


def test_tied_lm_head_dropped_and_warned_when_different(tmp_path):
    from safetensors.numpy import save_file

    config = GPT2Config(**TINY)
    state = random_state(config)
    save_file({**state, "lm_head.weight": state["transformer.wte.weight"]}, str(tmp_path / "model.safetensors"))
    config.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(state, load_checkpoint(tmp_path)[0])
    save_file({**state, "lm_head.weight": state["transformer.wte.weight"] + 1}, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="ties them"):
        assert_same(state, load_checkpoint(tmp_path)[0])


def _write_safetensors(tmp_path, state, config):
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    config.save_pretrained(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensors 'transformer.h.1.mlp.c_fc.bias'"),
    (lambda s: s.update({"transformer.h.0.attn.c_attn.weight": np.zeros((8, 8), np.float32)}),
     r"'transformer.h.0.attn.c_attn.weight' has shape \(8, 8\), the config wants \(8, 24\)"),
    (lambda s: s["transformer.ln_f.weight"].__setitem__(3, np.nan), "'transformer.ln_f.weight' has 1 non-finite"),
    (lambda s: s.update({"transformer.h.5.ln_1.weight": np.ones(8, np.float32)}), "h.5.ln_1.weight"),
    (lambda s: s.update({"transformer.wpe.weight": np.zeros((7, 8), np.int32)}), "dtype int32"),
    (lambda s: s.update({"classifier.weight": np.zeros((2, 8), np.float32)}), "missing tensors 'classifier.bias'"),
])
def test_bad_tensors_named(change, message, tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    change(state)
    _write_safetensors(tmp_path, state, config)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(tmp_path)
    assert "model.safetensors" in str(e.value)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_named(fmt, damage, tmp_path):
    config = GPT2Config(**TINY)
    written = save_checkpoint(random_state(config), tmp_path, config, format=fmt)
    weights = written[0]
    if damage == "truncate":
        _truncate(weights)
    elif damage == "garbage":
        weights.write_bytes(os.urandom(weights.stat().st_size))
    else:
        weights.write_bytes(b"")
    with pytest.raises((CheckpointError, FileNotFoundError)) as e:
        load_checkpoint(tmp_path)
    assert weights.name in str(e.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)
    # an explicit config is enough
    assert len(load_checkpoint(tmp_path / "model.safetensors", config)[0]) == 28


def test_writes_are_atomic(tmp_path, monkeypatch):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path, config)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    import safetensors.numpy

    def partial_then_boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        boom()

    monkeypatch.setattr(safetensors.numpy, "save_file", partial_then_boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(random_state(config, seed=1), tmp_path, config)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_h5_attribute_chunking_for_deep_models(tmp_path):
    """Past 64 KiB, Keras splits weight_names into weight_names0, weight_names1...: write and read them."""
    import h5py

    config = GPT2Config(n_layer=120, n_embd=4, n_head=1, vocab_size=5, n_positions=3)
    state = random_state(config)
    save_checkpoint(state, tmp_path, config, format="tf")
    with h5py.File(tmp_path / "tf_model.h5") as f:
        assert "weight_names" not in f["transformer"].attrs and "weight_names1" in f["transformer"].attrs
    assert_same(state, load_checkpoint(tmp_path)[0])


def test_flax_chunked_arrays(tmp_path, monkeypatch):
    from gpt2.common.formats import flax_msgpack

    monkeypatch.setattr(flax_msgpack, "_MAX_CHUNK", 64)
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path, config, format="flax")
    assert b"__msgpack_chunked_array__" in (tmp_path / "flax_model.msgpack").read_bytes()
    assert_same(state, load_checkpoint(tmp_path)[0])


def test_flax_refuses_foreign_extension_types(tmp_path):
    import msgpack

    config = GPT2Config(**TINY)
    config.save_pretrained(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb({"transformer": msgpack.ExtType(42, b"x")}))
    with pytest.raises(CheckpointError, match="flax_model.msgpack.*extension type 42"):
        load_checkpoint(tmp_path)


@pytest.mark.skipif(not has("torch"), reason="PyTorch is not installed")
def test_pytorch_bin_never_runs_code(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    config = GPT2Config(**TINY)
    config.save_pretrained(tmp_path)
    torch.save({"transformer.wte.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*refused"):
        load_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_format_preference_and_file_paths(tmp_path):
    import shutil

    config = GPT2Config(**TINY)
    # a save leaves one model per folder, so two formats side by side come from elsewhere (a copy, another tool)
    save_checkpoint(random_state(config, seed=1), tmp_path / "flax", config, format="flax")
    save_checkpoint(random_state(config, seed=2), tmp_path, config, format="safetensors")
    shutil.copyfile(tmp_path / "flax" / "flax_model.msgpack", tmp_path / "flax_model.msgpack")
    assert ckpt.detect_format(tmp_path)[0] == "safetensors"
    flax_state, _ = load_checkpoint(tmp_path / "flax_model.msgpack")
    assert_same(flax_state, random_state(config, seed=1))
    with pytest.raises(ValueError, match="format"):
        save_checkpoint(flax_state, tmp_path, config, format="onnx")


def test_save_refuses_bad_state(tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:5]
    with pytest.raises(CheckpointError, match="wte"):
        save_checkpoint(state, tmp_path, config)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_bytes_never_crash_deep_inside(fmt, tmp_path):
    """Random bytes, truncations and bit flips: a CheckpointError naming the file, or (flips inside values that
    stay finite: these formats carry no checksum) a state that still validates. Never another exception."""
    config = GPT2Config(**TINY)
    path = save_checkpoint(random_state(config), tmp_path, config, format=fmt)[0]
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for i in range(60):
        if i < 20:
            data = rng.bytes(len(good))
        elif i < 40:
            data = good[: int(rng.integers(0, len(good)))]
        else:
            data = bytearray(good)
            for _ in range(3):
                data[int(rng.integers(0, len(good)))] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_checkpoint(tmp_path)
        except CheckpointError as e:
            assert path.name in str(e)


def test_any_file_name_by_suffix(tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path, config, format="flax")
    renamed = tmp_path / "finetuned-step-100.msgpack"
    (tmp_path / "flax_model.msgpack").rename(renamed)
    assert_same(load_checkpoint(renamed)[0], state)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a checkpoint file"):
        load_checkpoint(tmp_path / "notes.txt", config)
