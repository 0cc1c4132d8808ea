"""gpt2/flax/train.py on one device: a tiny model's loss falls on tests/data/genesis.txt; a run that crashes and is
resumed gives the very losses and weights of an uninterrupted one (dropout on, gradient accumulation on); the saved
model loads in our PyTorch models with the same logits; bad options are refused by name.

One uninterrupted run (module fixture) serves as the reference of every check: each train() call compiles its step
(~10 s on a loaded 2-core machine), so the file makes three calls in all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_flax, requires_torch

pytestmark = requires_flax

GENESIS = str(Path(__file__).resolve().parents[1] / "data" / "genesis.txt")
# the GPT-2 tokenizer's ids need the full vocabulary; everything else is tiny. Dropout on: resume must replay it.
CONFIG = dict(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=50257, resid_pdrop=0.1, embd_pdrop=0.1,
              attn_pdrop=0.1)
STEPS = 12
OPTIONS = dict(data=GENESIS, steps=STEPS, batch_size=4, grad_accum=2, block_size=32, lr=2e-2, warmup=2, eval_every=6,
               save_every=4, log_every=1, eval_batches=2, keep_checkpoints=0, seed=1, progress=False)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(CONFIG))
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config_file):
    from gpt2.flax.train import train

    out = tmp_path_factory.mktemp("run") / "out"
    return train(config=config_file, out=str(out), **OPTIONS)


def _weights(folder) -> dict[str, np.ndarray]:
    from gpt2.flax import FlaxGPT2LMHeadModel

    return FlaxGPT2LMHeadModel.from_pretrained(folder).state_to_canonical()


def test_the_loss_falls_and_the_run_folder_is_complete(reference):
    from gpt2.common.training import checkpoints, read_metrics, read_state

    losses = reference["losses"]
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 1.0, losses  # from ln(50257) = 10.8 down
    assert reference["step"] == STEPS and reference["loss"] == losses[STEPS]
    assert reference["eval_loss"] < losses[1] - 1.0
    assert reference["perplexity"] == pytest.approx(np.exp(reference["eval_loss"]))
    out = Path(reference["out"])
    for name in ("config.json", "flax_model.msgpack", "trainer_state.json", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    assert [s for s, _ in checkpoints(out)] == [4, 8]
    for step, folder in checkpoints(out):
        assert (folder / "optimizer.msgpack").is_file() and (folder / "flax_model.msgpack").is_file()
        state = read_state(folder)
        assert state["framework"] == "flax" and state["rng"]["seed"] == 1 and state["data"]["step"] == step
    records = read_metrics(out / "metrics.jsonl")
    logged = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert logged == pytest.approx(losses, abs=0)
    assert [r["step"] for r in records if "eval_loss" in r] == [6, 12]
    # the learning rate logged is common's schedule: warmup from 0, peak at update 2, cosine down to 10%
    rates = [r["lr"] for r in records if "lr" in r]
    assert rates[0] == 0.0 and rates[2] == pytest.approx(2e-2) and rates[-1] < rates[2]


def test_resume_after_a_crash_equals_the_uninterrupted_run(reference, config_file, tmp_path, monkeypatch):
    from gpt2.common import training
    from gpt2.common.training import latest_checkpoint, read_metrics
    from gpt2.flax.train import train

    out = tmp_path / "out"
    log = training.Run.log

    def crash_at_6(self, step, **kw):
        if step == 6:  # after checkpoint-4, before checkpoint-8: updates 5 and 6 are lost
            raise KeyboardInterrupt("simulated crash")
        return log(self, step, **kw)

    monkeypatch.setattr(training.Run, "log", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        train(config=config_file, out=str(out), **OPTIONS)
    monkeypatch.setattr(training.Run, "log", log)
    assert latest_checkpoint(out).name == "checkpoint-4"
    with pytest.raises(ValueError, match="--resume"):  # a run is there: starting over would overwrite it
        train(config=config_file, out=str(out), **OPTIONS)

    resumed = train(config=config_file, out=str(out), resume=True, **OPTIONS)
    assert sorted(resumed["losses"]) == list(range(5, STEPS + 1))
    for step, loss in resumed["losses"].items():  # the same data, dropout masks and optimizer state: bit for bit
        assert loss == reference["losses"][step], (step, loss, reference["losses"][step])
    assert resumed["eval_loss"] == reference["eval_loss"]
    theirs, ours = _weights(reference["out"]), _weights(out)
    assert theirs.keys() == ours.keys()
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # metrics.jsonl reads as one run: the lost updates 5 and 6 appear once, with the uninterrupted values
    logged = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    assert logged == reference["losses"]


@requires_torch
def test_the_trained_model_loads_in_torch_with_the_same_logits(reference):
    import torch

    from gpt2.flax import FlaxGPT2LMHeadModel
    from gpt2.torch import GPT2LMHeadModel

    ids = np.random.default_rng(0).integers(0, 50257, (2, 32))
    flax_model = FlaxGPT2LMHeadModel.from_pretrained(reference["out"])
    ours = np.asarray(flax_model(ids).logits)
    for folder in (reference["out"], Path(reference["out"]) / "checkpoint-8"):
        model = GPT2LMHeadModel.from_pretrained(folder).eval()
        with torch.no_grad():
            theirs = model(torch.tensor(ids)).logits.numpy()
        if folder == reference["out"]:
            np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
        assert np.isfinite(theirs).all()
    # the decay mask: common.training.decays' rule on the canonical names
    from gpt2.flax.train import _decay_mask

    mask = _decay_mask(flax_model)
    block = mask["transformer"]["h"][0]
    assert block["attn"]["c_attn"]["kernel"] and block["mlp"]["c_proj"]["kernel"]
    assert not block["attn"]["c_attn"]["bias"] and not block["ln_1"]["scale"]
    assert not mask["transformer"]["wte"]["embedding"] and not mask["transformer"]["wpe"]["embedding"]


def test_bad_options_are_refused_by_name(tmp_path, config_file):
    import jax

    from gpt2.flax.train import train, train_from_args
    from gpt2.common.training import TrainArgs

    base = dict(OPTIONS, config=config_file, out=str(tmp_path / "out"))
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="--precision fp16"):
            train(**{**base, "precision": "fp16"})
    with pytest.raises(ValueError, match="framework='torch'"):
        train(**{**base, "framework": "torch"})
    with pytest.raises(TypeError, match="unknown option.*learning_rate"):
        train(**{**base, "learning_rate": 1e-3})
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        train(mesh="data", **base)
    with pytest.raises(ValueError, match="--framework tf"):
        train_from_args(TrainArgs(framework="tf", **base))
    with pytest.raises(ValueError, match="--block-size 64 is above the model's n_positions 32"):
        train(**{**base, "block_size": 64})
    assert not (tmp_path / "out").exists()  # nothing was written by a refused run


def test_bf16_is_mixed_precision(reference, config_file, tmp_path):
    """bfloat16 computation, float32 weights: the first loss (before any update: the same weights, data and dropout
    as the float32 run) is close to float32's but not equal; the saved weights are float32."""
    from gpt2.common.training import read_state
    from gpt2.flax.train import train

    out = tmp_path / "bf16"
    summary = train(config=config_file, out=str(out), **{**OPTIONS, "steps": 2, "precision": "bf16"})
    first, reference_first = summary["losses"][1], reference["losses"][1]
    assert first != reference_first and abs(first - reference_first) < 0.05
    assert np.isfinite(summary["eval_loss"])
    assert {a.dtype for a in _weights(out).values()} == {np.dtype("float32")}
    assert read_state(out)["args"]["precision"] == "bf16"


