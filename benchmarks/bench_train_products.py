"""The torch trainer's matrix products on the CPU: oneDNN's linear (``gpt2.torch.model._TrainingProduct``, what a
training step runs on x86 builds) against torch's own MKL products, in one process.

1. Each training product of the gpt2 (124M) shape at batch 4 x 256 (1024 rows): the forward ``x @ W^T``, the input's
   gradient ``dy @ W`` and the weight's gradient ``dy^T @ x``, for c_attn, attn.c_proj, c_fc, mlp.c_proj and the lm
   head, timed through MKL (``torch.mm``) and through oneDNN's linear (as ``_TrainingProduct`` calls it, copies of
   transposed operands included); GFLOP/s, median of ``--repeats``.
2. Whole training updates of that model (forward with labels, backward, clip, fused AdamW, dropout 0.1), alternating
   update by update between the oneDNN product and torch's own products (the same model and optimizer going on),
   so that the machine's drift falls on both alike; the median of each and the median of the per-pair ratios.

Run:  .venv/bin/python benchmarks/bench_train_products.py [--updates 10] [--repeats 8] [--small]
``--small`` is a smoke run on a tiny shape: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import gpt2.torch.model as model_module
from gpt2.common.config import GPT2Config
from gpt2.torch import GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402  (benchmarks/_results.py: timed)


def products(rows: int, C: int, V: int, repeats: int) -> None:
    linear = model_module._ONEDNN_LINEAR
    print(f"| product ({rows} rows) | MKL GFLOP/s | oneDNN GFLOP/s | oneDNN / MKL time |\n|---|---:|---:|---:|")
    for name, (n_in, n_out) in {"c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C),
                                "mlp.c_proj": (4 * C, C), "lm_head": (C, V)}.items():
        x, w, dy = torch.randn(rows, n_in), torch.randn(n_out, n_in), torch.randn(rows, n_out)
        flops = 2 * rows * n_in * n_out
        for what, mkl, onednn in (
                ("forward", lambda: torch.mm(x, w.t()), lambda: linear(x, w, None, "none", [], "")),
                ("input grad", lambda: torch.mm(dy, w), lambda: linear(dy, w.t(), None, "none", [], "")),
                ("weight grad", lambda: torch.mm(dy.t(), x), lambda: linear(dy.t(), x.t(), None, "none", [], ""))):
            a, b = _results.timed(mkl, repeats), _results.timed(onednn, repeats)
            print(f"| {name} {what} | {flops / a / 1e9:.0f} | {flops / b / 1e9:.0f} | {b / a:.2f} |")


def updates(config: GPT2Config, batch: int, block: int, count: int) -> None:
    linear = model_module._ONEDNN_LINEAR
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    for p in model.parameters():  # the trainer's layout (gpt2/torch/train.py _contiguous)
        p.data = p.data.contiguous()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, block))

    def update() -> float:
        start = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {"oneDNN": [], "MKL": []}
    macs = model_module.TRAINING_PRODUCT_MACS
    model_module.TRAINING_PRODUCT_MACS = 0  # every product of the oneDNN turns through it (--small's are tiny)
    try:
        update()  # warm-up
        for i in range(count):
            for name in (("oneDNN", "MKL") if i % 2 == 0 else ("MKL", "oneDNN")):
                model_module._ONEDNN_LINEAR = linear if name == "oneDNN" else None
                times[name].append(update())
    finally:
        model_module._ONEDNN_LINEAR, model_module.TRAINING_PRODUCT_MACS = linear, macs
    ratios = [a / b for a, b in zip(times["oneDNN"], times["MKL"])]
    print(f"\n{count} updates each, alternating, batch {batch} x {block}, dropout 0.1, fused AdamW, clip 1.0")
    for name, t in times.items():
        print(f"- {name} products: median {statistics.median(t):.3f} s per update "
              f"({', '.join(f'{x:.2f}' for x in t)})")
    print(f"- oneDNN / MKL: {statistics.median(times['oneDNN']) / statistics.median(times['MKL']):.3f} "
          f"(median of the per-pair ratios {statistics.median(ratios):.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if model_module._ONEDNN_LINEAR is None:
        print("this torch build has no MKL and oneDNN: the trainer uses torch's own products, nothing to compare")
        return 1
    shape = (dict(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4) if args.small else
             dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12))
    batch, block = (2, 32) if args.small else (4, 256)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; n_layer {shape['n_layer']}, "
          f"n_embd {shape['n_embd']}{', SMALL: figures meaningless' if args.small else ''}\n")
    products(batch * block, shape["n_embd"], shape["vocab_size"], args.repeats)
    updates(GPT2Config(**shape), batch, block, args.updates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
