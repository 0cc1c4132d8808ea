"""TFGPT2Tokenizer (tokenizing inside the TensorFlow graph) side by side, in one run, with our GPT2TokenizerFast and
tiktoken over the same vocabulary (keras-hub's and transformers' TF tokenizers too, where keras-hub / keras-nlp is
installed; it is not in this project's environment, and nothing is installed for the benchmark).

    (a) batch      the corpus of tests/corpus.py (~6 MB, ~950 documents: ~200 languages, code, emoji, whitespace,
                   adversarial documents) in one call; then its English-like real text (licenses, man pages,
                   changelogs, Python, C headers) in one call
    (b) short      28,000 short documents (median ~100 bytes, bench_tokenizer.py's (f)) in one call, and 10 calls of
                   one short string each (keras-hub #2056 measured 3.8 s for those 10 calls)
    (c) long       one document without split points: "a" * 1_000_000, and 1 MB of random ASCII letters (one piece
                   whose merges are thousands of different pairs: the merge loop's worst case, one round per distinct
                   merge; merged in overlapping windows of 256 bytes since, it took minutes over the whole piece)
    (d) load       constructing the layer from the packaged vocabulary, and its first call (the trace)

TFGPT2Tokenizer is called eagerly (an eager call runs one traced tf.function), with a batch of tf.string; the Python
tokenizers take the same texts as str. Every candidate's ids are checked against tiktoken's
``encode(allowed_special="all")`` before it is timed. Times: best of --repeats after a warm-up call.

    .venv/bin/python benchmarks/bench_tf_tokenizer.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_tf_tokenizer.py --quick    # a quarter of the corpus, 2 repeats

The figures go to benchmarks/results/bench_tf_tokenizer.json (benchmarks/_results.py; --json PATH: there instead); a
--quick run writes a file only when --json is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import tensorflow as tf  # noqa: E402

import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)
from bench_tokenizer import GENERATED, best_time, machine, make_tiktoken, short_documents  # noqa: E402
from corpus import gather, total_bytes  # noqa: E402
from gpt2 import GPT2TokenizerFast  # noqa: E402
from gpt2.tf.tokenizer import TFGPT2Tokenizer  # noqa: E402


def table(title: str, rows: list[tuple], nbytes: int, reference: str | None) -> None:
    ref = dict((r[0], r[1]) for r in rows).get(reference)
    print(f"\n**{title}**\n\n| candidate | time (s) | MB/s | vs {reference or '-'} | ids |\n|---|---:|---:|---:|---|")
    for name, seconds, ok in rows:
        ratio = f"{ref / seconds:.2f}" if ref else ""
        print(f"| {name} | {seconds:.3f} | {nbytes / 1e6 / seconds:.2f} | {ratio} | {'equal' if ok else 'DIFFER'} |")


def compare(title, texts, candidates, tt, repeats, reference="tiktoken encode_batch", group=None) -> dict:
    """Time and check every candidate on ``texts``, print the table; returns it for the results file (``group``:
    its name in the plot, None: not plotted)."""
    want = [tt.encode(t, allowed_special="all") for t in texts]
    rows = []
    for name, fn in candidates.items():
        seconds, ids = best_time(lambda: fn(texts), repeats)
        rows.append((name, seconds, ids == want))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    table(title, rows, nbytes, reference)
    return {"title": title, "group": group, "bytes": nbytes, "rows": [{"candidate": name, "seconds": seconds,
                                                      "MB_per_s": nbytes / 1e6 / seconds, "ids_ok": ok}
                                                     for name, seconds, ok in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the corpus, 2 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per candidate (default 5, --quick 2)")
    ap.add_argument("--json", metavar="PATH", help="write the results here (default: benchmarks/results/"
                    "bench_tf_tokenizer.json; a --quick run writes none unless given)")
    args = ap.parse_args()
    run = _results.start("bench_tf_tokenizer.py")
    repeats = args.repeats or (2 if args.quick else 5)
    info = machine()
    print(f"# {info['cpu']}, {info['cores']} cores, {info['date']}; tensorflow {tf.__version__}")

    start = time.perf_counter()
    tok = TFGPT2Tokenizer.from_pretrained("gpt2")
    built = time.perf_counter() - start
    start = time.perf_counter()
    tok.tokenize(["Hello world"])
    traced = time.perf_counter() - start
    tt, fast = make_tiktoken(), GPT2TokenizerFast.from_pretrained("gpt2")
    fast.model_max_length = 10**9

    def ours_tf(texts):
        return tok.tokenize(tf.constant([t.encode("utf-8") for t in texts])).to_list()

    candidates = {"TFGPT2Tokenizer (tf.string batch)": ours_tf,
                  "ours GPT2TokenizerFast tok(docs)": lambda ts: fast(ts)["input_ids"],
                  "tiktoken encode_batch": lambda ts: tt.encode_batch(ts, allowed_special="all")}
    for package in ("keras_hub", "keras_nlp"):
        if importlib.util.find_spec(package) is None:
            print(f"# {package} is not installed: its tokenizer is left out")

    docs = list(gather(0.25 if args.quick else 1.0))
    texts = [d.text for d in docs]
    tables = []
    tables.append(compare(f"(a) the corpus in one call ({len(docs)} docs, {total_bytes(docs) / 1e6:.1f} MB)", texts,
                          candidates, tt, repeats, group="corpus, one call"))
    english = [d.text for d in docs if d.kind in ("license", "man", "changelog", "python", "c-header")]
    tables.append(compare(f"(a) its English-like real text in one call ({len(english)} docs, "
                          f"{sum(len(t.encode()) for t in english) / 1e6:.1f} MB)", english, candidates, tt, repeats,
                          group="English-like text, one call"))

    short = short_documents([d for d in docs if d.kind not in GENERATED], 28_000 if not args.quick else 7_000)
    tables.append(compare(f"(b) {len(short)} short documents (median "
                          f"{statistics.median(len(t.encode()) for t in short):.0f} B) in one call", short, candidates,
                          tt, repeats, group=f"{len(short):,} short documents, one call"))
    singles = short[:10]
    one_by_one = {name: (lambda fn: lambda ts: [i for t in ts for i in fn([t])])(fn) for name, fn in candidates.items()}
    tables.append(compare("(b) 10 calls of one short string each (keras-hub #2056: 3.8 s)", singles, one_by_one, tt,
                          repeats))

    rng = random.Random(0)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(1_000_000))
    for name, text in (('"a" * 1_000_000', "a" * 1_000_000), ("1 MB of random letters (one piece)", letters)):
        tables.append(compare(f"(c) {name}, one call", [text], candidates, tt, min(repeats, 2)))

    print(f"\n**(d) load**: TFGPT2Tokenizer.from_pretrained('gpt2') {built:.2f} s; first call (trace) {traced:.2f} s; "
          f"whole run {time.perf_counter() - start:.0f} s")
    details = {"repeats": repeats, "build_s": built, "first_call_s": traced, "tables": tables}
    _results.write(run, kind="tokenizer", figures=_results.tf_tokenizer_figures(tables), details=details,
                   path=args.json, smoke=args.quick)


if __name__ == "__main__":
    main()
