"""The framework-free half of ``from_pretrained``: every framework's loader calls this, so they answer alike.

A framework's ``from_pretrained`` is three steps, and only the middle one is its own:

>>> from gpt2.common import loading
>>> plan = loading.prepare("GPT2LMHeadModel", "gpt2-folder", num_labels=3)   # options, config, canonical state
>>> # ... build the model for plan.config without allocating twice, map plan.state into it (<fw>/weights.py) ...
>>> info = loading.report(plan, missing=["score.weight"], unexpected=[])     # the warnings, and the loading info

``prepare`` takes transformers' loading options (accepting the ones that change nothing here, refusing by name the
ones not offered), resolves the config and applies keyword overrides to a copy, checks ``use_safetensors``, and
reads and validates the canonical state (``gpt2.common.checkpoint``). ``report`` warns about weights the checkpoint
lacks and tensors the class does not use, with transformers' ``output_loading_info`` dict as its answer.
``generation_config`` finds generation_config.json beside the weights for the classes that generate.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from . import hub
from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import GPT2Config
from .generation import GENERATION_CONFIG_NAME, GenerationConfig

# transformers' from_pretrained options: those that change nothing here (every format loads; models are built
# without allocating twice and filled once; no code is ever run from a checkpoint) -- refused only for the values
# noted --, and those not offered, with what to do instead. Models and tokenizers share them, so they answer alike.
NO_EFFECT = {"low_cpu_mem_usage": None, "from_tf": None, "from_flax": None, "from_pt": None,
             "trust_remote_code": None, "resume_download": None, "_fast_init": None, "use_fast": None, "legacy": None,
             "weights_only": (False, "checkpoints are never unpickled with code"),
             "use_flash_attention_2": (True, "use attn_implementation='flash_attention_2'"),
             "force_download": (True, "delete the cached files instead")}
_TOKEN = "pass a hub token through the HF_TOKEN environment variable or `hf auth login` instead"
NOT_OFFERED = {
    "token": _TOKEN, "use_auth_token": _TOKEN, "proxies": "set HTTPS_PROXY instead",
    "subfolder": "give the folder's path instead", "variant": "give the weights file's path instead",
    "state_dict": "use load_state_dict on the model", "ignore_mismatched_sizes": "load, then replace the head",
    "quantization_config": "quantization is not offered", "max_memory": "the model is placed on one device",
    "offload_folder": "the model is placed on one device", "offload_state_dict": "the model is placed on one device",
    "gguf_file": "GGUF files are not read", "tp_plan": "tensor parallelism is not offered",
    "key_mapping": "checkpoint names are GPT-2's",
}


def loading_options(kwargs: dict, where: str) -> dict:
    """Take transformers' loading options out of a from_pretrained's ``kwargs``: those with no effect here go, the
    ones not offered (or given a value that is not) are a TypeError naming them. Returns the rest."""
    rest = {}
    for key, value in kwargs.items():
        if key in NOT_OFFERED:
            raise TypeError(f"{where}: {key}= is not supported ({NOT_OFFERED[key]})")
        if key not in NO_EFFECT:
            rest[key] = value
        elif NO_EFFECT[key] is not None and bool(value) == NO_EFFECT[key][0]:
            raise TypeError(f"{where}: {key}={value!r} is not supported ({NO_EFFECT[key][1]})")
    return rest


@dataclasses.dataclass
class LoadPlan:
    """What ``prepare`` decided: the model class's name, where the weights came from, the config the model is built
    with (the loader's own copy: a caller's config is never changed), the canonical state (validated against that
    config) and the checkpoint's format and main file."""

    cls_name: str
    name_or_path: str | os.PathLike
    config: GPT2Config
    state: dict[str, np.ndarray]
    format: str
    source: Path

    @property
    def where(self) -> str:
        return f"{self.cls_name}.from_pretrained()"

    def checkpoint_dtype(self) -> str:
        """The dtype name that ``dtype="auto"`` means: config.json's ``dtype`` (``torch_dtype``), else the dtype the
        embeddings are stored in."""
        name = self.config.dtype or self.state["transformer.wte.weight"].dtype.name
        return str(name).removeprefix("torch.")