def test_fp16_loss_scaling_trains_resumes_exactly_and_skips_overflowing_updates(reference, config_file, tmp_path,
                                                                               monkeypatch):
    """--precision fp16's mechanics, run on the CPU (XLA runs float16 there; FP16_BACKENDS offers fp16 on a GPU only,
    because a CPU emulates it slowly): float16 computation with the dynamic loss scale, whose losses follow the
    float32 run's; the scale is saved with the optimizer state and --resume restores it (the resumed run equals the
    uninterrupted one); an update whose scaled gradients overflow is skipped (a checkpoint's scale set to 2**40)."""
    import shutil

    import jax
    from flax import serialization

    import gpt2.flax.train as trainer

    monkeypatch.setattr(trainer, "FP16_BACKENDS", frozenset({"gpu", jax.default_backend()}))
    options = {**OPTIONS, "precision": "fp16"}
    out = tmp_path / "fp16"
    full = trainer.train(config=config_file, out=str(out), **options)
    assert full["losses"][1] != reference["losses"][1]  # float16 products (the same weights, data and dropout)
    for step in range(1, STEPS + 1):  # the tiny model's logits are small: float16 rounding moves the loss ~1e-4
        assert full["losses"][step] == pytest.approx(reference["losses"][step], abs=2e-3), (full, reference)
    assert full["losses"][STEPS] < full["losses"][1] - 1.0
    assert {a.dtype for a in _weights(out).values()} == {np.dtype("float32")}
    path = out / "checkpoint-4" / trainer.OPTIMIZER_FILE
    state = serialization.msgpack_restore(path.read_bytes())
    assert float(state["1"]["scale"]) == 2.0 ** 16 and int(state["1"]["good"]) == 4  # 4 finite updates

    def resume(name, steps, scale=None):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copytree(out / "checkpoint-4", folder / "checkpoint-4")
        if scale is not None:
            state["1"]["scale"] = np.asarray(scale, np.float32)
            (folder / "checkpoint-4" / trainer.OPTIMIZER_FILE).write_bytes(serialization.msgpack_serialize(state))
        return folder, trainer.train(config=config_file, out=str(folder), resume=True, **{**options, "steps": steps})

    _, resumed = resume("resumed", STEPS)
    assert resumed["losses"] == {s: full["losses"][s] for s in range(5, STEPS + 1)}
    skipped, _ = resume("skipped", 5, scale=2.0 ** 40)
    before, after = _weights(out / "checkpoint-4"), _weights(skipped)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # update 5 overflowed: nothing moved
    assert not all(np.array_equal(before[k], v) for k, v in _weights(out / "checkpoint-8").items())


