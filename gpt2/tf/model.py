"""GPT-2 in TensorFlow (Keras 3 layers): Attention, MLP, Block, TFGPT2Model (the trunk). Heads are in heads.py.

A translation of gpt2/torch/model.py. Attribute paths are the checkpoint names (``wte``, ``wpe``, ``h[i].ln_1``,
``h[i].attn.c_attn``, ...); projections are ``keras.layers.Dense`` whose kernel is [in, out], the checkpoints' own
Conv1D layout, so weights.py copies them as they are. The attention kernel is here too (TF has one, the explicit
softmax; torch keeps its three in attention.py).

>>> from gpt2.tf import TFGPT2Model
>>> model = TFGPT2Model.from_pretrained("my-gpt2")     # any checkpoint format
>>> out = model(input_ids, attention_mask=mask)        # out.last_hidden_state: (B, T, C)
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ..common.outputs import BaseModelOutputWithPastAndCrossAttentions
from .cache import KVCache
from .pretrained import TFGPT2PreTrainedModel


def gelu_tanh(x: tf.Tensor) -> tf.Tensor:
    """GPT-2's GELU, the tanh form (OpenAI gpt-2/src/model.py); tf.nn.gelu's default is the exact erf form."""
    return tf.nn.gelu(x, approximate=True)


def gelu_exact(x: tf.Tensor) -> tf.Tensor:
    return tf.nn.gelu(x, approximate=False)


def quick_gelu(x: tf.Tensor) -> tf.Tensor:
    return x * tf.sigmoid(tf.cast(1.702, x.dtype) * x)


def identity(x: tf.Tensor) -> tf.Tensor:
    return x


# Module-level functions only (no lambdas): a model keeps its activation, and a model must pickle.
ACTIVATION_FUNCTIONS = {
    "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu_fast": gelu_tanh, "gelu": gelu_exact,
    "quick_gelu": quick_gelu, "relu": tf.nn.relu, "silu": tf.nn.silu, "swish": tf.nn.silu, "tanh": tf.tanh,
    "sigmoid": tf.sigmoid, "linear": identity,
}


def activation(name: str):
    """The activation named by config.activation_function (common/numerics.py lists them)."""
    return ACTIVATION_FUNCTIONS[name]


def mask_value(dtype) -> float:
    """The most negative finite value of ``dtype`` (common/numerics.py: never -inf, so no row softmaxes to NaN)."""
    return tf.as_dtype(dtype).min


def scores_dtype(dtype, upcast: bool) -> tf.DType:
    """The dtype the attention scores are computed in, which is the dtype masks are built in: fp32 under
    reorder_and_upcast_attn, else the activations' (the compute dtype of a Keras mixed-precision policy)."""
    return tf.float32 if upcast else tf.as_dtype(dtype)


def eager_attention(q, k, v, *, mask, is_causal: bool, scale: float, dropout, head_mask, upcast: bool,
                    training=None):
    """softmax(q k^T * scale + mask) v over (B, nh, T|S, hs) tensors, all heads in one batched matmul; returns (y,
    probabilities). The softmax always runs in fp32 (fp16's exp overflows and its sums lose the small terms), and
    the mask is added in fp32 too: a finite fp16 minimum plus a negative fp16 score would round to -inf."""
    if upcast:  # reorder_and_upcast_attn: the product too in fp32 (fp16 scores can overflow)
        scores = tf.matmul(tf.cast(q, tf.float32) * scale, tf.cast(k, tf.float32), transpose_b=True)
    else:  # scaling q (T x hs) before the product is cheaper than scaling the T x S scores, and the same maths
        scores = tf.matmul(q * tf.cast(scale, q.dtype) if scale != 1.0 else q, k, transpose_b=True)
    scores = tf.cast(scores, tf.float32)
    if is_causal and mask is None:  # query i (the T new tokens are the last of S) sees keys j <= S - T + i
        T, S = tf.shape(q)[-2], tf.shape(k)[-2]
        keep = tf.range(S)[None, :] <= tf.range(T)[:, None] + (S - T)
        scores = tf.where(keep, scores, mask_value(tf.float32))
    elif mask is not None:
        scores = scores + tf.cast(mask, tf.float32)
    probs = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)
    probs = dropout(probs, training=training)
    if head_mask is not None:
        probs = probs * tf.cast(head_mask, probs.dtype)
    return tf.matmul(probs, v), probs


