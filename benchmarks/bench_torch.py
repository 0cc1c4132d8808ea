"""PyTorch models, side by side with transformers 4.57.6 in one process, on the gpt2 (124M) shape, fp32, CPU.

Measured (median of --repeats runs after a warm-up, same random weights loaded into both):
- prefill: forward of a (4, 512) batch, no grad;
- train step: forward + backward + AdamW step on a (4, 256) batch with labels;
- decode: greedy generate() of 64 new tokens after a 32-token prompt, batch 1, in ms per new token, against the
  memory-bandwidth floor (weight bytes read per token / measured read bandwidth); ours also with compile_config={}
  (torch.compile of the fixed-shape decoding step; its first call, the compilation, is reported apart); and both
  with assistant_model = their own first 2 layers (assisted greedy decoding: the same tokens, fewer full forwards).

Run:  .venv/bin/python benchmarks/bench_torch.py [--repeats 5] [--threads 2] [--small] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("USE_TF", "0")  # transformers: do not import TensorFlow here
os.environ.setdefault("USE_FLAX", "0")

import torch  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second of a streaming read (a sum over 1 GiB with torch's threads): the floor for decoding,
    which must read every weight once per token."""
    a = torch.ones(nbytes // 4, dtype=torch.float32)
    best = min(timed(lambda: a.sum(), 1) for _ in range(5))
    return nbytes / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import transformers

    import gpt2.torch as ours_module

    transformers.logging.set_verbosity_error()
    shape = dict(n_layer=2, n_embd=64, n_head=4) if args.small else {}
    prefill, train = ((2, 64), (2, 32)) if args.small else ((4, 512), (4, 256))
    torch.manual_seed(0)
    folder = tempfile.mkdtemp()
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval()
    theirs.save_pretrained(folder)
    ours = ours_module.GPT2LMHeadModel.from_pretrained(folder)
    rows = []

    def forward(model, ids):
        with torch.inference_mode():
            model(ids, use_cache=False)

    ids = torch.randint(0, 50257, prefill)
    rows.append(("prefill %dx%d (s)" % prefill, timed(lambda: forward(ours, ids), args.repeats),
                 timed(lambda: forward(theirs, ids), args.repeats)))

    def step(model, optimizer, batch):
        model.train()
        loss = model(batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batch = torch.randint(0, 50257, train)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5)
    rows.append(("train step %dx%d (s)" % train, timed(lambda: step(ours, opt_ours, batch), args.repeats),
                 timed(lambda: step(theirs, opt_theirs, batch), args.repeats)))
    ours.eval()
    theirs.eval()

    floor = None
    if hasattr(ours, "generate"):
        prompt = torch.randint(0, 50257, (1, 32))
        new = 8 if args.small else 64

        def decode(model, **extra):
            with torch.inference_mode():
                out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                     pad_token_id=50256, **extra)
            assert out.shape[1] == 32 + new

        a = timed(lambda: decode(ours), max(1, args.repeats // 2)) / new * 1e3
        b = timed(lambda: decode(theirs), max(1, args.repeats // 2)) / new * 1e3
        rows.append(("decode ms/token (1x32 + %d greedy)" % new, a, b))
        start = time.perf_counter()
        decode(ours, compile_config={})  # torch.compile of the fixed-shape step (gpt2/torch/compiled.py)
        compile_seconds = time.perf_counter() - start
        c = timed(lambda: decode(ours, compile_config={}), max(1, args.repeats // 2)) / new * 1e3
        rows.append(("decode ms/token, ours with compile_config={} (first call %.1f s)" % compile_seconds, c, b))
        # Assisted greedy decoding, same tokens: the assistant is each model's own first 2 layers (with random
        # weights the later layers change the argmax little, so drafts are often accepted).
        import copy

        drafts = []
        for model in (ours, theirs):
            small = copy.deepcopy(model)
            small.transformer.h = small.transformer.h[:2]
            small.config.n_layer = 2
            drafts.append(small)
        plain = dict(max_new_tokens=new, pad_token_id=50256)  # transformers refuses min_new_tokens when assisted
        with torch.inference_mode():
            same = ours.generate(prompt, assistant_model=drafts[0], **plain)
            assert torch.equal(same, ours.generate(prompt, **plain))
        d = timed(lambda: ours.generate(prompt, assistant_model=drafts[0], **plain), max(1, args.repeats // 2))
        e = timed(lambda: theirs.generate(prompt, assistant_model=drafts[1], **plain), max(1, args.repeats // 2))
        rows.append(("decode ms/token, assistant_model = first 2 layers (both)", d / new * 1e3, e / new * 1e3))
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        floor = weight_bytes / read_bandwidth() * 1e3

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads\n")
    print("| measure | ours | transformers | ours / transformers |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.4f} | {b:.4f} | {a / b:.2f} |")
    if floor is not None:
        print(f"\nmemory-bandwidth floor for decoding: {floor:.2f} ms/token (weights / measured read bandwidth)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "floor_ms": floor}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
