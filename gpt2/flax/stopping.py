"""When generate() stops: transformers' stopping criteria that run inside the compiled loop (max_length, eos as
the last token), in jax.numpy.

The criteria that need the host between steps cannot run inside a jitted ``lax.while_loop``: stop_strings (decoding
text) are checked by generation.py on the host between compiled chunks of steps (common/decoding.py
``StopStrings``), as tf does, not here; max_time (the clock) and the caller's Python criteria are refused by name
before anything is traced (common/decoding.py ``UNSUPPORTED``, its flax column), and ``Stop`` refuses all three.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class Stop:
    """transformers' stopping criteria: max_length, then eos as the last token. Returns done rows (bool (B,)).
    Traceable: ``length`` and ``max_length`` may be traced int32 scalars; nothing is read on the host.

    Example::

        stop = Stop(eos=[50256], max_length=max_length)
        done = stop(ids_buffer, length)  # inside jax.jit / lax.while_loop
    """

    def __init__(self, *, eos: list[int], max_length, max_time: float | None = None, stop_strings=None,
                 criteria=(), offset: int = 0) -> None:
        self.eos = jnp.asarray(eos, dtype=jnp.int32) if eos else None
        self.max_length = max_length  # a Python int, or a traced int32 scalar (one compiled loop serves many)
        # what only the eager PyTorch loop can do (common/decoding.py UNSUPPORTED, flax column)
        self.max_time, self.start = max_time, None
        self.stop_strings, self.criteria = stop_strings, list(criteria)
        for name, given in (("max_time", max_time is not None), ("stop_strings", stop_strings is not None),
                            ("stopping_criteria", bool(self.criteria))):
            if given:
                raise ValueError(f"{name} is not supported in flax (JAX decodes in one compiled lax.while_loop, "
                                 f"which cannot run host code between steps)")
        self.offset = offset  # ids before it are no tokens (an inputs_embeds prompt): criteria never see them

    def __call__(self, ids: jax.Array, length, scores=None) -> jax.Array:
        """``ids`` (B, L): the ids buffer, of which the first ``length`` are written; done rows (B,) bool."""
        length = jnp.asarray(length, jnp.int32)
        B = ids.shape[0]
        full = jnp.broadcast_to(length >= jnp.asarray(self.max_length, jnp.int32), (B,))
        if self.eos is None:
            return full
        last = jax.lax.dynamic_index_in_dim(ids, jnp.maximum(length - 1, 0), axis=1, keepdims=False)  # (B,)
        hit = jnp.any(last.astype(jnp.int32)[:, None] == self.eos[None, :], axis=1)
        return full | hit
