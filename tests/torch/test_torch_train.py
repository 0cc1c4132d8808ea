"""gpt2.torch.train on one process: the loss falls on real text, resume equals an uninterrupted run (dropout on),
accumulation equals one big micro-batch, the final model loads in every framework with equal logits, refusals.

Tiny model (2 layers, n_embd 32, GPT-2's vocabulary since the data is GPT-2 tokens), blocks of 16 tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import has  # noqa: E402
from gpt2.common.training import TrainArgs, read_metrics  # noqa: E402
from gpt2.torch import GPT2LMHeadModel  # noqa: E402
from gpt2.torch.train import train, train_from_args  # noqa: E402

GENESIS = Path(__file__).resolve().parent.parent / "data" / "genesis.txt"
SMALL = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 50257}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """genesis.txt copied (its token file is made beside the copy, not in tests/data), two configs."""
    folder = tmp_path_factory.mktemp("torch_train")
    shutil.copy(GENESIS, folder / "genesis.txt")
    (folder / "small.json").write_text(json.dumps(SMALL))  # dropout 0.1 (the config's default)
    (folder / "nodrop.json").write_text(json.dumps({**SMALL, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                                    "attn_pdrop": 0.0}))
    return folder


def options(folder: Path, out: str, **kw) -> dict:
    base = dict(data=str(folder / "genesis.txt"), config=str(folder / "small.json"), out=str(folder / out), steps=16,
                batch_size=4, block_size=16, lr=3e-3, warmup=2, eval_every=8, eval_batches=2, save_every=8,
                log_every=1, progress=False, seed=3)
    return {**base, **kw}


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def eval_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["eval_loss"] for r in read_metrics(out / "metrics.jsonl") if "eval_loss" in r}


@pytest.fixture(scope="module")
def full_run(data) -> tuple[dict, Path]:
    summary = train(**options(data, "full"))
    return summary, data / "full"


def test_loss_falls_and_the_run_folder(full_run):
    summary, out = full_run
    steps = losses(out)
    assert sorted(steps) == list(range(1, 17))
    assert np.mean([steps[s] for s in (14, 15, 16)]) < np.mean([steps[s] for s in (1, 2, 3)]) - 0.5
    assert summary["step"] == 16 and summary["out"] == str(out) and summary["world"] == 1
    assert summary["loss"] == steps[16]
    assert summary["eval_loss"] == eval_losses(out)[16] and summary["perplexity"] == pytest.approx(
        np.exp(summary["eval_loss"]))
    assert eval_losses(out)[16] < eval_losses(out)[8]
    for name in ("config.json", "model.safetensors", "trainer_state.json", "loss.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    checkpoint = out / "checkpoint-8"
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["framework"] == "torch" and len(state["rng"]["ranks"]) == 1
    optim = torch.load(checkpoint / "optimizer.pt", weights_only=True)["optimizer"]
    groups = optim["param_groups"]  # decay on the projections' matrices only (common.training.decays)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "transformer.h.0.attn.c_attn.weight" in groups[0]["params"]
    assert {"transformer.wte.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"} <= set(
        groups[1]["params"])
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_equals_the_uninterrupted_run(data, full_run):
    """Interrupted after update 8 (only checkpoint-8 and the metrics up to it survive): the resumed run's losses,
    eval loss and final weights are the uninterrupted run's exactly (dropout is on: its RNG state is restored)."""
    _, full = full_run
    out = data / "resumed"
    out.mkdir()
    shutil.copytree(full / "checkpoint-8", out / "checkpoint-8")
    kept = [r for r in read_metrics(full / "metrics.jsonl") if r["step"] <= 8]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    summary = train(**options(data, "resumed", resume=True))
    assert losses(out) == losses(full)
    assert eval_losses(out) == eval_losses(full)
    assert summary["step"] == 16
    a = GPT2LMHeadModel.from_pretrained(full).state_dict()
    b = GPT2LMHeadModel.from_pretrained(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_the_flag_or_with_other_data_order_is_refused(data, full_run):
    with pytest.raises(ValueError, match="--resume"):
        train(**options(data, "full"))
    with pytest.raises(ValueError, match="data-order|batch_size"):
        train(**options(data, "full", batch_size=2, resume=True))


@pytest.mark.parametrize("framework", ["flax", "tf"])
def test_the_trained_model_loads_in_every_framework(full_run, framework):
    """The final model (torch's from_pretrained is the reference; it is loaded in the resume test too)."""
    _, out = full_run
    ids = np.array([[464, 3303, 373, 257, 1110, 11, 290, 262]], dtype=np.int64)
    reference = GPT2LMHeadModel.from_pretrained(out)
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids)).logits.numpy()
    if framework == "flax":
        if not has("flax"):
            pytest.skip("Flax is not installed")
        from gpt2.flax import FlaxGPT2LMHeadModel

        got = np.asarray(FlaxGPT2LMHeadModel.from_pretrained(out)(input_ids=ids.astype(np.int32)).logits)
    else:
        if not has("tensorflow"):
            pytest.skip("TensorFlow is not installed")
        from gpt2.tf import TFGPT2LMHeadModel

        got = np.asarray(TFGPT2LMHeadModel.from_pretrained(out)(input_ids=ids.astype(np.int32)).logits)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_accumulation_equals_one_large_micro_batch(data):
    """batch 4 x accumulation 2 and batch 8 x 1 take the same 8 rows per update: the same losses (no dropout)."""
    common = dict(config=str(data / "nodrop.json"), steps=3, eval_every=0, save_every=0, warmup=1)
    train(**options(data, "accum", batch_size=4, grad_accum=2, **common))
    train(**options(data, "big", batch_size=8, grad_accum=1, **common))
    a, b = losses(data / "accum"), losses(data / "big")
    assert sorted(a) == [1, 2, 3]
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5)
    assert a[3] != a[1]  # the updates did something


