"""The gpt2 command when things go wrong around it: a reader that leaves, a closed stdout, an empty destination,
weights a dtype cast cannot hold, and every failure as one line ``gpt2: error: ...``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY
from gpt2.cli import main
from gpt2.common.checkpoint import load_checkpoint, save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.common.convert import convert
from gpt2.demo import random_state


@pytest.fixture
def src(tmp_path):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path / "src", config)
    return tmp_path / "src"


def test_a_reader_that_leaves_does_not_change_the_exit_code(src, tmp_path):
    """`gpt2 convert a b --to flax | head -0`: the files are written, so the exit code is 0, with no noise."""
    proc = subprocess.Popen([sys.executable, "-m", "gpt2", "convert", str(src), str(tmp_path / "dst"), "--to", "flax"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the report is written: EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert err == ""  # neither a traceback nor "Exception ignored ... BrokenPipeError" at exit
    assert (tmp_path / "dst" / "flax_model.msgpack").is_file()


def test_a_closed_stdout_does_not_change_the_exit_code(src, tmp_path):
    script = f'"{sys.executable}" -m gpt2 convert "{src}" "{tmp_path / "dst"}" --to tf >&-'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert (tmp_path / "dst" / "tf_model.h5").is_file()


def test_an_unwritable_stdout_in_process(src, tmp_path, monkeypatch):
    class Broken:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Broken())
    assert main(["convert", str(src), str(tmp_path / "dst"), "--to", "safetensors"]) == 0
    assert (tmp_path / "dst" / "model.safetensors").is_file()


@pytest.mark.parametrize("which", ["dst", "src"])
def test_an_empty_path_is_refused_not_the_current_folder(which, src, tmp_path, monkeypatch, capsys):
    """Path("") is "."; an empty destination would write into the current folder (an empty source read it)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    save_checkpoint(random_state(GPT2Config(**TINY)), cwd, GPT2Config(**TINY))  # a model where "." points
    before = sorted(p.name for p in cwd.iterdir())
    monkeypatch.chdir(cwd)
    args = {"src": str(src), "dst": str(tmp_path / "out")} | {which: ""}
    with pytest.raises(ValueError, match=f"the {'destination' if which == 'dst' else 'source'} must be"):
        convert(args["src"], args["dst"], to="tf")
    assert main(["convert", args["src"], args["dst"], "--to", "tf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2: error:") and err.count("\n") == 1
    assert sorted(p.name for p in cwd.iterdir()) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [ValueError("first line\nsecond line"), ConnectionError("no network"),
                                   MemoryError(), RecursionError("maximum recursion depth exceeded"),
                                   ImportError("needs h5py"), PermissionError(13, "Permission denied")])
def test_every_failure_is_one_line(error, src, tmp_path, monkeypatch, capsys):
    import gpt2.common.convert

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(gpt2.common.convert, "convert", fail)
    assert main(["convert", str(src), str(tmp_path / "dst"), "--to", "tf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2: error: ") and err.count("\n") == 1, err
    assert len(err) > len("gpt2: error: \n")


def test_a_genuine_bug_keeps_its_traceback(src, tmp_path, monkeypatch):
    import gpt2.common.convert

    def fail(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(gpt2.common.convert, "convert", fail)
    with pytest.raises(KeyError):
        main(["convert", str(src), str(tmp_path / "dst"), "--to", "tf"])


def _state_with(tmp_path, **values):
    """A tiny checkpoint whose wte holds the given values at its first entries."""
    config = GPT2Config(**TINY)
    state = random_state(config)
    flat = state["transformer.wte.weight"].reshape(-1)
    for i, value in enumerate(values.get("wte", [])):
        flat[i] = value
    save_checkpoint(state, tmp_path / "big", config)
    return tmp_path / "big", state


def test_convert_refuses_a_float16_overflow(tmp_path, capsys):
    folder, _ = _state_with(tmp_path, wte=[1e5, -7e4])
    with pytest.raises(ValueError, match=r"'transformer.wte.weight' has values beyond float16's range \(max \|x\| = "
                                         r"100000.*cast from float32 to float16 makes them inf"):
        convert(folder, tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert main(["convert", str(folder), str(tmp_path / "out2"), "--to", "safetensors", "--dtype", "float16"]) == 1
    err = capsys.readouterr().err
    assert "beyond float16's range" in err and err.count("\n") == 1
    convert(folder, tmp_path / "bf16", dtype="bfloat16")  # bfloat16 has float32's range
    back, _ = load_checkpoint(tmp_path / "bf16")
    assert float(back["transformer.wte.weight"].reshape(-1)[0]) == 1e5 - 1e5 % 512  # bf16's spacing at 1e5


def test_convert_counts_values_that_underflow(tmp_path):
    folder, _ = _state_with(tmp_path, wte=[1e-9, -2e-9, 2e-8])  # below 2**-25 (half fp16's smallest subnormal): 0
    with pytest.warns(UserWarning, match="casting to float16: 3 nonzero weights are too small for float16"):
        convert(folder, tmp_path / "out", dtype="float16")
    back, _ = load_checkpoint(tmp_path / "out")
    assert np.all(back["transformer.wte.weight"].reshape(-1)[:3] == 0)
