"""The streamers generate() accepts (``from gpt2.torch import TextStreamer``): framework-free, in
gpt2/common/streamers.py, and re-exported here; they take torch tensors as any other array of ids."""

from ..common.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer

__all__ = ["BaseStreamer", "TextIteratorStreamer", "TextStreamer"]
