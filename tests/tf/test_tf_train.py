"""gpt2/tf/train.py: Keras fit training on a small real text (tests/data/genesis.txt) with a tiny model: the loss
falls, --resume gives the losses of an uninterrupted run bit for bit (dropout on, gradient accumulation), the dropout
seed states are what makes it so, the final model loads in our torch model with equal logits, the schedule is
common's, weight decay only where common.decays says, bad input refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf]

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

DATA = Path(__file__).resolve().parent.parent / "data" / "genesis.txt"
CONFIG = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 50257}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A copy of the text (its token file is made beside it, once for the module) and a tiny config file."""
    folder = tmp_path_factory.mktemp("tfdata")
    shutil.copy(DATA, folder / "genesis.txt")
    (folder / "tiny.json").write_text(json.dumps(CONFIG))
    return folder


def _options(setup, out, **extra):
    return dict(data=str(setup / "genesis.txt"), config=str(setup / "tiny.json"), out=str(out), batch_size=4,
                block_size=32, lr=1e-2, warmup=2, eval_batches=2, log_every=1, progress=False, **extra)


def _losses(out) -> dict[int, float]:
    from gpt2.common.training import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """12 updates of 2 micro-batches each, dropout on (the config's 0.1), a checkpoint every 6."""
    from gpt2.tf.train import train

    out = setup / "full"
    summary = train(**_options(setup, out, steps=12, grad_accum=2, save_every=6, eval_every=6))
    return out, summary


def test_the_loss_falls_and_the_run_folder_is_complete(setup, uninterrupted):
    out, summary = uninterrupted
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 13))
    assert losses[1] > np.log(50257) - 0.5  # a new model starts near chance
    assert np.mean([losses[s] for s in (10, 11, 12)]) < losses[1] - 1.0, losses
    assert summary["step"] == 12 and summary["loss"] == pytest.approx(losses[12])
    assert summary["eval_loss"] < losses[1] - 1.0
    assert summary["perplexity"] == pytest.approx(np.exp(summary["eval_loss"]))
    assert summary["out"] == str(out)
    for name in ("model.safetensors", "config.json", "trainer_state.json", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    checkpoint = out / "checkpoint-6"
    assert (checkpoint / "optimizer.npz").is_file() and (checkpoint / "model.safetensors").is_file()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["framework"] == "tf"
    assert len(state["rng"]["keras_seed_generators"]) == 7  # the dropout layers: embeddings + 3 per block


def _resume_from_checkpoint(setup, full, name, edit_state=None):
    """A run folder holding only the uninterrupted run's checkpoint-6 and metrics, continued with --resume."""
    from gpt2.tf.train import train

    out = setup / name
    out.mkdir()
    shutil.copytree(full / "checkpoint-6", out / "checkpoint-6")
    shutil.copy(full / "metrics.jsonl", out / "metrics.jsonl")
    if edit_state is not None:
        path = out / "checkpoint-6" / "trainer_state.json"
        path.write_text(json.dumps(edit_state(json.loads(path.read_text()))))
    summary = train(**_options(setup, out, steps=12, grad_accum=2, save_every=6, eval_every=6, resume=True))
    return out, summary


def test_resume_gives_the_uninterrupted_losses_exactly(setup, uninterrupted):
    full, summary = uninterrupted
    out, resumed = _resume_from_checkpoint(setup, full, "resumed")
    expected, got = _losses(full), _losses(out)
    assert sorted(got) == list(range(1, 13))
    assert [got[s] for s in range(7, 13)] == [expected[s] for s in range(7, 13)]  # float equality
    assert resumed["eval_loss"] == summary["eval_loss"]
    a = _safetensors(full / "model.safetensors")
    b = _safetensors(out / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_dropout_seed_states_are_what_makes_resume_exact(setup, uninterrupted):
    """The same resume with the saved Keras SeedGenerator states shifted: other dropout masks, other losses."""
    full, _ = uninterrupted

    def shift(state):
        state["rng"]["keras_seed_generators"] = [[a + 1, b] for a, b in state["rng"]["keras_seed_generators"]]
        return state

    out, _ = _resume_from_checkpoint(setup, full, "other-seeds", shift)
    expected, got = _losses(full), _losses(out)
    assert got[6] == expected[6]
    assert all(got[s] != expected[s] for s in range(7, 13))


@requires_torch
def test_the_trained_model_loads_in_torch_with_equal_logits(uninterrupted):
    import torch

    import gpt2.torch as pt
    from gpt2.tf import TFGPT2LMHeadModel

    out, _ = uninterrupted
    ids = np.array([[464, 995, 318, 257, 1332, 13, 383, 1110]], dtype=np.int32)
    ours = TFGPT2LMHeadModel.from_pretrained(out)(input_ids=tf.constant(ids)).logits.numpy()
    theirs = pt.GPT2LMHeadModel.from_pretrained(out).eval()(input_ids=torch.tensor(ids).long()).logits
    np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=1e-4, rtol=1e-4)


def _safetensors(path):
    from safetensors.numpy import load_file

    return load_file(path)


def test_the_keras_schedule_is_commons_at_every_update():
    from gpt2.common.training import Schedule
    from gpt2.tf.train import _WarmupCosine

    for warmup, total in ((3, 20), (0, 7), (5, 5)):
        common = Schedule(peak=1e-3, warmup=warmup, total=total, final=1e-4)
        keras_schedule = _WarmupCosine(1e-3, warmup, total, 1e-4)
        for update in range(total + 3):
            np.testing.assert_allclose(float(keras_schedule(update)), common(update), rtol=2e-6, atol=1e-12,
                                       err_msg=f"update {update}")
        clone = _WarmupCosine.from_config(keras_schedule.get_config())
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(keras_schedule))
        assert float(clone(5)) == float(again(5)) == float(keras_schedule(5))


