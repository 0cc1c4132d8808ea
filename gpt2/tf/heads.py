"""The heads over the GPT-2 trunk, with transformers' TF class names, call arguments, outputs and losses (the
losses are transformers' PyTorch ones: means over the labels that are not -100). A translation of
gpt2/torch/heads.py.

>>> from gpt2.tf import TFGPT2LMHeadModel
>>> model = TFGPT2LMHeadModel.from_pretrained("gpt2-folder")
>>> out = model(input_ids, labels=input_ids)        # out.loss, out.logits (B, T, vocab), out.past_key_values
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ..common.outputs import (
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from .generation import GenerationMixin
from .model import TFGPT2Model, as_tensor, build_once, identity, renamed_past, static_dims
from .pretrained import TFGPT2PreTrainedModel

IGNORE_INDEX = -100  # label value that no loss counts (transformers' convention)


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int = IGNORE_INDEX) -> tf.Tensor:
    """torch's F.cross_entropy: the mean over the labels that are not ``ignore_index``, in fp32 (0/0 = NaN when
    every label is ignored, as torch)."""
    logits = tf.cast(tf.reshape(logits, [-1, static_dims(logits)[-1]]), tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    keep = tf.not_equal(labels, ignore_index)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(losses * keep) / tf.reduce_sum(keep)


def causal_lm_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t (labels are the inputs, unshifted), in fp32."""
    return cross_entropy(logits[..., :-1, :], as_tensor(labels)[..., 1:])


def _trunk_args(input_ids, past_key_values, attention_mask, token_type_ids, position_ids, head_mask,
                inputs_embeds, use_cache, output_attentions, output_hidden_states, training, **extra):
    return dict(input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
                token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
                inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
                output_hidden_states=output_hidden_states, return_dict=True, training=training, **extra)


class _Tied:
    """A reference Keras does not track (a layer attribute would list wte's table twice among the weights)."""

    def __init__(self, embedding) -> None:
        self.embedding = embedding


class _TiedLMHead(keras.layers.Layer):
    """The tied language-model head: logits = x @ wte^T, with no weight of its own (GPT-2 ties them)."""

    def __init__(self, embedding: keras.layers.Embedding, **kwargs) -> None:
        super().__init__(**kwargs)
        self._tied = _Tied(embedding)  # the trunk owns (and tracks) the table: the head only reads it

    def tie(self, embedding: keras.layers.Embedding) -> None:
        """Read ``embedding``'s table from now on (tie_weights, after the trunk's wte was replaced)."""
        self._tied = _Tied(embedding)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        w = tf.cast(self._tied.embedding.embeddings, x.dtype)
        return tf.matmul(x, w, transpose_b=True)


def _lm_head(config, transformer: TFGPT2Model, policy):
    """Tied: x @ wte^T; untied (tie_word_embeddings=False): a Dense whose kernel is lm_head.weight transposed."""
    if config.tie_word_embeddings:
        return _TiedLMHead(transformer.wte, name="lm_head", dtype=policy)
    return keras.layers.Dense(config.vocab_size, use_bias=False, name="lm_head", dtype=policy,
                              kernel_initializer=keras.initializers.RandomNormal(stddev=config.initializer_range))


def _dense(units: int, config, name: str, policy, use_bias: bool = True) -> keras.layers.Dense:
    return keras.layers.Dense(units, use_bias=use_bias, name=name, dtype=policy,
                              kernel_initializer=keras.initializers.RandomNormal(stddev=config.initializer_range))


