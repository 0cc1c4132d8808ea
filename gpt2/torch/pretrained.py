"""The base class of every PyTorch model: config, weight init, from_pretrained / save_pretrained, dtype and device
plumbing, embeddings utilities, gradient checkpointing.

from_pretrained is the framework-free policy of gpt2/common/loading.py (options, config and overrides, reading and
validating the checkpoint, the report) around the three torch steps: build on the meta device, materialise on the
target device and dtype, map the canonical arrays in (weights.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..common import hub, loading
from ..common.checkpoint import save_checkpoint
from ..common.config import GPT2Config
from . import weights

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype, plan: loading.LoadPlan) -> torch.dtype:
    """torch_dtype / dtype argument -> torch dtype: None is float32, "auto" is the checkpoint's."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = plan.checkpoint_dtype()
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPES:
            raise ValueError(f"torch_dtype must be one of {', '.join(_DTYPES)} or 'auto', got {dtype!r}")
        return _DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise TypeError(f"torch_dtype must be a torch floating dtype or a name, got {dtype!r}")


class GPT2PreTrainedModel(nn.Module):
    """Base of every model class: config, weight init, from_pretrained / save_pretrained, embeddings utilities."""

    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
        config.validate()
        # The model's own copy: heads set fields of their own (GPT2DoubleHeadsModel's num_labels=1, the problem_type
        # a classification loss infers), and the caller's config must not change under it (transformers' does).
        self.config = config.copy()

    # -- set-up -----------------------------------------------------------------------------------------------------
    def post_init(self, attn_implementation: str | None = None) -> None:
        """The end of every constructor: one config object for the model and its trunk (as transformers': a change
        such as resize_token_embeddings' vocab_size shows in both), the init, the attention, the tied head."""
        for module in self.modules():
            if isinstance(module, GPT2PreTrainedModel):
                module.config = self.config
        self.apply(self._init_weights)
        self.set_attn_implementation(attn_implementation or "sdpa")
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' GPT-2 init: N(0, initializer_range), residual projections scaled by 1/sqrt(2 n_layer)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        for name, child in module.named_children():  # GPT-2 paper: scale the residual projections' init
            if name == "c_proj" and isinstance(child, nn.Linear):
                nn.init.normal_(child.weight, mean=0.0, std=std / (2 * self.config.n_layer) ** 0.5)

    def set_attn_implementation(self, name: str) -> None:
        """"eager", "sdpa" (default) or "flash_attention_2" (needs flash-attn and CUDA)."""
        from .attention import IMPLEMENTATIONS, check_flash_available

        if name not in IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
        if name == "flash_attention_2":
            check_flash_available()
        for module in self.modules():
            if hasattr(module, "implementation") and hasattr(module, "c_attn"):
                module.implementation = name
        self.attn_implementation = name

    @property
    def trunk(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # -- embeddings -------------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.trunk.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.trunk.wte = value
        self.tie_weights()

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, value: nn.Linear) -> None:
        if not hasattr(self, "lm_head"):
            raise ValueError(f"{type(self).__name__} has no output embeddings (lm_head)")
        self.lm_head = value

    def enable_input_require_grads(self) -> None:
        """Make the embeddings' output require grad (transformers' name; what PEFT adapters with gradient
        checkpointing need when the embeddings themselves are frozen)."""
        def hook(module, inputs, output):
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)

    def disable_input_require_grads(self) -> None:
        handle = self.__dict__.pop("_require_grads_hook", None)
        if handle is not None:
            handle.remove()

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the parameters (and buffers), as transformers' get_memory_footprint."""
        tensors = list(self.parameters()) + (list(self.buffers()) if return_buffers else [])
        return sum(t.nelement() * t.element_size() for t in {id(t): t for t in tensors}.values())

    def tie_weights(self) -> None:
        head = self.get_output_embeddings()
        if head is not None and self.config.tie_word_embeddings:
            head.weight = self.trunk.wte.weight

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None):
        """Grow or shrink the token table (and an untied lm_head); new rows get the init. Returns the table."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        size = new_num_tokens if new_num_tokens is not None else old.num_embeddings
        if pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        new = nn.Embedding(size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        self._init_weights(new)
        keep = min(size, old.num_embeddings)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
        self.trunk.wte = new
        head = self.get_output_embeddings()
        if head is not None and not self.config.tie_word_embeddings:
            new_head = nn.Linear(head.in_features, size, bias=False, device=head.weight.device,
                                 dtype=head.weight.dtype)
            self._init_weights(new_head)
            with torch.no_grad():
                new_head.weight[:keep] = head.weight[:keep]
            self.lm_head = new_head
        self.config.vocab_size = size
        self.tie_weights()
        return new

    # -- training utilities -----------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block's activations in backward instead of storing them (less memory, ~30% slower)."""
        self.trunk.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.trunk.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.trunk.gradient_checkpointing

    # -- canonical state (weights.py maps it) -----------------------------------------------------------------------
    def state_to_canonical(self) -> dict[str, np.ndarray]:
        """The model's weights in the canonical form (gpt2/common/checkpoint.py), as every format is written."""
        return weights.state_to_canonical(self)

    def load_canonical(self, state: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
        """Copy canonical arrays into the parameters; returns (missing parameter names, unused canonical names)."""
        result = weights.load_canonical(self, state)
        self.tie_weights()
        return result

    # -- files ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, config: GPT2Config | None = None, torch_dtype=None,
                        dtype=None, attn_implementation: str | None = None, device=None, device_map=None,
                        revision: str | None = None, cache_dir=None, local_files_only: bool = False,
                        use_safetensors: bool | None = None, output_loading_info: bool = False, **kwargs):
        """Load any checkpoint format (safetensors, pytorch_model.bin, tf_model.h5, flax_model.msgpack, OpenAI's).

        ``torch_dtype`` (or ``dtype``): None (float32), "auto" (the checkpoint's), a name or a torch dtype.
        ``device`` / ``device_map``: one device ("cpu", "cuda", "cuda:1", 0, "auto" = CUDA when available), or a
        device_map dict that names one device (``{"": "cuda:0"}``); layers over several devices are refused.
        ``use_safetensors=True``: only a safetensors checkpoint will do. ``output_loading_info``: also return
        transformers' dict of missing / unexpected keys. Other keyword arguments override config fields
        (``num_labels=3``, ``attn_pdrop=0.0``); transformers' loading options that change nothing here
        (low_cpu_mem_usage, from_tf, from_flax, trust_remote_code, ...) are accepted, the ones not supported are a
        TypeError naming them, and an unknown name is a TypeError (never a stray config entry).
        Head weights the checkpoint lacks are initialised and reported with a warning, as transformers does.
        """
        plan = loading.prepare(cls.__name__, pretrained_model_name_or_path, config=config, revision=revision,
                               cache_dir=cache_dir, local_files_only=local_files_only,
                               use_safetensors=use_safetensors, **kwargs)
        target_dtype = resolve_dtype(torch_dtype if dtype is None else dtype, plan)
        target_device = resolve_device(device if device is not None else device_map)
        with torch.device("meta"):  # no memory and no random init for weights that are overwritten next
            model = cls(plan.config, attn_implementation=attn_implementation)
        model = model.to_empty(device=target_device).to(target_dtype)
        model.tie_weights()
        missing, unused = model.load_canonical(plan.state)
        for module_name in sorted({n.rsplit(".", 1)[0] for n in missing}):  # heads the checkpoint lacks
            model._init_weights(model.get_submodule(module_name))
        info = loading.report(plan, missing, unused)
        model.eval()  # as transformers: a loaded model starts in inference mode
        return (model, info) if output_loading_info else model

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload model", private: bool | None = None,
                    token=None, max_shard_size: int | str | None = "5GB", create_pr: bool = False,
                    safe_serialization: bool = True, revision: str | None = None):
        """save_pretrained into a temporary folder, then upload it to ``repo_id`` (needs huggingface_hub)."""
        return hub.push_to_hub(
            lambda folder: self.save_pretrained(folder, safe_serialization=safe_serialization,
                                                max_shard_size=max_shard_size),
            repo_id, commit_message=commit_message, private=private, token=token, create_pr=create_pr,
            revision=revision)

    def save_pretrained(self, save_directory, safe_serialization: bool = True,
                        max_shard_size: int | str | None = "5GB") -> None:
        """Write config.json and model.safetensors (or pytorch_model.bin) that transformers loads, with
        generation_config.json for generative models: one transaction (docs/checkpoints.md)."""
        config = self.config.copy()
        config.dtype = str(self.dtype).removeprefix("torch.")
        save_checkpoint(self.state_to_canonical(), Path(save_directory), config,
                        format="safetensors" if safe_serialization else "pytorch", max_shard_size=max_shard_size,
                        architecture=type(self).__name__, side_files=self._files_to_save())

    def _files_to_save(self) -> dict[str, str]:
        """{file name: text} that save_pretrained writes beside the weights and config.json."""
        return {}


