"""GPT2Config: transformers' field names and defaults, validated, framework-free.

>>> from gpt2 import GPT2Config
>>> config = GPT2Config.from_pretrained("gpt2-medium")      # offline: presets are data
>>> config.n_layer, config.hidden_size
(24, 1024)
>>> tiny = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000)
>>> tiny.save_pretrained("my-model")                          # config.json that transformers loads
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from . import files, hub
from .numerics import ACTIVATIONS

CONFIG_NAME = "config.json"

# transformers' GPT2Config fields and defaults, in its order. Always written to config.json, as transformers does.
GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "summary_activation": None,
    "summary_proj_to_labels": True,
    "summary_first_dropout": 0.1,
    "scale_attn_weights": True,
    "use_cache": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
}

# Fields of transformers' PretrainedConfig that the models read. Written only when they differ from these defaults,
# as transformers' save_pretrained does. id2label / label2id / num_labels are handled beside them.
BASE_DEFAULTS: dict[str, Any] = {
    "tie_word_embeddings": True,
    "add_cross_attention": False,
    "pad_token_id": None,
    "problem_type": None,
    "architectures": None,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "dtype": None,
    "is_decoder": False,
    "task_specific_params": None,
}

# transformers' attribute_map: the generic names read (and write) the GPT-2 fields.
ATTRIBUTE_MAP = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

_KEY_ALIASES = {"torch_dtype": "dtype"}  # transformers < 4.56 wrote torch_dtype
# Upper bounds on the sizes, so that a 1 KB config.json cannot make the process allocate gigabytes before a single
# weight is read (label dicts, tensor tables, the byte budgets the checkpoint readers derive from the config). Each
# is far past any GPT-2 (XL: 48 layers, 1600 wide, 25 heads, 50257 tokens, 1024 positions) and past the largest
# published decoder models (~128 layers, ~25k wide, ~256k tokens, ~1M positions). Labels: id2label and label2id cost
# about 300 bytes a label (two dict entries, a "LABEL_i" string), so 65536 labels is ~20 MB; token classification
# uses tens of labels, and even extreme multi-label sets rarely reach this.
LIMITS = {"vocab_size": 2**22, "n_positions": 2**20, "n_embd": 2**16, "n_layer": 2**10, "n_head": 2**12,
          "n_inner": 2**18, "num_labels": 2**16}
_SUMMARY_TYPES = ("last", "first", "mean", "cls_index", "attn")
_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
_GPT2_TEXT_GEN = {"text-generation": {"do_sample": True, "max_length": 50}}

# The published checkpoints' architectures (from their config.json files), so these names resolve offline.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_ctx": 1024},
    "gpt2-medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_ctx": 1024, "n_special": 0,
                    "predict_special_tokens": True},
    "gpt2-large": {"n_layer": 36, "n_embd": 1280, "n_head": 20, "n_ctx": 1024},
    "gpt2-xl": {"n_layer": 48, "n_embd": 1600, "n_head": 25, "n_ctx": 1024, "output_past": True},
    "distilgpt2": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_ctx": 1024, "_num_labels": 1,
                   "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}},
}
for _name, _preset in PRESETS.items():
    _preset.update(architectures=["GPT2LMHeadModel"], task_specific_params=_GPT2_TEXT_GEN)
PRESETS.update({f"openai-community/{k}": v for k, v in list(PRESETS.items()) if k != "distilgpt2"})
PRESETS["distilbert/distilgpt2"] = PRESETS["distilgpt2"]


def _check_limit(name: str, value) -> None:
    if isinstance(value, int) and value > LIMITS[name]:
        raise ValueError(f"GPT2Config: {name}={value} is past the limit of {LIMITS[name]} "
                         f"(a bound that keeps a small config file from allocating gigabytes)")


class GPT2Config:
    """The architecture and options of a GPT-2 model; transformers' ``GPT2Config`` with the same names and defaults.

    Unknown keyword arguments (keys of a config.json written by another tool) are kept as attributes and written
    back by ``save_pretrained``. Invalid values raise ``ValueError`` naming the field.
    """

    model_type = "gpt2"
    attribute_map = ATTRIBUTE_MAP

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {_KEY_ALIASES.get(k, k): v for k, v in kwargs.items()}
        for alias, field in ATTRIBUTE_MAP.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if field in kwargs and kwargs[field] != value:
                    raise ValueError(f"GPT2Config: {alias}={value!r} contradicts {field}={kwargs[field]!r}")
                kwargs[field] = value
        kwargs.pop("model_type", None)
        for name, default in {**GPT2_DEFAULTS, **BASE_DEFAULTS}.items():
            object.__setattr__(self, name, copy.deepcopy(kwargs.pop(name, default)))
        self._set_labels(kwargs.pop("num_labels", None), kwargs.pop("id2label", None), kwargs.pop("label2id", None))
        object.__setattr__(self, "_extra_keys", list(kwargs))
        for name, value in kwargs.items():
            object.__setattr__(self, name, value)
        self.validate()

    # -- attribute aliases ------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        if name in ATTRIBUTE_MAP:
            return getattr(self, ATTRIBUTE_MAP[name])
        if name == "torch_dtype":
            return self.dtype
        raise AttributeError(f"'GPT2Config' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        name = ATTRIBUTE_MAP.get(name, _KEY_ALIASES.get(name, name))
        if name == "num_labels":
            if value != self.num_labels:
                self._set_labels(value, None, None)
            return
        known = name in GPT2_DEFAULTS or name in BASE_DEFAULTS or name in ("id2label", "label2id")
        if not known and not name.startswith("_") and name not in self._extra_keys:
            self._extra_keys.append(name)
        object.__setattr__(self, name, value)
        if name == "id2label":
            object.__setattr__(self, "id2label", {int(k): v for k, v in value.items()})

    # -- labels -----------------------------------------------------------------------------------------------------
    def _set_labels(self, num_labels, id2label, label2id) -> None:
        if label2id is not None and not isinstance(label2id, dict):
            raise ValueError(f"GPT2Config: label2id must be a dict, got {type(label2id).__name__}")
        if id2label is not None:
            if not isinstance(id2label, dict):
                raise ValueError(f"GPT2Config: id2label must be a dict, got {type(id2label).__name__}")
            _check_limit("num_labels", len(id2label))
            id2label = {int(k): str(v) for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"GPT2Config: num_labels={num_labels} but id2label has {len(id2label)} entries")
        else:
            if num_labels is None:
                num_labels = len(label2id) if label2id is not None else 2
            if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 0:
                raise ValueError(f"GPT2Config: num_labels must be a non-negative integer, got {num_labels!r}")
            _check_limit("num_labels", num_labels)
            if label2id is not None:
                _check_limit("num_labels", len(label2id))
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            if label2id is not None:
                id2label = {int(i): str(label) for label, i in label2id.items()}
        if label2id is None:
            label2id = {label: i for i, label in id2label.items()}
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "label2id", {str(k): int(v) for k, v in label2id.items()})

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    # -- validation -------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is out of its domain."""

        def positive_int(name, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPT2Config: {name} must be a positive integer, got {value!r}")

        def number(name, lo, hi, lo_open=False):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"GPT2Config: {name} must be a number, got {value!r}")
            if value < lo or value > hi or (lo_open and value == lo):
                bounds = f"{'(' if lo_open else '['}{lo}, {hi}]"
                raise ValueError(f"GPT2Config: {name} must be in {bounds}, got {value!r}")

        def boolean(name):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPT2Config: {name} must be true or false, got {getattr(self, name)!r}")

        def token_id(name, allow_list=False):
            value = getattr(self, name)
            values = value if allow_list and isinstance(value, list) else [value]
            for v in values:
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                    raise ValueError(f"GPT2Config: {name} must be a non-negative integer or null, got {value!r}")

        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            positive_int(name)
        positive_int("n_inner", allow_none=True)
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
            _check_limit(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"each head gets n_embd / n_head channels"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config: unknown activation_function {self.activation_function!r}; "
                f"expected one of {', '.join(ACTIVATIONS)}"
            )
        if self.summary_activation not in (None, "tanh", "linear", *ACTIVATIONS):
            raise ValueError(f"GPT2Config: unknown summary_activation {self.summary_activation!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"):
            number(name, 0.0, 1.0)
        number("layer_norm_epsilon", 0.0, 1.0, lo_open=True)
        number("initializer_range", 0.0, math.inf)
        if self.summary_type not in _SUMMARY_TYPES:
            raise ValueError(f"GPT2Config: summary_type must be one of {_SUMMARY_TYPES}, got {self.summary_type!r}")
        for name in ("summary_use_proj", "summary_proj_to_labels", "scale_attn_weights", "use_cache",
                     "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings",
                     "add_cross_attention", "output_attentions", "output_hidden_states", "return_dict",
                     "is_decoder"):
            boolean(name)
        token_id("bos_token_id")
        token_id("pad_token_id")
        token_id("eos_token_id", allow_list=True)
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"GPT2Config: problem_type must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.architectures is not None and not (
            isinstance(self.architectures, list) and all(isinstance(a, str) for a in self.architectures)
        ):
            raise ValueError(f"GPT2Config: architectures must be a list of class names, got {self.architectures!r}")

    # -- dict / json ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, extras included (what transformers' ``to_dict`` returns, for the fields we model)."""
        out = {"model_type": self.model_type}
        for name in (*GPT2_DEFAULTS, *BASE_DEFAULTS):
            out[name] = copy.deepcopy(getattr(self, name))
        out["id2label"] = dict(self.id2label)
        out["label2id"] = dict(self.label2id)
        for name in self._extra_keys:
            out[name] = copy.deepcopy(getattr(self, name))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """What ``save_pretrained`` writes: the GPT-2 fields, and the generic ones that differ from their default."""
        full = self.to_dict()
        default_labels = {i: f"LABEL_{i}" for i in range(2)}
        out = {}
        for name, value in full.items():
            if name in BASE_DEFAULTS and value == BASE_DEFAULTS[name]:
                continue
            if name in ("id2label", "label2id") and self.id2label == default_labels:
                continue
            out[name] = value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        if "id2label" in data:
            data["id2label"] = {str(k): v for k, v in data["id2label"].items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        files.write_text(path, self.to_json_string(use_diff))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "GPT2Config":
        """Build from a dict such as a parsed config.json; ``overrides`` replace fields after it is read."""
        if not isinstance(config_dict, dict):
            raise TypeError(f"GPT2Config.from_dict expects a dict, got {type(config_dict).__name__}")
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"GPT2Config: this is a {model_type!r} config, not a {cls.model_type!r} one")
        data = {**config_dict, **overrides}
        if "num_labels" in overrides and "id2label" not in overrides:
            data.pop("id2label", None)
            data.pop("label2id", None)
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "GPT2Config":
        return files.from_json_file(cls, path, "JSON config file", overrides)

    # -- folders ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> "GPT2Config":
        """Read config.json from a folder, a config file, the local HF cache, the presets, or the hub (in that order).

        An OpenAI checkpoint folder (hparams.json, no config.json) is read too. ``overrides`` replace fields (or keys
        the file has); any other name is a TypeError -- transformers would drop it silently, and a stray ``token=``
        must never end up in a saved config.json.
        """
        config = cls._read_pretrained(pretrained_model_name_or_path, revision, cache_dir, local_files_only)
        return config.with_overrides("GPT2Config.from_pretrained()", **overrides)

    def with_overrides(self, where: str = "GPT2Config", **overrides: Any) -> "GPT2Config":
        """A copy with ``overrides`` applied: fields (generic names such as hidden_size included), labels, or keys
        this config already has. Any other name is a TypeError naming it and ``where`` -- a loading option passed by
        mistake (``token=``) must never become an entry of a saved config.json."""
        if not overrides:
            return self
        unknown = sorted(k for k in overrides if not (hasattr(self, k) or k in ("num_labels", "id2label", "label2id")))
        if unknown:
            raise TypeError(f"{where} got unexpected keyword argument(s) {', '.join(unknown)}: not config fields")
        return type(self).from_dict(self.to_dict(), **{ATTRIBUTE_MAP.get(k, k): v for k, v in overrides.items()})

    @classmethod
    def _read_pretrained(cls, name, revision, cache_dir, local_files_only) -> "GPT2Config":
        if Path(name).is_file():
            return cls.from_json_file(name)
        path = hub.resolve_file(name, CONFIG_NAME, revision=revision, cache_dir=cache_dir, local_files_only=True)
        if path is not None:
            return cls.from_json_file(path)
        folder = hub.local_folder(name)
        if folder is not None and (folder / "hparams.json").is_file():
            return cls.from_openai_hparams(folder / "hparams.json")
        if folder is not None and any(folder.glob("*.index")):  # OpenAI's checkpoint: its config is hparams.json
            raise FileNotFoundError(
                f"no hparams.json (nor config.json) in {str(folder)!r}: an OpenAI checkpoint (model.ckpt.*) needs the "
                f"hparams.json that came with it (n_vocab, n_ctx, n_embd, n_head, n_layer)"
            )
        if folder is None and str(name) in PRESETS:
            return cls.from_dict(copy.deepcopy(PRESETS[str(name)]))
        if not local_files_only:
            path = hub.resolve_file(name, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
            if path is not None:
                return cls.from_json_file(path)
        raise FileNotFoundError(
            f"no {CONFIG_NAME} for {str(name)!r}: looked in {hub.describe_lookup(name, cache_dir)}; "
            f"known names without files: {', '.join(p for p in PRESETS if '/' not in p)}"
        )

    @classmethod
    def from_openai_hparams(cls, path: str | os.PathLike, **overrides: Any) -> "GPT2Config":
        """The config of an OpenAI gpt-2 checkpoint, from its hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer)."""
        path = Path(path)
        h = files.read_json(path, "OpenAI hparams.json")
        try:
            fields = dict(vocab_size=h["n_vocab"], n_positions=h["n_ctx"], n_embd=h["n_embd"], n_head=h["n_head"],
                          n_layer=h["n_layer"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an OpenAI hparams.json ({type(e).__name__}: {e})") from None
        try:
            return cls(**{**fields, "architectures": ["GPT2LMHeadModel"], **overrides})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload config", private: bool | None = None,
                    token=None, create_pr: bool = False, revision: str | None = None):
        """save_pretrained into a temporary folder, then upload it to ``repo_id`` (needs huggingface_hub)."""
        return hub.push_to_hub(self.save_pretrained, repo_id, commit_message=commit_message, private=private,
                               token=token, create_pr=create_pr, revision=revision)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``save_directory/config.json`` atomically (transformers' layout: sorted keys, diff against defaults)."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_pretrained expects a folder, {str(save_directory)!r} is a file")
        self.validate()
        save_directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(save_directory / CONFIG_NAME)

    # -- misc -------------------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        """The MLP width: n_inner, or 4 * n_embd when it is unset (as in transformers)."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"GPT2Config {self.to_json_string(use_diff=False)}"

    def copy(self) -> "GPT2Config":
        return copy.deepcopy(self)
