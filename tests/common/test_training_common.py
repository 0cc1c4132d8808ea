"""The framework-free half of training (gpt2.common.training): options, schedule, decays(), the run folder
(atomic checkpoints, pruning, refusals), metrics and the loss plot, Run with a stand-in loop, dispatch."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpt2.common import training
from gpt2.common.config import GPT2Config
from gpt2.common.training import (Run, Schedule, TrainArgs, check_out_folder, checkpoints, config_digest, decays,
                                  latest_checkpoint, learning_rate, make_schedule, plot_loss, prune_checkpoints,
                                  read_metrics, read_state, save_checkpoint)

GENESIS = Path(__file__).resolve().parent.parent / "data" / "genesis.txt"
SMALL = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copy(GENESIS, tmp_path / "genesis.txt")
    GPT2Config(**SMALL).to_json_file(tmp_path / "small.json")
    return tmp_path


def make_args(tmp, **kw):
    base = dict(framework="torch", data=str(tmp / "genesis.txt"), config=str(tmp / "small.json"),
                out=str(tmp / "out"), steps=12, block_size=32, batch_size=4, eval_every=4, save_every=4,
                log_every=2, progress=False)
    return TrainArgs(**{**base, **kw})


# -- options -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(framework="mxnet"), "--framework must be one of"),
    (dict(config=None), "exactly one of --config"),
    (dict(model="m"), "exactly one of --config"),
    (dict(epochs=1.0), "at most one of --steps and --epochs"),
    (dict(steps=0), "--steps must be an integer >= 1"),
    (dict(steps=None, epochs=0.0), "--epochs must be > 0"),
    (dict(batch_size=0), "--batch-size must be"),
    (dict(batch_size=2.0), "--batch-size must be"),
    (dict(grad_accum=True), "--grad-accum must be"),
    (dict(lr=0.0), "--lr must be > 0"),
    (dict(lr=float("nan")), "--lr must be a finite number"),
    (dict(weight_decay=-1.0), "--weight-decay must be >= 0"),
    (dict(clip=-0.5), "--clip must be >= 0"),
    (dict(precision="fp8"), "--precision must be one of"),
    (dict(eval_every=-1), "--eval-every must be"),
    (dict(warmup=-2), "--warmup must be"),
    (dict(val_fraction=1.0), "--val-fraction must be < 1"),
    (dict(beta2=1.0), "--beta2 must be < 1"),
])
def test_bad_options(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **change).validate()


def test_bad_option_types(tmp_path):
    with pytest.raises(TypeError, match="--resume must be True or False"):
        make_args(tmp_path, resume="yes").validate()
    with pytest.raises(TypeError, match="--data must be a path"):
        make_args(tmp_path, data=None).validate()


def test_steps_from_epochs(setup):
    run = Run(make_args(setup, steps=None, epochs=2.0, grad_accum=2))
    assert run.steps == math.ceil(2 * len(run.train) / 8)
    assert Run(make_args(setup, steps=None, out=str(setup / "o2"))).steps == math.ceil(len(run.train) / 4)


# -- schedule, decay ---------------------------------------------------------------------------------------------------
def test_schedule_shape():
    s = Schedule(peak=1e-3, warmup=10, total=100, final=1e-4)
    assert s(0) == 0.0 and s(5) == pytest.approx(5e-4) and s(10) == pytest.approx(1e-3)
    assert s(55) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way through the cosine
    assert s(100) == pytest.approx(1e-4) and s(500) == pytest.approx(1e-4)
    values = [s(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert s.multiplier(10) == pytest.approx(1.0)
    no_warmup = Schedule(peak=1.0, warmup=0, total=10, final=0.1)
    assert no_warmup(0) == 1.0


def test_schedule_from_args(tmp_path):
    args = make_args(tmp_path, lr=6e-4, steps=200, warmup=None)
    s = make_schedule(args, 200)
    assert s.warmup == 10 and s.final == pytest.approx(6e-5) and s.total == 200
    assert learning_rate(10, args) == pytest.approx(6e-4)
    with pytest.raises(ValueError, match="longer than the run"):
        make_schedule(make_args(tmp_path, warmup=50), 20)


def test_schedule_equals_the_native_ones():
    s = Schedule(peak=3e-4, warmup=7, total=50, final=3e-5)
    ours = np.array([s(i) for i in range(60)])
    optax = pytest.importorskip("optax")
    theirs = optax.warmup_cosine_decay_schedule(0.0, s.peak, s.warmup, s.total, s.final)
    np.testing.assert_allclose([float(theirs(i)) for i in range(60)], ours, rtol=1e-5, atol=1e-10)
    torch = pytest.importorskip("torch")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=s.peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, s.multiplier)
    got = []
    for _ in range(60):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(got, ours, rtol=1e-12)


def test_decays():
    yes = ["transformer.h.0.attn.c_attn.weight", "transformer.h.11.attn.c_proj.weight",
           "transformer.h.0.mlp.c_fc.weight",
           "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.crossattention.q_attn.weight", "lm_head.weight",
           "score.weight", "classifier.weight", "qa_outputs.weight", "multiple_choice_head.summary.weight"]
    no = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
          "transformer.h.0.ln_1.bias",
          "transformer.h.0.ln_2.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
          "transformer.h.0.attn.c_attn.bias", "transformer.h.0.mlp.c_fc.bias", "classifier.bias", "score.bias",
          "multiple_choice_head.summary.bias", "transformer.h.0.ln_cross_attn.weight"]
    assert all(decays(n) for n in yes) and not any(decays(n) for n in no)


# -- checkpoints -------------------------------------------------------------------------------------------------------
STATE = {"framework": "torch", "config_digest": "abc"}


def writer(payload=b"weights"):
    def write(folder):
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "optimizer.pt").write_bytes(b"opt")
    return write


def test_checkpoint_folder(tmp_path):
    out = tmp_path / "out"
    first = save_checkpoint(out, 10, writer(), STATE)
    assert first == out / "checkpoint-10" and read_state(first)["step"] == 10
    assert sorted(p.name for p in first.iterdir()) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    save_checkpoint(out, 20, writer(), STATE)
    assert latest_checkpoint(out) == out / "checkpoint-20"
    assert latest_checkpoint(tmp_path / "none") is None
    # saving the same step again replaces it whole
    save_checkpoint(out, 20, writer(b"new"), STATE)
    assert (out / "checkpoint-20" / "model.safetensors").read_bytes() == b"new"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_crash_mid_save_leaves_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "out"
    save_checkpoint(out, 10, writer(), STATE)

    def dies(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_checkpoint(out, 20, dies, STATE)
    assert latest_checkpoint(out) == out / "checkpoint-10"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-10"]
    # a process killed mid-save leaves its temporary folder: never a checkpoint, cleaned by the next save
    dead = out / ".checkpoint-30.999999999.0123abcd.tmp"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    incomplete = out / "checkpoint-40"  # a folder without trainer_state.json (not ours, or hand-copied): ignored
    incomplete.mkdir()
    assert latest_checkpoint(out) == out / "checkpoint-10"
    save_checkpoint(out, 20, writer(), STATE)
    assert not dead.exists() and latest_checkpoint(out) == out / "checkpoint-20"


def test_pruning(tmp_path):
    out = tmp_path / "out"
    for step in (5, 10, 15, 20):
        save_checkpoint(out, step, writer(), STATE, keep=2)
    assert [s for s, _ in checkpoints(out)] == [15, 20]
    for step in (25, 30):
        save_checkpoint(out, step, writer(), STATE)
    assert [p.name for p in prune_checkpoints(out, 1)] == ["checkpoint-15", "checkpoint-20", "checkpoint-25"]
    assert [s for s, _ in checkpoints(out)] == [30]


def test_out_folder_refusals(tmp_path):
    out = tmp_path / "out"
    assert check_out_folder(out, digest="abc", framework="torch", resume=False) is None
    save_checkpoint(out, 4, writer(), {**STATE, "data_order": {"seed": 0}})
    with pytest.raises(ValueError, match="holds a different model"):
        check_out_folder(out, digest="xyz", framework="torch", resume=True)
    with pytest.raises(ValueError, match="holds a training run; pass --resume"):
        check_out_folder(out, digest="abc", framework="torch", resume=False)
    with pytest.raises(ValueError, match="written by --framework torch, not flax"):
        check_out_folder(out, digest="abc", framework="flax", resume=True)
    with pytest.raises(ValueError, match="other data-order settings .*seed: 0 there, 1 now"):
        check_out_folder(out, digest="abc", framework="torch", resume=True, data_order={"seed": 1})
    assert check_out_folder(out, digest="abc", framework="torch", resume=True,
                            data_order={"seed": 0}) == out / "checkpoint-4"
    # a saved model (no run) in --out
    model = tmp_path / "model"
    GPT2Config(**SMALL).save_pretrained(model)
    with pytest.raises(ValueError, match="holds a saved model"):
        check_out_folder(model, digest=config_digest(GPT2Config(**SMALL)), framework="torch", resume=False)
    with pytest.raises(ValueError, match="holds a different model"):
        check_out_folder(model, digest="other", framework="torch", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_out_folder(tmp_path / "file", digest="abc", framework="torch", resume=False)


def test_config_digest():
    a = GPT2Config(**SMALL)
    assert config_digest(a) == config_digest(GPT2Config(**SMALL, resid_pdrop=0.0))  # dropout is not the model
    assert config_digest(a) != config_digest(GPT2Config(**{**SMALL, "n_layer": 3}))
    assert config_digest(a) != config_digest(GPT2Config(**SMALL, tie_word_embeddings=False))


# -- metrics and plot --------------------------------------------------------------------------------------------------
def test_metrics_and_plot(tmp_path):
    metrics = training.Metrics(tmp_path, total=10, tokens_per_step=128, progress=False)
    for step in range(1, 11):
        metrics.log(step, loss=5.0 / step, lr=1e-3)
    metrics.log_eval(10, 0.5)
    metrics.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11)) + [10]
    assert records[3]["loss"] == 1.25 and records[3]["tokens"] == 512 and records[3]["tokens_per_s"] > 0
    assert records[-1] == {"step": 10, "eval_loss": 0.5, "perplexity": pytest.approx(math.exp(0.5))}
    png = plot_loss(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # on resume, lines past the resumed step go
    training.Metrics(tmp_path, total=10, start=4, progress=False).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a torn line from a crash
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no loss records"):
        plot_loss(tmp_path / "empty.jsonl", tmp_path / "x.png")


# -- Run with a stand-in loop (what each framework's train.py does around its own step) --------------------------------
def fake_loop(run, stop_at=None, seen=None):
    for step in range(run.start_step, run.steps):
        batch = run.batches.batch(step, run.rank)
        if seen is not None:
            seen.append(batch)
        loss = 10.0 / (step + 1)
        run.log(step + 1, loss=loss)
        if run.should_eval(step + 1):
            run.log_eval(step + 1, float(np.mean([b.mean() for b in run.eval_batches()])) / 1e4)
        if run.should_save(step + 1):
            run.save(step + 1, write=writer(), rng={"seed": [1, 2, step]})
        if stop_at is not None and step + 1 == stop_at:
            run.metrics.close()
            return
    run.finish(write=lambda folder: GPT2Config(**SMALL).save_pretrained(folder))


def test_run_end_to_end_and_resume(setup):
    args = make_args(setup)
    run = Run(args)
    assert run.steps == 12 and run.start_step == 0 and run.block_size == 32 and run.init_from is None
    whole = []
    fake_loop(run, seen=whole)
    out = setup / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-4", "checkpoint-8", "config.json", "loss.png", "merges.txt", "metrics.jsonl",
                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "trainer_state.json",
                     "vocab.json"]  # the tokenizer that made the token files: out/ is a complete model folder
    state = read_state(out / "checkpoint-8")
    assert state["framework"] == "torch" and state["config_digest"] == run.digest
    assert state["rng"] == {"seed": [1, 2, 7]}
    assert state["data"]["rows_seen"] == 32 and state["args"]["batch_size"] == 4
    assert json.loads(json.dumps(state)) == state
    full = read_metrics(out / "metrics.jsonl")

    # interrupted after update 6 (last checkpoint: 4), then resumed: the same batches and metric lines
    other = setup / "other"
    partial = []
    fake_loop(Run(make_args(setup, out=str(other))), stop_at=6, seen=partial)
    with pytest.raises(ValueError, match="pass --resume"):
        Run(make_args(setup, out=str(other)))
    resumed = Run(make_args(setup, out=str(other), resume=True))
    assert resumed.start_step == 4 and resumed.resume_from == other / "checkpoint-4"
    assert resumed.state["rng"] == {"seed": [1, 2, 3]}
    rest = []
    fake_loop(resumed, seen=rest)
    assert all(np.array_equal(a, b) for a, b in zip(partial[:4] + rest, whole)) and len(partial[:4] + rest) == 12
    again = read_metrics(other / "metrics.jsonl")
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in again] == \
           [(r["step"], r.get("loss"), r.get("eval_loss")) for r in full]

    with pytest.raises(ValueError, match="other data-order settings.*batch_size"):
        Run(make_args(setup, out=str(other), resume=True, batch_size=8))
    with pytest.raises(ValueError, match="not tf"):
        Run(make_args(setup, out=str(other), resume=True, framework="tf"))
    GPT2Config(**{**SMALL, "n_layer": 3}).to_json_file(setup / "other.json")
    with pytest.raises(ValueError, match="holds a different model"):
        Run(make_args(setup, out=str(other), resume=True, config=str(setup / "other.json")))


def test_run_refusals(setup):
    with pytest.raises(ValueError, match="--block-size 128 is above the model's n_positions 64"):
        Run(make_args(setup, block_size=128))
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        Run(make_args(setup, batch_size=4), world=3, rank=0)
    with pytest.raises(ValueError, match="does not divide over 3 devices"):
        Run(make_args(setup, batch_size=4), devices=3)
    GPT2Config(**{**SMALL, "vocab_size": 1000}).to_json_file(setup / "v.json")
    with pytest.raises(ValueError, match="past the model's vocab_size 1000"):
        Run(make_args(setup, config=str(setup / "v.json")))
    with pytest.raises(ValueError, match="neither a preset"):
        Run(make_args(setup, config="gpt9"))
    with pytest.raises(FileNotFoundError, match="--model"):
        Run(make_args(setup, config=None, model=str(setup / "nope")))
    (setup / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        Run(make_args(setup, data=str(setup / "empty.txt")))


def test_model_by_name(setup):
    """--model takes the shipped model's name (and hub names) as from_pretrained does, not only a folder."""
    from gpt2.common import embedded

    run = Run(make_args(setup, config=None, model="gpt2-tiny-kjv", block_size=32))
    assert run.init_from == embedded.folder("gpt2-tiny-kjv") and run.config.n_layer == 4


