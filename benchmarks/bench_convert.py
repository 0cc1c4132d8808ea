"""Checkpoint conversion: ours (``gpt2.common.convert``, no framework) against the transformers 4.57 way.

Source: ``transformers.GPT2LMHeadModel(GPT2Config())`` (random weights, the real 124M shape) saved with
``save_pretrained`` (model.safetensors); the tf_model.h5 and flax_model.msgpack sources are written from it by
transformers' TF and Flax ``save_pretrained``. CASES below lists the conversions and the exact code of both sides
(safetensors -> tf / flax / pytorch, tf -> safetensors, flax -> safetensors; rows 4b/5b time transformers' low-level
``load_{tf2,flax}_checkpoint_in_pytorch_model``, which still works where ``from_tf`` / ``from_flax`` fail).

Per candidate, the same code string in two modes: in-process = median of --repeats runs in this process after one
warm-up, imports excluded; cold = median of --repeats fresh ``python -c`` processes, imports included (a user's
real cost), with that process's peak RSS (its VmHWM: interpreter + imports + conversion). Every output of ours is
loaded back with ``load_checkpoint`` and asserted equal (names, dtypes, np.array_equal) to the source tensors;
transformers' outputs are checked the same way and reported. A failing candidate shows as "fails: <error>".

    .venv/bin/python benchmarks/bench_convert.py                 # full size, 3 repeats, in-process + cold
    .venv/bin/python benchmarks/bench_convert.py --small         # tiny config, in-process only: smoke run (< 30 s)
    .venv/bin/python benchmarks/bench_convert.py --repeats 5 --json results.json

The figures go to benchmarks/results/bench_convert.json (benchmarks/_results.py; --json PATH: there instead); a
--small run writes a file only when --json is given.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gpt2.common.checkpoint import load_checkpoint  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402  (benchmarks/_results.py: the results file plot.py reads)

OURS = "from gpt2.common.convert import convert"


def hf(imports: str, call: str) -> tuple[str, str]:
    return "import transformers; transformers.logging.set_verbosity_error(); " + imports, call


LOAD = ("from transformers import GPT2LMHeadModel; "
        "from transformers.modeling_{0}_pytorch_utils import load_{1}_in_pytorch_model")
LOW = "load_{1}_in_pytorch_model(GPT2LMHeadModel(transformers.GPT2Config.from_pretrained(SRC)), SRC + '/{2}')" \
      ".save_pretrained(DST)"
TF_LOW, FLAX_LOW = ("tf", "tf2_checkpoint", "tf_model.h5"), ("flax", "flax_checkpoint", "flax_model.msgpack")
# (label, source format, ours (imports, call) or None for "as the row above", transformers (imports, call))
CASES = [
    ("1 safetensors -> tf_model.h5", "safetensors", (OURS, "convert(SRC, DST, to='tf')"),
     hf("from transformers import TFGPT2LMHeadModel",
        "TFGPT2LMHeadModel.from_pretrained(SRC, from_pt=True).save_pretrained(DST)")),
    ("2 safetensors -> flax_model.msgpack", "safetensors", (OURS, "convert(SRC, DST, to='flax')"),
     hf("from transformers import FlaxGPT2LMHeadModel",
        "FlaxGPT2LMHeadModel.from_pretrained(SRC, from_pt=True).save_pretrained(DST)")),
    ("3 safetensors -> pytorch_model.bin", "safetensors", (OURS, "convert(SRC, DST, to='pytorch')"),
     hf("from transformers import GPT2LMHeadModel",
        "GPT2LMHeadModel.from_pretrained(SRC).save_pretrained(DST, safe_serialization=False)")),
    ("4 tf_model.h5 -> model.safetensors (from_tf=True)", "tf", (OURS, "convert(SRC, DST, to='safetensors')"),
     hf("from transformers import GPT2LMHeadModel",
        "GPT2LMHeadModel.from_pretrained(SRC, from_tf=True).save_pretrained(DST)")),
    ("4b tf_model.h5 -> model.safetensors (low-level loader; ours = row 4)", "tf", None,
     hf(LOAD.format(*TF_LOW), LOW.format(*TF_LOW))),
    ("5 flax_model.msgpack -> model.safetensors (from_flax=True)", "flax",
     (OURS, "convert(SRC, DST, to='safetensors')"),
     hf("from transformers import GPT2LMHeadModel",
        "GPT2LMHeadModel.from_pretrained(SRC, from_flax=True).save_pretrained(DST)")),
    ("5b flax_model.msgpack -> model.safetensors (low-level loader; ours = row 5)", "flax", None,
     hf(LOAD.format(*FLAX_LOW), LOW.format(*FLAX_LOW))),
]
SMALL = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=128)


class Failed(Exception):
    """A candidate raised: the table shows 'fails: <error>'."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:160]


