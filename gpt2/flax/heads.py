"""The heads over the GPT-2 trunk, with transformers' Flax class names and calling conventions (``params=``,
``dropout_rng=``, ``train=``) plus the PyTorch models' keyword arguments, outputs and losses (the losses are
transformers' PyTorch ones: means over the labels that are not -100, in fp32). A translation of
gpt2/torch/heads.py.

>>> from gpt2.flax import FlaxGPT2LMHeadModel
>>> model = FlaxGPT2LMHeadModel.from_pretrained("gpt2-folder")
>>> out = model(input_ids, labels=input_ids)        # out.loss, out.logits (B, T, vocab), out.past_key_values

The tied language-model head owns no weight: it reads the trunk's ``wte`` table at each call. (An NNX shared
reference would put the table under ``lm_head`` in ``model.params``, since NNX walks attributes in sorted order;
transformers' Flax layout keeps it at ``transformer.wte.embedding``.) ``lm_logits(model, x)`` is the head for
code that runs the trunk itself (generate()'s compiled step).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..common.outputs import (
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from .model import (FlaxGPT2Model, annotated, apply_dropout, as_array, identity, is_concrete, key_stream,
                    refuse_outside)
from .generation import GenerationMixin
from .pretrained import FlaxGPT2PreTrainedModel

IGNORE_INDEX = -100  # label value that no loss counts (transformers' convention)

# Mesh axis names of the heads' kernels [in, out] (model.py's PARTITIONS for the trunk): an untied lm_head is split
# by its C rows like the embedding tables (the vocabulary does not divide by a device count); the small heads,
# a few labels wide, are replicated.
HEAD_PARTITIONS = {
    "lm_head": (("model", None), (None,)),
    "small": ((None, None), (None,)),
}


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """torch's F.cross_entropy: the mean over the labels that are not ``ignore_index``, in fp32 (0/0 = NaN when
    every label is ignored, as torch)."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(keep, labels, 0)[:, None], axis=-1)[:, 0]
    return -jnp.sum(jnp.where(keep, picked, 0.0)) / jnp.sum(keep)


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting token t+1 from position t (labels are the inputs, unshifted), in fp32."""
    return cross_entropy(logits[..., :-1, :], labels[..., 1:])


def _refuse_labels(values, *, size: int, name: str, what: str) -> None:
    values = np.asarray(values)
    refuse_outside(values[values != IGNORE_INDEX], size=size, name=name, what=what)


def check_labels(labels, size: int, name: str, what: str) -> jax.Array:
    """``labels`` as an integer array whose values are in [0, size) or -100 (ignored): checked before the loss
    gathers them (JAX gathers clamp silently; torch raises). Read on the host, or a host callback under a trace."""
    labels = as_array(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got {labels.dtype}")
    if is_concrete(labels):
        _refuse_labels(labels, size=size, name=name, what=what)
    else:
        jax.debug.callback(partial(_refuse_labels, size=size, name=name, what=what), labels)
    return labels


def _check_index(index, size: int, name: str) -> None:
    """Indices into a length-``size`` axis, refused outside [0, size) (a host read, or a callback when traced)."""
    what = f"the sequence (length {size})"
    if is_concrete(index):
        refuse_outside(index, size=size, name=name, what=what)
    else:
        jax.debug.callback(partial(refuse_outside, size=size, name=name, what=what), index)


def _head_keys(dropout_rng, train: bool, rate: float, name: str):
    """(the trunk's dropout_rng, this head's key stream or None): two independent streams split from one key, so
    that the head's masks never repeat the trunk's."""
    if not train or not rate:
        return dropout_rng, None
    if dropout_rng is None:
        raise ValueError(f"train=True runs the {name} dropout (rate {rate}), which needs "
                         f"dropout_rng=jax.random.key(...)")
    trunk, head = jax.random.split(dropout_rng)
    return trunk, key_stream(head)


def _linear(n_in: int, n_out: int, config, *, kind: str, use_bias: bool = True, dtype, param_dtype,
            rngs: nnx.Rngs) -> nnx.Linear:
    """A head projection [in, out] with GPT-2's N(0, initializer_range) init and zero bias."""
    kernel, bias = HEAD_PARTITIONS[kind]
    return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                      kernel_init=annotated(nnx.initializers.normal(config.initializer_range), kernel),
                      bias_init=annotated(nnx.initializers.zeros_init(), bias))


def tanh(x: jax.Array) -> jax.Array:
    """jnp.tanh under a name pickle finds (jnp.tanh itself is a jitted wrapper that does not pickle by reference)."""
    return jnp.tanh(x)


class _TiedLMHead(nnx.Module):
    """The tied language-model head: logits = x @ wte^T, with no weight of its own (GPT-2 ties them)."""

    def __call__(self, x: jax.Array, wte: nnx.Embed) -> jax.Array:
        return wte.attend(x)  # in wte's computation dtype, as torch's head computes in the model's dtype