def test_one_keras_step_per_update_equals_the_micro_batches_own_mean_gradient(setup):
    """_UpdateStep on a [B, A, T] batch: one apply_gradients with the mean of the A micro-batches' gradients of the
    model's loss (dropout off), one optimizer iteration, and the update's mean loss in the tracker."""
    from gpt2.common.config import GPT2Config
    from gpt2.tf import TFGPT2LMHeadModel
    from gpt2.tf.train import _UpdateStep

    config = GPT2Config(**{**CONFIG, "vocab_size": 64}, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ids = np.random.default_rng(0).integers(0, 64, size=(3, 4, 8)).astype(np.int32)  # [B, A, T]
    model = TFGPT2LMHeadModel(config)
    model.build()
    start = [v.numpy() for v in model.trainable_variables]
    # the expected gradient: each micro-batch on its own, then the mean
    expected, losses = None, []
    for a in range(4):
        with tf.GradientTape() as tape:
            loss = model(input_ids=ids[:, a], labels=ids[:, a], training=True).loss
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)]
        expected = grads if expected is None else [e + g for e, g in zip(expected, grads)]
        losses.append(float(loss))
    expected = [e / 4 for e in expected]
    seen = {}

    class Recording(keras.optimizers.SGD):
        def apply_gradients(self, grads_and_vars):
            grads_and_vars = list(grads_and_vars)
            seen["grads"] = [g for g, _ in grads_and_vars]
            return super().apply_gradients(grads_and_vars)

    model.compile(optimizer=Recording(learning_rate=0.5), run_eagerly=True)  # the recorded gradients as values
    model.train_step = _UpdateStep(model, 4)
    history = model.fit(tf.data.Dataset.from_tensors({"input_ids": ids}), epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations) == 1
    for got, want, var, before in zip(seen["grads"], expected, model.trainable_variables, start):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6, err_msg=var.path)
        np.testing.assert_allclose(var.numpy(), before - 0.5 * want, rtol=1e-4, atol=1e-6, err_msg=var.path)
    assert abs(history.history["loss"][0] - np.mean(losses)) < 1e-5


def test_weight_decay_only_where_common_decays_says():
    from gpt2.common.config import GPT2Config
    from gpt2.common.training import Schedule, decays
    from gpt2.tf import TFGPT2LMHeadModel, weights
    from gpt2.tf.train import _optimizer

    for tied in (True, False):
        model = TFGPT2LMHeadModel(GPT2Config(**{**CONFIG, "vocab_size": 60}, tie_word_embeddings=tied))
        model.build()
        run = SimpleNamespace(args=SimpleNamespace(weight_decay=0.1, beta1=0.9, beta2=0.95,
                                                   eps=1e-8, clip=1.0),
                              schedule=Schedule(peak=1e-3, warmup=1, total=10, final=1e-4))
        optimizer = _optimizer(run, model)
        found = weights.variables(model)
        assert len(found) == len(model.trainable_variables)
        decayed = sorted(c for c, (_, var, _) in found.items() if optimizer._use_weight_decay(var))
        assert decayed == sorted(c for c in found if decays(c))
        assert ("lm_head.weight" in decayed) is (not tied)
        assert "transformer.h.0.attn.c_attn.weight" in decayed and "transformer.wte.weight" not in decayed


def test_bad_input_is_refused(setup, tmp_path):
    from gpt2.tf.train import train

    with pytest.raises(ValueError, match="framework='torch'"):
        train(framework="torch", **_options(setup, tmp_path / "a", steps=1))
    with pytest.raises(TypeError, match="learning_rate"):
        train(learning_rate=1e-3, **_options(setup, tmp_path / "b", steps=1))
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(ValueError, match="--precision fp16 needs a GPU"):
            train(precision="fp16", **_options(setup, tmp_path / "c", steps=1))
    with pytest.raises(TypeError, match="tf.distribute.Strategy"):
        train(strategy="mirrored", **_options(setup, tmp_path / "d", steps=1))


