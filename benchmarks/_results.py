"""The figures a benchmark script writes, for benchmarks/plot.py: one JSON file per script, a common header and the
rows its plot reads ("figures"), beside the script's own detailed results ("details").

Every benchmark that feeds a plot does, in this order::

    run = _results.start("bench_torch.py")          # first thing in main(): the date and the load average at start
    ...                                             # the measurements, unchanged
    _results.write(run, kind="decode", figures=_results.decode_figures(...), details={...},
                   path=args.json, smoke=args.small)

and the file lands in benchmarks/results/<script>.json (bench_torch.json) unless ``--json PATH`` names another
place. A smoke run (``--small`` / ``--quick``: tiny shapes, meaningless figures) or a partial one (``--only``)
writes nothing unless ``--json`` is given, so that it never replaces the figures of a full run.

The file (schema 1)::

    {"schema": 1, "script": "bench_torch.py", "kind": "decode", "smoke": false,
     "command": ".venv/bin/python benchmarks/bench_torch.py --repeats 5",
     "started_utc": "2026-11-30T09:00:00Z", "finished_utc": "...", "seconds": 250.1,
     "machine": {"cpu": "...", "cores": 2, "memory_gib": 23.4, "platform": "...",
                 "load_start": 0.12, "load_end": 1.03},
     "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", ...},
     "commit": "4ac1186..." or null,
     "figures": [...rows of the kind, below...],
     "details": {...the script's own results, as it wrote them before...}}

The rows of each kind (KINDS below; ``check`` verifies a file against them):

- decode (bench_torch, bench_tf, bench_flax): one row per candidate: {"framework": "torch" | "tf" | "flax",
  "candidate": "ours" | "transformers" | "transformers (jax.jit)" | "floor", "ms_per_token": float}; "floor" is the
  matvec floor measured in the same run (x @ W over every weight matrix).
- tokenizer (bench_tokenizer, bench_tf_tokenizer): {"group": what was tokenized and how, "candidate": a short name,
  "MB_per_s": float or null (failed), "reference": whether the group's ratios are taken to this row}.
- convert (bench_convert): {"conversion": "safetensors -> tf_model.h5", "candidate": "ours" | "transformers",
  "in_process_s", "cold_s", "peak_rss_mib": float or null (not measured or failed), "note": "" or "fails: ..."}.
- train (bench_train): {"row": "ours-torch" | "transformers-sdpa" | ..., "device": "cpu", "tokens_per_s": float or
  null (failed), "peak_rss_mib": float or null, "note": "" or the failure}.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

SCHEMA = 1
BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
ROOT = BENCHMARKS.parent
PACKAGES = ("numpy", "torch", "tensorflow", "keras", "tf_keras", "jax", "jaxlib", "flax", "optax", "transformers",
            "tokenizers", "tiktoken", "safetensors", "h5py", "msgpack", "regex")

# kind -> {field: the types it may take}; every figure row of that kind has exactly these fields
NUMBER = (int, float)
OPTIONAL = (int, float, type(None))
KINDS = {
    "decode": {"framework": (str,), "candidate": (str,), "ms_per_token": NUMBER},
    "tokenizer": {"group": (str,), "candidate": (str,), "MB_per_s": OPTIONAL, "reference": (bool,)},
    "convert": {"conversion": (str,), "candidate": (str,), "in_process_s": OPTIONAL, "cold_s": OPTIONAL,
                "peak_rss_mib": OPTIONAL, "note": (str,)},
    "train": {"row": (str,), "device": (str,), "tokens_per_s": OPTIONAL, "peak_rss_mib": OPTIONAL, "note": (str,)},
}
# which script makes which file, and the command that makes it in full (plot.py prints it for a missing file)
COMMANDS = {
    "bench_torch": ".venv/bin/python benchmarks/bench_torch.py --repeats 5",
    "bench_tf": ".venv/bin/python benchmarks/bench_tf.py --repeats 5",
    "bench_flax": ".venv/bin/python benchmarks/bench_flax.py --repeats 3",
    "bench_tokenizer": ".venv/bin/python benchmarks/bench_tokenizer.py",
    "bench_tf_tokenizer": ".venv/bin/python benchmarks/bench_tf_tokenizer.py",
    "bench_convert": ".venv/bin/python benchmarks/bench_convert.py",
    "bench_train": ".venv/bin/python benchmarks/bench_train.py --repeats 5",
}


# -- timing ----------------------------------------------------------------------------------------------------------

def timed(fn, repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``fn`` after one call not measured (the warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- the header ------------------------------------------------------------------------------------------------------

def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError):
        pass
    return None


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a benchmark may use (read from metadata: no import)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@functools.lru_cache(maxsize=1)
def commit() -> str | None:
    """The repository's HEAD commit (with "+dirty" when tracked files differ from it), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(argv: list[str] | None = None) -> str:
    """The command as run from the repository root: the interpreter, the script path relative to the root."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        script = Path(argv[0]).resolve()
        argv[0] = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else argv[0]
    exe = Path(sys.executable)
    exe_text = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
    return shlex.join([exe_text, *argv])


def start(script: str, argv: list[str] | None = None) -> dict:
    """The header's first half, taken before any measurement: the script, its command, the date and load now."""
    if not script.endswith(".py"):
        raise ValueError(f"script must be the benchmark's file name (bench_x.py), got {script!r}")
    return {"script": script, "command": command_line(argv), "started_utc": utc_now(), "_clock": time.monotonic(),
            "load_start": load_average()}


