"""The gpt2 command: convert, demo, --help, exit codes and one-line errors."""

import io
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY
from gpt2.cli import ProgressBar, main
from gpt2.common.checkpoint import load_checkpoint, save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.demo import random_state


def run(*args):
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, timeout=300)


def test_help():
    out = run("convert", "--help")
    assert out.returncode == 0 and "--to" in out.stdout and "safetensors" in out.stdout
    assert run("--help").returncode == 0


def test_convert_subprocess(tmp_path):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path / "src", config)
    (tmp_path / "src" / "vocab.json").write_text("{}")
    out = run("convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "flax")
    assert out.returncode == 0, out.stderr
    assert "flax_model.msgpack" in out.stdout and "vocab.json" in out.stdout
    back, _ = load_checkpoint(tmp_path / "dst")
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_convert_dtype_and_shards(tmp_path, capsys):
    config = GPT2Config(**TINY)
    state = random_state(config)
    save_checkpoint(state, tmp_path / "src", config)
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "safetensors", "--dtype",
                 "bfloat16", "--max-shard-size", "1KB"]) == 0
    assert "model.safetensors.index.json" in capsys.readouterr().out
    back, config2 = load_checkpoint(tmp_path / "dst")
    assert config2.dtype == "bfloat16" and all(v.dtype.name == "bfloat16" for v in back.values())
    assert all(np.array_equal(back[k].astype(np.float32), state[k].astype("bfloat16").astype(np.float32))
               for k in state)


@pytest.mark.parametrize("args, message", [
    (["convert", "/no/such/folder", "out", "--to", "tf"], "no checkpoint"),
    (["convert", ".", "out", "--to", "onnx"], "invalid choice"),
])
def test_errors_are_one_line(args, message, tmp_path):
    out = run(*args)
    assert out.returncode != 0 and message in out.stderr
    assert "Traceback" not in out.stderr


def test_corrupt_input_is_one_line_error(tmp_path, capsys):
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path, config)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    assert main(["convert", str(tmp_path), str(tmp_path / "out"), "--to", "tf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2: error:") and "model.safetensors" in err and err.count("\n") == 1


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    assert "round-tripped exactly" in capsys.readouterr().out


def test_progress_bar_draws_only_on_a_terminal_for_big_files():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet, tty = io.StringIO(), Tty()
    ProgressBar(quiet)("reading", 10, 100 * 2**20)
    ProgressBar(tty)("reading", 1, 10)
    assert quiet.getvalue() == "" and tty.getvalue() == ""
    bar = ProgressBar(tty)
    bar("reading", 50 * 2**20, 100 * 2**20)
    bar("reading", 100 * 2**20, 100 * 2**20)
    assert "#" * 15 in tty.getvalue() and tty.getvalue().endswith("MiB\n")


def test_demo_generates_with_a_model_folder(tmp_path, capsys):
    pytest.importorskip("torch")
    from gpt2.torch import GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2))
    model.save_pretrained(tmp_path)
    assert main(["demo", "--model", str(tmp_path), "--prompt", "Hello"]) == 0
    out = capsys.readouterr().out
    assert f"generating with {tmp_path}" in out and "Hello" in out and "tokens in" in out


def test_converting_over_another_format_says_what_it_removed(tmp_path):
    """A folder holds one model after a save: the earlier save's weights of another format are removed, and the
    command says so on one line each (stderr) and in its report (stdout)."""
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), tmp_path / "src", config)
    save_checkpoint(random_state(config, seed=1), tmp_path / "dst", config, format="tf")
    out = run("convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "flax")
    assert out.returncode == 0, out.stderr
    assert "removed 1 files of earlier saves:\n  tf_model.h5" in out.stdout
    warning_lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("gpt2: warning: ") and "tf_model.h5" in out.stderr
    assert not (tmp_path / "dst" / "tf_model.h5").exists()
