"""PyTorch models, side by side with transformers 4.57.6 in one process, on the gpt2 (124M) shape, fp32, CPU.

Measured (median of --repeats runs after a warm-up, same random weights loaded into both):
- prefill: forward of a (4, 512) batch, no grad;
- train step: forward + backward + AdamW step on a (4, 256) batch with labels;
- decode: greedy generate() of 64 new tokens after a 32-token prompt, batch 1, in ms per new token, against the
  matvec floor measured in the same run: ``x @ W`` (x of one row) over every weight matrix of the model (each
  block's c_attn, attn.c_proj, c_fc, mlp.c_proj and the lm_head), [in, out] contiguous -- what one decoding step
  must at least do. Ours by default (the fixed-shape step, run eagerly on the CPU), with disable_compile=True (the
  eager step: GPT2Model.forward per token) and with compile_config={} (torch.compile of the fixed step; its first
  call, the compilation, is reported apart); both with assistant_model = their own first 2 layers (assisted greedy
  decoding: the same tokens, fewer full forwards). Each decode is timed in turns with the floor (floor, decode,
  floor, decode, ...), and its ratio to the floor is the median over the turns of (decode / the mean of the floors
  measured just before and after it): a change of load on the machine moves both sides of a ratio.

Run:  .venv/bin/python benchmarks/bench_torch.py [--repeats 5] [--threads 2] [--small] [--json out.json]
The figures go to benchmarks/results/bench_torch.json (benchmarks/_results.py; --json PATH: there instead); a
--small run writes a file only when --json is given.
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
os.environ.setdefault("USE_TF", "0")  # transformers: do not import TensorFlow here
os.environ.setdefault("USE_FLAX", "0")

import torch  # noqa: E402

import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)


def floor_products(model, split: bool = False):
    """The matvec floor: a function computing ``x @ W`` once over every weight matrix of ``model`` (an LM-head
    model; W [in, out] contiguous, x one row). A decoding step reads every weight once, and a matrix-vector product
    is the least it can do with each. torch runs a one-row product on one thread; with ``split`` each product is
    instead made by the model's own ``gpt2.torch.model.project`` over its layers, which cuts it over the intra-op
    threads (a bmm over slabs of the input dimension, then a sum, and the bias): the least our decoding step can
    take with every thread streaming."""
    from gpt2.torch.model import project

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    matrices = [m.weight.detach().t().contiguous() for m in layers]
    rows = [torch.randn(1, w.shape[0]) for w in matrices]

    def products():
        with torch.inference_mode():
            for x, w in zip(rows, matrices):
                x @ w

    def split_products():
        with torch.inference_mode():
            for x, layer in zip(rows, layers):
                project(layer, x)

    return split_products if split else products


def in_turns(fn, floor, repeats: int, floors: list) -> tuple[float, float]:
    """(median seconds of ``fn``, median over the turns of fn / the floor around it): ``fn`` and ``floor`` run in
    turns, floor before and after every call of ``fn`` (each floor the median of 5 runs); ``floors`` collects the
    floor's measures."""
    fn()  # warm-up
    times, ratios = [], []
    before = _results.timed(floor, 5)
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        after = _results.timed(floor, 5)
        ratios.append(times[-1] / ((before + after) / 2))
        floors.append(after)
        before = after
    return statistics.median(times), statistics.median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke run")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/"
                        "bench_torch.json; a --small run writes none unless given)")
    args = parser.parse_args()
    run = _results.start("bench_torch.py")
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
    rows.append(("prefill %dx%d (s)" % prefill, _results.timed(lambda: forward(ours, ids), args.repeats),
                 _results.timed(lambda: forward(theirs, ids), args.repeats)))

    def step(model, optimizer, batch):
        model.train()
        loss = model(batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batch = torch.randint(0, 50257, train)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5)
    rows.append(("train step %dx%d (s)" % train, _results.timed(lambda: step(ours, opt_ours, batch), args.repeats),
                 _results.timed(lambda: step(theirs, opt_theirs, batch), args.repeats)))
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

        floors, per_token = [], {}  # per_token: (ms per token, its ratio to the floor measured around it)
        products = floor_products(ours)

        def measure(key, fn):
            seconds, ratio = in_turns(fn, products, args.repeats, floors)
            per_token[key] = (seconds / new * 1e3, ratio / new)  # per token, as the floor is
            return per_token[key][0]

        a = measure("ours", lambda: decode(ours))
        b = measure("theirs", lambda: decode(theirs))
        rows.append(("decode ms/token (1x32 + %d greedy)" % new, a, b))
        e = measure("eager", lambda: decode(ours, disable_compile=True))
        rows.append(("decode ms/token, ours with disable_compile=True (the eager step)", e, b))
        start = time.perf_counter()
        decode(ours, compile_config={})  # torch.compile of the fixed-shape step (gpt2/torch/compiled.py)
        compile_seconds = time.perf_counter() - start
        c = measure("compile", lambda: decode(ours, compile_config={}))
        rows.append(("decode ms/token, ours with compile_config={} (first call %.1f s)" % compile_seconds, c, b))
        floor = statistics.median(floors) * 1e3
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
        d, d_ratio = in_turns(lambda: ours.generate(prompt, assistant_model=drafts[0], **plain), products,
                              max(1, args.repeats // 2), floors)
        f, f_ratio = in_turns(lambda: theirs.generate(prompt, assistant_model=drafts[1], **plain), products,
                              max(1, args.repeats // 2), floors)
        per_token["assisted"], per_token["theirs assisted"] = (d / new * 1e3, d_ratio / new), (f / new * 1e3,
                                                                                          f_ratio / new)
        rows.append(("decode ms/token, assistant_model = first 2 layers (both)", d / new * 1e3, f / new * 1e3))
        floor = statistics.median(floors) * 1e3
        # The same products split over the threads, in turns with the plain floor (3 x 9 runs each)
        split_products, split_floors, plain_floors = floor_products(ours, split=True), [], []
        for _ in range(3):
            split_floors.append(_results.timed(split_products, 9))
            plain_floors.append(_results.timed(products, 9))
        split_floor = statistics.median(split_floors) * 1e3
        split_vs_plain = statistics.median(split_floors) / statistics.median(plain_floors)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads\n")
    print("| measure | ours | transformers | ours / transformers |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.4f} | {b:.4f} | {a / b:.2f} |")
    if floor is not None:
        print(f"\nmatvec floor for decoding (x @ W over every weight matrix), measured in turns with each decode: "
              f"median {floor:.2f} ms/token (range {min(floors) * 1e3:.2f}-{max(floors) * 1e3:.2f}, "
              f"{len(floors)} measures)")
        print("| decode (median over turns of time / the floor around it) | ours / floor | transformers / floor |")
        print("|---|---|---|")
        theirs_ratio = per_token["theirs"][1]
        for name, key in [("default (fixed step)", "ours"), ("disable_compile=True (eager step)", "eager"),
                          ("compile_config={}", "compile")]:
            print(f"| {name} | {per_token[key][1]:.2f} | {theirs_ratio:.2f} |")
        print(f"| assisted, first 2 layers | {per_token['assisted'][1]:.2f} | {per_token['theirs assisted'][1]:.2f} |")
        print(f"\nthe same products split over the {args.threads} threads (model.project): median "
              f"{split_floor:.2f} ms/token, {split_vs_plain:.2f}x the floor measured in turns with it; ours (default) "
              f"{per_token['ours'][0] / split_floor:.2f}x it, transformers {per_token['theirs'][0] / split_floor:.2f}x")
    if floor is not None:
        details = {"threads": args.threads, "repeats": args.repeats, "rows": rows, "floor_ms": floor,
                   "floors_ms": [t * 1e3 for t in floors], "decode_ms_and_ratio": per_token,
                   "split_floor_ms": split_floor, "split_floor_vs_floor": split_vs_plain}
        figures = _results.decode_figures("torch", ours=per_token["ours"][0], transformers=per_token["theirs"][0],
                                          floor=floor)
        figures.append({"framework": "torch", "candidate": "floor (split over threads)", "ms_per_token": split_floor})
        _results.write(run, kind="decode", figures=figures, details=details, path=args.json, smoke=args.small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
