"""PyTorch models on a GPU, side by side with transformers in one process: gpt2-large shape, float16, random weights.

Two tables, as transformers' GPT-2 SDPA page gives them (training and inference, eager vs SDPA, batch 1-4, sequence
128-1024), with both libraries in each row:
- training: forward + backward of a (batch, seq) batch with labels; median seconds per batch and peak GPU memory;
- inference: greedy generate() of --new tokens after a (batch, seq) prompt; milliseconds per new token (the prefill
  included, total time / new tokens) and peak GPU memory. Ours runs its default (the decoding step in a CUDA graph,
  compiled.py, kept on the model for the next call of that shape: "first call" includes the capture) and with
  disable_compile=True (eager steps). Times are medians of --repeats calls after the first.
flash_attention_2 rows appear when the flash-attn package is importable.

Run:  python benchmarks/bench_torch_gpu.py [--repeats 3] [--new 32] [--json out.json]
      python benchmarks/bench_torch_gpu.py --small      (tiny model, any device: a smoke run)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")

import torch  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn, repeats: int) -> tuple[float, float, float]:
    """(median seconds of the calls after the first, peak memory in MiB above what was allocated before the first
    call -- so memory the first call allocates and keeps, such as a kept CUDA graph's cache, counts --, seconds of
    the first call) of fn()."""
    cuda = torch.cuda.is_available()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    return statistics.median(times), peak, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=32, help="new tokens per generate() call")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--impls", nargs="*", default=None, help="attention implementations (default: all)")
    parser.add_argument("--batches", nargs="*", type=int, default=None)
    parser.add_argument("--prompts", nargs="*", type=int, default=None, help="inference prompt lengths")
    parser.add_argument("--no-train", action="store_true", help="inference table only")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import transformers

    import gpt2.torch as ours_module

    transformers.logging.set_verbosity_error()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    shape = dict(n_layer=2, n_embd=64, n_head=4, n_positions=256) if args.small else dict(
        n_layer=36, n_embd=1280, n_head=20)  # gpt2-large
    batches = (1, 2) if args.small else (1, 2, 4)
    train_seqs = (32, 64) if args.small else (128, 256, 512, 1024)
    prompt_seqs = (32, 64) if args.small else (128, 256, 512, 1024 - args.new)
    impls = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    impls = args.impls or impls
    batches = tuple(args.batches or batches)
    prompt_seqs = tuple(args.prompts or prompt_seqs)
    train_seqs = () if args.no_train else train_seqs

    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    with torch.device(device):
        transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).to(dtype).save_pretrained(folder)

    def load(lib: str, impl: str):
        if lib == "ours":
            return ours_module.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=dtype, attn_implementation=impl,
                                                               device=device).eval()
        return transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=dtype,
                                                            attn_implementation=impl).to(device).eval()

    train_rows, infer_rows = [], []
    for impl in impls:
        models = {lib: load(lib, impl) for lib in ("ours", "transformers")}
        for B in batches:
            for T in train_seqs:
                batch = torch.randint(0, 50257, (B, T), device=device)
                row = {"impl": impl, "batch": B, "seq": T}
                for lib, model in models.items():
                    def step(model=model):
                        model.train()
                        model(batch, labels=batch, use_cache=False).loss.backward()
                        model.zero_grad(set_to_none=True)

                    row[lib] = measure(step, args.repeats)[:2]
                    model.eval()
                train_rows.append(row)
                print("train", row, flush=True)
            for T in prompt_seqs:
                prompt = torch.randint(0, 50257, (B, T), device=device)
                row = {"impl": impl, "batch": B, "seq": T}
                runs = {"ours": (models["ours"], {}), "ours eager steps": (models["ours"], {"disable_compile": True}),
                        "transformers": (models["transformers"], {})}
                for name, (model, extra) in runs.items():
                    def generate(model=model, extra=extra):
                        with torch.inference_mode():
                            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                 max_new_tokens=args.new, min_new_tokens=args.new,
                                                 pad_token_id=50256, **extra)
                        assert out.shape[1] == T + args.new

                    seconds, peak, first = measure(generate, args.repeats)
                    row[name] = (seconds / args.new * 1e3, peak, first / args.new * 1e3)
                infer_rows.append(row)
                print("infer", row, flush=True)
        del models
        torch.cuda.empty_cache() if device == "cuda" else None

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"\n{name}, torch {torch.__version__}, transformers {transformers.__version__}, {dtype}, "
          f"{'tiny' if args.small else 'gpt2-large'} shape, median of {args.repeats}\n")
    print("Training (forward + backward), seconds per batch and peak MiB\n")
    print("| attention | batch | seq | ours (s) | transformers (s) | ours / transformers | ours MiB | "
          "transformers MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in train_rows:
        (a, ma), (b, mb) = r["ours"], r["transformers"]
        print(f"| {r['impl']} | {r['batch']} | {r['seq']} | {a:.4f} | {b:.4f} | {a / b:.2f} | {ma:.0f} | {mb:.0f} |")
    print(f"\nInference (greedy generate, {args.new} new tokens), ms per new token and peak MiB\n")
    print("| attention | batch | prompt | ours | ours, first call | ours, eager steps | transformers | "
          "ours / transformers | ours MiB | transformers MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in infer_rows:
        (a, ma, f), (e, _, _), (b, mb, _) = r["ours"], r["ours eager steps"], r["transformers"]
        print(f"| {r['impl']} | {r['batch']} | {r['seq']} | {a:.2f} | {f:.2f} | {e:.2f} | {b:.2f} | {a / b:.2f} | "
              f"{ma:.0f} | {mb:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "train": train_rows, "inference": infer_rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
