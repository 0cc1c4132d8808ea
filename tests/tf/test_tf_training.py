"""Keras training: compile() without a loss trains on the model's own loss (the batches carry labels), fit lowers
it, evaluate reports it, the gradients equal our PyTorch model's on the same batch, and a tf.distribute strategy
trains the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf, requires_torch]

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

CFG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, num_labels=3,
           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: runs are comparable
IDS = np.array([[1, 5, 9, 2, 7, 30, 4, 4], [3, 3, 40, 8, 11, 12, 0, 0]], dtype=np.int32)
MASK = np.array([[1] * 8, [1] * 6 + [0] * 2], dtype=np.int32)
LABELS = np.where(MASK == 1, IDS, -100)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Our torch LM with random weights, saved: every test here starts from the same weights."""
    import gpt2.torch as pt
    from gpt2.common.config import GPT2Config

    torch.manual_seed(0)
    model = pt.GPT2LMHeadModel(GPT2Config(**CFG))
    folder = tmp_path_factory.mktemp("lm")
    model.save_pretrained(folder)
    return folder


def _dataset(repeat: int = 1):
    data = {"input_ids": np.tile(IDS, (repeat, 1)), "attention_mask": np.tile(MASK, (repeat, 1)),
            "labels": np.tile(LABELS, (repeat, 1))}
    return tf.data.Dataset.from_tensor_slices(data).batch(2)


def test_gradients_equal_torchs(checkpoint):
    """d loss / d weight on one batch with padding and ignored labels, every weight, against our torch model."""
    import gpt2.torch as pt
    from gpt2.tf import TFGPT2LMHeadModel, weights
    from gpt2.torch.weights import CONV1D, canonical_name

    torch_model = pt.GPT2LMHeadModel.from_pretrained(checkpoint).train()
    out = torch_model(input_ids=torch.tensor(IDS).long(), attention_mask=torch.tensor(MASK),
                      labels=torch.tensor(LABELS).long())
    out.loss.backward()
    reference = {}
    for name, p in torch_model.named_parameters():
        cname = canonical_name(torch_model, name)
        reference[cname] = (p.grad.T if CONV1D.search(cname) else p.grad).numpy()

    model = TFGPT2LMHeadModel.from_pretrained(checkpoint)
    found = weights.variables(model)
    with tf.GradientTape() as tape:
        loss = model(input_ids=tf.constant(IDS), attention_mask=tf.constant(MASK), labels=tf.constant(LABELS),
                     training=True).loss
    np.testing.assert_allclose(float(loss), float(out.loss), atol=1e-5, rtol=0)
    grads = tape.gradient(loss, [var for _, var, _ in found.values()])
    assert found.keys() == reference.keys()
    for (cname, (_, _, transposed)), grad in zip(found.items(), grads):
        grad = np.asarray(tf.convert_to_tensor(grad))  # wte's gradient is IndexedSlices (a gather), made dense
        np.testing.assert_allclose(grad.T if transposed else grad, reference[cname], atol=1e-4, rtol=1e-4,
                                   err_msg=cname)


def test_fit_without_a_loss_lowers_the_models_loss_and_evaluate_reports_it(checkpoint):
    from gpt2.tf import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel.from_pretrained(checkpoint)
    first = float(model(input_ids=tf.constant(IDS), attention_mask=tf.constant(MASK),
                        labels=tf.constant(LABELS)).loss)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    np.testing.assert_allclose(model.evaluate(_dataset(), verbose=0), first, rtol=1e-5)
    history = model.fit(_dataset(repeat=2), epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] < first + 1e-3, losses
    after = float(model(input_ids=tf.constant(IDS), attention_mask=tf.constant(MASK),
                        labels=tf.constant(LABELS)).loss)
    np.testing.assert_allclose(model.evaluate(_dataset(), verbose=0), after, rtol=1e-5)
    assert after < first
    logits = model.predict(_dataset(), verbose=0)["logits"]
    assert logits.shape == (2, 8, 50)


def test_a_keras_loss_given_to_compile_reads_labels_from_the_batch(checkpoint):
    """(inputs, labels) batches with a Keras loss on the logits, as with any Keras model: token classification."""
    from gpt2.tf import TFGPT2ForTokenClassification

    model = TFGPT2ForTokenClassification.from_pretrained(checkpoint)
    labels = (IDS % 3).astype(np.int32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x={"input_ids": IDS}, y=labels, batch_size=2, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_batches_without_labels_are_a_clear_error(checkpoint):
    from gpt2.tf import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel.from_pretrained(checkpoint)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="no loss to train on"):
        model.fit(tf.data.Dataset.from_tensor_slices({"input_ids": IDS}).batch(2), verbose=0)


def test_fit_under_a_mirrored_strategy(checkpoint):
    """MirroredStrategy on this machine's one CPU: variables made and trained in the strategy's scope."""
    from gpt2.tf import TFGPT2LMHeadModel

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = TFGPT2LMHeadModel.from_pretrained(checkpoint)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = model.fit(_dataset(repeat=2), epochs=3, verbose=0).history["loss"]
    assert losses[-1] < losses[0]


SCRIPT = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from gpt2.tf import TFGPT2LMHeadModel
ids = np.array({ids}, dtype=np.int32)
data = tf.data.Dataset.from_tensor_slices({{"input_ids": ids, "labels": ids}}).batch(4)
losses = {{}}
for n in (1, 2):
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{{i}}" for i in range(n)])
    with strategy.scope():
        model = TFGPT2LMHeadModel.from_pretrained({folder!r})
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    losses[n] = model.fit(data, epochs=3, verbose=0).history["loss"]
print("LOSSES", losses[1], losses[2])
"""


def test_two_replicas_train_as_one(checkpoint):
    """Two logical CPU devices (a fresh process: TensorFlow fixes its devices when first used): the replicas'
    gradients are summed after each replica's loss is divided by the replica count, so two replicas on two halves
    of each batch take the same steps as one replica on the whole batch (equal-sized halves, all labels counted)."""
    ids = np.tile(IDS[:1, :6], (4, 1)) + np.arange(4)[:, None]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT).format(ids=ids.tolist(),
                                                                                folder=str(checkpoint))],
                          capture_output=True, text=True, env=env, timeout=300)
    line = next((x for x in done.stdout.splitlines() if x.startswith("LOSSES")), None)
    assert line is not None, done.stderr[-3000:]
    one, two = _parse(line)
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert one[-1] < one[0]


def _parse(line: str):
    body = line.removeprefix("LOSSES ").strip()
    first, second = body.split("] [")
    return (np.array([float(x) for x in first.strip("[]").split(",")]),
            np.array([float(x) for x in second.strip("[]").split(",")]))
