"""GPT-2 in JAX / Flax NNX: transformers' Flax class names and calling conventions (``params``, ``params=``,
``dropout_rng``, ``train``, ``init_cache``) over NNX modules.

>>> from gpt2.flax import FlaxGPT2Model
>>> model = FlaxGPT2Model.from_pretrained("path/or/name", dtype="bfloat16")   # bf16 compute, fp32 weights
>>> model(input_ids).last_hidden_state

Needs Flax with the NNX API of 0.12 or later (``nnx.List``); refused here, at import, with how to fix it.
"""

from flax import nnx

if not hasattr(nnx, "List"):
    import flax

    raise ImportError(f"gpt2.flax needs Flax >= 0.12 (the NNX API with nnx.List), found flax {flax.__version__}: "
                      f"pip install 'flax>=0.12'")

from ..common.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput  # noqa: E402
from ..common.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer  # noqa: E402  framework-free
from .cache import KVCache  # noqa: E402
from .heads import (  # noqa: E402
    FlaxGPT2DoubleHeadsModel,
    FlaxGPT2ForQuestionAnswering,
    FlaxGPT2ForSequenceClassification,
    FlaxGPT2ForTokenClassification,
    FlaxGPT2LMHeadModel,
)
from .model import FlaxGPT2Model  # noqa: E402
from .pretrained import FlaxGPT2PreTrainedModel  # noqa: E402

__all__ = [
    "FlaxGPT2DoubleHeadsModel", "FlaxGPT2ForQuestionAnswering", "FlaxGPT2ForSequenceClassification",
    "FlaxGPT2ForTokenClassification", "FlaxGPT2LMHeadModel", "FlaxGPT2Model", "FlaxGPT2PreTrainedModel", "KVCache",
    "TextStreamer", "TextIteratorStreamer", "BaseStreamer", "GenerateDecoderOnlyOutput",
    "GenerateBeamDecoderOnlyOutput",
]
