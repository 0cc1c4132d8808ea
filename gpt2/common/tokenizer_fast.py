r"""GPT2TokenizerFast: the same tokenizer as GPT2Tokenizer, on tiktoken's BPE engine (OpenAI's, in Rust).

tiktoken merges by the rank of the merged bytes; for OpenAI's GPT-2 vocabulary that is exactly BPE by merge rank
(tiktoken's own "gpt2" encoding is built from the same vocab.bpe / encoder.json), so the ids are identical. For any
other vocabulary the two rules can disagree, so the fast tokenizer then falls back to the pure-Python engine and
says so once. Batches are encoded on threads: tiktoken releases the GIL while it works.

Two places where tiktoken alone would not give GPT2Tokenizer's ids, and what is done about them:

- Unicode tables. OpenAI's encoder.py (and transformers' GPT2Tokenizer, and ours) pre-tokenize with the ``regex``
  module, whose tables are recent (Unicode 17 in regex 2026.x); tiktoken's Rust regex (and the ``tokenizers``
  library under transformers' GPT2TokenizerFast) has older ones, which do not call the letters and digits assigned
  since (``_RECENT``, 26,872 code points: CJK extensions H-J, Kawi, Garay, ...) letters or digits, so pieces split
  differently around them ("\U00032936\u69ad": [..., 35050, ...] vs [..., 114, 162, ...]). A text holding one goes
  to the Python engine: both our tokenizers follow encoder.py's ``regex``.
- Whitespace runs. tiktoken's regex (fancy-regex, backtracking for ``\s+(?!\S)``) overflows its stack on a run of
  999,999 whitespace characters (a Rust panic). Runs of ``_LONG_RUN`` or more are cut out of the text where the
  pieces cannot change (see ``_encode_long_runs``) and merged by tiktoken's BPE directly, without its regex.

>>> from gpt2 import GPT2TokenizerFast
>>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
>>> tok("héllo 😀", return_offsets_mapping=True)["offset_mapping"]
[(0, 1), (1, 2), (2, 5), (5, 7), (6, 7)]
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import regex

from .bpe import PRETOKENIZE_PATTERN, bytes_to_unicode
from .tokenizer import ENDOFTEXT, TokenizerBase, is_openai_vocabulary, python_engine

_LONG_RUN = 100_000  # whitespace runs this long skip tiktoken's regex (it panics from 999_999 on)
_SAMPLE = _LONG_RUN // 2  # a run of _LONG_RUN covers two consecutive characters text[k * _SAMPLE], text[(k+1) * ...]
_PARALLEL_CHARS = 200_000  # below this much text a batch is encoded in this thread
# Nor a batch of short texts: each text's Python work holds the GIL, and on ~100-byte texts (~5 us in tiktoken) the
# threads hand the GIL back and forth more than they encode (28,000 texts of ~100 B on 2 cores: 1.6x a plain loop).
_PARALLEL_MEAN_CHARS = 500
_LONG_WHITESPACE = regex.compile(r"\s{%d,}" % _LONG_RUN)
# The code points the regex module calls letters (\p{L}) or numbers (\p{N}) and Unicode 14.0 (Python 3.11's
# unicodedata) does not: what was assigned since. tiktoken's tables are older than the regex module's, so these are
# where the two can pre-tokenize differently (tests/common/test_tokenizer_hostile.py recomputes the set; a new regex
# release with new letters fails that test until the table grows). A superset is safe: it only costs speed.
_RECENT_RANGES = """
558 58B-58C 88F C5C CDC 1C89-1C8A 208F 209D-209F A7CB-A7CF A7D2 A7D4 A7DA-A7DD A7E2 A7F1 AB6C-AB6D 105C0-105F3
107BB-107BF 10940-10959 10D40-10D65 10D6F-10D85 10EC2-10EC7 10ED9-10EEE 1123F-11240 11380-11389 1138B 1138E
11390-113B5 113B7 113D1 113D3 116D0-116E3 11B0A 11BC0-11BE0 11BF0-11BF9 11DB0-11DDB 11DE0-11DE9 11DF1 11F02
11F04-11F10 11F12-11F33 11F50-11F59 1246F 12475-1247F 12550-12686 1342F 13441-13446 13460-143FA 16100-1611D
16130-16139 16D40-16D6C 16D70-16D79 16EA0-16EB8 16EBB-16ED3 16FF2-16FF6 187F8-187FF 18CD6-18CDA 18CFF
18D09-18D20 18D80-18DF2 18E00-19191 191A0-191D2 1B123-1B128 1B132 1B155 1B168 1CCF0-1CCF9 1D2C0-1D2D3 1D6A6
1DF1F-1DF81 1DF90-1DF96 1DFCD-1DFFF 1E030-1E06D 1E4D0-1E4EB 1E4F0-1E4F9 1E5D0-1E5ED 1E5F0-1E5FA 1E6C0-1E6DE
1E6E0-1E6E2 1E6E4-1E6E5 1E6E7-1E6ED 1E6F0-1E6F4 1E6FE-1E6FF 2B739-2B73F 2B81E 2CEA2-2CEAD 2EBF0-2EE5D
31350-33479 3D000-3FC3F
"""


def _code_point_class(ranges: str) -> str:
    r"""Hexadecimal ranges ("558 58B-58C") -> a regex character class ("[\U00000558\U0000058b-\U0000058c]")."""
    parts = []
    for item in ranges.split():
        parts.append("-".join(f"\\U{int(x, 16):08x}" for x in item.split("-")))
    return "[" + "".join(parts) + "]"


_RECENT = regex.compile(_code_point_class(_RECENT_RANGES))
# The regex module's search over that class costs twice tiktoken's encoding on CJK text, and as much as the encoding
# on a short text of emoji. So stdlib ``re`` scans run first, for supersets of the class. sre checks a class beyond
# U+FFFF item by item (~30 ns a character for the ten merged ranges below, ~5 ns with one range), so: (1) the few BMP
# code points exactly (a bitmap) and one range for everything beyond U+FFFF, on every text that is not ASCII; (2) only
# from a character beyond U+FFFF on, the BMP points and the ranges beyond U+FFFF merged across gaps of less than 4096
# (emoji, U+1F000..U+1FAFF, and CJK extension B lie in gaps); (3) only from a character that finds, the full class.


def _superset_class(ranges: str, gap: int | None = 0x1000) -> str:
    """The BMP code points of ``ranges`` exactly, and the ones beyond U+FFFF as ranges merged across gaps shorter than
    ``gap`` (None: one range, U+10000..U+10FFFF)."""
    bmp, merged = [], []
    for item in ranges.split():
        first, last = (int(x, 16) for x in (item.split("-") * 2)[:2])
        if last <= 0xFFFF:
            bmp.append(item)
        elif gap is None:
            merged = [[0x10000, 0x10FFFF]]
        elif merged and first - merged[-1][1] < gap:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return _code_point_class(" ".join(bmp + [f"{a:X}-{b:X}" for a, b in merged]))


_MAY_BE_RECENT = re.compile(_superset_class(_RECENT_RANGES, None))  # (1)
_may_be_recent = _MAY_BE_RECENT.search
_MAY_BE_RECENT_NARROW = re.compile(_superset_class(_RECENT_RANGES))  # (2)


def _has_recent(text: str) -> bool:
    match = _may_be_recent(text)
    if match is not None and match.group() >= "\U00010000":
        match = _MAY_BE_RECENT_NARROW.search(text, match.start())
        if match is not None and match.group() >= "\U00010000":
            return _RECENT.search(text, match.start()) is not None
    return match is not None


class TiktokenBPE:
    """OpenAI's vocabulary on tiktoken: the ByteLevelBPE interface (encode_ordinary, decode_bytes, token_bytes)."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]) -> None:
        import tiktoken

        self._encoder, self._merges = encoder, merges
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        ranks = {bytes(byte_of[c] for c in token): index for token, index in encoder.items() if token != ENDOFTEXT}
        self._bytes = {index: data for data, index in ranks.items()}
        self._bytes.update({index: token.encode() for token, index in encoder.items() if token == ENDOFTEXT})
        specials = {token: index for token, index in encoder.items() if token == ENDOFTEXT}
        self._enc = tiktoken.Encoding("gpt2-local", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=specials)  # only for decoding: encode_ordinary ignores them
        # tiktoken's core, called without the Encoding wrapper: this is the hot path (public method as fallback).
        self._core_encode = getattr(getattr(self._enc, "_core_bpe", None), "encode_ordinary", self._enc.encode_ordinary)
        self._python = None  # the pure-Python engine, made on first need

    def encode_ordinary(self, text: str) -> list[int]:
        # The hot path, one call per text: on a 100-byte text tiktoken's core takes ~4 us, so this does only what it
        # must (a length test, the O(1) isascii flag, and on other text one scan for characters that may be recent).
        if len(text) < _LONG_RUN and (text.isascii() or _may_be_recent(text) is None):
            try:
                return self._core_encode(text)
            except UnicodeEncodeError:  # lone surrogates: U+FFFD, as tiktoken's own wrapper does
                return self.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
            except BaseException as e:  # pyo3's PanicException is a BaseException; none is known to remain
                if type(e).__name__ != "PanicException":
                    raise
                return self._python_engine().encode_ordinary(text)
        if len(text) >= _LONG_RUN and _may_hold_long_run(text):
            return self._encode_long_runs(text)
        return self._encode_short_runs(text)

    def _encode_short_runs(self, text: str) -> list[int]:
        """A text with no whitespace run of _LONG_RUN: tiktoken, unless it holds a recently assigned letter."""
        if not text.isascii() and _has_recent(text):
            return self._python_engine().encode_ordinary(text)
        try:
            return self._core_encode(text)
        except UnicodeEncodeError:
            return self.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        except BaseException as e:
            if type(e).__name__ != "PanicException":
                raise
            return self._python_engine().encode_ordinary(text)

    def _encode_long_runs(self, text: str) -> list[int]:
        r"""Cut each whitespace run of _LONG_RUN or more out of the text and merge it as one piece.

        Why the cut cannot change the ids: the pattern has no lookbehind, and a run of two or more whitespace
        characters always starts a piece (the only alternatives that take whitespace are ``\s+(?!\S)``, ``\s+`` and
        the optional space of `` ?\p{L}+`` etc., which needs a non-space right after it). From that start
        ``\s+(?!\S)`` takes the whole run at the end of the text, or all of it but its last character otherwise
        (the longest match not followed by \S). That last character begins the next part: the regex sees it exactly
        as it would have. So the text before the run, the run's piece, and the rest are encoded separately, the
        piece by tiktoken's BPE without its regex (``encode_single_piece``).
        """
        ids: list[int] = []
        pos = 0
        for match in _LONG_WHITESPACE.finditer(text):
            start, end = match.span()
            ids += self._encode_short_runs(text[pos:start])
            stop = end if end == len(text) else end - 1
            ids += self._encode_piece(text[start:stop].encode("utf-8"))
            pos = stop
        return ids + self._encode_short_runs(text[pos:])

    def _encode_piece(self, data: bytes) -> list[int]:
        single = getattr(getattr(self._enc, "_core_bpe", None), "encode_single_piece", None)
        if single is None:  # a tiktoken without it: the Python engine merges the piece (same ids)
            python = self._python_engine()
            return list(python.encode_piece(data.decode("utf-8")))
        return single(data)

    def _python_engine(self):
        if self._python is None:
            self._python = python_engine(self._encoder, self._merges)
        return self._python

    def token_bytes(self, index: int) -> bytes:
        return self._bytes[index]

    def decode_bytes(self, ids) -> bytes:
        return self._enc.decode_bytes(ids)


