"""GenerationConfig: transformers' generation options, framework-free, shared by the three generate() functions.

What generate() does with them before any tensor exists (settings merge, lengths, eos / padding, the
unsupported-options table, processor order, stop strings) is in decoding.py; the streamers in streamers.py.

>>> from gpt2.common.generation import GenerationConfig
>>> gen = GenerationConfig.from_pretrained("gpt2")          # offline: derived from the preset's model config
>>> gen.eos_token_id
50256
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any

from . import files, hub
from .config import PRESETS, GPT2Config

GENERATION_CONFIG_NAME = "generation_config.json"

# transformers 4.57's GenerationConfig fields and defaults (the ones a GPT-2 generate() reads), in its order.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None, "early_stopping": False,
    "max_time": None, "stop_strings": None,
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "use_cache": True,
    "cache_implementation": None,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "diversity_penalty": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "renormalize_logits": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None,
    "num_return_sequences": 1, "output_attentions": False, "output_hidden_states": False, "output_scores": False,
    "output_logits": None, "return_dict_in_generate": False,
    "pad_token_id": None, "bos_token_id": None, "eos_token_id": None,
    "compile_config": None, "disable_compile": False,
    "num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.4,
}
_NOT_WRITTEN = ("compile_config",)  # transformers keeps it in memory only (an object, not JSON)
# Written by transformers beside the fields: `_from_model_config` when true, `transformers_version` always (we keep
# the version read, and write none of our own). Both are ignored by ``==``, as in transformers.
METADATA_DEFAULTS: dict[str, Any] = {"_from_model_config": False, "transformers_version": None}
_READ_AND_DROPPED = ("_commit_hash", "_original_object_hash")  # transformers' in-memory bookkeeping, never written
_PRIVATE = ("_generate_kwargs",)  # ours: which generate() kwargs ``merge`` applied (resolve_lengths reads it)
_OUTPUT_FLAGS = ("output_attentions", "output_hidden_states", "output_scores", "output_logits")
_SAMPLING_KNOBS = {"temperature": 1.0, "top_p": 1.0, "min_p": None, "typical_p": 1.0, "top_k": 50,
                   "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
# Arguments of generate() itself that transformers refuses to find inside a GenerationConfig.
_GENERATE_ARGUMENTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus",
                       "assistant_model", "streamer", "negative_prompt_ids", "negative_prompt_attention_mask",
                       "use_model_defaults")


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_id_list(v: Any, depth: int = 1, allow_empty: bool = False) -> bool:
    """A list of token ids (depth 1), of non-empty such lists (depth 2), ... ids being non-negative integers."""
    if not isinstance(v, (list, tuple)) or (not v and not allow_empty):
        return False
    if depth == 1:
        return all(is_int(i) and i >= 0 for i in v)
    return all(_is_id_list(x, depth - 1) for x in v)


def _jsonable(obj: Any) -> Any:
    """What transformers' to_json_string does to values: dict keys become strings (tuples via str())."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


