"""Tokenizers side by side, in one run: ours (GPT2TokenizerFast on tiktoken, GPT2Tokenizer in pure Python) against
tiktoken over the same vocabulary and transformers 4.57 (GPT2TokenizerFast on HF tokenizers, GPT2Tokenizer in Python).

Text: the corpus of tests/corpus.py (real text found on this machine: licenses, Python, C headers, changelogs,
translations in ~200 languages, man pages, emoji, Unicode samples, whitespace, adversarial documents), and documents
of fixed sizes (100 B .. 1 MB) cut from its real text, one after another.

    (a) per document   ours ``tok.encode(doc)`` / ``tok(doc)["input_ids"]`` vs tiktoken ``encode_ordinary`` /
                       ``encode(doc, allowed_special="all")`` (the same special-token rule as ours) vs transformers'
                       fast ``tok(doc)["input_ids"]`` / ``tok.encode(doc)``
    (b) batch          ours ``tok(docs)["input_ids"]`` vs tiktoken ``encode_batch`` / ``encode_ordinary_batch`` vs
                       transformers' fast ``tok(docs)["input_ids"]`` (each with its own threads)
    (c) slow           our GPT2Tokenizer vs transformers' GPT2Tokenizer, ``encode`` per document: cold = piece cache
                       emptied before every document, warm = cache kept from a pass over the same documents
    (d) long           "a" * 1_000_000, "a" * 100_000, one 30 kB piece of random letters (transformers' slow
                       tokenizer is quadratic in a piece's length), a 1 M run of spaces, 4 MB of U+3000 and 1 MB of
                       newlines (tiktoken's regex panics on these runs: its BPE on the run is the reference)
    (e) load           constructing each tokenizer from the vocabulary files
    (f) short          28,000 short documents (median ~100 bytes: consecutive lines of the real text, joined until
                       76 bytes or more), one by one (the calls of (a)) and in one batch (the calls of (b)); the
                       candidates take turns on each block of 1,000 documents (one by one) or on the whole batch,
                       round after round, and each block's best of --repeats + 2 rounds counts, so that a shared
                       machine's load falls on all of them alike

Times are the best of --repeats passes after a warm-up pass (slow tokenizers: best of 2 / 1 with --quick). Every
candidate's ids are checked against tiktoken's ``encode(allowed_special="all")`` before it is timed. Ratio = the
candidate's speed / the reference's speed (> 1: faster than the reference).

    .venv/bin/python benchmarks/bench_tokenizer.py             # full corpus (~6 MB), 5 repeats: ~5.5 min on 2 cores
    .venv/bin/python benchmarks/bench_tokenizer.py --quick     # a quarter of the real text, 2 repeats: ~1.5 min
    .venv/bin/python benchmarks/bench_tokenizer.py --json out.json
    .venv/bin/python benchmarks/bench_tokenizer.py --only f    # one section (a..f)

The figures go to benchmarks/results/bench_tokenizer.json (benchmarks/_results.py; --json PATH: there instead); a
--quick, --only or --no-transformers run writes a file only when --json is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["RUST_BACKTRACE"] = "0"  # (d) makes tiktoken panic: one line on stderr, not a Rust backtrace
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import regex  # noqa: E402

from corpus import Document, gather, total_bytes  # noqa: E402
from gpt2 import GPT2Tokenizer, GPT2TokenizerFast  # noqa: E402
from gpt2.common.bpe import PRETOKENIZE_PATTERN, bytes_to_unicode  # noqa: E402
from gpt2.common.tokenizer import PACKAGED_VOCAB  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)

VOCAB, MERGES = str(PACKAGED_VOCAB / "vocab.json"), str(PACKAGED_VOCAB / "merges.txt")
ENDOFTEXT = "<|endoftext|>"
GENERATED = {"unicode", "emoji", "whitespace", "control", "adversarial"}


# -- the candidates ----------------------------------------------------------------------------------------------------

def make_tiktoken():
    import tiktoken

    vocab = json.loads(Path(VOCAB).read_text(encoding="utf-8"))
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(u2b[c] for c in token): i for token, i in vocab.items() if token != ENDOFTEXT}
    return tiktoken.Encoding("gpt2-local", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256})


def make_hf(fast: bool):
    import transformers

    tok = (transformers.GPT2TokenizerFast if fast else transformers.GPT2Tokenizer)(VOCAB, MERGES)
    tok.model_max_length = 10**9  # no "sequence too long" warning
    return tok


# -- timing ------------------------------------------------------------------------------------------------------------

def best_time(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls of fn() after one warm-up call, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def per_doc(encode, texts, before_each=None):
    def run():
        if before_each is None:
            return [encode(t) for t in texts]
        out = []
        for t in texts:
            before_each()
            out.append(encode(t))
        return out
    return run


def row(section, dataset, candidate, seconds, nbytes, ntokens, ok, ref_seconds=None, note=""):
    return {"section": section, "set": dataset, "candidate": candidate, "seconds": seconds,
            "MB_per_s": nbytes / 1e6 / seconds if seconds else None,
            "Mtok_per_s": ntokens / 1e6 / seconds if seconds else None,
            "ratio": (ref_seconds / seconds) if (ref_seconds and seconds) else None, "ids_ok": ok, "note": note}


def run_set(section, dataset, texts, candidates, repeats, want, reference):
    """Time every candidate on ``texts``; ``candidates``: {name: zero-argument function returning ids per text}.

    Candidates named "...ordinary..." read "<|endoftext|>" as plain text: their ids are checked on the other texts.
    """
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    ntokens = sum(map(len, want))
    times, rows = {}, []
    for name, fn in candidates.items():
        seconds, ids = best_time(fn, repeats)
        times[name] = seconds
        if "ordinary" in name:
            ok = all(a == b for a, b, t in zip(ids, want, texts) if ENDOFTEXT not in t) and len(ids) == len(want)
            note = "equal (no special tokens)" if ok and any(ENDOFTEXT in t for t in texts) else ""
        else:
            ok, note = ids == want, ""
        rows.append((name, seconds, ok, note))
    ref = times[reference]
    return [row(section, dataset, name, s, nbytes, ntokens, ok, ref, note) for name, s, ok, note in rows]


# -- the sections ------------------------------------------------------------------------------------------------------

def sized_documents(docs: list[Document], size: int, total: int) -> list[str]:
    """Consecutive ``size``-byte documents (cut at a character boundary) from the real text of the corpus."""
    text = "".join(d.text for d in docs if d.kind not in GENERATED)
    data = text.encode("utf-8")
    out, pos = [], 0
    while len(out) * size < total and pos < len(data):
        end = pos + size
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # not inside a character
            end += 1
        out.append(data[pos:end].decode("utf-8"))
        pos = end
    return out


def section_a(sets, tt, fast, hf_fast, repeats):
    rows = []
    for dataset, texts in sets.items():
        want = [tt.encode(t, allowed_special="all") for t in texts]
        candidates = {
            "ours fast tok.encode(doc)": per_doc(fast.encode, texts),
            "ours fast tok(doc)['input_ids']": per_doc(lambda t: fast(t)["input_ids"], texts),
            "tiktoken encode(doc, allowed_special='all')": per_doc(lambda t: tt.encode(t, allowed_special="all"),
                                                                   texts),
            "tiktoken encode_ordinary(doc)": per_doc(tt.encode_ordinary, texts),
        }
        if hf_fast is not None:
            candidates["transformers fast tok(doc)['input_ids']"] = per_doc(lambda t: hf_fast(t)["input_ids"], texts)
            candidates["transformers fast tok.encode(doc)"] = per_doc(hf_fast.encode, texts)
        rows += run_set("a", dataset, texts, candidates, repeats, want, "tiktoken encode(doc, allowed_special='all')")
    return rows


def section_b(sets, tt, fast, hf_fast, repeats):
    rows = []
    for dataset, texts in sets.items():
        want = [tt.encode(t, allowed_special="all") for t in texts]
        candidates = {
            "ours fast tok(docs)['input_ids']": lambda: fast(texts)["input_ids"],
            "ours fast, a loop of tok.encode(doc)": per_doc(fast.encode, texts),
            "tiktoken encode_batch(docs, allowed_special='all')": lambda: tt.encode_batch(texts, allowed_special="all"),
            "tiktoken encode_ordinary_batch(docs)": lambda: tt.encode_ordinary_batch(texts),
        }
        if hf_fast is not None:
            candidates["transformers fast tok(docs)['input_ids']"] = lambda: hf_fast(texts)["input_ids"]
        rows += run_set("b", dataset, texts, candidates, repeats, want,
                        "tiktoken encode_batch(docs, allowed_special='all')")
    return rows


def section_c(texts, tt, slow, hf_slow, repeats):
    want = [tt.encode(t, allowed_special="all") for t in texts]
    tokenizers = {"ours GPT2Tokenizer.encode": (slow, slow.bpe.clear_cache)}
    if hf_slow is not None:
        tokenizers["transformers GPT2Tokenizer.encode"] = (hf_slow, hf_slow.cache.clear)
    reference = "transformers GPT2Tokenizer.encode" if hf_slow is not None else "ours GPT2Tokenizer.encode"
    rows = []
    for mode in ("cold", "warm"):
        # cold: the cache is emptied before every document; warm: best_time's warm-up pass fills it
        candidates = {name: per_doc(tok.encode, texts, before_each=clear if mode == "cold" else None)
                      for name, (tok, clear) in tokenizers.items()}
        rows += run_set("c", f"corpus, {mode}", texts, candidates, repeats, want, reference)
    return rows


def section_d(tt, fast, slow, hf_fast, hf_slow, quick):
    rng = random.Random(0)
    letters = lambda n: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))  # noqa: E731
    hf_piece = 10_000 if quick else 30_000
    # (set, text, candidates, reference for the ratio)
    cases = [
        ("'a' * 1_000_000", "a" * 1_000_000, ["ours fast", "tiktoken", "transformers fast", "ours slow"], "tiktoken"),
        ("'a' * 100_000", "a" * 100_000, ["ours slow", "transformers slow"], "transformers slow"),
        ("random letters, one 100 kB piece", letters(100_000), ["ours slow"], None),
        (f"random letters, one {hf_piece // 1000} kB piece", letters(hf_piece), ["ours slow", "transformers slow"],
         "transformers slow"),
        ("'x' + ' ' * 1_000_000 + 'y'", "x" + " " * 1_000_000 + "y",
         ["ours fast", "tiktoken", "transformers fast", "ours slow"], "transformers fast"),
        # Whitespace runs tiktoken's regex cannot take (it panics from 999,999 on): the reference is tiktoken's own
        # BPE on the run as one piece (encode_single_piece), which is what our fast tokenizer calls for it.
        ("'\\u3000' * 1_333_333 (4 MB)", "\u3000" * 1_333_333,
         ["ours fast", "tiktoken", "tiktoken single piece", "ours slow"], "tiktoken single piece"),
        ("'\\n' * 1_000_000 (1 MB)", "\n" * 1_000_000,
         ["ours fast", "tiktoken", "tiktoken single piece", "ours slow"], "tiktoken single piece"),
    ]
    encoders = {
        "ours fast": fast.encode,
        "tiktoken": lambda t: tt.encode(t, allowed_special="all"),
        "tiktoken single piece": lambda t: tt._encode_single_piece(t.encode("utf-8")),
        "ours slow": lambda t: (slow.bpe.clear_cache(), slow.encode(t))[1],
    }
    if hf_fast is not None:
        encoders["transformers fast"] = hf_fast.encode
        encoders["transformers slow"] = lambda t: (hf_slow.cache.clear(), hf_slow.encode(t))[1]
    rows = []
    for dataset, text, names, reference in cases:
        results = {}
        for name in names:
            if name not in encoders:
                continue
            start = time.perf_counter()
            try:
                ids = encoders[name](text)
            except BaseException as e:  # tiktoken's panics are pyo3 PanicException, a BaseException
                if isinstance(e, KeyboardInterrupt):
                    raise
                results[name] = (None, None, f"fails: {type(e).__name__}")
                continue
            results[name] = (time.perf_counter() - start, ids, "")
        nbytes = len(text.encode("utf-8"))
        want = next((ids for _, ids, _ in results.values() if ids is not None), None)
        ref = results.get(reference, (None,))[0]
        for name, (seconds, ids, note) in results.items():
            rows.append(row("d", dataset, name, seconds, nbytes, len(ids or ()), ids is not None and ids == want, ref,
                            note))
    return rows


def short_documents(docs: list[Document], count: int = 28_000, minimum: int = 76) -> list[str]:
    """``count`` short documents spread over the real text: consecutive non-blank lines joined (by newlines) until
    they reach ``minimum`` bytes (median ~100 bytes: chat messages, titles, log lines, short paragraphs)."""
    out = []
    for doc in docs:
        if doc.kind in GENERATED:
            continue
        current = ""
        for line in doc.text.split("\n"):
            if line.strip():
                current = f"{current}\n{line}" if current else line
                if len(current.encode("utf-8")) >= minimum:
                    out.append(current)
                    current = ""
        if current:
            out.append(current)
    step = len(out) / count
    return [out[int(i * step)] for i in range(count)] if len(out) > count else out


def interleaved(candidates: dict, texts: list[str], rounds: int, block: int | None) -> tuple[dict, dict]:
    """Each candidate (a function of a list of texts -> ids per text) on ``texts`` in blocks of ``block`` texts (None:
    all at once): every round runs each block through every candidate in turn; a candidate's time is the sum over
    blocks of its best time on that block. Returns the times and each candidate's ids."""
    block = block or len(texts)
    blocks = [texts[i:i + block] for i in range(0, len(texts), block)]
    best = {name: [float("inf")] * len(blocks) for name in candidates}
    ids = {name: [i for b in blocks for i in fn(b)] for name, fn in candidates.items()}  # warm-up, and the ids
    for _ in range(rounds):
        for k, part in enumerate(blocks):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn(part)
                best[name][k] = min(best[name][k], time.perf_counter() - start)
    return {name: sum(times) for name, times in best.items()}, ids


