"""What a tokenizer call returns, and the framework-free parts of shaping it: truncation, padding, tensors.

``BatchEncoding`` is transformers' dict-with-attributes (``enc["input_ids"]`` and ``enc.input_ids``); ``.to(device)``
moves PyTorch tensors. Tensors are made only when asked for (``return_tensors="np" | "pt" | "tf" | "jax"``), by
importing that framework at that moment: importing this module imports none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TENSOR_TYPES = ("np", "pt", "tf", "jax")
_FRAMEWORK = {"pt": ("torch", "torch"), "tf": ("tensorflow", "tf"), "jax": ("jax", "flax")}


class BatchEncoding(dict):
    """A dict of model inputs (input_ids, attention_mask, ...) that also reads as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'BatchEncoding' has no attribute {name!r}") from None

    @property
    def data(self) -> dict:
        return dict(self)

    def to(self, device, *, non_blocking: bool = False) -> "BatchEncoding":
        """Move PyTorch tensors to ``device`` (other values are left as they are)."""
        for key, value in self.items():
            if hasattr(value, "to") and callable(value.to):
                self[key] = value.to(device=device, non_blocking=non_blocking)
        return self

    def convert_to_tensors(self, tensor_type: str | None) -> "BatchEncoding":
        if tensor_type is not None:
            for key, value in self.items():
                self[key] = to_tensor(value, tensor_type, key)
        return self


def to_tensor(value, tensor_type: str, name: str = "input_ids"):
    """A (nested) list of ints -> an int64 tensor of ``tensor_type``; ragged lists get a clear ValueError."""
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"return_tensors must be one of {', '.join(TENSOR_TYPES)} or None, got {tensor_type!r}")
    try:
        array = np.asarray(value, dtype=np.int64)
    except ValueError:
        raise ValueError(
            f"cannot make a tensor of {name!r}: the sequences have different lengths; "
            "pass padding=True (and truncation=True) to get rectangular batches"
        ) from None
    if tensor_type == "np":
        return array
    module, extra = _FRAMEWORK[tensor_type]
    try:
        framework = __import__(module)
    except ImportError:
        raise ImportError(
            f"return_tensors={tensor_type!r} needs {module}, which is not installed: pip install 'gpt2[{extra}]'"
        ) from None
    if tensor_type == "pt":
        return framework.from_numpy(array)
    if tensor_type == "tf":
        return framework.constant(array)
    import jax.numpy as jnp

    return jnp.asarray(array)


def padding_strategy(padding, max_length: int | None) -> str:
    """transformers' padding argument -> "do_not_pad" | "longest" | "max_length"."""
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return "do_not_pad"
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length (or a tokenizer with a model_max_length)")
        return "max_length"
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def truncation_strategy(truncation) -> str:
    if truncation is True:
        return "longest_first"
    if truncation is False or truncation is None or truncation == "do_not_truncate":
        return "do_not_truncate"
    if truncation in ("longest_first", "only_first", "only_second"):
        return truncation
    raise ValueError(
        f"truncation must be True, False, 'longest_first', 'only_first', 'only_second' or 'do_not_truncate', "
        f"got {truncation!r}"
    )


def truncate_pair(first: list, second: list | None, max_length: int, strategy: str, side: str,
                  balanced: bool = False):
    """Cut (first, second) to at most ``max_length`` items together; returns the kept parts.

    ``first``/``second`` are lists of per-token records (so ids and offsets are cut together). For longest_first,
    transformers' two tokenizers differ and we follow each: the Python one removes one token at a time from the
    longer sequence (the second on ties); the Rust one (``balanced``) shortens the longer to what is left, and if
    both are too long gives each half, the odd token to the second.
    """
    second = second if second is not None else []
    excess = len(first) + len(second) - max_length
    if excess <= 0 or strategy == "do_not_truncate":
        return first, second
    cut_first = cut_second = 0
    if strategy == "longest_first" and balanced:
        a, b = len(first), len(second)
        short, long_ = min(a, b), max(a, b)
        if short > max_length // 2:
            short = max_length // 2
        long_ = max_length - short
        a, b = (long_, short) if a > b else (short, long_)
        cut_first, cut_second = max(len(first) - a, 0), max(len(second) - b, 0)
    elif strategy == "longest_first":
        a, b = len(first), len(second)
        for _ in range(excess):
            if a > b:
                a -= 1
            else:
                b -= 1
        cut_first, cut_second = len(first) - a, len(second) - b
    elif strategy == "only_first":
        cut_first = excess
    else:
        cut_second = excess
    # Like both of transformers' tokenizers, refuse to empty a sequence (transformers' Python one then logs an
    # error and returns the input untruncated; we raise).
    if (cut_first and cut_first >= len(first)) or (cut_second and cut_second >= len(second)):
        which = "first" if cut_first and cut_first >= len(first) else "second"
        raise ValueError(
            f"cannot truncate to max_length={max_length} with truncation={strategy!r}: the {which} sequence is "
            "too short to remove enough tokens; use truncation='longest_first'"
        )

    def cut(seq, n):
        if n == 0:
            return seq
        return seq[n:] if side == "left" else seq[: len(seq) - n]

    return cut(first, cut_first), cut(second, cut_second)


