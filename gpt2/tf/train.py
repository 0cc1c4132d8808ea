"""``gpt2 train --framework tf``: Keras ``fit`` with the model's own loss, around common's ``Run``.

The framework-free half (options, data order, schedule numbers, weight-decay rule, the run folder, metrics, the loss
plot) is gpt2/common/training.py and gpt2/common/data.py; this file is the Keras half:

- the model: ``TFGPT2LMHeadModel(config)`` for ``--config`` (each layer's Keras initializer: N(0, 0.02), residual
  projections scaled by 1/sqrt(2 n_layer)), ``from_pretrained`` for ``--model`` and for ``--resume``;
- ``compile(optimizer)`` without a loss (the batches carry ``labels``; the model shifts them inside its loss);
- ``keras.optimizers.AdamW`` with ``exclude_from_weight_decay`` (by variable identity: every variable whose
  canonical name common's ``decays()`` rejects), ``global_clipnorm``, and ``_WarmupCosine``: Keras' ``CosineDecay``
  with common's four schedule numbers;
- one Keras step per optimizer UPDATE (``_UpdateStep``, the model's ``train_step`` for the run): a batch holds the
  update's ``grad_accum`` micro-batches side by side ([B, A, T]); a ``tf.while_loop`` sums their gradients, they are
  averaged over the replicas (one all-reduce), and ``apply_gradients`` runs once. So ``--grad-accum`` works under
  a MirroredStrategy (Keras' own ``gradient_accumulation_steps`` applies inside a ``cond``, where tf.distribute
  cannot all-reduce), and the gradient-norm clip sees the whole batch's gradient: Keras 3 clips each replica's
  share before its all-reduce, which makes a 2-replica run drift from the one-device run (``_SummedAdamW``);
- mixed precision by Keras policy (bf16: ``mixed_bfloat16``; fp16: ``mixed_float16``, which ``compile`` wraps in a
  ``LossScaleOptimizer``, on a GPU only);
- the data: a ``tf.data.Dataset`` of common's updates from the resume step on; ``fit`` runs one Keras "epoch" of
  one step per update (``initial_epoch=start step``), so an epoch's ``loss`` is exactly that update's mean loss and
  Keras' own resume argument is the step;
- a callback logs, evaluates (``model.evaluate`` on the held-out batches) and checkpoints through the ``Run``;
- a checkpoint is ``save_pretrained`` (model.safetensors: every framework and transformers load it), the optimizer's
  variables (``save_own_variables``) in ``optimizer.npz``, and the dropout layers' Keras ``SeedGenerator`` states in
  trainer_state.json: ``--resume`` restores all three and gives the losses of an uninterrupted run, bit for bit;
- ``tf.distribute.MirroredStrategy`` over every visible GPU when there are several (or the ``strategy=`` given):
  each replica takes its share of every micro-batch of common's global batch.

Refused, by name: ``--precision fp16`` without a GPU.

>>> from gpt2.tf.train import train
>>> summary = train(data="corpus.txt", config="config.json", out="run1", steps=200, batch_size=8, lr=1e-3)
>>> summary["eval_loss"], summary["out"]
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..common import files
from ..common.training import Run, TrainArgs, decays
from . import weights
from .heads import TFGPT2LMHeadModel

OPTIMIZER_FILE = "optimizer.npz"
_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# The device types --precision fp16 is offered on. TensorFlow runs mixed_float16 (and its loss scaling) on a CPU
# too, but emulates the fp16 products slowly there (bf16 is the CPU's mixed precision); the tests add "CPU" here to
# run the loss scaling where CI can.
FP16_DEVICES = frozenset({"GPU"})


def train(*, strategy: tf.distribute.Strategy | None = None, **options) -> dict:
    """Train a GPT-2 LM with Keras; the keyword names are common's ``TrainArgs`` fields (the command's flags).

    ``strategy``: a ``tf.distribute.Strategy`` to train under (default: a MirroredStrategy over the visible GPUs
    when there are several, else none). Returns a summary: ``step`` (updates done), ``loss`` (the last update's
    training loss; None when nothing was left to train), ``eval_loss`` and ``perplexity`` (the final evaluation),
    ``out`` (the run folder, holding the final model)."""
    framework = options.pop("framework", "tf")
    if framework != "tf":
        raise ValueError(f"gpt2.tf.train.train() trains with TensorFlow; got framework={framework!r} (use "
                         f"gpt2.{framework}.train.train or gpt2.common.training.train)")
    try:
        args = TrainArgs(framework="tf", **options)
    except TypeError as e:
        raise TypeError(f"gpt2.tf.train.train(): {e} (the options are TrainArgs' fields)") from None
    return train_from_args(args, strategy=strategy)


def train_from_args(args: TrainArgs, *, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Run one training (or its continuation with ``args.resume``) described by ``args``; see ``train``."""
    if args.framework != "tf":
        raise ValueError(f"gpt2.tf.train runs --framework tf, got {args.framework!r}")
    strategy = _strategy(strategy)
    args.validate()
    policy = _policy(args.precision)
    run = Run(args, devices=strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(args.seed)  # the initialisation and the dropout layers' first seeds
    with strategy.scope():
        model = _model(run, policy)
        optimizer = _optimizer(run, model)
        model.compile(optimizer=optimizer)  # no loss: the model's own (mixed_float16 wraps a LossScaleOptimizer)
        model.train_step = _UpdateStep(model, args.grad_accum)
        model.optimizer.build(model.trainable_variables)
        if run.resume_from is not None:
            _restore(run, model)
    callback = _RunCallback(run)
    callback.set_model(model)
    try:
        if run.start_step < run.steps:
            model.fit(_dataset(run), epochs=run.steps, initial_epoch=run.start_step,
                      steps_per_epoch=1, callbacks=[callback], verbose=0, shuffle=False)
    except BaseException:  # the last good checkpoint stays as it was; close the bar before the error shows
        run.metrics.close()
        raise
    if callback.eval_loss is None or callback.eval_step != run.steps:
        callback.evaluate(run.steps)
    run.finish(write=lambda folder: model.save_pretrained(folder, safe_serialization=True), rng=_rng_state(model))
    return {"step": run.steps, "loss": callback.loss, "eval_loss": callback.eval_loss,
            "perplexity": float(np.exp(callback.eval_loss)) if callback.eval_loss < 700 else float("inf"),
            "out": str(run.out)}


# -- set-up ----------------------------------------------------------------------------------------------------------
def _strategy(strategy):
    if strategy is not None:
        if not isinstance(strategy, tf.distribute.Strategy):
            raise TypeError(f"strategy must be a tf.distribute.Strategy, got {type(strategy).__name__}")
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy([g.name for g in gpus]) if len(gpus) > 1 else tf.distribute.get_strategy()


def _policy(precision: str) -> keras.DTypePolicy:
    if precision == "fp16" and not any(tf.config.list_logical_devices(kind) for kind in sorted(FP16_DEVICES)):
        raise ValueError("--precision fp16 needs a GPU (float16 compute with loss scaling); TensorFlow on this CPU "
                         "offers --precision bf16 (mixed_bfloat16) or fp32")
    return keras.DTypePolicy(_POLICIES[precision])


def _model(run: Run, policy: keras.DTypePolicy) -> TFGPT2LMHeadModel:
    """--resume: the checkpoint's weights; --model: the saved model's; --config: a new model with its Keras init."""
    source = run.resume_from or run.init_from
    if source is not None:
        return TFGPT2LMHeadModel.from_pretrained(source, dtype=policy)
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # the sub-layers made in the constructor take it
    try:
        model = TFGPT2LMHeadModel(run.config, dtype=policy)
        model.build()
    finally:
        keras.config.set_dtype_policy(saved)
    return model


def _optimizer(run: Run, model: TFGPT2LMHeadModel) -> keras.optimizers.AdamW:
    args = run.args
    optimizer = _SummedAdamW(
        learning_rate=_WarmupCosine(run.schedule.peak, run.schedule.warmup, run.schedule.total, run.schedule.final),
        weight_decay=args.weight_decay, beta_1=args.beta1, beta_2=args.beta2, epsilon=args.eps,
        global_clipnorm=args.clip or None, name="adamw")
    decayed = {id(var) for cname, (_, var, _) in weights.variables(model).items() if decays(cname)}
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if id(v) not in decayed])
    return optimizer