def _lm_head(config, *, dtype, param_dtype, rngs: nnx.Rngs):
    """Tied: reads wte at each call; untied (tie_word_embeddings=False): a Linear whose kernel [C, V] is
    lm_head.weight transposed."""
    if config.tie_word_embeddings:
        return _TiedLMHead()
    return _linear(config.n_embd, config.vocab_size, config, kind="lm_head", use_bias=False, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)


def lm_logits(model, x: jax.Array) -> jax.Array:
    """The LM head of ``model`` (FlaxGPT2LMHeadModel / FlaxGPT2DoubleHeadsModel) over trunk outputs ``x``."""
    if isinstance(model.lm_head, _TiedLMHead):
        return model.lm_head(x, model.transformer.wte)
    return model.lm_head(x)


def _rebound(model, params, arguments: dict):
    """The same call on ``model`` with ``params`` as its weights (transformers' Flax ``params=``)."""
    return model._with_params(params)(**{k: v for k, v in arguments.items() if k not in ("self", "params")})


def _trunk(model, input_ids, attention_mask, position_ids, past_key_values, dropout_rng, train, output_attentions,
           output_hidden_states, **extra):
    return model.transformer(input_ids, attention_mask, position_ids, None, past_key_values, dropout_rng, train,
                             output_attentions, output_hidden_states, True, **extra)


def _layers(model, rngs: nnx.Rngs | None, seed: int) -> dict:
    """The keyword arguments of every layer of ``model``: its dtypes and one Rngs (from ``seed`` if none given)."""
    return dict(dtype=model.dtype, param_dtype=model.param_dtype,
                rngs=rngs if rngs is not None else nnx.Rngs(params=seed))


class FlaxGPT2LMHeadModel(GenerationMixin, FlaxGPT2PreTrainedModel):
    """GPT-2 with the language-model head (tied to wte unless config.tie_word_embeddings is False)."""

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 seed: int = 0) -> None:
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        kw = _layers(self, rngs, seed)
        self.transformer = FlaxGPT2Model(self.config, **kw)
        self.lm_head = _lm_head(self.config, **kw)
        self.post_init()  # one config object for the model and its trunk, as torch's

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, past_key_values=None,
                 dropout_rng=None, train: bool = False, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, token_type_ids=None, head_mask=None, inputs_embeds=None,
                 encoder_hidden_states=None, encoder_attention_mask=None, labels=None, use_cache=None,
                 logits_to_keep: int = 0):
        """``logits_to_keep``: compute logits for the last n positions only (0: all), as generation needs."""
        if params is not None:
            return _rebound(self, params, locals())
        if labels is not None:
            labels = check_labels(labels, self.config.vocab_size, "labels", "the vocabulary")
        out = _trunk(self, input_ids, attention_mask, position_ids, past_key_values, dropout_rng, train,
                     output_attentions, output_hidden_states, token_type_ids=token_type_ids, head_mask=head_mask,
                     inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
                     encoder_attention_mask=encoder_attention_mask, use_cache=use_cache)
        x = out.last_hidden_state
        logits = lm_logits(self, x[:, -logits_to_keep:] if logits_to_keep else x)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        result = CausalLMOutputWithCrossAttentions(loss, logits, out.past_key_values, out.hidden_states,
                                                   out.attentions, out.cross_attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class SequenceSummary(nnx.Module):
    """Pool a sequence into one vector (transformers' SequenceSummary): the token at cls_index, last, first, mean."""

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs) -> None:
        self.summary_type = config.summary_type
        if self.summary_type == "attn":
            raise ValueError("summary_type='attn' is not defined by GPT-2 (transformers raises too)")
        out = config.num_labels if config.summary_proj_to_labels and config.num_labels > 0 else config.n_embd
        # assigned once: NNX refuses a module where a plain function (static) was set before
        self.summary = _linear(config.n_embd, out, config, kind="small", dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs) if config.summary_use_proj else identity
        self.activation = tanh if config.summary_activation == "tanh" else identity  # functions: it pickles
        self.first_dropout = nnx.Dropout(config.summary_first_dropout)
        self.last_dropout = nnx.Dropout(getattr(config, "summary_last_dropout", 0.0) or 0.0)

    def __call__(self, hidden_states: jax.Array, cls_index=None, *, rng=None) -> jax.Array:
        # hidden_states (..., T, C) -> (..., C)
        if self.summary_type == "last":
            x = hidden_states[..., -1, :]
        elif self.summary_type == "first":
            x = hidden_states[..., 0, :]
        elif self.summary_type == "mean":
            x = jnp.mean(hidden_states, axis=-2)
        else:  # cls_index: the token at cls_index (default: the last one)
            T = hidden_states.shape[-2]
            if cls_index is None:
                cls_index = jnp.full(hidden_states.shape[:-2], T - 1, dtype=jnp.int32)
            cls_index = as_array(cls_index)
            if cls_index.shape != hidden_states.shape[:-2]:
                raise ValueError(f"mc_token_ids must have shape {tuple(hidden_states.shape[:-2])}, got "
                                 f"{tuple(cls_index.shape)}")
            _check_index(cls_index, T, "mc_token_ids")
            x = jnp.take_along_axis(hidden_states, cls_index[..., None, None], axis=-2)[..., 0, :]
        x = apply_dropout(self.first_dropout, x, rng)
        return apply_dropout(self.last_dropout, self.activation(self.summary(x)), rng)