# -- the file ----------------------------------------------------------------------------------------------------------

def default_path(script: str) -> Path:
    return RESULTS / (Path(script).stem + ".json")


def output_path(run: dict, path: str | os.PathLike | None, smoke: bool) -> Path | None:
    """Where the results go: ``path`` when given, else benchmarks/results/<script>.json, except for a smoke or
    partial run (None: nothing is written)."""
    if path is not None and str(path) != "":
        return Path(path)
    return None if smoke else default_path(run["script"])


def document(run: dict, *, kind: str, figures: list[dict], details: dict | None = None, smoke: bool = False) -> dict:
    """The whole JSON object: the header (finished now: the load at the end), the figure rows, the details."""
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib(), "platform": platform.platform(),
               "load_start": run["load_start"], "load_end": load_average()}
    doc = {"schema": SCHEMA, "script": run["script"], "kind": kind, "smoke": bool(smoke), "command": run["command"],
           "started_utc": run["started_utc"], "finished_utc": utc_now(),
           "seconds": round(time.monotonic() - run["_clock"], 1), "machine": machine, "versions": versions(),
           "commit": commit(), "figures": figures, "details": details or {}}
    check(doc)
    return doc


def write(run: dict, *, kind: str, figures: list[dict], details: dict | None = None,
          path: str | os.PathLike | None = None, smoke: bool = False) -> Path | None:
    """Check and write the results atomically (a temporary file in the same folder, then a rename); returns the path
    written, or None when a smoke / partial run was given no ``--json`` (a line on stderr says so)."""
    target = output_path(run, path, smoke)
    doc = document(run, kind=kind, figures=figures, details=details, smoke=smoke)
    if target is None:
        print(f"{run['script']}: a smoke or partial run writes no results file unless --json PATH is given",
              file=sys.stderr)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, default=_plain) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"{run['script']}: results written to {target}", file=sys.stderr)
    return target


def _plain(value):
    """json.dumps' fallback: numpy scalars and paths as plain values."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def check(doc: dict, where: str = "results") -> dict:
    """ValueError naming ``where`` and the field unless ``doc`` is a schema-1 results object; returns it."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    for key in ("schema", "script", "kind", "command", "started_utc", "machine", "versions", "figures"):
        if key not in doc:
            raise ValueError(f"{where}: missing {key!r}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"{where}: schema {doc['schema']!r}, this code reads schema {SCHEMA}")
    if doc["kind"] not in KINDS:
        raise ValueError(f"{where}: kind {doc['kind']!r} is not one of {sorted(KINDS)}")
    fields = KINDS[doc["kind"]]
    if not isinstance(doc["figures"], list):
        raise ValueError(f"{where}: 'figures' must be a list")
    for i, row in enumerate(doc["figures"]):
        if not isinstance(row, dict) or set(row) != set(fields):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{where}: figures[{i}] must have exactly the fields {sorted(fields)}, got {got}")
        for name, types in fields.items():
            value = row[name]
            if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
                raise ValueError(f"{where}: figures[{i}][{name!r}] = {value!r} is not "
                                 f"{' or '.join(t.__name__ for t in types)}")
    return doc


def read(path: str | os.PathLike) -> dict:
    """A results file, checked (FileNotFoundError / ValueError naming the file)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return check(doc, str(path))


# -- the figure rows, from what each script builds -------------------------------------------------------------------

def _number(value) -> float | None:
    """A measured figure, or None for the scripts' "—" / "fails: ..." strings and non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def decode_figures(framework: str, *, ours: float, transformers: float, floor: float,
                   others: dict[str, float] | None = None) -> list[dict]:
    """bench_torch / bench_tf / bench_flax: ms per new token of ours, transformers' (and other ways of calling it,
    ``others``: {"transformers (jax.jit)": ms}), and the matvec floor of the same run."""
    pairs = [("ours", ours), ("transformers", transformers), *(others or {}).items(), ("floor", floor)]
    rows = []
    for candidate, ms in pairs:
        if _number(ms) is None:
            raise ValueError(f"decode_figures({framework!r}): {candidate} ms per token must be a number, got {ms!r}")
        rows.append({"framework": framework, "candidate": candidate, "ms_per_token": float(ms)})
    return rows


