"""benchmarks/plot.py and the results files the benchmark scripts write (benchmarks/_results.py), without running a
benchmark: results files are made by the shared writer from rows shaped as each script builds them, then drawn."""

from __future__ import annotations

import ast
import functools
import json
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import importlib.util  # noqa: E402

import _results  # noqa: E402

_spec = importlib.util.spec_from_file_location("benchmarks_plot", BENCHMARKS / "plot.py")
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)

# each script, the kind it writes and its smoke-run flag
SCRIPTS = {"bench_torch.py": ("decode", "small"), "bench_tf.py": ("decode", "small"),
           "bench_flax.py": ("decode", "quick"), "bench_tokenizer.py": ("tokenizer", "quick"),
           "bench_tf_tokenizer.py": ("tokenizer", "quick"), "bench_convert.py": ("convert", "small"),
           "bench_train.py": ("train", "quick")}


def tokenizer_rows() -> list[dict]:
    """Rows as bench_tokenizer's row() builds them (sections a, b, c, d, e, f; sets as its main() names them)."""
    def row(section, dataset, candidate, seconds, mb, ratio=None):
        return {"section": section, "set": dataset, "candidate": candidate, "seconds": seconds,
                "MB_per_s": mb, "Mtok_per_s": None if mb is None else mb / 2, "ratio": ratio, "ids_ok": True,
                "note": ""}

    corpus = "corpus (945 docs, 6.0 MB)"
    short = "28000 short docs (median 99 B)"
    return [
        row("a", corpus, "ours fast tok.encode(doc)", 0.49, 12.35, 0.96),
        row("a", corpus, "tiktoken encode(doc, allowed_special='all')", 0.47, 12.84, 1.0),
        row("a", corpus, "transformers fast tok.encode(doc)", 2.78, 2.17, 0.17),
        row("a", "20000 x 100 B", "ours fast tok.encode(doc)", 0.21, 9.59, 1.01),  # a size set: not plotted
        row("b", corpus, "ours fast tok(docs)['input_ids']", 0.35, 17.5, 1.11),
        row("b", corpus, "tiktoken encode_batch(docs, allowed_special='all')", 0.38, 15.8, 1.0),
        row("b", corpus, "transformers fast tok(docs)['input_ids']", 1.42, 4.27, 0.27),
        row("c", "corpus, cold (935 docs, 5.6 MB)", "ours GPT2Tokenizer.encode", 1.85, 3.03, 6.48),
        row("c", "corpus, warm (935 docs, 5.6 MB)", "ours GPT2Tokenizer.encode", 1.72, 3.26, 4.96),
        row("c", "corpus, warm (935 docs, 5.6 MB)", "transformers GPT2Tokenizer.encode", 8.52, 0.66, 1.0),
        row("d", "'\\n' * 1_000_000 (1 MB)", "tiktoken", None, None),  # failed: not plotted
        row("e", "load", "ours GPT2TokenizerFast.from_pretrained('gpt2')", 0.21, 0.0),
        row("f", f"{short}, one by one", "ours fast tok.encode(doc)", 0.34, 8.78, 0.97),
        row("f", f"{short}, one by one", "tiktoken encode(doc, allowed_special='all')", 0.33, 9.07, 1.0),
        row("f", f"{short}, batch", "ours fast tok(docs)['input_ids']", 0.38, 7.84, 5.06),
        row("f", f"{short}, batch", "tiktoken encode_batch(docs, allowed_special='all')", 1.93, 1.55, 1.0),
    ]


def tf_tokenizer_tables() -> list[dict]:
    """Tables as bench_tf_tokenizer's compare() returns them."""
    def table(title, group, mbs):
        names = ("TFGPT2Tokenizer (tf.string batch)", "ours GPT2TokenizerFast tok(docs)", "tiktoken encode_batch")
        return {"title": title, "group": group, "bytes": 6_000_000,
                "rows": [{"candidate": n, "seconds": 6 / mb, "MB_per_s": mb, "ids_ok": True}
                         for n, mb in zip(names, mbs)]}

    return [table("(a) the corpus in one call", "corpus, one call", (1.26, 4.99, 8.04)),
            table("(b) 28000 short documents in one call", "28,000 short documents, one call", (2.03, 2.91, 1.18)),
            table("(b) 10 calls of one short string each", None, (0.01, 0.5, 0.3))]


def convert_rows() -> list[dict]:
    """Rows as bench_convert's main() / measure() build them: figures, or "—" / "fails: ..." strings."""
    ok = {"ours_in": 0.64, "ours_check": "ok", "ours_cold": 1.64, "ours_rss": 981.0, "transformers_in": 3.75,
          "transformers_check": "ok", "transformers_cold": 13.34, "transformers_rss": 2392.0}
    failed = {**ok, "transformers_in": "fails: NotImplementedError: Cannot copy out of meta tensor; no data!",
              "transformers_cold": "—", "transformers_rss": "—", "transformers_check": "—"}
    small = {**ok, "ours_cold": "—", "ours_rss": "—", "transformers_cold": "—", "transformers_rss": "—"}
    return [{"conversion": "1 safetensors -> tf_model.h5", **ok},
            {"conversion": "4 tf_model.h5 -> model.safetensors (from_tf=True)", **failed},
            {"conversion": "3 safetensors -> pytorch_model.bin", **small}]