def test_bf16_autocast_trains(data):
    summary = train(**options(data, "bf16", precision="bf16", steps=2, eval_every=0, save_every=0))
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["eval_loss"])
    assert GPT2LMHeadModel.from_pretrained(data / "bf16").dtype == torch.float32  # weights stay fp32


def test_bad_inputs_are_refused_by_name(data):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--precision fp16 needs a CUDA GPU"):
            train(**options(data, "fp16", precision="fp16"))
        assert not (data / "fp16").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="--distributed must be one of ddp, fsdp"):
        train(**options(data, "bad", distributed="zero3"))
    with pytest.raises(ValueError, match="trains with torch"):
        train(**options(data, "bad", framework="flax"))
    with pytest.raises(TypeError, match="TrainArgs"):
        train_from_args(options(data, "bad"))
    with pytest.raises(ValueError, match="--block-size 64 is above"):
        train(**options(data, "bad", block_size=64))
    with pytest.raises(FileNotFoundError, match="no training data"):
        train(**options(data, "bad", data=str(data / "missing.txt")))


def test_fp16_loss_scaling_trains_resumes_exactly_and_skips_overflowing_updates(data, monkeypatch):
    """--precision fp16's mechanics, run on the CPU (torch has fp16 autocast and GradScaler there; FP16_DEVICES
    offers fp16 on CUDA only, because a CPU emulates fp16 products slowly): the losses follow the fp32 run's, the
    GradScaler state is in every checkpoint and --resume restores it (the resumed run equals the uninterrupted one),
    and an update whose scaled gradients overflow is skipped (a checkpoint's loss scale set to 2**40)."""
    import gpt2.torch.train as trainer

    monkeypatch.setattr(trainer, "FP16_DEVICES", frozenset({"cuda", "cpu"}))
    common = dict(steps=6, save_every=3, eval_every=3)
    train(**options(data, "fp16", precision="fp16", **common))
    train(**options(data, "fp16_fp32", **common))
    half, full = losses(data / "fp16"), losses(data / "fp16_fp32")
    assert sorted(half) == list(range(1, 7))
    for step in half:
        assert half[step] == pytest.approx(full[step], abs=0.02), (half, full)
    assert half[6] < half[1] - 0.1
    state = torch.load(data / "fp16" / "checkpoint-3" / trainer.OPTIMIZER_NAME, weights_only=True)
    assert state["scaler"]["scale"] == 65536.0  # GradScaler's initial scale: no overflow in 3 updates
    out = data / "fp16_resumed"
    out.mkdir()
    shutil.copytree(data / "fp16" / "checkpoint-3", out / "checkpoint-3")
    kept = [r for r in read_metrics(data / "fp16" / "metrics.jsonl") if r["step"] <= 3]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    train(**options(data, "fp16_resumed", precision="fp16", resume=True, **common))
    assert losses(out) == half
    # the loss scale is read from the checkpoint: 2**40 overflows fp16, so update 4 is skipped (weights unchanged)
    skip = data / "fp16_skip"
    skip.mkdir()
    shutil.copytree(data / "fp16" / "checkpoint-3", skip / "checkpoint-3")
    state["scaler"]["scale"] = 2.0 ** 40
    torch.save(state, skip / "checkpoint-3" / trainer.OPTIMIZER_NAME)
    (skip / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    train(**options(data, "fp16_skip", precision="fp16", resume=True, **{**common, "steps": 4}))
    before = GPT2LMHeadModel.from_pretrained(data / "fp16" / "checkpoint-3").state_dict()
    after = GPT2LMHeadModel.from_pretrained(skip).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    after_true_scale = GPT2LMHeadModel.from_pretrained(data / "fp16_resumed").state_dict()
    assert not all(torch.equal(before[k], after_true_scale[k]) for k in before)
