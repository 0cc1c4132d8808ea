"""Reading a tokenizer folder (transformers' layout) into the keyword arguments of GPT2Tokenizer(Fast).

Files: vocab.json + merges.txt (or, without them, tokenizer.json), tokenizer_config.json, special_tokens_map.json,
added_tokens.json (optional). A preset name ("gpt2", "distilgpt2", ...) with no folder or cache entry uses the
vocabulary shipped in the package, with the presets' model_max_length of 1024.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import files, hub
from .tokens import AddedToken

_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_PLAIN = ("add_bos_token", "add_prefix_space", "errors", "model_max_length", "padding_side", "truncation_side",
          "clean_up_tokenization_spaces", "split_special_tokens")
_BOOLS = ("add_bos_token", "add_prefix_space", "clean_up_tokenization_spaces", "split_special_tokens")


def _check_plain(key: str, value, path) -> Any:
    """A tokenizer_config.json option of the right type, or a ValueError naming the file, the key and the value."""
    if key in _BOOLS:
        ok = isinstance(value, bool)
    elif key == "model_max_length":  # transformers writes 1e30 as an int; a float with an integer value is read too
        ok = (type(value) is int or (type(value) is float and value.is_integer())) and value >= 0
        value = int(value) if ok else value
    elif key in ("padding_side", "truncation_side"):
        ok = value in ("left", "right")
    else:  # errors
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{path}: {key}={value!r} is not a valid value")
    return value


def _read_object(path, what: str) -> dict:
    data = files.read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_tokenizer_kwargs(name_or_path: str | os.PathLike, *, revision=None, cache_dir=None,
                          local_files_only=False, presets=(), packaged: Path) -> dict[str, Any]:
    def find(filename: str, offline: bool = local_files_only) -> Path | None:
        return hub.resolve_file(name_or_path, filename, revision=revision, cache_dir=cache_dir,
                                local_files_only=offline)

    kwargs: dict[str, Any] = {"name_or_path": str(name_or_path)}
    # Order: a local folder, the HF cache, the packaged vocabulary for a preset name, and only then a download.
    vocab, merges = find("vocab.json", offline=True), find("merges.txt", offline=True)
    if (vocab is None or merges is None) and hub.local_folder(name_or_path) is None and str(name_or_path) in presets:
        return {**kwargs, "vocab_file": packaged / "vocab.json", "merges_file": packaged / "merges.txt",
                "model_max_length": 1024}
    if vocab is None or merges is None:
        vocab, merges = find("vocab.json"), find("merges.txt")
    if vocab is None or merges is None:
        whole = find("tokenizer.json")  # the tokenizers library's single file holds both
        if whole is None:
            missing = "vocab.json" if vocab is None else "merges.txt"
            raise FileNotFoundError(
                f"no {missing} (nor tokenizer.json) for {str(name_or_path)!r}: looked in "
                f"{hub.describe_lookup(name_or_path, cache_dir)}; names that need no files: "
                f"{', '.join(p for p in presets if '/' not in p)}"
            )
        kwargs["tokenizer_file"] = whole
    else:
        kwargs.update(vocab_file=vocab, merges_file=merges)
    config_path = find("tokenizer_config.json")
    config = _read_object(config_path, "tokenizer_config.json") if config_path is not None else {}
    for key in _PLAIN:
        if key in config and config[key] is not None:
            kwargs[key] = _check_plain(key, config[key], config_path)
    where = config_path or name_or_path
    try:
        entries = config.get("added_tokens_decoder") or {}
        if not isinstance(entries, dict):
            raise ValueError(f"added_tokens_decoder must be an object id -> token, got {type(entries).__name__}")
        decoder = {int(i): AddedToken.from_dict(t) for i, t in entries.items()}
        specials = {k: AddedToken.from_dict(config[k], special=True) for k in _SPECIALS if config.get(k) is not None}
        map_path = find("special_tokens_map.json")
        if map_path is not None:
            where = map_path
            for key, value in _read_object(map_path, "special_tokens_map.json").items():
                if key in _SPECIALS and key not in specials and value is not None:
                    specials[key] = AddedToken.from_dict(value, special=True)
                elif key == "additional_special_tokens" and "additional_special_tokens" not in config:
                    config["additional_special_tokens"] = value
        listed = config.get("additional_special_tokens") or []
        if not isinstance(listed, list):
            raise ValueError(f"additional_special_tokens must be a list, got {type(listed).__name__}")
        additional = [AddedToken.from_dict(t, special=True) for t in listed]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: bad special token entry ({e})") from None
    added_path = find("added_tokens.json")
    kwargs["_added_tokens_file"] = config_path if decoder else None
    if not decoder and added_path is not None:
        special_contents = {t.content for t in specials.values()}
        decoder = {}
        for content, i in _read_object(added_path, "added_tokens.json").items():
            if type(i) is not int or i < 0:
                raise ValueError(f"{added_path}: token {content!r} has id {i!r}, expected an integer >= 0")
            decoder[i] = AddedToken(content, special=content in special_contents)
        kwargs["_added_tokens_file"] = added_path
    kwargs.update(specials)
    kwargs["additional_special_tokens"] = additional
    kwargs["added_tokens_decoder"] = decoder or None  # None: tokenizer.json's own added tokens, if read
    return kwargs
