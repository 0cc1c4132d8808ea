"""Training throughput (tokens/s): ``gpt2 train`` in each framework beside transformers 4.57.6's PyTorch
``GPT2LMHeadModel`` in a plain loop, the gpt2 (124M) shape, block 256, batch 4, fp32, on this machine's CPU.

What runs (one fresh Python process per row, one after another; see "Why one process per row"):

- **ours torch / tf / flax**: the trainers themselves, ``gpt2.<framework>.train.train(...)``, with the options of
  ``gpt2 train --framework <fw> --data <token file> --config <config.json> --steps W+N --batch-size 4
  --block-size 256 --log-every 1 --eval-every 0 --eval-batches 1 --save-every 0 --no-progress``: torch's plain loop
  (AdamW with two parameter groups, LambdaLR, clip_grad_norm_), TF's Keras ``fit`` (one Keras epoch per update,
  the model's own loss, keras AdamW with global_clipnorm), Flax's jitted optax step (clip + adamw, donated state).
  Nothing is reproduced here: the step measured is the step ``gpt2 train`` makes, with its data loading and its
  per-update bookkeeping (a metrics.jsonl line; the bar is off). The time of an update is read from the run's
  metrics.jsonl: with ``--log-every 1`` every update writes ``time`` (seconds since the run's start, taken after the
  update's loss reached the host), so update k took ``time[k] - time[k-1]``.
- **transformers eager / sdpa**: ``GPT2LMHeadModel._from_config(GPT2Config(same shape),
  attn_implementation=...)`` in ``train()`` mode (dropout 0.1, as ours) over the very same batches (common.data's
  ``Batches`` on the same token file and seed), with the same optimizer: ``torch.optim.AdamW`` (lr 3e-4, betas
  (0.9, 0.95), eps 1e-8, weight decay 0.1 on common.training.decays' parameters only), the same warmup + cosine
  ``LambdaLR``, ``clip_grad_norm_(1.0)``, ``zero_grad(set_to_none=True)``, and ``loss.item()`` every update (ours
  reads the loss every update too, at --log-every 1). Update k took the time from the end of update k-1 to the end
  of update k (data included, as ours).

Each row: the first W updates are warm-up (model build, tracing and compilation land there), then the median of
the next N update times; tokens/s = batch * block / that median. Ratios are to transformers (sdpa, its default
attention in 4.57, and eager). Peak RSS is the process's ``ru_maxrss`` at its end (imports, the model, AdamW's
state, the final save included). The goal of issue 13: ours torch >= 1.2x transformers' tokens/s.

Why one process per row: TensorFlow, XLA and torch each start a thread pool sized to the machine's cores; in one
process they would compete for the cores (and importing transformers with TF and JAX installed imports them too,
here prevented with USE_TF=0 / USE_FLAX=0), and a process's peak RSS is then one framework's alone. Rows run one
after another, never at once; each uses its framework's default threads (all cores).

Run:  .venv/bin/python benchmarks/bench_train.py [--repeats 10] [--warmup 3] [--quick] [--json out.json]
      [--only ours-torch,transformers-sdpa] [--precision bf16] [--peak-tflops 989]
``--quick`` is a smoke run on a tiny shape (2 layers, C 64, block 32): its figures mean nothing. ``--precision bf16``
runs every row with bf16 autocast / mixed precision (fp32 weights); ``--peak-tflops`` adds an MFU column (model
FLOPs per token as nanoGPT's estimate: 6 N + 12 L T C, N the parameters without wpe; the machine's peak is yours to
give). On a CUDA machine the torch rows use the GPU (ours picks it; the plain loop follows).
The figures go to benchmarks/results/bench_train.json (benchmarks/_results.py; --json PATH: there instead); a --quick
or --only run writes a file only when --json is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENESIS = ROOT / "tests" / "data" / "genesis.txt"  # public domain text (tests/data/README.md), ~20k GPT-2 tokens
ROWS = ("transformers-sdpa", "ours-torch", "transformers-eager", "ours-tf", "ours-flax")  # run order: torch rows
REFERENCES = ("transformers-sdpa", "transformers-eager")                                 # adjacent in time
FULL = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
QUICK = {"vocab_size": 50257, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)

HYPER = {"lr": 3e-4, "warmup": 2, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "clip": 1.0,
         "seed": 0}


# -- the parent: prepare, run every row in its own process, report ------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="updates measured per row (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="updates not measured first (default 3; quick 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=None, help="default 256 (quick: 32)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows (default all: {','.join(ROWS)})")
    parser.add_argument("--quick", action="store_true", help="tiny shape: a smoke run, figures meaningless")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak: adds an MFU column")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per row before it is stopped")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/"
                        "bench_train.json; a --quick / --only run writes none unless given)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.spec))
    run = _results.start("bench_train.py")

    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--only: unknown row(s) {', '.join(unknown)} (choose from {', '.join(ROWS)})")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    block = args.block_size or (32 if args.quick else 256)
    if warmup < 1 or repeats < 1 or args.batch_size < 1 or block < 2:
        parser.error("--warmup, --repeats, --batch-size must be >= 1 and --block-size >= 2 (the first update builds "
                     "and compiles: it is never measured)")
    shape = QUICK if args.quick else FULL
    if block > shape["n_positions"]:
        parser.error(f"--block-size {block} is above n_positions {shape['n_positions']}")

    from gpt2.common.data import prepare  # framework-free: the parent imports no framework

    folder = Path(tempfile.mkdtemp(prefix="bench_train_"))
    results = []
    try:
        shutil.copy(GENESIS, folder / "genesis.txt")
        token_file = prepare(folder / "genesis.txt", progress=False).path  # once; every row reads this file
        (folder / "config.json").write_text(json.dumps(shape))
        spec = {"config": shape, "config_file": str(folder / "config.json"), "token_file": str(token_file),
                "batch_size": args.batch_size, "block_size": block, "warmup": warmup, "repeats": repeats,
                "precision": args.precision, "hyper": HYPER, "folder": str(folder)}
        for name in rows:
            spec_path = folder / f"{name}.spec.json"
            spec_path.write_text(json.dumps({**spec, "result": str(folder / f"{name}.result.json")}))
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(run_row(name, spec_path, folder / f"{name}.result.json", args.timeout))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    report(results, args, shape=shape, block=block, warmup=warmup, repeats=repeats)
    details = {"quick": args.quick, "config": shape, "block_size": block, "batch_size": args.batch_size,
               "precision": args.precision, "warmup": warmup, "repeats": repeats, "hyper": HYPER,
               "flops_per_token": flops_per_token(shape, block), "peak_tflops": args.peak_tflops,
               "cores": os.cpu_count(), "rows": results}
    _results.write(run, kind="train", figures=_results.train_figures(results), details=details, path=args.json,
                   smoke=args.quick or rows != list(ROWS))
    return 0 if all(r.get("ok") for r in results) else 1


def run_row(name: str, spec_path: Path, result_path: Path, timeout: float) -> dict:
    """One row in a fresh interpreter; its result JSON, or the reason it has none."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3", USE_TF="0", USE_FLAX="0")  # transformers: torch only
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec",
                               str(spec_path)], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "ok": False, "error": f"stopped after --timeout {timeout:g} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.is_file():
        tail = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"name": name, "ok": False, "error": f"exit {proc.returncode}: {tail[0][:300]}",
                "stderr_tail": (proc.stderr or "")[-4000:]}
    return {**json.loads(result_path.read_text()), "name": name, "ok": True, "process_s": wall}


