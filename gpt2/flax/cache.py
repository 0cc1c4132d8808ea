"""The key/value cache of self-attention, for incremental decoding (a translation of gpt2/torch/cache.py).

``KVCache`` holds, per layer, keys and values of shape (B, nh, T, hs). It grows by concatenation (``KVCache()``,
what a forward creates with ``use_cache=True``) or writes into buffers allocated once (``KVCache.static_cache(...)``
or a model's ``init_cache(batch, max_length)``, what generate() uses).

JAX arrays are immutable, so where torch writes into a buffer in place, ``update`` computes the new buffer (XLA's
dynamic update slice, in place inside a compiled loop when the buffer is donated) and replaces the list entry:
``cache.keys[i]`` is always the current array. ``static.at(position)`` is the same buffers written at ``position``,
a traced scalar (or a (T,) vector of slots); ``update`` then returns the whole buffers (fixed shapes; the slots not
written yet are hidden by the caller's mask).

A cache is a JAX pytree (its arrays the leaves; whether it is static and the Python length held the static part),
so it passes through ``jax.jit``, ``lax.while_loop`` and ``jax.tree_util`` as it is. It reads like transformers'
caches and legacy tuples: ``cache[i]`` is layer i's ``(k, v)``, ``len(cache)``, ``get_seq_length()``,
``to_legacy_cache()``; ``KVCache.from_legacy_cache(past)`` takes ``((k, v), ...)`` tuples.

Models with cross-attention keep each layer's encoder keys/values here too, computed at the first forward that has
encoder_hidden_states; legacy tuples are then ``(k, v, cross_k, cross_v)`` per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class KVCache:
    """Per-layer (k, v) of shape (B, nh, T, hs), growing or preallocated.

    ``KVCache(keys, values, static=True, length=0)`` wraps existing buffers (lists of (B, nh, L, hs) arrays, one
    per layer): what a compiled decoding loop does with its loop state.
    """

    def __init__(self, keys=None, values=None, *, static: bool = False, length: int = 0) -> None:
        self.keys: list[jax.Array] = list(keys) if keys is not None else []
        self.values: list[jax.Array] = list(values) if values is not None else []
        if len(self.keys) != len(self.values):
            raise ValueError(f"KVCache: {len(self.keys)} key buffers but {len(self.values)} value buffers")
        self.length = length  # tokens held (a Python int; the same for every layer once a forward has finished)
        self.static = static
        self.position: jax.Array | None = None  # set by at(): write there, at fixed shapes
        self.cross_keys: list[jax.Array] = []  # encoder keys / values per layer (cross-attention), once computed
        self.cross_values: list[jax.Array] = []

    @classmethod
    def static_cache(cls, n_layer: int, batch_size: int, n_head: int, max_length: int, head_dim: int,
                     dtype=jnp.float32) -> "KVCache":
        """Buffers for ``max_length`` tokens, allocated once (zeros)."""
        shape = (batch_size, n_head, max_length, head_dim)
        return cls([jnp.zeros(shape, dtype) for _ in range(n_layer)], [jnp.zeros(shape, dtype) for _ in range(n_layer)],
                   static=True)

    @classmethod
    def for_model(cls, model, batch_size: int, max_length: int) -> "KVCache":
        """A static cache for ``model`` (its config and computation dtype): ``max_length`` tokens of
        ``batch_size``."""
        c = model.config
        return cls.static_cache(c.n_layer, batch_size, c.n_head, max_length, c.n_embd // c.n_head, model.dtype)

    def at(self, position) -> "KVCache":
        """This static cache's buffers, written at ``position`` by ``update``, which then returns the whole buffers.
        ``position``: a scalar int (the first of this step's T slots) or a (T,) vector of slots; never read on the
        host, so it may be traced. Shares the lists holding the buffers with ``self`` (an update through the view
        shows in ``self.keys``); the caller advances ``self``'s length."""
        if not self.static:
            raise ValueError("KVCache.at: only a static cache has fixed buffers to write at a position")
        view = KVCache(static=True, length=self.length)
        view.keys, view.values, view.cross_keys, view.cross_values = (self.keys, self.values, self.cross_keys,
                                                                      self.cross_values)
        view.position = jnp.asarray(position)
        return view

    @classmethod
    def from_legacy_cache(cls, past) -> "KVCache":
        """From transformers' tuple format: ((k, v), ...) or ((k, v, cross_k, cross_v), ...) per layer."""
        cache = cls()
        for layer in past:
            if len(layer) not in (2, 4):
                raise ValueError(f"past_key_values: each layer must hold (key, value) or (key, value, cross_key, "
                                 f"cross_value), got {len(layer)} arrays")
            k, v = jnp.asarray(layer[0]), jnp.asarray(layer[1])
            if k.ndim != 4 or k.shape != v.shape:
                raise ValueError(f"past_key_values: keys and values must be (B, nh, T, hs) of one shape, got "
                                 f"{tuple(k.shape)} and {tuple(v.shape)}")
            cache.keys.append(k)
            cache.values.append(v)
            if len(layer) == 4:
                cache.cross_keys.append(jnp.asarray(layer[2]))
                cache.cross_values.append(jnp.asarray(layer[3]))
        if cache.keys:
            cache.length = cache.keys[0].shape[-2]
        return cache

    @property
    def capacity(self) -> int | None:
        return self.keys[0].shape[-2] if self.static and self.keys else None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, layer: int, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Add this step's k, v (B, nh, T, hs) for ``layer``; return everything held so far for it (B, nh, S, hs):
        after what it holds, or at ``position`` (see ``at``) returning the whole buffers."""
        if self.position is not None:  # written at a traced position: no host value, fixed shapes
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
            self.keys[layer] = jnp.concatenate([self.keys[layer], k.astype(self.keys[layer].dtype)], axis=-2)
            self.values[layer] = jnp.concatenate([self.values[layer], v.astype(self.values[layer].dtype)], axis=-2)
        return self.keys[layer], self.values[layer]

    def cross(self, layer: int) -> tuple[jax.Array, jax.Array] | None:
        """Layer ``layer``'s encoder keys and values, or None when not computed yet."""
        return (self.cross_keys[layer], self.cross_values[layer]) if layer < len(self.cross_keys) else None

    def set_cross(self, layer: int, k: jax.Array, v: jax.Array) -> None:
        if layer != len(self.cross_keys):
            raise ValueError(f"cross-attention cache: layer {layer} stored out of order")
        self.cross_keys.append(k)
        self.cross_values.append(v)

    def advance(self, n: int) -> None:
        """Record that a forward added ``n`` tokens to every layer."""
        self.length += n

    def __getitem__(self, layer: int) -> tuple[jax.Array, jax.Array]:
        if self.static:
            return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]
        return self.keys[layer], self.values[layer]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> tuple[tuple[jax.Array, ...], ...]:
        """transformers' tuples, ((k, v), ...) (with (cross_k, cross_v) appended under cross-attention)."""
        if self.cross_keys:
            return tuple(self[i] + self.cross(i) for i in range(len(self)))
        return tuple(self[i] for i in range(len(self)))

    def reorder_cache(self, beam_idx) -> None:
        """Keep batch rows ``beam_idx`` (beam search): each buffer replaced by its gathered rows."""
        beam_idx = jnp.asarray(beam_idx)
        for store in (self.keys, self.values, self.cross_keys, self.cross_values):
            for i, t in enumerate(store):
                store[i] = jnp.take(t, beam_idx, axis=0)

    def crop(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens."""
        if not self.static:
            self.keys = [k[:, :, :length] for k in self.keys]
            self.values = [v[:, :, :length] for v in self.values]
        self.length = min(self.length, length)

    def _copy(self) -> "KVCache":
        """A new cache over the same arrays (new lists): a forward extends the copy, never its argument."""
        cache = KVCache(self.keys, self.values, static=self.static, length=self.length)
        cache.cross_keys, cache.cross_values = list(self.cross_keys), list(self.cross_values)
        cache.position = self.position
        return cache


def _flatten(cache: KVCache):
    children = (tuple(cache.keys), tuple(cache.values), tuple(cache.cross_keys), tuple(cache.cross_values),
                cache.position)
    return children, (cache.static, cache.length)


def _unflatten(aux, children) -> KVCache:
    static, length = aux
    keys, values, cross_keys, cross_values, position = children
    cache = KVCache(keys, values, static=static, length=length)
    cache.cross_keys, cache.cross_values, cache.position = list(cross_keys), list(cross_values), position
    return cache


jax.tree_util.register_pytree_node(KVCache, _flatten, _unflatten)


def _write(buffer: jax.Array, new: jax.Array, position) -> jax.Array:
    """``buffer`` (B, nh, L, hs) with ``new`` (B, nh, T, hs) written at slots ``position``: a start (int or scalar
    array; the caller keeps it within the buffer: a dynamic update slice clamps) or a (T,) vector of slots (one
    scatter of T rows per (batch, head)); XLA performs either in place when the buffer is donated."""
    new = new.astype(buffer.dtype)
    position = jnp.asarray(position)
    if position.ndim == 0:
        zero, position = jnp.zeros((), jnp.int32), position.astype(jnp.int32)
        if buffer.shape[0] == 1:
            # one row: the update on (nh, L, hs). On the 4-D buffer, XLA drops the size-1 dimension itself and then
            # copies the whole buffer twice per decoding step (the loop keeps it 3-D too: generation.Decoder)
            flat = jax.lax.dynamic_update_slice(buffer.reshape(buffer.shape[1:]), new.reshape(new.shape[1:]),
                                                (zero, position, zero))
            return flat.reshape(buffer.shape)
        return jax.lax.dynamic_update_slice(buffer, new, (zero, zero, position, zero))
    return buffer.at[:, :, position.astype(jnp.int32)].set(new)
