"""`gpt2 score`: perplexity with transformers' sliding window (windows of max_length every stride tokens, only each
window's new tokens scored), checked against direct computations, equal in the three frameworks; bad input as one
line with a non-zero exit code."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import has
from gpt2.cli import main
from gpt2.commands import score, windows
from gpt2.common.checkpoint import save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.common.tokenizer_fast import GPT2TokenizerFast
from gpt2.demo import random_state

GENESIS = Path(__file__).resolve().parent / "data" / "genesis.txt"
INSTALLED = [fw for fw, module in (("torch", "torch"), ("tf", "tensorflow"), ("flax", "flax")) if has(module)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random GPT-2 (OpenAI's vocabulary, n_positions 32) with peaky logits: NLLs that differ by token."""
    folder = tmp_path_factory.mktemp("tiny")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32)
    save_checkpoint(random_state(config, std=0.3), folder, config)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    (folder / "short.txt").write_text("In the beginning God created the heaven and the earth.")  # 11 tokens
    (folder / "long.txt").write_text(GENESIS.read_text()[:800])  # ~200 tokens: many windows of 32
    return folder


@pytest.mark.parametrize("n, length, stride", [(1, 4, 2), (5, 8, 4), (8, 8, 8), (9, 8, 8), (100, 32, 16),
                                               (100, 32, 32), (100, 32, 1), (101, 32, 7), (33, 32, 31)])
def test_windows_score_each_token_once(n, length, stride):
    """Every token after the first is scored once, but for a window's first token when the window shares no
    context with the one before (stride == max_length: it has nothing to be predicted from, as in the guide)."""
    spans = list(windows(n, length, stride))
    assert spans[0][0] == 0 and spans[-1][1] == n
    scored, unpredicted = [], []
    for begin, end, new in spans:
        assert 0 < end - begin <= length and 0 < new <= end - begin
        scored.extend(range(max(end - new, begin + 1), end))  # positions with a prediction, not yet scored
        if new == end - begin and begin > 0:
            unpredicted.append(begin)
    assert sorted(scored + unpredicted) == list(range(1, n)) and len(set(scored)) == len(scored)
    assert not unpredicted or stride == length


def test_windows_walk_as_the_guide_does():
    # transformers' guide: for begin in range(0, n, stride): end = min(begin + max_length, n); trg_len = end - prev
    assert list(windows(10, 4, 2)) == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert list(windows(10, 4, 4)) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert list(windows(3, 4, 2)) == [(0, 3, 3)]


def torch_model(model):
    pytest.importorskip("torch")
    from gpt2.torch import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(model).eval()


def test_one_window_is_the_models_own_loss(model, texts):
    """A text that fits the context: exp of the mean loss of one forward with labels = ids."""
    import torch

    lm = torch_model(model)
    ids = torch.tensor([GPT2TokenizerFast.from_pretrained(model).encode((texts / "short.txt").read_text())])
    with torch.no_grad():
        loss = lm(ids, labels=ids).loss.item()
    [result] = score([str(texts / "short.txt")], model=model, stride=16)
    assert result.windows == 1 and result.tokens == ids.shape[1] - 1
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    assert abs(result.mean_nll - math.log(50257)) > 0.1  # the logits are not uniform: the test can tell tokens apart


@pytest.mark.parametrize("stride", [32, 5])
def test_sliding_windows_equal_the_guides_loop(stride, model, texts):
    """The guide's loop, with the model's own loss and -100 labels for each window's context; each window's mean
    loss weighted by the tokens it scored."""
    import torch

    lm = torch_model(model)
    ids = torch.tensor([GPT2TokenizerFast.from_pretrained(model).encode((texts / "long.txt").read_text())])
    n, nll_sum, n_tokens, prev_end, count = ids.shape[1], 0.0, 0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + 32, n)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = lm(input_ids, labels=target_ids).loss.item()
        scored = int((target_ids[:, 1:] != -100).sum())  # the labels left after the model's shift
        nll_sum, n_tokens, prev_end, count = nll_sum + loss * scored, n_tokens + scored, end, count + 1
        if end == n:
            break
    [result] = score([str(texts / "long.txt")], model=model, stride=stride)
    assert n > 150 and result.windows == count and result.tokens == n_tokens
    assert n_tokens == (n - 1 if stride < 32 else n - count)  # side by side: each window's first has no context
    assert result.nll == pytest.approx(nll_sum, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-5)


def test_more_context_changes_the_score(model, texts):
    """Overlapping windows give tokens more context than side-by-side ones: a different (here random) number."""
    [side] = score([str(texts / "long.txt")], model=model, stride=32)
    [overlap] = score([str(texts / "long.txt")], model=model, stride=8)
    [short] = score([str(texts / "long.txt")], model=model, max_length=8, stride=8)
    assert overlap.tokens == side.tokens + side.windows - 1 and short.tokens == overlap.tokens - short.windows + 1
    assert len({round(side.nll, 3), round(overlap.nll, 3), round(short.nll, 3)}) == 3
    assert short.windows > side.windows and overlap.windows > side.windows


