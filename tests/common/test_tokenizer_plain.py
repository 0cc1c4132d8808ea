"""The plain call (issue 9): ``tok(text)``, ``tok(list_of_str)`` and ``tok.encode(text)`` with default options skip the
general path of tokenizer_call.py; they must give exactly its output. The general path is reached with an option
value that changes nothing (``padding="do_not_pad"``), and compared on many texts: special and added tokens in the
text, split_special_tokens, non-ASCII, emoji, recently assigned letters, lone surrogates, long texts, threads."""

from __future__ import annotations

import random
import warnings

import pytest

from corpus import gather
from gpt2 import GPT2Tokenizer, GPT2TokenizerFast
from gpt2.common import tokenizer_fast
from gpt2.common.tokens import AddedToken

KINDS = ["slow", "fast"]
SETUPS = {
    "default": ({}, None),
    "split_special_tokens": ({"split_special_tokens": True}, None),
    "add_prefix_space": ({"add_prefix_space": True}, None),
    "add_bos_token": ({"add_bos_token": True}, None),
    "added tokens": ({}, "added"),
    "added tokens, split": ({"split_special_tokens": True}, "added"),
    "many added tokens": ({}, "many"),
}


def ours(kind, **kwargs):
    return (GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast).from_pretrained("gpt2", **kwargs)


def make(kind, setup):
    init, added = SETUPS[setup]
    tok = ours(kind, **init)
    if added:
        tok.add_tokens([AddedToken("<note>", lstrip=True), AddedToken("word", single_word=True), "ß-ß"])
        tok.add_special_tokens({"pad_token": "[PAD]", "additional_special_tokens": [AddedToken("<x>", rstrip=True)]})
    if added == "many":  # more than a few: the finder is one alternation of many literals
        tok.add_tokens([f"<tok{i}>" for i in range(40)])
    return tok


def texts() -> list[str]:
    rng = random.Random(9)
    docs = [d.text for d in gather(0.05)]
    lines = [line for d in docs for line in d.split("\n") if line.strip()]
    out = rng.sample(lines, min(300, len(lines))) + rng.sample(docs, min(40, len(docs)))
    pieces = ["<|endoftext|>", "<note>", " <note>", "word", "a word b", "swordfish", "ß-ß", "[PAD]", "<x>  y",
              "<tok7>", "é", "日本語", "😀", "\U00032936", "\u0558", "\ud800", "  ", "\n\n", "'s", "<|endoftext", ""]
    for _ in range(300):
        out.append("".join(rng.choice(pieces + ["hello", " world", "x"]) for _ in range(rng.randint(0, 8))))
    return out + ["", " ", "<|endoftext|>", "a" * 5000, "hi " + "\u3000" * 300 + " there"]


TEXTS = texts()


def general(tok, text, **kwargs):
    return tok(text, padding="do_not_pad", **kwargs)  # "do_not_pad" is not the default False: the general path


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("kind", KINDS)
def test_plain_call_equals_general_path(kind, setup):
    tok = make(kind, setup)
    tok.model_max_length = 10**9
    for text in TEXTS:
        want = general(tok, text)
        got = tok(text)
        assert type(got) is type(want) and got == want and list(got) == list(want), repr(text)
        assert tok.encode(text) == want["input_ids"] == tok.encode(text, padding="do_not_pad"), repr(text)
        for split in (True, False):  # per call, over the tokenizer's setting
            assert tok(text, split_special_tokens=split) == general(tok, text, split_special_tokens=split)
            assert tok.encode(text, split_special_tokens=split) == general(
                tok, text, split_special_tokens=split)["input_ids"]
    batch = tok(TEXTS)
    assert batch == general(tok, TEXTS) and list(batch) == ["input_ids", "attention_mask"]
    assert tok(tuple(TEXTS[:20])) == general(tok, TEXTS[:20])
    assert tok([]) == general(tok, []) == {"input_ids": [], "attention_mask": []}


@pytest.mark.parametrize("kind", KINDS)
def test_plain_batch_on_threads(kind, monkeypatch):
    tok = make(kind, "added tokens")
    tok.model_max_length = 10**9
    want = general(tok, TEXTS)
    monkeypatch.setattr(tokenizer_fast, "_PARALLEL_CHARS", 0)  # every batch on threads (fast tokenizer)
    monkeypatch.setattr(tokenizer_fast, "_PARALLEL_MEAN_CHARS", 0)
    assert tok(TEXTS) == want


@pytest.mark.parametrize("kind", KINDS)
def test_plain_call_warns_as_the_general_path(kind):
    for call in (lambda t: t("a b c d"), lambda t: t.encode("a b c d"), lambda t: t(["a", "a b c d"])):
        for path in ("plain", "general"):
            tok = ours(kind)
            tok.model_max_length = 3
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call(tok) if path == "plain" else general(tok, "a b c d")
                call(tok) if path == "plain" else general(tok, "a b c d")  # once per tokenizer
            assert [str(w.message) for w in caught] == [
                "Token indices sequence length is longer than the specified maximum sequence length for this model "
                "(4 > 3). Running this sequence through the model will result in indexing errors"]


@pytest.mark.parametrize("kind", KINDS)
def test_options_the_plain_call_leaves_to_the_general_path(kind):
    """Values the general path refuses stay refused (the plain call takes only values that change nothing)."""
    tok = ours(kind)
    bad = [dict(padding=0), dict(padding=""), dict(truncation=""), dict(stride=-1), dict(stride=0.0),
           dict(stride=False), dict(padding_side="middle"), dict(is_split_into_words=True),
           dict(return_tensors="xx"), dict(split_special_tokens="yes")]
    for kwargs in bad:
        with pytest.raises((ValueError, TypeError)):
            tok("some text", **kwargs)
    with pytest.raises(TypeError):
        tok(["a", 3])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    assert tok("x", stride=5) == tok("x")  # a valid stride without truncation changes nothing
    assert tok("x y", return_attention_mask=True) == tok("x y")
    assert tok("x y", return_attention_mask=False) == {"input_ids": tok.encode("x y")}


def test_recent_prefilter_is_a_superset():
    """Every recently assigned letter is found by the stdlib prefilter (else tiktoken would get such a text)."""
    for item in tokenizer_fast._RECENT_RANGES.split():
        first, last = (int(x, 16) for x in (item.split("-") * 2)[:2])
        for c in range(first, last + 1):
            assert tokenizer_fast._MAY_BE_RECENT.match(chr(c)) and tokenizer_fast._MAY_BE_RECENT_NARROW.match(chr(c))
    emoji = "".join(map(chr, range(0x1F300, 0x1FAFF)))  # emoji are in a gap: no full search for them
    assert tokenizer_fast._MAY_BE_RECENT_NARROW.search(emoji) is None
    assert tokenizer_fast._has_recent("😀 \U0001D400 x \u0558") and not tokenizer_fast._has_recent("😀 \U0001D400 x")
