"""OpenAI's byte-level BPE (the core of GPT2Tokenizer), in pure Python: exact, bounded, and never quadratic.

The rules are OpenAI's ``gpt-2/src/encoder.py``: pre-tokenize with one regular expression, map each piece's UTF-8
bytes to printable characters, then merge adjacent symbols in merge-rank order. The ids equal tiktoken's ``gpt2``
encoding (``encode_ordinary``) and transformers' ``GPT2Tokenizer.encode`` for text without special tokens.

>>> bpe = ByteLevelBPE(*read_vocab("vocab.json", "merges.txt"))
>>> bpe.encode_ordinary("Hello world")
[15496, 995]
>>> bpe.tokenize("Hello world"), bpe.decode_bytes([15496, 995])
(['Hello', 'Ġworld'], b'Hello world')

Speed comes from three things: a cache of piece -> ids bounded in entries and in bytes (most text is made of a few
thousand pieces; a text of distinct long words must not grow it without limit), a
merge loop whose inner work (``min``, ``list.index``) runs in C, and a heap + linked list for long pieces, so that
``"a" * 100_000`` costs O(n log n) instead of the O(n^2) of the reference loop.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import namedtuple

import regex

# OpenAI gpt-2/src/encoder.py. tiktoken's gpt2 spells the contractions '(?:[sdmt]|ll|ve|re): the same language.
# Case-sensitive on purpose ("'S" is punctuation then a letter), as OpenAI trained it.
PRETOKENIZE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Pieces longer than this are merged with the heap, shorter ones with the list loop (measured: faster below ~30).
_LONG_PIECE = 32
_NO_RANK = 1 << 62  # sorts after every real rank; an int so that min() compares ints only
# What one cache entry costs beyond its characters and ids, in bytes (CPython 3.11, 64-bit): the str header (~49-73),
# the tuple header (40) and the dict's slot and index share (~40-80). An upper estimate: the byte budget is a bound
# on memory, not a hint.
_ENTRY_BYTES = 200
CACHE_BYTES = 32 * 2**20  # the default byte budget of the piece cache

# lru_cache's four fields (entries), then the byte budget and the bytes in use by the same estimate.
CacheInfo = namedtuple("CacheInfo", "hits misses maxsize currsize maxbytes currbytes")


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible table byte -> printable character (gpt-2/src/encoder.py ``bytes_to_unicode``).

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the 68 others
    (controls, space, soft hyphen) are moved, in byte order, to chr(256), chr(257), ... So the BPE vocabulary never
    holds whitespace or control characters: byte 32 (space) is 'Ġ', byte 10 (newline) is 'Ċ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(printable))
    return dict(sorted(table.items()))


def read_vocab(
    vocab_path: str | os.PathLike, merges_path: str | os.PathLike
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read OpenAI's ``vocab.json`` (a.k.a. encoder.json) and ``merges.txt`` (a.k.a. vocab.bpe), validated.

    Returns ``(encoder, merges)``: ``encoder`` maps token string -> id, ``merges`` lists pairs ``(left, right)`` in
    rank order. Malformed files raise ValueError naming the file (and the line, where there is one).
    """
    try:
        with open(vocab_path, encoding="utf-8") as f:
            encoder = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested ~1000 deep
        raise ValueError(f"{vocab_path}: not a JSON file ({e})") from e

    def merge_lines():
        with open(merges_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts or (lineno == 1 and line.startswith("#version")):
                    continue  # OpenAI's header line "#version: 0.2" and the trailing empty line
                yield f"{merges_path}, line {lineno}", parts, line.rstrip()

    return encoder, check_vocabulary(encoder, merge_lines(), str(vocab_path))


def check_vocabulary(encoder, merges, vocab_name: str) -> list[tuple[str, str]]:
    """Validate a vocabulary: ``encoder`` token -> unique id >= 0; ``merges`` yields ``(where, parts, shown)`` in
    rank order, each ``parts`` two tokens whose concatenation is a token. Returns the merges as pairs; errors are
    ValueErrors naming ``where`` (a file and line, or a file and index) and ``vocab_name``."""
    if not isinstance(encoder, dict):
        raise ValueError(f"{vocab_name}: expected a JSON object token -> id, got {type(encoder).__name__}")
    seen: dict[int, str] = {}
    for token, i in encoder.items():
        # Ids index arrays of the vocabulary's size: they must be 0..n-1 (with no repeat, that is every one of them).
        if type(i) is not int or not 0 <= i < len(encoder):
            raise ValueError(f"{vocab_name}: token {token!r} has id {i!r}, expected an integer in "
                             f"0..{len(encoder) - 1} (the vocabulary has {len(encoder)} tokens)")
        if i in seen:
            raise ValueError(f"{vocab_name}: id {i} is given to both {seen[i]!r} and {token!r}")
        seen[i] = token
    pairs: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], str] = {}
    for where, parts, shown in merges:
        if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"{where}: expected two tokens separated by a space, got {shown!r}")
        left, right = parts
        for token in (left, right, left + right):
            if token not in encoder:
                raise ValueError(f"{where}: merge {left!r} + {right!r}: {token!r} is not in {vocab_name}")
        if (left, right) in ranks:
            raise ValueError(f"{where}: merge {left!r} + {right!r} repeats {ranks[left, right]}")
        ranks[left, right] = where.rsplit(", ", 1)[-1]  # "line 3" (merges.txt), "merge 3" (tokenizer.json)
        pairs.append((left, right))
    return pairs