class GenerationConfig:
    """How to decode: transformers' ``GenerationConfig`` with the same field names, defaults and file format.

    Keys of a generation_config.json that are not fields here (transformers options GPT-2 decoding does not use,
    or another tool's keys) are kept as attributes and written back. Invalid values raise ``ValueError`` naming the
    field (see ``validate``).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {k: v for k, v in kwargs.items() if k not in _READ_AND_DROPPED}
        for name, default in {**GENERATION_DEFAULTS, **METADATA_DEFAULTS}.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        for name, value in kwargs.items():
            if callable(getattr(type(self), name, None)):
                raise ValueError(f"GenerationConfig: key {name!r} would hide the method of that name")
            setattr(self, name, value)
        self.validate()

    # -- validation -------------------------------------------------------------------------------------------------
    def validate(self, strict: bool = False) -> None:
        """Raise ValueError naming the first field whose value is out of its domain; warn about ignored settings.

        Errors: wrong types; max_length / min_length / min_new_tokens / top_k / no_repeat_ngram_size < 0;
        max_new_tokens, num_beams, num_beam_groups, num_return_sequences < 1; temperature < 0, or <= 0 when
        do_sample; top_p and typical_p outside (0, 1]; min_p outside [0, 1]; epsilon_cutoff / eta_cutoff outside
        [0, 1); repetition_penalty and encoder_repetition_penalty <= 0; early_stopping not True, False or "never";
        negative token ids (pad, bos, eos, forced_*, suppress_*); bad_words_ids not a non-empty list of non-empty
        lists of ids; num_return_sequences != 1 with greedy decoding, or > num_beams with beam search (transformers'
        rule); an argument of generate() itself (streamer, logits_processor, ...) stored in the config.
        Sampling knobs (temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff) accept None
        ("unset"), as in transformers.

        Warnings (UserWarning; transformers logs them, and ``strict=True`` -- used by ``save_pretrained`` -- makes
        them errors, as transformers does): a sampling knob set while do_sample is false; early_stopping or
        length_penalty set while num_beams is 1; an output_* flag set while return_dict_in_generate is false;
        cache_implementation / cache_config / return_legacy_cache set while use_cache is false.
        Deliberately stricter than transformers: a negative pad_token_id is an error, not a warning.
        """

        def fail(name: str, what: str) -> None:
            raise ValueError(f"GenerationConfig: {name} must be {what}, got {getattr(self, name)!r}")

        def integer(name: str, lo: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if not (v is None and optional) and not (is_int(v) and v >= lo):
                fail(name, f"an integer >= {lo}" + (" or null" if optional else ""))

        def number(name: str, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False, optional=False) -> None:
            v = getattr(self, name)
            if not (v is None and optional) and (not _is_number(v) or not lo <= v <= hi or (lo_open and v == lo)
                                                 or (hi_open and v == hi)):
                bounds = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                fail(name, f"a number in {bounds}" + (" or null" if optional else ""))

        def flag(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if not (v is None and optional) and not isinstance(v, bool):
                fail(name, "true or false" + (" or null" if optional else ""))

        def ids(name: str, depth: int = 1, allow_int: bool = False, allow_empty: bool = True) -> None:
            v = getattr(self, name)
            if v is None or (allow_int and is_int(v) and v >= 0):
                return
            if not _is_id_list(v, depth, allow_empty):
                fail(name, ("a non-negative token id, " if allow_int else "") + "a list of non-negative token ids"
                     + (" (non-empty lists of ids)" if depth > 1 else "") + " or null")

        integer("max_length", 0)
        integer("max_new_tokens", 1, optional=True)
        integer("min_length", 0)
        integer("min_new_tokens", 0, optional=True)
        if self.early_stopping not in (True, False, "never") or not isinstance(self.early_stopping, (bool, str)):
            fail("early_stopping", 'true, false or "never"')
        number("max_time", 0, optional=True)
        if self.stop_strings is not None and not isinstance(self.stop_strings, str) and not (
            isinstance(self.stop_strings, list) and all(isinstance(s, str) and s for s in self.stop_strings)
        ):
            fail("stop_strings", "a string, a list of non-empty strings or null")
        for name in ("do_sample", "use_cache", "renormalize_logits", "remove_invalid_values", "output_attentions",
                     "output_hidden_states", "output_scores", "return_dict_in_generate"):
            flag(name)
        flag("output_logits", optional=True)
        flag("disable_compile")
        integer("num_assistant_tokens", 0)
        if self.num_assistant_tokens_schedule not in ("constant", "heuristic", "heuristic_transient"):
            fail("num_assistant_tokens_schedule", "'constant', 'heuristic' or 'heuristic_transient'")
        number("assistant_confidence_threshold", 0, 1, optional=True)
        if self.cache_implementation is not None and not isinstance(self.cache_implementation, str):
            fail("cache_implementation", "a string or null")
        for name in ("num_beams", "num_beam_groups", "num_return_sequences"):
            integer(name, 1)
        number("penalty_alpha", 0, optional=True)
        number("temperature", 0, lo_open=bool(self.do_sample), optional=True)
        integer("top_k", 0, optional=True)
        number("top_p", 0, 1, lo_open=True, optional=True)
        number("min_p", 0, 1, optional=True)
        number("typical_p", 0, 1, lo_open=True, optional=True)
        number("epsilon_cutoff", 0, 1, hi_open=True, optional=True)
        number("eta_cutoff", 0, 1, hi_open=True, optional=True)
        number("diversity_penalty", 0)
        number("repetition_penalty", 0, lo_open=True, optional=True)
        number("encoder_repetition_penalty", 0, lo_open=True, optional=True)
        number("length_penalty", optional=True)
        integer("no_repeat_ngram_size", 0, optional=True)
        ids("bad_words_ids", depth=2, allow_empty=False)
        fw = self.force_words_ids
        if fw is not None and not (_is_id_list(fw, 2) or _is_id_list(fw, 3)):
            fail("force_words_ids", "a non-empty list of non-empty lists of token ids (or of lists of those)")
        ids("forced_bos_token_id", allow_int=True, allow_empty=False)
        ids("forced_eos_token_id", allow_int=True, allow_empty=False)
        decay = self.exponential_decay_length_penalty
        if decay is not None and not (isinstance(decay, (list, tuple)) and len(decay) == 2 and is_int(decay[0])
                                      and decay[0] >= 0 and _is_number(decay[1])):
            fail("exponential_decay_length_penalty", "a pair (start_index, decay_factor) or null")
        ids("suppress_tokens")
        ids("begin_suppress_tokens")
        bias = self.sequence_bias
        if bias is not None and not (
            (isinstance(bias, dict) and all(_is_number(b) for b in bias.values()))
            or (isinstance(bias, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 and _is_id_list(p[0])
                                               and _is_number(p[1]) for p in bias))
        ):
            fail("sequence_bias", "a list of [token_ids, bias] pairs, a dict, or null")
        integer("pad_token_id", 0, optional=True)
        integer("bos_token_id", 0, optional=True)
        ids("eos_token_id", allow_int=True)
        flag("_from_model_config")

        # Combinations (transformers' rule for num_return_sequences).
        if self.num_return_sequences != 1:
            if self.num_beams == 1 and not self.do_sample:
                fail("num_return_sequences", "1 with greedy decoding (set do_sample=True or num_beams > 1)")
            if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                fail("num_return_sequences", f"<= num_beams ({self.num_beams})")
        for name in _GENERATE_ARGUMENTS:
            if name in vars(self):
                raise ValueError(f"GenerationConfig: {name} is an argument of generate(), not a GenerationConfig field")

        # Settings that are ignored: warnings, errors when strict.
        issues = []
        if not self.do_sample:
            issues += [f"do_sample is false, so {k}={getattr(self, k)!r} is ignored (set do_sample=True or unset {k})"
                       for k, default in _SAMPLING_KNOBS.items()
                       if getattr(self, k) is not None and getattr(self, k) != default]
        if self.num_beams == 1:
            issues += [f"num_beams is 1, so {k}={getattr(self, k)!r} is ignored (set num_beams > 1 or unset {k})"
                       for k, default in (("early_stopping", False), ("length_penalty", 1.0))
                       if getattr(self, k) is not None and getattr(self, k) != default]
        if self.return_dict_in_generate is not True:
            issues += [f"return_dict_in_generate is false, so {k}=True is ignored" for k in _OUTPUT_FLAGS
                       if getattr(self, k) is True]
        if self.use_cache is False:
            issues += [f"use_cache is false, so {k}={getattr(self, k)!r} has no effect"
                       for k in ("cache_implementation", "cache_config", "return_legacy_cache")
                       if getattr(self, k, None) is not None]
        if issues and strict:
            raise ValueError("GenerationConfig is invalid:\n- " + "\n- ".join(issues))
        for issue in issues:
            warnings.warn(f"GenerationConfig: {issue}", UserWarning, stacklevel=3)

    # -- dict / json ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, then ``_from_model_config``, the extra keys and ``transformers_version`` (when one was read)."""
        out = {name: copy.deepcopy(getattr(self, name)) for name in GENERATION_DEFAULTS if name not in _NOT_WRITTEN}
        out["_from_model_config"] = self._from_model_config
        for name, value in vars(self).items():
            if name not in out and name not in _PRIVATE + _NOT_WRITTEN and name != "transformers_version":
                out[name] = copy.deepcopy(value)
        if self.transformers_version is not None:
            out["transformers_version"] = self.transformers_version
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """What ``save_pretrained`` writes (as transformers): fields that differ from their default, extra keys,
        ``_from_model_config`` when true, and ``transformers_version``."""
        defaults = {**GENERATION_DEFAULTS, "_from_model_config": False}
        return {k: v for k, v in self.to_dict().items() if k not in defaults or v != defaults[k]}

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            data = {k: v for k, v in data.items() if k not in METADATA_DEFAULTS}
        return json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        files.write_text(path, self.to_json_string(use_diff))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "GenerationConfig":
        """Build from a dict such as a parsed generation_config.json; ``overrides`` replace its keys."""
        if not isinstance(config_dict, dict):
            raise TypeError(f"GenerationConfig.from_dict expects a dict, got {type(config_dict).__name__}")
        return cls(**{**config_dict, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "GenerationConfig":
        return files.from_json_file(cls, path, "JSON generation config", overrides)

    @classmethod
    def from_model_config(cls, model_config: GPT2Config) -> "GenerationConfig":
        """The generation defaults a model config implies (transformers' rule): its non-null values of generation
        fields (bos/eos/pad ids, use_cache, output flags, legacy keys such as max_length), marked _from_model_config."""
        data = {k: v for k, v in model_config.to_dict().items()
                if v is not None and (k in GENERATION_DEFAULTS or k == "transformers_version")}
        if any(data.get(k) is True for k in _OUTPUT_FLAGS):
            data.setdefault("return_dict_in_generate", True)  # transformers turns it on when an output flag is on
        return cls(**data, _from_model_config=True)

    # -- folders ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        config_file_name: str = GENERATION_CONFIG_NAME,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> "GenerationConfig":
        """Read generation_config.json from a folder, a file, the local HF cache or the hub; without one, derive it
        from the model's config.json (or a preset name such as "gpt2", offline) with ``from_model_config``, as
        transformers does when it loads a model. ``overrides`` replace keys of the result."""
        name = pretrained_model_name_or_path
        if Path(name).is_file():
            return cls.from_json_file(name, **overrides)
        if (Path(name) / config_file_name).is_file():  # a folder holding only this file is a folder too
            return cls.from_json_file(Path(name) / config_file_name, **overrides)
        lookup = dict(revision=revision, cache_dir=cache_dir)
        path = hub.resolve_file(name, config_file_name, **lookup, local_files_only=True)
        if path is None and not local_files_only and hub.local_folder(name) is None and str(name) not in PRESETS:
            path = hub.resolve_file(name, config_file_name, **lookup)
        if path is not None:
            return cls.from_json_file(path, **overrides)
        try:
            model_config = GPT2Config.from_pretrained(name, **lookup, local_files_only=local_files_only)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no {config_file_name} for {str(name)!r}, and no model config to derive one "
                                    f"from ({e})") from None
        generation_config = cls.from_model_config(model_config)
        return cls.from_dict(generation_config.to_dict(), **overrides) if overrides else generation_config

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload generation config",
                    private: bool | None = None, token=None, create_pr: bool = False, revision: str | None = None):
        """save_pretrained into a temporary folder, then upload it to ``repo_id`` (needs huggingface_hub)."""
        return hub.push_to_hub(self.save_pretrained, repo_id, commit_message=commit_message, private=private,
                               token=token, create_pr=create_pr, revision=revision)

    def save_pretrained(self, save_directory: str | os.PathLike, config_file_name: str = GENERATION_CONFIG_NAME):
        """Write ``save_directory/generation_config.json`` atomically, in transformers' format (sorted keys, diff
        against the defaults). Like transformers, refuse to save settings ``validate`` would warn about."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_pretrained expects a folder, {str(save_directory)!r} is a file")
        text = self.json_to_save()
        save_directory.mkdir(parents=True, exist_ok=True)
        files.write_text(save_directory / config_file_name, text)

    def json_to_save(self) -> str:
        """The text save_pretrained writes (settings ``validate`` would warn about are refused, as transformers
        does); models stage it with their weights, in one transaction."""
        try:
            self.validate(strict=True)
        except ValueError as e:
            raise ValueError(f"{e}\nFix these issues to save the configuration.") from None
        return self.to_json_string()

    # -- misc -------------------------------------------------------------------------------------------------------
    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the kwargs that name attributes (fields, metadata, extra keys); return the others, unused (as
        transformers). The result is validated first: on ValueError the config is left as it was."""
        used = {k: v for k, v in kwargs.items() if k in vars(self) and k not in _PRIVATE}
        trial = self.copy()
        trial.__dict__.update(copy.deepcopy(used))
        trial.validate()
        self.__dict__.update(trial.__dict__)
        return {k: v for k, v in kwargs.items() if k not in used}

    def copy(self) -> "GenerationConfig":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        """Equal fields and extra keys; metadata (_from_model_config, transformers_version) is ignored."""
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        return self.to_json_string(False, True) == other.to_json_string(False, True)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_json_string(ignore_metadata=True)}"


# The helpers generate() shares moved to decoding.py; their old import path keeps working. Resolved lazily (PEP 562):
# decoding.py imports GenerationConfig from here.
_MOVED_TO_DECODING = ("merge", "eos_ids", "resolve_lengths", "StopStrings")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_DECODING:
        from . import decoding

        return getattr(decoding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
