"""The benchmark plots: reads the results files the benchmark scripts write (benchmarks/results/<script>.json, schema
in benchmarks/_results.py) and draws one PNG per topic into docs/img/:

    decode.png       ms per new token, per framework: ours, transformers, the matvec floor (bench_torch, bench_tf,
                     bench_flax)
    tokenizers.png   MB/s: ours, tiktoken, transformers (bench_tokenizer); TFGPT2Tokenizer (bench_tf_tokenizer)
    conversion.png   checkpoint conversion: seconds (a fresh process, and in-process) and peak memory (bench_convert)
    training.png     training tokens/s and peak memory: gpt2 train in each framework, transformers (bench_train)

A missing results file skips its plot (or its panel) with a line naming the command that makes it. Each figure's
footer gives the date, machine, load and versions of the runs drawn; a smoke run's figures are marked as such.

    .venv/bin/python benchmarks/plot.py                       # make plots
    .venv/bin/python benchmarks/plot.py --results DIR --out DIR
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

COLORS = {"ours": "#1f77b4", "transformers": "#ff7f0e", "transformers (jax.jit)": "#ffbb78", "floor": "#9e9e9e",
          "floor (split over threads)": "#cfcfcf", "tiktoken": "#2ca02c"}
FRAMEWORKS = {"torch": "PyTorch", "tf": "TensorFlow (Keras 3)", "flax": "Flax NNX"}
VERSIONS = {  # results file -> the versions its footer names
    "bench_torch": ("torch", "transformers"), "bench_tf": ("tensorflow", "keras", "transformers"),
    "bench_flax": ("jax", "flax", "transformers"), "bench_tokenizer": ("tiktoken", "tokenizers", "transformers"),
    "bench_tf_tokenizer": ("tensorflow", "tiktoken"),
    "bench_convert": ("torch", "tensorflow", "jax", "flax", "transformers", "safetensors", "h5py"),
    "bench_train": ("torch", "tensorflow", "keras", "jax", "flax", "optax", "transformers"),
}
SOURCES = {  # plot -> the results files it draws, in panel order
    "decode": ["bench_torch", "bench_tf", "bench_flax"],
    "tokenizers": ["bench_tokenizer", "bench_tf_tokenizer"],
    "conversion": ["bench_convert"],
    "training": ["bench_train"],
}


def color(candidate: str) -> str:
    if candidate in COLORS:
        return COLORS[candidate]
    for prefix in ("ours", "transformers", "tiktoken", "floor"):
        if candidate.startswith(prefix):
            return COLORS[prefix]
    return "#8c564b"  # TFGPT2Tokenizer and anything else of ours in the graph


def load(results: Path, plot: str) -> dict[str, dict]:
    """{script stem: results} of the files ``plot`` draws that exist; a line on stdout for each missing one."""
    found = {}
    for stem in SOURCES[plot]:
        path = results / f"{stem}.json"
        if path.is_file():
            found[stem] = _results.read(path)
        else:
            print(f"{plot}.png: {path} not found, its figures are left out; make it with: {_results.COMMANDS[stem]}")
    return found


def footer(docs: dict[str, dict]) -> str:
    """One line per results file: its date, machine, load and the versions that matter."""
    lines = []
    for stem, doc in docs.items():
        m, v = doc["machine"], doc["versions"]
        wanted = [k for k in VERSIONS.get(stem, ("transformers",)) if k in v]
        load = f"load {m.get('load_start')} -> {m.get('load_end')}"
        smoke = " SMOKE RUN (--small / --quick): figures meaningless;" if doc.get("smoke") else ""
        lines.append(f"{stem}.json:{smoke} {doc['started_utc'].replace('T', ' ').replace('Z', ' UTC')}, {m['cpu']}, "
                     f"{m['cores']} cores, {load}; python {v.get('python')}, "
                     + ", ".join(f"{k} {v[k]}" for k in wanted))
    return "\n".join(lines)


def finish(fig, docs: dict[str, dict], out: Path, name: str) -> Path:
    width, height = fig.get_size_inches()
    lines = [part for line in footer(docs).splitlines()
             for part in textwrap.wrap(line, int(width * 17), subsequent_indent="    ")]
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, (len(lines) * 0.13 + 0.05) / height, 1, 1))  # ~0.13 inch a line of 7 pt
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"{name}.png: written to {path}")
    return path


def title_suffix(doc: dict) -> str:
    return " [SMOKE RUN: meaningless]" if doc.get("smoke") else ""


# -- the plots ---------------------------------------------------------------------------------------------------------

def plot_decode(docs: dict[str, dict], out: Path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(docs), figsize=(4.2 * len(docs) + 0.6, 4.6), squeeze=False)
    for ax, (stem, doc) in zip(axes[0], docs.items()):
        rows = doc["figures"]
        ms = {r["candidate"]: r["ms_per_token"] for r in rows}
        framework = rows[0]["framework"] if rows else stem
        floor = ms.get("floor")
        names = list(ms)
        bars = ax.bar(range(len(names)), [ms[n] for n in names], color=[color(n) for n in names])
        for bar, name in zip(bars, names):
            label = f"{ms[name]:.1f} ms"
            if floor and not name.startswith("floor"):
                label += f"\n{ms[name] / floor:.2f}x floor"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
        ax.set_ylim(0, max(ms.values()) * 1.25)
        ratio = f"\nours / transformers: {ms['ours'] / ms['transformers']:.2f}" if {"ours", "transformers"} <= set(
            ms) else ""
        ax.set_title(f"{FRAMEWORKS.get(framework, framework)}{title_suffix(doc)}{ratio}", fontsize=10)
        ax.set_ylabel("ms per new token (lower is better)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Greedy decoding, batch 1, 32-token prompt + 64 new tokens, gpt2 124M, fp32, CPU\n"
                 "floor: the framework's own x @ W over every weight matrix (one row); PyTorch's runs on one thread, "
                 "so also split over the threads", fontsize=10)
    return finish(fig, docs, out, "decode")


def _hbars(ax, groups: dict[str, list[dict]], value: str, unit: str, fmt: str, reference_of) -> None:
    """Horizontal bars, one block per group under its name; each bar labelled with its value and its ratio to the
    group's reference (``reference_of(rows)`` -> (the reference value, its name) or None)."""
    y, ticks, labels = 1.0, [], []
    top = max((r[value] for rows in groups.values() for r in rows if r[value] is not None), default=1.0)
    for group, rows in groups.items():
        ref, ref_name = reference_of(rows) or (None, "")
        for r in rows:
            v = r[value]
            ticks.append(y)
            labels.append(r["candidate"])
            if v is None:
                ax.text(0, y, "  " + (r.get("note") or "failed")[:60], va="center", fontsize=7, color="#b00000")
            else:
                ax.barh(y, v, color=color(r["candidate"]), height=0.8)
                text = f" {v:{fmt}} {unit}"
                if ref and r["reference"] is False:
                    text += f" ({v / ref:.2f}x {ref_name})"
                ax.text(v, y, text, va="center", fontsize=7)
            y += 1
        ax.text(0, ticks[len(ticks) - len(rows)] - 0.75, group, fontsize=8, fontweight="bold", ha="left",
                va="bottom").set_in_layout(False)
        y += 1.2
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(y - 0.6, -0.7)  # top to bottom; room above the first group's name
    ax.set_xlim(0, top * 1.45)
    ax.grid(axis="x", alpha=0.3)