def _may_hold_long_run(text: str) -> bool:
    r"""Whether ``text`` may hold a whitespace run of _LONG_RUN characters: cheap (a sample every _SAMPLE characters)
    and never wrong when it says no; the regex then looks. str.isspace is true on every regex ``\s`` (and more)."""
    sample = text[::_SAMPLE]
    return any(a.isspace() and b.isspace() for a, b in zip(sample, sample[1:]))


def _engine(encoder: dict[str, int], merges: list[tuple[str, str]]):
    if is_openai_vocabulary(encoder, merges):
        return TiktokenBPE(encoder, merges)
    warnings.warn(
        "GPT2TokenizerFast: this vocabulary is not OpenAI's GPT-2 vocabulary, for which tiktoken is exact; "
        "using the pure-Python BPE engine (same ids, slower)", stacklevel=4,
    )
    return python_engine(encoder, merges)


class GPT2TokenizerFast(TokenizerBase):
    """OpenAI's GPT-2 tokenizer on tiktoken, with transformers' GPT2TokenizerFast API; ids identical to
    GPT2Tokenizer. ``return_offsets_mapping=True`` gives character spans as transformers' fast tokenizer does.
    With ``add_prefix_space=True`` a space goes before each stretch of text that does not start with a space
    (between added tokens too), as in transformers' fast tokenizer.
    """

    is_fast = True
    _engine = staticmethod(_engine)
    _threads = max(1, min(8, os.cpu_count() or 1))

    _prefix_whole_text = False
    _bos_before_pair = False
    _length_counts_padding = True
    _balanced_truncation = True
    _overflow_windows = True
    _spaces_around_added = False
    _split_keeps_normal_tokens = True

    def _encode_batch(self, texts, offsets, split_special=False):
        """Big batches run on threads, in one chunk per thread (per-text tasks cost more than they save)."""
        if not self._worth_threads(texts):
            return super()._encode_batch(texts, offsets, split_special)
        return self._on_threads(lambda chunk: TokenizerBase._encode_batch(self, chunk, offsets, split_special), texts)

    def _plain_batch(self, texts, split):
        """The plain call's batch (tokenizer_call.py), threaded the same way."""
        if not self._worth_threads(texts):
            return super()._plain_batch(texts, split)
        return self._on_threads(lambda chunk: TokenizerBase._plain_batch(self, chunk, split), texts)

    def _worth_threads(self, texts) -> bool:
        total = sum(len(t) for t in texts if isinstance(t, str))
        return (len(texts) > 1 and self._threads > 1
                and total >= max(_PARALLEL_CHARS, _PARALLEL_MEAN_CHARS * len(texts)))

    def _on_threads(self, encode_chunk, texts):
        if self.__dict__.get("_pool") is None:
            self._pool = ThreadPoolExecutor(self._threads)
        n = -(-len(texts) // self._threads)
        parts = self._pool.map(encode_chunk, [texts[i:i + n] for i in range(0, len(texts), n)])
        return [row for part in parts for row in part]

    def __getstate__(self):  # picklable for DataLoader workers: the thread pool is not carried
        state = dict(self.__dict__)
        state.pop("_pool", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
