"""TensorFlow models, side by side with transformers 4.57.6's TF GPT-2 in one process, gpt2 (124M) shape, fp32, CPU.

Measured in turns (after a warm-up of each, --repeats turns of one call of ours and one of transformers', the order
swapped every turn; medians of each, and the median over the turns of their ratio), the same random weights in both
(transformers' TF model writes tf_model.h5, ours loads it):
- decode: greedy generate() of 64 new tokens after a 32-token prompt, batch 1, in ms per new token. transformers
  as its docs advise for speed, ``tf.function(model.generate, jit_compile=True)``; ours as it is (generate() is
  XLA-compiled by default). The first call of each (tracing + XLA compilation) is reported apart, and so are the
  first calls with prompts of other lengths: 30 tokens (transformers compiles again; ours pads it into the same
  power-of-two bucket as 32, so it runs the function compiled for 32) and 33 tokens (the next bucket: ours
  compiles once more too).
  Against the matvec floor measured in the same run: ``x @ W`` (x of one row) over every weight matrix of the
  model (each block's c_attn, attn.c_proj, c_fc, mlp.c_proj and the tied lm_head), in one XLA-compiled function --
  what one decoding step must at least do.
- prefill: a forward of a (4, 512) batch (``model(ids, training=False)``, eager Keras call).
- train step: one Keras ``train_on_batch`` of a (4, 256) batch with labels (the model's own loss), Adam.

Run:  .venv/bin/python benchmarks/bench_tf.py [--repeats 5] [--small] [--json out.json]
The figures go to benchmarks/results/bench_tf.json (benchmarks/_results.py; --json PATH: there instead); a --small
run writes a file only when --json is given.
TensorFlow is measured on the CPU only: the lent GPU machine has no TensorFlow (docs/tf.md).
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
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # transformers' TF classes need tf-keras; ours use Keras 3 (`import keras`)
os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_FLAX", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)


def in_turns(ours, theirs, repeats: int, between=None) -> tuple[float, float, float]:
    """(median seconds of ``ours``, of ``theirs``, median over the turns of ours / theirs): after a warm-up of each,
    ``repeats`` turns of one call each, the order swapped every turn, so that the machine's drift over the minutes a
    measure takes falls on both alike. ``between()`` (the floor) runs after every turn."""
    ours()
    theirs()
    mine, their, ratios = [], [], []
    for turn in range(repeats):
        order = [(ours, mine), (theirs, their)]
        for fn, times in order if turn % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        ratios.append(mine[-1] / their[-1])
        if between is not None:
            between()
    return statistics.median(mine), statistics.median(their), statistics.median(ratios)


def first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matvec_floor(matrices: list[np.ndarray]):
    """A function returning the seconds for ``x @ W`` over every weight matrix (x one row), in one XLA-compiled
    function (the median of ``repeats`` runs): a decoding step reads every weight once, and a matrix-vector product
    is the least it can do with each."""
    weights = [tf.constant(w) for w in matrices]
    rows = [tf.random.normal((1, w.shape[0])) for w in matrices]

    @tf.function(jit_compile=True)
    def products(rows, weights):
        return [tf.matmul(x, w) for x, w in zip(rows, weights)]

    return lambda repeats=5: _results.timed(lambda: [t.numpy() for t in products(rows, weights)][-1], repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke run")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/"
                        "bench_tf.json; a --small run writes none unless given)")
    args = parser.parse_args()
    run = _results.start("bench_tf.py")
    warnings.simplefilter("ignore")
    import keras
    import transformers

    import gpt2.tf as ours_module
    from gpt2.common.checkpoint import load_checkpoint

    transformers.logging.set_verbosity_error()
    shape = dict(n_layer=2, n_embd=64, n_head=4) if args.small else {}
    prefill, train = ((2, 64), (2, 32)) if args.small else ((4, 512), (4, 256))
    new = 8 if args.small else 64
    folder = tempfile.mkdtemp()
    tf.random.set_seed(0)
    theirs = transformers.TFGPT2LMHeadModel(transformers.GPT2Config(**shape))
    theirs(tf.constant([[0]]))
    theirs.save_pretrained(folder)
    ours = ours_module.TFGPT2LMHeadModel.from_pretrained(folder)
    rows = []

    # -- decoding -----------------------------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    prompt = tf.constant(rng.integers(0, 50257, (1, 32)), dtype=tf.int32)
    same_bucket = tf.constant(rng.integers(0, 50257, (1, 30)), dtype=tf.int32)
    next_bucket = tf.constant(rng.integers(0, 50257, (1, 33)), dtype=tf.int32)
    options = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=50256)
    their_generate = tf.function(theirs.generate, jit_compile=True)

    def decode_theirs(ids):
        out = their_generate(ids, attention_mask=tf.ones_like(ids), **options)
        assert out.shape[1] == ids.shape[1] + new
        return out

    def decode_ours(ids):
        out = ours.generate(ids, attention_mask=tf.ones_like(ids), **options)
        assert out.shape[1] == ids.shape[1] + new
        return out

    first_ours, first_theirs = first_call(lambda: decode_ours(prompt)), first_call(lambda: decode_theirs(prompt))
    same = np.array_equal(decode_ours(prompt).numpy(), decode_theirs(prompt).numpy())
    other = [(first_call(lambda: decode_ours(x)), first_call(lambda: decode_theirs(x))) for x in (same_bucket,
                                                                                              next_bucket)]
    state, _ = load_checkpoint(folder)
    names = [k for k in state if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))]
    matrices = [np.ascontiguousarray(state[k], dtype=np.float32) for k in names]
    matrices.append(np.ascontiguousarray(state["transformer.wte.weight"].T, dtype=np.float32))  # the tied lm_head
    measure_floor = matvec_floor(matrices)
    floors = [measure_floor(20)]
    a, b, turns = in_turns(lambda: decode_ours(prompt), lambda: decode_theirs(prompt), args.repeats,
                           between=lambda: floors.append(measure_floor()))
    a, b = a / new * 1e3, b / new * 1e3
    turn_ratios = {"decode": turns}
    floor = statistics.median(floors) * 1e3
    rows.append((f"decode ms/token (1x32 + {new} greedy, XLA)", a, b))
    rows.append(("decode: first call, s (trace + compile)", first_ours, first_theirs))
    rows.append(("decode: first call with a 30-token prompt (same bucket), s", *other[0]))
    rows.append(("decode: first call with a 33-token prompt (next bucket), s", *other[1]))

    # -- prefill and a train step ---------------------------------------------------------------------------------
    ids = tf.constant(rng.integers(0, 50257, prefill), dtype=tf.int32)
    x, y, turn_ratios["prefill"] = in_turns(lambda: ours(ids, training=False).logits.numpy(),
                                            lambda: theirs(ids, training=False).logits.numpy(), args.repeats)
    rows.append(("prefill %dx%d (s)" % prefill, x, y))
    batch_ids = rng.integers(0, 50257, train).astype(np.int32)
    batch = {"input_ids": batch_ids, "labels": batch_ids}
    ours.compile(optimizer=keras.optimizers.Adam(1e-5))
    theirs.compile(optimizer=tf.keras.optimizers.Adam(1e-5))
    x, y, turn_ratios["train step"] = in_turns(lambda: ours.train_on_batch(batch),
                                               lambda: theirs.train_on_batch(batch), args.repeats)
    rows.append(("train step %dx%d (s)" % train, x, y))

    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, transformers {transformers.__version__}, "
          f"greedy tokens equal: {same}\n")
    print("| measure | ours | transformers | ours / transformers |")
    print("|---|---|---|---|")
    for name, x, y in rows:
        print(f"| {name} | {x:.4f} | {y:.4f} | {x / y:.2f} |")
    print("\nours / transformers, median over the turns (each turn one call of each, in alternating order): "
          + ", ".join(f"{k} {v:.2f}" for k, v in turn_ratios.items()))
    print(f"\nmatvec floor for decoding (x @ W over every weight matrix under XLA, median of {len(floors)} measures "
          f"in this run: {', '.join(f'{t * 1e3:.2f}' for t in floors)}): {floor:.2f} ms/token")
    print(f"| decode | ours / floor | transformers / floor |\n|---|---|---|\n| ms/token | {a / floor:.2f} | "
          f"{b / floor:.2f} |")
    details = {"repeats": args.repeats, "rows": rows, "floor_ms": floor, "floors_ms": [t * 1e3 for t in floors],
               "same_tokens": same, "turn_ratios": turn_ratios}
    _results.write(run, kind="decode", figures=_results.decode_figures("tf", ours=a, transformers=b, floor=floor),
                   details=details, path=args.json, smoke=args.small)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
