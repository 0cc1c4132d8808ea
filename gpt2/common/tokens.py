"""Added tokens: tokens recognised in text as one id, before byte-level BPE sees the text.

``<|endoftext|>`` is one (it is in OpenAI's vocabulary, id 50256); a pad token added with ``add_special_tokens``
is another (it gets the next free id, 50257). As in transformers, the longest match wins, and ``lstrip`` /
``rstrip`` let a token swallow the whitespace before / after it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

import regex


@dataclass(frozen=True)
class AddedToken:
    """A token added to the vocabulary (transformers' AddedToken fields)."""

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True
    special: bool = False

    def __str__(self) -> str:
        return self.content

    def with_special(self, special: bool) -> "AddedToken":
        return replace(self, special=special)

    def to_dict(self, special: bool = True) -> dict:
        data = asdict(self)
        if not special:
            del data["special"]
        return data

    @classmethod
    def from_dict(cls, data: dict | str, special: bool = False) -> "AddedToken":
        if isinstance(data, str):
            return cls(data, special=special)
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise ValueError(f"an added token must be a string or a dict with a 'content' string, got {data!r}")
        fields = {k: bool(data[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in data}
        return cls(data["content"], **{"special": special, **fields})


class AddedVocabulary:
    """The added tokens of a tokenizer: content <-> id, and splitting text around them."""

    def __init__(self, base: dict[str, int]) -> None:
        self.base = base
        self.encoder: dict[str, int] = {}
        self.decoder: dict[int, AddedToken] = {}
        self._patterns: dict[bool, regex.Pattern] = {}  # {special tokens included: pattern}
        self.finders = _Finders(self)  # {special tokens included: text -> a match or None}, for search()

    @property
    def new_ids(self) -> list[int]:
        """Ids beyond the base vocabulary."""
        return [i for i in self.decoder if i >= len(self.base)]

    @property
    def special_ids(self) -> set[int]:
        return {i for i, t in self.decoder.items() if t.special}

    def register(self, token: AddedToken, index: int) -> None:
        """Record ``token`` under an id it already has (in the base vocabulary, or from a saved tokenizer)."""
        old = self.decoder.get(index)
        if old is not None and old.content != token.content:
            del self.encoder[old.content]
        self.encoder[token.content] = index
        self.decoder[index] = token
        self._patterns = {}
        self.finders.clear()

    def add(self, token: AddedToken) -> int:
        """Add ``token``; returns 1 when it took a new id, 0 when it already had one."""
        if token.content in self.encoder:
            self.register(token, self.encoder[token.content])
            return 0
        if token.content in self.base:
            self.register(token, self.base[token.content])
            return 0
        self.register(token, len(self.base) + len(self.new_ids))
        return 1

    def _compiled(self, special: bool = True) -> regex.Pattern:
        if special not in self._patterns:
            contents = [c for c, i in self.encoder.items() if special or not self.decoder[i].special]
            contents.sort(key=len, reverse=True)  # longest first: the longest match wins
            # An empty alternation would match everywhere: "(?!)" never matches.
            self._patterns[special] = regex.compile("|".join(regex.escape(c) for c in contents) or "(?!)")
        return self._patterns[special]

    def search(self, text: str, special: bool = True) -> bool:
        """Whether ``text`` holds any added token (``special=False``: any that is not special)."""
        return self.finders[special](text) is not None

    def split(self, text: str, special: bool = True) -> Iterator[tuple[int, int, int | None]]:
        """(start, end, id) for each added token in ``text`` and (start, end, None) for the text between them.
        ``special=False``: special tokens are not recognised (split_special_tokens), other added tokens are."""
        if not self.encoder:
            if text:
                yield 0, len(text), None
            return
        pos = 0
        pending: tuple[int, int] | None = None  # a text span whose end an lstrip token may still pull back
        for match in self._compiled(special).finditer(text):
            token = self.decoder[self.encoder[match.group()]]
            start, end = match.span()
            if token.single_word and (_is_word(text, start - 1) or _is_word(text, end)):
                continue
            text_start = pos
            text_end = start
            if token.lstrip:
                while text_end > text_start and text[text_end - 1].isspace():
                    text_end -= 1
            if pending is not None:
                yield pending[0], pending[1], None
                pending = None
            if text_end > text_start:
                yield text_start, text_end, None
            yield start, end, self.encoder[match.group()]
            pos = end
            if token.rstrip:
                while pos < len(text) and text[pos].isspace():
                    pos += 1
        if pos < len(text):
            yield pos, len(text), None


class _Finders(dict):
    """{special: find} built on first use: ``find(text)`` is a match when ``text`` holds an added token (special ones
    too when ``special``), else None. Asked once per encoded text, and the answer is nearly always no: a stdlib ``re``
    alternation of the literals, called straight from C (~0.1 us on a short text; a Python loop of substring tests
    costs more). Which token matched, and where, is split()'s business."""

    def __init__(self, added: AddedVocabulary) -> None:
        super().__init__()
        self._added = added

    def __missing__(self, special: bool) -> Callable[[str], object]:
        added = self._added
        contents = sorted((c for c, i in added.encoder.items() if special or not added.decoder[i].special),
                          key=len, reverse=True)
        self[special] = re.compile("|".join(map(re.escape, contents))).search if contents else _find_nothing
        return self[special]


def _find_nothing(text: str) -> None:
    return None


def _is_word(text: str, index: int) -> bool:
    return 0 <= index < len(text) and (text[index].isalnum() or text[index] == "_")
