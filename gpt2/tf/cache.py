"""The key/value cache of self-attention, for incremental decoding (a translation of gpt2/torch/cache.py).

``KVCache`` holds, per layer, keys and values of shape (B, nh, T, hs). It grows by concatenation (``KVCache()``,
what a forward creates with ``use_cache=True``) or writes into buffers allocated once (``KVCache.static_cache(...)``,
what generate() uses).

TensorFlow tensors are immutable, so where torch writes into a buffer in place, ``update`` here computes the new
buffer and replaces the list entry: ``cache.keys[i]`` is always the current tensor. ``static.at(position)`` is the
same lists written at ``position``, a scalar int tensor (or a (T,) vector of positions), with a scatter (XLA's
in-place dynamic update inside a compiled loop); ``update`` then returns the whole buffers (fixed shapes, no host
value: the masked slots not written yet are hidden by the caller's mask). Inside ``tf.function`` a cache is built
from loop-variable tensors with the constructor: ``KVCache(keys, values, static=True).at(position)``, and the new
buffers are read back from ``cache.keys`` / ``cache.values`` after the forward.

It reads like transformers' caches and legacy tuples: ``cache[i]`` is layer i's ``(k, v)``, ``len(cache)``,
``get_seq_length()``, ``to_legacy_cache()``; ``KVCache.from_legacy_cache(past)`` accepts transformers' PyTorch
tuples ``((k, v), ...)`` and its TF format (per layer one stacked (2, B, nh, T, hs) tensor).

Models with cross-attention keep each layer's encoder keys/values here too, computed at the first forward that has
encoder_hidden_states; legacy tuples are then ``(k, v, cross_k, cross_v)`` per layer.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla  # dynamic_update_slice; runs eagerly too (transformers' TF uses it)


class KVCache:
    """Per-layer (k, v) of shape (B, nh, T, hs), growing or preallocated.

    ``KVCache(keys, values, static=True, length=0)`` wraps existing buffers (lists of (B, nh, L, hs) tensors, one
    per layer): what a compiled decoding loop does with its loop variables.
    """

    def __init__(self, keys=None, values=None, *, static: bool = False, length=0) -> None:
        self.keys: list[tf.Tensor] = list(keys) if keys is not None else []
        self.values: list[tf.Tensor] = list(values) if values is not None else []
        if len(self.keys) != len(self.values):
            raise ValueError(f"KVCache: {len(self.keys)} key buffers but {len(self.values)} value buffers")
        self.length = length  # tokens held (a Python int; the same for every layer once a forward has finished)
        self.static = static
        self.position: tf.Tensor | None = None  # set by at(): write there, at fixed shapes
        self.cross_keys: list[tf.Tensor] = []  # encoder keys / values per layer (cross-attention), once computed
        self.cross_values: list[tf.Tensor] = []

    @classmethod
    def static_cache(cls, n_layer: int, batch_size: int, n_head: int, max_length: int, head_dim: int,
                     dtype=tf.float32) -> "KVCache":
        """Buffers for ``max_length`` tokens, allocated once (zeros)."""
        shape = (batch_size, n_head, max_length, head_dim)
        return cls([tf.zeros(shape, dtype) for _ in range(n_layer)], [tf.zeros(shape, dtype) for _ in range(n_layer)],
                   static=True)

    @classmethod
    def for_model(cls, model, batch_size: int, max_length: int) -> "KVCache":
        """A static cache for ``model`` (its config and compute dtype): ``max_length`` tokens of ``batch_size``."""
        c = model.config
        return cls.static_cache(c.n_layer, batch_size, c.n_head, max_length, c.n_embd // c.n_head,
                                tf.as_dtype(model.compute_dtype))

    def at(self, position) -> "KVCache":
        """This static cache's buffers, written at ``position`` by ``update``, which then returns the whole buffers.
        ``position``: a scalar int tensor (the first of this step's T slots) or a (T,) vector of slots; never read
        on the host, so it may be a loop variable. Shares the lists holding the buffers with ``self`` (an update
        through the view shows in ``self.keys``); the caller advances ``self``'s length."""
        if not self.static:
            raise ValueError("KVCache.at: only a static cache has fixed buffers to write at a position")
        view = KVCache(static=True, length=self.length)
        view.keys, view.values, view.cross_keys, view.cross_values = (self.keys, self.values, self.cross_keys,
                                                                      self.cross_values)
        view.position = tf.convert_to_tensor(position)
        return view

    @classmethod
    def from_legacy_cache(cls, past) -> "KVCache":
        """From transformers' formats: PyTorch's ((k, v), ...) or ((k, v, cross_k, cross_v), ...) per layer, or
        TF's one stacked (2, B, nh, T, hs) tensor per layer."""
        cache = cls()
        for layer in past:
            if tf.is_tensor(layer) or hasattr(layer, "__array__"):
                layer = tf.convert_to_tensor(layer)
                if layer.shape.rank != 5 or layer.shape[0] != 2:
                    raise ValueError(f"past_key_values: a layer given as one tensor must be transformers' TF stack "
                                     f"(2, B, nh, T, hs), got shape {tuple(layer.shape)}")
                layer = tf.unstack(layer, axis=0)
            if len(layer) not in (2, 4):
                raise ValueError(f"past_key_values: each layer must hold (key, value) or (key, value, cross_key, "
                                 f"cross_value), got {len(layer)} tensors")
            cache.keys.append(tf.convert_to_tensor(layer[0]))
            cache.values.append(tf.convert_to_tensor(layer[1]))
            if len(layer) == 4:
                cache.cross_keys.append(tf.convert_to_tensor(layer[2]))
                cache.cross_values.append(tf.convert_to_tensor(layer[3]))
        if cache.keys:
            length = cache.keys[0].shape[-2]
            cache.length = length if length is not None else tf.shape(cache.keys[0])[-2]
        return cache

    @property
    def capacity(self) -> int | None:
        return self.keys[0].shape[-2] if self.static else None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, layer: int, k: tf.Tensor, v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Add this step's k, v (B, nh, T, hs) for ``layer``; return everything held so far for it (B, nh, S, hs):
        after what it holds, or at ``position`` (see ``at``) returning the whole buffers."""
        if self.position is not None:  # a scatter at a traced position: no host value, fixed shapes
            self.keys[layer] = _write(self.keys[layer], k, self.position)
            self.values[layer] = _write(self.values[layer], v, self.position)
            return self.keys[layer], self.values[layer]
        start = self.length
        if self.static:
            end = start + k.shape[-2]
            if end > self.keys[layer].shape[-2]:
                raise ValueError(f"the static KV cache holds {self.keys[layer].shape[-2]} tokens; {end} needed")
            self.keys[layer] = _write(self.keys[layer], k, start)
            self.values[layer] = _write(self.values[layer], v, start)
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = tf.concat([self.keys[layer], tf.cast(k, self.keys[layer].dtype)], axis=-2)
            self.values[layer] = tf.concat([self.values[layer], tf.cast(v, self.values[layer].dtype)], axis=-2)
        return self.keys[layer], self.values[layer]

    def cross(self, layer: int) -> tuple[tf.Tensor, tf.Tensor] | None:
        """Layer ``layer``'s encoder keys and values, or None when not computed yet."""
        return (self.cross_keys[layer], self.cross_values[layer]) if layer < len(self.cross_keys) else None

    def set_cross(self, layer: int, k: tf.Tensor, v: tf.Tensor) -> None:
        if layer != len(self.cross_keys):
            raise ValueError(f"cross-attention cache: layer {layer} stored out of order")
        self.cross_keys.append(k)
        self.cross_values.append(v)

    def advance(self, n) -> None:
        """Record that a forward added ``n`` tokens to every layer."""
        self.length += n

    def __getitem__(self, layer: int) -> tuple[tf.Tensor, tf.Tensor]:
        if self.static:
            return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]
        return self.keys[layer], self.values[layer]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> tuple[tuple[tf.Tensor, ...], ...]:
        """transformers' PyTorch tuples, ((k, v), ...) (with (cross_k, cross_v) appended under cross-attention);
        ``tf.stack(layer[:2])`` per layer gives its TF format."""
        if self.cross_keys:
            return tuple(self[i] + self.cross(i) for i in range(len(self)))
        return tuple(self[i] for i in range(len(self)))

    def reorder_cache(self, beam_idx) -> None:
        """Keep batch rows ``beam_idx`` (beam search): each buffer replaced by its gathered rows."""
        for store in (self.keys, self.values, self.cross_keys, self.cross_values):
            for i, t in enumerate(store):
                store[i] = tf.gather(t, beam_idx, axis=0)

    # TensorFlow's nest protocol: a cache crosses tf.function boundaries (``tf.function(model)`` returns it in its
    # output) as its tensors, its length and kind as static metadata.
    def __tf_flatten__(self):
        return (self.static, self.length), (tuple(self.keys), tuple(self.values), tuple(self.cross_keys),
                                            tuple(self.cross_values))

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        static, length = metadata
        cache = cls(components[0], components[1], static=static, length=length)
        cache.cross_keys, cache.cross_values = list(components[2]), list(components[3])
        return cache

    def crop(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens."""
        if not self.static:
            self.keys = [k[:, :, :length] for k in self.keys]
            self.values = [v[:, :, :length] for v in self.values]
        self.length = min(self.length, length)


def _write(buffer: tf.Tensor, new: tf.Tensor, position) -> tf.Tensor:
    """``buffer`` (B, nh, L, hs) with ``new`` (B, nh, T, hs) written at slots ``position``: a start (int or scalar
    tensor; the caller keeps it within the buffer: a dynamic update slice clamps) or a (T,) vector of slots (one
    scatter of T rows per (batch, head)); XLA performs either in place."""
    new = tf.cast(new, buffer.dtype)
    position = tf.convert_to_tensor(position)
    if position.shape.rank == 0:  # T slots from a start: XLA's dynamic update slice (cheaper to trace and compile)
        zero, position = tf.zeros((), tf.int32), tf.cast(position, tf.int32)
        if buffer.shape[0] == 1 and buffer.shape[1:].is_fully_defined() and new.shape[1:].is_fully_defined():
            # one row: the update on (nh, L, hs). On the 4-D buffer, XLA drops the size-1 dimension itself and then
            # copies the whole buffer twice per decoding step (the loop keeps it 3-D too: generation.Decoder)
            flat = xla.dynamic_update_slice(tf.reshape(buffer, buffer.shape[1:]), tf.reshape(new, new.shape[1:]),
                                            tf.stack([zero, position, zero]))
            return tf.reshape(flat, buffer.shape)
        return xla.dynamic_update_slice(buffer, new, tf.stack([zero, zero, position, zero]))
    shape = tf.shape(new)
    B, H, T = shape[0], shape[1], shape[2]
    position = tf.cast(position, tf.int32)
    slots = tf.reshape(position, [-1])
    b, h, t = tf.meshgrid(tf.range(B), tf.range(H), slots, indexing="ij")
    index = tf.stack([b, h, t], axis=-1)  # B x nh x T triples of (batch, head, slot)
    return tf.tensor_scatter_nd_update(buffer, index, new)
