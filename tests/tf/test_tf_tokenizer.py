"""TFGPT2Tokenizer (gpt2/tf/tokenizer.py): the same ids as GPT2Tokenizer / GPT2TokenizerFast on every kind of text,
the call options as the Python tokenizers apply them, the detokenizer, and the graph contexts (tf.function,
tf.distribute, tf.saved_model.save, Keras' model.export).

Oracle: our GPT2TokenizerFast (equal to tiktoken and transformers on the same corpus: tests/common/
test_tokenizer_corpus.py) and GPT2Tokenizer for the options where the two Python tokenizers differ.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from corpus import gather, total_bytes  # noqa: E402
from gpt2 import GPT2Tokenizer, GPT2TokenizerFast  # noqa: E402
from gpt2.common.tokens import AddedToken  # noqa: E402
from gpt2.tf.tokenizer import TFGPT2Tokenizer, character_classes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Token indices sequence length is longer")


@functools.lru_cache(maxsize=1)
def reference() -> GPT2TokenizerFast:
    return GPT2TokenizerFast.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def tok() -> TFGPT2Tokenizer:
    return TFGPT2Tokenizer.from_pretrained("gpt2")


def ids_of(tok, texts) -> list[list[int]]:
    return tok.tokenize(texts).to_list()


def want(texts) -> list[list[int]]:
    return [reference()(t)["input_ids"] for t in texts]


TRICKY = [
    "", " ", "  ", "\n", "\n\n", "a\n\nb", "a \n b", "  a", "a  ", "a\t\tb", "a \t b", "x   !", " \u00a0y", "\u3000z",
    "I'll don't we've they're I'm he'd it's", "'s 'S 'LL ''s x''s ?'s !'re '\n's", " 's", "\t's", "'", "'ll", "'l",
    "12345 ١٢٣ ½ Ⅻ x2y", "日本語のテキストです。", "한국어 텍스트", "Ελληνικά кириллица", "é\u0301 a\u0308",
    "😀👍🏽👨‍👩‍👧 🇫🇷", "\x00\x01\x1f\x7f\x85\u200b\u2028\u2029", "tail \n", "<|endoftext|>", "a<|endoftext|>b",
    "<|endoftext|><|endoftext|> <|endoftext|>", "<|endoftext", "a" * 57, "=" * 70, "https://example.com/path?q=1&r=2#frag", "    def f(x):\n        return x  # ok\n",
]


def test_tricky_texts(tok):
    assert ids_of(tok, TRICKY) == want(TRICKY)


def test_the_corpus_in_one_batch(tok):
    """Every document of the shared corpus (~6 MB: ~200 languages, code, emoji, whitespace, controls, adversarial
    documents) in one call: the same ids as GPT2TokenizerFast, document by document."""
    docs = gather()
    assert total_bytes(docs) > 2_000_000 and len(docs) > 500
    got = ids_of(tok, [d.text for d in docs])
    bad = [f"{d.kind} {d.name!r}" for d, g, w in zip(docs, got, want([d.text for d in docs])) if g != w]
    assert not bad, f"{len(bad)} of {len(docs)} documents differ: {bad[:10]}"


# Characters that decide where pieces start: spaces of several kinds, the contraction letters, apostrophes, digits,
# letters and marks of other scripts, emoji, controls, and the pieces of <|endoftext|>.
ALPHABET = st.sampled_from(list(" \n\t\r\u00a0\u3000\u2028'sStrevmlld aZé\u0301日1١½!?-._😀\x00\x85<|>") +
                           ["<|endoftext|>", "'ll", "'re", "  ", "\n\n"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(min_size=0, max_size=40),
                          st.lists(ALPHABET, max_size=30).map("".join)), min_size=1, max_size=8))
def test_random_unicode_texts(tok, texts):
    """Any Unicode text (lone surrogates too: a str is repaired as the Python tokenizers repair it)."""
    assert tok.tokenize(texts).to_list() == want(texts)


def test_every_character_class_is_the_regex_modules():
    import regex

    starts, classes = character_classes()
    sample = np.random.default_rng(0).integers(0, 0x110000, 20_000)
    for c in [*sample, *starts, *(starts - 1)]:
        c = int(c)
        if c < 0 or 0xD800 <= c < 0xE000:
            continue
        cls = classes[np.searchsorted(starts, c, side="right") - 1]
        ch = chr(c)
        expect = (1 if regex.match(r"\p{L}", ch) else 2 if regex.match(r"\p{N}", ch)
                  else 3 if regex.match(r"\s", ch) else 0)
        assert cls == expect, f"U+{c:04X}: class {cls}, regex says {expect}"


def test_invalid_utf8_bytes_are_read_as_decode_replace(tok):
    raw = [b"a\xffb", b"\xed\xa0\x80x", b"\xe2\x82", b"ok\xe2\x82\xacz\x80\x80", b"\xf0\x9f\x98 s", b"\xc0\xaf'll"]
    assert tok.tokenize(tf.constant(raw)).to_list() == want([r.decode("utf-8", "replace") for r in raw])


def test_a_long_text_without_split_points(tok):
    """1 MB of "a" is one piece: the merge rounds halve it (a few rounds), never one merge at a time."""
    text = "a" * 1_000_000
    start = time.perf_counter()
    got = ids_of(tok, [text, "b" * 100_001])
    elapsed = time.perf_counter() - start
    assert got == want([text, "b" * 100_001])
    assert elapsed < 20, f"1.1 MB without split points took {elapsed:.1f} s"


def test_a_long_piece_of_many_different_pairs(tok):
    """200 kB of random letters is one piece of thousands of distinct merges: merged in overlapping windows, stitched
    (module doc, step 5), in seconds where one round per distinct merge over the whole piece took minutes."""
    rng = np.random.default_rng(1)
    text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 200_000))
    start = time.perf_counter()
    got = ids_of(tok, [text])
    elapsed = time.perf_counter() - start
    assert got == want([text])
    assert elapsed < 20, f"200 kB of random letters took {elapsed:.1f} s"


LETTERS = "".join(c for c in (Path(__file__).resolve().parent.parent / "data" / "genesis.txt").read_text()
                  if c.isalpha())


@pytest.fixture(scope="module")
def small_windows() -> TFGPT2Tokenizer:
    """Windows of 16 symbols overlapping by 4: every piece above 16 bytes is stitched from windows, and many
    overlaps find no common token (the piece is then merged whole): both paths on short texts."""
    tok = TFGPT2Tokenizer.from_pretrained("gpt2")
    tok._bpe_window = (16, 4)
    return tok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABé日本")), max_size=200),
                          st.builds(lambda i, n: LETTERS[i:i + n], st.integers(0, 10_000), st.integers(0, 400)),
                          st.builds(lambda a, n, b: a * n + b, st.sampled_from(["a", "ab", "aab", "ing", " the"]),
                                    st.integers(1, 120), st.text(max_size=20))), min_size=1, max_size=6))
def test_windows_stitch_to_the_whole_piece_bpe(small_windows, texts):
    assert ids_of(small_windows, texts) == want(texts)


# -- call options -----------------------------------------------------------------------------------------------

BATCH = ["Hello world, this is longer than the others", "", "a", "short one", "<|endoftext|> x"]


@pytest.mark.parametrize("padding_side,truncation_side,max_length,padding", [
    ("right", "right", None, "longest"), ("left", "left", 4, "longest"), ("left", "right", 6, "max_length"),
    ("right", "left", 6, "max_length")])
def test_padding_and_truncation_as_the_python_tokenizer(padding_side, truncation_side, max_length, padding):
    py = GPT2Tokenizer.from_pretrained("gpt2", pad_token="<|endoftext|>", padding_side=padding_side,
                                       truncation_side=truncation_side)
    tok = TFGPT2Tokenizer.from_tokenizer(py, max_length=max_length, padding=padding)
    out = tok(tf.constant(BATCH))
    ref = py(BATCH, padding=padding if max_length else True, truncation=max_length is not None,
             max_length=max_length, return_tensors="np")
    assert out["input_ids"].dtype == tf.int32 and out["attention_mask"].dtype == tf.int32
    np.testing.assert_array_equal(out["input_ids"].numpy(), ref["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"].numpy(), ref["attention_mask"])


def test_ragged_outputs_one_text_and_call_max_length(tok):
    out = tok(tf.constant(BATCH))  # no pad token: ragged, as transformers' TFGPT2Tokenizer
    assert isinstance(out["input_ids"], tf.RaggedTensor) and out["input_ids"].to_list() == want(BATCH)
    assert out["attention_mask"].to_list() == [[1] * len(w) for w in want(BATCH)]
    assert out["input_ids"].dtype == tf.int32
    assert tok(tf.constant(BATCH), max_length=2)["input_ids"].to_list() == [w[:2] for w in want(BATCH)]
    one = tok("Hello world")
    assert one["input_ids"].numpy().tolist() == [15496, 995] and one["input_ids"].shape.rank == 1


def test_prefix_space_and_bos_follow_each_python_tokenizer():
    texts = ["Hello<|endoftext|>world", "x<|endoftext|> y", "", "<|endoftext|>"]
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):
        py = cls.from_pretrained("gpt2", add_prefix_space=True, add_bos_token=True)
        tok = TFGPT2Tokenizer.from_tokenizer(py)
        assert tok.tokenize(texts).to_list() == [py(t, add_special_tokens=False)["input_ids"] for t in texts], cls
        assert tok(tf.constant(texts))["input_ids"].to_list() == [py(t)["input_ids"] for t in texts], cls
        short = TFGPT2Tokenizer.from_tokenizer(py, max_length=2)
        assert short(tf.constant(texts))["input_ids"].to_list() == [
            py(t, truncation=True, max_length=2)["input_ids"] for t in texts], cls


def test_added_tokens_and_split_special_tokens():
    py = GPT2TokenizerFast.from_pretrained("gpt2")
    py.add_special_tokens({"pad_token": "[PAD]", "additional_special_tokens": ["<|im_start|>", "<|im"]})
    py.add_tokens(["a.b", "ünï"])
    texts = ["[PAD]x<|im_start|>y<|im z a.b a+b ünïcode <|endoftext|>", "[PAD][PAD]", "a.ba.b"]
    tok = TFGPT2Tokenizer.from_tokenizer(py)
    assert tok.tokenize(texts).to_list() == [py(t)["input_ids"] for t in texts]
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):  # the fast one still reads non-special added tokens
        split = cls.from_pretrained("gpt2", split_special_tokens=True)
        split.add_tokens(["a.b"])
        assert TFGPT2Tokenizer.from_tokenizer(split).tokenize(texts).to_list() == [split(t)["input_ids"]
                                                                                   for t in texts], cls
    plain = TFGPT2Tokenizer.from_pretrained("gpt2", added_tokens={})  # <|endoftext|> as text
    assert plain.tokenize(["<|endoftext|>"]).to_list() == [py("<|endoftext|>", split_special_tokens=True)["input_ids"]]


STRIPPING = [AddedToken("<mask>", lstrip=True), AddedToken("[SEP]", rstrip=True),
             AddedToken("<both>", lstrip=True, rstrip=True), AddedToken("<none>")]
SPACES = [" ", "  ", "\t", "\n", "\u3000", "\xa0", "\u2028", " \n\t", ""]


@pytest.mark.parametrize("cls", [GPT2Tokenizer, GPT2TokenizerFast])
def test_lstrip_and_rstrip_added_tokens(cls):
    """AddedToken(lstrip=True) swallows the whitespace before it, rstrip=True the whitespace after it (every
    str.isspace character, not only ASCII), as the Python tokenizers apply them; with add_prefix_space too."""
    for prefix in (False, True):
        py = cls.from_pretrained("gpt2", add_prefix_space=prefix)
        py.add_tokens(STRIPPING)
        tok = TFGPT2Tokenizer.from_tokenizer(py)
        assert tok.lstrip_tokens == ["<both>", "<mask>"] and tok.rstrip_tokens == ["<both>", "[SEP]"]
        rng = np.random.default_rng(int(prefix))
        pieces = ["<mask>", "[SEP]", "<both>", "<none>", "word", "x", "<|endoftext|>"]
        texts = ["".join(rng.choice(SPACES) + rng.choice(pieces) for _ in range(rng.integers(1, 7))) + rng.choice(SPACES)
                 for _ in range(300)]
        texts += ["a <mask> b", "a\u3000\u3000<mask>", "[SEP]\u2028 b", " <both> ", "<mask><mask>", "  ", ""]
        assert tok.tokenize(texts).to_list() == [py(t)["input_ids"] for t in texts], (cls, prefix)
        again = TFGPT2Tokenizer.from_config(tok.get_config())
        assert again.tokenize(texts[:20]).to_list() == [py(t)["input_ids"] for t in texts[:20]]


def test_refused_options_and_inputs(tok):
    py = GPT2Tokenizer.from_pretrained("gpt2")
    py.add_tokens([AddedToken("<x>", single_word=True)])
    with pytest.raises(ValueError, match="'<x>' has single_word"):
        TFGPT2Tokenizer.from_tokenizer(py)
    with pytest.raises(ValueError, match=r"lstrip_tokens names \['<y>'\], which are not added tokens"):
        TFGPT2Tokenizer.from_pretrained("gpt2", lstrip_tokens=["<y>"])
    with pytest.raises(TypeError, match="dict"):
        TFGPT2Tokenizer.from_tokenizer({})
    with pytest.raises(ValueError, match="pad_token_id"):
        TFGPT2Tokenizer.from_pretrained("gpt2", padding="longest")
    with pytest.raises(ValueError, match="max_length"):
        TFGPT2Tokenizer.from_pretrained("gpt2", pad_token_id=0, padding="max_length")
    with pytest.raises(ValueError, match="padding_side"):
        TFGPT2Tokenizer.from_pretrained("gpt2", padding_side="middle")
    with pytest.raises(TypeError, match="int32"):
        tok(tf.constant([1, 2]))
    with pytest.raises(TypeError, match="int"):
        tok(3)
    with pytest.raises(ValueError, match="rank"):
        tok(tf.constant([["a"]]))
    with pytest.raises(ValueError, match="-1"):
        tok.detokenize(tf.constant([[15496, -1]]))
    with pytest.raises(ValueError, match="50257"):
        tok.detokenize([50257])


# -- detokenizer ----------------------------------------------------------------------------------------------------

def test_round_trip_and_detokenize(tok):
    texts = [d.text for d in gather(scale=0.05)][:200] + TRICKY
    texts = [t for t in texts if not any(0xD800 <= ord(c) < 0xE000 for c in t)]
    back = tok.detokenize(tok.tokenize(texts)).numpy().tolist()
    assert [b.decode("utf-8") for b in back] == texts
    ids = [[15496, 995, 50256, 31373], [50256]]
    got = [b.decode() for b in tok.detokenize(tf.ragged.constant(ids), skip_special_tokens=True).numpy()]
    assert got == [reference().decode(i, skip_special_tokens=True) for i in ids]
    assert tok.detokenize(tf.constant([15496, 995])).numpy() == b"Hello world"
    # A token cut mid-character decodes as GPT2Tokenizer.decode does: U+FFFD.
    cut = reference().encode("😀")[:1]
    assert tok.detokenize([cut]).numpy()[0].decode() == reference().decode(cut)


# -- graph contexts -------------------------------------------------------------------------------------------------

def test_in_tf_function_and_under_distribution(tok):
    texts = tf.constant(TRICKY)
    padded = TFGPT2Tokenizer.from_pretrained("gpt2", pad_token_id=50256)
    expect = padded(texts)["input_ids"].numpy()

    @tf.function
    def run(x):
        return padded(x)["input_ids"], tok.detokenize(tok.tokenize(x))

    ids, back = run(texts)
    np.testing.assert_array_equal(ids.numpy(), expect)
    assert back.numpy().tolist() == [t.encode() for t in TRICKY]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inside = TFGPT2Tokenizer.from_pretrained("gpt2", pad_token_id=50256)
    result = strategy.run(tf.function(lambda x: inside(x)["input_ids"]), args=(texts,))
    np.testing.assert_array_equal(strategy.experimental_local_results(result)[0].numpy(), expect)


def test_saved_model_and_keras_export_keep_the_tables(tmp_path):
    tok = TFGPT2Tokenizer.from_pretrained("gpt2", pad_token_id=50256, max_length=8)
    texts = tf.constant(TRICKY)
    expect = tok(texts)

    class Serving(tf.Module):
        def __init__(self, tokenizer):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def encode(self, x):
            return self.tokenizer(x)

        @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int64)])
        def decode(self, ids):
            return self.tokenizer.detokenize(ids)

    tf.saved_model.save(Serving(tok), str(tmp_path / "module"))
    loaded = tf.saved_model.load(str(tmp_path / "module"))
    np.testing.assert_array_equal(loaded.encode(texts)["input_ids"].numpy(), expect["input_ids"].numpy())
    assert loaded.decode(tok.tokenize(texts)).numpy().tolist() == [t.encode() for t in TRICKY]

    inputs = keras.Input(shape=(), dtype="string")
    model = keras.Model(inputs, tok(inputs))
    model.export(str(tmp_path / "keras"))
    served = tf.saved_model.load(str(tmp_path / "keras")).serve(texts)
    np.testing.assert_array_equal(served["input_ids"].numpy(), expect["input_ids"].numpy())
    np.testing.assert_array_equal(served["attention_mask"].numpy(), expect["attention_mask"].numpy())


def test_config_round_trip():
    py = GPT2TokenizerFast.from_pretrained("gpt2", pad_token="[PAD]", padding_side="left")
    tok = TFGPT2Tokenizer.from_tokenizer(py, max_length=5)
    again = TFGPT2Tokenizer.from_config(tok.get_config())
    texts = tf.constant(["[PAD] a b c d e f", "x"])
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(again(texts)[key].numpy(), tok(texts)[key].numpy())
    assert again.get_config() == tok.get_config()
