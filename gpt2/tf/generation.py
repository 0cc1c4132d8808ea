"""generate() for the TensorFlow models: greedy, sampling and beam search, compiled with XLA.

The rules are gpt2/torch/generation.py's (transformers 4.57's), decided framework-free in gpt2.common.decoding;
this module is the TensorFlow plumbing.
"""

from __future__ import annotations

from ..common import loading
from ..common.generation import GENERATION_CONFIG_NAME, GenerationConfig


class GenerationMixin:
    """``generate()`` and ``generation_config`` for the models with a language-model head."""

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
        found = loading.generation_config(pretrained_model_name_or_path, revision=kwargs.get("revision"),
                                          cache_dir=kwargs.get("cache_dir"),
                                          local_files_only=kwargs.get("local_files_only", False))
        if found is not None:
            model.generation_config = found
        return result

    def _files_to_save(self) -> dict[str, str]:
        """generation_config.json too, as transformers writes it for generative models (in the same transaction
        as the weights)."""
        return {**super()._files_to_save(), GENERATION_CONFIG_NAME: self.generation_config.json_to_save()}
