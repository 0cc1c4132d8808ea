"""GPT2Tokenizer: OpenAI's byte-level BPE with transformers' tokenizer API, in pure Python.

The API (``tok(texts, padding=True, return_tensors="np")``, ``encode``, ``decode``, special and added tokens,
``save_pretrained`` / ``from_pretrained``) lives in ``TokenizerBase``, shared with GPT2TokenizerFast
(tokenizer_fast.py), which differs only in its BPE engine. OpenAI's vocabulary ships inside the package, so
``GPT2Tokenizer.from_pretrained("gpt2")`` works offline.

>>> from gpt2 import GPT2Tokenizer
>>> tok = GPT2Tokenizer.from_pretrained("gpt2")
>>> tok("Hello world")["input_ids"]
[15496, 995]
>>> tok.pad_token = tok.eos_token
>>> batch = tok(["a b c", "d"], padding=True, return_tensors="np")
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import regex

from . import files, hub, loading
from .bpe import ByteLevelBPE, bytes_to_unicode, read_vocab
from .encoding import char_offsets
from .tokenizer_call import CallMixin
from .tokenizer_json import TOKENIZER_FILE, read_tokenizer_json, tokenizer_json
from .tokens import AddedToken, AddedVocabulary

ENDOFTEXT = "<|endoftext|>"
VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
PACKAGED_VOCAB = Path(__file__).resolve().parent.parent / "data" / "gpt2-vocab"
# Every preset name shares OpenAI's vocabulary; their published tokenizer_config.json sets model_max_length 1024.
PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
PRESETS = (*PRESETS, *(f"openai-community/{p}" for p in PRESETS[:4]), "distilbert/distilgpt2")
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
FILES = {"vocab_file": "vocab.json", "merges_file": "merges.txt", "tokenizer_config": "tokenizer_config.json",
         "special_tokens_map": "special_tokens_map.json", "added_tokens": "added_tokens.json"}
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
_SURROGATE = regex.compile(r"[\ud800-\udfff]")


@functools.lru_cache(maxsize=1)
def _openai_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return read_vocab(PACKAGED_VOCAB / "vocab.json", PACKAGED_VOCAB / "merges.txt")


def is_openai_vocabulary(encoder: dict[str, int], merges: list[tuple[str, str]]) -> bool:
    """Whether (encoder, merges) is OpenAI's GPT-2 vocabulary (what the shipped vocab.json / merges.txt hold)."""
    return len(encoder) == 50257 and (encoder, merges) == _openai_vocabulary()


def python_engine(encoder: dict[str, int], merges: list[tuple[str, str]]) -> ByteLevelBPE:
    # Every OpenAI token merges back to itself (tests/common/test_bpe.py), so a piece that is a token can skip BPE.
    return ByteLevelBPE(encoder, merges, whole_token_shortcut=is_openai_vocabulary(encoder, merges))


