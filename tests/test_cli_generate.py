"""`gpt2 generate`: the prompt then its continuation, the same greedy text in each framework, streamed token by token
on a terminal, repeatable sampling, and every bad invocation as one line with a non-zero exit code."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import has
from gpt2.cli import main
from gpt2.commands import default_model, generate
from gpt2.common.checkpoint import save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.common.tokenizer_fast import GPT2TokenizerFast
from gpt2.demo import random_state

WORDS = Path(__file__).resolve().parent / "data" / "kjv-words.txt"  # the words of the shipped model's text

INSTALLED = [fw for fw, module in (("torch", "torch"), ("tf", "tensorflow"), ("flax", "flax")) if has(module)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random GPT-2 with OpenAI's vocabulary and its tokenizer files (peaky logits: varied greedy text)."""
    folder = tmp_path_factory.mktemp("tiny")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32)
    save_checkpoint(random_state(config, std=0.3), folder, config)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return str(folder)


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class Terminal(io.StringIO):
    """stdout on a terminal, recording each write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def isatty(self):
        return True

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_each_framework_streams_each_prompt_then_the_same_continuation(model, capsys, monkeypatch):
    """Piped: each text when done. On a terminal: the prompt first, then the words as they come (TextStreamer);
    the same greedy text in every framework."""
    argv = ["generate", "Hello world", "The sky is", "--model", model, "--max-new-tokens", "12"]
    code, plain, err = run(argv, capsys)
    assert code == 0, err
    first, second = plain.split("\n\n")
    assert first.startswith("Hello world") and second.startswith("The sky is") and second.endswith("\n")
    assert len(first) > len("Hello world") + 12  # 12 new tokens of a random model: text beyond the prompt
    for framework in INSTALLED:
        terminal = Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert main([*argv, "--framework", framework]) == 0
        monkeypatch.undo()
        assert terminal.getvalue() == plain, framework
        pieces = [w for w in terminal.writes if w]
        assert pieces[0].startswith("Hello") and len(pieces) >= 6, (framework, pieces)


def test_the_text_is_what_the_model_generates(model, capsys):
    torch = pytest.importorskip("torch")
    from gpt2.torch import GPT2LMHeadModel

    tok = GPT2TokenizerFast.from_pretrained(model)
    lm = GPT2LMHeadModel.from_pretrained(model).eval()
    ids = lm.generate(torch.tensor([tok.encode("Once upon a time")]), max_new_tokens=10, do_sample=False,
                      pad_token_id=tok.eos_token_id)
    code, out, _ = run(["generate", "Once upon a time", "--model", model, "--max-new-tokens", "10"], capsys)
    assert code == 0 and out == tok.decode(ids[0].tolist(), skip_special_tokens=True) + "\n"


def test_sampling_is_repeatable_with_a_seed(model, capsys):
    argv = ["generate", "Hello", "--model", model, "--do-sample", "--seed", "7", "--top-k", "40", "--top-p", "0.9",
            "--temperature", "1.5", "--repetition-penalty", "1.3", "--num-return-sequences", "3",
            "--max-new-tokens", "6"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    texts = out.rstrip("\n").split("\n")
    assert len(texts) == 3 and all(t.startswith("Hello") for t in texts) and len(set(texts)) > 1
    assert run(argv, capsys)[1] == out
    other = run([*argv[:6], "8", *argv[7:]], capsys)[1]  # another seed, other texts
    assert other != out


def test_a_reader_that_leaves_or_no_stdout_is_not_a_failure(model, capsys, monkeypatch):
    """`gpt2 generate ... | head -1` and `gpt2 generate ... >&-`: exit 0, nothing on stderr."""
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    for stdout in (Gone(), None):
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["generate", "Hello", "--model", model, "--max-new-tokens", "3"]) == 0
        monkeypatch.undo()
        assert capsys.readouterr().err == ""


def test_generate_returns_each_prompts_texts_and_new_tokens(model):
    out = io.StringIO()
    results = generate(["A", "B C"], model=model, max_new_tokens=5, out=out)
    assert [r.prompt for r in results] == ["A", "B C"] and all(r.new_tokens == [5] for r in results)
    assert out.getvalue() == results[0].texts[0] + "\n\n" + results[1].texts[0] + "\n"


def test_a_folder_without_tokenizer_files_uses_openai_vocabulary(tmp_path, capsys):
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16)
    save_checkpoint(random_state(config), tmp_path, config)
    code, out, err = run(["generate", "Hi", "--model", str(tmp_path), "--max-new-tokens", "3"], capsys)
    assert code == 0 and out.startswith("Hi")
    assert err.startswith("gpt2: note:") and "OpenAI's GPT-2 vocabulary" in err and err.count("\n") == 1


def one_line_error(capsys, argv, code=1):
    if code == 2:  # usage errors: argparse's exit
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    else:
        assert main(argv) == code
    out, err = capsys.readouterr()
    assert err.startswith("gpt2: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, code, message", [
    (["--model", "/no/such/model"], 1, "no config.json for '/no/such/model'"),
    (["--max-new-tokens", "0"], 2, "argument --max-new-tokens: must be above 0, got '0'"),
    (["--top-p", "1.5"], 2, "argument --top-p: must be in (0, 1]"),
    (["--temperature", "hot"], 2, "argument --temperature: expected a number, got 'hot'"),
    (["--framework", "jax"], 2, "argument --framework: invalid choice: 'jax'"),
    (["--beams", "4"], 2, "unrecognized arguments: --beams 4"),
    (["--temperature", "0.7"], 1, "--temperature only applies with --do-sample"),
    (["--num-return-sequences", "2"], 1, "--num-return-sequences above 1 needs --do-sample"),
    (["--max-new-tokens", "31"], 1, "prompt 'Hello there' is 2 tokens, leaves room for 30 new tokens in the "
                                    "model's context of 32, not --max-new-tokens 31"),
])
def test_bad_invocations_are_one_line(extra, code, message, model, capsys):
    argv = ["generate", "Hello there", "--model", model, *extra]  # a second --model wins
    assert message in one_line_error(capsys, argv, code)


def test_a_prompt_longer_than_the_context(model, capsys):
    err = one_line_error(capsys, ["generate", " ".join(["word"] * 40), "--model", model])
    assert "is 40 tokens, longer than the model's context of 32 tokens" in err


def test_a_framework_that_is_not_installed(model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt2.flax", None)  # import gpt2.flax now fails as when JAX is missing
    err = one_line_error(capsys, ["generate", "Hi", "--model", model, "--framework", "flax"])
    assert "--framework flax needs JAX and Flax, which is not installed here" in err
    assert "pip install 'gpt2[flax]'" in err


def test_a_vocabulary_without_its_tokenizer(tmp_path, capsys):
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=100, n_positions=16)
    save_checkpoint(random_state(config), tmp_path, config)
    err = one_line_error(capsys, ["generate", "Hi", "--model", str(tmp_path)])
    assert "no tokenizer files" in err and "100 tokens is not OpenAI's 50257" in err


def test_python_m_gpt2_generate_with_the_shipped_model():
    """The command as installed, offline, with the model the package ships: the prompt, then English words."""
    name = default_model()
    assert name is not None, "the package ships no model"
    out = subprocess.run([sys.executable, "-m", "gpt2", "generate", "In the beginning", "--max-new-tokens", "12"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("In the beginning") and out.stderr == ""
    words = re.findall(r"[a-z]+", out.stdout[len("In the beginning"):].lower())
    known = set(WORDS.read_text().split())
    assert len(words) >= 4 and all(w in known for w in words), out.stdout


@pytest.mark.skipif(not has("tensorflow"), reason="TensorFlow is not installed")
def test_tensorflow_start_up_chatter_is_not_printed():
    """--framework tf: TensorFlow's C++ log lines while it loads (oneDNN, no CUDA drivers) do not reach stderr;
    what the program itself writes to stderr afterwards does."""
    code = ("import sys; from gpt2.cli import _quiet_tensorflow; _quiet_tensorflow('tf'); "
            "import tensorflow; print('after', file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "after\n", out.stderr


def test_only_tensorflow_log_lines_are_dropped():
    from gpt2.cli import _TF_LOG_HEADER, _tf_chatter

    info = "I0000 00:00:1796029332.143661    2906 port.cc:153] oneDNN custom operations are on.\n"
    cuda = "E0000 00:00:1796029343.143143    2906 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
    other = "E0000 00:00:1796029343.143143    2906 op_kernel.cc:12] something failed\n"
    assert _tf_chatter(info, None) and _tf_chatter(_TF_LOG_HEADER + "\n", None)
    assert _tf_chatter(cuda, []) and not _tf_chatter(cuda, ["a GPU"]) and not _tf_chatter(other, [])
    assert not _tf_chatter("UserWarning: something\n", []) and not _tf_chatter("Traceback (most recent call last):\n", [])