def section_f(texts, tt, fast, hf_fast, repeats):
    dataset = f"{len(texts)} short docs (median {statistics.median(len(t.encode()) for t in texts):.0f} B)"
    want = [tt.encode(t, allowed_special="all") for t in texts]
    nbytes, ntokens = sum(len(t.encode("utf-8")) for t in texts), sum(map(len, want))
    one = {
        "ours fast tok.encode(doc)": lambda ts: [fast.encode(t) for t in ts],
        "ours fast tok(doc)['input_ids']": lambda ts: [fast(t)["input_ids"] for t in ts],
        "tiktoken encode(doc, allowed_special='all')": lambda ts: [tt.encode(t, allowed_special="all") for t in ts],
        "tiktoken encode_ordinary(doc)": lambda ts: [tt.encode_ordinary(t) for t in ts],
    }
    batch = {
        "ours fast tok(docs)['input_ids']": lambda ts: fast(ts)["input_ids"],
        "tiktoken encode_batch(docs, allowed_special='all')": lambda ts: tt.encode_batch(ts, allowed_special="all"),
        "tiktoken encode_ordinary_batch(docs)": lambda ts: tt.encode_ordinary_batch(ts),
    }
    if hf_fast is not None:
        one["transformers fast tok(doc)['input_ids']"] = lambda ts: [hf_fast(t)["input_ids"] for t in ts]
        batch["transformers fast tok(docs)['input_ids']"] = lambda ts: hf_fast(ts)["input_ids"]
    rows = []
    for mode, candidates, block, reference in (
            ("one by one", one, 1_000, "tiktoken encode(doc, allowed_special='all')"),
            ("batch", batch, None, "tiktoken encode_batch(docs, allowed_special='all')")):
        times, ids = interleaved(candidates, texts, repeats + 2, block)
        for name, seconds in times.items():
            if "ordinary" in name:
                ok = all(a == b for a, b, t in zip(ids[name], want, texts) if ENDOFTEXT not in t)
            else:
                ok = ids[name] == want
            rows.append(row("f", f"{dataset}, {mode}", name, seconds, nbytes, ntokens, ok, times[reference]))
    return rows


