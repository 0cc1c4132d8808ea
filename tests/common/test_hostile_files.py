"""Files built to hurt: reading other local files into the weights, small files that allocate gigabytes, byte order,
ambiguous names, nesting that exhausts the stack, unsafe advice. Each must be a named error (or load correctly)."""

import json
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import msgpack
import numpy as np
import pytest

from conftest import TINY, has
from gpt2.common import checkpoint as ckpt
from gpt2.common import files
from gpt2.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpt2.common.config import LIMITS, GPT2Config
from gpt2.demo import random_state

FORMATS = [f for f in ckpt.WRITABLE_FORMATS if f != "pytorch" or has("torch")]
WTE = "tfgpt2lm_head_model/transformer/wte/embeddings:0"  # its name in the tf_model.h5 save_checkpoint writes


def _tf_folder(tmp_path, config=None, **kwargs):
    config = config or GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="tf", **kwargs)
    return tmp_path / "tf_model.h5", config


def _replace_dataset(path: Path, name: str, make) -> None:
    """Delete the dataset ``name`` of the group ``transformer`` and let ``make(group, name)`` put something there."""
    with h5py.File(path, "r+") as f:
        del f["transformer"][name]
        make(f["transformer"], name)


# -- 1. nothing outside the file is ever read ------------------------------------------------------------------------
def _secret(tmp_path) -> tuple[Path, bytes]:
    secret = tmp_path / "secret.bin"
    data = np.arange(11 * 8, dtype=np.float32) + 0.5  # exactly wte's shape: only the link check can stop it
    secret.write_bytes(data.tobytes())
    return secret, data.tobytes()


