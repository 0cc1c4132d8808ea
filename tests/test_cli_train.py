"""`gpt2 train`: every flag reaches TrainArgs, errors are one line with a non-zero exit code, and the command runs a
framework's train_from_args (a stand-in module here; each framework's own tests run the real ones)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gpt2 import cli
from gpt2.cli import main
from gpt2.common import training
from gpt2.common.config import GPT2Config
from gpt2.common.training import Run, TrainArgs

GENESIS = Path(__file__).resolve().parent / "data" / "genesis.txt"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copy(GENESIS, tmp_path / "genesis.txt")
    GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64).to_json_file(tmp_path / "small.json")
    return tmp_path


def parse(*argv):
    return cli._train_args(cli._parser().parse_args(["train", *argv]))


def test_every_flag_reaches_train_args():
    args = parse("--framework", "flax", "--data", "d.txt", "--val-data", "v.txt", "--config", "gpt2", "--out", "o",
                 "--steps", "7", "--batch-size", "6", "--block-size", "128", "--lr", "1e-3", "--warmup", "3",
                 "--weight-decay", "0.05", "--grad-accum", "2", "--clip", "0.5", "--precision", "bf16",
                 "--eval-every", "5", "--eval-batches", "3", "--save-every", "9", "--keep-checkpoints", "1",
                 "--log-every", "4", "--seed", "11", "--resume", "--no-progress")
    assert args == TrainArgs(framework="flax", data="d.txt", val_data="v.txt", config="gpt2", out="o", steps=7,
                             batch_size=6, block_size=128, lr=1e-3, warmup=3, weight_decay=0.05, grad_accum=2,
                             clip=0.5, precision="bf16", eval_every=5, eval_batches=3, save_every=9,
                             keep_checkpoints=1, log_every=4, seed=11, resume=True, progress=False)
    defaults = parse("--framework", "torch", "--data", "d", "--model", "m", "--out", "o", "--epochs", "2.5")
    reference = TrainArgs(framework="torch", data="d", model="m", out="o", epochs=2.5)
    assert defaults == reference  # the command's defaults are TrainArgs' defaults
    flags = {a.dest for a in cli._parser()._subparsers._group_actions[0].choices["train"]._actions} - {"help"}
    missing = {f.name for f in dataclasses.fields(TrainArgs)} - flags
    assert missing == {"min_lr_ratio", "beta1", "beta2", "eps", "val_fraction"}  # API-only knobs


@pytest.mark.parametrize("argv, message", [
    (["--data", "d", "--config", "gpt2", "--out", "o"], "--framework"),
    (["--framework", "torch", "--data", "d", "--out", "o"], "one of the arguments --config --model is required"),
    (["--framework", "torch", "--data", "d", "--config", "c", "--model", "m", "--out", "o"], "not allowed with"),
    (["--framework", "torch", "--data", "d", "--config", "c", "--out", "o", "--steps", "3", "--epochs", "1"],
     "not allowed with"),
    (["--framework", "jax", "--data", "d", "--config", "c", "--out", "o"], "invalid choice"),
    (["--framework", "torch", "--data", "d", "--config", "c", "--out", "o", "--precision", "fp8"], "invalid choice"),
    (["--framework", "torch", "--data", "d", "--config", "c", "--out", "o", "--steps", "many"], "invalid int"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_1(setup, capsys):
    base = ["train", "--framework", "torch", "--config", str(setup / "small.json"), "--out", str(setup / "out")]
    cases = [
        (["--data", str(setup / "missing.txt")], "no training data at"),
        (["--data", str(setup / "genesis.txt"), "--block-size", "128"], "--block-size 128 is above the model's "
                                                                        "n_positions 64"),
        (["--data", str(setup / "genesis.txt"), "--steps", "0"], "--steps must be an integer >= 1"),
        (["--data", str(setup / "genesis.txt"), "--lr", "-1"], "--lr must be > 0"),
    ]
    (setup / "latin1.txt").write_bytes(b"na\xefve")
    cases.append((["--data", str(setup / "latin1.txt")], "latin1.txt: not UTF-8 text: byte offset 2"))
    for extra, message in cases:
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("gpt2: error: ") and message in err and err.count("\n") == 1, err


def fake_framework(args):
    """What a framework's train_from_args does, without a model: the common Run around a stand-in step."""
    run = Run(args)
    for step in range(run.start_step, run.steps):
        run.batches.batch(step)
        run.log(step + 1, loss=6.0 - step * 0.1)
        if run.should_eval(step + 1):
            run.log_eval(step + 1, 5.0)
        if run.should_save(step + 1):
            run.save(step + 1, write=lambda folder: (folder / "weights").write_bytes(b"w"))
    run.finish(write=lambda folder: run.config.save_pretrained(folder))
    return {"step": run.steps, "loss": 5.5, "eval_loss": 5.0, "out": str(run.out)}


def test_the_command_runs_the_framework(setup, monkeypatch, capsys):
    module = types.ModuleType("gpt2.torch.train")
    module.train_from_args = fake_framework
    monkeypatch.setitem(sys.modules, "gpt2.torch.train", module)
    argv = ["train", "--framework", "torch", "--data", str(setup / "genesis.txt"),
            "--config", str(setup / "small.json"),
            "--out", str(setup / "out"), "--steps", "6", "--block-size", "32", "--batch-size", "4", "--save-every", "3",
            "--eval-every", "2", "--log-every", "1", "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [f"trained model saved to {setup / 'out'}",
                                                    "final step 6, loss 5.5, eval_loss 5"]
    names = sorted(p.name for p in (setup / "out").iterdir())
    assert names == ["checkpoint-3", "config.json", "loss.png", "merges.txt", "metrics.jsonl", "special_tokens_map.json",
                     "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "vocab.json"]
    assert main(argv) == 1  # the same --out again without --resume: refused, nothing touched
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0


def test_a_missing_framework_is_named(setup, monkeypatch, capsys):
    monkeypatch.setattr(training.importlib.util, "find_spec", lambda name: None)
    assert main(["train", "--framework", "tf", "--data", str(setup / "genesis.txt"), "--config", "gpt2",
                 "--out", str(setup / "out")]) == 1
    assert "tensorflow is not installed" in capsys.readouterr().err


def test_help_lists_the_command():
    out = subprocess.run([sys.executable, "-m", "gpt2", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--grad-accum" in out.stdout and "--resume" in out.stdout
    assert "train" in subprocess.run([sys.executable, "-m", "gpt2", "--help"], capture_output=True, text=True,
                                     timeout=120).stdout
