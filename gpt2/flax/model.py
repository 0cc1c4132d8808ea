"""GPT-2 in JAX / Flax NNX: Attention, MLP, Block, FlaxGPT2Model (the trunk). Heads are in heads.py.

A translation of gpt2/torch/model.py. Attribute paths are the checkpoint names (``wte``, ``wpe``, ``h[i].ln_1``,
``h[i].attn.c_attn``, ...); projections are ``nnx.Linear`` whose kernel is [in, out], the checkpoints' own Conv1D
layout, so weights.py copies them as they are. The attention kernel is here too (one kernel, the explicit softmax;
XLA fuses it).

Modules are NNX (``*, rngs``, ``dtype`` for the computation, ``param_dtype`` for the weights); outside they take
transformers' FlaxGPT2 arguments (``params=``, ``dropout_rng=``, ``train=``). Every kernel carries a partitioning
annotation (``PARTITIONS``: Megatron's column / row split over a mesh axis named "model"), used only when the model
is sharded over a ``jax.sharding.Mesh`` (pretrained.py).

>>> from gpt2.flax import FlaxGPT2Model
>>> model = FlaxGPT2Model.from_pretrained("my-gpt2")     # any checkpoint format
>>> out = model(input_ids, attention_mask=mask)           # out.last_hidden_state: (B, T, C)
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..common.outputs import BaseModelOutputWithPastAndCrossAttentions
from .cache import KVCache
from .pretrained import FlaxGPT2PreTrainedModel


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's GELU, the tanh form (OpenAI gpt-2/src/model.py); jax.nn.gelu's default is also tanh, said here."""
    return jax.nn.gelu(x, approximate=True)


def gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def identity(x: jax.Array) -> jax.Array:
    return x


# jax.nn's functions are jitted wrappers that pickle by a name that is not theirs: a model keeps these instead.
def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def silu(x: jax.Array) -> jax.Array:
    return jax.nn.silu(x)


def tanh(x: jax.Array) -> jax.Array:
    return jnp.tanh(x)