def test_a_damaged_optimizer_state_is_refused_by_name(setup, uninterrupted):
    from gpt2.tf.train import train

    full, _ = uninterrupted
    out = setup / "damaged"
    out.mkdir()
    shutil.copytree(full / "checkpoint-6", out / "checkpoint-6")
    np.savez(out / "checkpoint-6" / "optimizer.npz", **{"0": np.zeros(1)})
    with pytest.raises(ValueError, match=r"optimizer\.npz holds 1 optimizer variables"):
        train(**_options(setup, out, steps=12, grad_accum=2, save_every=6, resume=True))
    assert (out / "checkpoint-6" / "model.safetensors").is_file()  # nothing lost


def test_fp16_loss_scaling_trains_resumes_exactly_and_skips_overflowing_updates(setup, uninterrupted, monkeypatch):
    """--precision fp16's mechanics, run on the CPU (TensorFlow runs mixed_float16 there; FP16_DEVICES offers fp16
    on a GPU only, because a CPU emulates fp16 products slowly): the loss falls as in the fp32 run, the
    LossScaleOptimizer's scale is in every checkpoint and --resume restores it (the resumed run equals the
    uninterrupted one), and an update whose scaled gradients overflow is skipped (a checkpoint's scale set to
    2**40)."""
    import gpt2.tf.train as trainer

    monkeypatch.setattr(trainer, "FP16_DEVICES", frozenset({"GPU", "CPU"}))
    common = dict(grad_accum=2, save_every=6, eval_every=6, precision="fp16")
    trainer.train(**_options(setup, setup / "fp16", steps=12, **common))
    fp16, fp32 = _losses(setup / "fp16"), _losses(uninterrupted[0])
    assert sorted(fp16) == list(range(1, 13))
    for step in range(1, 7):  # fp16 products at lr 1e-2: the runs drift apart slowly (0.05 nats by update 12)
        assert fp16[step] == pytest.approx(fp32[step], abs=0.03), (fp16, fp32)
    assert np.mean([fp16[s] for s in (10, 11, 12)]) < fp16[1] - 1.0
    with np.load(setup / "fp16" / "checkpoint-6" / trainer.OPTIMIZER_FILE) as npz:
        state = {k: npz[k] for k in npz.files}
    scale = next(i for i, v in enumerate(trainer_variables(trainer, setup)) if v.endswith("/dynamic_scale"))
    assert float(state[str(scale)]) == 32768.0  # Keras' initial scale: no overflow in 6 updates

    def resume(name, steps, edit=None):
        out = setup / name
        out.mkdir()
        shutil.copytree(setup / "fp16" / "checkpoint-6", out / "checkpoint-6")
        shutil.copy(setup / "fp16" / "metrics.jsonl", out / "metrics.jsonl")
        if edit is not None:
            np.savez(out / "checkpoint-6" / trainer.OPTIMIZER_FILE, **edit(dict(state)))
        trainer.train(**_options(setup, out, steps=steps, resume=True, **common))
        return out

    resumed = resume("fp16-resumed", 12)
    assert [_losses(resumed)[s] for s in range(7, 13)] == [fp16[s] for s in range(7, 13)]
    skipped = resume("fp16-skipped", 7, lambda s: {**s, str(scale): np.asarray(2.0 ** 40, np.float32)})
    before = _safetensors(setup / "fp16" / "checkpoint-6" / "model.safetensors")
    for folder, moved in ((skipped, False), (resumed, True)):
        after = _safetensors(folder / "model.safetensors")
        assert (not all(np.array_equal(before[k], after[k]) for k in before)) is moved, folder


def trainer_variables(trainer, setup) -> list[str]:
    """The paths of the fp16 trainer's optimizer variables, in save_own_variables' order."""
    from gpt2.common.training import Run, TrainArgs

    run = Run(TrainArgs(framework="tf", **_options(setup, setup / "paths", steps=4, precision="fp16")))
    model = trainer._model(run, trainer._policy("fp16"))
    optimizer = trainer._optimizer(run, model)
    model.compile(optimizer=optimizer)
    model.optimizer.build(model.trainable_variables)
    return [v.path for v in model.optimizer.variables]


def test_bf16_is_mixed_precision(setup, uninterrupted):
    """mixed_bfloat16: the first loss (before any update: the same weights, data and dropout seeds as the float32
    run) is close to float32's but not equal; the saved weights are float32."""
    from gpt2.tf.train import train

    out = setup / "bf16"
    summary = train(**_options(setup, out, steps=2, grad_accum=2, save_every=0, eval_every=0, precision="bf16"))
    first, reference = _losses(out)[1], _losses(uninterrupted[0])[1]
    assert first != reference and abs(first - reference) < 0.05
    assert np.isfinite(summary["eval_loss"])
    assert {a.dtype for a in _safetensors(out / "model.safetensors").values()} == {np.dtype("float32")}