def _no_keras_mask(self, inputs, previous_mask=None):
    """Keras reads a ``mask`` keyword as its own padding-mask machinery (and warns that a layer "destroys" it);
    ours is an additive attention mask, and the outputs carry no Keras mask."""
    return None


def build_once(layer: keras.layers.Layer, shape=None) -> None:
    """Build ``layer`` unless it is built already: a forward through a sub-layer (generate()'s prompt pass runs the
    trunk's own embed and core) builds it before the model's own build() runs."""
    if not layer.built:
        layer.build(shape)


def static_dims(x: tf.Tensor) -> list:
    """x's dimensions: Python ints where the shape is static, scalar tensors where it is not (traced shapes)."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]


class Attention(keras.layers.Layer):
    """Multi-head self-attention (or cross-attention: queries from x, keys/values from the encoder).

    ``autocast=False``: the layer holds no variables of its own, and Keras must not cast its float keyword
    arguments (an fp32 mask would become -inf in fp16); its Dense layers cast their own inputs."""

    compute_mask = _no_keras_mask

    def __init__(self, config, layer_idx: int, is_cross_attention: bool = False, **kwargs) -> None:
        super().__init__(autocast=False, **kwargs)
        C = config.n_embd
        self.n_head, self.head_dim = config.n_head, C // config.n_head
        self.layer_idx, self.is_cross_attention = layer_idx, is_cross_attention
        std = config.initializer_range
        dense = dict(kernel_initializer=keras.initializers.RandomNormal(stddev=std), dtype=self.dtype_policy)
        if is_cross_attention:
            self.c_attn = keras.layers.Dense(2 * C, name="c_attn", **dense)  # keys and values, from the encoder
            self.q_attn = keras.layers.Dense(C, name="q_attn", **dense)
        else:
            self.c_attn = keras.layers.Dense(3 * C, name="c_attn", **dense)
        # GPT-2 paper: the residual projections' init scaled by 1/sqrt(2 n_layer)
        self.c_proj = keras.layers.Dense(C, name="c_proj", **{
            **dense, "kernel_initializer": keras.initializers.RandomNormal(stddev=std / math.sqrt(2 * config.n_layer))})
        self.attn_dropout = keras.layers.Dropout(config.attn_pdrop, dtype=self.dtype_policy)
        self.resid_dropout = keras.layers.Dropout(config.resid_pdrop, dtype=self.dtype_policy)
        self.scale = (1 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0) / (
            layer_idx + 1 if config.scale_attn_by_inverse_layer_idx else 1)
        self.upcast = config.reorder_and_upcast_attn
        self.implementation = "eager"  # TF has one kernel: the explicit softmax above

    def build(self, input_shape=None) -> None:
        C = self.n_head * self.head_dim
        build_once(self.c_attn, (None, None, C))
        if self.is_cross_attention:
            build_once(self.q_attn, (None, None, C))
        build_once(self.c_proj, (None, None, C))
        self.built = True

    def _heads(self, x: tf.Tensor) -> tf.Tensor:
        B, T = static_dims(x)[:2]
        return tf.transpose(tf.reshape(x, [B, T, self.n_head, self.head_dim]), [0, 2, 1, 3])  # (B, nh, T, hs)

    def call(self, x, *, mask=None, is_causal=False, cache: KVCache | None = None, head_mask=None,
             encoder_hidden_states=None, output_attentions=False, training=None):
        """(output (B, T, C), probabilities or None). The cache decides where this step's keys and values go
        (cache.py): appended after what it holds, or written at the fixed step's position."""
        B, T, C = static_dims(x)
        if self.is_cross_attention:
            q = self._heads(self.q_attn(x))  # (B, nh, T, hs)
            held = cache.cross(self.layer_idx) if cache is not None else None
            if held is None:  # the encoder's keys and values: computed once, then re-used from the cache
                k, v = tf.split(self.c_attn(encoder_hidden_states), 2, axis=-1)
                k, v = self._heads(k), self._heads(v)  # (B, nh, S, hs)
                if cache is not None:
                    cache.set_cross(self.layer_idx, k, v)
            else:
                k, v = held
        else:
            q, k, v = tf.split(self.c_attn(x), 3, axis=-1)  # one fused projection for all three
            q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, nh, T, hs)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S, hs)
        y, probs = eager_attention(q, k, v, mask=mask, is_causal=is_causal, scale=self.scale,
                                   dropout=self.attn_dropout, head_mask=head_mask, upcast=self.upcast,
                                   training=training)
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [B, T, C])  # (B, T, C)
        return self.resid_dropout(self.c_proj(y), training=training), probs if output_attentions else None