def test_run_from_model_and_val_data(setup):
    GPT2Config(**SMALL).save_pretrained(setup / "model")
    (setup / "val.txt").write_text(GENESIS.read_text()[:20000])
    run = Run(make_args(setup, config=None, model=str(setup / "model"), val_data=str(setup / "val.txt"),
                        block_size=None))
    assert run.init_from == setup / "model" and run.block_size == 64 and run.val_tokens is not None
    assert len(run.train) == len(run.train_tokens) // 64 and len(run.val) == len(run.val_tokens) // 64
    assert run.data_order["val_tokens"] == len(run.val_tokens)


def test_ranks_share_the_data(setup):
    args = make_args(setup, batch_size=4)
    calls = []
    runs = [Run(args, rank=r, world=2, barrier=lambda: calls.append(1)) for r in range(2)]
    assert runs[0].main and not runs[1].main
    both = np.concatenate([r.batches.batch(3, r.rank) for r in runs], axis=1)
    assert np.array_equal(both, Run(make_args(setup, out=str(setup / "single"))).batches.global_batch(3))
    assert runs[1].save(4, writer()) is None and not (setup / "out").exists()  # only rank 0 writes


# -- dispatch ----------------------------------------------------------------------------------------------------------
def test_train_dispatches_to_the_framework(tmp_path, monkeypatch):
    seen = {}
    module = types.ModuleType("gpt2.flax.train")
    module.train_from_args = lambda args: seen.setdefault("args", args) and "done"
    monkeypatch.setitem(sys.modules, "gpt2.flax.train", module)
    monkeypatch.setattr(training.importlib.util, "find_spec", lambda name: object())
    args = make_args(tmp_path, framework="flax")
    assert training.train(args) == "done" and seen["args"] is args


