"""GPT2Tokenizer and GPT2TokenizerFast, exact on a large corpus of real text (tests/corpus.py: ~6 MB, ~950 documents:
licenses, Python, C headers, changelogs, translations in ~200 languages, man pages, emoji, every Unicode category,
whitespace, controls, adversarial documents).

Oracles: tiktoken over the same vocabulary (every document), transformers' GPT2TokenizerFast (every document; its
offsets on a subset) and GPT2Tokenizer (a ~1 MB subset; all documents it can finish with ``-m slow``).
"""

from __future__ import annotations

import functools
import json
import time

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import requires_transformers
from corpus import KINDS, WHITESPACE, Document, gather, total_bytes
from gpt2 import GPT2Tokenizer, GPT2TokenizerFast
from gpt2.common.bpe import PRETOKENIZE_PATTERN, bytes_to_unicode
from gpt2.common.tokenizer import PACKAGED_VOCAB

# Whole documents, past model_max_length on purpose: the too-long warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Token indices sequence length is longer")

VOCAB, MERGES = PACKAGED_VOCAB / "vocab.json", PACKAGED_VOCAB / "merges.txt"
ENDOFTEXT = "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def tiktoken_gpt2():
    """tiktoken over the packaged vocabulary: the oracle (tiktoken's own "gpt2" would need a download)."""
    import tiktoken

    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(u2b[c] for c in token): i for token, i in vocab.items() if token != ENDOFTEXT}
    return tiktoken.Encoding("gpt2-local", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256})


@functools.lru_cache(maxsize=1)
def ours() -> tuple[GPT2TokenizerFast, GPT2Tokenizer]:
    return GPT2TokenizerFast.from_pretrained("gpt2"), GPT2Tokenizer.from_pretrained("gpt2")


def expected(text: str) -> list[int]:
    return tiktoken_gpt2().encode(text, allowed_special="all")


corpus = gather  # cached: one corpus per process


@functools.lru_cache(maxsize=1)
def corpus_ids() -> dict[int, list[int]]:
    """tiktoken's ids of every document, by index in corpus()."""
    return {i: expected(d.text) for i, d in enumerate(corpus())}


def of_kind(kind: str) -> list[tuple[int, Document]]:
    docs = [(i, d) for i, d in enumerate(corpus()) if d.kind == kind]
    if not docs:
        pytest.skip(f"no {kind} documents on this machine")
    return docs


def round_robin(docs, max_bytes: int = 1 << 62, max_docs: int = 1 << 62, keep=lambda d: True):
    """Documents taken in turn from each kind (so that every kind is represented) while under both limits."""
    queues: dict[str, list[tuple[int, Document]]] = {}
    for i, d in docs:
        if keep(d):
            queues.setdefault(d.kind, []).append((i, d))
    out, used = [], 0
    while any(queues.values()):
        for queue in queues.values():
            if queue:
                if used >= max_bytes or len(out) >= max_docs:
                    return out
                i, d = queue.pop(0)
                out.append((i, d))
                used += d.nbytes
    return out


def longest_piece(text: str) -> int:
    return max(map(len, regex.findall(PRETOKENIZE_PATTERN, text)), default=0)


def mismatch(doc: Document, got: list, want: list, what: str) -> str:
    """Where two id (or span) lists first differ, with the text around it."""
    k = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    if want and isinstance(want[0], tuple):  # spans
        at = want[min(k, len(want) - 1)][0]
    else:
        at = len(tiktoken_gpt2().decode_bytes(want[:k]).decode("utf-8", "ignore"))
    return (f"{what}: {doc.kind} {doc.name!r}: first difference at item {k} (char ~{at}, text "
            f"{doc.text[max(at - 20, 0):at + 20]!r}): got {got[k:k + 5]}, want {want[k:k + 5]} "
            f"(lengths {len(got)}, {len(want)})")


def check_all(docs, encode, what: str) -> None:
    ids = corpus_ids()
    bad = [mismatch(d, got, ids[i], what) for i, d in docs if (got := encode(d.text)) != ids[i]]
    assert not bad, f"{len(bad)} of {len(docs)} documents differ:\n" + "\n".join(bad[:10])


# -- the corpus itself -------------------------------------------------------------------------------------------------

def test_corpus_is_large_and_varied():
    docs = corpus()
    kinds = {d.kind for d in docs}
    assert total_bytes(docs) > 2_000_000 and len(docs) > 500, "too little text found on this machine"
    assert len(kinds) >= 10, f"only these sources were found: {sorted(kinds)}"
    multibyte = [d for d in docs if d.nbytes > len(d.text)]
    assert total_bytes(multibyte) > 1_000_000 and len(multibyte) > 200