class _SummedAdamW(keras.optimizers.AdamW):
    """Keras' AdamW for gradients that ``_UpdateStep`` has already averaged over the replicas. Keras' TF optimizer
    all-reduces in ``_backend_update_step``, after ``apply`` has clipped each replica's own share: with the
    all-reduce done first, the global-norm clip sees the whole batch's gradient, as on one device."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


class _UpdateStep:
    """The run's ``train_step``: one optimizer update from a batch {"input_ids": [b, A, T]} (this replica's b rows
    of the update's A micro-batches). A ``tf.while_loop`` takes the micro-batches in order, each the model's own
    loss on ``labels=input_ids`` (the mean over its tokens; the dropout layers draw their masks micro-batch by
    micro-batch, as A separate steps would); their gradients are summed in fp32, averaged over the A micro-batches
    and the replicas, and applied once. The loss tracker gets the update's mean loss."""

    def __init__(self, model: TFGPT2LMHeadModel, accumulation: int) -> None:
        self.model, self.accumulation = model, int(accumulation)

    def __call__(self, data):
        model, A = self.model, self.accumulation
        ids = data["input_ids"]  # [b, A, T]
        variables = model.trainable_variables

        def gradients(a):
            x = ids[:, a]  # [b, T]
            with tf.GradientTape() as tape:
                loss = tf.cast(model(input_ids=x, labels=x, training=True).loss, tf.float32)
                scaled = model.optimizer.scale_loss(loss)  # mixed_float16: times the loss scale; else the loss
            return [tf.cast(tf.convert_to_tensor(g), tf.float32) for g in tape.gradient(scaled, variables)], loss

        def micro(a, sums, total):
            grads, loss = gradients(a)
            return a + 1, [s + g for s, g in zip(sums, grads)], total + loss

        sums, total = gradients(0)
        if A > 1:
            _, sums, total = tf.while_loop(lambda a, *_: a < A, micro, (tf.constant(1), sums, total),
                                           parallel_iterations=1)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        grads = [s * (1.0 / (A * replicas)) if A * replicas > 1 else s for s in sums]
        if replicas > 1:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        model.optimizer.apply_gradients(zip([tf.cast(g, v.dtype) for g, v in zip(grads, variables)], variables))
        model._loss_tracker.update_state(total / A, sample_weight=tf.shape(ids)[0])
        return {"loss": model._loss_tracker.result()}