def test_train_without_the_framework(tmp_path, monkeypatch):
    monkeypatch.setattr(training.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="--framework tf: tensorflow is not installed"):
        training.train(make_args(tmp_path, framework="tf"))


def test_args_round_trip(tmp_path):
    args = make_args(tmp_path)
    assert TrainArgs(**args.to_dict()) == args
    assert set(args.to_dict()) == {f.name for f in dataclasses.fields(TrainArgs)}


def test_resume_before_any_checkpoint_starts_over(setup):
    out = setup / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 9.0}\n')  # a run that died before its first save
    run = Run(make_args(setup, resume=True))
    assert run.start_step == 0 and run.resume_from is None
    assert read_metrics(out / "metrics.jsonl") == []


FAULTS_AFTER_REUSE = """
import ctypes, resource, sys
from gpt2.common.training import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 128 << 20  # a step's 200 MB logits, smaller: above glibc's mmap threshold (32 MiB at most)
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux) is what it tunes")
def test_keep_freed_memory_reuses_a_freed_block_without_page_faults():
    """A 128 MiB block freed and allocated again: with the setting the same pages come back (almost no fault);
    without it glibc unmaps the block and the kernel maps and zeroes 32768 fresh 4 KiB pages."""
    import subprocess

    faults = {how: int(subprocess.run([sys.executable, "-c", FAULTS_AFTER_REUSE, how], capture_output=True,
                                      text=True, check=True).stdout) for how in ("keep", "default")}
    assert faults["keep"] < 100 < 30000 < faults["default"], faults
