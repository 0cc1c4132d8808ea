"""gpt2/tf/train.py under tf.distribute.MirroredStrategy with 2 logical CPU devices (made before TensorFlow starts:
a subprocess): the same updates give the one-device losses, with gradient clipping on, with --grad-accum 2 and with
fp16's loss scaling (each replica takes half of every micro-batch of common's global batch; the gradients are
averaged over the replicas before the clip)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_tf

pytestmark = [requires_tf]

DATA = Path(__file__).resolve().parent.parent / "data" / "genesis.txt"
ROOT = Path(__file__).resolve().parent.parent.parent

SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from gpt2.common.training import read_metrics
import gpt2.tf.train as trainer
from gpt2.tf.train import train

trainer.FP16_DEVICES = frozenset({"GPU", "CPU"})  # fp16's loss scaling under the strategy, run on the CPU

folder = sys.argv[1]
options = dict(data=folder + "/genesis.txt", config=folder + "/tiny.json", batch_size=4, block_size=32, lr=3e-3,
               warmup=2, steps=8, clip=0.5, eval_every=4, save_every=0, eval_batches=2, log_every=1, progress=False)
result = {}
for n, accumulation, precision in ((1, 1, "fp32"), (2, 1, "fp32"), (1, 2, "fp32"), (2, 2, "fp32"), (1, 2, "fp16"),
                                   (2, 2, "fp16")):
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(n)])
    name = f"{n}x{accumulation}" + ("-fp16" if precision == "fp16" else "")
    summary = train(strategy=strategy, out=f"{folder}/{name}", grad_accum=accumulation, precision=precision,
                    **options)
    result[name] = {"losses": [r["loss"] for r in read_metrics(f"{folder}/{name}/metrics.jsonl") if "loss" in r],
                    "eval_loss": summary["eval_loss"]}
try:
    train(strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), out=folder + "/odd",
          **{**options, "batch_size": 3})
    result["odd"] = None
except ValueError as e:
    result["odd"] = str(e)
print("RESULT " + json.dumps(result))
"""


def test_two_replicas_reach_the_one_device_losses(tmp_path):
    shutil.copy(DATA, tmp_path / "genesis.txt")
    (tmp_path / "tiny.json").write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32,
                                                    "vocab_size": 50257, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                                    "attn_pdrop": 0.0}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    for setting in ("1", "2", "2-fp16"):
        one, two = result[f"1x{setting}"], result[f"2x{setting}"]
        assert len(one["losses"]) == len(two["losses"]) == 8
        # The same weights and batches, summation order aside, at every update. (Keras 3 alone clips each replica's
        # half of the gradient before its all-reduce: that drifted 4e-3 nats from the one-device run in 8 updates.)
        for a, b in zip(one["losses"], two["losses"]):
            assert abs(a - b) < 2e-5, (setting, one["losses"], two["losses"])
        assert abs(one["eval_loss"] - two["eval_loss"]) < 2e-5
        assert one["losses"][-1] < one["losses"][0] - 0.2
    assert result["1x1"]["losses"] != result["1x2"]["losses"]  # other batches: the accumulation was not ignored
    assert result["1x2"]["losses"] != result["1x2-fp16"]["losses"]  # float16 products
    assert "--batch-size 3 does not divide over 2 devices" in result["odd"]