def test_the_frameworks_agree(model, texts):
    if len(INSTALLED) < 2:
        pytest.skip("one framework installed: nothing to compare")
    results = {fw: score([str(texts / "long.txt"), str(texts / "short.txt")], model=model, framework=fw, stride=12)
               for fw in INSTALLED}
    for fw, scores in results.items():
        for mine, reference in zip(scores, results["torch"]):
            assert mine.tokens == reference.tokens and mine.windows == reference.windows
            assert abs(mine.mean_nll - reference.mean_nll) < 1e-4, (fw, mine, reference)


def test_the_command_reports_each_file_and_all(model, texts, capsys):
    argv = ["score", str(texts / "long.txt"), str(texts / "short.txt"), "--model", model, "--stride", "12"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    results = score([str(texts / "long.txt"), str(texts / "short.txt")], model=model, stride=12)
    assert len(lines) == 3 and lines[0].startswith(str(texts / "long.txt")) and lines[2].startswith("all ")
    for line, result in zip(lines, results):
        assert f"perplexity {result.perplexity:10.3f}" in line and f"{result.tokens} tokens scored" in line
    total = math.exp(sum(r.nll for r in results) / sum(r.tokens for r in results))
    assert f"perplexity {total:10.3f}" in lines[2]


def test_standard_input_is_scored_as_a_file(model, texts, capsys, monkeypatch):
    """`gpt2 score -` reads the text from standard input: the same score as the file, labelled <stdin>."""
    import io

    data = (texts / "short.txt").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["score", "-", "--model", model, "--stride", "12"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    reference = score([str(texts / "short.txt")], model=model, stride=12)[0]
    assert line.startswith("<stdin>") and f"perplexity {reference.perplexity:10.3f}" in line
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"abc\xff")))
    assert "standard input: not UTF-8 text (byte 3: b'\\xff')" in one_line_error(capsys, ["score", "-", "--model", model])
    assert "'-' (standard input) can be given once" in one_line_error(capsys, ["score", "-", "-", "--model", model])


def one_line_error(capsys, argv, code=1):
    if code == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    else:
        assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("gpt2: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("make, extra, code, message", [
    (None, ["--stride", "40"], 1, "--stride must be from 1 to --max-length (32), got 40"),
    (None, ["--max-length", "64"], 1, "--max-length must be from 2 to the model's n_positions (32), got 64"),
    (None, ["--max-length", "16", "--stride", "17"], 1, "--stride must be from 1 to --max-length (16), got 17"),
    (None, ["--stride", "0"], 2, "argument --stride: must be above 0"),
    (None, ["--framework", "mxnet"], 2, "invalid choice: 'mxnet'"),
    (lambda p: p.write_bytes(b""), [], 1, "empty.txt: 0 tokens; a perplexity needs at least 2"),
    (lambda p: p.write_text("Hello"), [], 1, "empty.txt: 1 token; a perplexity needs at least 2"),
    (lambda p: p.write_bytes(b"abc\xff\xfe"), [], 1, "empty.txt: not UTF-8 text (byte 3: b'\\xff')"),
    (lambda p: p.mkdir(), [], 1, "empty.txt is a folder; give text files"),
    ("missing", [], 1, "no file"),
])
def test_bad_input_is_one_line(make, extra, code, message, model, texts, tmp_path, capsys):
    path = tmp_path / "empty.txt"
    if callable(make):
        make(path)
    files = [str(path)] if make is not None else [str(texts / "short.txt")]
    assert message in one_line_error(capsys, ["score", *files, "--model", model, *extra], code)


def test_a_bad_file_is_found_before_the_model_is_loaded(model, texts, tmp_path, capsys, monkeypatch):
    import gpt2.commands

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(gpt2.commands, "Engine", never)
    err = one_line_error(capsys, ["score", str(texts / "short.txt"), str(tmp_path / "no.txt"), "--model", model])
    assert "no.txt" in err


def test_a_framework_that_is_not_installed(model, texts, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt2.tf", None)
    err = one_line_error(capsys, ["score", str(texts / "short.txt"), "--model", model, "--framework", "tf"])
    assert "--framework tf needs TensorFlow, which is not installed here" in err


def test_a_missing_model(texts, capsys):
    assert "no config.json for '/no/such'" in one_line_error(capsys, ["score", str(texts / "short.txt"),
                                                                      "--model", "/no/such"])


def test_nll_is_computed_in_float64():
    from gpt2.commands import window_nll

    logits = np.array([[1000.0, 0.0], [0.0, 1000.0], [0.0, 0.0]], np.float32)  # exp overflows without the shift
    total, count = window_nll(logits, np.array([0, 1, 0]), new=3)
    assert count == 2 and total == pytest.approx(2000.0, abs=1e-9)  # log(1 + e^-1000) vanishes


def test_the_shipped_model_by_default(tmp_path, capsys):
    """No --model: the shipped model, which has learned the King James text (uniform guessing would give 50257)."""
    (tmp_path / "genesis.txt").write_text(GENESIS.read_text()[:3000])
    assert main(["score", str(tmp_path / "genesis.txt")]) == 0
    line = capsys.readouterr().out
    assert float(line.split("perplexity")[1].split()[0]) < 1000, line