def flops_per_token(config: dict, block: int) -> float:
    """nanoGPT's training estimate: 6 N (forward + backward of every weight, N without the position table; the
    tied lm_head is wte) + 12 L T C (attention's scores and weighted sum, forward + backward)."""
    C, L, V, T = config["n_embd"], config["n_layer"], config["vocab_size"], block
    per_block = 12 * C * C + 13 * C  # c_attn 3C^2+3C, attn.c_proj C^2+C, c_fc 4C^2+4C, mlp.c_proj 4C^2+C, 2 LN 4C
    n = V * C + L * per_block + 2 * C  # wte (tied head) + blocks + ln_f
    return 6 * n + 12 * L * T * C


def report(results: list[dict], args, *, shape: dict, block: int, warmup: int, repeats: int) -> None:
    tokens = args.batch_size * block
    by_name = {r["name"]: r for r in results}
    refs = {ref: by_name[ref]["tokens_per_s"] for ref in REFERENCES if by_name.get(ref, {}).get("ok")}
    fpt = flops_per_token(shape, block)
    versions = {}
    for r in results:
        versions.update(r.get("versions", {}))
    print(f"{'QUICK (tiny shape, figures meaningless) ' if args.quick else ''}training throughput, "
          f"n_layer {shape['n_layer']}, n_embd {shape['n_embd']}, block {block}, batch {args.batch_size}, "
          f"{args.precision}; median of {repeats} updates after {warmup} warm-up updates; one process per row")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "\n")
    head = "| row | device | tokens/s | ms/update | ms/update min-max | " + " | ".join(
        f"x {ref}" for ref in REFERENCES) + (" | MFU" if args.peak_tflops else "") + \
        " | peak RSS (MiB) | loss first -> last |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        if not r.get("ok"):
            print(f"| {r['name']} | | failed: {r['error']} |")
            continue
        ratios = " | ".join(f"{r['tokens_per_s'] / refs[ref]:.2f}" if ref in refs else "-" for ref in REFERENCES)
        mfu = f" | {fpt * r['tokens_per_s'] / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops else ""
        times = r["update_s"]
        print(f"| {r['name']} | {r['device']} | {r['tokens_per_s']:,.0f} | {statistics.median(times) * 1e3:.1f} | "
              f"{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f} | {ratios}{mfu} | {r['peak_rss_mib']:,.0f} | "
              f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |")
    ours = by_name.get("ours-torch", {})
    if ours.get("ok") and refs:
        verdict = ", ".join(f"{ours['tokens_per_s'] / v:.2f}x {k}" for k, v in refs.items())
        met = all(ours["tokens_per_s"] / v >= 1.2 for v in refs.values())
        print(f"\ngoal (issue 13): ours torch >= 1.2x transformers' tokens/s: {verdict}: "
              f"{'met' if met else 'NOT met'}{' (quick run: meaningless)' if args.quick else ''}")
    print(f"model FLOPs per token (6N + 12LTC): {fpt / 1e6:.1f} M; tokens per update: {tokens}")
    for r in results:
        if not r.get("ok") and r.get("stderr_tail"):
            print(f"\n{r['name']} stderr (tail):\n{r['stderr_tail']}", file=sys.stderr)


# -- the workers (one per process) --------------------------------------------------------------------------------------
def worker(name: str, spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    import warnings

    warnings.simplefilter("ignore")
    try:
        if name.startswith("ours-"):
            result = ours(name.removeprefix("ours-"), spec)
        else:
            result = transformers_loop(name.removeprefix("transformers-"), spec)
    except Exception:
        traceback.print_exc()
        return 1
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def summarize(update_end_times: list[float], spec: dict, losses: list[float]) -> dict:
    """Update k's time = end(k) - end(k-1); the warm-up updates dropped; tokens/s from the median."""
    ends = [0.0] + list(update_end_times)
    durations = [b - a for a, b in zip(ends, ends[1:])]
    measured = durations[spec["warmup"]:]
    if len(measured) != spec["repeats"]:
        raise RuntimeError(f"expected {spec['repeats']} measured updates, got {len(measured)}")
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"a training loss is not finite: {losses}")
    return {"update_s": measured, "warmup_s": durations[:spec["warmup"]],
            "tokens_per_s": spec["batch_size"] * spec["block_size"] / statistics.median(measured),
            "losses": losses}


def ours(framework: str, spec: dict) -> dict:
    """``gpt2.<framework>.train.train`` itself; the update times from its metrics.jsonl."""
    import importlib

    from gpt2.common.training import read_metrics

    trainer = importlib.import_module(f"gpt2.{framework}.train")
    out = Path(spec["folder"]) / f"run-{framework}"
    hyper = spec["hyper"]
    trainer.train(data=spec["token_file"], config=spec["config_file"], out=str(out),
                  steps=spec["warmup"] + spec["repeats"], batch_size=spec["batch_size"], block_size=spec["block_size"],
                  precision=spec["precision"], log_every=1, eval_every=0, eval_batches=1, save_every=0,
                  progress=False, **hyper)
    records = sorted((r for r in read_metrics(out / "metrics.jsonl") if "loss" in r), key=lambda r: r["step"])
    if [r["step"] for r in records] != list(range(1, spec["warmup"] + spec["repeats"] + 1)):
        raise RuntimeError(f"{out}/metrics.jsonl: expected one record per update, got steps "
                           f"{[r['step'] for r in records]}")
    result = summarize([r["time"] for r in records], spec, [r["loss"] for r in records])
    result.update(device=_device_of(framework), versions=_versions(framework))
    shutil.rmtree(out, ignore_errors=True)  # 500 MB of final model at the 124M shape
    return result


def transformers_loop(attn: str, spec: dict) -> dict:
    """transformers' GPT2LMHeadModel in a plain loop: the same batches, optimizer, schedule and clipping as ours."""
    import contextlib

    import torch
    import transformers

    from gpt2.common.data import Batches, TokenFile, split_blocks
    from gpt2.common.training import TrainArgs, decays, make_schedule

    transformers.logging.set_verbosity_error()
    hyper, B, T = spec["hyper"], spec["batch_size"], spec["block_size"]
    steps = spec["warmup"] + spec["repeats"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as gpt2.torch.train picks
    args = TrainArgs(framework="torch", data=spec["token_file"], out=spec["folder"], config=spec["config_file"],
                     steps=steps, batch_size=B, block_size=T, **hyper).validate()
    schedule = make_schedule(args, steps)
    # the data exactly as ours: the same token file, held-out split and order (Run's defaults: val 5%, >= B blocks)
    tokens = TokenFile(spec["token_file"])
    train_blocks, _ = split_blocks(tokens, T, seed=args.seed, val_fraction=args.val_fraction, min_val_blocks=B)
    batches = Batches(train_blocks, batch_size=B, grad_accum=1, seed=args.seed)

    torch.manual_seed(args.seed)
    config = transformers.GPT2Config(**spec["config"])
    model = transformers.GPT2LMHeadModel._from_config(config, attn_implementation=attn).to(device).train()
    if model.config._attn_implementation != attn:
        raise RuntimeError(f"asked for attn_implementation={attn!r}, got {model.config._attn_implementation!r}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied lm_head is wte: listed once
        (decay if decays(name) else no_decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=args.eps, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.multiplier)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec["precision"] == "bf16" else \
        contextlib.nullcontext()

    ends, losses = [], []
    start = time.perf_counter()
    for step in range(steps):
        ids = torch.from_numpy(batches.batch(step)[0]).to(device, dtype=torch.long)
        with autocast:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())  # the host has the loss: the update is done (a sync on CUDA)
        ends.append(time.perf_counter() - start)
    result = summarize(ends, spec, losses)
    result.update(device=str(device), versions=_versions("torch") | {"transformers": transformers.__version__})
    return result


def _device_of(framework: str) -> str:
    if framework == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if framework == "tf":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    import jax

    return jax.default_backend()


def _versions(framework: str) -> dict:
    if framework == "torch":
        import torch

        return {"torch": torch.__version__}
    if framework == "tf":
        import keras
        import tensorflow as tf

        return {"tensorflow": tf.__version__, "keras": keras.__version__}
    import flax
    import jax
    import optax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


if __name__ == "__main__":
    sys.exit(main())