def _external_storage(tmp_path):
    secret, _ = _secret(tmp_path)
    return lambda g, n: g.create_dataset(n, shape=(11, 8), dtype="<f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])


def _virtual(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.frombuffer(_secret(tmp_path)[1], np.float32).reshape(11, 8)

    def make(g, n):
        layout = h5py.VirtualLayout(shape=(11, 8), dtype="f4")
        layout[...] = h5py.VirtualSource(str(other), "x", shape=(11, 8))
        g.create_virtual_dataset(n, layout)
    return make


def _external_link(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.frombuffer(_secret(tmp_path)[1], np.float32).reshape(11, 8)
    return lambda g, n: g.__setitem__(n, h5py.ExternalLink(str(other), "x"))


def _soft_link(tmp_path):
    # wte becomes an alias of another dataset of the same file; a soft link can name any path
    def make(g, n):
        g["elsewhere"] = np.frombuffer(_secret(tmp_path)[1], np.float32).reshape(11, 8)
        g[n] = h5py.SoftLink(g.name + "/elsewhere")
    return make


@pytest.mark.parametrize("attack, message", [
    (_external_storage, "external file"),
    (_virtual, "virtual dataset"),
    (_external_link, "external link"),
    (_soft_link, "soft link"),
])
def test_h5_never_reads_other_files(attack, message, tmp_path):
    path, _ = _tf_folder(tmp_path)
    secret = _secret(tmp_path)[1]
    _replace_dataset(path, WTE, attack(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"tf_model.h5: weight '{WTE}'.*{message}"):
        state, config = load_checkpoint(tmp_path)  # what `gpt2 convert --to safetensors` does
        save_checkpoint(state, out, config)
    assert not out.exists()
    with h5py.File(tmp_path / "tf_model.h5", "r") as f:  # the attack is real: h5py itself reads the secret
        assert f["transformer"][WTE][...].tobytes() == secret


def test_h5_links_on_the_way_to_a_dataset_are_refused(tmp_path):
    # the weight's path goes through groups (.../transformer/wte/...): a soft link to a group is as bad
    path, _ = _tf_folder(tmp_path)
    with h5py.File(path, "r+") as f:
        group = f["transformer/tfgpt2lm_head_model/transformer"]
        group.move("wte", "wte_real")
        group["wte"] = h5py.SoftLink(group.name + "/wte_real")
    with pytest.raises(CheckpointError, match="soft link \\('wte'\\)"):
        load_checkpoint(tmp_path)


def test_h5_layer_group_must_be_a_hard_link(tmp_path):
    path, _ = _tf_folder(tmp_path)
    other = tmp_path / "other.h5"
    with h5py.File(path, "r") as src, h5py.File(other, "w") as dst:
        src.copy("transformer", dst)
    with h5py.File(path, "r+") as f:
        del f["transformer"]
        f["transformer"] = h5py.ExternalLink(str(other), "transformer")
    with pytest.raises(CheckpointError, match="layer 'transformer' is not a group of this file"):
        load_checkpoint(tmp_path)


def test_h5_sharded_reader_refuses_external_storage(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="tf", max_shard_size=600)
    secret, _ = _secret(tmp_path)
    shard = next(p for p in sorted(tmp_path.glob("tf_model-*.h5")) if "transformer/wte/embeddings:0" in h5py.File(p))
    with h5py.File(shard, "r+") as f:
        del f["transformer/wte/embeddings:0"]
        f.create_dataset("transformer/wte/embeddings:0", shape=(11, 8), dtype="<f4",
                         external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(CheckpointError, match="'transformer/wte/embeddings:0' stores its data in an external file"):
        load_checkpoint(tmp_path)


# -- 2. small files never allocate what the config does not need ----------------------------------------------------
def test_h5_huge_declared_dataset_is_refused_before_reading(tmp_path):
    path, _ = _tf_folder(tmp_path)
    _replace_dataset(path, WTE, lambda g, n: g.create_dataset(n, shape=(2**15, 2**15), dtype="<f4"))  # 4 GiB, unwritten
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match=r"declares \(32768, 32768\) but its data was never written"):
        load_checkpoint(tmp_path)


def test_h5_shape_checked_before_reading(tmp_path, monkeypatch):
    # a written, compressed dataset of the wrong shape (a zip bomb's shape in HDF5): refused without reading it
    path, _ = _tf_folder(tmp_path)
    big = np.zeros((512, 512), np.float32)
    _replace_dataset(path, WTE, lambda g, n: g.create_dataset(n, data=big, compression="gzip", chunks=(256, 256)))
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: (read.append(self.name), real(self, key))[1])
    with pytest.raises(CheckpointError, match=r"tensor 'transformer/wte/embeddings:0' has shape \(512, 512\), "
                                              r"the config wants \(11, 8\)"):
        load_checkpoint(tmp_path)
    assert not any(name.endswith("wte/embeddings:0") for name in read)


@pytest.mark.parametrize("chunks", [None, (11, 4)])
def test_h5_dataset_never_written_is_refused(chunks, tmp_path):
    # the right shape, but no data: HDF5 would hand out the fill value for a dataset of any size
    path, _ = _tf_folder(tmp_path)
    _replace_dataset(path, WTE, lambda g, n: g.create_dataset(n, shape=(11, 8), dtype="<f4", chunks=chunks))
    with pytest.raises(CheckpointError, match=f"'{WTE}'.*never written|'{WTE}'.*unwritten"):
        load_checkpoint(tmp_path)


def test_h5_partly_written_chunked_dataset_is_refused(tmp_path):
    path, _ = _tf_folder(tmp_path)

    def make(g, n):
        d = g.create_dataset(n, shape=(11, 8), dtype="<f4", chunks=(11, 4))
        d[:, :4] = 1.0  # one chunk of two
    _replace_dataset(path, WTE, make)
    with pytest.raises(CheckpointError, match=r"unwritten chunks \(1 of 2 stored\)"):
        load_checkpoint(tmp_path)


def test_h5_compressed_dataset_still_loads(tmp_path):
    path, config = _tf_folder(tmp_path)
    value = np.full((11, 8), 0.25, np.float32)
    _replace_dataset(path, WTE, lambda g, n: g.create_dataset(n, data=value, compression="gzip", chunks=(11, 4)))
    assert np.array_equal(load_checkpoint(tmp_path)[0]["transformer.wte.weight"], value)


@pytest.mark.skipif(not has("torch"), reason="PyTorch is not installed")
def test_pytorch_bin_compressed_record_is_refused(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="pytorch")
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path) as src:
        records = [(i, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:  # the same records, deflated: torch.load reads them all the same
        for info, data in records:
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: record '.*' is compressed"):
        load_checkpoint(tmp_path)


@pytest.mark.skipif(not has("torch"), reason="PyTorch is not installed")
def test_pytorch_bin_larger_than_the_config_allows_is_refused(tmp_path):
    import torch

    config = GPT2Config(**TINY)
    state = {k: torch.from_numpy(v) for k, v in random_state(config).items()}
    state["padding"] = torch.zeros(ckpt.max_file_bytes(config) // 4)  # a stored record past the budget
    torch.save(state, tmp_path / "pytorch_model.bin")
    config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"more than a checkpoint for this config can need \(\d+ bytes"):
        load_checkpoint(tmp_path)


def test_max_file_bytes_is_generous_for_real_models():
    gpt2 = GPT2Config.from_pretrained("gpt2")
    params = sum(int(np.prod(s)) for s in ckpt.trunk_shapes(gpt2).values())
    assert ckpt.max_file_bytes(gpt2) > 8 * params + 12 * 1024 * 1024 * 4  # float64 weights and the old mask buffers


def test_safetensors_header_shapes_checked_before_reading(tmp_path, monkeypatch):
    from safetensors import safe_open

    config = GPT2Config(**TINY)
    state = random_state(config)
    state["transformer.wte.weight"] = np.zeros((12, 8), np.float32)
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    config.save_pretrained(tmp_path)
    read = []
    real = safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, name):
            read.append(name)
            return self.f.get_tensor(name)

    monkeypatch.setattr("safetensors.safe_open", Spy)
    with pytest.raises(CheckpointError, match=r"'transformer.wte.weight' has shape \(12, 8\)"):
        load_checkpoint(tmp_path)
    assert "transformer.wte.weight" not in read


def _msgpack_file(tmp_path, tree, config=None):
    (config or GPT2Config(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))


def _ext(array: np.ndarray, dtype_name=None):
    data = (list(array.shape), dtype_name or array.dtype.name, array.tobytes())
    return msgpack.ExtType(1, msgpack.packb(data, use_bin_type=True))


def test_flax_chunked_array_shape_checked_before_joining(tmp_path, monkeypatch):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="flax")
    tree = msgpack.unpackb((tmp_path / "flax_model.msgpack").read_bytes(), raw=False)
    chunk = np.zeros(8 * 11, np.float32)
    tree["transformer"]["wte"]["embedding"] = {
        "__msgpack_chunked_array__": True, "shape": {"0": 11, "1": 8, "2": 1},
        "chunks": {"0": _ext(chunk[:40]), "1": _ext(chunk[40:])}}
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    joined = []
    monkeypatch.setattr(np, "concatenate", lambda *a, **k: joined.append(1))
    with pytest.raises(CheckpointError, match=r"'transformer/wte/embedding' has shape \(11, 8, 1\)"):
        load_checkpoint(tmp_path)
    assert not joined


# -- 3. byte order ---------------------------------------------------------------------------------------------------
def _big_endian(state):
    return {k: v.astype(v.dtype.newbyteorder(">")) for k, v in state.items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_big_endian_state_round_trips(fmt, tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(_big_endian(state), tmp_path, config, format=fmt)
    back, _ = load_checkpoint(tmp_path)
    for name, array in state.items():
        assert back[name].dtype == np.float32 and back[name].dtype.isnative, name
        assert np.array_equal(back[name], array), name


def test_validate_returns_native_arrays():
    config = GPT2Config(**TINY)
    out = ckpt.validate(_big_endian(random_state(config)), config, "state")
    assert all(a.dtype.isnative for a in out.values())


def test_big_endian_h5_file_loads(tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path, config, format="tf")
    with h5py.File(tmp_path / "tf_model.h5", "r+") as f:  # every dataset rewritten big-endian
        def swap(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[...]
                parent, leaf = obj.parent, name.rsplit("/", 1)[-1]
                del parent[leaf]
                parent.create_dataset(leaf, data=data.astype(">f4"))
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in names:
            swap(n, f[n])
        assert f["transformer"][WTE].dtype == np.dtype(">f4")
    back, _ = load_checkpoint(tmp_path)
    for name, array in state.items():
        assert back[name].dtype.isnative and np.array_equal(back[name], array), name


def test_big_endian_msgpack_file_loads(tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path, config, format="flax")
    tree = msgpack.unpackb((tmp_path / "flax_model.msgpack").read_bytes(), raw=False)

    def swap(node):
        for k, v in node.items():
            if isinstance(v, dict):
                swap(v)
            else:
                shape, _, data = msgpack.unpackb(v.data, raw=False)
                array = np.frombuffer(data, np.float32).astype(">f4")
                node[k] = _ext(array.reshape(shape), ">f4")  # a dtype string numpy reads as big-endian
    swap(tree)
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    back, _ = load_checkpoint(tmp_path)
    for name, array in state.items():
        assert back[name].dtype.isnative and np.array_equal(back[name], array), name


def test_big_endian_bfloat16_is_a_float():
    assert ckpt.is_float_dtype(np.dtype(ml_dtypes.bfloat16).newbyteorder(">"))
    assert not ckpt.is_float_dtype(np.dtype("V2"))
    assert not ckpt.is_float_dtype(np.dtype([("a", "<f2")]))


# -- 4. two names for one tensor -------------------------------------------------------------------------------------
def test_flax_flat_key_beside_the_tree_is_refused(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="flax")
    tree = msgpack.unpackb((tmp_path / "flax_model.msgpack").read_bytes(), raw=False)
    tree["transformer/wte"] = {"embedding": _ext(np.zeros((11, 8), np.float32))}
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    with pytest.raises(CheckpointError, match="key 'transformer/wte' under 'the root'.*ambiguous"):
        load_checkpoint(tmp_path)


def test_flax_duplicate_map_key_is_refused(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="flax")
    data = (tmp_path / "flax_model.msgpack").read_bytes()
    # the root map {"transformer": ...} gets a second "transformer" entry: a dict would keep the last silently
    tree = msgpack.unpackb(data, raw=False)
    packer = msgpack.Packer(use_bin_type=True)
    body = packer.pack("transformer") + packer.pack(tree["transformer"])
    (tmp_path / "flax_model.msgpack").write_bytes(packer.pack_map_header(2) + body + body)
    with pytest.raises(CheckpointError, match="the key 'transformer' appears twice"):
        load_checkpoint(tmp_path)


def test_safetensors_prefixed_and_bare_names_for_one_tensor(tmp_path):
    from safetensors.numpy import save_file

    config = GPT2Config(**TINY)
    state = random_state(config)
    state["h.0.ln_1.weight"] = np.zeros(8, np.float32)  # the GPT2Model spelling of transformer.h.0.ln_1.weight
    save_file(state, str(tmp_path / "model.safetensors"))
    config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"two tensors for 'transformer.h.0.ln_1.weight'"):
        load_checkpoint(tmp_path)


def test_h5_old_and_new_embedding_names_for_one_tensor(tmp_path):
    path, _ = _tf_folder(tmp_path)
    old = WTE.replace("embeddings:0", "weight:0")
    with h5py.File(path, "r+") as f:
        group = f["transformer"]
        group[old] = np.zeros((11, 8), np.float32)
        names = [n.decode() for n in group.attrs["weight_names"]] + [old]
        group.attrs["weight_names"] = np.array([n.encode() for n in names])
    with pytest.raises(CheckpointError, match="two tensors for 'transformer.wte.weight'"):
        load_checkpoint(tmp_path)


def test_h5_weight_listed_twice(tmp_path):
    path, _ = _tf_folder(tmp_path)
    with h5py.File(path, "r+") as f:
        group = f["transformer"]
        group.attrs["weight_names"] = np.array(list(group.attrs["weight_names"]) + [WTE.encode()])
    with pytest.raises(CheckpointError, match="is listed twice"):
        load_checkpoint(tmp_path)


# -- 5. void dtypes and deep nesting ---------------------------------------------------------------------------------
def test_h5_compound_dtype_is_named(tmp_path):
    path, _ = _tf_folder(tmp_path)
    compound = np.zeros((11, 8), dtype=[("re", "<f4"), ("im", "<f4")])
    _replace_dataset(path, WTE, lambda g, n: g.create_dataset(n, data=compound))
    with pytest.raises(CheckpointError, match="tensor 'transformer/wte/embeddings:0' has dtype .*expected a float"):
        load_checkpoint(tmp_path)


def test_msgpack_void_dtype_is_named(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, format="flax")
    tree = msgpack.unpackb((tmp_path / "flax_model.msgpack").read_bytes(), raw=False)
    tree["transformer"]["wte"]["embedding"] = _ext(np.zeros((11, 8), "V4"), "V4")
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    with pytest.raises(CheckpointError, match="'transformer/wte/embedding' has dtype \\|V4, expected a float"):
        load_checkpoint(tmp_path)


def test_validate_names_a_void_state_tensor(tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    state["transformer.ln_f.bias"] = np.zeros(8, "V4")
    with pytest.raises(CheckpointError, match="'transformer.ln_f.bias' has dtype \\|V4"):
        save_checkpoint(state, tmp_path, config)


@pytest.mark.parametrize("depth", [990, 3000])  # under msgpack's own limit (Python recursion), and past it
def test_msgpack_nested_deeply_is_named(depth, tmp_path):
    GPT2Config(**TINY).save_pretrained(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(b"\x81\xa1a" * depth + b"\x80")  # {"a": {"a": ... {}}}
    with pytest.raises(CheckpointError, match="flax_model.msgpack: maps nested too deeply"):
        load_checkpoint(tmp_path)


def _deep_json(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [100, 5000])  # past our limit, and past the interpreter's stack
def test_config_json_nested_deeply_is_named(depth, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "extra": ' + _deep_json(depth) + "}")
    with pytest.raises(ValueError, match=r"config.json: not a valid JSON config file \(nested more than 64"):
        GPT2Config.from_pretrained(tmp_path)


def test_json_of_the_wrong_shape_is_named(tmp_path):
    (tmp_path / "special_tokens_map.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"special_tokens_map.json: not a valid JSON file \(a JSON list, expected a dict"):
        files.read_json(tmp_path / "special_tokens_map.json")
    assert files.read_json(tmp_path / "special_tokens_map.json", expect=list) == [1, 2]


def test_shard_index_nested_deeply_is_named(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config, max_shard_size="1KB")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {}, "metadata": ' + _deep_json(5000) + "}")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not a valid shard index.*nested"):
        load_checkpoint(tmp_path)


def test_hparams_json_nested_deeply_is_named(tmp_path):
    (tmp_path / "hparams.json").write_text(_deep_json(5000))
    with pytest.raises(ValueError, match="hparams.json: not a valid OpenAI hparams.json.*nested"):
        GPT2Config.from_openai_hparams(tmp_path / "hparams.json")


def test_tokenizer_files_nested_deeply_are_named(tmp_path):
    from gpt2 import GPT2Tokenizer
    from gpt2.common.bpe import read_vocab
    from gpt2.common.tokenizer import PACKAGED_VOCAB
    from gpt2.common.tokenizer_json import read_tokenizer_json

    (tmp_path / "vocab.json").write_text(_deep_json(5000))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="vocab.json: not a JSON file"):
        read_vocab(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "tokenizer.json").write_text(_deep_json(5000))
    with pytest.raises(ValueError, match="tokenizer.json: not a JSON file"):
        read_tokenizer_json(tmp_path / "tokenizer.json")
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((PACKAGED_VOCAB / name).read_bytes())
    (folder / "tokenizer_config.json").write_text(_deep_json(5000))
    with pytest.raises(ValueError, match="tokenizer_config.json: not a valid .*nested"):
        GPT2Tokenizer.from_pretrained(folder)


# -- config sizes are bounded before anything is built ---------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("num_labels", 100_000_000), ("vocab_size", 2**40), ("n_positions", 2**30), ("n_embd", 2**20),
    ("n_layer", 10**6), ("n_inner", 2**40),
])
def test_config_sizes_are_bounded(field, value, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", field: value}))
    limit = LIMITS[field]
    with pytest.raises(ValueError, match=f"config.json: GPT2Config: {field}={value} is past the limit of {limit}"):
        GPT2Config.from_pretrained(tmp_path)


def test_label_dicts_are_bounded():
    labels = {str(i): f"L{i}" for i in range(2**16 + 1)}
    with pytest.raises(ValueError, match="num_labels=65537 is past the limit of 65536"):
        GPT2Config(id2label=labels)
    with pytest.raises(ValueError, match="num_labels=65537 is past the limit"):
        GPT2Config(label2id={v: int(k) for k, v in labels.items()})
    assert GPT2Config(num_labels=2**16).num_labels == 2**16
    assert GPT2Config.from_pretrained("gpt2-xl").n_layer == 48  # real models are far inside the limits


# -- 6. messages -----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not has("torch"), reason="PyTorch is not installed")
def test_pickle_refusal_never_suggests_unsafe_loading(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    GPT2Config(**TINY).save_pretrained(tmp_path)
    torch.save({"transformer.wte.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    message = str(e.value)
    assert "objects other than tensors (print)" in message and "refused" in message
    assert "weights_only" not in message and "trust" not in message


def test_openai_folder_without_hparams_names_hparams_json(tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no hparams.json .*model.ckpt"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no hparams.json"):
        GPT2Config.from_pretrained(tmp_path)


def test_openai_bundle_reads_only_what_the_config_uses(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from gpt2.common.formats import openai_tf

    rng = np.random.default_rng(0)
    C, V, T = 8, 11, 6
    arrays = {"model/wte": rng.standard_normal((V, C)).astype(np.float32),
              "model/wpe": rng.standard_normal((T, C)).astype(np.float32),
              "model/ln_f/g": np.ones(C, np.float32), "model/ln_f/b": np.zeros(C, np.float32),
              "model/wte/Adam": rng.standard_normal((V, C)).astype(np.float32)}  # an optimizer slot: never read
    names = sorted(arrays)
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(arrays[n]) for n in names])
    (tmp_path / "hparams.json").write_text(json.dumps({"n_vocab": V, "n_ctx": T, "n_embd": C, "n_head": 2,
                                                       "n_layer": 1}))
    entry = openai_tf._proto(openai_tf._table(tmp_path / "model.ckpt.index")[b"model/wte/Adam"], "x")
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry[4][-1]] ^= 0xFF  # the slot's bytes are damaged: only reading them would notice
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    assert "does not have: 'model/wte/Adam'" in str(e.value) and "checksum" not in str(e.value)
