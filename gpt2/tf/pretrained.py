"""The base class of every TensorFlow model: config, from_pretrained / save_pretrained, dtype plumbing, embeddings
utilities, Keras training (``compile()`` without a loss: the model's own loss).

A translation of gpt2/torch/pretrained.py: the same public methods in the same order, each with its TF meaning.
from_pretrained is the framework-free policy of gpt2/common/loading.py around the Keras steps: build the model
under the asked dtype policy (its variables are made once, by a (1, 1) call), assign the canonical arrays to the
variables by attribute path (weights.py).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..common import hub, loading
from ..common.checkpoint import save_checkpoint
from ..common.config import GPT2Config
from . import weights

# dtype= names: plain dtypes (variables and compute in that dtype) and Keras' mixed precision policies (float32
# variables, float16 / bfloat16 compute).
_DTYPES = ("float32", "float16", "bfloat16", "float64", "mixed_float16", "mixed_bfloat16")


def resolve_dtype(dtype, plan: loading.LoadPlan) -> keras.DTypePolicy:
    """dtype argument -> a Keras dtype policy: None is Keras' global policy (float32 unless the user set one),
    "auto" is the checkpoint's dtype, a name, a tf.DType or a keras.DTypePolicy."""
    if dtype is None:
        return keras.config.dtype_policy()
    if dtype == "auto":
        dtype = plan.checkpoint_dtype()
    if isinstance(dtype, keras.DTypePolicy):
        return dtype
    if isinstance(dtype, tf.DType):
        dtype = dtype.name
    if isinstance(dtype, str):
        name = dtype.removeprefix("tf.").removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, 'auto' or a keras.DTypePolicy, got "
                             f"{dtype!r}")
        return keras.DTypePolicy(name)
    raise TypeError(f"dtype must be a dtype name, a tf.DType or a keras.DTypePolicy, got {dtype!r}")