@keras.saving.register_keras_serializable(package="gpt2")
class _WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Common's schedule (linear warmup from 0, cosine to ``final``) as Keras' ``CosineDecay`` with its warmup,
    indexed by the optimizer update (``optimizer.iterations``: one per update)."""

    def __init__(self, peak: float, warmup: int, total: int, final: float) -> None:
        self.peak, self.warmup, self.total, self.final = float(peak), int(warmup), int(total), float(final)
        self.cosine = keras.optimizers.schedules.CosineDecay(
            0.0, max(1, self.total - self.warmup), alpha=self.final / self.peak, warmup_target=self.peak,
            warmup_steps=self.warmup)

    def __call__(self, step):
        update = tf.cast(step, tf.int64)
        # past the last update: the final rate (CosineDecay would restart at the peak when warmup == total)
        return tf.where(update >= self.total, tf.constant(self.final, tf.float32), self.cosine(update))

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total, "final": self.final}


def _dataset(run: Run) -> tf.data.Dataset:
    """Common's global batches of the updates [start step, steps), one element per update: {"input_ids": [B, A,
    T]}, row i holding row i of each of the update's A micro-batches. Rows are yielded one by one and batched by
    tf.data, so that a strategy gives each replica its share of every micro-batch."""
    batches, T, A = run.batches, run.block_size, run.args.grad_accum

    def rows():
        for step in range(run.start_step, run.steps):
            yield from np.swapaxes(batches.global_batch(step), 0, 1)  # [B, A, T] int32 ids

    ds = tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec((A, T), tf.int32))
    return ds.batch(run.args.batch_size, drop_remainder=True).map(lambda x: {"input_ids": x}).prefetch(2)


def _eval_dataset(run: Run) -> tf.data.Dataset:
    rows = np.concatenate(list(run.eval_batches()))  # the same batches every evaluation
    return tf.data.Dataset.from_tensor_slices({"input_ids": rows, "labels": rows}).batch(run.args.batch_size)


# -- checkpoints -----------------------------------------------------------------------------------------------------
def _seed_states(model) -> list:
    """The dropout layers' Keras SeedGenerator state variables, in the model's (construction) order."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def _rng_state(model) -> dict:
    return {"keras_seed_generators": [np.asarray(v.numpy()).tolist() for v in _seed_states(model)]}


