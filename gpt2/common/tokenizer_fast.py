"""GPT2TokenizerFast: the same tokenizer as GPT2Tokenizer, on tiktoken's BPE engine (OpenAI's, in Rust).

tiktoken merges by the rank of the merged bytes; for OpenAI's GPT-2 vocabulary that is exactly BPE by merge rank
(tiktoken's own "gpt2" encoding is built from the same vocab.bpe / encoder.json), so the ids are identical. For any
other vocabulary the two rules can disagree, so the fast tokenizer then falls back to the pure-Python engine and
says so once. Batches are encoded on threads: tiktoken releases the GIL while it works.

>>> from gpt2 import GPT2TokenizerFast
>>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
>>> tok("héllo 😀", return_offsets_mapping=True)["offset_mapping"]
[(0, 1), (1, 2), (2, 5), (5, 7), (6, 7)]
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import regex

from .bpe import PRETOKENIZE_PATTERN, bytes_to_unicode
from .tokenizer import ENDOFTEXT, TokenizerBase, _python_engine, is_openai_vocabulary

_LONG_RUN = 500_000  # tiktoken panics from a run of 999_999 whitespace characters on
_PARALLEL_CHARS = 200_000  # below this much text a batch is encoded in this thread
_LONG_WHITESPACE = regex.compile(r"\s{%d}" % _LONG_RUN)


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
        # tiktoken's regex engine overflows its backtracking stack on a run of about a million whitespace
        # characters (a Rust panic, raised as pyo3's PanicException, a BaseException); such rare texts go to the
        # Python engine, same ids. A cheap count spots them first; a panic anyway (a run of rare whitespace
        # characters the count does not look for) is caught too.
        if len(text) >= _LONG_RUN and sum(map(text.count, " \n\t\r")) >= _LONG_RUN and _LONG_WHITESPACE.search(text):
            return self._python_engine().encode_ordinary(text)
        try:
            return self._core_encode(text)
        except UnicodeEncodeError:  # lone surrogates: U+FFFD, as tiktoken's own wrapper does
            return self.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        except BaseException as e:
            if type(e).__name__ != "PanicException":
                raise
            return self._python_engine().encode_ordinary(text)

    def _python_engine(self):
        if self._python is None:
            self._python = _python_engine(self._encoder, self._merges)
        return self._python

    def token_bytes(self, index: int) -> bytes:
        return self._bytes[index]

    def decode_bytes(self, ids) -> bytes:
        return self._enc.decode_bytes(ids)


def _engine(encoder: dict[str, int], merges: list[tuple[str, str]]):
    if is_openai_vocabulary(encoder, merges):
        return TiktokenBPE(encoder, merges)
    warnings.warn(
        "GPT2TokenizerFast: this vocabulary is not OpenAI's GPT-2 vocabulary, for which tiktoken is exact; "
        "using the pure-Python BPE engine (same ids, slower)", stacklevel=4,
    )
    return _python_engine(encoder, merges)


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

    def _encode_batch(self, texts, offsets):
        """Big batches run on threads, in one chunk per thread (per-text tasks cost more than they save)."""
        total = sum(len(t) for t in texts if isinstance(t, str))
        if len(texts) < 2 or self._threads == 1 or total < _PARALLEL_CHARS:
            return super()._encode_batch(texts, offsets)
        if self.__dict__.get("_pool") is None:
            self._pool = ThreadPoolExecutor(self._threads)
        n = -(-len(texts) // self._threads)
        chunks = [texts[i:i + n] for i in range(0, len(texts), n)]
        parts = self._pool.map(lambda chunk: TokenizerBase._encode_batch(self, chunk, offsets), chunks)
        return [row for part in parts for row in part]

    def __getstate__(self):  # picklable for DataLoader workers: the thread pool is not carried
        state = dict(self.__dict__)
        state.pop("_pool", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
