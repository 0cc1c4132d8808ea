"""A save into a folder never loses data or yields a wrong model: kills at every step, full disks, permissions,
other formats' leftovers, temporary files of killed saves (docs/checkpoints.md, "What a save guarantees")."""

import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from conftest import TINY, has
from gpt2.common import files
from gpt2.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.demo import random_state

OLD_CONFIG = GPT2Config(**TINY, layer_norm_epsilon=1e-5)
NEW_CONFIG = GPT2Config(**TINY, layer_norm_epsilon=1e-3)  # same shapes: only a consistent pair tells them apart
OLD, NEW = random_state(OLD_CONFIG, seed=1), random_state(NEW_CONFIG, seed=2)


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after the kill point runs (cleanup handlers aside)."""


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def which(state):
    return "old" if same(state, OLD) else "new" if same(state, NEW) else "mix"


def which_config(config):
    return {OLD_CONFIG.layer_norm_epsilon: "old", NEW_CONFIG.layer_norm_epsilon: "new"}[config.layer_norm_epsilon]


def save(folder, state, config, fmt, shards):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_checkpoint(state, folder, config, format=fmt, max_shard_size=1500 if shards else None)


def kill_at(monkeypatch, n):
    """Raise Killed at the n-th step of a save: each file written, each rename, each removal."""
    count = [0]

    def step():
        count[0] += 1
        if count[0] == n:
            raise Killed

    real_replace, real_unlink, real_link = os.replace, pathlib.Path.unlink, os.link

    def replace(a, b, *args, **kwargs):
        step()
        return real_replace(a, b, *args, **kwargs)

    def unlink(self, *args, **kwargs):
        if not files._TEMP.match(self.name):  # removing one's own temporary files is cleanup, not a step
            step()
        return real_unlink(self, *args, **kwargs)

    def link(a, b, *args, **kwargs):
        step()
        return real_link(a, b, *args, **kwargs)

    real_staged = files._staged

    def staged(path, errors):
        step()
        return real_staged(path, errors)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(files, "_staged", staged)
    return count


TRANSITIONS = [  # (old format, old sharded, new format, new sharded)
    ("safetensors", True, "safetensors", True),  # same shard count: the new shards need other names
    ("safetensors", False, "safetensors", True),
    ("safetensors", True, "safetensors", False),
    ("safetensors", True, "tf", True),  # the new format loses the format order until the old one is gone
    ("flax", False, "safetensors", True),  # the new format wins the order at once
    ("tf", False, "flax", False),
]
if has("torch"):
    TRANSITIONS += [("pytorch", True, "safetensors", False), ("safetensors", False, "pytorch", True)]


@pytest.mark.parametrize("transition", TRANSITIONS, ids=lambda t: f"{t[0]}{'-sharded' * t[1]}->{t[2]}"
                                                                   f"{'-sharded' * t[3]}")
def test_killed_at_every_step_loads_old_new_or_refuses(transition, tmp_path, monkeypatch):
    old_fmt, old_sharded, new_fmt, new_sharded = transition
    n, outcomes = 0, set()
    while True:
        n += 1
        folder = tmp_path / str(n)
        save(folder, OLD, OLD_CONFIG, old_fmt, old_sharded)
        with monkeypatch.context() as m:
            count = kill_at(m, n)
            try:
                save(folder, NEW, NEW_CONFIG, new_fmt, new_sharded)
                finished = True
            except Killed:
                finished = False
        if finished:
            assert count[0] < n
            assert which(load_checkpoint(folder)[0]) == "new" and which_config(load_checkpoint(folder)[1]) == "new"
            assert not any(p.name.startswith(".") for p in folder.iterdir())
            break
        try:
            state, config = load_checkpoint(folder)
            outcome = which(state)
            assert outcome == which_config(config) != "mix", f"killed at step {n}"
        except CheckpointError as e:
            assert "an interrupted save left this folder inconsistent" in str(e) and files.SAVE_MARKER in str(e)
            outcome = "refused"
            # what a reader that knows nothing of the marker (transformers) sees: one save's weights, never a mix
            os.rename(folder / files.SAVE_MARKER, tmp_path / "marker")
            assert which(load_checkpoint(folder)[0]) in ("old", "new"), f"killed at step {n}"
            os.rename(tmp_path / "marker", folder / files.SAVE_MARKER)
        outcomes.add(outcome)
        save(folder, NEW, NEW_CONFIG, new_fmt, new_sharded)  # saving again repairs the folder
        assert which(load_checkpoint(folder)[0]) == "new" and which_config(load_checkpoint(folder)[1]) == "new"
        assert not (folder / files.SAVE_MARKER).exists()
    assert "old" in outcomes and "refused" in outcomes and n > 4


def test_a_real_kill_leaves_temporary_files_that_the_next_save_removes(tmp_path):
    """SIGKILL in the middle of writing the second shard: the folder loads the old model; the dead process's
    temporary file is removed by the next save, and a live process's is not."""
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", True)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parents[1])!r})
        import numpy as np
        from gpt2.common.formats import safetensors_format
        from tests.common.test_save_transaction import NEW, NEW_CONFIG
        from gpt2.common.checkpoint import save_checkpoint
        calls = []
        real = safetensors_format._write_file
        def write(state, path):
            calls.append(path)
            real(state, path)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        safetensors_format._write_file = write
        save_checkpoint(NEW, {str(tmp_path)!r}, NEW_CONFIG, max_shard_size=600)
    """)
    root = pathlib.Path(__file__).parents[2]
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = [p for p in tmp_path.iterdir() if files._TEMP.match(p.name)]
    assert len(left) == 2  # the killed save's shards, never renamed
    assert which(load_checkpoint(tmp_path)[0]) == "old" and which_config(load_checkpoint(tmp_path)[1]) == "old"
    live = tmp_path / f".model.safetensors.1.0123abcd.tmp"  # pid 1 runs: a save in progress elsewhere
    live.write_bytes(b"")
    with pytest.warns(UserWarning, match="removed 2 temporary files"):
        written = save_checkpoint(NEW, tmp_path, NEW_CONFIG)
    assert set(left) <= set(written.removed) and not any(p.exists() for p in left) and live.exists()


def test_stale_temporary_file_of_dead_pid(tmp_path):
    pid = subprocess.Popen([sys.executable, "-c", "pass"])
    pid.wait()  # reaped: its pid is free
    dead = tmp_path / f".model.safetensors.{pid.pid}.deadbeef.tmp"
    mine = tmp_path / f".config.json.{os.getpid()}.0badf00d.tmp"
    other = tmp_path / ".notes.txt.tmp"  # not a name this package makes: left alone
    for p in (dead, mine, other):
        p.write_bytes(b"x" * 100)
    assert files.remove_dead_temps(tmp_path) == [dead]
    assert mine.exists() and other.exists() and not dead.exists()


@pytest.mark.parametrize("mask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_new_files_honour_the_umask(mask, mode, tmp_path):
    old = os.umask(mask)
    try:
        save(tmp_path, OLD, OLD_CONFIG, "safetensors", True)
    finally:
        os.umask(old)
    assert files.umask() == old
    for path in tmp_path.iterdir():
        assert oct(path.stat().st_mode & 0o777) == oct(mode), path.name


def test_a_replaced_file_keeps_its_mode(tmp_path):
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", False)
    for name in ("model.safetensors", "config.json"):
        os.chmod(tmp_path / name, 0o600)
    save(tmp_path, NEW, NEW_CONFIG, "safetensors", False)
    for name in ("model.safetensors", "config.json"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o600), name


FULL_DISK = {  # format -> (module attribute to patch, what that writer raises when the disk is full)
    "safetensors": ("safetensors.numpy.save_file",
                    lambda: __import__("safetensors").SafetensorError(
                        "Error while serializing: I/O error: No space left on device (os error 28)")),
    "pytorch": ("torch.save", lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 "
                                                   "vs 534")),
    "tf": ("h5py.File", lambda: OSError(28, "Unable to synchronously create file (file write failed ...)")),
}


@pytest.mark.parametrize("fmt", [f for f in FULL_DISK if f != "pytorch" or has("torch")])
def test_full_disk_is_one_oserror_naming_the_file_and_changes_nothing(fmt, tmp_path, monkeypatch):
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", True)
    before = sorted(p.name for p in tmp_path.iterdir())
    target, error = FULL_DISK[fmt]
    module, name = target.rsplit(".", 1)

    def fail(*args, **kwargs):
        raise error()

    monkeypatch.setattr(__import__(module, fromlist=[name]), name, fail)
    # torch.save's message says nothing of the cause: the free space of the disk does
    monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_bavail": 0, "f_frsize": 4096})())
    with pytest.raises(OSError, match=rf"could not write {re.escape(str(tmp_path))}/(model|pytorch_model|tf_model)-00001-"
                                      r"of-\d{5}(-[0-9a-f]{6})?\.(safetensors|bin|h5): No space left on device( \(.*\))?$") as e:
        save(tmp_path, NEW, NEW_CONFIG, fmt, True)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file, no marker
    assert which(load_checkpoint(tmp_path)[0]) == "old" and which_config(load_checkpoint(tmp_path)[1]) == "old"


def test_full_disk_at_config_json_changes_nothing(tmp_path, monkeypatch):
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", False)
    real = files._new_temp

    def new_temp(path):
        if path.name == "config.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(files, "_new_temp", new_temp)
    with pytest.raises(OSError, match=r"could not write .*config\.json: No space left on device"):
        save(tmp_path, NEW, NEW_CONFIG, "safetensors", True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert which(load_checkpoint(tmp_path)[0]) == "old" and which_config(load_checkpoint(tmp_path)[1]) == "old"


def test_other_formats_are_removed_with_a_warning(tmp_path):
    save(tmp_path, OLD, OLD_CONFIG, "tf", True)
    (tmp_path / "model.ckpt.index").write_bytes(b"")  # OpenAI's files stay: they never win the format order
    with pytest.warns(UserWarning, match=r"removed the weights of other formats.*tf_model\.h5\.index\.json, "
                                         r"tf_model-00001-of-000\d\d\.h5"):
        written = save_checkpoint(NEW, tmp_path, NEW_CONFIG, format="flax")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "flax_model.msgpack", "model.ckpt.index"]
    assert all(p.name.startswith("tf_model") for p in written.removed)
    assert which(load_checkpoint(tmp_path)[0]) == "new"


def test_a_hostile_index_cannot_get_config_json_removed(tmp_path):
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", True)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["transformer.wte.weight"] = "vocab.json"
    index.write_text(json.dumps(data))
    (tmp_path / "vocab.json").write_text("{}")
    save(tmp_path, NEW, NEW_CONFIG, "pytorch" if has("torch") else "flax", False)
    assert (tmp_path / "vocab.json").exists() and not index.exists()


def test_marker_of_a_live_save_refuses_load_and_save(tmp_path):
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", False)
    marker = tmp_path / files.SAVE_MARKER
    marker.write_text(json.dumps({"pid": 1, "host": files.socket.gethostname(), "started": "2024-01-01 00:00:00"}))
    with pytest.raises(CheckpointError, match="a save into this folder is in progress .pid 1"):
        load_checkpoint(tmp_path)
    with pytest.raises(OSError, match="another save .pid 1") as e:
        save(tmp_path, NEW, NEW_CONFIG, "safetensors", False)
    assert e.value.errno == errno.EBUSY
    marker.unlink()
    assert which(load_checkpoint(tmp_path)[0]) == "old"  # the refused save changed nothing
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_interrupted_marker_refuses_a_weights_file_path_and_an_empty_folder(tmp_path):
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", False)
    (tmp_path / files.SAVE_MARKER).write_text("{damaged")
    for target in (tmp_path, tmp_path / "model.safetensors"):
        with pytest.raises(CheckpointError, match="interrupted save"):
            load_checkpoint(target)
    empty = tmp_path / "empty"  # a first save into a new folder, killed before its files were renamed
    empty.mkdir()
    (empty / files.SAVE_MARKER).write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "started": "x"}))
    with pytest.raises(CheckpointError, match="in progress"):  # another machine: whether it runs is unknown
        load_checkpoint(empty)


@pytest.mark.skipif(not (has("transformers") and has("torch")), reason="needs transformers and torch")
def test_transformers_loads_tagged_shards(tmp_path):
    import torch
    from transformers import GPT2LMHeadModel

    save(tmp_path, OLD, OLD_CONFIG, "safetensors", True)
    save(tmp_path, NEW, NEW_CONFIG, "safetensors", True)  # the standard names are taken: tagged ones
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert all(re.fullmatch(r"model-\d{5}-of-\d{5}-[0-9a-f]{6}\.safetensors", name) for name in index["weight_map"].values())
    model = GPT2LMHeadModel.from_pretrained(tmp_path)
    got = {k: v.numpy() for k, v in model.state_dict().items() if k in NEW}
    assert same(got, NEW) and model.config.layer_norm_epsilon == NEW_CONFIG.layer_norm_epsilon
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)


def test_tf_checks_free_space_first(tmp_path, monkeypatch):
    """HDF5 meets a full disk while freeing objects, where h5py cannot raise and then crashes the process (seen on
    a full tmpfs): the h5 writer checks the free space before it starts."""
    save(tmp_path, OLD, OLD_CONFIG, "safetensors", False)
    monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_bavail": 10, "f_frsize": 4096})())
    with pytest.raises(OSError, match=r"could not write .*/tf_model\.h5: No space left on device \(\d+ bytes needed, "
                                      r"40960 free\)"):
        save(tmp_path, NEW, NEW_CONFIG, "tf", False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_convert_copies_the_vocabulary_in_the_same_transaction(tmp_path, monkeypatch):
    """The vocabulary and generation files that convert carries over are staged with the weights: a failure while
    copying them leaves the destination's old model and old vocabulary, and a success brings the new ones."""
    import shutil

    from gpt2.common.convert import convert

    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src, NEW, NEW_CONFIG, "safetensors", False)
    (src / "vocab.json").write_text('{"new": 0}')
    save(dst, OLD, OLD_CONFIG, "safetensors", False)
    (dst / "vocab.json").write_text('{"old": 0}')

    def full_disk(source, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    with monkeypatch.context() as m:
        m.setattr(shutil, "copyfile", full_disk)
        with pytest.raises(OSError, match="No space left"):
            convert(src, dst, to="flax")
    state, config = load_checkpoint(dst)
    assert which(state) == "old" and which_config(config) == "old"
    assert (dst / "vocab.json").read_text() == '{"old": 0}' and not (dst / "flax_model.msgpack").exists()
    with pytest.warns(UserWarning, match="removed the weights of other formats there.*model.safetensors"):
        written = convert(src, dst, to="flax")
    state, config = load_checkpoint(dst)
    assert which(state) == "new" and which_config(config) == "new" and dst / "vocab.json" in written
    assert (dst / "vocab.json").read_text() == '{"new": 0}'


def full_disk_when_staging(monkeypatch, name: str) -> None:
    """Make FolderWrite.write_text fail as a full disk would when it stages the file called ``name``."""
    real_write_text = files.FolderWrite.write_text

    def write_text(self, target, text):
        if pathlib.Path(target).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_write_text(self, target, text)

    monkeypatch.setattr(files.FolderWrite, "write_text", write_text)


@pytest.mark.skipif(not has("torch"), reason="PyTorch is not installed")
def test_a_models_generation_config_is_saved_in_the_same_transaction(tmp_path, monkeypatch):
    """save_pretrained stages generation_config.json with the weights: a failure before the commit leaves the old
    weights, config.json and generation_config.json together."""
    from gpt2.common.generation import GenerationConfig
    from gpt2.torch import GPT2LMHeadModel

    folder = tmp_path / "m"
    old = GPT2LMHeadModel(OLD_CONFIG)
    old.generation_config = GenerationConfig(max_new_tokens=3)
    old.save_pretrained(folder)
    new = GPT2LMHeadModel(NEW_CONFIG)
    new.generation_config = GenerationConfig(max_new_tokens=5)

    with monkeypatch.context() as m:
        full_disk_when_staging(m, "generation_config.json")
        with pytest.raises(OSError, match="No space left"):
            new.save_pretrained(folder)
    again = GPT2LMHeadModel.from_pretrained(folder)
    assert again.config.layer_norm_epsilon == OLD_CONFIG.layer_norm_epsilon
    assert again.generation_config.max_new_tokens == 3
    new.save_pretrained(folder)
    again = GPT2LMHeadModel.from_pretrained(folder)
    assert again.config.layer_norm_epsilon == NEW_CONFIG.layer_norm_epsilon
    assert again.generation_config.max_new_tokens == 5


def test_a_tokenizer_save_is_one_transaction_and_leaves_no_other_tokenizer(tmp_path, monkeypatch):
    """A tokenizer's files are staged and committed together (a failure leaves the earlier tokenizer whole), and an
    earlier save's tokenizer.json / added_tokens.json that this save does not write are removed: transformers' fast
    tokenizer would otherwise load the old tokenizer.json in preference to the new vocabulary."""
    from gpt2 import GPT2Tokenizer, GPT2TokenizerFast

    folder = tmp_path / "tok"
    fast = GPT2TokenizerFast.from_pretrained("gpt2")
    fast.add_tokens(["<old-token>"])
    fast.save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "added_tokens.json").is_file()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    slow = GPT2Tokenizer.from_pretrained("gpt2")
    slow.pad_token = slow.eos_token
    with monkeypatch.context() as m:
        full_disk_when_staging(m, "special_tokens_map.json")  # staged after the others
        with pytest.raises(OSError, match="No space left"):
            slow.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    slow.save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists() and not (folder / "added_tokens.json").exists()
    again = GPT2TokenizerFast.from_pretrained(folder)
    assert "<old-token>" not in again.get_vocab() and again.pad_token == again.eos_token
    if has("transformers"):
        import transformers

        theirs = transformers.GPT2TokenizerFast.from_pretrained(folder)
        assert "<old-token>" not in theirs.get_vocab()
        assert theirs("hello <old-token>")["input_ids"] == slow("hello <old-token>")["input_ids"]