def train_results() -> list[dict]:
    """Per-row results as bench_train's run_row() returns them (a worker's result, or the reason it has none)."""
    def ok(name, tps, rss):
        return {"name": name, "ok": True, "tokens_per_s": tps, "device": "cpu", "peak_rss_mib": rss,
                "update_s": [1024 / tps] * 3, "warmup_s": [9.0], "losses": [10.9, 10.5, 10.1, 9.8],
                "versions": {"torch": "2.13.0+cpu"}, "process_s": 30.0}

    return [ok("transformers-sdpa", 177.0, 5711.0), ok("ours-torch", 166.0, 4257.0),
            {"name": "ours-tf", "ok": False, "error": "exit 1: RuntimeError: boom", "stderr_tail": "..."},
            ok("ours-flax", 166.0, 5193.0)]


@functools.lru_cache(maxsize=1)
def _documents() -> str:
    return json.dumps(_make_documents())


def documents() -> dict[str, dict]:
    """A fresh copy of the results objects (made once)."""
    return json.loads(_documents())


def _make_documents() -> dict[str, dict]:
    """{file stem: results object} for every script, made by the shared writer's document()."""
    def doc(script, kind, figures, details, smoke=False):
        run = _results.start(script, argv=[str(BENCHMARKS / script), "--repeats", "5"])
        return _results.document(run, kind=kind, figures=figures, details=details, smoke=smoke)

    return {
        "bench_torch": doc("bench_torch.py", "decode", _results.decode_figures(
            "torch", ours=30.4, transformers=40.7, floor=26.3), {"rows": [["prefill 4x512 (s)", 4.6, 5.4]]}),
        "bench_tf": doc("bench_tf.py", "decode", _results.decode_figures(
            "tf", ours=21.4, transformers=20.4, floor=18.6), {}),
        "bench_flax": doc("bench_flax.py", "decode", _results.decode_figures(
            "flax", ours=19.6, transformers=117.8, floor=17.4, others={"transformers (jax.jit)": 64.9}), {},
            smoke=True),
        "bench_tokenizer": doc("bench_tokenizer.py", "tokenizer", _results.tokenizer_figures(tokenizer_rows()), {}),
        "bench_tf_tokenizer": doc("bench_tf_tokenizer.py", "tokenizer",
                                  _results.tf_tokenizer_figures(tf_tokenizer_tables()), {}),
        "bench_convert": doc("bench_convert.py", "convert", _results.convert_figures(convert_rows()),
                             {"model": "gpt2 124M shape"}),
        "bench_train": doc("bench_train.py", "train", _results.train_figures(train_results()),
                           {"config": {"n_layer": 12, "n_embd": 768}, "batch_size": 4, "block_size": 256,
                            "precision": "fp32", "repeats": 5}),
    }


def write_all(folder: Path, skip=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, doc in documents().items():
        if stem not in skip:
            (folder / f"{stem}.json").write_text(json.dumps(doc))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_drawn_from_every_results_file(tmp_path, capsys):
    write_all(tmp_path / "results")
    assert plot.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    for name in ("decode", "tokenizers", "conversion", "training"):
        width, height = png_size(tmp_path / "img" / f"{name}.png")
        assert width > 600 and height > 300, (name, width, height)
        assert f"{name}.png: written to" in out
    assert "not found" not in out and "skipped" not in out


def test_missing_results_skip_their_plot_or_panel_with_the_command(tmp_path, capsys):
    write_all(tmp_path / "results", skip=("bench_train", "bench_tf"))
    assert plot.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "img"), "--only", "decode",
                      "--only", "training"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "img" / "training.png").exists()
    assert "training.png: skipped" in out
    assert f"make it with: {_results.COMMANDS['bench_train']}" in out
    assert "benchmarks/bench_train.py" in _results.COMMANDS["bench_train"]
    # one framework missing: decode.png is drawn with the other two, and the line names bench_tf's command
    png_size(tmp_path / "img" / "decode.png")
    assert f"bench_tf.json not found, its figures are left out; make it with: {_results.COMMANDS['bench_tf']}" in out


