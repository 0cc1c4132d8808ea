"""gpt2.common.bpe: OpenAI's byte-level BPE, checked against tiktoken and transformers' GPT2Tokenizer as oracles."""

import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2.common.bpe import ByteLevelBPE, bytes_to_unicode, read_vocab

DATA = Path("/work/shared/data/gpt2-vocab")
VOCAB, MERGES = DATA / "vocab.json", DATA / "merges.txt"
needs_vocab = pytest.mark.skipif(not VOCAB.exists(), reason="GPT-2 vocabulary files are not available")

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How's it going? I'm fine; you'll see, we'd've known.",
    "CAPS'S 'S 'LL 's 'll 've 're 'd 'm 't ''' '",
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷 ❤️",
    "中文字符测试，日本語のテキスト、한국어 텍스트",
    "עברית וערבית: مرحبا بالعالم",
    "combining: e\u0301 a\u0308\u0323 Zalgo z\u0336\u0317a\u0334l",
    "controls \x00\x01\x1b[31m\x7f\x85\u200b\ufeff\u2028",
    "windows\r\nline\r\n\r\nendings\r",
    "\ttabs\t\tand\t \tspaces",
    "   leading and trailing spaces   ",
    " " * 40 + "x" + "\n" * 30 + "y" + " \n \n\t\n",
    "\n\n\n",
    "digits 0123456789 3.14159 1,000,000 ١٢٣ ⅷ ² 12abc34",
    "punctuation !!!??? ... --- *** ((([[[{{{}}}]]]))) @#$%^&*",
    "code: def f(x):\n    return x ** 2  # comment\n\tif a != b: pass",
    "<|endoftext|> is just text here",
    "ſ ẞ ǅ İ ﬁ ℌ ﬀ",
    "\u00a0nbsp\u3000ideographic\u2003em",
    "a" * 300,
    "ab" * 200 + " " + "🙂" * 50,
]
SURROGATES = ["\ud800", "a\udfffb", "\ud83d\ude00", "x\ud83dy\ude00z", "\udc00\ud800 \ud800\udc00"]


def fix_surrogates(text):  # tiktoken's repair, the rule ByteLevelBPE follows
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@pytest.fixture(scope="module")
def bpe():
    return ByteLevelBPE(*read_vocab(VOCAB, MERGES))


@pytest.fixture(scope="module")
def tt():
    tiktoken = pytest.importorskip("tiktoken")
    vocab, _ = read_vocab(VOCAB, MERGES)
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(u2b[c] for c in t): i for t, i in vocab.items() if t != "<|endoftext|>"}
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2-local", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    tok = transformers.GPT2Tokenizer(str(VOCAB), str(MERGES))
    tok.model_max_length = 10**9  # no "sequence too long" warning
    return tok


# -- bytes_to_unicode ----------------------------------------------------------------------------------------------


def openai_bytes_to_unicode():  # OpenAI gpt-2/src/encoder.py, verbatim logic
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table == openai_bytes_to_unicode()
    assert (table[32], table[10], table[ord("a")], table[0], table[173]) == ("Ġ", "Ċ", "a", "Ā", "Ń")


def test_bytes_to_unicode_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode as hf_table

    assert bytes_to_unicode() == hf_table()


# -- exactness -----------------------------------------------------------------------------------------------------


@needs_vocab
def test_known_ids(bpe):
    assert bpe.encode_ordinary("Hello world") == [15496, 995]
    assert bpe.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert bpe.bpe("Ġworld") == ["Ġworld"] and bpe.bpe("Ġhelloworld") == ["Ġhell", "ow", "orld"]
    assert bpe.decode_bytes([15496, 995]) == b"Hello world" and bpe.token_bytes(50256) == b"<|endoftext|>"


@needs_vocab
@pytest.mark.parametrize("text", TEXTS + SURROGATES)
def test_matches_tiktoken(bpe, tt, text):
    ids = bpe.encode_ordinary(text)
    assert ids == tt.encode_ordinary(text)
    assert bpe.decode_bytes(ids) == fix_surrogates(text).encode("utf-8")


@needs_vocab
def test_matches_transformers(bpe, hf):
    for text in TEXTS:
        if "<|endoftext|>" in text:
            continue  # transformers reads it as the special token; encode_ordinary reads it as text
        assert bpe.encode_ordinary(text) == hf.encode(text), text
        assert bpe.tokenize(text) == hf.tokenize(text), text


@needs_vocab
@settings(max_examples=300, deadline=None)
@given(
    text=st.text()  # any code point but surrogates
    | st.text(st.characters(exclude_categories=()))  # surrogates too
    | st.text(st.sampled_from(" \n\r\t'sSlvdm9é中😀!.\u0301"))  # dense in contractions and whitespace runs
)
def test_matches_tiktoken_property(bpe, tt, text):
    ids = bpe.encode_ordinary(text)
    assert ids == tt.encode_ordinary(text)
    assert bpe.decode_bytes(ids) == fix_surrogates(text).encode("utf-8")


@needs_vocab
def test_long_pieces_are_fast_and_exact(bpe, tt):
    rng = random.Random(0)
    texts = [
        "a" * 100_000,
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000)),
        "".join(rng.choice("aeiouéüßжя中文") for _ in range(40_000)),  # ~100 kB of mixed 1-3 byte letters
        "".join(rng.choice("!#$%&*+-./:;<=>?@^_|~") for _ in range(100_000)),
    ]
    for text in texts:
        start = time.perf_counter()
        ids = bpe.encode_ordinary(text)
        assert time.perf_counter() - start < 5
        assert ids == tt.encode_ordinary(text)


