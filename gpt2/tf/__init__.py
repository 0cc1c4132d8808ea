"""GPT-2 in TensorFlow (Keras 3 layers, TensorFlow backend): transformers' TF class names and arguments.

>>> from gpt2.tf import TFGPT2LMHeadModel
>>> model = TFGPT2LMHeadModel.from_pretrained("path/or/name", dtype="auto")

Needs Keras 3 with the TensorFlow backend (tensorflow >= 2.16 installs it). Keras 2 (tf-keras) and the JAX / torch
backends of Keras 3 are refused here, at import, with how to fix it: the model's ops are TensorFlow ops.
"""

import keras

if not keras.__version__.startswith("3."):
    raise ImportError(
        f"gpt2.tf needs Keras 3 (found keras {keras.__version__}): pip install 'keras>=3' (tensorflow >= 2.16 "
        f"installs it); tf-keras (Keras 2) is not supported")
if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"gpt2.tf needs Keras 3's TensorFlow backend, but Keras is running the {keras.backend.backend()!r} backend: "
        f"set the environment variable KERAS_BACKEND=tensorflow before Python imports keras")

from ..common.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput  # noqa: E402
from ..common.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer  # noqa: E402  framework-free
from .cache import KVCache  # noqa: E402
from .heads import (  # noqa: E402
    TFGPT2DoubleHeadsModel,
    TFGPT2ForQuestionAnswering,
    TFGPT2ForSequenceClassification,
    TFGPT2ForTokenClassification,
    TFGPT2LMHeadModel,
)
from .model import TFGPT2Model  # noqa: E402
from .pretrained import TFGPT2PreTrainedModel  # noqa: E402
from .tokenizer import TFGPT2Tokenizer  # noqa: E402

__all__ = [
    "TFGPT2DoubleHeadsModel", "TFGPT2ForQuestionAnswering", "TFGPT2ForSequenceClassification",
    "TFGPT2ForTokenClassification", "TFGPT2LMHeadModel", "TFGPT2Model", "TFGPT2PreTrainedModel", "TFGPT2Tokenizer",
    "KVCache", "TextStreamer", "TextIteratorStreamer", "BaseStreamer",
    "GenerateDecoderOnlyOutput", "GenerateBeamDecoderOnlyOutput",
]