def _grouped(rows: list[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return groups


def plot_tokenizers(docs: dict[str, dict], out: Path):
    import matplotlib.pyplot as plt

    heights = [max(2.0, 0.24 * (len(d["figures"]) + 2.2 * len(_grouped(d["figures"], "group")))) for d in docs.values()]
    fig, axes = plt.subplots(len(docs), 1, figsize=(9.5, sum(heights) + 1.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    titles = {"bench_tokenizer": "Python tokenizers: ours (GPT2TokenizerFast on tiktoken's engine, GPT2Tokenizer in "
                                 "pure Python),\ntiktoken, transformers (on HF tokenizers; in Python)",
              "bench_tf_tokenizer": "TFGPT2Tokenizer (byte-level BPE inside the TensorFlow graph), one call per set"}
    for ax, (stem, doc) in zip(axes[:, 0], docs.items()):
        def reference(rows):
            return next(((r["MB_per_s"], r["candidate"]) for r in rows if r["reference"] and r["MB_per_s"]), None)

        if doc["figures"]:
            _hbars(ax, _grouped(doc["figures"], "group"), "MB_per_s", "MB/s", ".2f", reference)
        ax.set_title(titles.get(stem, stem) + title_suffix(doc), fontsize=9)
        ax.set_xlabel("MB of UTF-8 text per second (higher is better); (x): speed / the group's reference",
                      fontsize=8)
    fig.suptitle("Tokenizer throughput, OpenAI's GPT-2 vocabulary; every candidate's ids checked equal first",
                 fontsize=10)
    return finish(fig, docs, out, "tokenizers")


def plot_conversion(docs: dict[str, dict], out: Path):
    import matplotlib.pyplot as plt

    doc = docs["bench_convert"]
    rows = doc["figures"]
    panels = [("cold_s", "s", "a fresh process (imports included): seconds"),
              ("in_process_s", "s", "in-process (imports excluded): seconds"),
              ("peak_rss_mib", "MiB", "peak RSS of the fresh process: MiB")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.42 * len(rows) + 2.4), sharey=True)
    # "4b tf_model.h5 -> model.safetensors (low-level loader; ours = row 4)": the group names short enough for a panel
    groups = {re.sub(r"\(low-level loader; ours = row \d+\)", "(low-level loader)", name): rs
              for name, rs in _grouped(rows, "conversion").items()}
    for ax, (value, unit, title) in zip(axes, panels):
        shown = {g: [{**r, "candidate": r["candidate"], "reference": r["candidate"] == "transformers",
                      "note": r["note"] or ("not measured" if value != "in_process_s" else "")}
                     for r in rs] for g, rs in groups.items()}

        def reference(rs, value=value):
            return next(((r[value], "theirs") for r in rs if r["candidate"] == "transformers" and r[value]), None)

        _hbars(ax, shown, value, unit, ".2f" if unit == "s" else ".0f", reference)
        ax.set_title(title + " (lower is better)", fontsize=9)
        ax.set_xlabel(f"{unit}; (x): ours / transformers", fontsize=8)
    model = str(doc["details"].get("model", ""))
    model = "a tiny config" if model.startswith("small") else model
    fig.suptitle(f"Checkpoint conversion{title_suffix(doc)}: ours (gpt2 convert, no framework) against transformers' "
                 f"from_pretrained + save_pretrained\n{model}", fontsize=10)
    return finish(fig, docs, out, "conversion")


def plot_training(docs: dict[str, dict], out: Path):
    import matplotlib.pyplot as plt

    doc = docs["bench_train"]
    rows = doc["figures"]
    details = doc["details"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    ref = next((r["tokens_per_s"] for r in rows if r["row"] == "transformers-sdpa" and r["tokens_per_s"]), None)
    for ax, value, unit, better in ((axes[0], "tokens_per_s", "tokens/s", "higher"),
                                    (axes[1], "peak_rss_mib", "MiB", "lower")):
        names = [r["row"] for r in rows]
        for i, r in enumerate(rows):
            v = r[value]
            if v is None:
                ax.text(i, 0, (r["note"] or "failed")[:40], rotation=90, ha="center", va="bottom", fontsize=7,
                        color="#b00000")
                continue
            ax.bar(i, v, color=color(r["row"]))
            label = f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"
            if value == "tokens_per_s" and ref and r["row"] != "transformers-sdpa":
                label += f"\n{v / ref:.2f}x sdpa"
            ax.annotate(label, (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        top = max((r[value] for r in rows if r[value] is not None), default=1.0)
        ax.set_ylim(0, top * 1.25)
        ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
        ax.set_ylabel(f"{unit} ({better} is better)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("training throughput", fontsize=10)
    axes[1].set_title("peak RSS of the process", fontsize=10)
    shape = details.get("config", {})
    devices = ", ".join(sorted({r["device"] for r in rows if r["device"]})) or "?"
    fig.suptitle(f"Training{title_suffix(doc)}: gpt2 train (each framework's trainer) against transformers' "
                 f"GPT2LMHeadModel in a plain torch loop\nn_layer {shape.get('n_layer')}, n_embd "
                 f"{shape.get('n_embd')}, batch {details.get('batch_size')} x block {details.get('block_size')}, "
                 f"{details.get('precision')} on {devices}, AdamW + clip + warmup/cosine; median of {details.get('repeats')} "
                 f"updates, one process per row", fontsize=10)
    return finish(fig, docs, out, "training")


PLOTS = {"decode": plot_decode, "tokenizers": plot_tokenizers, "conversion": plot_conversion,
         "training": plot_training}


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=here / "results", help="folder of the results files "
                        "(default benchmarks/results)")
    parser.add_argument("--out", type=Path, default=here.parent / "docs" / "img", help="folder for the PNGs "
                        "(default docs/img)")
    parser.add_argument("--only", choices=sorted(PLOTS), action="append", help="draw only these plots (repeatable)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        raise FileNotFoundError(f"--results {args.results}: no such folder")
    import matplotlib

    matplotlib.use("Agg")
    for name in args.only or PLOTS:
        docs = load(args.results, name)
        if not docs:
            print(f"{name}.png: skipped (no results file)")
            continue
        PLOTS[name](docs, args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as e:
        print(f"plot.py: {e}", file=sys.stderr)
        sys.exit(2)