class TokenizerBase(CallMixin):
    """transformers' tokenizer API over a byte-level BPE engine (``self.bpe``); see GPT2Tokenizer."""

    model_input_names = ["input_ids", "attention_mask"]
    is_fast = False
    _engine = staticmethod(python_engine)

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        errors: str = "replace",
        unk_token: str | AddedToken | None = ENDOFTEXT,
        bos_token: str | AddedToken | None = ENDOFTEXT,
        eos_token: str | AddedToken | None = ENDOFTEXT,
        pad_token: str | AddedToken | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        model_max_length: int = VERY_LARGE_INTEGER,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        additional_special_tokens: Iterable[str | AddedToken] = (),
        added_tokens_decoder: dict[int, AddedToken] | None = None,
        sep_token=None, cls_token=None, mask_token=None,
        name_or_path: str = "",
        tokenizer_file: str | os.PathLike | None = None,
        split_special_tokens: bool = False,
    ) -> None:
        if tokenizer_file is not None and vocab_file is None and merges_file is None:  # tokenizer.json alone
            self.encoder, self.merges, added = read_tokenizer_json(tokenizer_file)
            where = f"{tokenizer_file}: " if added_tokens_decoder is None else ""  # names the file in errors below
            added_tokens_decoder = added if added_tokens_decoder is None else added_tokens_decoder
        else:
            where = ""
            self.encoder, self.merges = read_vocab(vocab_file or PACKAGED_VOCAB / "vocab.json",
                                                   merges_file or PACKAGED_VOCAB / "merges.txt")
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.bpe = self._engine(self.encoder, self.merges)
        self._token_lengths = np.zeros(len(self.encoder), dtype=np.int64)  # bytes per token, for offsets
        for token, index in self.encoder.items():
            self._token_lengths[index] = len(token)  # one byte-level symbol per byte
        if errors not in ("strict", "replace", "ignore", "backslashreplace", "surrogateescape"):
            raise ValueError(f"errors must be a codecs error handler such as 'replace', got {errors!r}")
        self.errors = errors
        self.add_prefix_space = bool(add_prefix_space)
        self.add_bos_token = bool(add_bos_token)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        if not isinstance(split_special_tokens, bool):
            raise TypeError(f"split_special_tokens must be a bool, got {type(split_special_tokens).__name__}")
        # True: special tokens written in the text are ordinary text (untrusted input never becomes <|endoftext|>).
        self.split_special_tokens = split_special_tokens
        self._warned_length = False  # the "longer than model_max_length" warning, once per tokenizer
        self.name_or_path = str(name_or_path)
        self.added = AddedVocabulary(self.encoder)
        for index, token in sorted((added_tokens_decoder or {}).items()):
            index = int(index)
            # An added token on a vocabulary id with other content: transformers' two tokenizers then decode that id
            # differently (the vocabulary's token, or the added one), so neither rule is "the" behaviour: refused.
            if index < 0 or (index in self.decoder and self.decoder[index] != str(token)):
                raise ValueError(f"{where}added token {str(token)!r} has id {index}, which the vocabulary gives to "
                                 f"{self.decoder.get(index)!r}: an added token cannot take another token's id")
            self.added.register(token, index)
        self._special: dict[str, Any] = {}
        for name, value in dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                                sep_token=sep_token, cls_token=cls_token, mask_token=mask_token).items():
            if value is not None:
                self._set_special(name, value, normalized=True)
        self._additional: list[str] = []
        self.add_special_tokens({"additional_special_tokens": list(additional_special_tokens)})

    # -- sides ------------------------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("padding_side", "truncation_side") and value not in ("left", "right"):
            raise ValueError(f"{name} must be 'left' or 'right', got {value!r}")
        if name in SPECIAL_TOKEN_NAMES:
            self._set_special(name, value)
            return
        if name.endswith("_token_id") and name[: -len("_id")] in SPECIAL_TOKEN_NAMES:
            self._set_special(name[: -len("_id")], None if value is None else self.convert_ids_to_tokens(value))
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only for names normal lookup did not find
        if name in SPECIAL_TOKEN_NAMES:
            token = self.__dict__.get("_special", {}).get(name)
            return None if token is None else str(token)
        if name.endswith("_token_id") and name[: -len("_id")] in SPECIAL_TOKEN_NAMES:
            token = getattr(self, name[: -len("_id")])
            return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- special and added tokens -----------------------------------------------------------------------------------
    def _set_special(self, name: str, value, normalized: bool = False) -> None:
        """Set a special token; a plain string becomes an AddedToken with ``normalized`` (transformers: True for
        the constructor's arguments, False for tokens added later)."""
        if value is None:
            self._special.pop(name, None)
            return
        if not isinstance(value, (str, AddedToken)):
            raise TypeError(f"{name} must be a str or AddedToken, got {type(value).__name__}")
        token = value if isinstance(value, AddedToken) else AddedToken(value, special=True, normalized=normalized)
        if token.content not in self.encoder and token.content not in self.added.encoder:
            self.added.add(token.with_special(True))  # as transformers does: a new special token gets a new id
        else:
            self.added.register(token.with_special(True), self.convert_tokens_to_ids(token.content))
        self._special[name] = token

    @property
    def additional_special_tokens(self) -> list[str]:
        return list(self._additional)

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self._additional]

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out = {name: str(tok) for name, tok in self._special.items()}
        if self._additional:
            out["additional_special_tokens"] = list(self._additional)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        seen = [str(t) for t in self._special.values()] + self._additional
        return list(dict.fromkeys(seen))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    def add_tokens(self, new_tokens: str | AddedToken | Iterable[str | AddedToken], special_tokens: bool = False) -> int:
        """Add tokens recognised in text as single ids; returns how many new ids the vocabulary got."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        count = 0
        for token in new_tokens:
            if not isinstance(token, (str, AddedToken)):
                raise TypeError(f"add_tokens takes str or AddedToken, got {type(token).__name__}")
            if isinstance(token, str):
                token = AddedToken(token, special=special_tokens, normalized=not special_tokens)
            elif special_tokens:
                token = token.with_special(True)
            if not token.content:
                raise ValueError("cannot add an empty token")
            count += self.added.add(token)
        return count

    def add_special_tokens(self, special_tokens_dict: dict[str, Any], replace_additional_special_tokens=True) -> int:
        """Set special tokens (bos_token, pad_token, ..., additional_special_tokens); returns the new ids added."""
        before = len(self)
        for name, value in special_tokens_dict.items():
            if name == "additional_special_tokens":
                tokens = [value] if isinstance(value, (str, AddedToken)) else list(value)
                self.add_tokens(tokens, special_tokens=True)
                names = [str(t) for t in tokens]
                self._additional = names if replace_additional_special_tokens else list(
                    dict.fromkeys(self._additional + names))
            elif name in SPECIAL_TOKEN_NAMES:
                self._set_special(name, value)
            else:
                raise ValueError(f"unknown special token name {name!r}; expected one of {SPECIAL_TOKEN_NAMES}")
        return len(self) - before

    # -- vocabulary -------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """The size of the base vocabulary (without added tokens), as in transformers."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder) + len(self.added.new_ids)

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self.added.encoder}

    def get_added_vocab(self) -> dict[str, int]:
        """Every added token (those already in the vocabulary too, such as <|endoftext|>), as transformers."""
        return dict(self.added.encoder)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self.added.decoder.items()))

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Token strings (byte-level BPE symbols or added tokens) -> ids; unknown tokens give the unk id."""
        if isinstance(tokens, str):
            index = self.added.encoder.get(tokens, self.encoder.get(tokens))
            if index is None:
                unk = self._special.get("unk_token")
                if unk is None:
                    raise ValueError(f"token {tokens!r} is not in the vocabulary and there is no unk_token")
                return self.convert_tokens_to_ids(str(unk))
            return index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        single = isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0)
        ids = self._check_ids([ids] if single else ids)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        tokens = [str(self.added.decoder[i]) if i in self.added.decoder else self.decoder[i]
                  for i in ids if i not in special]
        return tokens[0] if single and tokens else tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytearray()
        for token in tokens:
            if token in self.added.encoder and token not in self.encoder:
                data += token.encode("utf-8")
            else:
                data += bytes(self.byte_decoder[c] for c in token)
        return data.decode("utf-8", errors=self.errors)

    def _check_ids(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        size = len(self)
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"token ids must be integers, got {type(i).__name__} {i!r}")
            if not 0 <= i < size or (i not in self.decoder and i not in self.added.decoder):
                raise ValueError(f"token id {i} is outside the vocabulary (ids 0..{size - 1})")
            out.append(i)
        return out

    # -- encoding ---------------------------------------------------------------------------------------------------
    def _prepare(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str (or a list of str), got {type(text).__name__}")
        if _SURROGATE.search(text):  # lone surrogates cannot be UTF-8: replaced by U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text

    # Where add_prefix_space puts its space differs between transformers' two tokenizers, and we follow each:
    # GPT2Tokenizer prepends one to the whole text (before added tokens are split out), GPT2TokenizerFast to each
    # stretch of text between added tokens that does not already start with a space.
    _prefix_whole_text = True
    # More places where transformers' two GPT-2 tokenizers differ, followed by each of ours: whether a pair gets a
    # second bos (add_bos_token), whether return_length counts padding (and is a list for one text), which
    # longest_first rule truncates pairs.
    _bos_before_pair = True
    _length_counts_padding = False
    _balanced_truncation = False
    _overflow_windows = False  # return_overflowing_tokens: extra rows per window (fast) or overflowing_tokens (slow)

    # With split_special_tokens, transformers' Python tokenizer recognises no added token at all; its fast one still
    # recognises the non-special ones. Each of ours follows its counterpart.
    _split_keeps_normal_tokens = False

    def _split(self, text: str, split_special: bool):
        if not split_special:
            return self.added.split(text)
        if self._split_keeps_normal_tokens:
            return self.added.split(text, special=False)
        return iter([(0, len(text), None)] if text else [])

    def _encode_text(self, text: str, offsets: bool = False,
                     split_special: bool = False) -> tuple[list[int], list[tuple[int, int]] | None]:
        """One text -> ids (and character offsets into it): added tokens first, BPE on the text between them."""
        text = self._prepare(text)
        length = len(text)
        whole = self.add_prefix_space and self._prefix_whole_text
        if whole:
            text = " " + text
        ids: list[int] = []
        spans: list[tuple[int, int]] | None = [] if offsets else None
        for start, end, index in self._split(text, split_special):
            if index is not None:
                ids.append(index)
                if offsets:
                    spans.append((start, end))
                continue
            segment = text[start:end]
            prefix = self.add_prefix_space and not whole and not segment.startswith(" ")
            piece_ids = self.bpe.encode_ordinary(" " + segment if prefix else segment)
            ids += piece_ids
            if offsets:
                local = char_offsets(" " + segment if prefix else segment, self._token_lengths[piece_ids])
                spans += [(start + a, start + b) for a, b in (_unshift(local, 0) if prefix else local)]
        if offsets and whole:
            spans = [(min(a, length), min(b, length)) for a, b in _unshift(spans, 0)]
        return ids, spans

    def _encode_ids(self, text: str, split_special: bool = False) -> list[int]:
        """Ids only, the hot path: straight to the engine when the text holds no added token (the engines replace
        lone surrogates themselves, as tiktoken does)."""
        if type(text) is not str and not isinstance(text, str):
            raise TypeError(f"text must be a str (or a list of str), got {type(text).__name__}")
        if not self.add_prefix_space and not split_special and not self.added.search(text):
            return self.bpe.encode_ordinary(text)
        return self._encode_text(text, split_special=split_special)[0]

    def _split_special(self, value: bool | None) -> bool:
        """A call's split_special_tokens (None: the tokenizer's)."""
        if value is None:
            return self.split_special_tokens
        if not isinstance(value, bool):
            raise TypeError(f"split_special_tokens must be a bool, got {type(value).__name__}")
        return value

    def _warn_if_too_long(self, length: int) -> None:
        """transformers' warning (once per tokenizer) for a sequence longer than model_max_length, untruncated."""
        if length > self.model_max_length and not self._warned_length:
            self._warned_length = True
            warnings.warn(
                "Token indices sequence length is longer than the specified maximum sequence length for this model "
                f"({length} > {self.model_max_length}). Running this sequence through the model will result in "
                "indexing errors", UserWarning, stacklevel=3)

    def tokenize(self, text: str, split_special_tokens: bool | None = None) -> list[str]:
        """The token strings of ``text`` (byte-level symbols, e.g. 'Ġworld'), as transformers' tokenize()."""
        split = self._split_special(split_special_tokens)
        return self.convert_ids_to_tokens(self._encode_text(text, split_special=split)[0])

    def _encode_batch(self, texts: list[str], offsets: bool, split_special: bool = False) -> list[tuple[list[int], Any]]:
        if offsets:
            return [self._encode_text(t, True, split_special) for t in texts]
        return [(self._encode_ids(t, split_special), None) for t in texts]

    # -- decoding ---------------------------------------------------------------------------------------------------
    # transformers' Python tokenizer decodes non-special added tokens (and additional special tokens beyond the
    # vocabulary) as separate words joined by spaces; its fast one does not. Each of ours follows its counterpart.
    _spaces_around_added = True

    def _separate_ids(self) -> set[int]:
        specials = set(self.all_special_tokens)
        ids = {i for i, t in self.added.decoder.items() if t.content not in specials}
        return ids | {i for i in self.additional_special_tokens_ids if i >= self.vocab_size}

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               spaces_between_special_tokens: bool = True) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 follow ``errors`` ("replace": U+FFFD). Unknown ids: ValueError."""
        ids = self._check_ids(token_ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        separate = self._separate_ids() if self._spaces_around_added else set()
        parts: list[str] = []
        data = bytearray()
        run: list[int] = []  # base-vocabulary ids not yet turned into bytes
        for i in ids:
            if i in skip:
                continue
            if i in self.decoder and i not in separate:
                run.append(i)
                continue
            if run:
                data += self.bpe.decode_bytes(run)
                run = []
            if i in separate:
                if data:
                    parts.append(data.decode("utf-8", errors=self.errors))
                    data = bytearray()
                parts.append(str(self.added.decoder[i]))
            else:  # an added token beyond the vocabulary, decoded in line
                data += str(self.added.decoder[i]).encode("utf-8")
        if run:
            data += self.bpe.decode_bytes(run)
        if data:
            parts.append(data.decode("utf-8", errors=self.errors))
        text = (" " if spaces_between_special_tokens else "").join(parts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean:
            for old, new in _CLEANUPS:
                text = text.replace(old, new)
        return text

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None,
                     spaces_between_special_tokens: bool = True) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces, spaces_between_special_tokens)
                for s in sequences]

    # -- files ------------------------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write vocab.json and merges.txt (transformers' layout) in one transaction; returns their paths."""
        folder = self._save_folder(save_directory)
        texts = self._vocabulary_texts(folder, filename_prefix)
        with files.FolderWrite(folder) as save:
            for path, text in texts.items():
                save.write_text(path, text)
            save.commit()
        return tuple(str(path) for path in texts)

    @staticmethod
    def _save_folder(save_directory: str | os.PathLike) -> Path:
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"saving a tokenizer needs a folder, {str(folder)!r} is a file")
        return folder

    def _vocabulary_texts(self, folder: Path, filename_prefix: str | None) -> dict[Path, str]:
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        return {folder / f"{prefix}vocab.json": json.dumps(self.encoder, indent=2, sort_keys=True,
                                                           ensure_ascii=False) + "\n",
                folder / f"{prefix}merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)}

    def tokenizer_config(self) -> dict[str, Any]:
        """tokenizer_config.json's content, as transformers writes it."""
        config = {
            "add_bos_token": self.add_bos_token,
            "add_prefix_space": self.add_prefix_space,
            "added_tokens_decoder": {str(i): t.to_dict() for i, t in self.added_tokens_decoder.items()},
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "errors": self.errors,
            "extra_special_tokens": {},
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "split_special_tokens": self.split_special_tokens,
            "truncation_side": self.truncation_side,
            "tokenizer_class": "GPT2Tokenizer",
        }
        config.update(self.special_tokens_map)
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json (+ added_tokens.json; and
        tokenizer.json for GPT2TokenizerFast, as transformers), as one transaction (files.FolderWrite): a failure
        leaves the folder's earlier tokenizer whole. An earlier save's tokenizer.json or added_tokens.json that this
        one does not write is removed, so that no loader (transformers' fast tokenizer prefers tokenizer.json) reads
        the old tokenizer beside the new files."""
        folder = self._save_folder(save_directory)
        texts = self._vocabulary_texts(folder, filename_prefix)
        dump = lambda data: json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"  # noqa: E731
        specials = {name: (tok.to_dict(special=False) if isinstance(tok, AddedToken) else tok)
                    for name, tok in self._special.items()}
        if self._additional:
            specials["additional_special_tokens"] = list(self._additional)
        texts[folder / "tokenizer_config.json"] = dump(self.tokenizer_config())
        texts[folder / "special_tokens_map.json"] = dump(specials)
        if self.is_fast:  # transformers' fast tokenizer writes tokenizer.json too (indent 2, keys in its order)
            bos = (self.bos_token, self.bos_token_id) if self.add_bos_token and self.bos_token is not None else None
            content = tokenizer_json(self.encoder, self.merges, self.added_tokens_decoder, self.add_prefix_space, bos)
            texts[folder / TOKENIZER_FILE] = json.dumps(content, indent=2, ensure_ascii=False)
        beyond = {t.content: i for i, t in self.added.decoder.items() if i >= self.vocab_size}
        if beyond:
            texts[folder / "added_tokens.json"] = dump(beyond)
        stale = [folder / name for name in (TOKENIZER_FILE, "added_tokens.json") if folder / name not in texts]
        with files.FolderWrite(folder) as save:
            for path, text in texts.items():
                save.write_text(path, text)
            save.commit(remove=stale)
        return tuple(str(path) for path in texts)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload tokenizer", private: bool | None = None,
                    token=None, create_pr: bool = False, revision: str | None = None):
        """save_pretrained into a temporary folder, then upload it to ``repo_id`` (needs huggingface_hub)."""
        return hub.push_to_hub(self.save_pretrained, repo_id, commit_message=commit_message, private=private,
                               token=token, create_pr=create_pr, revision=revision)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool = False, **kwargs):
        """Load from a folder, the local HF cache, a preset name (packaged vocabulary) or the hub.

        ``kwargs`` override what the folder's tokenizer_config.json says (e.g. ``pad_token="<|endoftext|>"``,
        ``padding_side="left"``, ``add_prefix_space=True``).
        """
        from .tokenizer_files import load_tokenizer_kwargs

        kwargs = loading.loading_options(kwargs, f"{cls.__name__}.from_pretrained()")
        init = load_tokenizer_kwargs(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                     local_files_only=local_files_only, presets=PRESETS,
                                     packaged=PACKAGED_VOCAB)
        added_file = init.pop("_added_tokens_file", None)
        init.update(kwargs)
        try:
            return cls(**init)
        except ValueError as e:
            if added_file is not None and str(e).startswith("added token"):  # name the file it came from
                raise ValueError(f"{added_file}: {e}") from None
            raise

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
                f"special_tokens={self.special_tokens_map}, added_tokens={len(self.added.new_ids)})")


class GPT2Tokenizer(TokenizerBase):
    """OpenAI's GPT-2 byte-level BPE tokenizer in pure Python, with transformers' GPT2Tokenizer API.

    Same ids as tiktoken's gpt2 encoding and transformers' tokenizers; GPT2TokenizerFast gives the same ids faster.
    With ``add_prefix_space=True`` a space is put before the whole text, as transformers' GPT2Tokenizer does.
    """


def _unshift(spans: list[tuple[int, int]], origin: int) -> list[tuple[int, int]]:
    """Spans over a text with one character inserted at ``origin`` -> spans over the text without it.

    Like transformers' fast tokenizer, the inserted space is aligned with the character that follows it.
    """
    def char(c: int) -> int:
        return c - 1 if c > origin else c

    return [(char(a), char(b - 1) + 1) for a, b in spans]