class MLP(keras.layers.Layer):
    def __init__(self, config, **kwargs) -> None:
        super().__init__(**kwargs)
        std = config.initializer_range
        self.c_fc = keras.layers.Dense(config.inner_dim, name="c_fc", dtype=self.dtype_policy,
                                       kernel_initializer=keras.initializers.RandomNormal(stddev=std))
        self.c_proj = keras.layers.Dense(config.n_embd, name="c_proj", dtype=self.dtype_policy,
                                         kernel_initializer=keras.initializers.RandomNormal(
                                             stddev=std / math.sqrt(2 * config.n_layer)))
        self.act = activation(config.activation_function)
        self.dropout = keras.layers.Dropout(config.resid_pdrop, dtype=self.dtype_policy)
        self._n_embd = config.n_embd

    def build(self, input_shape=None) -> None:
        build_once(self.c_fc, (None, None, self._n_embd))
        build_once(self.c_proj, (None, None, self.c_fc.units))
        self.built = True

    def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))), training=training)


class Block(keras.layers.Layer):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)) [+ crossattention(ln_cross_attn(x))] + mlp(ln_2(x)).
    LayerNorm statistics are fp32 under mixed precision (Keras' layer_normalization computes in at least fp32)."""

    compute_mask = _no_keras_mask

    def __init__(self, config, layer_idx: int, **kwargs) -> None:
        super().__init__(autocast=False, **kwargs)  # as Attention: its float keyword arguments stay as given
        C, eps, policy = config.n_embd, config.layer_norm_epsilon, self.dtype_policy
        self.ln_1 = keras.layers.LayerNormalization(epsilon=eps, name="ln_1", dtype=policy)
        self.attn = Attention(config, layer_idx, name="attn", dtype=policy)
        self.ln_2 = keras.layers.LayerNormalization(epsilon=eps, name="ln_2", dtype=policy)
        if config.add_cross_attention:
            self.crossattention = Attention(config, layer_idx, is_cross_attention=True, name="crossattention",
                                            dtype=policy)
            self.ln_cross_attn = keras.layers.LayerNormalization(epsilon=eps, name="ln_cross_attn", dtype=policy)
        self.mlp = MLP(config, name="mlp", dtype=policy)
        self._n_embd = C

    def build(self, input_shape=None) -> None:
        shape = (None, None, self._n_embd)
        for layer in (self.ln_1, self.attn, self.ln_2, getattr(self, "crossattention", None),
                      getattr(self, "ln_cross_attn", None), self.mlp):
            if layer is not None:
                build_once(layer, shape)
        self.built = True

    def call(self, x, *, mask=None, is_causal=False, cache=None, head_mask=None, encoder_hidden_states=None,
             encoder_mask=None, output_attentions=False, training=None):
        """(x (B, T, C), self-attention probabilities, cross-attention probabilities); probabilities are None unless
        asked for. Cross-attention runs when ``encoder_hidden_states`` is given (TFGPT2Model.call checks that the
        block has it)."""
        a, self_probs = self.attn(self.ln_1(x), mask=mask, is_causal=is_causal, cache=cache, head_mask=head_mask,
                                  output_attentions=output_attentions, training=training)
        x = x + a
        cross_probs = None
        if encoder_hidden_states is not None:
            a, cross_probs = self.crossattention(self.ln_cross_attn(x), mask=encoder_mask, cache=cache,
                                                head_mask=head_mask, encoder_hidden_states=encoder_hidden_states,
                                                output_attentions=output_attentions, training=training)
            x = x + a
        return x + self.mlp(self.ln_2(x), training=training), self_probs, cross_probs


class TFGPT2Model(TFGPT2PreTrainedModel):
    """The GPT-2 trunk: embeddings, n_layer blocks, final LayerNorm. transformers' TFGPT2Model call arguments.

    ``call`` is the boundary: it checks the inputs on the host (in eager mode; inside ``tf.function`` the value
    checks are ``tf.debugging`` assertions, which XLA compiles away), embeds them (``embed``), builds the masks and
    resolves the cache. ``core`` runs the blocks and ``ln_f`` without a host read or a Python branch on tensor
    values; every path runs it: ``call`` and the fixed-shape decoding step of generate(), compiled in a
    ``tf.while_loop`` under ``jit_compile=True``.
    """

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        config = self.config
        C, std, policy = config.n_embd, config.initializer_range, self.dtype_policy
        normal = keras.initializers.RandomNormal(stddev=std)
        # wte is also the tied lm_head's matrix; wpe's init follows transformers' TF GPT-2 (the same normal)
        self.wte = keras.layers.Embedding(config.vocab_size, C, embeddings_initializer=normal, name="wte",
                                          dtype=policy)
        self.wpe = keras.layers.Embedding(config.n_positions, C, embeddings_initializer=normal, name="wpe",
                                          dtype=policy)
        self.drop = keras.layers.Dropout(config.embd_pdrop, dtype=policy)
        self.h = [Block(config, i, name=f"h_{i}", dtype=policy) for i in range(config.n_layer)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name="ln_f", dtype=policy)
        self.gradient_checkpointing = False
        self.post_init()

    def build(self, input_shape=None) -> None:
        """Create every weight from the config alone (no forward): the input shape is not needed."""
        build_once(self.wte)
        build_once(self.wpe)
        for block in self.h:
            build_once(block)
        build_once(self.ln_f, (None, None, self.config.n_embd))
        self.built = True

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
             encoder_attention_mask=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, training=False, past=None):
        """transformers' TFGPT2Model arguments (``past`` is the older name of ``past_key_values``)."""
        config = self.config
        past_key_values = renamed_past(past_key_values, past)
        use_cache = config.use_cache if use_cache is None else use_cache
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if self.gradient_checkpointing and training:
            use_cache = False  # recomputation in backward cannot append to a cache twice
        cache = self._cache_from(past_key_values, use_cache)
        past = cache.get_seq_length() if cache is not None else 0
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if encoder_hidden_states is not None and not config.add_cross_attention:
            raise ValueError("encoder_hidden_states given, but the model has no cross-attention "
                             "(config.add_cross_attention=False)")
        input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds, encoder_hidden_states = (
            as_tensor(t) for t in (input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds,
                                   encoder_hidden_states))
        # (B, num_choices, T) inputs (TFGPT2DoubleHeadsModel) run as (B * num_choices, T) and are shaped back.
        input_shape = static_dims(input_ids) if input_ids is not None else static_dims(inputs_embeds)[:-1]
        input_ids, token_type_ids, position_ids = _flat(input_ids), _flat(token_type_ids), _flat(position_ids)
        if attention_mask is not None and attention_mask.shape.rank == 3:
            attention_mask = _flat(attention_mask)
        if inputs_embeds is not None and inputs_embeds.shape.rank > 3:
            inputs_embeds = tf.reshape(inputs_embeds, [-1, *static_dims(inputs_embeds)[-2:]])
        B, T, checks = self._check_inputs(input_ids, inputs_embeds, past, attention_mask, position_ids,
                                          token_type_ids)
        if checks:  # traced: the assertions run before anything reads the values (a gather, the mask)
            with tf.control_dependencies(checks):
                input_ids, position_ids, token_type_ids, attention_mask = (
                    t if t is None else tf.identity(t) for t in (input_ids, position_ids, token_type_ids,
                                                                  attention_mask))
        if position_ids is None:
            position_ids = tf.range(past, past + T)[None, :]  # (1, T)
        x = self.embed(input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                       inputs_embeds=inputs_embeds, training=training)

        # masks in the dtype the scores are computed in (fp32 under reorder_and_upcast_attn), never the weights'
        dtype = scores_dtype(x.dtype, config.reorder_and_upcast_attn)
        mask, is_causal = self._self_attention_mask(attention_mask, B, T, past, dtype)
        encoder_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            padding = tf.reshape(as_tensor(encoder_attention_mask), [static_dims(encoder_hidden_states)[0], -1])
            encoder_mask = (1.0 - tf.cast(padding[:, None, None, :], dtype)) * mask_value(dtype)

        x, hidden_states, attentions, cross_attentions = self.core(
            x, mask=mask, is_causal=is_causal, cache=cache, head_masks=self._head_masks(head_mask, x.dtype),
            encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, training=training)
        if cache is not None:
            cache.advance(T)
        x = tf.reshape(x, [*input_shape, static_dims(x)[-1]])
        if output_hidden_states:
            hidden_states = hidden_states[:-1] + (x,)  # the last one in the caller's (B, num_choices, T, C) shape
        out = BaseModelOutputWithPastAndCrossAttentions(x, cache, hidden_states, attentions, cross_attentions)
        return out if return_dict else out.to_tuple()

    def embed(self, input_ids=None, *, position_ids, token_type_ids=None, inputs_embeds=None, training=None):
        """Token + position (+ token type) embeddings, after dropout: (B, T, C). Unchecked: call checks."""
        x = self.wte(input_ids) if inputs_embeds is None else tf.cast(inputs_embeds, self.compute_dtype)  # (B, T, C)
        T = static_dims(x)[1]
        x = x + self.wpe(tf.reshape(position_ids, [-1, T]))
        if token_type_ids is not None:  # GPT-2 embeds token types with the token table, as transformers does
            x = x + self.wte(tf.reshape(token_type_ids, [-1, T]))
        return self.drop(x, training=training)

    def core(self, x, *, mask=None, is_causal=False, cache: KVCache | None = None, head_masks=None,
             encoder_hidden_states=None, encoder_mask=None, output_attentions=False, output_hidden_states=False,
             training=None):
        """The blocks and ``ln_f`` over embedded ``x`` (B, T, C); returns (x, hidden states, attentions,
        cross-attentions), the last three tuples or None.

        ``mask``: additive (B|1, 1, T, S) (or (T, S)) in the scores' dtype, or None with ``is_causal``; ``cache``
        takes each layer's keys and values by its own rule (cache.py). Nothing here reads a tensor's value on the
        host, so generate() traces it under ``tf.function(jit_compile=True)``; the caller advances the cache.
        """
        hidden_states = () if output_hidden_states else None
        attentions = () if output_attentions else None
        cross_attentions = () if output_attentions and self.config.add_cross_attention else None
        checkpointed = self.gradient_checkpointing and training
        for i, block in enumerate(self.h):
            if output_hidden_states:
                hidden_states += (x,)
            kwargs = dict(mask=mask, is_causal=is_causal, cache=cache,
                          head_mask=head_masks[i] if head_masks is not None else None,
                          encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                          output_attentions=output_attentions, training=training)
            if checkpointed:  # activations recomputed in the backward pass (no cache: call turned it off)
                x = tf.recompute_grad(_block_output(block, kwargs))(x)
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
            # A new cache over the same tensors: the caller's is left as it was (TF tensors are values, and
            # tf.function refuses calls that modify their Python arguments); the output holds the extended one,
            # as transformers' TF models return new presents.
            given = past_key_values
            cache = KVCache(given.keys, given.values, static=given.static, length=given.length)
            cache.cross_keys, cache.cross_values = list(given.cross_keys), list(given.cross_values)
            cache.position = given.position
            return cache
        if isinstance(past_key_values, (tuple, list)):
            return KVCache.from_legacy_cache(past_key_values)
        raise TypeError(f"past_key_values must be a KVCache or transformers' tuple format, got "
                        f"{type(past_key_values).__name__}")

    def _check_inputs(self, input_ids, inputs_embeds, past, attention_mask, position_ids, token_type_ids):
        """Validate once, at the boundary, before any gather; returns (B, T, the assertions a trace must run
        first: none in eager mode, where every check reads the host)."""
        V, P = self.config.vocab_size, self.config.n_positions
        checks = []
        if input_ids is not None:
            if not input_ids.dtype.is_integer:
                raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype.name}")
            checks += _check_range(input_ids, V, "input_ids", "the vocabulary")
            B, T = static_dims(input_ids)
        elif inputs_embeds.shape.rank != 3 or inputs_embeds.shape[-1] != self.config.n_embd:
            raise ValueError(f"inputs_embeds must be (B, T, {self.config.n_embd}), got {tuple(inputs_embeds.shape)}")
        else:
            B, T = static_dims(inputs_embeds)[:2]
        if position_ids is None:
            if isinstance(past, int) and isinstance(T, int):
                if past + T > P:
                    raise ValueError(f"{past + T} positions ({past} cached + {T} new) exceed n_positions={P}: GPT-2 "
                                     f"has no position embedding beyond {P - 1}")
            else:
                checks.append(tf.debugging.assert_less_equal(past + T, P,
                                                             message=f"more positions than n_positions={P}"))
        else:
            if position_ids.shape[-1] is not None and isinstance(T, int) and position_ids.shape[-1] != T:
                raise ValueError(f"position_ids has length {position_ids.shape[-1]}, input has {T}")
            checks += _check_range(position_ids, P, "position_ids", f"the position table (n_positions={P})")
        if token_type_ids is not None:
            if token_type_ids.shape[-1] is not None and isinstance(T, int) and token_type_ids.shape[-1] != T:
                raise ValueError(f"token_type_ids has length {token_type_ids.shape[-1]}, input has {T}")
            checks += _check_range(token_type_ids, V, "token_type_ids", "the vocabulary")
        if attention_mask is not None and attention_mask.shape.rank == 2:
            expected = (B, past + T)
            if all(isinstance(d, int) for d in expected) and None not in attention_mask.shape:
                if tuple(attention_mask.shape) != expected:
                    raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, "
                                     f"cached + new tokens) = {expected}")
            else:
                checks.append(tf.debugging.assert_equal(
                    tf.shape(attention_mask, out_type=tf.int32), tf.cast(tf.stack(expected), tf.int32),
                    message="attention_mask's shape is not (batch, cached + new tokens)"))
        elif attention_mask is not None and attention_mask.shape.rank != 4:
            raise ValueError(f"attention_mask must be (batch, cached + new tokens) or an additive 4-D mask, got "
                             f"shape {tuple(attention_mask.shape)}")
        return B, T, [c for c in checks if c is not None]

    def _self_attention_mask(self, attention_mask, B, T, past, dtype):
        """(additive mask or None, is_causal) for the self-attention of this step."""
        S = past + T
        if attention_mask is not None and attention_mask.shape.rank == 4:  # a ready additive mask, as transformers
            # narrowed (an fp32 mask for fp16 scores) its minimum would become -inf: keep it finite (numerics.py)
            return tf.maximum(tf.cast(attention_mask, dtype), mask_value(dtype)), False
        if attention_mask is not None and tf.executing_eagerly() and bool(tf.reduce_all(attention_mask != 0)):
            attention_mask = None
        static = isinstance(T, int) and isinstance(past, int)
        if attention_mask is None and (not static or T == 1 or past == 0):
            # one new token sees everything; a fresh sequence (or traced lengths) is causal, aligned bottom-right
            return None, not (static and T == 1)
        causal = tf.range(S)[None, :] <= tf.range(T)[:, None] + past  # (T, S): query i sees keys <= past+i
        mask = tf.where(causal, tf.zeros((), dtype), mask_value(dtype))  # (T, S)
        if attention_mask is not None:
            # Padding keys get half the mask value: a real query sees neither, but a padding query (all its keys
            # padding) spreads evenly over the keys before it, exactly as transformers' (causal, then padding)
            # masks give. Finite either way: no NaN.
            padding = tf.equal(attention_mask, 0)[:, None, None, :]  # (B, 1, 1, S)
            mask = tf.where(padding & causal, tf.cast(mask_value(dtype) / 2, dtype), mask)  # (B, 1, T, S)
        return mask, False

    def _head_masks(self, head_mask, dtype):
        """transformers' head_mask ((n_head,) or (n_layer, n_head); 1 keeps a head) -> per layer (1, nh, 1, 1)."""
        L, H = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * L
        head_mask = as_tensor(head_mask)
        if tuple(head_mask.shape) == (H,):
            head_mask = tf.broadcast_to(head_mask, (L, H))
        if tuple(head_mask.shape) != (L, H):
            raise ValueError(f"head_mask must have shape ({H},) or ({L}, {H}), got {tuple(head_mask.shape)}")
        return [tf.reshape(tf.cast(head_mask[i], dtype), (1, H, 1, 1)) for i in range(L)]