def prepare(cls_name: str, name_or_path: str | os.PathLike, *, config: GPT2Config | None = None,
            revision: str | None = None, cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
            use_safetensors: bool | None = None, **kwargs) -> LoadPlan:
    """Options, config and canonical state for ``cls_name.from_pretrained(name_or_path, ...)``.

    ``kwargs``: transformers' loading options (see ``loading_options``) and config overrides (``num_labels=3``);
    an unknown name is a TypeError. ``use_safetensors=True``: only a safetensors checkpoint will do (else
    FileNotFoundError); ``False``: a safetensors checkpoint is refused (ValueError). Nothing is built here: the
    framework's from_pretrained takes its own arguments (dtype, device, ...) before calling this.
    """
    where = f"{cls_name}.from_pretrained()"
    overrides = loading_options(kwargs, where)
    if config is None:
        config = GPT2Config.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir,
                                            local_files_only=local_files_only)
    elif not isinstance(config, GPT2Config):
        raise TypeError(f"{where}: config must be a GPT2Config, got {type(config).__name__}")
    else:
        config = config.copy()  # the model may set fields of its own (num_labels, problem_type): never the caller's
    config = config.with_overrides(where, **overrides)
    fmt, main = resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only)
    if use_safetensors is not None and (fmt == "safetensors") != bool(use_safetensors):
        raise (FileNotFoundError if use_safetensors else ValueError)(
            f"use_safetensors={use_safetensors}, but the checkpoint for {str(name_or_path)!r} is in the {fmt!r} "
            f"format{' (convert it: gpt2 convert SRC DST --to safetensors)' if use_safetensors else ''}")
    state, _ = load_checkpoint(name_or_path, config, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, resolved=(fmt, main))
    return LoadPlan(cls_name, name_or_path, config, state, fmt, main)


def loading_info(missing, unexpected) -> dict[str, list]:
    """transformers' ``output_loading_info=True`` dict (nothing is ever mismatched: a wrong shape is an error)."""
    return {"missing_keys": list(missing), "unexpected_keys": list(unexpected), "mismatched_keys": [],
            "error_msgs": []}


def report(plan: LoadPlan, missing, unexpected, stacklevel: int = 3) -> dict[str, list]:
    """Warn about the model's weights the checkpoint lacks (the framework has initialised them: train them before
    use) and the checkpoint's tensors the class does not use, as transformers does; returns ``loading_info``.
    ``missing``: the model's own parameter names; ``unexpected``: canonical names. ``stacklevel`` counts from the
    caller of ``report`` (3: the user's call of a from_pretrained that calls this directly)."""
    if missing:
        warnings.warn(f"{plan.cls_name}: weights not in the checkpoint at {plan.name_or_path!s}, newly initialised "
                      f"(train them before use): {', '.join(missing)}", stacklevel=stacklevel)
    if unexpected:
        warnings.warn(f"{plan.cls_name}: checkpoint tensors this class does not use: {', '.join(unexpected)}",
                      stacklevel=stacklevel)
    return loading_info(missing, unexpected)


def generation_config(name_or_path: str | os.PathLike, *, revision: str | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      local_files_only: bool = False) -> GenerationConfig | None:
    """The generation_config.json saved with the weights (beside a single weights file, in the folder, the cache or
    the hub), or None when there is none: the model then derives its defaults from its config, as transformers."""
    name = Path(name_or_path)
    if name.is_file():  # a single checkpoint file: look beside it
        path = name.parent / GENERATION_CONFIG_NAME
        path = path if path.is_file() else None
    else:
        path = hub.resolve_file(name_or_path, GENERATION_CONFIG_NAME, revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only)
    return None if path is None else GenerationConfig.from_json_file(path)


class GenerativeModel:
    """The framework-free half of every framework's GenerationMixin (torch, tf, flax): ``generation_config`` (the
    generation_config.json found beside the weights by ``from_pretrained``, else derived from the model config),
    ``can_generate``, and generation_config.json written by ``save_pretrained`` in the weights' transaction. Mixed in
    before the framework's pretrained base class, whose ``from_pretrained`` and ``_files_to_save`` it extends."""

    @property
    def generation_config(self) -> GenerationConfig:
        """The model's defaults: generation_config.json beside the weights, else derived from the model config."""
        if self.__dict__.get("_generation_config") is None:
            self.__dict__["_generation_config"] = GenerationConfig.from_model_config(self.config)
        return self.__dict__["_generation_config"]

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        if not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(value).__name__}")
        self.__dict__["_generation_config"] = value

    def can_generate(self) -> bool:
        return True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        result = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result  # (model, loading info) with output_loading_info
        found = generation_config(pretrained_model_name_or_path, revision=kwargs.get("revision"),
                                  cache_dir=kwargs.get("cache_dir"),
                                  local_files_only=kwargs.get("local_files_only", False))
        if found is not None:
            model.generation_config = found
        return result

    def _files_to_save(self) -> dict[str, str]:
        """generation_config.json too, as transformers writes it for generative models (in the same transaction
        as the weights)."""
        return {**super()._files_to_save(), GENERATION_CONFIG_NAME: self.generation_config.json_to_save()}