def test_the_loss_scale_rule():
    """_LossScale.next: halves on a non-finite update (never below 1) and restarts the count; doubles after
    GROWTH_INTERVAL finite updates in a row."""
    import jax.numpy as jnp

    from gpt2.flax.train import _LossScale

    state = _LossScale.initial()
    assert float(state["scale"]) == 65536.0
    for _ in range(_LossScale.GROWTH_INTERVAL - 1):
        state = {"scale": state["scale"], "good": state["good"] + 1}
    assert int(state["good"]) == _LossScale.GROWTH_INTERVAL - 1
    grown = _LossScale.next(state, jnp.asarray(True))
    assert float(grown["scale"]) == 2.0 ** 17 and int(grown["good"]) == 0
    halved = _LossScale.next(state, jnp.asarray(False))
    assert float(halved["scale"]) == 2.0 ** 15 and int(halved["good"]) == 0
    floor = _LossScale.next({"scale": jnp.asarray(1.0), "good": jnp.asarray(3)}, jnp.asarray(False))
    assert float(floor["scale"]) == 1.0
    kept = _LossScale.next({"scale": jnp.asarray(8.0), "good": jnp.asarray(3)}, jnp.asarray(True))
    assert float(kept["scale"]) == 8.0 and int(kept["good"]) == 4


def test_one_micro_batch_and_two_halves_make_the_same_update():
    """_train_step on (1, 4, T) (no scan) and on (2, 2, T) (the scan adds the second micro-batch): the same mean
    loss and the same updated weights (no dropout), within float32 rounding."""
    import jax
    import jax.numpy as jnp
    import optax

    from gpt2.common.config import GPT2Config
    from gpt2.flax import FlaxGPT2LMHeadModel
    from gpt2.flax.train import _train_step

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    model = FlaxGPT2LMHeadModel(config, seed=0)
    tx = optax.sgd(0.5)  # linear in the gradients (AdamW's first step turns rounding-sized ones into lr-sized steps)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(4, 16)), jnp.int32)
    results = []
    for micro in (ids[None], ids.reshape(2, 2, 16)):
        params = jax.tree.map(jnp.copy, model.params)
        step = _train_step(model, tx, seed=0)
        params, _, loss = step(params, jax.jit(tx.init)(params), micro, jnp.asarray(0, jnp.int32))
        results.append((float(loss), params))
    (loss_one, one), (loss_two, two) = results
    assert abs(loss_one - loss_two) < 1e-6
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