class FlaxGPT2DoubleHeadsModel(GenerationMixin, FlaxGPT2PreTrainedModel):
    """GPT-2 with the LM head and a multiple-choice head over (B, num_choices, T) inputs."""

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 seed: int = 0) -> None:
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        config = self.config  # the model's own copy: the caller's config keeps its num_labels
        config.num_labels = 1  # as transformers: one score per choice
        kw = _layers(self, rngs, seed)
        self.transformer = FlaxGPT2Model(config, **kw)
        self.lm_head = _lm_head(self.config, **kw)
        self.multiple_choice_head = SequenceSummary(self.config, **kw)
        self.post_init()  # one config object for the model and its trunk, as torch's

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, past_key_values=None,
                 dropout_rng=None, train: bool = False, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, token_type_ids=None, head_mask=None, inputs_embeds=None, mc_token_ids=None,
                 labels=None, mc_labels=None, use_cache=None):
        if params is not None:
            return _rebound(self, params, locals())
        rate = max(self.config.summary_first_dropout, getattr(self.config, "summary_last_dropout", 0.0) or 0.0)
        dropout_rng, rng = _head_keys(dropout_rng, train, rate, "multiple-choice head's")
        if labels is not None:
            labels = check_labels(labels, self.config.vocab_size, "labels", "the vocabulary")
        out = _trunk(self, input_ids, attention_mask, position_ids, past_key_values, dropout_rng, train,
                     output_attentions, output_hidden_states, token_type_ids=token_type_ids, head_mask=head_mask,
                     inputs_embeds=inputs_embeds, use_cache=use_cache)
        x = out.last_hidden_state  # (B, num_choices, T, C)
        logits = lm_logits(self, x)
        mc_logits = _squeeze_last(self.multiple_choice_head(x, mc_token_ids, rng=rng))  # (B, num_choices)
        mc_loss = loss = None
        if mc_labels is not None:
            mc_labels = check_labels(mc_labels, mc_logits.shape[-1], "mc_labels", "the choices")
            mc_loss = cross_entropy(mc_logits, mc_labels)
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        result = GPT2DoubleHeadsModelOutput(loss, mc_loss, logits, mc_logits, out.past_key_values,
                                            out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class FlaxGPT2ForSequenceClassification(FlaxGPT2PreTrainedModel):
    """Classify a sequence from its last non-padding token (config.pad_token_id is needed for batches > 1)."""

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 seed: int = 0) -> None:
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        kw = _layers(self, rngs, seed)
        self.transformer = FlaxGPT2Model(self.config, **kw)
        self.score = _linear(self.config.n_embd, self.config.num_labels, self.config, kind="small", use_bias=False,
                             **kw)
        self.post_init()  # one config object for the model and its trunk, as torch's

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, past_key_values=None,
                 dropout_rng=None, train: bool = False, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, token_type_ids=None, head_mask=None, inputs_embeds=None, labels=None,
                 use_cache=None):
        if params is not None:
            return _rebound(self, params, locals())
        out = _trunk(self, input_ids, attention_mask, position_ids, past_key_values, dropout_rng, train,
                     output_attentions, output_hidden_states, token_type_ids=token_type_ids, head_mask=head_mask,
                     inputs_embeds=inputs_embeds, use_cache=use_cache)
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B, T = logits.shape[:2]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError("FlaxGPT2ForSequenceClassification needs config.pad_token_id for batches of more than "
                             "one sequence (it pools the last non-padding token)")
        if pad is None or input_ids is None:
            last = jnp.full((B,), T - 1)
        else:  # the rightmost token that is not padding (right or left padding alike)
            ids = as_array(input_ids)
            last = jnp.argmax(jnp.arange(T) * (ids != pad), axis=-1)
        pooled = logits[jnp.arange(B), last]  # (B, num_labels)
        loss = None if labels is None else self._loss(pooled, as_array(labels))
        result = SequenceClassifierOutputWithPast(loss, pooled, out.past_key_values, out.hidden_states,
                                                  out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()

    def _loss(self, pooled: jax.Array, labels: jax.Array) -> jax.Array:
        problem = self.config.problem_type
        pooled = pooled.astype(jnp.float32)
        if problem is None:  # transformers' inference of the problem from labels (and it records it)
            if self.config.num_labels == 1:
                problem = "regression"
            elif jnp.issubdtype(labels.dtype, jnp.integer):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
            self.config.problem_type = problem  # on the model's own copy (never the caller's config)
        if problem == "regression":
            if self.config.num_labels == 1:
                return jnp.mean(jnp.square(jnp.squeeze(pooled) - jnp.squeeze(labels).astype(jnp.float32)))
            return jnp.mean(jnp.square(pooled - labels.astype(jnp.float32)))
        if problem == "single_label_classification":
            labels = check_labels(labels, self.config.num_labels, "labels", "the labels (num_labels)")
            return cross_entropy(pooled, labels)
        labels = labels.astype(jnp.float32)  # BCE with logits, the stable form: max(x, 0) - x z + log(1 + e^-|x|)
        return jnp.mean(jnp.maximum(pooled, 0) - pooled * labels + jnp.log1p(jnp.exp(-jnp.abs(pooled))))


class FlaxGPT2ForTokenClassification(FlaxGPT2PreTrainedModel):
    """A label per token."""

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 seed: int = 0) -> None:
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        config = self.config
        kw = _layers(self, rngs, seed)
        self.transformer = FlaxGPT2Model(config, **kw)
        p = getattr(config, "classifier_dropout", None)
        p = p if p is not None else getattr(config, "hidden_dropout", None)
        self.dropout = nnx.Dropout(p if p is not None else 0.1)  # transformers' default for GPT-2
        self.classifier = _linear(config.n_embd, config.num_labels, config, kind="small", **kw)
        self.post_init()  # one config object for the model and its trunk, as torch's

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, past_key_values=None,
                 dropout_rng=None, train: bool = False, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, token_type_ids=None, head_mask=None, inputs_embeds=None, labels=None,
                 use_cache=None):
        if params is not None:
            return _rebound(self, params, locals())
        dropout_rng, rng = _head_keys(dropout_rng, train, self.dropout.rate, "classifier's")
        if labels is not None:
            labels = check_labels(labels, self.config.num_labels, "labels", "the labels (num_labels)")
        out = _trunk(self, input_ids, attention_mask, position_ids, past_key_values, dropout_rng, train,
                     output_attentions, output_hidden_states, token_type_ids=token_type_ids, head_mask=head_mask,
                     inputs_embeds=inputs_embeds, use_cache=use_cache)
        logits = self.classifier(apply_dropout(self.dropout, out.last_hidden_state, rng))  # (B, T, num_labels)
        loss = cross_entropy(logits, labels) if labels is not None else None
        result = TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class FlaxGPT2ForQuestionAnswering(FlaxGPT2PreTrainedModel):
    """Extractive QA: a start and an end logit per token. No cache (as torch's): everything after ``params`` is a
    keyword argument, so that no positional argument lands where the other heads take past_key_values."""

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 seed: int = 0) -> None:
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        kw = _layers(self, rngs, seed)
        self.transformer = FlaxGPT2Model(self.config, **kw)
        self.qa_outputs = _linear(self.config.n_embd, 2, self.config, kind="small", **kw)
        self.post_init()  # one config object for the model and its trunk, as torch's

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, params=None, *, dropout_rng=None,
                 train: bool = False, output_attentions=None, output_hidden_states=None, return_dict=None,
                 token_type_ids=None, head_mask=None, inputs_embeds=None, start_positions=None, end_positions=None):
        if params is not None:
            return _rebound(self, params, locals())
        out = _trunk(self, input_ids, attention_mask, position_ids, None, dropout_rng, train, output_attentions,
                     output_hidden_states, token_type_ids=token_type_ids, head_mask=head_mask,
                     inputs_embeds=inputs_embeds, use_cache=False)
        qa = self.qa_outputs(out.last_hidden_state)
        start_logits, end_logits = qa[..., 0], qa[..., 1]  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]  # positions outside the sequence are ignored, as in transformers
            start = jnp.clip(_positions(start_positions, "start_positions").reshape(-1), 0, ignored)
            end = jnp.clip(_positions(end_positions, "end_positions").reshape(-1), 0, ignored)
            loss = (cross_entropy(start_logits, start, ignore_index=ignored)
                    + cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        result = QuestionAnsweringModelOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


def _squeeze_last(x: jax.Array) -> jax.Array:
    """torch's squeeze(-1): drops the last axis only when it has size 1 (summary_use_proj=False keeps C)."""
    return x[..., 0] if x.shape[-1] == 1 else x


def _positions(positions, name: str) -> jax.Array:
    positions = as_array(positions)
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got {positions.dtype}")
    return positions


def _return_dict(model, return_dict) -> bool:
    return model.config.return_dict if return_dict is None else return_dict