class ByteLevelBPE:
    """Byte-level BPE over a vocabulary: text -> pieces (regex) -> bytes as characters -> merged tokens -> ids.

    ``encoder``: token string (byte-level characters) -> id; it must hold the 256 single-byte tokens and every merge
    result; other entries (``"<|endoftext|>"``) are never produced by BPE. ``merges``: pairs in rank order.
    ``cache_size``: most pieces remembered (piece -> ids); ``cache_bytes``: most bytes they may take (estimated:
    the characters at 1 byte each for ASCII and 4 otherwise, 8 per id, and a fixed overhead per entry). The cache is
    emptied when either bound would be passed (0 disables it); a piece that alone exceeds ``cache_bytes`` is not
    cached. The byte bound is what keeps a text of distinct long words (a log, base64, a hash list) from growing the
    cache to hundreds of MB: 100,000 entries of 1 kB pieces would be over 600 MB.

    Merge rule (OpenAI's encoder.py, transformers' GPT2Tokenizer): take the adjacent *pair* with the lowest rank in
    merges.txt (the leftmost on ties), merge it, repeat. OpenAI's loop merges every occurrence of the best pair left
    to right in one pass: the same order, since a merge only creates pairs of higher rank. Pairs are keyed
    ``left + " " + right`` (a space is never a byte-level character). tiktoken ranks the merged *string* instead;
    that agrees on OpenAI's files but not on every vocabulary, so the rule here is the pair's.
    ``whole_token_shortcut``: a piece that is itself a token gives that token (tiktoken's shortcut); only for a
    vocabulary where every token merges back to itself, which is true of OpenAI's (checked by the tests).

    Lone surrogates (``"\\ud800"``) are not text; as tiktoken does, a text holding one is re-read through UTF-16, so
    surrogate pairs become their character and lone surrogates become U+FFFD before encoding.
    """

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], cache_size: int = 100_000,
                 whole_token_shortcut: bool = False, cache_bytes: int = CACHE_BYTES):
        for name, value in (("cache_size", cache_size), ("cache_bytes", cache_bytes)):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.byte_encoder = bytes_to_unicode()  # {byte: char}, 256 entries
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}  # {char: byte}
        missing = [b for b, c in self.byte_encoder.items() if c not in encoder]
        if missing:
            raise ValueError(f"encoder lacks the single-byte tokens of bytes {missing[:8]}{'...' * (len(missing) > 8)}")
        self.encoder = dict(encoder)  # {token: id}
        self.decoder = {i: t for t, i in encoder.items()}  # {id: token}
        if len(self.decoder) != len(self.encoder):
            raise ValueError("encoder gives the same id to two tokens")
        self._ranks: dict[str, int] = {}  # {"left right": rank}
        for rank, (left, right) in enumerate(merges):
            if left + right not in encoder:
                raise ValueError(f"merge {rank} ({left!r}, {right!r}): {left + right!r} is not in the encoder")
            self._ranks.setdefault(f"{left} {right}", rank)
        # {token: id} for what BPE can produce: single bytes and merge results.
        self._bpe_ids = {t: encoder[t] for t in [*self.byte_encoder.values(), *(a + b for a, b in merges)]}
        self._shortcut = whole_token_shortcut
        # {id: bytes}; tokens outside the byte alphabet (added tokens) are their UTF-8.
        self._token_bytes = {i: self._to_bytes(t) for t, i in encoder.items()}
        # str.translate table: Latin-1 character (one per byte) -> byte-level character.
        self._byte_chars = str.maketrans({chr(b): c for b, c in self.byte_encoder.items()})
        self._findall = regex.compile(PRETOKENIZE_PATTERN).findall
        self._cache: dict[str, tuple[int, ...]] = {}  # {raw piece: ids}
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0  # the estimate of what self._cache holds, kept <= cache_bytes
        self._lookups = self._misses = 0

    def _to_bytes(self, token: str) -> bytes:
        if all(c in self.byte_decoder for c in token):
            return bytes(self.byte_decoder[c] for c in token)
        return token.encode("utf-8")

    # -- encoding ------------------------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text``, special-token strings included as plain text (tiktoken's ``encode_ordinary``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        pieces = self._findall(text)
        self._lookups += len(pieces)
        get, encode_piece = self._cache.get, self.encode_piece
        try:
            parts = [get(p) or encode_piece(p) for p in pieces]
        except UnicodeEncodeError:  # a surrogate: nothing of it was cached, start again from the repaired text
            self._lookups -= len(pieces)
            return self.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        return [i for part in parts for i in part]

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        """``[encode_ordinary(t) for t in texts]`` (pure Python gains nothing from threads)."""
        return [self.encode_ordinary(t) for t in texts]

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` in the byte-level alphabet (transformers' ``GPT2Tokenizer.tokenize``)."""
        decoder = self.decoder
        return [decoder[i] for i in self.encode_ordinary(text)]

    def encode_piece(self, piece: str) -> tuple[int, ...]:
        # UTF-8 bytes read as Latin-1 are one character per byte; translate maps each to its byte-level character.
        # Raises UnicodeEncodeError on a surrogate (handled by the caller).
        chars = piece.encode("utf-8").decode("latin-1").translate(self._byte_chars)
        bpe_ids = self._bpe_ids
        whole = bpe_ids.get(chars) if self._shortcut else None
        ids = (whole,) if whole is not None else tuple([bpe_ids[t] for t in self.bpe(chars)])
        self._misses += 1
        if self.cache_size:
            cost = _ENTRY_BYTES + (len(piece) if piece.isascii() else 4 * len(piece)) + 8 * len(ids)
            if cost > self.cache_bytes:
                return ids  # a piece too big to keep
            if len(self._cache) >= self.cache_size or self._cached_bytes + cost > self.cache_bytes:
                # Emptied rather than LRU-evicted: no bookkeeping on hits (the hot path); it refills with hot pieces.
                self._cache.clear()
                self._cached_bytes = 0
            self._cache[piece] = ids
            self._cached_bytes += cost
        return ids

    def bpe(self, piece_unicode: str) -> list[str]:
        """Merge one pre-token, already in byte-level characters, into token strings (OpenAI's ``Encoder.bpe``)."""
        if len(piece_unicode) > _LONG_PIECE:
            return self._bpe_heap(piece_unicode)
        return self._bpe_list(piece_unicode)

    def _bpe_list(self, piece_unicode: str) -> list[str]:
        """One rank per adjacent pair (tiktoken's loop); after a merge only the two neighbouring ranks change."""
        ranks, none = self._ranks, _NO_RANK
        word = list(piece_unicode)  # [symbol], merged in place
        pair_ranks = [ranks.get(f"{a} {b}", none) for a, b in zip(word, word[1:])]  # [i]: rank of word[i], word[i+1]
        while pair_ranks:
            best = min(pair_ranks)
            if best == none:
                break
            i = pair_ranks.index(best)  # leftmost of the lowest rank
            word[i] += word.pop(i + 1)
            del pair_ranks[i]
            if i > 0:
                pair_ranks[i - 1] = ranks.get(f"{word[i - 1]} {word[i]}", none)
            if i < len(pair_ranks):
                pair_ranks[i] = ranks.get(f"{word[i]} {word[i + 1]}", none)
        return word

    def _bpe_heap(self, s: str) -> list[str]:
        """The same merges in O(n log n): a heap of candidate pairs over a linked list of symbols.

        A symbol is a span s[start:end[start]]; ``end[start]`` is -1 once the symbol was merged into its left
        neighbour, ``prev[start]`` is the start of the symbol before it. Heap entries ``(rank, left, mid, right)``
        stand for the pair s[left:mid] + s[mid:right]; (rank, left) ordering is tiktoken's lowest rank, then
        leftmost. An entry is stale (skipped) unless both spans still exist unchanged.
        """
        ranks, n = self._ranks, len(s)
        end = list(range(1, n + 1))  # [n] end of the symbol starting at i, or -1
        prev = list(range(-1, n - 1))  # [n] start of the previous symbol (-1 for the first)
        heap = [(ranks[f"{s[i]} {s[i + 1]}"], i, i + 1, i + 2) for i in range(n - 1) if f"{s[i]} {s[i + 1]}" in ranks]
        heapq.heapify(heap)
        while heap:
            _, left, mid, right = heapq.heappop(heap)
            if end[left] != mid or end[mid] != right:
                continue
            end[left], end[mid] = right, -1
            if right < n:
                prev[right] = left
                rank = ranks.get(f"{s[left:right]} {s[right:end[right]]}")
                if rank is not None:
                    heapq.heappush(heap, (rank, left, right, end[right]))
            before = prev[left]
            if before >= 0:
                rank = ranks.get(f"{s[before:left]} {s[left:right]}")
                if rank is not None:
                    heapq.heappush(heap, (rank, before, left, right))
        word, i = [], 0
        while i < n:
            word.append(s[i : end[i]])
            i = end[i]
        return word

    # -- decoding and cache ----------------------------------------------------------------------------------------

    def token_bytes(self, id: int) -> bytes:
        """The bytes token ``id`` stands for."""
        try:
            return self._token_bytes[id]
        except KeyError:
            raise ValueError(f"token id {id!r} is not in the vocabulary") from None

    def decode_bytes(self, ids) -> bytes:
        """The bytes of ``ids`` concatenated (may end mid-character; decode with errors="replace" for text)."""
        table = self._token_bytes
        try:
            return b"".join([table[i] for i in ids])
        except KeyError as e:  # ids from numpy arrays work too: numpy integers hash as ints
            raise ValueError(f"token id {e.args[0]!r} is not in the vocabulary") from None

    def cache_info(self) -> CacheInfo:
        """Piece-cache statistics, as ``functools.lru_cache``'s ``cache_info()``."""
        return CacheInfo(self._lookups - self._misses, self._misses, self.cache_size, len(self._cache),
                         self.cache_bytes, self._cached_bytes)

    def clear_cache(self) -> None:
        """Forget every cached piece and reset the statistics."""
        self._cache.clear()
        self._cached_bytes = self._lookups = self._misses = 0
