"""Tokenizers on hostile input (issue 8): memory bounds, Unicode tables, whitespace runs, special tokens in untrusted
text, over-long sequences, and broken tokenizer files (each a ValueError naming the file and what is wrong)."""

from __future__ import annotations

import json
import random
import shutil
import string
import sys
import unicodedata
import warnings

import pytest
import regex

from conftest import requires_transformers
from gpt2 import GPT2Tokenizer, GPT2TokenizerFast
from gpt2.common import tokenizer_fast
from gpt2.common.bpe import ByteLevelBPE, read_vocab
from gpt2.common.tokenizer import PACKAGED_VOCAB

VOCAB, MERGES = str(PACKAGED_VOCAB / "vocab.json"), str(PACKAGED_VOCAB / "merges.txt")
KINDS = ["slow", "fast"]


def ours(kind, **kwargs):
    return (GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast).from_pretrained("gpt2", **kwargs)


def theirs(kind, **kwargs):
    import transformers

    transformers.logging.set_verbosity_error()
    return (transformers.GPT2Tokenizer if kind == "slow" else transformers.GPT2TokenizerFast)(VOCAB, MERGES, **kwargs)


# -- 1. the piece cache is bounded in bytes ------------------------------------------------------------------------

def _held_bytes(bpe) -> int:
    """What the cache's keys, values and dict really take (ids are shared with the vocabulary's ints)."""
    return sys.getsizeof(bpe._cache) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in bpe._cache.items())


def test_cache_is_bounded_in_bytes():
    budget = 1 << 18
    bpe = ByteLevelBPE(*read_vocab(VOCAB, MERGES), cache_bytes=budget)
    rng = random.Random(0)
    # Distinct long words, ASCII and not: a count bound of 100,000 entries would hold all of them (~1 MB).
    for alphabet in (string.ascii_lowercase, "αβγδεζηθικλμ"):
        text = "".join(" " + "".join(rng.choices(alphabet, k=300)) for _ in range(1000))
        bpe.encode_ordinary(text)
        info = bpe.cache_info()
        assert 0 < info.currbytes <= info.maxbytes == budget
        assert _held_bytes(bpe) <= info.currbytes  # the estimate is an upper bound of the real size
    # A piece bigger than the whole budget is not kept; normal text still hits.
    bpe.clear_cache()
    bpe.encode_ordinary("x" * (2 * budget))
    assert bpe.cache_info().currsize == 0
    bpe.encode_ordinary(" the the the")
    assert bpe.cache_info().hits == 2
    with pytest.raises(ValueError, match="cache_bytes"):
        ByteLevelBPE(*read_vocab(VOCAB, MERGES), cache_bytes=-1)


# -- 2. recently assigned letters: both tokenizers follow the regex module ---------------------------------------

def _ranges(codepoints):
    out = []
    for c in codepoints:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


@pytest.mark.skipif(unicodedata.unidata_version != "14.0.0", reason="the table is Unicode 14.0's complement")
def test_recent_table_covers_every_new_letter_and_number():
    """Recompute what the regex module calls \\p{L} / \\p{N} and Unicode 14.0 does not: all in the table."""
    letter, number = regex.compile(r"\p{L}"), regex.compile(r"\p{N}")

    def kind(ch, new):
        if new:
            return "L" if letter.match(ch) else "N" if number.match(ch) else "O"
        k = unicodedata.category(ch)[0]
        return k if k in "LN" else "O"

    differ = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and kind(chr(c), True) != kind(chr(c), False)]
    assert len(differ) > 20_000
    recent = tokenizer_fast._RECENT
    missing = [hex(c) for c in differ if not recent.match(chr(c))]
    assert not missing, f"new letters not in _RECENT_RANGES: {missing[:20]}"


@pytest.mark.parametrize("kind", KINDS)
def test_recent_letters_found_example(kind):
    # "\U00032936" (CJK extension J, Unicode 17) is a letter to the regex module: one piece with the next letter.
    assert ours(kind).encode("\U00032936\u69ad") == [172, 110, 97, 35050, 99, 255]


def test_recent_check_finds_both_planes():
    has = tokenizer_fast._has_recent
    assert has("a\u0558") and has("x\U00032936") and has("\ud800\U0001e4d0")
    assert not has("日本語 😀 é") and not has("\ud800")


def test_fast_equals_slow_on_recent_letters():
    fast, slow = ours("fast"), ours("slow")
    rng = random.Random(1)
    codepoints = [c for a, b in (map(lambda x: int(x, 16), (item.split("-") * 2)[:2])
                                 for item in tokenizer_fast._RECENT_RANGES.split()) for c in range(a, b + 1)]
    neighbours = ["a", "1", " ", "!", "\u69ad", "é", "\n", "。", "日本", "ab1"]
    texts = []
    for c in rng.sample(codepoints, 3000):
        texts.append(rng.choice(neighbours) + chr(c) + rng.choice(neighbours) + chr(rng.choice(codepoints)))
    assert fast(texts)["input_ids"] == slow(texts)["input_ids"]