# bench_tokenizer's rows (section, candidate) -> (the plot's group, a short candidate name). The corpus sets of (a)
# and (b), the warm slow tokenizers of (c) and the short documents of (f); the full table stays in "details".
TOKENIZER_GROUPS = {
    ("a", "ours fast tok.encode(doc)"): ("corpus, per document", "ours GPT2TokenizerFast"),
    ("a", "tiktoken encode(doc, allowed_special='all')"): ("corpus, per document", "tiktoken"),
    ("a", "transformers fast tok.encode(doc)"): ("corpus, per document", "transformers GPT2TokenizerFast"),
    ("b", "ours fast tok(docs)['input_ids']"): ("corpus, one batch", "ours GPT2TokenizerFast"),
    ("b", "tiktoken encode_batch(docs, allowed_special='all')"): ("corpus, one batch", "tiktoken"),
    ("b", "transformers fast tok(docs)['input_ids']"): ("corpus, one batch", "transformers GPT2TokenizerFast"),
    ("c", "ours GPT2Tokenizer.encode"): ("corpus, slow (pure Python), warm cache", "ours GPT2Tokenizer"),
    ("c", "transformers GPT2Tokenizer.encode"): ("corpus, slow (pure Python), warm cache",
                                                 "transformers GPT2Tokenizer"),
    ("f", "ours fast tok.encode(doc)"): ("short documents, one by one", "ours GPT2TokenizerFast"),
    ("f", "tiktoken encode(doc, allowed_special='all')"): ("short documents, one by one", "tiktoken"),
    ("f", "transformers fast tok(doc)['input_ids']"): ("short documents, one by one",
                                                       "transformers GPT2TokenizerFast"),
    ("f", "ours fast tok(docs)['input_ids']"): ("short documents, one batch", "ours GPT2TokenizerFast"),
    ("f", "tiktoken encode_batch(docs, allowed_special='all')"): ("short documents, one batch", "tiktoken"),
    ("f", "transformers fast tok(docs)['input_ids']"): ("short documents, one batch",
                                                        "transformers GPT2TokenizerFast"),
}
TOKENIZER_REFERENCES = {"tiktoken", "transformers GPT2Tokenizer"}


def tokenizer_figures(rows: list[dict]) -> list[dict]:
    """bench_tokenizer: its row dicts (section, set, candidate, MB_per_s, ...) -> the plot's rows (TOKENIZER_GROUPS;
    (a) and (b) on the whole corpus only, (c) warm only, (f) both modes)."""
    out = []
    for r in rows:
        key = (r["section"], r["candidate"])
        if key not in TOKENIZER_GROUPS:
            continue
        if r["section"] in "ab" and not r["set"].startswith("corpus"):
            continue
        if r["section"] == "c" and "warm" not in r["set"]:
            continue
        group, candidate = TOKENIZER_GROUPS[key]
        out.append({"group": group, "candidate": candidate, "MB_per_s": _number(r.get("MB_per_s")),
                    "reference": candidate in TOKENIZER_REFERENCES})
    return out


TF_TOKENIZER_NAMES = {"TFGPT2Tokenizer (tf.string batch)": "TFGPT2Tokenizer (in the TF graph)",
                      "ours GPT2TokenizerFast tok(docs)": "ours GPT2TokenizerFast", "tiktoken encode_batch": "tiktoken"}


def tf_tokenizer_figures(tables: list[dict]) -> list[dict]:
    """bench_tf_tokenizer: its tables ({"title", "group", "bytes", "rows": [{"candidate", "seconds", "MB_per_s",
    "ids_ok"}]}) -> the plot's rows, from the tables with a group (the throughput ones: single short strings and long
    pieces measure latency and worst cases, they stay in the details); tiktoken is the reference."""
    out = []
    for table in tables:
        if not table.get("group"):
            continue
        for r in table["rows"]:
            candidate = TF_TOKENIZER_NAMES.get(r["candidate"], r["candidate"])
            out.append({"group": table["group"], "candidate": candidate, "MB_per_s": _number(r.get("MB_per_s")),
                        "reference": candidate == "tiktoken"})
    return out


def convert_figures(rows: list[dict]) -> list[dict]:
    """bench_convert: its row dicts (conversion, ours_in, ours_cold, ours_rss, transformers_in, ...; a figure or a
    "—" / "fails: ..." string) -> one plot row per conversion and candidate."""
    out = []
    for r in rows:
        label = r["conversion"]
        for who in ("ours", "transformers"):
            values = [r.get(f"{who}_{k}") for k in ("in", "cold", "rss")]
            note = next((v for v in values if isinstance(v, str) and v.startswith("fails")), "")
            out.append({"conversion": label, "candidate": who, "in_process_s": _number(values[0]),
                        "cold_s": _number(values[1]), "peak_rss_mib": _number(values[2]), "note": note})
    return out


def train_figures(results: list[dict]) -> list[dict]:
    """bench_train: its per-row results (name, ok, tokens_per_s, device, peak_rss_mib or error) -> the plot's rows."""
    return [{"row": r["name"], "device": str(r.get("device", "")), "tokens_per_s": _number(r.get("tokens_per_s"))
             if r.get("ok") else None, "peak_rss_mib": _number(r.get("peak_rss_mib")) if r.get("ok") else None,
             "note": "" if r.get("ok") else str(r.get("error", "failed"))} for r in results]