def section_e(repeats):
    makers = {"ours GPT2TokenizerFast.from_pretrained('gpt2')": lambda: GPT2TokenizerFast.from_pretrained("gpt2"),
              "ours GPT2Tokenizer.from_pretrained('gpt2')": lambda: GPT2Tokenizer.from_pretrained("gpt2"),
              "tiktoken Encoding(...) from vocab.json": make_tiktoken,
              "transformers GPT2TokenizerFast(vocab, merges)": lambda: make_hf(True),
              "transformers GPT2Tokenizer(vocab, merges)": lambda: make_hf(False)}
    rows = []
    for name, make in makers.items():
        try:
            seconds, _ = best_time(make, repeats)
        except ImportError:
            continue
        rows.append(row("e", "load", name, seconds, 0, 0, None))
    return rows


# -- report ------------------------------------------------------------------------------------------------------------

def machine() -> dict:
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for package in ("gpt2", "tiktoken", "transformers", "tokenizers", "regex"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def markdown(rows: list[dict]) -> str:
    titles = {"a": "(a) per document (ratio: speed / tiktoken `encode(allowed_special='all')`)",
              "b": "(b) batch, one call (ratio: speed / tiktoken `encode_batch(allowed_special='all')`)",
              "c": "(c) slow tokenizers, `encode` per document (ratio: speed / transformers' GPT2Tokenizer)",
              "d": "(d) long documents, one call each, slow tokenizers' caches cleared first (ratio: speed / the last "
                   "reference of the set: tiktoken, transformers' slow, transformers' fast)",
              "e": "(e) load: construct the tokenizer from the vocabulary files (best of 3)",
              "f": "(f) short documents, one by one and in one batch, candidates in turn (ratio: speed / tiktoken "
                   "`encode(allowed_special='all')`, resp. `encode_batch(allowed_special='all')`)"}
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    out = []
    for section, title in titles.items():
        part = [r for r in rows if r["section"] == section]
        if not part:
            continue
        if section == "e":
            out += [f"**{title}**", "", "| candidate | time (s) |", "|---|---:|"]
            out += [f"| {r['candidate']} | {fmt(r['seconds'], '.3f')} |" for r in part]
            out.append("")
            continue
        out += [f"**{title}**", "", "| set | candidate | time (s) | MB/s | M tokens/s | ratio | ids |",
                "|---|---|---:|---:|---:|---:|---|"]
        for r in part:
            ok = r["note"] or ("equal" if r["ids_ok"] else "DIFFER")
            out.append(f"| {r['set']} | {r['candidate']} | {fmt(r['seconds'], '.3f')} | {fmt(r['MB_per_s'], '.2f')} "
                       f"| {fmt(r['Mtok_per_s'], '.2f')} | {fmt(r['ratio'], '.2f')} | {ok} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the real text, fewer repeats, smaller sizes")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per candidate (default 5, --quick 2)")
    ap.add_argument("--json", metavar="PATH", help="write every figure to this JSON file (default: benchmarks/"
                    "results/bench_tokenizer.json; a --quick / --only / --no-transformers run writes none unless "
                    "given)")
    ap.add_argument("--no-transformers", action="store_true", help="leave transformers out")
    ap.add_argument("--only", choices=list("abcdef"), action="append", help="run only these sections (repeatable)")
    args = ap.parse_args()
    run_info = _results.start("bench_tokenizer.py")
    repeats = args.repeats or (2 if args.quick else 5)
    slow_repeats = 1 if args.quick else 2

    t0 = time.perf_counter()
    docs = list(gather(0.25 if args.quick else 1.0))
    tt = make_tiktoken()
    fast, slow = GPT2TokenizerFast.from_pretrained("gpt2"), GPT2Tokenizer.from_pretrained("gpt2")
    fast.model_max_length = slow.model_max_length = 10**9  # no "sequence too long" warning, as for transformers'
    hf_fast = hf_slow = None
    if not args.no_transformers:
        try:
            hf_fast, hf_slow = make_hf(True), make_hf(False)
        except ImportError:
            print("transformers is not installed: its rows are left out")
    info = machine()
    info["corpus"] = {"documents": len(docs), "MB": round(total_bytes(docs) / 1e6, 3)}
    print(f"# {info['cpu']}, {info['cores']} cores, {info['date']}; {info['versions']}")
    print(f"# corpus: {len(docs)} documents, {total_bytes(docs) / 1e6:.2f} MB\n")

    run = set(args.only or "abcdef")
    total = 500_000 if args.quick else 2_000_000
    corpus_name = f"corpus ({len(docs)} docs, {total_bytes(docs) / 1e6:.1f} MB)"
    rows, rows_b, rows_c, rows_d, rows_e, rows_f = [], [], [], [], [], []
    if "a" in run:
        sets_a = {corpus_name: [d.text for d in docs]}
        for size in (100, 1_000, 10_000, 100_000, 1_000_000):
            texts = sized_documents(docs, size, max(total, size))
            sets_a[f"{len(texts)} x {size:,} B"] = texts
        rows = section_a(sets_a, tt, fast, hf_fast, repeats)
        print(markdown(rows), flush=True)
    if "b" in run:
        sets_b = {corpus_name: [d.text for d in docs],
                  **{f"{len(t)} x {s:,} B": t
                     for s in (100, 1_000, 100_000) for t in [sized_documents(docs, s, total)]}}
        rows_b = section_b(sets_b, tt, fast, hf_fast, repeats)
        print(markdown(rows_b), flush=True)
    if "c" in run:
        # transformers' slow merge loop is quadratic in a piece's length: documents with a piece over 300 characters
        # are left out of (c) (for both); (d) shows those pieces.
        slow_texts = [d.text for d in docs
                      if max(map(len, regex.findall(PRETOKENIZE_PATTERN, d.text)), default=0) <= 300]
        rows_c = section_c(slow_texts, tt, slow, hf_slow, slow_repeats)
        for r in rows_c:
            r["set"] += f" ({len(slow_texts)} docs, {sum(len(t.encode()) for t in slow_texts) / 1e6:.1f} MB)"
        print(markdown(rows_c), flush=True)
    if "d" in run:
        rows_d = section_d(tt, fast, slow, hf_fast, hf_slow, args.quick)
        print(markdown(rows_d), flush=True)
    if "e" in run:
        rows_e = section_e(3)
        print(markdown(rows_e))
    if "f" in run:
        rows_f = section_f(short_documents(docs, 7_000 if args.quick else 28_000), tt, fast, hf_fast, repeats)
        print(markdown(rows_f), flush=True)
    print(f"# total {time.perf_counter() - t0:.0f} s")
    all_rows = rows + rows_b + rows_c + rows_d + rows_e + rows_f
    _results.write(run_info, kind="tokenizer", figures=_results.tokenizer_figures(all_rows),
                   details={"machine": info, "repeats": repeats, "rows": all_rows}, path=args.json,
                   smoke=args.quick or bool(args.only) or args.no_transformers)


if __name__ == "__main__":
    main()
