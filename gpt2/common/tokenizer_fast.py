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

from .bpe import PRETOKENIZE_PATTERN, bytes_to_unicode
from .tokenizer import ENDOFTEXT, TokenizerBase, _python_engine, is_openai_vocabulary


class TiktokenBPE:
    """OpenAI's vocabulary on tiktoken: the ByteLevelBPE interface (encode_ordinary, decode_bytes, token_bytes)."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]) -> None:
        import tiktoken

        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        ranks = {bytes(byte_of[c] for c in token): index for token, index in encoder.items() if token != ENDOFTEXT}
        self._bytes = {index: data for data, index in ranks.items()}
        self._bytes.update({index: token.encode() for token, index in encoder.items() if token == ENDOFTEXT})
        specials = {token: index for token, index in encoder.items() if token == ENDOFTEXT}
        self._enc = tiktoken.Encoding("gpt2-local", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=specials)  # only for decoding: encode_ordinary ignores them
        self.encode_ordinary = self._enc.encode_ordinary  # bound directly: this is the hot path

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

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
    _spaces_around_added = False

    def _encode_batch(self, texts, offsets):
        if len(texts) < 2 or self._threads == 1:
            return super()._encode_batch(texts, offsets)
        with ThreadPoolExecutor(self._threads) as pool:
            return list(pool.map(lambda t: self._encode_text(t, offsets), texts))
