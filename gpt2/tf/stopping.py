"""When generate() stops: transformers' stopping criteria that run inside the compiled loop (max_length, eos as
the last token), in TensorFlow ops.

The criteria that need the host between steps cannot run inside an XLA-compiled ``tf.while_loop``: stop_strings
(decoding text) are checked by generation.py on the host between compiled chunks of steps (common/decoding.py
``StopStrings``), not here; max_time (the clock) and the caller's Python criteria are refused by name before
anything is traced (common/decoding.py ``UNSUPPORTED``, its tf column), and ``Stop`` refuses all three.
"""

from __future__ import annotations

import tensorflow as tf


class Stop:
    """transformers' stopping criteria: max_length, then eos as the last token. Returns done rows (bool (B,)).
    Traceable: ``length`` may be a scalar int tensor; nothing is read on the host."""

    def __init__(self, *, eos: list[int], max_length, max_time: float | None = None, stop_strings=None,
                 criteria=(), offset: int = 0) -> None:
        self.eos = tf.constant(eos, dtype=tf.int32) if eos else None
        self.max_length = max_length  # a Python int, or a scalar int tensor (traced: one compiled loop serves many)
        # what only the eager PyTorch loop can do (common/decoding.py UNSUPPORTED, tf column)
        self.max_time, self.start = max_time, None
        self.stop_strings, self.criteria = stop_strings, list(criteria)
        for name, given in (("max_time", max_time is not None), ("stop_strings", stop_strings is not None),
                            ("stopping_criteria", bool(self.criteria))):
            if given:
                raise ValueError(f"{name} is not supported in tf (TF decodes in one compiled loop, which cannot "
                                 f"run host code between steps)")
        self.offset = offset  # ids before it are no tokens (an inputs_embeds prompt): criteria never see them

    def __call__(self, ids: tf.Tensor, length, scores=None) -> tf.Tensor:
        """``ids`` (B, L): the ids buffer, of which the first ``length`` are written; done rows (B,) bool."""
        length = tf.cast(length, tf.int32)
        B = tf.shape(ids)[0]
        full = tf.fill([B], length >= tf.cast(self.max_length, tf.int32))
        if self.eos is None:
            return full
        last = tf.gather(ids, tf.maximum(length - 1, 0), axis=1)  # (B,): the last token written
        hit = tf.reduce_any(tf.equal(tf.cast(last, tf.int32)[:, None], self.eos[None, :]), axis=1)
        return full | hit
