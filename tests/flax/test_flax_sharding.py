"""gpt2/flax/sharding.py: a model on a Mesh gives one device's results.

The sharded checks need several devices, which JAX creates on a CPU only from
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` read when it starts: they run in ONE subprocess (the script
below, started once per module) that prints its measures as JSON, so the rest of the suite keeps one device. The
weights come from transformers' PyTorch GPT-2 (the test-only oracle) through the canonical arrays. The few checks
that need no second device run here in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_flax, requires_torch, requires_transformers

pytestmark = [requires_flax, requires_torch, requires_transformers]

ROOT = Path(__file__).resolve().parents[2]
MESHES = [(2, 2), (1, 4), (4, 1)]  # (data, model)

SCRIPT = textwrap.dedent(r'''
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import numpy as np, jax, jax.numpy as jnp, torch, transformers
    from flax import nnx
    from gpt2.common.config import GPT2Config
    from gpt2.flax import sharding as S
    from gpt2.flax.cache import KVCache
    from gpt2.flax import FlaxGPT2LMHeadModel
    from gpt2.flax.weights import load_canonical

    assert len(jax.devices()) == 4, jax.devices()
    MESHES = json.loads(sys.argv[1])
    # n_head and n_embd divide by 4 (every mesh axis here); scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn
    # on, so the flags' code runs sharded too
    BASE = dict(n_layer=2, n_embd=16, n_head=4, vocab_size=50, n_positions=32, scale_attn_by_inverse_layer_idx=True,
                reorder_and_upcast_attn=True, bos_token_id=0, eos_token_id=49, pad_token_id=49)
    torch.manual_seed(0)
    oracle = transformers.GPT2LMHeadModel(transformers.GPT2Config(**BASE, attn_implementation="eager")).eval()
    state = {k: v.detach().numpy().copy() for k, v in oracle.state_dict().items()
             if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"}  # tied

    def build(**overrides):
        model = FlaxGPT2LMHeadModel(GPT2Config(**{**BASE, **overrides}))
        weights = dict(state)
        if not model.config.tie_word_embeddings:
            weights["lm_head.weight"] = state["transformer.wte.weight"][::-1].copy()
        missing, unused = load_canonical(model, weights)
        assert not missing and not unused, (missing, unused)
        return model

    rng = np.random.default_rng(0)
    B, T = 4, 8
    ids = rng.integers(0, 50, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, :3] = 0  # left padding in two rows
    mask[3, :1] = 0
    pos = np.maximum(mask.cumsum(-1) - 1, 0).astype(np.int32)
    nxt = rng.integers(0, 50, (B, 1)).astype(np.int32)
    mask2 = np.concatenate([mask, np.ones((B, 1), np.int32)], 1)
    pos2 = pos[:, -1:] + 1

    def diff(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

    def split(array):
        """The mesh axes each dimension of ``array`` is split over (axes of size 1 split nothing: None)."""
        sharding = array.sharding
        if not isinstance(sharding, jax.sharding.NamedSharding):
            return [None] * array.ndim
        spec = list(sharding.spec) + [None] * (array.ndim - len(sharding.spec))
        return [a if a is not None and sharding.mesh.shape[a] > 1 else None for a in spec]

    def run(model, shard=lambda *a: a, cache_place=lambda c: c, every_decoder=True):
        """Every measure on ``model`` (placed or not): a dict of numpy arrays."""
        x_ids, x_mask, x_pos, x_nxt, x_mask2, x_pos2 = shard(ids, mask, pos, nxt, mask2, pos2)
        out = {}
        first = model(x_ids, attention_mask=x_mask, position_ids=x_pos, use_cache=True)
        out["eager"] = first.logits
        out["eager_step"] = model(x_nxt, attention_mask=x_mask2, position_ids=x_pos2,
                                  past_key_values=first.past_key_values).logits

        @nnx.jit
        def with_cache(model, i, m, p, cache):  # a static cache written at its length, inside jit
            o = model(i, attention_mask=m, position_ids=p, past_key_values=cache_place(cache))
            return o.logits, o.past_key_values
        static = cache_place(KVCache.for_model(model, B, T + 4))
        h1, static = with_cache(model, x_ids, x_mask, x_pos, static)
        h2, static = with_cache(model, x_nxt, x_mask2, x_pos2, static)
        out["jit_static_cache"], out["jit_static_step"] = h1, h2
        out["cache"] = split(static.keys[0])

        @nnx.jit
        def grads(model, i, m, p):  # what an optax step differentiates
            def loss(model):
                return model(i, attention_mask=m, position_ids=p, labels=i).loss
            return nnx.grad(loss)(model)
        g = grads(model, x_ids, x_mask, x_pos)
        out["grads"] = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(g)])
        # generate(): its compiled prefill and loop take the (sharded) weights as arguments; the prompt from the host
        out["greedy"] = model.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12).sequences
        if not every_decoder:  # sampling and beam search once (2x2): each is two more compilations
            return out
        out["sampled"] = model.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
                                        do_sample=True, top_k=20, prng_key=jax.random.key(3)).sequences
        out["beams"] = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=2).sequences
        return out

    # generate()'s compiled functions, watched: the cache layout their outputs carry (the prefill's state, the loop's)
    from gpt2.flax import generation as G
    layouts = {}
    real_function = G._function

    def watched(model, key, build_function):
        function = real_function(model, key, build_function)

        def call(*args):
            out = function(*args)
            if key[0] == "prefill":
                layouts.setdefault("prefill", split(out[1][0][0]))
            elif key[0] == "sample":
                layouts.setdefault("loop", split(out.state[0][0]))
            return out
        return call

    G._function = watched
    reference = run(build())
    with torch.no_grad():
        theirs = oracle(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
        their_tokens = oracle.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                       max_new_tokens=12, min_new_tokens=12, do_sample=False).numpy()
    keep = mask.astype(bool)  # padding positions' states are not compared with transformers (both are arbitrary)
    report = {"one_device_vs_transformers": diff(np.asarray(reference["eager"])[keep], theirs[keep]),
              "greedy_as_transformers": bool(np.array_equal(np.asarray(reference["greedy"]), their_tokens)),
              "meshes": {}}
    TOKENS = ("greedy", "sampled", "beams")
    for data, model_axis in MESHES:
        mesh = S.make_mesh(data=data, model=model_axis)
        model = S.shard_model(build(), mesh)
        layouts.clear()
        got = run(model, shard=lambda *a: S.shard_batch(mesh, *a), cache_place=lambda c: S.shard_cache(c, mesh),
                  every_decoder=(data, model_axis) == (2, 2))
        r = {name: diff(got[name], reference[name]) for name in reference if name not in ("cache",) + TOKENS}
        r.update({name: bool(np.array_equal(np.asarray(got[name]), np.asarray(reference[name])))
                  for name in TOKENS if name in got})
        value = lambda p: p.get_value()
        r["kernel"] = split(value(model.transformer.h[0].attn.c_attn.kernel))
        r["c_proj"] = split(value(model.transformer.h[0].mlp.c_proj.kernel))
        r["wte"] = split(value(model.transformer.wte.embedding))
        r["ln"] = split(value(model.transformer.ln_f.scale))
        r["devices"] = len(value(model.transformer.h[0].attn.c_attn.kernel).sharding.device_set)
        r["output"] = split(got["eager"])
        r["cache"] = got["cache"]
        r["generate_cache"] = dict(layouts)
        r["model_mesh"] = S.model_mesh(model) == mesh
        report["meshes"][f"{data}x{model_axis}"] = r
    # an untied lm_head (split by its C rows like the embeddings), once
    mesh = S.make_mesh(data=2, model=2)
    untied = build(tie_word_embeddings=False)
    want = untied(ids, attention_mask=mask, position_ids=pos).logits
    S.shard_model(untied, mesh)
    x = S.shard_batch(mesh, ids, mask, pos)
    report["untied"] = {"logits": diff(untied(x[0], attention_mask=x[1], position_ids=x[2]).logits, want),
                        "lm_head": split(untied.lm_head.kernel.get_value())}

    errors = {}
    def refused(name, fn):
        try:
            fn()
        except (ValueError, TypeError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
        else:
            errors[name] = "no error"
    odd = FlaxGPT2LMHeadModel(GPT2Config(**{**BASE, "n_inner": 18}))
    refused("n_inner=18 on model=4", lambda: S.shard_model(odd, S.make_mesh(data=1, model=4)))
    errors["odd model left on one device"] = len(odd.transformer.h[0].mlp.c_fc.kernel.get_value().devices())
    refused("6 devices", lambda: S.make_mesh(data=3, model=2))
    refused("batch 3 on data=2", lambda: S.shard_batch(S.make_mesh(data=2, model=2), ids[:3]))
    report["errors"] = errors
    print("RESULT " + json.dumps(report))
''')


@pytest.fixture(scope="module")
def sharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "USE_TF": "0", "USE_FLAX": "0",  # transformers' PyTorch classes only: no TensorFlow import
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(MESHES)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"the 4-device script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_one_device_reference_matches_transformers(sharded):
    assert sharded["one_device_vs_transformers"] < 1e-4
    assert sharded["greedy_as_transformers"]


def test_untied_lm_head_sharded(sharded):
    assert sharded["untied"]["logits"] < 1e-5 and sharded["untied"]["lm_head"] == ["model", None], sharded["untied"]


MEASURES = ["eager", "eager_step", "jit_static_cache", "jit_static_step", "grads"]
TOKENS = ["greedy", "sampled", "beams"]


@pytest.mark.parametrize("data,model", MESHES)
def test_sharded_equals_one_device(sharded, data, model):
    r = sharded["meshes"][f"{data}x{model}"]
    for name in MEASURES:
        assert r[name] < 1e-5, f"mesh data={data} model={model}: {name} differs by {r[name]}"
    assert r["greedy"], f"mesh data={data} model={model}: greedy generate() gives other tokens than one device"
    for name in TOKENS if (data, model) == (2, 2) else ():
        assert r[name], f"mesh data={data} model={model}: {name} generate() gives other tokens than one device"


@pytest.mark.parametrize("data,model", MESHES)
def test_weights_inputs_and_cache_placed_by_annotation(sharded, data, model):
    r = sharded["meshes"][f"{data}x{model}"]
    d = "data" if data > 1 else None  # an axis of size 1 splits nothing
    m = "model" if model > 1 else None
    assert r["devices"] == 4 and r["model_mesh"], r
    assert r["kernel"] == [None, m] and r["c_proj"] == [m, None] and r["wte"] == [None, m], r  # Megatron; C split
    assert r["ln"] == [None], r  # LayerNorm replicated
    assert r["output"][0] == d, r  # the batch stays split over "data"
    assert r["cache"] == [d, m, None, None], r  # the static cache kept as shard_cache laid it out: batch x heads
    # generate(): the prompt's batch over "data", the cache laid out by shard_cache in the prefill and the loop
    assert r["generate_cache"] == {"prefill": [d, m, None, None], "loop": [d, m, None, None]}, r


def test_refusals(sharded):
    e = sharded["errors"]
    odd = e["n_inner=18 on model=4"]
    assert odd.startswith("ValueError") and "'transformer.h.0.mlp.c_fc." in odd and "'model' of size 4" in odd, e
    assert e["odd model left on one device"] == 1  # every check runs before anything moves
    assert e["6 devices"].startswith("ValueError") and "4 available" in e["6 devices"], e
    assert e["batch 3 on data=2"].startswith("ValueError") and "(3, 8)" in e["batch 3 on data=2"], e


# -- one device (in-process) --------------------------------------------------------------------------------------
def test_one_device_mesh_is_the_identity():
    import jax
    from flax import nnx

    from gpt2.common.config import GPT2Config
    from gpt2.flax import sharding as S
    from gpt2.flax.model import FlaxGPT2Model

    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=7)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    model = FlaxGPT2Model(config)
    before = np.asarray(model(ids).last_hidden_state)
    mesh = S.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "model": len(jax.devices())}
    S.shard_model(model, mesh)
    assert S.model_mesh(model) == mesh and S.model_mesh(FlaxGPT2Model(config)) is None
    np.testing.assert_allclose(np.asarray(model(S.shard_batch(mesh, ids)).last_hidden_state), before, atol=1e-6)
    shardings = S.param_shardings(model, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(nnx.state(model))


def test_bad_arguments_refused():
    from gpt2.common.config import GPT2Config
    from gpt2.flax import sharding as S
    from gpt2.flax.model import FlaxGPT2Model

    for bad in (dict(data=0), dict(data=True), dict(data=1, model=-1), dict(data=1.5)):
        with pytest.raises(ValueError, match="positive int"):
            S.make_mesh(**bad)
    model = FlaxGPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=7))
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        S.shard_model(model, "data")
    with pytest.raises(ValueError, match="batch"):
        S.shard_batch(S.make_mesh(), np.int32(3))