def resolve_device(device) -> torch.device:
    """``device`` / ``device_map`` -> one torch.device. A device_map dict (transformers' ``{"": 0}``, or module names
    -> devices) is accepted when it names one device: model parallelism (layers on several devices) is not offered."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, dict):
        if not device or not all(isinstance(k, str) for k in device):
            raise ValueError(f"device_map must map module names (strings; '' = the whole model) to devices, got "
                             f"{device!r}")
        targets = {resolve_device(v) for v in device.values()}
        if len(targets) > 1:
            raise ValueError(f"device_map spreads the model over {', '.join(sorted(map(str, targets)))}: model "
                             f"parallelism is not supported; map every module to one device, e.g. {{'': 'cuda:0'}}")
        return targets.pop()
    if isinstance(device, str) and device in ("auto", "balanced", "balanced_low_0", "sequential"):
        if torch.cuda.device_count() > 1 and device != "auto":
            raise ValueError(f"device_map={device!r} would spread the model over {torch.cuda.device_count()} GPUs: "
                             f"model parallelism is not supported; give one device such as 'cuda:0'")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, (int, str, torch.device)):
        raise TypeError(f"device must be a device name, an index or a torch.device, got {type(device).__name__}")
    if isinstance(device, int):  # transformers' device_map indices are CUDA devices
        if device < 0:
            raise ValueError(f"device index must be >= 0, got {device}")
        device = f"cuda:{device}"
    if device == "disk":
        raise ValueError("device_map 'disk' (offloading weights to disk) is not supported")
    try:
        target = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device torch knows: {e}") from None
    if target.type == "cuda" and (not torch.cuda.is_available() or (target.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {str(target)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return target