def _write_checkpoint(folder: Path, model) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    store = {}
    model.optimizer.save_own_variables(store)
    buffer = io.BytesIO()
    np.savez(buffer, **store)
    files.write_bytes(Path(folder) / OPTIMIZER_FILE, buffer.getvalue())


def _restore(run: Run, model) -> None:
    """The optimizer's variables and the dropout seed states of ``run.resume_from`` (the weights came with
    from_pretrained); ValueError naming the file when they do not fit this optimizer / model."""
    path = run.resume_from / OPTIMIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} is missing (the optimizer state of the checkpoint)")
    try:
        with np.load(path) as npz:
            store = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"--resume: {path} is not a readable optimizer state ({e})") from None
    variables = model.optimizer.variables
    if sorted(store, key=int) != [str(i) for i in range(len(variables))]:
        raise ValueError(f"--resume: {path} holds {len(store)} optimizer variables, this optimizer has "
                         f"{len(variables)} (another precision or model? or a --grad-accum run of an earlier gpt2, "
                         f"whose Keras optimizer kept gradient accumulators)")
    for i, var in enumerate(variables):
        if tuple(store[str(i)].shape) != tuple(var.shape):
            raise ValueError(f"--resume: {path}: optimizer variable {i} ({var.path}) has shape "
                             f"{store[str(i)].shape}, expected {tuple(var.shape)}")
    model.optimizer.load_own_variables(store)
    saved = ((run.state or {}).get("rng") or {}).get("keras_seed_generators")
    seeds = _seed_states(model)
    if saved is None or len(saved) != len(seeds):
        raise ValueError(f"--resume: {run.resume_from}/trainer_state.json holds "
                         f"{'no' if saved is None else len(saved)} dropout seed states, the model has {len(seeds)}")
    for var, value in zip(seeds, saved):
        var.assign(np.asarray(value, dtype=weights.numpy_dtype(var.dtype)))


# -- the callback ----------------------------------------------------------------------------------------------------
class _RunCallback(keras.callbacks.Callback):
    """After each Keras epoch (one optimizer update): log its loss, evaluate, checkpoint, through the Run."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.loss = None
        self.eval_loss = None
        self.eval_step = None
        self._eval_data = None

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1  # updates done
        self.loss = float(logs["loss"])
        if not np.isfinite(self.loss):
            raise FloatingPointError(f"update {step}: the training loss is {self.loss} (lower --lr, or use "
                                     f"--clip / --precision fp32)")
        self.run.log(step, loss=self.loss)
        if self.run.should_eval(step):
            self.evaluate(step)
        if self.run.should_save(step):
            self.run.save(step, write=lambda folder: _write_checkpoint(folder, self.model),
                          rng=_rng_state(self.model))

    def evaluate(self, step: int) -> float:
        if self._eval_data is None:
            self._eval_data = _eval_dataset(self.run)
        self.eval_loss = float(self.model.evaluate(self._eval_data, verbose=0))
        self.eval_step = step
        self.run.log_eval(step, self.eval_loss)
        return self.eval_loss