def sigmoid(x: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(x)


# Module-level functions only (no lambdas): a model keeps its activation, and a model must pickle.
ACTIVATION_FUNCTIONS = {
    "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu_fast": gelu_tanh, "gelu": gelu_exact,
    "quick_gelu": quick_gelu, "relu": relu, "silu": silu, "swish": silu, "tanh": tanh, "sigmoid": sigmoid,
    "linear": identity,
}

# Megatron-style tensor parallelism over the mesh axis "model": the projections into the heads and the MLP's hidden
# layer are split by output columns, the projections back by input rows (one all-reduce per sub-layer), and the
# embedding tables by their C columns (the 50257-row vocabulary does not divide by a device count). Unsharded models
# ignore these names.
PARTITIONS = {
    "column": ((None, "model"), ("model",)),  # c_attn, q_attn, c_fc: kernel [in, out], bias [out]
    "row": (("model", None), (None,)),  # c_proj: kernel [in, out], bias [out]
    "embedding": (None, "model"),  # wte, wpe: [rows, C]
}


def activation(name: str):
    """The activation named by config.activation_function (common/numerics.py lists them)."""
    return ACTIVATION_FUNCTIONS[name]


def mask_value(dtype) -> float:
    """The most negative finite value of ``dtype`` (common/numerics.py: never -inf, so no row softmaxes to NaN)."""
    return float(jnp.finfo(dtype).min)


def scores_dtype(dtype, upcast: bool):
    """The dtype the attention scores are computed in, which is the dtype masks are built in: fp32 under
    reorder_and_upcast_attn, else the activations'."""
    return jnp.float32 if upcast else jnp.dtype(dtype)


def annotated(initializer, names: tuple):
    """``initializer`` with the mesh axis names of its dimensions. Not sharded when created (NNX's eager sharding
    needs a mesh at construction): pretrained.py places a model on a mesh from these names."""
    return nnx.with_partitioning(initializer, names, eager_sharding=False)


def linear(n_in: int, n_out: int, *, kind: str, std: float, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A projection [in, out] with GPT-2's N(0, std) init and its partitioning annotation (``PARTITIONS``)."""
    kernel, bias = PARTITIONS[kind]
    return nnx.Linear(n_in, n_out, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                      kernel_init=annotated(nnx.initializers.normal(std), kernel),
                      bias_init=annotated(nnx.initializers.zeros_init(), bias))


def eager_attention(q, k, v, *, mask, is_causal: bool, scale: float, dropout: nnx.Dropout, head_mask,
                    upcast: bool, rng=None):
    """softmax(q k^T * scale + mask) v over (B, nh, T|S, hs) arrays, all heads in one batched matmul; returns (y,
    probabilities). The softmax always runs in fp32 (bf16 / fp16 sums lose the small terms), and the mask is added
    in fp32 too: a finite fp16 minimum plus a negative fp16 score would round to -inf."""
    if upcast:  # reorder_and_upcast_attn: the product too in fp32 (fp16 scores can overflow)
        scores = jnp.matmul(q.astype(jnp.float32) * scale, jnp.swapaxes(k.astype(jnp.float32), -1, -2))
    else:  # scaling q (T x hs) before the product is cheaper than scaling the T x S scores, and the same maths
        scores = jnp.matmul(q * jnp.asarray(scale, q.dtype) if scale != 1.0 else q, jnp.swapaxes(k, -1, -2))
    scores = scores.astype(jnp.float32)
    if is_causal and mask is None:  # query i (the T new tokens are the last of S) sees keys j <= S - T + i
        T, S = q.shape[-2], k.shape[-2]
        keep = jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + (S - T)
        scores = jnp.where(keep, scores, mask_value(jnp.float32))
    elif mask is not None:
        scores = scores + mask.astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if rng is not None:  # training with a dropout key (inference never draws one)
        probs = dropout(probs, deterministic=False, rngs=rng())
    if head_mask is not None:
        probs = probs * head_mask.astype(probs.dtype)
    return jnp.matmul(probs, v), probs


class _DropoutKeys:
    """A fresh key at each call (``fold_in`` of a counter): one per dropout site, the same sites in the same order
    in every trace, so a ``dropout_rng`` reproduces its masks."""

    def __init__(self, key: jax.Array) -> None:
        self.key, self.count = key, 0

    def __call__(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def dropout_keys(dropout_rng, train: bool, config) -> _DropoutKeys | None:
    """The keys of a forward: None for inference (``train=False``: dropout off, transformers' Flax convention) or
    when every dropout rate is 0; with ``train=True`` a ``dropout_rng`` (a jax.random key) is required."""
    if not train or not any((config.embd_pdrop, config.attn_pdrop, config.resid_pdrop)):  # the trunk's rates
        return None
    if dropout_rng is None:
        raise ValueError("train=True runs dropout, which needs dropout_rng=jax.random.key(...) (or set the config's "
                         "dropout rates to 0)")
    return _DropoutKeys(dropout_rng)


def key_stream(key: jax.Array) -> _DropoutKeys:
    """A stream of dropout keys from ``key`` (a head's own dropout: heads.py), as ``dropout_keys`` gives the trunk."""
    return _DropoutKeys(key)


def apply_dropout(layer: nnx.Dropout, x: jax.Array, rng) -> jax.Array:
    """``layer`` in training (a key from the stream) or the identity (no stream: inference)."""
    return x if rng is None else layer(x, deterministic=False, rngs=rng())


class Attention(nnx.Module):
    """Multi-head self-attention (or cross-attention: queries from x, keys/values from the encoder)."""

    def __init__(self, config, layer_idx: int, is_cross_attention: bool = False, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs) -> None:
        C = config.n_embd
        self.n_head, self.head_dim = config.n_head, C // config.n_head
        self.layer_idx, self.is_cross_attention = layer_idx, is_cross_attention
        std = config.initializer_range
        dense = dict(std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if is_cross_attention:
            self.c_attn = linear(C, 2 * C, kind="column", **dense)  # keys and values, from the encoder
            self.q_attn = linear(C, C, kind="column", **dense)
        else:
            self.c_attn = linear(C, 3 * C, kind="column", **dense)
        # GPT-2 paper: the residual projections' init scaled by 1/sqrt(2 n_layer)
        self.c_proj = linear(C, C, kind="row", **{**dense, "std": std / math.sqrt(2 * config.n_layer)})
        self.attn_dropout = nnx.Dropout(config.attn_pdrop)
        self.resid_dropout = nnx.Dropout(config.resid_pdrop)
        self.scale = (1 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0) / (
            layer_idx + 1 if config.scale_attn_by_inverse_layer_idx else 1)
        self.upcast = config.reorder_and_upcast_attn
        self.implementation = "eager"  # JAX has one kernel: the explicit softmax above, fused by XLA

    def _heads(self, x: jax.Array) -> jax.Array:
        B, T = x.shape[:2]
        return jnp.swapaxes(x.reshape(B, T, self.n_head, self.head_dim), 1, 2)  # (B, nh, T, hs)

    def __call__(self, x, *, mask=None, is_causal=False, cache: KVCache | None = None, head_mask=None,
                 encoder_hidden_states=None, output_attentions=False, rng: _DropoutKeys | None = None):
        """(output (B, T, C), probabilities or None). The cache decides where this step's keys and values go
        (cache.py): appended after what it holds, or written at the fixed step's position."""
        B, T, C = x.shape
        if self.is_cross_attention:
            q = self._heads(self.q_attn(x))  # (B, nh, T, hs)
            held = cache.cross(self.layer_idx) if cache is not None else None
            if held is None:  # the encoder's keys and values: computed once, then re-used from the cache
                k, v = jnp.split(self.c_attn(encoder_hidden_states), 2, axis=-1)
                k, v = self._heads(k), self._heads(v)  # (B, nh, S, hs)
                if cache is not None:
                    cache.set_cross(self.layer_idx, k, v)
            else:
                k, v = held
        else:
            q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)  # one fused projection for all three
            q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, nh, T, hs)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S, hs)
        y, probs = eager_attention(q, k, v, mask=mask, is_causal=is_causal, scale=self.scale,
                                   dropout=self.attn_dropout, head_mask=head_mask, upcast=self.upcast, rng=rng)
        y = jnp.swapaxes(y, 1, 2).reshape(B, T, C)  # (B, T, C)
        return apply_dropout(self.resid_dropout, self.c_proj(y), rng), probs if output_attentions else None


class MLP(nnx.Module):
    def __init__(self, config, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs) -> None:
        std, C = config.initializer_range, config.n_embd
        dense = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_fc = linear(C, config.inner_dim, kind="column", std=std, **dense)
        self.c_proj = linear(config.inner_dim, C, kind="row", std=std / math.sqrt(2 * config.n_layer), **dense)
        self.act = activation(config.activation_function)
        self.dropout = nnx.Dropout(config.resid_pdrop)

    def __call__(self, x: jax.Array, *, rng: _DropoutKeys | None = None) -> jax.Array:
        return apply_dropout(self.dropout, self.c_proj(self.act(self.c_fc(x))), rng)


def layer_norm(C: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with the config's eps (NNX's default is 1e-6; GPT-2's 1e-5); Flax computes the mean and variance
    in at least fp32 whatever the input dtype."""
    return nnx.LayerNorm(C, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)) [+ crossattention(ln_cross_attn(x))] + mlp(ln_2(x))."""

    def __init__(self, config, layer_idx: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs) -> None:
        C, eps = config.n_embd, config.layer_norm_epsilon
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = layer_norm(C, eps, **kw)
        self.attn = Attention(config, layer_idx, **kw)
        self.ln_2 = layer_norm(C, eps, **kw)
        if config.add_cross_attention:
            self.crossattention = Attention(config, layer_idx, is_cross_attention=True, **kw)
            self.ln_cross_attn = layer_norm(C, eps, **kw)
        self.mlp = MLP(config, **kw)

    def __call__(self, x, *, mask=None, is_causal=False, cache=None, head_mask=None, encoder_hidden_states=None,
                 encoder_mask=None, output_attentions=False, rng: _DropoutKeys | None = None):
        """(x (B, T, C), self-attention probabilities, cross-attention probabilities); probabilities are None unless
        asked for. Cross-attention runs when ``encoder_hidden_states`` is given (FlaxGPT2Model checks that the
        block has it)."""
        a, self_probs = self.attn(self.ln_1(x), mask=mask, is_causal=is_causal, cache=cache, head_mask=head_mask,
                                  output_attentions=output_attentions, rng=rng)
        x = x + a
        cross_probs = None
        if encoder_hidden_states is not None:
            a, cross_probs = self.crossattention(self.ln_cross_attn(x), mask=encoder_mask, cache=cache,
                                                head_mask=head_mask, encoder_hidden_states=encoder_hidden_states,
                                                output_attentions=output_attentions, rng=rng)
            x = x + a
        return x + self.mlp(self.ln_2(x), rng=rng), self_probs, cross_probs


class FlaxGPT2Model(FlaxGPT2PreTrainedModel):
    """The GPT-2 trunk: embeddings, n_layer blocks, final LayerNorm. transformers' FlaxGPT2Model call arguments.

    ``__call__`` is the boundary: it checks the inputs on the host (under a trace, the value checks are host
    callbacks that fail the computation with the same words), embeds them (``embed``), builds the masks and
    resolves the cache. ``core`` runs the blocks and ``ln_f`` without a host read or a Python branch on array
    values; every path runs it: ``__call__`` and the fixed-shape decoding step of generate(), compiled in a
    ``lax.while_loop`` under ``jax.jit``.
    """

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 seed: int = 0) -> None:
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        config = self.config
        rngs = rngs if rngs is not None else nnx.Rngs(params=seed)
        C, std = config.n_embd, config.initializer_range
        embedding = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs,
                         embedding_init=annotated(nnx.initializers.normal(std), PARTITIONS["embedding"]))
        self.wte = nnx.Embed(config.vocab_size, C, **embedding)  # also the tied lm_head's matrix
        self.wpe = nnx.Embed(config.n_positions, C, **embedding)
        self.drop = nnx.Dropout(config.embd_pdrop)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.h = nnx.List([Block(config, i, **kw) for i in range(config.n_layer)])
        self.ln_f = layer_norm(C, config.layer_norm_epsilon, **kw)
        self.gradient_checkpointing = False

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, past_key_values=None,
                 dropout_rng=None, train: bool = False, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, token_type_ids=None, head_mask=None, inputs_embeds=None,
                 encoder_hidden_states=None, encoder_attention_mask=None, use_cache=None):
        """transformers' FlaxGPT2Model arguments (``params`` runs the model with those weights instead of its own,
        as its Flax models do; ``dropout_rng`` with ``train=True`` turns dropout on) plus the PyTorch model's
        keyword arguments. Returns BaseModelOutputWithPastAndCrossAttentions: last_hidden_state (B, T, C), the
        extended cache (a new KVCache: the one passed in is left as it was) when ``use_cache``."""
        if params is not None:
            return self._with_params(params)(
                input_ids, attention_mask, position_ids, None, past_key_values, dropout_rng, train, output_attentions,
                output_hidden_states, return_dict, token_type_ids=token_type_ids, head_mask=head_mask,
                inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, use_cache=use_cache)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        use_cache = (config.use_cache and not train) if use_cache is None else use_cache
        rng = dropout_keys(dropout_rng, train, config)
        if self.gradient_checkpointing and train:
            use_cache = False  # recomputed activations would write the cache twice
        cache = self._cache_from(past_key_values, use_cache)
        past = cache.get_seq_length() if cache is not None else 0
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if encoder_hidden_states is not None and not config.add_cross_attention:
            raise ValueError("encoder_hidden_states given, but the model has no cross-attention "
                             "(config.add_cross_attention=False)")
        input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds, encoder_hidden_states = (
            as_array(t) for t in (input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds,
                                  encoder_hidden_states))
        # (B, num_choices, T) inputs (FlaxGPT2DoubleHeadsModel) run as (B * num_choices, T) and are shaped back.
        input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        input_ids, token_type_ids, position_ids = _flat(input_ids), _flat(token_type_ids), _flat(position_ids)
        if attention_mask is not None and attention_mask.ndim == 3:
            attention_mask = _flat(attention_mask)
        if inputs_embeds is not None and inputs_embeds.ndim > 3:
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        B, T = self._check_inputs(input_ids, inputs_embeds, past, attention_mask, position_ids, token_type_ids,
                                  cache)
        if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape[1] > past + T:
            attention_mask = attention_mask[:, :past + T]  # transformers' Flax mask over a whole init_cache buffer
        if position_ids is None:
            position_ids = jnp.arange(past, past + T)[None, :]  # (1, T)
        x = self.embed(input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                       inputs_embeds=inputs_embeds, rng=rng)

        # masks in the dtype the scores are computed in (fp32 under reorder_and_upcast_attn), never the weights'
        dtype = scores_dtype(x.dtype, config.reorder_and_upcast_attn)
        mask, is_causal = self._self_attention_mask(attention_mask, B, T, past, dtype)
        encoder_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            padding = as_array(encoder_attention_mask).reshape(encoder_hidden_states.shape[0], -1)
            encoder_mask = (1.0 - padding[:, None, None, :].astype(dtype)) * mask_value(dtype)

        x, hidden_states, attentions, cross_attentions = self.core(
            x, mask=mask, is_causal=is_causal, cache=cache, head_masks=self._head_masks(head_mask, x.dtype),
            encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, rng=rng)
        if cache is not None:
            cache.advance(T)
        x = x.reshape(*input_shape, x.shape[-1])
        if output_hidden_states:
            hidden_states = hidden_states[:-1] + (x,)  # the last one in the caller's (B, num_choices, T, C) shape
        out = BaseModelOutputWithPastAndCrossAttentions(x, cache, hidden_states, attentions, cross_attentions)
        return out if return_dict else out.to_tuple()

    def embed(self, input_ids=None, *, position_ids, token_type_ids=None, inputs_embeds=None,
              rng: _DropoutKeys | None = None) -> jax.Array:
        """Token + position (+ token type) embeddings, after dropout: (B, T, C). Unchecked: __call__ checks."""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)  # (B, T, C)
        T = x.shape[1]
        x = x + self.wpe(position_ids.reshape(-1, T))
        if token_type_ids is not None:  # GPT-2 embeds token types with the token table, as transformers does
            x = x + self.wte(token_type_ids.reshape(-1, T))
        return apply_dropout(self.drop, x, rng)

    def core(self, x, *, mask=None, is_causal=False, cache: KVCache | None = None, head_masks=None,
             encoder_hidden_states=None, encoder_mask=None, output_attentions=False, output_hidden_states=False,
             rng: _DropoutKeys | None = None):
        """The blocks and ``ln_f`` over embedded ``x`` (B, T, C); returns (x, hidden states, attentions,
        cross-attentions), the last three tuples or None.

        ``mask``: additive (B|1, 1, T, S) (or (T, S)) in the scores' dtype, or None with ``is_causal``; ``cache``
        takes each layer's keys and values by its own rule (cache.py). Nothing here reads an array's value on the
        host, so generate() traces it under ``jax.jit``; the caller advances the cache.
        """
        hidden_states = () if output_hidden_states else None
        attentions = () if output_attentions else None
        cross_attentions = () if output_attentions and self.config.add_cross_attention else None
        checkpointed = self.gradient_checkpointing and rng is not None
        for i, block in enumerate(self.h):
            if output_hidden_states:
                hidden_states += (x,)
            kwargs = dict(mask=mask, is_causal=is_causal, cache=cache,
                          head_mask=head_masks[i] if head_masks is not None else None,
                          encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                          output_attentions=output_attentions, rng=rng)
            if checkpointed:  # activations recomputed in the backward pass (no cache: __call__ turned it off)
                x = nnx.remat(partial(_block_output, kwargs))(block, x)
                self_probs = cross_probs = None
            else:
                x, self_probs, cross_probs = block(x, **kwargs)
            if output_attentions:
                attentions += (self_probs,)
                if cross_attentions is not None:
                    cross_attentions += (cross_probs,)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden_states += (x,)
        return x, hidden_states, attentions, cross_attentions

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _cache_from(self, past_key_values, use_cache: bool) -> KVCache | None:
        if past_key_values is None:
            return KVCache() if use_cache else None
        if isinstance(past_key_values, KVCache):
            return past_key_values._copy()  # the caller's is left as it was; the output holds the extended one
        if isinstance(past_key_values, (tuple, list)):
            return KVCache.from_legacy_cache(past_key_values)
        raise TypeError(f"past_key_values must be a KVCache (init_cache gives one) or transformers' tuple format, "
                        f"got {type(past_key_values).__name__}")

    def _check_inputs(self, input_ids, inputs_embeds, past: int, attention_mask, position_ids, token_type_ids,
                      cache: KVCache | None):
        """Validate once, at the boundary, before any gather (JAX gathers clamp out-of-range indices: a wrong
        answer, never an error); returns (B, T). Values are read on the host; under a trace, by a host callback."""
        V, P = self.config.vocab_size, self.config.n_positions
        if input_ids is not None:
            if not jnp.issubdtype(input_ids.dtype, jnp.integer):
                raise TypeError(f"input_ids must be an integer array, got {input_ids.dtype}")
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
            check_range(input_ids, V, "input_ids", "the vocabulary")
            B, T = input_ids.shape
        elif inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.n_embd:
            raise ValueError(f"inputs_embeds must be (B, T, {self.config.n_embd}), got {tuple(inputs_embeds.shape)}")
        else:
            B, T = inputs_embeds.shape[:2]
        if cache is not None and cache.capacity is not None and past + T > cache.capacity:
            raise ValueError(f"the static KV cache holds {cache.capacity} tokens; {past} cached + {T} new = "
                             f"{past + T} needed")
        if position_ids is None:
            if past + T > P:
                raise ValueError(f"{past + T} positions ({past} cached + {T} new) exceed n_positions={P}: GPT-2 has "
                                 f"no position embedding beyond {P - 1}")
        else:
            if position_ids.shape[-1] != T:
                raise ValueError(f"position_ids has length {position_ids.shape[-1]}, input has {T}")
            check_range(position_ids, P, "position_ids", f"the position table (n_positions={P})")
        if token_type_ids is not None:
            if token_type_ids.shape[-1] != T:
                raise ValueError(f"token_type_ids has length {token_type_ids.shape[-1]}, input has {T}")
            check_range(token_type_ids, V, "token_type_ids", "the vocabulary")
        if attention_mask is not None and attention_mask.ndim == 2:
            width = attention_mask.shape[1]
            buffer = cache.capacity if cache is not None and cache.capacity is not None else None
            if attention_mask.shape[0] != B or width not in (past + T, buffer):
                expected = f"(batch, cached + new tokens) = {(B, past + T)}" + (
                    f" or (batch, the cache's {buffer} slots)" if buffer is not None else "")
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected}")
        elif attention_mask is not None and attention_mask.ndim != 4:
            raise ValueError(f"attention_mask must be (batch, cached + new tokens) or an additive 4-D mask, got shape "
                             f"{tuple(attention_mask.shape)}")
        return B, T

    def _self_attention_mask(self, attention_mask, B, T, past, dtype):
        """(additive mask or None, is_causal) for the self-attention of this step."""
        S = past + T
        if attention_mask is not None and attention_mask.ndim == 4:  # a ready additive mask, as transformers takes
            # narrowed (an fp32 mask for fp16 scores) its minimum would become -inf: keep it finite (numerics.py)
            return jnp.maximum(attention_mask.astype(dtype), mask_value(dtype)), False
        if attention_mask is not None and is_concrete(attention_mask) and bool(np.all(np.asarray(attention_mask))):
            attention_mask = None
        if attention_mask is None and (T == 1 or past == 0):
            # one new token sees everything; a fresh sequence is causal, aligned bottom-right
            return None, T != 1
        causal = jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + past  # (T, S): query i sees keys <= past+i
        mask = jnp.where(causal, jnp.zeros((), dtype), jnp.asarray(mask_value(dtype), dtype))  # (T, S)
        if attention_mask is not None:
            # Padding keys get half the mask value: a real query sees neither, but a padding query (all its keys
            # padding) spreads evenly over the keys before it, exactly as transformers' (causal, then padding)
            # masks give. Finite either way: no NaN.
            padding = (attention_mask == 0)[:, None, None, :]  # (B, 1, 1, S)
            mask = jnp.where(padding & causal, jnp.asarray(mask_value(dtype) / 2, dtype), mask)  # (B, 1, T, S)
        return mask, False

    def _head_masks(self, head_mask, dtype):
        """transformers' head_mask ((n_head,) or (n_layer, n_head); 1 keeps a head) -> per layer (1, nh, 1, 1)."""
        L, H = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * L
        head_mask = as_array(head_mask)
        if tuple(head_mask.shape) == (H,):
            head_mask = jnp.broadcast_to(head_mask, (L, H))
        if tuple(head_mask.shape) != (L, H):
            raise ValueError(f"head_mask must have shape ({H},) or ({L}, {H}), got {tuple(head_mask.shape)}")
        return [head_mask[i].astype(dtype).reshape(1, H, 1, 1) for i in range(L)]