def overflow_windows(first: list, second: list | None, max_length: int, strategy: str, side: str, stride: int,
                     balanced: bool = True) -> list[tuple[list, list | None]]:
    """transformers' Rust tokenizer with return_overflowing_tokens: every (first, second) piece pair to encode.

    The kept pair comes first. A truncated sequence is cut into windows of its kept length, each starting ``stride``
    tokens before the previous one ends (from the end, on the left side); then, in the Rust merge order, each later
    window of the first sequence with the second's first window and with each of its later windows, and last the
    first window of the first sequence with each later window of the second.
    """
    total = len(first) + len(second or [])
    if strategy == "do_not_truncate" or total <= max_length:
        return [(first, second)]
    kept_first, kept_second = truncate_pair(first, second, max_length, strategy, side, balanced)
    a = _windows(first, len(kept_first), stride, side) if len(kept_first) < len(first) else [first]
    b = [second]
    if second is not None and len(kept_second) < len(second):
        b = _windows(second, len(kept_second), stride, side)
    out = [(a[0], b[0])]
    for later in a[1:]:
        out += [(later, b[0])] + [(later, other) for other in b[1:]]
    return out + [(a[0], other) for other in b[1:]]


def _windows(seq: list, size: int, stride: int, side: str) -> list[list]:
    """``seq`` in windows of ``size`` overlapping by ``stride`` (the Rust tokenizer's Encoding.truncate)."""
    if size == 0:
        return [[], seq]
    if stride >= size:
        raise ValueError(f"stride={stride} must be smaller than the length each window keeps ({size}: max_length "
                         f"less special tokens and the other sequence)")
    out, step, n = [], size - stride, len(seq)
    if side == "left":
        for last in range(n - 1, -1, -step):
            start = max(0, last + 1 - size)
            out.append(seq[start: last + 1])
            if start == 0:
                break
    else:
        for start in range(0, n, step):
            out.append(seq[start: start + size])
            if start + size >= n:
                break
    return out


def overflow_tail(first: list, second: list | None, max_length: int, strategy: str, side: str, stride: int) -> list:
    """transformers' Python tokenizer with return_overflowing_tokens: the tokens truncation removes, with the
    ``stride`` tokens before them (from the truncated sequence)."""
    if strategy == "longest_first" and second is not None:
        raise ValueError("return_overflowing_tokens with a pair of sequences needs truncation='only_first' or "
                         "'only_second', not 'longest_first' (transformers' rule)")
    excess = len(first) + len(second or []) - max_length
    if excess <= 0 or strategy == "do_not_truncate":
        return []
    seq = second if strategy == "only_second" else first
    window = min(len(seq), stride + excess)
    return seq[:window] if side == "left" else seq[len(seq) - window:]


def pad_rows(rows: list[dict], strategy: str, max_length: int | None, pad_to_multiple_of: int | None,
             side: str, pad_id: int | None) -> None:
    """Pad each row's lists in place to a common length. Rows hold input_ids and the keys that ride along."""
    if strategy == "do_not_pad" or not rows:
        return
    target = max(len(r["input_ids"]) for r in rows) if strategy == "longest" else max_length
    if pad_to_multiple_of:
        target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1,
            "offset_mapping": (0, 0), "position_ids": 0}
    for row in rows:
        missing = target - len(row["input_ids"])
        if missing <= 0:
            continue
        if pad_id is None:
            raise ValueError(
                "asked to pad but the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token "
                "(common for GPT-2) or add one with tokenizer.add_special_tokens({'pad_token': '[PAD]'})"
            )
        for key, values in row.items():
            if key in fill:
                pad = [fill[key]] * missing
                row[key] = pad + values if side == "left" else values + pad


def char_offsets(text: str, byte_lengths: np.ndarray) -> list[tuple[int, int]]:
    """Character spans of consecutive tokens of ``byte_lengths`` bytes each, over the UTF-8 bytes of ``text``.

    A token that holds part of a character's bytes spans that whole character, as transformers' fast tokenizers
    report it (two tokens of one emoji both cover the emoji).
    """
    if len(byte_lengths) == 0:
        return []
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    utf8_len = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    byte_to_char = np.repeat(np.arange(len(codepoints)), utf8_len)
    ends = np.cumsum(byte_lengths)
    if ends[-1] != len(byte_to_char):
        raise ValueError(f"tokens cover {ends[-1]} bytes but the text has {len(byte_to_char)}")
    starts = byte_to_char[ends - byte_lengths]
    stops = byte_to_char[ends - 1] + 1
    return list(zip(starts.tolist(), stops.tolist()))