# -- 5. long whitespace runs -------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Token indices sequence length is longer")  # the point is the long text
@pytest.mark.parametrize("text", ["\u3000" * 1_000_000, "\n" * 1_000_000, "x" + " " * 1_000_000 + "y",
                                  "a\t" + "\r\n" * 600_000 + "b c", "é" + "\u2003" * 300_000 + "1"])
def test_long_whitespace_runs_on_tiktoken_without_the_python_engine(text, monkeypatch):
    slow = ours("slow")
    fast = ours("fast")
    monkeypatch.setattr(fast.bpe, "_python_engine", lambda: pytest.fail("fell back to the Python engine"))
    assert fast.encode(text) == slow.encode(text)


def test_whitespace_run_cuts_are_exact(monkeypatch):
    """With a run threshold of 5, random whitespace-heavy strings: the cut path equals the Python engine."""
    monkeypatch.setattr(tokenizer_fast, "_LONG_RUN", 5)
    monkeypatch.setattr(tokenizer_fast, "_SAMPLE", 2)
    monkeypatch.setattr(tokenizer_fast, "_LONG_WHITESPACE", regex.compile(r"\s{5,}"))
    fast, slow = ours("fast"), ours("slow")
    rng = random.Random(0)
    alphabet = [" ", "\n", "\t", "\u3000", "\r", "\u00a0", "\u2028", "a", "b", "1", "!", "é", "'s", "\U00032936"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) * rng.choice([1, 1, 2, 5, 7, 12]) for _ in range(rng.randint(0, 12)))
        assert fast.bpe.encode_ordinary(text) == slow.bpe.encode_ordinary(text), repr(text)


def test_long_run_sampling_never_misses():
    run = tokenizer_fast._LONG_RUN
    for start in (0, 1, 7, tokenizer_fast._SAMPLE - 1, tokenizer_fast._SAMPLE + 3):
        text = "x" * start + "\u3000" * run + "y" * 5
        assert tokenizer_fast._may_hold_long_run(text)
    assert not tokenizer_fast._may_hold_long_run("ab " * run)


# -- 6. split_special_tokens -----------------------------------------------------------------------------------------

@requires_transformers
@pytest.mark.parametrize("kind", KINDS)
def test_split_special_tokens_like_transformers(kind, tmp_path):
    text = "a<|endoftext|>b xyz<|endoftext|>"
    for init, call in [({}, {}), ({"split_special_tokens": True}, {}), ({}, {"split_special_tokens": True}),
                       ({"split_special_tokens": True}, {"split_special_tokens": False})]:
        a, b = ours(kind, **init), theirs(kind, **init)
        a.add_tokens(["xyz"])
        b.add_tokens(["xyz"])
        assert a(text, **call)["input_ids"] == b(text, **call)["input_ids"], (init, call)
        if not (kind == "slow" and call):  # transformers' slow batch call ignores a call-time split_special_tokens
            assert a([text, "q"], **call)["input_ids"] == b([text, "q"], **call)["input_ids"], (init, call)
        assert a.encode(text, **call) == b.encode(text, **call), (init, call)
        assert a.tokenize(text, **call) == b.tokenize(text, **call), (init, call)
    ours(kind, split_special_tokens=True).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["split_special_tokens"] is True
    assert (GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast).from_pretrained(tmp_path).split_special_tokens
    with pytest.raises(TypeError, match="split_special_tokens"):
        ours(kind)("a", split_special_tokens="yes")


