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
          "clean_up_tokenization_spaces")


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
    config = files.read_json(config_path) if config_path is not None else {}
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    for key in _PLAIN:
        if key in config and config[key] is not None:
            kwargs[key] = config[key]
    try:
        decoder = {int(i): AddedToken.from_dict(t) for i, t in (config.get("added_tokens_decoder") or {}).items()}
        specials = {k: AddedToken.from_dict(config[k], special=True) for k in _SPECIALS if config.get(k) is not None}
        map_path = find("special_tokens_map.json")
        if map_path is not None:
            for key, value in files.read_json(map_path).items():
                if key in _SPECIALS and key not in specials and value is not None:
                    specials[key] = AddedToken.from_dict(value, special=True)
                elif key == "additional_special_tokens" and "additional_special_tokens" not in config:
                    config["additional_special_tokens"] = value
        additional = [AddedToken.from_dict(t, special=True) for t in config.get("additional_special_tokens") or []]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_path or name_or_path}: bad special token entry ({e})") from None
    added_path = find("added_tokens.json")
    if not decoder and added_path is not None:
        special_contents = {t.content for t in specials.values()}
        decoder = {int(i): AddedToken(c, special=c in special_contents) for c, i in files.read_json(added_path).items()}
    kwargs.update(specials)
    kwargs["additional_special_tokens"] = additional
    kwargs["added_tokens_decoder"] = decoder or None  # None: tokenizer.json's own added tokens, if read
    return kwargs
