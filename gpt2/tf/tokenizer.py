"""TFGPT2Tokenizer: OpenAI's byte-level BPE inside the TensorFlow graph, exact (the same ids as GPT2Tokenizer).

gpt2/tf's one framework-only file (DESIGN.md; tests/test_structure.py's FRAMEWORK_ONLY): torch and Flax take token
ids from the Python tokenizers, but a TensorFlow SavedModel that takes raw strings has to tokenize in the graph.

>>> from gpt2.tf.tokenizer import TFGPT2Tokenizer
>>> tok = TFGPT2Tokenizer.from_pretrained("gpt2", pad_token_id=50256)
>>> out = tok(tf.constant(["Hello world", "a"]))   # {"input_ids": (B, T) int32, "attention_mask": (B, T) int32}
>>> tok.detokenize(out["input_ids"][:1, :2])        # tf.Tensor([b'Hello world'])

How, in plain TF ops (no tensorflow-text, no Python at run time):
1. Bytes that are not UTF-8 become U+FFFD exactly as ``bytes.decode("utf-8", "replace")`` does (TF's transcode
   replaces the same maximal subparts; tested): the Python tokenizers take str, and this is that str.
2. Added tokens (``<|endoftext|>``) are cut out with one RE2 alternation, longest first (the Python tokenizers'
   rule): each match is wrapped in 0xFF bytes, which valid UTF-8 never holds, and the text is split on them.
3. Pre-tokenizing: GPT-2's ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
   cannot be written in RE2 (the lookahead; RE2's \\s is ASCII), but where its matches start is a local rule over
   character classes, evaluated for every character at once (``_piece_starts``). The classes (letter, number,
   whitespace, other) come from the ``regex`` module -- the one GPT2Tokenizer uses -- over every code point, kept
   as sorted range starts looked up with searchsorted.
4. Each piece that is itself a token is that token (true of OpenAI's vocabulary, where every token merges back to
   itself: most pieces of real text). The other pieces are merged in a ``tf.while_loop``: each round, in every
   piece at once, the lowest-ranked adjacent pair is merged at all its non-overlapping occurrences, left to right
   (OpenAI's encoder.py loop); a piece that merged nothing leaves the working set. Rounds are bounded by the
   distinct merges one piece needs, not by its length: 1 MB of "a" takes a handful of rounds (0.6 s). The worst
   case is one long piece made of many different pairs: 100 kB of random letters with no space needs thousands of
   rounds over the whole piece.
5. So a piece longer than 256 bytes is cut into windows of 256 overlapping by 64, and the windows are merged as
   pieces of their own (a window's rounds are bounded by its length). Neighbouring windows are stitched at a token
   that both produced over the same bytes of their overlap: the left window's tokens up to that token's end, the
   right window's after it. That is exact because the BPE of a text is the one split into tokens whose every
   adjacent pair is "compatible" (the pair's own BPE is that pair; the property GitHub's ``bpe`` crate builds on):
   each side of the stitch comes from a real BPE, and across the stitch the shared token and its right neighbour
   are adjacent in the right window's BPE. Tested against GPT2Tokenizer on windows of every size. Where two windows
   agree on no token (rare: runs of one repeated pattern out of phase), the piece is merged whole as before.
   100 kB of random letters: seconds, not minutes (benchmarks/RESULTS.md).
Tables (merge ranks keyed by packed int64 pairs, whole tokens keyed by their bytes) are tf.lookup tables owned by
the layer, so ``tf.saved_model.save`` and Keras' ``export`` keep them.
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
import regex
import tensorflow as tf

from ..common.bpe import bytes_to_unicode
from ..common.tokenizer import ENDOFTEXT, GPT2Tokenizer, TokenizerBase, is_openai_vocabulary

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3  # the pre-tokenizer's character classes
_NONE = -1  # the class of "no character" (before a text's first, after its last)
_MARK = b"\xff"  # wraps added tokens before splitting: never in valid UTF-8
_NO_RANK = np.iinfo(np.int64).max  # a pair that is no merge
_PADDINGS = ("longest", "max_length", "ragged")


@functools.lru_cache(maxsize=1)
def _space_class() -> str:
    """An RE2 class of the characters ``str.isspace`` accepts (what an lstrip / rstrip token swallows in the Python
    tokenizers; RE2's ``\\s`` is ASCII-only)."""
    points = [c for c in range(0x110000) if chr(c).isspace()]
    ranges, start = [], points[0]
    for a, b in zip(points, points[1:] + [None]):
        if b != a + 1:
            ranges.append(f"\\x{{{start:x}}}" + (f"-\\x{{{a:x}}}" if a != start else ""))
            start = b
    return "[" + "".join(ranges) + "]"


@functools.lru_cache(maxsize=1)
def character_classes() -> tuple[np.ndarray, np.ndarray]:
    """``(starts, classes)``: code point ``c`` is of class ``classes[searchsorted(starts, c, "right") - 1]``.

    Built from the ``regex`` module's ``\\p{L}``, ``\\p{N}`` and ``\\s`` over every code point (the pattern
    GPT2Tokenizer runs), so that every script, digit and space character is classed as the Python tokenizers class
    it; about 1,500 ranges (a second to build, once per process).
    """
    everything = "".join(map(chr, range(0x110000)))
    table = np.full(0x110000, OTHER, np.int8)
    for cls, pattern in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for m in regex.finditer(pattern, everything):
            table[m.start():m.end()] = cls
    starts = np.concatenate([[0], np.flatnonzero(np.diff(table)) + 1]).astype(np.int32)
    return starts, table[starts].astype(np.int32)


def _utf8_lengths(cp):
    """Bytes in the UTF-8 form of each code point (1 below U+0080, 2 below U+0800, 3 below U+10000, else 4)."""
    return 1 + tf.cast(cp >= 0x80, tf.int32) + tf.cast(cp >= 0x800, tf.int32) + tf.cast(cp >= 0x10000, tf.int32)


def _utf8_bytes(cp, lengths):
    """The UTF-8 bytes of code points ``cp`` (flat), one entry per byte: lead byte then continuation bytes."""
    char = tf.repeat(tf.range(tf.size(cp)), lengths)  # [n bytes] the character each byte belongs to
    first = tf.cumsum(lengths, exclusive=True)
    k = tf.range(tf.size(char)) - tf.gather(first, char)  # byte index within its character
    c, n = tf.gather(cp, char), tf.gather(lengths, char)
    shifted = tf.bitwise.right_shift(c, 6 * (n - 1 - k))
    lead = tf.gather(tf.constant([0, 0x00, 0xC0, 0xE0, 0xF0], tf.int32), n)
    lead_byte = tf.where(n == 1, c, tf.bitwise.bitwise_or(lead, shifted))
    return tf.where(k == 0, lead_byte, tf.bitwise.bitwise_or(0x80, tf.bitwise.bitwise_and(shifted, 0x3F)))


def _neighbour(x, row, k: int, fill):
    """``x[i + k]`` where that is in the same text as ``i``, else ``fill`` (flat arrays, ``row`` per element)."""
    n = tf.size(x)
    j = tf.range(n) + k
    inside = (j >= 0) & (j < n)
    jc = tf.clip_by_value(j, 0, tf.maximum(n - 1, 0))
    same = inside & (tf.gather(row, jc) == row)
    return tf.where(same, tf.gather(x, jc), tf.cast(fill, x.dtype))


def _piece_starts(cp, cls, row):
    """Whether a piece of GPT-2's pre-tokenizer pattern starts at each character (flat over all texts).

    The pattern's matches, read left to right, start at:
    - a change of class, except from a space U+0020 that ends a whitespace run into a non-space: `` ?\\p{L}+``
      (and N, other) takes that space along;
    - the last character of a whitespace run followed by a non-space: ``\\s+(?!\\S)`` leaves it for the next
      piece (a lone one is ``\\s+`` alone, or the space of `` ?X+``);
    - contractions: an apostrophe that starts a piece (not inside a run of "other" characters, not after a space
      that it would join) followed by s, t, m, d, re, ve or ll (case-sensitive) is one piece of 2 or 3 characters,
      taken from the letters that follow.
    """
    prev_cls, next_cls = _neighbour(cls, row, -1, _NONE), _neighbour(cls, row, 1, _NONE)
    prev_space = _neighbour(cp, row, -1, 0) == 32
    starts = (cls != prev_cls) & ~((prev_cls == SPACE) & prev_space)
    starts |= (cls == SPACE) & (prev_cls == SPACE) & (next_cls != SPACE) & (next_cls != _NONE)
    c1, c2 = _neighbour(cp, row, 1, 0), _neighbour(cp, row, 2, 0)
    two = (c1 == ord("s")) | (c1 == ord("t")) | (c1 == ord("m")) | (c1 == ord("d"))
    three = (((c1 == ord("r")) | (c1 == ord("v"))) & (c2 == ord("e"))) | ((c1 == ord("l")) & (c2 == ord("l")))
    contraction = (cp == ord("'")) & (prev_cls != OTHER) & ~prev_space & (two | three)
    starts &= ~_neighbour(contraction, row, -1, False)  # the contraction's letters are not a piece of their own
    starts |= _neighbour(contraction & two, row, -2, False) | _neighbour(contraction & three, row, -3, False)
    return starts


def _utf8(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: re-read through UTF-16 as tiktoken and our tokenizers do
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class TFGPT2Tokenizer(keras.layers.Layer):
    """GPT-2's tokenizer as a Keras layer: a batch of strings in, ``input_ids`` and ``attention_mask`` out.

    The same ids as GPT2Tokenizer (and tiktoken's gpt2) on any text; eager, in ``tf.function``, under
    ``tf.distribute``, and in SavedModels. Not inside XLA (strings cannot enter it): tokenize, then call the
    compiled model.

    - ``vocab`` (token -> id) and ``merges`` (pairs, or "left right" strings, in rank order): OpenAI's files.
    - ``padding``: "longest" (pad to the longest row), "max_length" (to ``max_length``), or "ragged" (tf.RaggedTensor
      outputs). Default: "longest" when ``pad_token_id`` is set, else "ragged" (transformers' TFGPT2Tokenizer).
    - ``max_length``: rows are cut to it (``truncation_side`` "right" keeps the start, "left" the end); a call's
      ``max_length`` overrides it. ``padding_side`` "right" or "left" (left for generation).
    - ``added_tokens``: strings read in text as one id, longest first (default: ``<|endoftext|>``, as the Python
      tokenizers do; ``{}`` reads it as plain text). ``special_token_ids``: what ``detokenize(...,
      skip_special_tokens=True)`` drops (default: the added tokens' ids).
    - ``lstrip_tokens`` / ``rstrip_tokens``: added tokens that swallow the whitespace (``str.isspace``) before /
      after them (AddedToken's lstrip / rstrip, as the Python tokenizers apply them).
    - ``add_prefix_space``: a space before the text (GPT2Tokenizer), or with ``prefix_space_per_segment`` before
      each stretch of text between added tokens that does not start with one (GPT2TokenizerFast).
      ``add_bos_token``: ``bos_token_id`` first in every row (kept by truncation).
    Outputs are int32 (what ``return_tensors="tf"`` gives).
    """

    # A piece longer than this many symbols (bytes) is merged in windows of that length overlapping by the second
    # figure (module doc, step 5). Any sizes give the same ids; these bound a window's rounds and find a token both
    # windows agree on in nearly every overlap.
    _bpe_window = (256, 64)

    def __init__(self, vocab: dict[str, int], merges, max_length: int | None = None, pad_token_id: int | None = None,
                 *, padding: str | None = None, padding_side: str = "right", truncation_side: str = "right",
                 added_tokens: dict[str, int] | None = None, special_token_ids=None, add_prefix_space: bool = False,
                 prefix_space_per_segment: bool = False, add_bos_token: bool = False, bos_token_id: int | None = None,
                 lstrip_tokens=(), rstrip_tokens=(), **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False  # strings stay strings (Keras would cast inputs to the layer's dtype)
        self._allow_non_tensor_positional_args = True
        # Plain Python data, kept out of Keras' and TF's attribute tracking (wrapping a 50,000-entry dict costs
        # seconds; the graph reads the tables built from them, which are tracked).
        untracked = functools.partial(object.__setattr__, self)
        untracked("vocab", dict(vocab))
        untracked("merges", [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges])
        if added_tokens is None:
            added_tokens = {ENDOFTEXT: self.vocab[ENDOFTEXT]} if ENDOFTEXT in self.vocab else {}
        untracked("added_tokens", {str(k): int(v) for k, v in added_tokens.items()})
        untracked("special_token_ids", sorted({int(i) for i in (self.added_tokens.values() if special_token_ids
                                                                is None else special_token_ids)}))
        for name, tokens in (("lstrip_tokens", lstrip_tokens), ("rstrip_tokens", rstrip_tokens)):
            unknown = sorted(set(tokens) - set(self.added_tokens))
            if unknown:
                raise ValueError(f"{name} names {unknown}, which are not added tokens ({sorted(self.added_tokens)})")
        untracked("lstrip_tokens", sorted(lstrip_tokens))
        untracked("rstrip_tokens", sorted(rstrip_tokens))
        if padding is None:
            padding = "ragged" if pad_token_id is None else "longest"
        self._check_options(padding, padding_side, truncation_side, max_length, pad_token_id, add_bos_token,
                            bos_token_id)
        self.padding, self.padding_side, self.truncation_side = padding, padding_side, truncation_side
        self.max_length, self.pad_token_id = max_length, pad_token_id
        self.add_prefix_space, self.prefix_space_per_segment = bool(add_prefix_space), bool(prefix_space_per_segment)
        self.add_bos_token, self.bos_token_id = bool(add_bos_token), bos_token_id
        self._build_tables()

    @staticmethod
    def _check_options(padding, padding_side, truncation_side, max_length, pad_token_id, add_bos_token, bos_token_id):
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
        for name, value in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if value not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {value!r}")
        for name, value in (("max_length", max_length), ("pad_token_id", pad_token_id), ("bos_token_id", bos_token_id)):
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")
        if max_length is not None and max_length < 1 + bool(add_bos_token):
            raise ValueError(f"max_length={max_length} leaves no room for text")
        if padding != "ragged" and pad_token_id is None:
            raise ValueError(f"padding={padding!r} needs a pad_token_id (GPT-2 has none: 50256, <|endoftext|>, is "
                             f"the usual choice), or padding='ragged'")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if add_bos_token and bos_token_id is None:
            raise ValueError("add_bos_token=True needs bos_token_id")

    def _build_tables(self) -> None:
        """Host-side checks of the vocabulary, then the constants and lookup tables the graph reads."""
        byte_encoder = bytes_to_unicode()
        byte_decoder = {c: b for b, c in byte_encoder.items()}
        missing = [b for b, c in byte_encoder.items() if c not in self.vocab]
        if missing:
            raise ValueError(f"vocab lacks the single-byte tokens of bytes {missing[:8]}")
        size = max([*self.vocab.values(), *self.added_tokens.values()]) + 1
        token_bytes = [b""] * size  # id -> bytes (added tokens: their UTF-8)
        for token, i in self.vocab.items():
            token_bytes[i] = (bytes(byte_decoder[c] for c in token) if all(c in byte_decoder for c in token)
                              else token.encode("utf-8"))
        for token, i in self.added_tokens.items():
            if i in self.vocab.values() and self.vocab.get(token) != i:
                raise ValueError(f"added token {token!r} has id {i}, which the vocabulary gives to another token")
            token_bytes[i] = token.encode("utf-8")
        self.vocab_size = size
        self._token_bytes = tf.constant(token_bytes, tf.string)  # (V,)
        self._byte_ids = tf.constant([self.vocab[byte_encoder[b]] for b in range(256)], tf.int64)  # (256,)
        n = len(self.vocab)
        keys, ranks, merged = [], {}, []
        for rank, (left, right) in enumerate(self.merges):
            if left not in self.vocab or right not in self.vocab or left + right not in self.vocab:
                raise ValueError(f"merge {rank} ({left!r}, {right!r}): a token of it is not in the vocab")
            key = self.vocab[left] * n + self.vocab[right]  # packed pair (left id, right id), < 2**63
            if key not in ranks:  # a repeated pair keeps its first rank, as the Python engine does
                ranks[key] = rank
                keys.append(key)
            merged.append(self.vocab[left + right])
        self._pair_base = n
        self._merged_ids = tf.constant(merged or [0], tf.int64)  # (n merges,) rank -> id of the merged token
        self._ranks = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, tf.int64), tf.constant([ranks[k] for k in keys], tf.int64)), _NO_RANK)
        # A piece that is a token is that token: sound for a vocabulary whose tokens all merge back to themselves
        # (OpenAI's, the Python engine's whole_token_shortcut); other vocabularies merge every piece.
        self._whole = None
        if is_openai_vocabulary(self.vocab, self.merges):
            producible = [*byte_encoder.values(), *(a + b for a, b in self.merges)]
            whole = {token_bytes[self.vocab[t]]: self.vocab[t] for t in producible}
            self._whole = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(whole), tf.string), tf.constant(list(whole.values()), tf.int64)), -1)
        self._added = None
        if self.added_tokens:
            contents = sorted(self.added_tokens, key=len, reverse=True)  # longest first: the longest match wins
            self._added_pattern = "|".join("".join(f"\\x{{{ord(c):x}}}" for c in t) for t in contents if t)
            self._added = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([t.encode("utf-8") for t in contents], tf.string),
                tf.constant([self.added_tokens[t] for t in contents], tf.int64)), -1)
        self._strip_ids = tuple(tf.constant(sorted({self.added_tokens[t] for t in tokens}), tf.int64)
                                if tokens else None for tokens in (self.lstrip_tokens, self.rstrip_tokens))
        starts, classes = character_classes()
        self._class_starts, self._classes = tf.constant(starts), tf.constant(classes)

    # -- constructors ---------------------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer(cls, tokenizer: TokenizerBase, **kwargs) -> "TFGPT2Tokenizer":
        """The in-graph twin of one of our tokenizers (GPT2Tokenizer or GPT2TokenizerFast): its vocabulary, added
        tokens, pad token, sides, add_prefix_space and add_bos_token. ``kwargs`` override (``max_length=...``).
        Added tokens with single_word are refused (not implemented in the graph)."""
        if not isinstance(tokenizer, TokenizerBase):
            raise TypeError(f"from_tokenizer takes gpt2's GPT2Tokenizer or GPT2TokenizerFast, got "
                            f"{type(tokenizer).__name__}")
        tokens = tokenizer.added.decoder  # {id: AddedToken}
        for token in tokens.values():
            if token.single_word:
                raise ValueError(f"added token {token.content!r} has single_word, which TFGPT2Tokenizer does not "
                                 f"implement in the graph (a match inside a word would have to be read as text)")
        split, fast = tokenizer.split_special_tokens, tokenizer.is_fast
        # split_special_tokens: no added token is read (GPT2Tokenizer), or only the non-special ones (the fast one).
        added = {t.content: i for i, t in tokens.items() if not split or (fast and not t.special)}
        options = dict(pad_token_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side,
                       truncation_side=tokenizer.truncation_side, added_tokens=added,
                       special_token_ids=tokenizer.all_special_ids, add_prefix_space=tokenizer.add_prefix_space,
                       prefix_space_per_segment=fast, add_bos_token=tokenizer.add_bos_token,
                       bos_token_id=tokenizer.bos_token_id,
                       lstrip_tokens=[t.content for t in tokens.values() if t.lstrip and t.content in added],
                       rstrip_tokens=[t.content for t in tokens.values() if t.rstrip and t.content in added])
        return cls(tokenizer.encoder, tokenizer.merges, **{**options, **kwargs})

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> "TFGPT2Tokenizer":
        """From a tokenizer folder (vocab.json + merges.txt, tokenizer_config.json, ...) or a preset name ("gpt2":
        the vocabulary shipped in the package), read by gpt2.common as GPT2Tokenizer reads it. ``kwargs`` go to
        the constructor (``pad_token_id``, ``max_length``, ``padding``, ...)."""
        return cls.from_tokenizer(GPT2Tokenizer.from_pretrained(name_or_path), **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(vocab=self.vocab, merges=[f"{a} {b}" for a, b in self.merges], max_length=self.max_length,
                      pad_token_id=self.pad_token_id, padding=self.padding, padding_side=self.padding_side,
                      truncation_side=self.truncation_side, added_tokens=self.added_tokens,
                      special_token_ids=self.special_token_ids, add_prefix_space=self.add_prefix_space,
                      prefix_space_per_segment=self.prefix_space_per_segment, add_bos_token=self.add_bos_token,
                      bos_token_id=self.bos_token_id, lstrip_tokens=self.lstrip_tokens,
                      rstrip_tokens=self.rstrip_tokens)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "TFGPT2Tokenizer":
        return cls(**config)

    # -- tokenizing -----------------------------------------------------------------------------------------------
    @staticmethod
    def _strings(inputs) -> tf.Tensor:
        """Host-side check: a string tensor (or str / bytes / a list of them) of rank 0 or 1. A str is encoded as
        the Python tokenizers read it (lone surrogates, which UTF-8 cannot hold, become U+FFFD)."""
        if isinstance(inputs, (str, bytes)):
            return tf.constant(_utf8(inputs), tf.string)
        if isinstance(inputs, (list, tuple)):
            if not all(isinstance(t, (str, bytes)) for t in inputs):
                kinds = sorted({type(t).__name__ for t in inputs if not isinstance(t, (str, bytes))})
                raise TypeError(f"TFGPT2Tokenizer takes a list of str or bytes, got items of type {kinds}")
            return tf.constant([_utf8(t) for t in inputs], tf.string, shape=[len(inputs)])
        if not isinstance(inputs, (tf.Tensor, np.ndarray)) and not keras.backend.is_keras_tensor(inputs):
            raise TypeError(f"TFGPT2Tokenizer takes strings (a tf.string tensor, str or a list of str), got "
                            f"{type(inputs).__name__}")
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != tf.string:
            raise TypeError(f"TFGPT2Tokenizer takes a tf.string tensor, got dtype {inputs.dtype.name}")
        if inputs.shape.rank is not None and inputs.shape.rank > 1:
            raise ValueError(f"TFGPT2Tokenizer takes a batch of texts (rank 1) or one text, got shape {inputs.shape}")
        return inputs

    def tokenize(self, inputs) -> tf.RaggedTensor:
        """Texts (B,) -> ids (B, None) int64, ragged: no truncation, padding or bos (the ids of
        ``GPT2Tokenizer(...).encode(text)`` without add_bos_token)."""
        texts = tf.reshape(self._strings(inputs), [-1])
        if tf.executing_eagerly():  # eager ops one by one cost ~10x the traced graph (the merge loop's rounds)
            return self._tokenize_traced(texts)
        return self._tokenize(texts)

    @functools.cached_property
    def _tokenize_traced(self):
        return tf.function(self._tokenize, input_signature=[tf.TensorSpec([None], tf.string)])

    def _tokenize(self, texts) -> tf.RaggedTensor:
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        if self.add_prefix_space and not self.prefix_space_per_segment:
            texts = tf.strings.join([" ", texts])
        if self._added is None:
            return self._encode_ordinary(texts)
        marked = tf.strings.regex_replace(texts, self._added_pattern, _MARK + b"\\0" + _MARK)
        segments = tf.strings.split(marked, sep=_MARK)  # (B, S): text, token, text, token, ..., text
        flat = segments.flat_values
        position = tf.range(tf.size(flat, tf.int64)) - tf.gather(segments.row_splits, segments.value_rowids())
        is_token = position % 2 == 1
        text = tf.where(is_token, "", flat)
        found = self._added.lookup(flat)  # a token segment's id
        # lstrip: the text before such a token loses its trailing whitespace; rstrip: the text after, its leading.
        # A text segment's neighbours in ``flat`` are tokens of its own text exactly when they are tokens.
        for ids, shift, pattern in ((self._strip_ids[0], 1, f"{_space_class()}+$"),
                                     (self._strip_ids[1], -1, f"^{_space_class()}+")):
            if ids is not None:
                neighbour = tf.roll(tf.where(is_token, found, -1), -shift, axis=0)
                strip = ~is_token & tf.reduce_any(neighbour[:, None] == ids[None, :], axis=1)
                text = tf.where(strip, tf.strings.regex_replace(text, pattern, ""), text)
        if self.add_prefix_space and self.prefix_space_per_segment:  # GPT2TokenizerFast: each non-empty stretch
            needs = (tf.strings.length(text) > 0) & ~tf.strings.regex_full_match(text, "(?s) .*")
            text = tf.where(needs, tf.strings.join([" ", text]), text)
        ids = self._encode_ordinary(text)  # (S total, None); empty for tokens
        token_ids = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(found, is_token),
                                                     tf.cast(is_token, tf.int64))
        ids = tf.concat([ids, token_ids], axis=1)  # a segment is text ids or one token id, never both
        return tf.RaggedTensor.from_row_splits(ids, segments.row_splits).merge_dims(1, 2)

    def _encode_ordinary(self, texts) -> tf.RaggedTensor:
        """Valid UTF-8 texts (N,) -> BPE ids (N, None) int64, added tokens read as plain text."""
        chars = tf.strings.unicode_decode(texts, "UTF-8")  # (N, None) code points
        cp, row = chars.flat_values, tf.cast(chars.value_rowids(), tf.int32)
        cls = tf.gather(self._classes, tf.searchsorted(self._class_starts, cp, side="right") - 1)
        starts = _piece_starts(cp, cls, row)
        piece = tf.cumsum(tf.cast(starts, tf.int32)) - 1  # [chars] the piece of each character
        n_pieces = tf.reduce_sum(tf.cast(starts, tf.int32))
        piece_row = tf.boolean_mask(row, starts)  # [pieces] the text of each piece
        lengths = _utf8_lengths(cp)
        byte_values = _utf8_bytes(cp, lengths)
        byte_piece = tf.repeat(piece, lengths)
        symbols = tf.gather(self._byte_ids, byte_values)
        if self._whole is not None:
            strings = tf.strings.unicode_encode(tf.RaggedTensor.from_value_rowids(cp, piece, n_pieces), "UTF-8")
            whole = self._whole.lookup(strings)  # [pieces] the token a piece is, or -1
            hit = tf.gather(whole, byte_piece) >= 0
            first = tf.concat([[True], byte_piece[1:] != byte_piece[:-1]], axis=0)[:tf.size(byte_piece)]
            keep = ~hit | first  # a whole-token piece keeps one symbol: its token
            symbols = tf.boolean_mask(tf.where(hit, tf.gather(whole, byte_piece), symbols), keep)
            byte_piece = tf.boolean_mask(byte_piece, keep)
        symbols, kept = self._merge_pieces(symbols, byte_piece)
        byte_piece = tf.boolean_mask(byte_piece, kept)
        return tf.RaggedTensor.from_value_rowids(symbols, tf.cast(tf.gather(piece_row, byte_piece), tf.int64),
                                                 nrows=tf.shape(texts, out_type=tf.int64)[0])

    def _merge_pieces(self, symbols, piece):
        """BPE over all pieces (``_merge``), a piece longer than the window in overlapping windows, stitched where
        two neighbouring windows agree on a token (module doc, step 5); a piece with an overlap where they agree on
        none is merged whole. Returns the final symbols and each one's index in ``symbols``, as ``_merge``."""
        window, overlap = self._bpe_window
        step = window - overlap  # >= overlap: a symbol is in at most two windows
        size = tf.size(symbols)
        n = tf.reduce_max(tf.concat([piece, [-1]], 0)) + 1  # pieces
        count = tf.math.bincount(piece, minlength=n, maxlength=n)  # [pieces] symbols in each
        first = tf.cumsum(count, exclusive=True)  # [pieces] the index of each one's first symbol
        long = count > window
        long_symbol = tf.gather(long, piece)
        # Windows: a piece of L symbols has ceil((L - overlap) / step), starting every step symbols.
        per_piece = (tf.boolean_mask(count, long) - overlap + step - 1) // step
        w_piece = tf.repeat(tf.boolean_mask(tf.range(n), long), per_piece)  # [windows] their piece
        w_k = tf.ragged.range(per_piece).flat_values  # [windows] the window's place in its piece
        w_last = w_k == tf.repeat(per_piece, per_piece) - 1
        w_begin = tf.gather(first, w_piece) + w_k * step  # [windows] index of the first symbol
        w_end = tf.minimum(w_begin + window, tf.gather(first + count, w_piece))
        index = tf.ragged.range(w_begin, w_end).flat_values  # [window symbols] index in symbols
        w_of = tf.repeat(tf.range(tf.size(w_begin)), w_end - w_begin)  # [window symbols] their window
        short = tf.cast(tf.where(~long_symbol)[:, 0], tf.int32)
        inputs = tf.concat([short, index], 0)
        merged, kept = self._merge(tf.gather(symbols, inputs), tf.concat([tf.gather(piece, short), n + w_of], 0))
        at = tf.cast(tf.where(kept)[:, 0], tf.int32)  # [tokens] index in the merge's inputs
        in_window = at >= tf.size(short)
        # Window tokens: their window, first symbol and end (the next token's first symbol, or the window's end).
        j = tf.boolean_mask(at, in_window) - tf.size(short)
        t_sym, t_win, t_begin = tf.boolean_mask(merged, in_window), tf.gather(w_of, j), tf.gather(index, j)
        same_next = tf.concat([t_win[1:] == t_win[:-1], [False]], 0)[:tf.size(t_win)]
        t_end = tf.where(same_next, tf.concat([t_begin[1:], [0]], 0)[:tf.size(t_win)], tf.gather(w_end, t_win))
        # A span that is a token in both windows of an overlap: the first copy (window w, the twin in w + 1).
        key = tf.cast(t_begin, tf.int64) * (window + 1) + tf.cast(t_end - t_begin, tf.int64)
        unique, slot, times = tf.unique_with_counts(key, out_idx=tf.int32)
        t = tf.range(tf.size(key))
        first_copy = tf.gather(tf.math.unsorted_segment_min(t, slot, tf.size(unique)), slot) == t
        never = tf.constant(np.iinfo(np.int64).max, tf.int64)
        cut_key = tf.math.unsorted_segment_min(tf.where((tf.gather(times, slot) == 2) & first_copy, key, never),
                                               t_win, tf.size(w_begin))  # [windows] the leftmost such token
        cut = tf.cast(cut_key // (window + 1) + cut_key % (window + 1), tf.int32)  # its end
        no_cut = ~w_last & (cut_key == never)
        whole = tf.math.unsorted_segment_max(tf.cast(no_cut, tf.int32), w_piece, n) > 0  # [pieces] merged whole
        # Window w gives its tokens from window w - 1's cut (or the piece's start) to its own cut (or its end).
        low = tf.where(w_k > 0, tf.concat([[0], cut[:-1]], 0)[:tf.size(cut)], w_begin)
        high = tf.where(w_last, w_end, cut)
        take = ((t_begin >= tf.gather(low, t_win)) & (t_end <= tf.gather(high, t_win))
                & ~tf.gather(whole, tf.gather(w_piece, t_win)))
        redo = tf.cast(tf.where(long_symbol & tf.gather(whole, piece))[:, 0], tf.int32)
        redone, redo_kept = self._merge(tf.gather(symbols, redo), tf.gather(piece, redo))
        position = tf.concat([tf.gather(inputs, tf.boolean_mask(at, ~in_window)), tf.boolean_mask(t_begin, take),
                              tf.gather(redo, tf.cast(tf.where(redo_kept)[:, 0], tf.int32))], 0)
        done = tf.concat([tf.boolean_mask(merged, ~in_window), tf.boolean_mask(t_sym, take), redone], 0)
        kept = tf.scatter_nd(position[:, None], tf.ones_like(position), [size]) > 0
        return tf.boolean_mask(tf.scatter_nd(position[:, None], done, [size]), kept), kept

    def _merge(self, symbols, piece):
        """BPE over all pieces at once: each round merges, in every piece, its lowest-ranked pair wherever it occurs
        (non-overlapping, left to right: "a a a" -> "aa a"), until no piece has a pair that is a merge. A piece
        that merged nothing in a round is final and leaves the working set, so a round costs what is still being
        merged (a few long pieces), not the batch. Returns the final symbols and each one's index in ``symbols``."""
        size = tf.size(symbols)

        def round_(symbols, piece, position, finished, step):
            # Pieces renumbered 0, 1, ... in the working set (they stay in order), for the sorted segment ops.
            piece = tf.cumsum(tf.cast(tf.concat([[False], piece[1:] != piece[:-1]], 0), tf.int32))
            same = piece[:-1] == piece[1:]
            keys = symbols[:-1] * self._pair_base + symbols[1:]
            ranks = tf.where(same, self._ranks.lookup(keys), _NO_RANK)
            pair_piece = piece[:-1]
            best = tf.gather(tf.math.unsorted_segment_min(ranks, pair_piece, piece[-1] + 1), pair_piece)
            candidate = (ranks == best) & (ranks != _NO_RANK)
            # In a chain of overlapping candidates (a run "x x x x" of the pair x x), the 1st, 3rd, ... merge.
            index = tf.range(tf.size(candidate))
            chain = tf.cumsum(tf.cast(~candidate, tf.int32))  # equal along a chain of consecutive candidates
            chain_start = tf.gather(tf.math.segment_min(tf.where(candidate, index, tf.size(candidate)), chain), chain)
            merge = candidate & ((index - chain_start) % 2 == 0)
            merged = tf.gather(self._merged_ids, tf.where(merge, ranks, 0))
            symbols = tf.where(tf.concat([merge, [False]], 0), tf.concat([merged, [0]], 0), symbols)
            keep = tf.concat([[True], ~merge], 0)  # the right half of a merged pair goes
            active = tf.math.unsorted_segment_max(tf.cast(merge, tf.int32), pair_piece, piece[-1] + 1) > 0
            active = tf.gather(tf.concat([active, [False]], 0), piece)  # a piece of one symbol has no pair
            done = keep & ~active
            finished = (finished[0].write(step, tf.boolean_mask(symbols, done)),
                        finished[1].write(step, tf.boolean_mask(position, done)))
            going = keep & active
            return (tf.boolean_mask(symbols, going), tf.boolean_mask(piece, going),
                    tf.boolean_mask(position, going), finished, step + 1)

        def more(symbols, *_):
            return tf.size(symbols) > 0

        # Final symbols and their positions, one chunk per round (chunk 0: empty, so that there is always one).
        # Chunk 0: pieces of one symbol (single bytes, whole tokens), final before any round.
        new = tf.concat([[True], piece[1:] != piece[:-1]], 0)[:size]
        alone = new & tf.concat([new[1:], [True]], 0)
        position = tf.range(size)
        finished = tuple(tf.TensorArray(x.dtype, size=1, dynamic_size=True, infer_shape=False, element_shape=[None])
                         .write(0, tf.boolean_mask(x, alone)) for x in (symbols, position))
        _, _, _, finished, _ = tf.while_loop(
            more, round_, (symbols[~alone], piece[~alone], position[~alone], finished, tf.constant(1)),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([None]),
                              (tf.TensorShape(None), tf.TensorShape(None)), tf.TensorShape([])))
        done, position = finished[0].concat(), finished[1].concat()
        # Back in text order: a symbol keeps the position of its first byte, unique and increasing along a text.
        kept = tf.scatter_nd(position[:, None], tf.ones_like(position), [size]) > 0
        return tf.boolean_mask(tf.scatter_nd(position[:, None], done, [size]), kept), kept

    def call(self, inputs, max_length: int | None = None) -> dict:
        """Texts (B,) (or one text) -> ``{"input_ids", "attention_mask"}``, int32: (B, T) padded, or ragged
        (``padding="ragged"``); one text gives (T,)."""
        inputs = self._strings(inputs)
        if max_length is None:
            max_length = self.max_length
        else:
            self._check_options(self.padding, self.padding_side, self.truncation_side, max_length,
                                self.pad_token_id, self.add_bos_token, self.bos_token_id)
        ids = tf.cast(self.tokenize(inputs), tf.int32)
        if max_length is not None:
            room = max_length - self.add_bos_token
            ids = ids[:, :room] if self.truncation_side == "right" else ids[:, -room:]
        if self.add_bos_token:
            bos = tf.fill(tf.stack([ids.nrows(), 1]), tf.constant(self.bos_token_id, tf.int32))
            ids = tf.concat([bos, ids], axis=1)
        mask = tf.ones_like(ids)
        if self.padding != "ragged":
            width = max_length if self.padding == "max_length" else None
            left = self.padding_side == "left"
            ids, mask = self._pad(ids, self.pad_token_id, width, left), self._pad(mask, 0, width, left)
        if inputs.shape.rank == 0:
            ids, mask = ids[0], mask[0]
        return {"input_ids": ids, "attention_mask": mask}

    @staticmethod
    def _pad(rows: tf.RaggedTensor, value: int, width: int | None, left: bool) -> tf.Tensor:
        """Ragged rows -> (B, width or the longest row), ``value`` on the padding side."""
        lengths = tf.cast(rows.row_lengths(), tf.int32)
        if width is None:
            width = tf.reduce_max(tf.concat([lengths, [0]], 0))
        row = tf.cast(rows.value_rowids(), tf.int32)
        col = tf.range(tf.size(row)) - tf.gather(tf.cast(rows.row_splits, tf.int32), row)
        if left:
            col += tf.gather(width - lengths, row)
        dense = tf.fill(tf.stack([tf.size(lengths), width]), tf.constant(value, rows.dtype))
        return tf.tensor_scatter_nd_update(dense, tf.stack([row, col], 1), rows.flat_values)

    # -- detokenizing ---------------------------------------------------------------------------------------------
    def detokenize(self, ids, skip_special_tokens: bool = False) -> tf.Tensor:
        """Ids (B, T) dense or ragged, or (T,) -> texts (B,) (or one text), tf.string: the tokens' bytes joined,
        bytes that are not UTF-8 as U+FFFD (GPT2Tokenizer.decode's errors="replace"). Dense rows are decoded whole:
        drop padding first (pass a RaggedTensor, e.g. ``tf.ragged.boolean_mask(ids, mask == 1)``), or skip it
        with ``skip_special_tokens`` when the pad token is special. Ids outside the vocabulary: ValueError
        (eagerly, on the host), InvalidArgumentError in a graph."""
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise TypeError(f"detokenize takes integer ids, got dtype {ids.dtype.name}")
        rank = ids.shape.rank
        if rank not in (1, 2):
            raise ValueError(f"detokenize takes ids of shape (B, T) or (T,), got rank {rank}")
        if rank == 1:
            ids = ids[tf.newaxis]
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        flat = tf.cast(ids.flat_values, tf.int64)
        if tf.executing_eagerly():
            bad = flat.numpy()[(flat.numpy() < 0) | (flat.numpy() >= self.vocab_size)]
            if bad.size:
                raise ValueError(f"token id {int(bad[0])} is not in the vocabulary (0..{self.vocab_size - 1})")
            checks = []
        else:
            checks = [tf.debugging.assert_non_negative(flat, message="token ids must be >= 0"),
                      tf.debugging.assert_less(flat, tf.constant(self.vocab_size, tf.int64),
                                               message="token ids must be < the vocabulary size")]
        with tf.control_dependencies(checks):
            pieces = ids.with_flat_values(tf.gather(self._token_bytes, flat))
        if skip_special_tokens and self.special_token_ids:
            special = tf.reduce_any(flat[:, None] == tf.constant(self.special_token_ids, tf.int64)[None], axis=1)
            pieces = tf.ragged.boolean_mask(pieces, ids.with_flat_values(~special))
        texts = tf.strings.reduce_join(pieces, axis=1)
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        return texts[0] if rank == 1 else texts
