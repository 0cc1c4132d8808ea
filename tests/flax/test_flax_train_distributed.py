"""gpt2/flax/train.py on a Mesh of 4 host CPU devices: the batch split over "data" (4x1) gives one device's losses
within 1e-5 (dropout and gradient accumulation on), and with --precision fp16 one device's fp16 losses; a batch
that does not divide over the data axis is refused by name. (A "model" axis runs the same step -- a 2x2 mesh passed too -- but a third compiled run would take this file
past its time budget on a 2-core machine; tests/flax/test_flax_sharding.py checks the 2x2 gradients.)

JAX makes several CPU devices only from ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` read when it starts,
so the runs happen in ONE subprocess (the script below) that prints its measures as JSON, as
tests/flax/test_flax_sharding.py does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import requires_flax

pytestmark = requires_flax

ROOT = Path(__file__).resolve().parents[2]
GENESIS = ROOT / "tests" / "data" / "genesis.txt"

SCRIPT = textwrap.dedent(r'''
    import json, sys, warnings
    from pathlib import Path
    warnings.simplefilter("ignore")
    import jax
    from gpt2.flax.sharding import make_mesh
    from gpt2.flax.train import train

    assert len(jax.devices()) == 4, jax.devices()
    data, work = sys.argv[1], Path(sys.argv[2])
    config = work / "tiny.json"
    config.write_text(json.dumps(dict(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=50257,
                                      resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)))
    options = dict(data=data, config=str(config), steps=4, batch_size=4, grad_accum=2, block_size=32, lr=2e-2,
                   warmup=1, eval_every=4, save_every=0, log_every=1, eval_batches=2, seed=3, progress=False)
    meshes = {"1": make_mesh(data=1, model=1, devices=jax.devices()[:1]), "4x1": make_mesh(data=4, model=1)}
    result = {}
    for name, mesh in meshes.items():
        summary = train(out=str(work / name), mesh=mesh, **options)
        result[name] = {"losses": summary["losses"], "eval_loss": summary["eval_loss"]}
    import gpt2.flax.train as trainer
    trainer.FP16_BACKENDS = frozenset({"gpu", "cpu"})  # fp16's mechanics on the CPU (offered on GPUs only)
    for name, mesh in meshes.items():
        summary = train(out=str(work / ("fp16-" + name)), mesh=mesh, **{**options, "precision": "fp16"})
        result["fp16-" + name] = {"losses": summary["losses"], "eval_loss": summary["eval_loss"]}
    try:
        train(out=str(work / "odd"), mesh=meshes["4x1"], **{**options, "batch_size": 6})
        result["odd"] = "trained"
    except ValueError as e:
        result["odd"] = str(e)
    result["odd_written"] = (work / "odd").exists()
    print("RESULT" + json.dumps(result))
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("mesh")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", USE_TF="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(GENESIS), str(work)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_a_data_parallel_mesh_reaches_the_single_device_losses(runs):
    mesh = "4x1"
    one, many = runs["1"], runs[mesh]
    assert one["losses"].keys() == many["losses"].keys() == {"1", "2", "3", "4"}
    for step, loss in one["losses"].items():
        assert abs(many["losses"][step] - loss) < 1e-5, (mesh, step, many["losses"][step], loss)
    assert abs(many["eval_loss"] - one["eval_loss"]) < 1e-5
    assert one["losses"]["4"] < one["losses"]["1"]


def test_fp16_loss_scaling_on_a_data_parallel_mesh_follows_one_device(runs):
    """--precision fp16 (float16 compute, the dynamic loss scale beside the optax state) on the 4x1 mesh: the
    finiteness check and the scale are one computation over the global gradients, so the mesh follows one device's
    fp16 losses, and both follow fp32."""
    one, many = runs["fp16-1"], runs["fp16-4x1"]
    for step, loss in one["losses"].items():
        assert abs(many["losses"][step] - loss) < 2e-4, (step, many["losses"][step], loss)
        assert abs(loss - runs["1"]["losses"][step]) < 2e-3, (step, loss, runs["1"]["losses"][step])
    assert abs(many["eval_loss"] - one["eval_loss"]) < 2e-4


def test_a_batch_that_does_not_divide_over_the_data_axis_is_refused(runs):
    assert "--batch-size 6 does not divide over 4 devices" in runs["odd"]
    assert not runs["odd_written"]
