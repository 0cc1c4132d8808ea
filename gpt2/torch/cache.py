"""The key/value cache of self-attention, for incremental decoding.

``KVCache`` holds, per layer, keys and values of shape (B, nh, T, hs). It grows by concatenation (``KVCache()``,
what a forward creates with ``use_cache=True``) or writes into buffers allocated once (``KVCache.static_cache(...)``,
what generate() uses: nothing is re-allocated per step).

The cache owns its write rule, so that Attention only calls ``cache.update(layer, k, v)``: a growing or static
cache appends at its length (a Python int, so the shapes it returns grow with it); ``static.at(position)`` is the
same buffers written at ``position``, a device tensor, returning the whole buffers (fixed shapes, no host value: what
the fixed-shape decoding step of compiled.py captures or compiles; its mask hides the slots not written yet). It reads like transformers' caches and legacy tuples:
``cache[i]`` is layer i's ``(k, v)``, ``len(cache)``, ``get_seq_length()``, ``to_legacy_cache()``, and
``KVCache.from_legacy_cache(tuples)`` accepts transformers' old format.

Models with cross-attention (add_cross_attention) also keep each layer's encoder keys/values here, computed at the
first forward that has encoder_hidden_states and re-used by the later ones (transformers' EncoderDecoderCache does
the same); legacy tuples are then ``(k, v, cross_k, cross_v)`` per layer.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer (k, v) of shape (B, nh, T, hs), growing or preallocated."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0  # tokens held (the same for every layer once a forward has finished)
        self.static = False
        self.position: torch.Tensor | None = None  # set by at(): write there, at fixed shapes
        self.cross_keys: list[torch.Tensor] = []  # encoder keys / values per layer (cross-attention), once computed
        self.cross_values: list[torch.Tensor] = []

    @classmethod
    def static_cache(cls, n_layer: int, batch_size: int, n_head: int, max_length: int, head_dim: int,
                     dtype: torch.dtype, device) -> "KVCache":
        """Buffers for ``max_length`` tokens, allocated once."""
        cache = cls()
        shape = (batch_size, n_head, max_length, head_dim)
        cache.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        cache.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        cache.static = True
        return cache

    @classmethod
    def for_model(cls, model, batch_size: int, max_length: int, device) -> "KVCache":
        """A static cache for ``model`` (its config and dtype): ``max_length`` tokens of ``batch_size`` rows."""
        c = model.config
        return cls.static_cache(c.n_layer, batch_size, c.n_head, max_length, c.n_embd // c.n_head, model.dtype, device)

    def at(self, position: torch.Tensor | int) -> "KVCache":
        """This static cache's buffers, written at ``position`` by ``update``: a (T,) long tensor on their device, and
        ``update`` returns the whole buffers (fixed shapes, never read on the host: what a captured step needs); or a
        host int n, and ``update`` appends there and returns the n + T positions written (an uncaptured step, whose
        shapes may grow: compiled.py on the CPU). Shares the buffers (and the lists holding them) with ``self``; the
        caller advances ``self``'s length."""
        if not self.static:
            raise ValueError("KVCache.at: only a static cache has fixed buffers to write at a position")
        view = KVCache()
        view.keys, view.values, view.cross_keys, view.cross_values = (self.keys, self.values, self.cross_keys,
                                                                      self.cross_values)
        view.static = True
        if isinstance(position, torch.Tensor):
            view.position = position
        else:
            view.length = position
        return view

    @classmethod
    def from_legacy_cache(cls, past) -> "KVCache":
        """From transformers' tuple format: ((k, v), ...) per layer."""
        cache = cls()
        for layer in past:
            if len(layer) not in (2, 4):
                raise ValueError(f"past_key_values: each layer must hold (key, value) or (key, value, cross_key, "
                                 f"cross_value), got {len(layer)} tensors")
            cache.keys.append(layer[0])
            cache.values.append(layer[1])
            if len(layer) == 4:
                cache.cross_keys.append(layer[2])
                cache.cross_values.append(layer[3])
        cache.length = cache.keys[0].shape[-2] if cache.keys else 0
        return cache

    @property
    def capacity(self) -> int | None:
        return self.keys[0].shape[-2] if self.static else None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's k, v (B, nh, T, hs) for ``layer``; return everything held so far for it (B, nh, S, hs):
        after what it holds, or at ``position`` (see ``at``) returning the whole buffers."""
        if self.position is not None:  # index_copy_: the position is a tensor, never read on the host
            self.keys[layer].index_copy_(2, self.position, k)
            self.values[layer].index_copy_(2, self.position, v)
            return self.keys[layer], self.values[layer]
        start = self.length
        end = start + k.shape[-2]
        if self.static:
            if end > self.keys[layer].shape[-2]:
                raise ValueError(f"the static KV cache holds {self.keys[layer].shape[-2]} tokens; {end} needed")
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
            k_all, v_all = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        elif layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
            k_all, v_all = k, v
        else:
            k_all = self.keys[layer] = torch.cat([self.keys[layer], k], dim=-2)
            v_all = self.values[layer] = torch.cat([self.values[layer], v], dim=-2)
        return k_all, v_all

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``layer``'s encoder keys and values, or None when not computed yet."""
        return (self.cross_keys[layer], self.cross_values[layer]) if layer < len(self.cross_keys) else None

    def set_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if layer != len(self.cross_keys):
            raise ValueError(f"cross-attention cache: layer {layer} stored out of order")
        self.cross_keys.append(k)
        self.cross_values.append(v)

    def advance(self, n: int) -> None:
        """Record that a forward added ``n`` tokens to every layer."""
        self.length += n

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, ...], ...]:
        if self.cross_keys:
            return tuple(self[i] + self.cross(i) for i in range(len(self)))
        return tuple(self[i] for i in range(len(self)))

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Keep batch rows ``beam_idx`` (beam search), in place."""
        for store in (self.keys, self.values, self.cross_keys, self.cross_values):
            for i, t in enumerate(store):
                store[i] = t.index_select(0, beam_idx.to(t.device))

    def crop(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens."""
        if not self.static:
            self.keys = [k[:, :, :length] for k in self.keys]
            self.values = [v[:, :, :length] for v in self.values]
        self.length = min(self.length, length)