# -- ids ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_fast_ids_equal_tiktoken(kind):
    fast, _ = ours()
    check_all(of_kind(kind), lambda t: fast(t)["input_ids"], "GPT2TokenizerFast")
    check_all(of_kind(kind)[:20], fast.encode, "GPT2TokenizerFast.encode")


@pytest.mark.parametrize("kind", KINDS)
def test_slow_ids_equal_tiktoken(kind):
    _, slow = ours()
    slow.bpe.clear_cache()  # cold: every piece goes through the merge loop once
    check_all(of_kind(kind), lambda t: slow(t)["input_ids"], "GPT2Tokenizer")


def test_batches_equal_tiktoken():
    """One call on the whole corpus (the fast tokenizer encodes batches on threads), and on a mixed subset."""
    fast, slow = ours()
    texts = [d.text for d in corpus()]
    want = [corpus_ids()[i] for i in range(len(texts))]
    assert tiktoken_gpt2().encode_batch(texts, allowed_special="all") == want
    assert fast(texts)["input_ids"] == want
    subset = round_robin(list(enumerate(corpus())), max_bytes=300_000)
    assert slow([d.text for _, d in subset])["input_ids"] == [want[i] for i, _ in subset]


@requires_transformers
@pytest.mark.parametrize("kind", KINDS)
def test_transformers_fast_ids(kind, hf_fast):
    check_all(of_kind(kind), lambda t: hf_fast(t)["input_ids"], "transformers.GPT2TokenizerFast")


@requires_transformers
def test_transformers_slow_ids_on_a_subset(hf_slow):
    # transformers' merge loop is quadratic in a piece's length: long pieces are left to -m slow (and to tiktoken).
    subset = round_robin(list(enumerate(corpus())), max_bytes=1_000_000,
                         keep=lambda d: d.nbytes <= 12_000 and longest_piece(d.text) <= 300)
    assert len(subset) > 200 and {d.kind for _, d in subset} == {d.kind for d in corpus()}
    check_all(subset, lambda t: hf_slow(t)["input_ids"], "transformers.GPT2Tokenizer")


@pytest.mark.slow
@requires_transformers
def test_transformers_slow_ids_everywhere_it_finishes(hf_slow):
    subset = [(i, d) for i, d in enumerate(corpus()) if longest_piece(d.text) <= 2_000]
    check_all(subset, lambda t: hf_slow(t)["input_ids"], "transformers.GPT2Tokenizer")


# -- round trip, surrogates --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_decode_encode_round_trip(kind):
    for tok in ours():
        texts = [d.text for _, d in of_kind(kind)]
        ids = [corpus_ids()[i] for i, _ in of_kind(kind)]
        bad = [d for d, i in zip(texts, ids) if tok.decode(i) != d]
        assert not bad, f"{type(tok).__name__}: {len(bad)} documents do not round-trip, e.g. {bad[0][:200]!r}"
        assert tok.batch_decode(tok(texts)["input_ids"]) == texts


def test_lone_surrogates_become_replacement_characters():
    """A str may hold lone surrogates, which have no UTF-8: both tokenizers read them as U+FFFD, as tiktoken does,
    and a surrogate pair spelt as two code units is the character it stands for."""
    inserts = ["\ud800", "\udfff", "\ud83d\ude00", "\ude00\ud83d", "\udbff\udfff", " \udc00 "]
    docs = round_robin(list(enumerate(corpus())), max_bytes=150_000, keep=lambda d: 0 < len(d.text) < 20_000)
    for n, (_, doc) in enumerate(docs):
        cut = len(doc.text) * (n % 7) // 7
        text = doc.text[:cut] + inserts[n % len(inserts)] + doc.text[cut:] + inserts[(n + 1) % len(inserts)]
        repaired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        want = expected(repaired)
        assert expected(text) == want  # tiktoken repairs the same way
        for tok in ours():
            assert tok(text)["input_ids"] == want, mismatch(doc, tok(text)["input_ids"], want, type(tok).__name__)
            assert tok.decode(want) == repaired


# -- offsets -----------------------------------------------------------------------------------------------------------

def rebuild_from_spans(text: str, spans) -> str:
    """The text the spans cover, each character once. Spans start in order and leave no gap; two tokens that split one
    character (a 4-byte emoji in two tokens) both point at it."""
    out, pos, last_start = [], 0, 0
    for start, end in spans:
        assert last_start <= start <= pos <= end, f"span {(start, end)} after position {pos}"
        out.append(text[pos:end])
        pos, last_start = end, start
    return "".join(out)


