"""GPT-2 in PyTorch: the model classes of transformers' GPT-2, with the same names and arguments.

>>> from gpt2.torch import GPT2LMHeadModel
>>> model = GPT2LMHeadModel.from_pretrained("path/or/name", torch_dtype="auto", attn_implementation="sdpa")
"""

from .cache import KVCache
from ..common.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from ..common.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer  # framework-free, re-exported
from .heads import (
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
)
from .model import GPT2Model
from .pretrained import GPT2PreTrainedModel

__all__ = [
    "GPT2DoubleHeadsModel", "GPT2ForQuestionAnswering", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
    "GPT2LMHeadModel", "GPT2Model", "GPT2PreTrainedModel", "KVCache", "TextStreamer", "TextIteratorStreamer",
    "BaseStreamer",
    "GenerateDecoderOnlyOutput", "GenerateBeamDecoderOnlyOutput",
]