class TFGPT2LMHeadModel(GenerationMixin, TFGPT2PreTrainedModel):
    """GPT-2 with the language-model head (tied to wte unless config.tie_word_embeddings is False)."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.transformer = TFGPT2Model(self.config, name="transformer", dtype=self.dtype_policy)
        self.lm_head = _lm_head(self.config, self.transformer, self.dtype_policy)
        self.post_init()

    def build(self, input_shape=None) -> None:
        build_once(self.transformer)
        build_once(self.lm_head, (None, None, self.config.n_embd))
        self.built = True

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
             encoder_attention_mask=None, labels=None, use_cache=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=False, past=None, logits_to_keep: int = 0):
        """``logits_to_keep``: compute logits for the last n positions only (0: all), as generation needs."""
        out = self.transformer(**_trunk_args(input_ids, renamed_past(past_key_values, past), attention_mask,
                                             token_type_ids, position_ids, head_mask, inputs_embeds, use_cache,
                                             output_attentions, output_hidden_states, training,
                                             encoder_hidden_states=encoder_hidden_states,
                                             encoder_attention_mask=encoder_attention_mask))
        x = out.last_hidden_state
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        result = CausalLMOutputWithCrossAttentions(loss, logits, out.past_key_values, out.hidden_states,
                                                   out.attentions, out.cross_attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class SequenceSummary(keras.layers.Layer):
    """Pool a sequence into one vector (transformers' SequenceSummary): the token at cls_index, last, first, mean."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(**kwargs)
        self.summary_type = config.summary_type
        if self.summary_type == "attn":
            raise ValueError("summary_type='attn' is not defined by GPT-2 (transformers raises too)")
        self.summary = identity
        if config.summary_use_proj:
            out = config.num_labels if config.summary_proj_to_labels and config.num_labels > 0 else config.n_embd
            self.summary = _dense(out, config, "summary", self.dtype_policy)
        self.activation = tf.tanh if config.summary_activation == "tanh" else identity  # functions: it pickles
        self.first_dropout = keras.layers.Dropout(config.summary_first_dropout, dtype=self.dtype_policy)
        self.last_dropout = keras.layers.Dropout(getattr(config, "summary_last_dropout", 0.0) or 0.0,
                                                 dtype=self.dtype_policy)
        self._n_embd = config.n_embd

    def build(self, input_shape=None) -> None:
        if isinstance(self.summary, keras.layers.Layer):
            build_once(self.summary, (None, self._n_embd))
        self.built = True

    def call(self, hidden_states: tf.Tensor, cls_index=None, training=None) -> tf.Tensor:
        # hidden_states (..., T, C) -> (..., C)
        if self.summary_type == "last":
            x = hidden_states[..., -1, :]
        elif self.summary_type == "first":
            x = hidden_states[..., 0, :]
        elif self.summary_type == "mean":
            x = tf.reduce_mean(hidden_states, axis=-2)
        else:  # cls_index: the token at cls_index (default: the last one)
            T, rank = static_dims(hidden_states)[-2], hidden_states.shape.rank
            if cls_index is None:
                cls_index = tf.fill(tf.shape(hidden_states)[:-2], T - 1)
            cls_index = as_tensor(cls_index)
            if tf.executing_eagerly():
                values = cls_index.numpy()
                if values.size and (values.min() < 0 or values.max() >= T):
                    raise ValueError(f"mc_token_ids must be in 0..{T - 1}, got values {int(values.min())}.."
                                     f"{int(values.max())}")
            else:
                tf.debugging.assert_non_negative(cls_index, message="mc_token_ids holds a negative value")
                tf.debugging.assert_less(cls_index, tf.cast(T, cls_index.dtype),
                                         message="mc_token_ids holds a value beyond the sequence")
            x = tf.gather(hidden_states, cls_index, axis=rank - 2, batch_dims=rank - 2)
        x = self.first_dropout(x, training=training)
        return self.last_dropout(self.activation(self.summary(x)), training=training)


class TFGPT2DoubleHeadsModel(GenerationMixin, TFGPT2PreTrainedModel):
    """GPT-2 with the LM head and a multiple-choice head over (B, num_choices, T) inputs."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        config = self.config  # the model's own copy: the caller's config keeps its num_labels
        config.num_labels = 1  # as transformers: one score per choice
        self.transformer = TFGPT2Model(config, name="transformer", dtype=self.dtype_policy)
        self.lm_head = _lm_head(config, self.transformer, self.dtype_policy)
        self.multiple_choice_head = SequenceSummary(config, name="multiple_choice_head", dtype=self.dtype_policy)
        self.post_init()

    def build(self, input_shape=None) -> None:
        build_once(self.transformer)
        build_once(self.lm_head, (None, None, self.config.n_embd))
        build_once(self.multiple_choice_head)
        self.built = True

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, mc_token_ids=None, labels=None,
             mc_labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, training=False, past=None):
        out = self.transformer(**_trunk_args(input_ids, renamed_past(past_key_values, past), attention_mask,
                                             token_type_ids, position_ids, head_mask, inputs_embeds, use_cache,
                                             output_attentions, output_hidden_states, training))
        x = out.last_hidden_state  # (B, num_choices, T, C)
        logits = self.lm_head(x)
        mc_logits = tf.squeeze(self.multiple_choice_head(x, mc_token_ids, training=training), -1)  # (B, num_choices)
        mc_loss = loss = None
        if mc_labels is not None:
            mc_loss = cross_entropy(mc_logits, mc_labels)
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        result = GPT2DoubleHeadsModelOutput(loss, mc_loss, logits, mc_logits, out.past_key_values,
                                            out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class TFGPT2ForSequenceClassification(TFGPT2PreTrainedModel):
    """Classify a sequence from its last non-padding token (config.pad_token_id is needed for batches > 1)."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.transformer = TFGPT2Model(self.config, name="transformer", dtype=self.dtype_policy)
        self.score = _dense(self.config.num_labels, self.config, "score", self.dtype_policy, use_bias=False)
        self.post_init()

    def build(self, input_shape=None) -> None:
        build_once(self.transformer)
        build_once(self.score, (None, None, self.config.n_embd))
        self.built = True

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, labels=None, use_cache=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=False, past=None):
        out = self.transformer(**_trunk_args(input_ids, renamed_past(past_key_values, past), attention_mask,
                                             token_type_ids, position_ids, head_mask, inputs_embeds, use_cache,
                                             output_attentions, output_hidden_states, training))
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B, T = static_dims(logits)[:2]
        pad = self.config.pad_token_id
        if pad is None and not (isinstance(B, int) and B == 1):
            raise ValueError("TFGPT2ForSequenceClassification needs config.pad_token_id for batches of more than "
                             "one sequence (it pools the last non-padding token)")
        if pad is None or input_ids is None:
            last = tf.fill([B], T - 1)
        else:  # the rightmost token that is not padding (right or left padding alike)
            ids = as_tensor(input_ids)
            last = tf.argmax(tf.range(T, dtype=ids.dtype) * tf.cast(ids != pad, ids.dtype), axis=-1)
        pooled = tf.gather(logits, last, batch_dims=1)  # (B, num_labels)
        loss = None if labels is None else self._loss(pooled, as_tensor(labels))
        result = SequenceClassifierOutputWithPast(loss, pooled, out.past_key_values, out.hidden_states,
                                                  out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()

    def _loss(self, pooled: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        problem = self.config.problem_type
        pooled = tf.cast(pooled, tf.float32)
        if problem is None:  # transformers' inference of the problem from labels (and it records it)
            if self.config.num_labels == 1:
                problem = "regression"
            elif labels.dtype.is_integer:
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
            self.config.problem_type = problem  # on the model's own copy (never the caller's config)
        if problem == "regression":
            if self.config.num_labels == 1:
                return tf.reduce_mean(tf.square(tf.squeeze(pooled) - tf.cast(tf.squeeze(labels), tf.float32)))
            return tf.reduce_mean(tf.square(pooled - tf.cast(labels, tf.float32)))
        if problem == "single_label_classification":
            return cross_entropy(pooled, labels)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32),
                                                                      logits=pooled))