@needs_vocab
@given(text=st.text(st.sampled_from("aabethĠĊ"), max_size=300))
@settings(max_examples=100, deadline=None)
def test_heap_merge_equals_list_merge(bpe, text):
    # bpe() picks one path by length; both must give the same merges on any input.
    assert bpe._bpe_heap(text) == bpe._bpe_list(text)


def tiny_bpe(merges, cache_size=100):
    encoder = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        encoder.setdefault(a + b, len(encoder))
    return ByteLevelBPE(encoder, merges, cache_size=cache_size)


def openai_bpe(word, merges):  # OpenAI gpt-2/src/encoder.py Encoder.bpe: merge every occurrence of the best pair
    ranks = {m: i for i, m in enumerate(merges)}
    word = list(word)
    while len(word) > 1:
        best = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                out.append(word[i] + word[i + 1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = out
    return word


# Each result splits into two tokens one way only (as in OpenAI's files), so OpenAI's pair ranks and tiktoken's
# merged-string ranks are the same rule here.
TINY_MERGES = [("a", "a"), ("a", "b"), ("b", "b"), ("aa", "aa"), ("ab", "ab"), ("bb", "a"), ("aa", "bb")]


def test_tie_breaking():
    bpe = tiny_bpe(TINY_MERGES)
    for merge in (bpe._bpe_list, bpe._bpe_heap):
        assert merge("aaa") == ["aa", "a"]  # leftmost of equal ranks first, then non-overlapping
        assert merge("aaaaa") == ["aaaa", "a"]
        assert merge("abb") == ["ab", "b"] and merge("aabb") == ["aabb"]
        assert merge("bbaa") == ["bb", "aa"]  # the lowest rank beats the leftmost pair


@given(text=st.text(st.sampled_from("ab"), max_size=400))
@settings(max_examples=200, deadline=None)
def test_tiny_vocab_matches_openai_loop(text):
    bpe = tiny_bpe(TINY_MERGES)
    expected = openai_bpe(text, TINY_MERGES)
    assert bpe._bpe_list(text) == expected and bpe._bpe_heap(text) == expected


# -- cache, batch, errors ------------------------------------------------------------------------------------------


@needs_vocab
def test_bounded_cache():
    bpe = ByteLevelBPE(*read_vocab(VOCAB, MERGES), cache_size=100)
    words = [f"w{i}x" for i in range(1000)]
    first = bpe.encode_ordinary_batch(words)
    assert bpe.cache_info().currsize <= 100 and bpe.cache_info().maxsize == 100
    assert bpe.encode_ordinary_batch(words) == first
    bpe.clear_cache()
    bpe.encode_ordinary("the the the")
    assert bpe.cache_info()[:2] == (1, 2)  # pieces "the", " the", " the": one hit, two misses


@needs_vocab
def test_cache_disabled_and_batch(tt):
    bpe = ByteLevelBPE(*read_vocab(VOCAB, MERGES), cache_size=0)
    assert bpe.encode_ordinary_batch(TEXTS) == tt.encode_ordinary_batch(TEXTS)
    assert bpe.cache_info().currsize == 0


@needs_vocab
def test_input_errors(bpe):
    with pytest.raises(TypeError):
        bpe.encode_ordinary(b"bytes")
    with pytest.raises(ValueError, match="50257"):
        bpe.decode_bytes([1, 50257])
    with pytest.raises(ValueError, match="-1"):
        bpe.token_bytes(-1)
    with pytest.raises(ValueError, match="cache_size"):
        ByteLevelBPE(bpe.encoder, [], cache_size=-1)
    with pytest.raises(ValueError, match="single-byte"):
        ByteLevelBPE({"a": 0}, [])


def write(tmp_path, vocab, merges):
    v, m = tmp_path / "vocab.json", tmp_path / "merges.txt"
    v.write_text(vocab if isinstance(vocab, str) else json.dumps(vocab), encoding="utf-8")
    m.write_text(merges, encoding="utf-8")
    return v, m


BASE = {"a": 0, "b": 1, "ab": 2}


@pytest.mark.parametrize(
    "vocab, merges, where, match",
    [
        ('{"a": 0,', "#version: 0.2\n", "vocab", "not a JSON file"),
        ("[1, 2]", "", "vocab", "JSON object"),
        ({"a": "0"}, "", "vocab", "expected an integer"),
        ({"a": 1.5}, "", "vocab", "expected an integer"),
        ({"a": 0, "b": 0}, "", "vocab", "id 0 is given to both"),
        (BASE, "#version: 0.2\na b c\n", "merges", "line 2: expected two tokens"),
        (BASE, "#version: 0.2\na b\nb a\n", "merges", "line 3: .*'ba' is not in"),
        (BASE, "a b\na b\n", "merges", "line 2: .*repeats line 1"),
        (BASE, "a c\n", "merges", "line 1: .*'c' is not in"),
    ],
)
def test_read_vocab_errors(tmp_path, vocab, merges, where, match):
    v, m = write(tmp_path, vocab, merges)
    with pytest.raises(ValueError, match=match) as e:
        read_vocab(v, m)
    assert str(v if where == "vocab" else m) in str(e.value)


def test_read_vocab_ok(tmp_path):
    v, m = write(tmp_path, BASE, "#version: 0.2\na b\n\n")
    assert read_vocab(v, m) == (BASE, [("a", "b")])


@needs_vocab
def test_decode_numpy_ids(bpe):
    np = pytest.importorskip("numpy")
    assert bpe.decode_bytes(np.array([15496, 995])) == b"Hello world"
