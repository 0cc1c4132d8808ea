"""tokenizer.json (the Hugging Face ``tokenizers`` library's file) for byte-level BPE: read it, and write it as
transformers' GPT2TokenizerFast.save_pretrained does.

Read: the BPE model's vocabulary and merges (merges as "a b" strings or, since tokenizers 0.20, [a, b] pairs) and
the added tokens; a folder holding only tokenizer.json (no vocab.json / merges.txt) loads. Anything that is not
GPT-2's byte-level BPE (another model type, a normalizer, byte fallback, dropout, ...) is a ValueError naming the
file: it would tokenize differently here. Write: the same keys, in the same order, with the same pre-tokenizer,
post-processor (ByteLevel, or a template that puts bos first when add_bos_token) and decoder.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .bpe import check_vocabulary
from .tokens import AddedToken

TOKENIZER_FILE = "tokenizer.json"


def read_tokenizer_json(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]], dict[int, AddedToken]]:
    """``(encoder, merges, added_tokens_decoder)`` from a byte-level BPE tokenizer.json, validated."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested ~1000 deep
        raise ValueError(f"{path}: not a JSON file ({e})") from e
    model = data.get("model") if isinstance(data, dict) else None
    model = model if isinstance(model, dict) else {}
    if model.get("type", "BPE") != "BPE" or "vocab" not in model:
        raise ValueError(f"{path}: not a BPE tokenizer (model type {model.get('type')!r})")
    unsupported = {"dropout": None, "byte_fallback": False, "continuing_subword_prefix": "", "end_of_word_suffix": ""}
    for key, expected in unsupported.items():
        if model.get(key) not in (expected, None):
            raise ValueError(f"{path}: model.{key}={model[key]!r} is not GPT-2's byte-level BPE")
    if data.get("normalizer") is not None:
        kind = data["normalizer"].get("type") if isinstance(data["normalizer"], dict) else data["normalizer"]
        raise ValueError(f"{path}: a normalizer ({kind!r}) is not GPT-2's byte-level BPE")
    pre = data.get("pre_tokenizer") or {}
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel" or pre.get("use_regex", True) is not True:
        pre = pre if isinstance(pre, dict) else {"type": pre}
        raise ValueError(f"{path}: pre_tokenizer {pre.get('type')!r} is not GPT-2's ByteLevel with its regex")
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise ValueError(f"{path}: model.merges must be a list, got {type(merges).__name__}")
    lines = ((f"{path}, merge {i}", m.split() if isinstance(m, str) else m if isinstance(m, list) else [m], m)
             for i, m in enumerate(merges))
    pairs = check_vocabulary(model["vocab"], lines, f"{path} (model.vocab)")
    added: dict[int, AddedToken] = {}
    for entry in data.get("added_tokens") or []:
        if not isinstance(entry, dict) or type(entry.get("id")) is not int:
            raise ValueError(f"{path}: added token {entry!r} has no integer id")
        added[entry["id"]] = AddedToken.from_dict(entry, special=bool(entry.get("special")))
    return dict(model["vocab"]), pairs, added


def tokenizer_json(encoder: dict[str, int], merges: list[tuple[str, str]], added: dict[int, AddedToken],
                   add_prefix_space: bool, bos: tuple[str, int] | None) -> dict[str, Any]:
    """The content of tokenizer.json, as transformers 4.57 writes it for GPT2TokenizerFast. ``bos``: (token, id)
    when add_bos_token puts it first (a TemplateProcessing post-processor), else None."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    if bos is None:
        post = {**byte_level, "trim_offsets": False}
    else:
        token = {"SpecialToken": {"id": bos[0], "type_id": 0}}
        post = {"type": "TemplateProcessing",
                "single": [token, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [token, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos[0]: {"id": bos[0], "ids": [bos[1]], "tokens": [bos[0]]}}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
                          "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special}
                         for i, t in sorted(added.items())],
        "normalizer": None,
        "pre_tokenizer": {**byte_level, "add_prefix_space": bool(add_prefix_space)},
        "post_processor": post,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": encoder, "merges": [[a, b] for a, b in merges]},
    }