class TFGPT2ForTokenClassification(TFGPT2PreTrainedModel):
    """A label per token."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        config = self.config
        self.transformer = TFGPT2Model(config, name="transformer", dtype=self.dtype_policy)
        p = getattr(config, "classifier_dropout", None)
        p = p if p is not None else getattr(config, "hidden_dropout", None)
        self.dropout = keras.layers.Dropout(p if p is not None else 0.1, dtype=self.dtype_policy)  # transformers'
        self.classifier = _dense(config.num_labels, config, "classifier", self.dtype_policy)
        self.post_init()

    def build(self, input_shape=None) -> None:
        build_once(self.transformer)
        build_once(self.classifier, (None, None, self.config.n_embd))
        self.built = True

    def call(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
             position_ids=None, head_mask=None, inputs_embeds=None, labels=None, use_cache=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=False, past=None):
        out = self.transformer(**_trunk_args(input_ids, renamed_past(past_key_values, past), attention_mask,
                                             token_type_ids, position_ids, head_mask, inputs_embeds, use_cache,
                                             output_attentions, output_hidden_states, training))
        logits = self.classifier(self.dropout(out.last_hidden_state, training=training))  # (B, T, num_labels)
        loss = cross_entropy(logits, labels) if labels is not None else None
        result = TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


class TFGPT2ForQuestionAnswering(TFGPT2PreTrainedModel):
    """Extractive QA: a start and an end logit per token."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.transformer = TFGPT2Model(self.config, name="transformer", dtype=self.dtype_policy)
        self.qa_outputs = _dense(2, self.config, "qa_outputs", self.dtype_policy)
        self.post_init()

    def build(self, input_shape=None) -> None:
        build_once(self.transformer)
        build_once(self.qa_outputs, (None, None, self.config.n_embd))
        self.built = True

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             head_mask=None, inputs_embeds=None, start_positions=None, end_positions=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        out = self.transformer(**_trunk_args(input_ids, None, attention_mask, token_type_ids, position_ids,
                                             head_mask, inputs_embeds, False, output_attentions,
                                             output_hidden_states, training))
        start_logits, end_logits = tf.unstack(self.qa_outputs(out.last_hidden_state), axis=-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = static_dims(start_logits)[1]  # positions outside the sequence are ignored, as in transformers
            start = tf.clip_by_value(tf.reshape(tf.cast(as_tensor(start_positions), tf.int32), [-1]), 0, ignored)
            end = tf.clip_by_value(tf.reshape(tf.cast(as_tensor(end_positions), tf.int32), [-1]), 0, ignored)
            loss = (_qa_loss(start_logits, start, ignored) + _qa_loss(end_logits, end, ignored)) / 2
        result = QuestionAnsweringModelOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions)
        return result if _return_dict(self, return_dict) else result.to_tuple()


def _qa_loss(logits: tf.Tensor, positions: tf.Tensor, ignored) -> tf.Tensor:
    """Cross-entropy where position ``ignored`` (= T, one past the sequence) counts for nothing."""
    if isinstance(ignored, int):
        return cross_entropy(logits, positions, ignore_index=ignored)
    keep = tf.cast(positions != ignored, tf.float32)  # traced T: the same sum without the Python constant
    safe = tf.where(positions != ignored, positions, 0)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(losses * keep) / tf.reduce_sum(keep)


def _return_dict(model, return_dict) -> bool:
    return model.config.return_dict if return_dict is None else return_dict

