"""`gpt2 info MODEL`: the config, the parameter count, each weight format in the folder with its dtypes (from the
files' headers, nothing loaded through the checkpoint reader), the size on disk; bad input as one line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import has
from gpt2.cli import main
from gpt2.commands import default_model, info
from gpt2.common.checkpoint import save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.common.convert import convert
from gpt2.demo import random_state

CONFIG = dict(n_layer=2, n_embd=16, n_head=2, n_positions=24, vocab_size=300)


def expected_parameters(config: GPT2Config) -> int:
    c = config
    per_layer = 2 * 2 * c.n_embd + c.n_embd * 3 * c.n_embd + 3 * c.n_embd + c.n_embd * c.n_embd + c.n_embd \
        + c.n_embd * 4 * c.n_embd + 4 * c.n_embd + 4 * c.n_embd * c.n_embd + c.n_embd
    return c.vocab_size * c.n_embd + c.n_positions * c.n_embd + c.n_layer * per_layer + 2 * c.n_embd


@pytest.fixture
def folder(tmp_path):
    config = GPT2Config(**CONFIG)
    save_checkpoint(random_state(config), tmp_path / "src", config)
    return tmp_path / "src"


def report(capsys, *argv):
    assert main(["info", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_safetensors_folder(folder, capsys):
    convert(folder, folder.parent / "half", to="safetensors", dtype="float16")
    lines = report(capsys, str(folder.parent / "half"))
    config = GPT2Config(**CONFIG)
    assert lines[0] == f"model       {folder.parent / 'half'}"
    assert lines[1] == ("config      GPT2LMHeadModel: 2 layers, 2 heads, n_embd 16, n_positions 24, vocab 300, "
                        "gelu_new, tied embeddings")
    n = expected_parameters(config)
    assert lines[2] == f"parameters  {n / 1e3:.1f}K ({n:,})"
    size = (folder.parent / "half" / "model.safetensors").stat().st_size
    assert lines[3].startswith("weights     safetensors model.safetensors (") and "28 tensors, float16 x28" in lines[3]
    assert f"{size / 2**10:.1f} KiB" in lines[3]
    total = sum(p.stat().st_size for p in (folder.parent / "half").iterdir())
    assert lines[-1] == f"on disk     {total / 2**10:.1f} KiB in 2 files"


def test_the_count_is_the_models(folder):
    torch = pytest.importorskip("torch")
    from gpt2.torch import GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(**CONFIG))
    assert info(str(folder)).parameters == model.num_parameters() == expected_parameters(GPT2Config(**CONFIG))
    untied = GPT2Config(**CONFIG, tie_word_embeddings=False)
    save_checkpoint(random_state(untied, heads=("lm_head",)), folder.parent / "untied", untied)
    assert info(str(folder.parent / "untied")).parameters == expected_parameters(untied) + 300 * 16


def test_every_format_in_a_folder_with_its_dtypes(folder, capsys):
    """A folder as the hub has them: several formats side by side, each described from its own file."""
    formats = ["tf", "flax"] + (["pytorch"] if has("torch") else [])
    for fmt, dtype in zip(formats, ["float16", "bfloat16", "float32"]):  # HDF5 has no bfloat16
        convert(folder, folder.parent / fmt, to=fmt, dtype=dtype)
        for path in (folder.parent / fmt).iterdir():
            if path.name != "config.json":
                shutil.copy(path, folder)
    result = info(str(folder))
    found = {f.format: f for f in result.formats}
    assert set(found) == {"safetensors", *formats}
    assert found["safetensors"].dtypes == {"float32": 28} and found["tf"].dtypes == {"float16": 28}
    assert found["flax"].dtypes == {"bfloat16": 28}
    if "pytorch" in found:
        assert found["pytorch"].dtypes == {"float32": 28}
    for f in result.formats:
        assert f.bytes == sum(p.stat().st_size for p in f.files)
    lines = report(capsys, str(folder))
    assert any("tf_model.h5" in line and "float16 x28" in line for line in lines)
    assert any("flax_model.msgpack" in line and "bfloat16 x28" in line for line in lines)
    assert result.disk_bytes == sum(p.stat().st_size for p in folder.iterdir())


def test_a_sharded_checkpoint(folder, capsys):
    convert(folder, folder.parent / "shards", to="safetensors", max_shard_size="8KB")
    result = info(str(folder.parent / "shards"))
    [f] = result.formats
    assert f.files[0].name == "model.safetensors.index.json" and len(f.files) > 3 and f.tensors == 28
    lines = report(capsys, str(folder.parent / "shards"))
    assert f"model.safetensors.index.json + {len(f.files) - 1}" in lines[3]


def test_headers_only(folder, monkeypatch):
    """The weights are not read through the checkpoint loader (which would read every tensor)."""
    import gpt2.common.checkpoint
    import gpt2.common.formats.safetensors_format as st

    def never(*args, **kwargs):
        raise AssertionError("a whole checkpoint was read")

    monkeypatch.setattr(gpt2.common.checkpoint, "load_checkpoint", never)
    monkeypatch.setattr(st, "read", never)
    assert info(str(folder)).formats[0].tensors == 28


def test_the_shipped_model(capsys):
    name = default_model()
    assert name is not None, "the package ships no model"
    lines = report(capsys)  # no MODEL: the shipped one
    assert lines[0].startswith("model") and lines[0].endswith(name)
    assert "float16" in lines[3] and "vocab 50257" in lines[1]


def one_line_error(capsys, *argv):
    assert main(["info", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2: error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line(folder, tmp_path, capsys):
    assert "no checkpoint for '/no/such'" in one_line_error(capsys, "/no/such")
    (tmp_path / "empty").mkdir()
    assert "no checkpoint for" in one_line_error(capsys, str(tmp_path / "empty"))
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    assert "model.safetensors" in one_line_error(capsys, str(folder))
    (folder / "model.safetensors").unlink()
    # config.json left: a model folder without weights
    assert "no weights in" in one_line_error(capsys, str(folder))


def test_the_commands_import_no_framework():
    """`gpt2 info` and the other commands' module stay numpy-level until a framework is asked for."""
    code = ("import sys, gpt2.commands, gpt2.demo, gpt2.cli\n"
            "gpt2.cli._parser()\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