@contextlib.contextmanager
def quiet_stderr():
    """Silence fd 2 (absl/XLA print C++ banners that TF_CPP_MIN_LOG_LEVEL does not reach) for framework imports."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved), os.close(null)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def check(dst: Path, expected: dict) -> str:
    try:
        return "ok" if same(load_checkpoint(dst)[0], expected) else "differs"
    except Exception as e:  # noqa: BLE001 -- an unreadable output is a finding, reported in the table
        return f"unreadable ({first_line(e)})"


def in_process(code, src: Path, work: Path, repeats: int):
    """(median seconds, last output folder) of ``repeats`` timed runs after one warm-up; Failed on error."""
    imports, call = code
    ns: dict = {}
    compiled = compile(call, "<candidate>", "exec")
    times = []
    try:
        with quiet_stderr():
            exec(imports, ns)
        for i in range(repeats + 1):
            dst = work / f"run{i}"
            ns.update(SRC=str(src), DST=str(dst))
            gc.collect()
            t = time.perf_counter()
            exec(compiled, ns)
            times.append(time.perf_counter() - t)
            if i < repeats:
                shutil.rmtree(dst, ignore_errors=True)
    except Exception as e:  # noqa: BLE001
        raise Failed(first_line(e)) from None
    return statistics.median(times[1:]), dst


def cold(code, src: Path, work: Path, repeats: int, expected: dict):
    """(median seconds, max peak RSS MiB, output check) of ``repeats`` fresh processes; Failed on error.

    Peak RSS is the child's own VmHWM: ru_maxrss would not do, Linux carries the forking parent's high-water mark
    (this process, with every framework loaded) over exec into the child's.
    """
    imports, call = code
    times, rss, status = [], [], "ok"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    for i in range(repeats):
        dst = work / f"cold{i}"
        script = (f"SRC, DST = {str(src)!r}, {str(dst)!r}\n{imports}\n{call}\n"
                  "print(*[ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')])")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise Failed((lines[-1] if lines else f"exit {proc.returncode}")[:160])
        hwm = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("VmHWM")]
        rss.append(int(hwm[-1]) / 1024 if hwm else float("nan"))  # kB -> MiB
        status = check(dst, expected) if status == "ok" else status
        shutil.rmtree(dst, ignore_errors=True)
    return statistics.median(times), max(rss), status


def measure(who: str, code, src: Path, work: Path, expected: dict, repeats: int, run_cold: bool) -> dict:
    row = {f"{who}_cold": "—", f"{who}_rss": "—", f"{who}_check": "—"}
    try:
        row[f"{who}_in"], out = in_process(code, src, work, repeats)
        row[f"{who}_check"] = check(out, expected)
    except Failed as e:
        return {**row, f"{who}_in": f"fails: {e}"}
    assert who != "ours" or row["ours_check"] == "ok", f"our output is {row['ours_check']}"  # no timing wrong work
    if run_cold:
        try:
            row[f"{who}_cold"], row[f"{who}_rss"], status = cold(code, src, work, repeats, expected)
            assert who != "ours" or status == "ok", f"our cold-process output is {status}"
        except Failed as e:
            row[f"{who}_cold"] = f"fails: {e}"
    shutil.rmtree(work, ignore_errors=True)
    return row


def make_sources(tmp: Path, small: bool) -> dict[str, Path]:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(**SMALL) if small else transformers.GPT2Config()
    srcs = {k: tmp / f"src_{k}" for k in ("safetensors", "tf", "flax")}
    transformers.GPT2LMHeadModel(config).save_pretrained(srcs["safetensors"])
    transformers.TFGPT2LMHeadModel.from_pretrained(srcs["safetensors"], from_pt=True).save_pretrained(srcs["tf"])
    transformers.FlaxGPT2LMHeadModel.from_pretrained(srcs["safetensors"], from_pt=True).save_pretrained(srcs["flax"])
    return srcs


def versions() -> dict[str, str]:
    names = "numpy torch tensorflow tf_keras jax flax transformers safetensors h5py msgpack".split()
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return {"python": platform.python_version(), **found}


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    return f"{name} ({os.cpu_count()} cores)"


def fmt(x, digits=2):
    return x if isinstance(x, str) else f"{x:.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else "—"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per candidate and mode (median reported)")
    p.add_argument("--small", action="store_true", help="tiny config, in-process only unless --cold: a smoke run")
    p.add_argument("--cold", action=argparse.BooleanOptionalAction, default=None,
                   help="also time fresh processes (default: on, off with --small)")
    p.add_argument("--json", type=Path, help="write the results here (default: benchmarks/results/bench_convert.json; "
                   "a --small run writes none unless given)")
    args = p.parse_args()
    run = _results.start("bench_convert.py")
    run_cold = (not args.small) if args.cold is None else args.cold
    warnings.filterwarnings("ignore")
    rows, load_start = [], os.getloadavg()[0]  # a busy machine skews every figure: the load is reported
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp_name:
        tmp = Path(tmp_name)
        with quiet_stderr():
            srcs = make_sources(tmp, args.small)
        expected = {k: load_checkpoint(v)[0] for k, v in srcs.items()}
        assert same(expected["tf"], expected["safetensors"]) and same(expected["flax"], expected["safetensors"])
        for label, src_key, ours, theirs in CASES:
            row = {"conversion": label}
            if ours is None:  # 4b / 5b: ours is the run of the row above
                row.update({k: v for k, v in rows[-1].items() if k.startswith("ours")})
            for who, code in (("ours", ours), ("transformers", theirs)):
                if code is not None:
                    print(f"{label}: {who} ...", file=sys.stderr, flush=True)
                    row.update(measure(who, code, srcs[src_key], tmp / who, expected[src_key], args.repeats, run_cold))
            rows.append(row)

    size = "small " + json.dumps(SMALL) if args.small else "gpt2 124M shape (GPT2Config() defaults), random weights"
    load = f"1-min load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    print(f"\nModel: {size}; repeats: {args.repeats}; machine: {cpu_name()}; {load}")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n")
    print("| conversion | ours in-process (s) | transformers in-process (s) | ratio ours/theirs | ours cold (s) "
          "| transformers cold (s) | ratio ours/theirs | peak RSS ours / theirs (MiB) | transformers output |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['conversion']} | {fmt(r['ours_in'])} | {fmt(r['transformers_in'])} "
              f"| {ratio(r['ours_in'], r['transformers_in'])} | {fmt(r['ours_cold'])} | {fmt(r['transformers_cold'])} "
              f"| {ratio(r['ours_cold'], r['transformers_cold'])} "
              f"| {fmt(r['ours_rss'], 0)} / {fmt(r['transformers_rss'], 0)} | {r['transformers_check']} |")
    details = {"model": size, "repeats": args.repeats, "cold": run_cold, "machine": cpu_name(), "load": load,
               "versions": versions(), "rows": rows}
    _results.write(run, kind="convert", figures=_results.convert_figures(rows), details=details, path=args.json,
                   smoke=args.small)


if __name__ == "__main__":
    main()
