"""The tokenizer API against transformers' GPT2Tokenizer / GPT2TokenizerFast (test-only oracles) on the same
vocabulary: ids, padding, truncation, pairs, special and added tokens, decoding, files, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import has, requires_transformers
from gpt2 import AddedToken, GPT2Tokenizer, GPT2TokenizerFast
from gpt2.common.tokenizer import PACKAGED_VOCAB

VOCAB, MERGES = str(PACKAGED_VOCAB / "vocab.json"), str(PACKAGED_VOCAB / "merges.txt")
TEXTS = [
    "Hello world", " Hello", "héllo 😀 wörld  x", "a\n\nb\r\n\tc   ", "It's 2024: we'll see!!",
    "hi<|endoftext|>there", "x <|endoftext|> y<|endoftext|>", "", "   ", "日本語のテキスト", "👩‍👩‍👧‍👦 family",
]
KINDS = ["slow", "fast"]


def ours(kind, **kwargs):
    return (GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast).from_pretrained("gpt2", **kwargs)


def theirs(kind, **kwargs):
    import transformers

    transformers.logging.set_verbosity_error()
    cls = transformers.GPT2Tokenizer if kind == "slow" else transformers.GPT2TokenizerFast
    return cls(VOCAB, MERGES, **kwargs)


def plain(encoding) -> dict:
    """A BatchEncoding (ours or theirs) as plain lists, for comparison."""
    out = {}
    for key, value in dict(encoding).items():
        value = np.asarray(value).tolist() if hasattr(value, "shape") else value
        out[key] = json.loads(json.dumps(value))  # tuples -> lists
    return out


pytestmark = requires_transformers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", [False, True])
def test_ids_like_transformers(kind, prefix):
    a, b = ours(kind, add_prefix_space=prefix), theirs(kind, add_prefix_space=prefix)
    for text in TEXTS:
        assert a(text)["input_ids"] == b(text)["input_ids"], text
        assert a.tokenize(text) == b.tokenize(text), text
    assert a(TEXTS)["input_ids"] == b(TEXTS)["input_ids"]


@pytest.mark.parametrize("prefix", [False, True])
def test_offsets_like_transformers_fast(prefix):
    b = theirs("fast", add_prefix_space=prefix)
    # transformers' slow tokenizer has no offsets; ours has the fast one's (where the two agree on the ids: with
    # add_prefix_space they put the space differently, see test_ids_like_transformers)
    for kind in KINDS if not prefix else ["fast"]:
        a = ours(kind, add_prefix_space=prefix)
        for text in TEXTS + ["\nhi", "a<|endoftext|>\nb"]:
            assert plain(a(text, return_offsets_mapping=True)) == plain(b(text, return_offsets_mapping=True)), text


CALLS = [
    dict(padding=True),
    dict(padding="longest", padding_side="left"),
    dict(padding="max_length", max_length=12),
    dict(padding=True, pad_to_multiple_of=8),
    dict(truncation=True, max_length=3),
    dict(max_length=3),
    dict(truncation=True, max_length=3, padding="max_length"),
    dict(padding=True, return_tensors="np"),
    dict(padding=True, return_special_tokens_mask=True, return_length=True),
    dict(padding=True, return_token_type_ids=True),
    dict(padding=True, return_attention_mask=False),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kwargs", CALLS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_call_options_like_transformers(kind, kwargs, truncation_side):
    a, b = ours(kind, pad_token="<|endoftext|>"), theirs(kind, pad_token="<|endoftext|>")
    a.truncation_side = b.truncation_side = truncation_side
    batch = ["a b c d e f", "Hello world", "x", "one two three four five six seven eight nine"]
    assert plain(a(batch, **kwargs)) == plain(b(batch, **kwargs))
    assert plain(a(batch[0], **kwargs)) == plain(b(batch[0], **kwargs))
    if kwargs.get("return_tensors") == "np":
        assert isinstance(a(batch, **kwargs)["input_ids"], np.ndarray)


PAIR_CALLS = [dict(), dict(truncation="longest_first", max_length=5), dict(truncation="only_first", max_length=6),
              dict(truncation="only_second", max_length=6), dict(return_token_type_ids=True, padding=True)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kwargs", PAIR_CALLS, ids=str)
def test_pairs_like_transformers(kind, kwargs):
    a, b = ours(kind, pad_token="<|endoftext|>"), theirs(kind, pad_token="<|endoftext|>")
    first, second = ["a b c d", "Hello"], ["e f g h i", "world again"]
    assert plain(a(first, second, **kwargs)) == plain(b(first, second, **kwargs))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kwargs", [dict(), dict(truncation=True, max_length=4), dict(padding=True)], ids=str)
def test_add_bos_token_like_transformers(kind, kwargs):
    """(Not compared: transformers' Python tokenizer with add_bos_token returns token_type_ids shorter than the ids,
    and returns pairs untruncated when only_first/only_second cannot be met; ours stay consistent / raise.)"""
    a = ours(kind, pad_token="<|endoftext|>", add_bos_token=True)
    b = theirs(kind, pad_token="<|endoftext|>", add_bos_token=True)
    batch = ["Hello there", "a b c d e f"]
    assert plain(a(batch, **kwargs)) == plain(b(batch, **kwargs))
    assert plain(a(batch, ["x y", "z"], **kwargs)) == plain(b(batch, ["x y", "z"], **kwargs))


@pytest.mark.parametrize("kind", KINDS)
def test_impossible_truncation_is_an_error(kind):
    with pytest.raises(ValueError, match="only_first"):
        ours(kind)("a b", "c d e f", truncation="only_first", max_length=3)


@pytest.mark.parametrize("kind", KINDS)
def test_split_into_words(kind):
    a, b = ours(kind, add_prefix_space=True), theirs(kind, add_prefix_space=True)
    words = [["Hello", "world"], ["a", "b", "c"]]
    assert plain(a(words, is_split_into_words=True)) == plain(b(words, is_split_into_words=True))
    with pytest.raises(ValueError, match="add_prefix_space"):
        ours(kind)(words, is_split_into_words=True)


@pytest.mark.parametrize("kind", KINDS)
def test_added_and_special_tokens_like_transformers(kind):
    import transformers

    a, b = ours(kind), theirs(kind)
    for tok, added_token in ((a, AddedToken), (b, transformers.AddedToken)):
        assert tok.add_special_tokens({"pad_token": "[PAD]"}) == 1
        assert tok.add_tokens(["<new>", "hello world"]) == 2
        assert tok.add_tokens([added_token("<strip>", lstrip=True, rstrip=True)]) == 1
        tok.add_tokens(["world"])  # already in the vocabulary: no new id (transformers' fast one counts it, though)
        tok.add_special_tokens({"additional_special_tokens": ["<sep>"]})
    assert a.add_tokens(["world"]) == 0
    assert (len(a), a.vocab_size, a.pad_token_id) == (len(b), b.vocab_size, b.pad_token_id) == (50262, 50257, 50257)
    text = "x [PAD] y<new>say hello world  <strip>  z<|endoftext|>[PAD]<sep>a"
    assert a(text)["input_ids"] == b(text)["input_ids"]
    # (transformers' fast tokenize() shows an lstrip/rstrip token with the spaces it ate: '  <strip>  ')
    assert a.tokenize(text.replace("  <strip>  ", "")) == b.tokenize(text.replace("  <strip>  ", ""))
    ids = a(text)["input_ids"]
    for kwargs in (dict(), dict(skip_special_tokens=True), dict(spaces_between_special_tokens=False)):
        assert a.decode(ids, **kwargs) == b.decode(ids, **kwargs), kwargs
    assert a.get_added_vocab() == b.get_added_vocab()
    assert a.all_special_tokens == b.all_special_tokens and a.all_special_ids == b.all_special_ids
    assert a.special_tokens_map == b.special_tokens_map


@pytest.mark.parametrize("kind", KINDS)
def test_decode(kind):
    a, b = ours(kind), theirs(kind)
    ids = a("Hello, world! It 's done .")["input_ids"]
    for kwargs in (dict(), dict(clean_up_tokenization_spaces=True), dict(skip_special_tokens=True)):
        assert a.decode(ids + [50256], **kwargs) == b.decode(ids + [50256], **kwargs)
    assert a.decode([30325]) == b.decode([30325]) == " \ufffd"  # space + half an emoji: errors="replace"
    assert a.batch_decode(np.array([ids, ids])) == b.batch_decode(np.array([ids, ids]))
    assert a.decode(np.int64(995)) == " world"
    assert a.convert_ids_to_tokens(ids) == b.convert_ids_to_tokens(ids)
    assert a.convert_tokens_to_ids(["Hello", "Ġworld", "nope-not-a-token"]) == [15496, 995, 50256]
    assert a.convert_tokens_to_string(["Hello", "Ġworld"]) == "Hello world"
    with pytest.raises(ValueError, match="60000"):
        a.decode([1, 60000])
    with pytest.raises(ValueError, match="-1"):
        a.decode([-1])
    with pytest.raises(TypeError, match="str"):
        a.decode(["hello"])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input(kind):
    a = ours(kind)
    with pytest.raises(TypeError, match="int"):
        a(42)
    with pytest.raises(TypeError, match="bytes"):
        a([b"bytes"])
    assert a("a\ud800b")["input_ids"] == a("a\ufffdb")["input_ids"]  # lone surrogate -> U+FFFD, as tiktoken
    with pytest.raises(ValueError, match="pad token"):
        a(["a", "b c"], padding=True)
    with pytest.raises(ValueError, match="padding=True"):
        a(["a", "b c"], return_tensors="np")
    with pytest.raises(ValueError, match="return_tensors"):
        a("a", return_tensors="numpy")
    with pytest.raises(ValueError, match="padding_side"):
        a.padding_side = "middle"
    with pytest.raises(ValueError, match="padding"):
        a("a", padding="sideways")


@pytest.mark.parametrize("tensor_type, module", [("pt", "torch"), ("tf", "tensorflow"), ("jax", "jax")])
def test_return_tensors(tensor_type, module):
    if not has(module):
        pytest.skip(f"{module} is not installed")
    tok = ours("fast", pad_token="<|endoftext|>")
    out = tok(["a b", "c"], padding=True, return_tensors=tensor_type)
    assert type(out["input_ids"]).__module__.split(".")[0] in (module, "jaxlib")
    assert np.asarray(out["input_ids"]).tolist() == [[64, 275], [66, 50256]]
    assert out.input_ids is out["input_ids"]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_both_ways(kind, tmp_path):
    import transformers

    a = ours(kind, padding_side="left")
    a.add_special_tokens({"pad_token": "[PAD]", "additional_special_tokens": ["<sep>"]})
    a.add_tokens(["<new>"])
    a.save_pretrained(tmp_path / "ours")
    text = "a [PAD] <sep> <new> b<|endoftext|>"
    for cls in (transformers.GPT2Tokenizer, transformers.GPT2TokenizerFast, GPT2Tokenizer, GPT2TokenizerFast):
        loaded = cls.from_pretrained(tmp_path / "ours")
        assert loaded(text)["input_ids"] == a(text)["input_ids"], cls
        assert (loaded.pad_token, loaded.padding_side, len(loaded)) == ("[PAD]", "left", len(a)), cls
        assert loaded.additional_special_tokens == ["<sep>"], cls
    b = theirs(kind)
    b.add_special_tokens({"pad_token": "[PAD]"})
    b.add_tokens(["<new>"])
    b.save_pretrained(tmp_path / "theirs")
    back = (GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast).from_pretrained(tmp_path / "theirs")
    assert back(text)["input_ids"] == b(text)["input_ids"] and back.pad_token_id == 50257
    names = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "theirs").iterdir())  # tokenizer.json from the fast ones
    assert ("tokenizer.json" in names) == (kind == "fast")


def test_presets_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    for name in ("gpt2", "gpt2-xl", "distilgpt2", "openai-community/gpt2"):
        tok = GPT2TokenizerFast.from_pretrained(name)
        assert tok.model_max_length == 1024 and tok("Hello world")["input_ids"] == [15496, 995]
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        GPT2Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        GPT2Tokenizer.from_pretrained("someone/unknown-model")


def test_pad_like_transformers():
    a, b = ours("fast", pad_token="<|endoftext|>"), theirs("fast", pad_token="<|endoftext|>")
    features = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    assert plain(a.pad(features)) == plain(b.pad(features))
    assert plain(a.pad(features, padding="max_length", max_length=5, padding_side="left")) == plain(
        b.pad(features, padding="max_length", max_length=5, padding_side="left"))
    assert plain(a.pad({"input_ids": [[1, 2], [3]]}, return_tensors="np")) == plain(
        b.pad({"input_ids": [[1, 2], [3]]}, return_tensors="np"))


def test_fast_falls_back_on_other_vocabularies(tmp_path):
    """tiktoken is exact for OpenAI's vocabulary only; another byte-level BPE vocabulary uses the Python engine."""
    from gpt2.common.bpe import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = [("l", "o"), ("lo", "w"), ("Ġ", "low"), ("e", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with pytest.warns(UserWarning, match="pure-Python"):
        fast = GPT2TokenizerFast.from_pretrained(tmp_path)
    slow = GPT2Tokenizer.from_pretrained(tmp_path)
    import transformers

    oracle = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in ("lower low slower", "low<|endoftext|>er"):
        assert fast(text)["input_ids"] == slow(text)["input_ids"] == oracle(text)["input_ids"]


def test_return_tensors_for_a_missing_framework(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match=r"gpt2\[torch\]"):
        ours("fast")("hello", return_tensors="pt")


@pytest.mark.parametrize("kind", KINDS)
def test_setting_an_unknown_special_token_adds_it(kind):
    tok = ours(kind)
    tok.pad_token = "[PAD]"
    assert (len(tok), tok.pad_token_id) == (50258, 50257)
    assert tok("x [PAD]")["input_ids"] == [87, 220, 50257]


@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_loading_options(kind):
    cls = GPT2Tokenizer if kind == "slow" else GPT2TokenizerFast
    assert cls.from_pretrained("gpt2", trust_remote_code=False, use_fast=True)("hi")["input_ids"] == [5303]
    with pytest.raises(TypeError, match="token= is not supported.*HF_TOKEN"):
        cls.from_pretrained("gpt2", token="hf_secret")
    with pytest.raises(TypeError, match="unexpected keyword"):
        cls.from_pretrained("gpt2", paddingside="left")
