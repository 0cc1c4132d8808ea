"""gpt2: OpenAI's GPT-2 in PyTorch, TensorFlow and JAX/Flax over one framework-free core.

Public names are imported lazily: ``import gpt2`` imports numpy-level code only, never torch, tensorflow or jax.

>>> from gpt2 import GPT2Config
>>> GPT2Config.from_pretrained("gpt2").n_layer
12
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "GPT2Config": "gpt2.common.config",
    "load_checkpoint": "gpt2.common.checkpoint",
    "save_checkpoint": "gpt2.common.checkpoint",
    "CheckpointError": "gpt2.common.checkpoint",
    "convert": "gpt2.common.convert",
    "GPT2Tokenizer": "gpt2.common.tokenizer",
    "GPT2TokenizerFast": "gpt2.common.tokenizer_fast",
    "AddedToken": "gpt2.common.tokens",
    "BatchEncoding": "gpt2.common.encoding",
    "GenerationConfig": "gpt2.common.generation",
    # PyTorch classes (importing one of these imports torch)
    "GPT2Model": "gpt2.torch",
    "GPT2LMHeadModel": "gpt2.torch",
    "GPT2DoubleHeadsModel": "gpt2.torch",
    "GPT2ForSequenceClassification": "gpt2.torch",
    "GPT2ForTokenClassification": "gpt2.torch",
    "GPT2ForQuestionAnswering": "gpt2.torch",
    # TensorFlow classes (importing one of these imports tensorflow and Keras 3)
    "TFGPT2Model": "gpt2.tf",
    "TFGPT2LMHeadModel": "gpt2.tf",
    "TFGPT2DoubleHeadsModel": "gpt2.tf",
    "TFGPT2ForSequenceClassification": "gpt2.tf",
    "TFGPT2ForTokenClassification": "gpt2.tf",
    "TFGPT2ForQuestionAnswering": "gpt2.tf",
    "TFGPT2Tokenizer": "gpt2.tf",
    # JAX / Flax classes (importing one of these imports jax and flax)
    "FlaxGPT2Model": "gpt2.flax",
    "FlaxGPT2LMHeadModel": "gpt2.flax",
    "FlaxGPT2DoubleHeadsModel": "gpt2.flax",
    "FlaxGPT2ForSequenceClassification": "gpt2.flax",
    "FlaxGPT2ForTokenClassification": "gpt2.flax",
    "FlaxGPT2ForQuestionAnswering": "gpt2.flax",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpt2' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