def as_array(t):
    """numpy arrays, nested lists and torch-free array-likes as JAX arrays (tracers pass through)."""
    return t if t is None or isinstance(t, jax.Array) else jnp.asarray(t)


def is_concrete(x) -> bool:
    """Whether ``x``'s value can be read on the host (not a tracer of jax.jit / vmap / grad)."""
    return not isinstance(x, jax.core.Tracer)


def _flat(t):
    """(..., T) -> (N, T): FlaxGPT2DoubleHeadsModel's (B, num_choices, T) inputs run as one batch."""
    return t.reshape(-1, t.shape[-1]) if t is not None and t.ndim > 2 else t


def _block_output(kwargs, block, x):
    """``block`` as a function of (block, x) alone: nnx.remat differentiates with respect to its arguments."""
    return block(x, **kwargs)[0]


def refuse_outside(values, *, size: int, name: str, what: str) -> None:
    """ValueError naming the first value of ``values`` outside [0, size) (the host half of ``check_range``)."""
    values = np.asarray(values)
    if values.size:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= size:
            raise ValueError(f"{name} holds {low if low < 0 else high}, outside {what} (0..{size - 1})")


def check_range(ids, size: int, name: str, what: str) -> None:
    """Refuse ids outside [0, size) before a gather reads them (JAX clamps them silently). Concrete arrays are read
    on the host; under jax.jit a host callback fails the computation with the same message (generate() checks its
    inputs before tracing, so its compiled loop carries none)."""
    if is_concrete(ids):
        refuse_outside(ids, size=size, name=name, what=what)
    else:
        jax.debug.callback(partial(refuse_outside, size=size, name=name, what=what), ids)