def renamed_past(past_key_values, past):
    """transformers' TF models took ``past`` before ``past_key_values``; either name, not both."""
    if past is not None:
        if past_key_values is not None:
            raise ValueError("give past_key_values or its older name past, not both")
        return past
    return past_key_values


def as_tensor(t):
    """Arrays and nested lists as tensors (Keras converts arrays already; Python lists reach us as they are)."""
    return t if t is None or tf.is_tensor(t) else tf.convert_to_tensor(t)


def _flat(t):
    """(..., T) -> (N, T): TFGPT2DoubleHeadsModel's (B, num_choices, T) inputs run as one batch."""
    return tf.reshape(t, [-1, static_dims(t)[-1]]) if t is not None and t.shape.rank > 2 else t


def _block_output(block, kwargs):
    """``block`` as a function of x alone (tf.recompute_grad differentiates with respect to its arguments)."""
    def run(x):
        return block(x, **kwargs)[0]
    return run


def _check_range(ids: tf.Tensor, size: int, name: str, what: str) -> list:
    """Embedding gathers crash (CPU) or read zeros (GPU) on bad ids: refuse them with the offending value. Eager:
    read on the host; traced: returns assertions that fail the step with the same words (XLA drops them)."""
    if not tf.executing_eagerly():
        return [tf.debugging.assert_non_negative(ids, message=f"{name} holds a negative value, outside {what}"),
                tf.debugging.assert_less(ids, tf.cast(size, ids.dtype),
                                         message=f"{name} holds a value outside {what} (0..{size - 1})")]
    values = ids.numpy()
    if values.size == 0:
        return []
    low, high = int(np.min(values)), int(np.max(values))
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds {bad}, outside {what} (0..{size - 1})")
    return []
