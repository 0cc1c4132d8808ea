"""Flax models, side by side with transformers 4.57.6's Flax GPT-2 in one process, gpt2 (124M) shape, fp32, CPU.

Measured (median of --repeats runs after a warm-up, the same random weights in both: transformers'
FlaxGPT2LMHeadModel writes flax_model.msgpack, ours loads it with ``FlaxGPT2LMHeadModel.from_pretrained``):
- decode: greedy generate() of 64 new tokens after a 32-token prompt, batch 1, in ms per new token. transformers
  as its docs call it (``model.generate(ids, max_new_tokens=..., do_sample=False)``: its prompt's forward runs op
  by op, its loop is a ``lax.while_loop``), and also wrapped whole in ``jax.jit`` (every option static), the fastest
  way to call it; ours as it is (generate() compiles its prefill and loop with jax.jit and keeps them). The first
  call of each (tracing + XLA compilation) is reported apart, and so are the first calls with prompts of other
  lengths: 30 tokens (transformers traces its loop again; ours pads it into the same power-of-two bucket as 32, so
  it runs the functions compiled for 32) and 33 tokens (the next bucket: ours compiles once more too).
  Against the matvec floor measured in the same run: ``x @ W`` (x of one row) over every weight matrix of the
  model (each block's c_attn, attn.c_proj, c_fc, mlp.c_proj and the tied lm_head), in one jax.jit function --
  what one decoding step must at least do.
- prefill: the logits of a (4, 512) batch, each model's forward under jax.jit, the weights an argument (ours
  ``nnx.split`` once, then ``jax.jit`` of ``nnx.merge(graphdef, weights)(ids)``; transformers' over its ``params=``).
- train step: one optax Adam step on the causal LM loss of a (4, 256) batch under jit (ours ``nnx.jit`` with
  ``nnx.Optimizer``, the model's own loss with ``labels=``; transformers' ``jax.jit`` over params and optimizer
  state, its Flax model having no labels: the same shifted cross entropy written here).

Run:  .venv/bin/python benchmarks/bench_flax.py [--repeats 5] [--quick] [--json out.json]
``--quick`` is a smoke run on a tiny shape (2 layers, C=64, 8 new tokens): its figures mean nothing.
The figures go to benchmarks/results/bench_flax.json (benchmarks/_results.py; --json PATH: there instead); a --quick
run writes a file only when --json is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)


def first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matvec_floor(matrices: list[np.ndarray], repeats: int = 20) -> float:
    """Seconds for ``x @ W`` over every weight matrix (x one row), in one jax.jit function: a decoding step reads
    every weight once, and a matrix-vector product is the least it can do with each."""
    import jax
    import jax.numpy as jnp

    weights = [jnp.asarray(w) for w in matrices]
    rows = [jax.random.normal(jax.random.key(i), (1, w.shape[0])) for i, w in enumerate(matrices)]
    products = jax.jit(lambda rows, weights: [x @ w for x, w in zip(rows, weights)])
    return _results.timed(lambda: jax.block_until_ready(products(rows, weights)), repeats)


def causal_lm_loss(logits, ids):
    """The mean next-token cross entropy (transformers' Flax LM has no labels argument; the shift torch's has)."""
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run, figures meaningless")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/"
                        "bench_flax.json; a --quick run writes none unless given)")
    args = parser.parse_args()
    run = _results.start("bench_flax.py")
    warnings.simplefilter("ignore")
    import flax
    import jax
    import jax.numpy as jnp
    import optax
    import transformers
    from flax import nnx

    import gpt2.flax as ours_module
    from gpt2.common.checkpoint import load_checkpoint

    transformers.logging.set_verbosity_error()
    shape = dict(n_layer=2, n_embd=64, n_head=4) if args.quick else {}
    prefill, train = ((2, 64), (2, 32)) if args.quick else ((4, 512), (4, 256))
    new = 8 if args.quick else 64
    P = 32
    folder = tempfile.mkdtemp()
    theirs = transformers.FlaxGPT2LMHeadModel(transformers.GPT2Config(**shape), seed=0)
    theirs.save_pretrained(folder)
    ours = ours_module.FlaxGPT2LMHeadModel.from_pretrained(folder)
    rows = []

    # -- decoding -----------------------------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50257, (1, P)).astype(np.int32)
    same_bucket = rng.integers(0, 50257, (1, P - 2)).astype(np.int32)
    next_bucket = rng.integers(0, 50257, (1, P + 1)).astype(np.int32)
    eos = dict(pad_token_id=50256, eos_token_id=50256)

    def decode_theirs(ids):  # transformers' Flax generate has min_length (prompt included), not min_new_tokens
        out = theirs.generate(ids, max_new_tokens=new, min_length=ids.shape[1] + new, do_sample=False, **eos)
        out = np.asarray(out.sequences)
        assert out.shape[1] == ids.shape[1] + new
        return out

    their_jit = {}

    def decode_theirs_jit(ids):  # the whole generate under jax.jit, compiled per prompt length
        if ids.shape not in their_jit:
            their_jit[ids.shape] = jax.jit(lambda ids, params: theirs.generate(
                ids, params=params, max_new_tokens=new, min_length=ids.shape[1] + new, do_sample=False,
                **eos).sequences)
        out = np.asarray(their_jit[ids.shape](jnp.asarray(ids), theirs.params))
        assert out.shape[1] == ids.shape[1] + new
        return out

    def decode_ours(ids):
        out = np.asarray(ours.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **eos).sequences)
        assert out.shape[1] == ids.shape[1] + new
        return out

    first_ours = first_call(lambda: decode_ours(prompt))
    first_theirs = first_call(lambda: decode_theirs(prompt))
    first_theirs_jit = first_call(lambda: decode_theirs_jit(prompt))
    same = (np.array_equal(decode_ours(prompt), decode_theirs(prompt))
            and np.array_equal(decode_ours(prompt), decode_theirs_jit(prompt)))
    other = [(first_call(lambda: decode_ours(x)), first_call(lambda: decode_theirs(x))) for x in (same_bucket,
                                                                                              next_bucket)]
    state, _ = load_checkpoint(folder)
    names = [k for k in state if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))]
    matrices = [np.ascontiguousarray(state[k], dtype=np.float32) for k in names]
    matrices.append(np.ascontiguousarray(state["transformer.wte.weight"].T, dtype=np.float32))  # the tied lm_head
    floors = [matvec_floor(matrices)]
    a = _results.timed(lambda: decode_ours(prompt), args.repeats) / new * 1e3
    b = _results.timed(lambda: decode_theirs(prompt), args.repeats) / new * 1e3
    c = _results.timed(lambda: decode_theirs_jit(prompt), args.repeats) / new * 1e3
    floors.append(matvec_floor(matrices))
    floor = statistics.median(floors) * 1e3
    rows.append((f"decode ms/token (1x{P} + {new} greedy)", a, b))
    rows.append((f"decode ms/token, transformers' generate under jax.jit", a, c))
    rows.append(("decode: first call, s (trace + compile)", first_ours, first_theirs))
    rows.append(("decode: first call, transformers' generate under jax.jit, s", first_ours, first_theirs_jit))
    rows.append((f"decode: first call with a {P - 2}-token prompt (same bucket), s", *other[0]))
    rows.append((f"decode: first call with a {P + 1}-token prompt (next bucket), s", *other[1]))

    # -- prefill and a train step ---------------------------------------------------------------------------------
    ids = jnp.asarray(rng.integers(0, 50257, prefill), dtype=jnp.int32)
    graphdef, weights = nnx.split(ours)  # the functional form, as theirs over params (no nnx.jit graph walk)
    our_forward = jax.jit(lambda weights, ids: nnx.merge(graphdef, weights)(ids).logits)
    their_forward = jax.jit(lambda params, ids: theirs(ids, params=params).logits)
    rows.append(("prefill %dx%d, jit (s)" % prefill,
                 _results.timed(lambda: jax.block_until_ready(our_forward(weights, ids)), args.repeats),
                 _results.timed(lambda: jax.block_until_ready(their_forward(theirs.params, ids)), args.repeats)))

    batch = jnp.asarray(rng.integers(0, 50257, train), dtype=jnp.int32)
    optimizer = optax.adam(1e-5)
    our_opt = nnx.Optimizer(ours, optimizer, wrt=nnx.Param)

    @nnx.jit
    def our_step(model, opt, ids):
        loss, grads = nnx.value_and_grad(lambda m: m(ids, labels=ids).loss)(model)
        opt.update(model, grads)
        return loss

    their_state = [theirs.params, optimizer.init(theirs.params)]

    @jax.jit
    def their_step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(lambda p: causal_lm_loss(theirs(ids, params=p).logits, ids))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def their_train():
        params, opt_state, loss = their_step(*their_state, batch)
        their_state[:] = [params, opt_state]
        return jax.block_until_ready(loss)

    rows.append(("train step %dx%d, optax Adam, jit (s)" % train,
                 _results.timed(lambda: jax.block_until_ready(our_step(ours, our_opt, batch)), args.repeats),
                 _results.timed(their_train, args.repeats)))

    print(f"jax {jax.__version__}, flax {flax.__version__}, transformers {transformers.__version__}, "
          f"{'QUICK (tiny shape) ' if args.quick else ''}greedy tokens equal: {same}\n")
    print("| measure | ours | transformers | ours / transformers |")
    print("|---|---|---|---|")
    for name, x, y in rows:
        print(f"| {name} | {x:.4f} | {y:.4f} | {x / y:.2f} |")
    print(f"\nmatvec floor for decoding (x @ W over every weight matrix under jax.jit, median of {len(floors)} measures "
          f"in this run: {', '.join(f'{t * 1e3:.2f}' for t in floors)}): {floor:.2f} ms/token")
    print(f"| decode | ours / floor | transformers / floor | transformers under jax.jit / floor |\n|---|---|---|---|\n"
          f"| ms/token | {a / floor:.2f} | {b / floor:.2f} | {c / floor:.2f} |")
    details = {"repeats": args.repeats, "rows": rows, "floor_ms": floor, "floors_ms": [t * 1e3 for t in floors],
               "same_tokens": same, "quick": args.quick}
    figures = _results.decode_figures("flax", ours=a, transformers=b, floor=floor,
                                      others={"transformers (jax.jit)": c})
    _results.write(run, kind="decode", figures=figures, details=details, path=args.json, smoke=args.quick)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