def test_figure_rows_as_the_scripts_build_them():
    docs = documents()
    for doc in docs.values():
        _results.check(json.loads(json.dumps(doc)))  # what plot.py reads back
        assert set(doc) >= {"script", "command", "started_utc", "finished_utc", "machine", "versions", "figures"}
        assert {"cpu", "cores", "load_start", "load_end"} <= set(doc["machine"])
        assert doc["command"].endswith(f"benchmarks/{doc['script']} --repeats 5")
    torch_rows = {r["candidate"]: r["ms_per_token"] for r in docs["bench_torch"]["figures"]}
    assert torch_rows == {"ours": 30.4, "transformers": 40.7, "floor": 26.3}
    tok = docs["bench_tokenizer"]["figures"]
    assert {r["group"] for r in tok} == {"corpus, per document", "corpus, one batch",
                                         "corpus, slow (pure Python), warm cache", "short documents, one by one",
                                         "short documents, one batch"}
    assert len(tok) == 12  # the size set, the cold slow row, (d) and (e) are left to the details
    tf_tok = docs["bench_tf_tokenizer"]["figures"]
    assert [r["reference"] for r in tf_tok] == [False, False, True] * 2
    convert = {(r["conversion"][0], r["candidate"]): r for r in docs["bench_convert"]["figures"]}
    assert convert["4", "transformers"]["in_process_s"] is None
    assert convert["4", "transformers"]["note"].startswith("fails: NotImplementedError")
    assert convert["3", "ours"]["cold_s"] is None and convert["3", "ours"]["note"] == ""
    assert convert["1", "transformers"]["peak_rss_mib"] == 2392.0
    train = {r["row"]: r for r in docs["bench_train"]["figures"]}
    assert train["ours-torch"]["tokens_per_s"] == 166.0 and train["ours-tf"]["tokens_per_s"] is None
    assert train["ours-tf"]["note"] == "exit 1: RuntimeError: boom"


def test_bad_results_are_refused_naming_the_file_and_field(tmp_path):
    doc = documents()["bench_torch"]
    path = tmp_path / "bench_torch.json"
    bad = json.loads(json.dumps(doc))
    bad["figures"][0]["ms_per_token"] = "fast"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bench_torch\.json: figures\[0\]\['ms_per_token'\]"):
        _results.read(path)
    bad = json.loads(json.dumps(doc))
    del bad["figures"][1]["candidate"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"figures\[1\] must have exactly the fields"):
        _results.read(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bench_torch.json: not JSON"):
        _results.read(path)
    with pytest.raises(ValueError, match="ms per token must be a number"):
        _results.decode_figures("torch", ours="—", transformers=1.0, floor=1.0)
    with pytest.raises(FileNotFoundError, match="--results"):
        plot.main(["--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "img")])


def test_write_default_path_smoke_runs_and_atomicity(tmp_path, capsys):
    run = _results.start("bench_tf.py")
    figures = _results.decode_figures("tf", ours=2.0, transformers=3.0, floor=1.0)
    assert _results.output_path(run, None, smoke=False) == BENCHMARKS / "results" / "bench_tf.json"
    assert _results.write(run, kind="decode", figures=figures, smoke=True) is None  # a smoke run: nothing written
    assert "writes no results file unless --json" in capsys.readouterr().err
    target = tmp_path / "deep" / "x.json"
    assert _results.write(run, kind="decode", figures=figures, details={"n": 1}, path=target, smoke=True) == target
    doc = _results.read(target)
    assert doc["smoke"] is True and doc["details"] == {"n": 1} and doc["kind"] == "decode"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]  # no temporary file left behind
    with pytest.raises(ValueError, match="kind 'speed'"):
        _results.write(run, kind="speed", figures=figures, path=target)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_writes_its_results_through_the_shared_writer(script):
    """Read, not run: the script starts its header with its own name, writes the kind plot.py draws it as, passes
    --json and its smoke flag, and plot.py knows the command that makes its file."""
    kind, smoke_flag = SCRIPTS[script]
    source = (BENCHMARKS / script).read_text()
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "_results"]
    starts = [c for c in calls if c.func.attr == "start"]
    writes = [c for c in calls if c.func.attr == "write"]
    assert [ast.literal_eval(c.args[0]) for c in starts] == [script]
    assert len(writes) == 1
    keywords = {k.arg: k.value for k in writes[0].keywords}
    assert ast.literal_eval(keywords["kind"]) == kind
    assert ast.unparse(keywords["path"]) == "args.json"
    assert f"args.{smoke_flag}" in ast.unparse(keywords["smoke"])
    assert '"--json"' in source
    stem = script.removesuffix(".py")
    assert _results.COMMANDS[stem].startswith(f".venv/bin/python benchmarks/{script}")
    assert any(stem in stems for stems in plot.SOURCES.values())


def test_the_docs_page_shows_every_plot_next_to_the_commands_that_make_it():
    import re

    page = (BENCHMARKS.parent / "docs" / "benchmarks.md").read_text()
    images = re.findall(r"!\[[^\]]+\]\(img/([a-z_]+)\.png\)", page)
    assert sorted(images) == sorted(plot.PLOTS)
    sections = re.split(r"\n## ", page)
    for name in plot.PLOTS:
        section = next(s for s in sections if f"(img/{name}.png)" in s)
        for stem in plot.SOURCES[name]:
            assert _results.COMMANDS[stem] in section, (name, stem)
    assert "make plots" in page and "../benchmarks/RESULTS.md" in page
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert "(docs/benchmarks.md)" in readme