# -- 7. longer than model_max_length -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_too_long_warns_once_without_truncation(kind):
    tok = ours(kind)  # model_max_length 1024
    text = " hello" * 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(text, truncation=True)  # truncated: no warning
        tok("hello")
    with pytest.warns(UserWarning, match=r"Token indices sequence length is longer than the specified maximum "
                                         r"sequence length for this model \(2000 > 1024\)"):
        tok(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(text)  # once per tokenizer
        tok.encode(text)
    with pytest.warns(UserWarning, match="2000 > 1024"):
        ours(kind).encode(text)
    with pytest.warns(UserWarning, match="2000 > 1024"):
        ours(kind)([text, "a"])


# -- 3 and 4. tokenizer files --------------------------------------------------------------------------------------

@pytest.fixture()
def folder(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(PACKAGED_VOCAB / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("kind", KINDS)
def test_added_token_on_a_vocabulary_id_is_refused(kind, folder):
    (folder / "added_tokens.json").write_text(json.dumps({"<pad>": 50256}))
    cls = GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast
    with pytest.raises(ValueError, match=r"added_tokens\.json: added token '<pad>' has id 50256.*'<\|endoftext\|>'"):
        cls.from_pretrained(folder)
    (folder / "added_tokens.json").write_text(json.dumps({"<|endoftext|>": 50256, "<pad>": 50257}))
    assert cls.from_pretrained(folder).convert_tokens_to_ids("<pad>") == 50257


def _vocab():
    return json.loads((PACKAGED_VOCAB / "vocab.json").read_text(encoding="utf-8"))


BAD_FILES = [
    ("vocab.json", lambda: [1, 2], "expected a (JSON object|dict)"),
    ("vocab.json", lambda: {**_vocab(), "Ġthe": "262"}, "'Ġthe' has id '262'"),
    ("vocab.json", lambda: {**_vocab(), "Ġthe": -1}, "'Ġthe' has id -1"),
    ("vocab.json", lambda: {**_vocab(), "Ġthe": 10**12}, "'Ġthe' has id 1000000000000"),
    ("vocab.json", lambda: {**_vocab(), "Ġthe": 11}, "id 11 is given to both"),
    ("merges.txt", "#version: 0.2\nĠ t\nonlyone\n", "line 3: expected two tokens"),
    ("merges.txt", "#version: 0.2\nĠ zzzqqq\n", "line 2: merge 'Ġ' \\+ 'zzzqqq'"),
    ("tokenizer_config.json", {"model_max_length": "1024"}, "model_max_length='1024' is not a valid value"),
    ("tokenizer_config.json", {"add_prefix_space": "yes"}, "add_prefix_space='yes'"),
    ("tokenizer_config.json", {"padding_side": "up"}, "padding_side='up'"),
    ("tokenizer_config.json", {"errors": 3}, "errors=3"),
    ("tokenizer_config.json", {"pad_token": ["<pad>"]}, "bad special token entry"),
    ("tokenizer_config.json", {"pad_token": {"text": "<pad>"}}, "bad special token entry"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": {"content": "a"}}}, "bad special token entry"),
    ("tokenizer_config.json", {"added_tokens_decoder": [1]}, "bad special token entry"),
    ("tokenizer_config.json", {"additional_special_tokens": "<a>"}, "bad special token entry"),
    ("tokenizer_config.json", [1], "expected a (JSON object|dict)"),
    ("special_tokens_map.json", ["<pad>"], "expected a (JSON object|dict)"),
    ("special_tokens_map.json", {"pad_token": 5}, "bad special token entry"),
    ("added_tokens.json", ["<pad>"], "expected a (JSON object|dict)"),
    ("added_tokens.json", {"<pad>": "50257"}, "'<pad>' has id '50257'"),
    ("added_tokens.json", {"<pad>": -3}, "'<pad>' has id -3"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, content, match", BAD_FILES)
def test_bad_tokenizer_files_name_the_file(kind, name, content, match, folder):
    content = content() if callable(content) else content
    (folder / name).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    cls = GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast
    with pytest.raises(ValueError, match=regex.escape(name) + ".*" + match):
        cls.from_pretrained(folder)


def _tokenizer_json():
    return {"model": {"type": "BPE", "vocab": _vocab(), "merges": ["Ġ t"]}, "pre_tokenizer": {"type": "ByteLevel"}}


BAD_JSON = [
    (lambda d: d.update(normalizer=["x"]), "normalizer"),
    (lambda d: d.update(pre_tokenizer=["ByteLevel"]), "pre_tokenizer"),
    (lambda d: d["model"].update(merges=[5]), "merge 0: expected two tokens"),
    (lambda d: d["model"].update(merges=[["Ġ"]]), "merge 0: expected two tokens"),
    (lambda d: d["model"].update(vocab=["a"]), "expected a (JSON object|dict)"),
    (lambda d: d.update(added_tokens=[{"id": "1", "content": "a"}]), "no integer id"),
    (lambda d: d.update(added_tokens=[{"id": 50256, "content": "<pad>"}]), "'<pad>' has id 50256"),
]


@pytest.mark.parametrize("edit, match", BAD_JSON)
def test_bad_tokenizer_json_names_the_file(edit, match, tmp_path):
    data = _tokenizer_json()
    edit(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json.*" + match):
        GPT2TokenizerFast(tokenizer_file=tmp_path / "tokenizer.json")


def test_fuzzed_files_give_value_errors_only(folder):
    """Random truncations and byte flips of each file: loading either works or is a ValueError naming the file."""
    rng = random.Random(0)
    good = {"tokenizer_config.json": json.dumps({"model_max_length": 1024, "pad_token": {"content": "<p>"}}),
            "special_tokens_map.json": json.dumps({"bos_token": "<|endoftext|>"}),
            "added_tokens.json": json.dumps({"<p>": 50257})}
    merges = (PACKAGED_VOCAB / "merges.txt").read_text(encoding="utf-8")[:2000]
    for name, text in [*good.items(), ("merges.txt", merges)]:
        for _ in range(15):
            chars = list(text)
            for _ in range(rng.randint(1, 3)):
                chars[rng.randrange(len(chars))] = rng.choice('{}[]":,0 -\nab')
            for n, t in good.items():
                (folder / n).write_text(t)
            (folder / "merges.txt").write_text(merges)
            (folder / name).write_text("".join(chars)[: rng.randint(1, len(chars))])
            try:
                GPT2Tokenizer.from_pretrained(folder)
            except ValueError as e:
                assert str(folder) in str(e) or "added token" in str(e), e
