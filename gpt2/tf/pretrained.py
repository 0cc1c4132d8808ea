"""The base class of every TensorFlow model: config, from_pretrained / save_pretrained, dtype plumbing, embeddings
utilities, Keras training (compile() without a loss: the model's own loss).

A translation of gpt2/torch/pretrained.py: the same public methods in the same order, each with its TF meaning.
"""

from __future__ import annotations

import keras

from ..common.config import GPT2Config


class TFGPT2PreTrainedModel(keras.Model):
    """Base of every TF model class: config, from_pretrained / save_pretrained, embeddings utilities."""

    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
        config.validate()
        # The model's own copy: heads set fields of their own, and the caller's config must not change under it.
        self.config = config.copy()