class TFGPT2PreTrainedModel(keras.Model):
    """Base of every TF model class: config, from_pretrained / save_pretrained, embeddings utilities, Keras
    training with the model's own loss.

    >>> model = TFGPT2LMHeadModel.from_pretrained("gpt2-folder")
    >>> model.compile(optimizer=keras.optimizers.AdamW(3e-4))       # no loss: the model computes it from labels
    >>> model.fit(tf.data.Dataset.from_tensor_slices({"input_ids": ids, "labels": ids}).batch(8))
    """

    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
        config.validate()
        # The model's own copy: heads set fields of their own (TFGPT2DoubleHeadsModel's num_labels=1, the
        # problem_type a classification loss infers), and the caller's config must not change under it.
        self.config = config.copy()

    def __init_subclass__(cls, **kwargs) -> None:
        """Every model class is registered with Keras' serialization (as "gpt2>TFGPT2LMHeadModel", ...): pickle,
        copy.deepcopy and ``model.save("m.keras")`` / ``keras.models.load_model`` rebuild it from ``get_config``."""
        super().__init_subclass__(**kwargs)
        keras.saving.register_keras_serializable(package="gpt2")(cls)

    # -- Keras serialization ------------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Keras' config: the GPT2Config as a dict, and the Keras layer settings (name, dtype policy)."""
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.saving.serialize_keras_object(self.dtype_policy), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        gpt2_config = GPT2Config.from_dict(config.pop("config"))
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict):
            dtype = keras.saving.deserialize_keras_object(dtype)
        return cls(gpt2_config, dtype=dtype, **config)

    def build_from_config(self, config) -> None:
        """Keras' loading builds the model before reading its weights: every variable, from the config alone."""
        self.build()

    # -- set-up -----------------------------------------------------------------------------------------------------
    def post_init(self, attn_implementation: str | None = None) -> None:
        """The end of every constructor: one config object for the model and its trunk (a change such as
        resize_token_embeddings' vocab_size shows in both), the attention. The init is each layer's Keras
        initializer (N(0, initializer_range), residual projections scaled, set where the layers are made); a tied
        head has no variable to tie (it reads wte)."""
        trunk = self.trunk
        if trunk is not self and isinstance(trunk, TFGPT2PreTrainedModel):
            trunk.config = self.config
        self.set_attn_implementation(attn_implementation or "eager")

    def set_attn_implementation(self, name: str) -> None:
        """Only "eager": attention in plain TensorFlow ops, which XLA fuses under jit_compile. torch's "sdpa" and
        "flash_attention_2" are torch kernels, with no TensorFlow counterpart."""
        if name != "eager":
            raise ValueError(f"attn_implementation={name!r} is not available in TensorFlow: torch's 'sdpa' and "
                             f"'flash_attention_2' are torch kernels; TensorFlow runs 'eager' (plain ops, fused by "
                             f"XLA under jit_compile)")
        self.attn_implementation = name

    def __dir__(self):
        # Keras' loader (saving_lib) walks every attribute dir() lists and loads each layer it finds, with no guard
        # against an attribute that leads back to the model: ``trunk`` is the model itself on TFGPT2Model (infinite
        # recursion in pickle.loads / keras.models.load_model) and ``transformer`` again on the heads.
        return [name for name in super().__dir__() if name != "trunk"]

    @property
    def trunk(self) -> keras.Model:
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self) -> str:
        """The device of the first variable (TensorFlow places the others alike unless told otherwise)."""
        return self.weights[0].value.device if self.weights else ""

    @property
    def dtype(self) -> str:
        """The variables' dtype name (float32 under the mixed precision policies, whose compute dtype is
        ``compute_dtype``); Keras' own meaning of Layer.dtype."""
        return weights.dtype_name(self.weights[0].dtype) if self.weights else self.dtype_policy.variable_dtype

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(int(np.prod(v.shape)) for v in (self.trainable_weights if only_trainable else self.weights))

    # -- embeddings -------------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> keras.layers.Layer:
        return self.trunk.wte

    def set_input_embeddings(self, value: keras.layers.Layer) -> None:
        _replace(self.trunk, "wte", value)
        self.tie_weights()

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, value: keras.layers.Layer) -> None:
        if not hasattr(self, "lm_head"):
            raise ValueError(f"{type(self).__name__} has no output embeddings (lm_head)")
        _replace(self, "lm_head", value)

    def enable_input_require_grads(self) -> None:
        """A no-op in TensorFlow: a GradientTape differentiates with respect to any tensor it watches, whether or
        not the embeddings are trainable (torch needs a hook for PEFT with frozen embeddings; TF does not)."""

    def disable_input_require_grads(self) -> None:
        """A no-op, as enable_input_require_grads."""

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the variables (``return_buffers=False``: the trainable ones only), as transformers'."""
        tensors = self.weights if return_buffers else self.trainable_weights
        return sum(int(np.prod(v.shape)) * weights.numpy_dtype(v.dtype).itemsize
                   for v in {id(v): v for v in tensors}.values())

    def tie_weights(self) -> None:
        """A tied head has no variable of its own: it reads the trunk's wte when it runs. Point it at the trunk's
        current embeddings (after set_input_embeddings or resize_token_embeddings replaced them) through the
        head's ``tie(embedding)``."""
        head = self.get_output_embeddings()
        tie = getattr(head, "tie", None)
        if head is not None and self.config.tie_word_embeddings and callable(tie):
            tie(self.trunk.wte)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None):
        """Grow or shrink the token table (and an untied lm_head); new rows get the init. Returns the table."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        head = self.get_output_embeddings()
        if head is not None and self.config.tie_word_embeddings and not callable(getattr(head, "tie", None)):
            raise NotImplementedError(f"{type(self).__name__}.resize_token_embeddings: the tied lm_head cannot be "
                                      f"pointed at a new table (it has no tie(embedding) method)")
        rows, width = old.embeddings.shape
        size = new_num_tokens if new_num_tokens is not None else rows
        if pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        keep = min(size, rows)
        init = keras.initializers.RandomNormal(stddev=self.config.initializer_range)
        table = weights.to_numpy(old.embeddings)
        new_table = np.concatenate([table[:keep], np.asarray(init((size - keep, width)), table.dtype)])
        new = keras.layers.Embedding(size, width, embeddings_initializer=init, dtype=old.dtype_policy,
                                     name=old.name)
        new.build()
        new.embeddings.assign(new_table)
        _replace(self.trunk, "wte", new)
        if head is not None and not self.config.tie_word_embeddings:
            kernel = weights.to_numpy(head.kernel)  # [in, vocab]
            new_head = keras.layers.Dense(size, use_bias=False, kernel_initializer=init, dtype=head.dtype_policy,
                                          name=head.name)
            new_head.build((None, kernel.shape[0]))
            new_head.kernel.assign(np.concatenate([kernel[:, :keep],
                                                   np.asarray(init((kernel.shape[0], size - keep)), kernel.dtype)],
                                                  axis=1))
            _replace(self, "lm_head", new_head)
        self.config.vocab_size = size
        self.trunk.config.vocab_size = size  # the same object once post_init has run; a copy otherwise
        self.tie_weights()
        return new

    # -- training utilities -----------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block's activations in the backward pass (tf.recompute_grad) instead of storing them."""
        self.trunk.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.trunk.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.trunk, "gradient_checkpointing", False))

    # -- canonical state (weights.py maps it) -----------------------------------------------------------------------
    def state_to_canonical(self) -> dict[str, np.ndarray]:
        """The model's weights in the canonical form (gpt2/common/checkpoint.py), as every format is written."""
        return weights.state_to_canonical(self)

    def load_canonical(self, state: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
        """Assign canonical arrays to the variables; returns (missing weight paths, unused canonical names)."""
        result = weights.load_canonical(self, state)
        self.tie_weights()
        return result

    # -- files ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, config: GPT2Config | None = None, dtype=None,
                        attn_implementation: str | None = None, revision: str | None = None, cache_dir=None,
                        local_files_only: bool = False, use_safetensors: bool | None = None,
                        output_loading_info: bool = False, **kwargs):
        """Load any checkpoint format (tf_model.h5, safetensors, pytorch_model.bin, flax_model.msgpack, OpenAI's).

        ``dtype``: None (Keras' global dtype policy, float32 by default), "auto" (the checkpoint's), "float32",
        "float16", "bfloat16", "mixed_float16", "mixed_bfloat16", a tf.DType or a keras.DTypePolicy.
        ``use_safetensors=True``: only a safetensors checkpoint will do. ``output_loading_info``: also return
        transformers' dict of missing / unexpected keys. Other keyword arguments override config fields
        (``num_labels=3``); transformers' loading options that change nothing here (from_pt, ...) are accepted,
        the ones not offered are a TypeError naming them, as is an unknown name. torch's ``torch_dtype``,
        ``device`` and ``device_map`` are refused: TensorFlow places variables itself (use ``with tf.device``).
        Head weights the checkpoint lacks keep their Keras init and are reported with a warning.
        """
        for name in ("torch_dtype", "device", "device_map"):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}.from_pretrained(): {name}= is torch's; "
                                f"{'use dtype=' if name == 'torch_dtype' else 'use `with tf.device(...)`'}")
        plan = loading.prepare(cls.__name__, pretrained_model_name_or_path, config=config, revision=revision,
                               cache_dir=cache_dir, local_files_only=local_files_only,
                               use_safetensors=use_safetensors, **kwargs)
        policy = resolve_dtype(dtype, plan)
        saved = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)  # the layers made in the constructor take it (thread-local in Keras 3)
        try:
            model = cls(plan.config, dtype=policy)
            model.set_attn_implementation(attn_implementation or "eager")
            model._build_for_loading()
        finally:
            keras.config.set_dtype_policy(saved)
        missing, unused = model.load_canonical(plan.state)
        info = loading.report(plan, missing, unused)
        return (model, info) if output_loading_info else model

    def _build_for_loading(self) -> None:
        """Make every variable once, so that loading can assign them: build() from the config where the class
        defines it, else a call on the smallest input (a (1, 1) sequence; with cross-attention an encoder state of
        one position)."""
        if self.built:
            return
        if type(self).build is not keras.Model.build:  # the classes build every variable from the config
            self.build(None)
            return
        ids = tf.zeros((1, 1, 1) if type(self).__name__ == "TFGPT2DoubleHeadsModel" else (1, 1), tf.int32)
        extra = {}
        if self.config.add_cross_attention:
            extra["encoder_hidden_states"] = tf.zeros((1, 1, self.config.n_embd), self.compute_dtype)
        self(ids, training=False, **extra)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload model", private: bool | None = None,
                    token=None, max_shard_size: int | str | None = "10GB", create_pr: bool = False,
                    safe_serialization: bool = False, revision: str | None = None):
        """save_pretrained into a temporary folder, then upload it to ``repo_id`` (needs huggingface_hub)."""
        return hub.push_to_hub(
            lambda folder: self.save_pretrained(folder, safe_serialization=safe_serialization,
                                                max_shard_size=max_shard_size),
            repo_id, commit_message=commit_message, private=private, token=token, create_pr=create_pr,
            revision=revision)

    def save_pretrained(self, save_directory, safe_serialization: bool = False,
                        max_shard_size: int | str | None = "10GB") -> None:
        """Write config.json and tf_model.h5 in transformers' TF layout (its TF classes load it), or
        model.safetensors with ``safe_serialization=True`` (transformers' TF and PyTorch classes load it), with
        generation_config.json for generative models: one transaction (docs/checkpoints.md). Defaults as
        transformers' TF save_pretrained (h5, 10GB shards). A model never called yet is built first (its initial
        weights are what it would compute with)."""
        if not self.built:
            self.build()
        config = self.config.copy()
        config.dtype = self.dtype
        save_checkpoint(self.state_to_canonical(), Path(save_directory), config,
                        format="safetensors" if safe_serialization else "tf", max_shard_size=max_shard_size,
                        architecture=type(self).__name__.removeprefix("TF"), side_files=self._files_to_save())

    def _files_to_save(self) -> dict[str, str]:
        """{file name: text} that save_pretrained writes beside the weights and config.json."""
        return {}

    # -- Keras training: fit / evaluate / predict on dicts of model inputs ------------------------------------------
    def train_step(self, data):
        """One optimizer step on a batch: a dict of call arguments (input_ids, attention_mask, labels, ...), or
        (inputs, labels). Without a loss given to compile(), the loss is the model's (from labels); with one, it
        is Keras' loss on (labels, logits). Under a tf.distribute strategy each replica's loss is divided by the
        replica count, so that the summed gradients are the mean's (what Keras' own losses do)."""
        inputs, y, sample_weight = self._unpack(data)
        with tf.GradientTape() as tape:
            out = self(**inputs, training=True)
            loss = self._compute_loss(x=inputs, y=y, y_pred=out, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(_unscale(loss), sample_weight=_batch_size(inputs))
            scaled = self.optimizer.scale_loss(loss) if self.optimizer is not None else loss
        variables = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self.compute_metrics(inputs, y, _logits(out), sample_weight=sample_weight)

    def test_step(self, data):
        """train_step's loss and metrics without the update (model.evaluate)."""
        inputs, y, sample_weight = self._unpack(data)
        out = self(**inputs, training=False)
        loss = self._compute_loss(x=inputs, y=y, y_pred=out, sample_weight=sample_weight, training=False)
        self._loss_tracker.update_state(_unscale(loss), sample_weight=_batch_size(inputs))
        return self.compute_metrics(inputs, y, _logits(out), sample_weight=sample_weight)

    def predict_step(self, data):
        """model.predict: the output's tensors (logits, ...) as a dict, without the cache."""
        inputs, _, _ = self._unpack(data)
        inputs.pop("labels", None)
        out = self(**{"use_cache": False, **inputs}, training=False)
        return {k: v for k, v in out.items() if isinstance(v, tf.Tensor)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The model's own loss (``y_pred.loss``, from the labels in the batch) unless compile() was given a loss;
        plus any losses layers added. Scaled for the replicas of a distribution strategy, as Keras' losses are."""
        if self._compile_loss is not None:
            return super().compute_loss(x, y, _logits(y_pred), sample_weight, training=training)
        if getattr(y_pred, "loss", None) is None:
            raise ValueError(f"{type(self).__name__}: no loss to train on: put labels in the batches (a dict with "
                             f"'labels', or (inputs, labels)), or give compile() a loss")
        loss = _scale(tf.cast(y_pred.loss, tf.float32))
        for extra in self.losses:
            loss += tf.cast(tf.reduce_sum(extra), tf.float32)
        return loss

    def _unpack(self, data) -> tuple[dict, object, object]:
        """(call arguments, Keras target, sample weight) from a batch. A separate target is the labels (passed to
        the model) unless compile() was given a loss (then Keras' loss reads it, and the model gets no labels)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs = dict(x) if isinstance(x, dict) else {"input_ids": x}
        if self._compile_loss is None:
            if y is not None:
                inputs["labels"] = y
        elif y is None and "labels" in inputs:
            y = inputs.pop("labels")
        return inputs, y, sample_weight


def _scale(loss):
    """A replica's loss divided by the replica count: the strategy sums the replicas' gradients."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def _unscale(loss):
    """The per-replica loss back to the mean for the loss tracker (Keras' train_step does the same)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss


def _batch_size(inputs: dict):
    return tf.shape(next(v for v in inputs.values() if v is not None))[0]


def _logits(out):
    return getattr(out, "logits", out)


def _replace(layer: keras.layers.Layer, name: str, value) -> None:
    """Set ``layer.<name>`` to a new sub-layer once ``layer`` is built: Keras 3 locks a built layer's state (its
    tracker) and keeps tracking a replaced sub-layer's variables unless the attribute is deleted first."""
    if getattr(layer, name, None) is value:
        return
    tracker = getattr(layer, "_tracker", None)
    locked = bool(tracker is not None and tracker.locked)
    if locked:
        tracker.unlock()
    try:
        old = getattr(layer, name, None)
        if old is not None:
            if tracker is not None:  # Keras 3 untracks a deleted variable, not a deleted sub-layer
                tracker.untrack(old)
            delattr(layer, name)
        setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()
