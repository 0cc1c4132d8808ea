"""Streamers for generate(), framework-free: transformers' TextStreamer (prints as it goes) and TextIteratorStreamer
(a queue read from another thread, e.g. a web UI), with the same arguments and behaviour. ``put`` takes any
array-like of token ids: a torch / TF / JAX tensor, a numpy array, a (nested) list.

>>> from threading import Thread
>>> streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
>>> Thread(target=model.generate, args=(ids,), kwargs=dict(max_new_tokens=50, streamer=streamer)).start()
>>> for text in streamer:
...     print(text, end="")
"""

from __future__ import annotations

from queue import Queue
from typing import Any


class BaseStreamer:
    """What generate() calls: ``put(ids)`` with the prompt (B, T), then with each step's tokens (B,); ``end()``."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _as_list(value: Any) -> Any:
    """Token ids as Python ints in nested lists, whatever array type holds them (TF eager tensors have no tolist)."""
    if not hasattr(value, "tolist") and hasattr(value, "numpy"):
        value = value.numpy()
    return value.tolist() if hasattr(value, "tolist") else value


class TextStreamer(BaseStreamer):
    """Print the text as it is generated (batch size 1), a word at a time, as transformers' TextStreamer.

    The text is decoded from all tokens since the last newline and printed up to its last space (a word may still
    change with the next token); a newline, a CJK character or ``end()`` flushes it.

    >>> model.generate(ids, max_new_tokens=30, streamer=TextStreamer(tokenizer, skip_prompt=True))
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, **decode_kwargs) -> None:
        self.tokenizer, self.skip_prompt, self.decode_kwargs = tokenizer, skip_prompt, decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        ids = _as_list(value)
        if not isinstance(ids, (list, tuple)):  # one id (a 0-d array)
            ids = [ids]
        if ids and isinstance(ids[0], (list, tuple)):  # a batch
            if len(ids) > 1:
                raise ValueError("TextStreamer only supports batch size 1")
            ids = ids[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            printable, self.token_cache, self.print_len = text[self.print_len:], [], 0
        elif text and _is_cjk(ord(text[-1])):
            printable = text[self.print_len:]
            self.print_len += len(printable)
        else:
            printable = text[self.print_len: text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        printable = ""
        if self.token_cache:
            printable = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)[self.print_len:]
            self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Print ``text`` (and a newline at the end of the stream); override to send it elsewhere."""
        print(text, flush=True, end=None if stream_end else "")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF),
                                              (0x2F800, 0x2FA1F)))


class TextIteratorStreamer(TextStreamer):
    """TextStreamer whose text goes to a queue instead of stdout: iterate over it (in another thread than the one
    running generate()) to get the text as it comes; the iteration ends with the generation. ``timeout``: seconds
    to wait for each piece (queue.Empty when they pass; None waits for ever), as in transformers."""

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value == self.stop_signal:
            raise StopIteration()
        return value