@requires_transformers
def test_offsets_like_transformers_fast(hf_fast):
    multibyte = lambda d: d.nbytes > len(d.text)  # noqa: E731
    docs = [d for _, d in round_robin(list(enumerate(corpus())), max_docs=250, keep=multibyte)]
    docs += [d for _, d in round_robin(list(enumerate(corpus())), max_docs=60, keep=lambda d: not multibyte(d))]
    assert len(docs) == 310
    texts = [d.text[:4_000] for d in docs]
    want = [[tuple(s) for s in spans] for spans in hf_fast(texts, return_offsets_mapping=True)["offset_mapping"]]
    for tok in ours():
        got = tok(texts, return_offsets_mapping=True)["offset_mapping"]
        for doc, text, g, w in zip(docs, texts, got, want):
            g = [tuple(s) for s in g]
            assert g == w, mismatch(Document(doc.kind, doc.name, text), g, w, f"{type(tok).__name__} offsets")
            assert rebuild_from_spans(text, g) == text


# -- property tests ----------------------------------------------------------------------------------------------------

FRAGMENTS = [
    "a", "Z", "é", "ß", "ǅ", "я", "Ω", "ש", "ع", "क्ष", "中", "の", "한", "ก", "ሰ", "𝔞", "1", "١", "½", "²",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'", "’", ".", "!?", "(", "#", "@", "_", "-",
    "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "1️⃣", "\u200d", "\ufe0f", "\u0301", "\u0308\u0323", "\u200b",
    "<|endoftext|>", "<|endoftext|", "\r\n", "\x00", "\x1b[0m", "\x7f", "\x85", "\ufffd", "\U0010FFFF",
    *WHITESPACE,
]
mixed_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS),
              st.tuples(st.sampled_from(FRAGMENTS), st.integers(2, 200)).map(lambda fn: fn[0] * fn[1]),
              st.text(max_size=4)),
    max_size=40,
).map("".join)


def check_text(text: str) -> None:
    want = expected(text)
    for tok in ours():
        assert tok(text)["input_ids"] == want
        assert tok.decode(want) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_any_text_like_tiktoken(text):
    check_text(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_text)
def test_mixed_alphabets_like_tiktoken(text):
    check_text(text)


# -- long documents ----------------------------------------------------------------------------------------------------

LONG = {"a": "a" * 1_000_000, "emoji": "\U0001F600" * 250_000, "digits": "1" * 1_000_000,
        "spaces then a letter": " " * 500_000 + "a", "words": "hello world " * 100_000}


@pytest.mark.parametrize("name", LONG)
def test_million_character_documents(name):
    fast, _ = ours()
    text = LONG[name]
    start = time.perf_counter()
    ids = fast.encode(text)
    elapsed = time.perf_counter() - start
    assert ids == expected(text)
    assert elapsed < 10, f"{elapsed:.1f} s: encoding must stay linear-ish (the budget for 'a' * 1_000_000 is 2 s)"


@pytest.mark.slow
@pytest.mark.parametrize("name", LONG)
def test_million_character_documents_slow_tokenizer(name):
    _, slow = ours()
    assert slow.encode(LONG[name]) == expected(LONG[name])


@pytest.mark.parametrize("space", [" ", "\u3000"], ids=["space", "ideographic-space"])
def test_million_spaces_fast(space):
    """tiktoken's regex engine panics on a whitespace run of 999_999+ characters; the fast tokenizer hands such
    texts to the Python engine (found by a count for common whitespace, by catching the panic for the rest)."""
    fast, slow = ours()
    text = "x" + space * 1_000_000 + "y"
    try:
        ids = fast.encode(text)
    except BaseException as e:  # pyo3's PanicException derives from BaseException, not Exception
        raise AssertionError(f"GPT2TokenizerFast.encode raised {type(e).__name__}: {str(e)[:200]}") from None
    assert ids == slow.encode(text)


# -- fixtures ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_fast():
    import transformers

    tok = transformers.GPT2TokenizerFast(str(VOCAB), str(MERGES))
    tok.model_max_length = 10**9  # no "sequence too long" warning
    return tok


@pytest.fixture(scope="module")
def hf_slow():
    import transformers

    tok = transformers.GPT2Tokenizer(str(VOCAB), str(MERGES))
    tok.model_max_length = 10**9
    return tok
