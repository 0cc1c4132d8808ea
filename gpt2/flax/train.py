"""Training the Flax models: a jitted optax step over ``model(..., params=p, labels=ids, dropout_rng=k, train=True)``.

The framework-free half (options, data, schedule, the decay rule, the run folder, metrics, the loss plot) is
gpt2/common/training.py's ``Run``; this file is what only JAX does:

- **The optimizer**: ``optax.chain(clip_by_global_norm(clip), adamw(schedule, b1, b2, eps, weight_decay,
  mask=...))``. The schedule is optax's ``warmup_cosine_decay_schedule`` built from ``Run.schedule``'s four numbers
  (the same rates as the other frameworks); the decay mask is ``common.training.decays`` of each parameter's
  canonical name, found through ``weights.variables`` (no bias, LayerNorm or embedding decays).
- **The loss**: the LM head's own ``causal_lm_loss`` (heads.py: predict token t+1 from t, the mean in float32) over
  the model's logits. Not through ``labels=``, whose range check is a host callback inside the compiled step (and a
  host callback makes the step uncacheable): the ids are checked once, on the host, against the vocabulary
  (``TokenFile.check_vocab`` in ``Run``).
- **The step**: one ``jax.jit`` function of (params, optimizer state, the update's micro-batches, the update's
  number). Gradient accumulation is a ``lax.scan`` over the ``grad_accum`` micro-batches after the first, whose
  gradients start the sums (no zero-filled accumulators), gradients and losses averaged (every row holds
  ``block_size`` tokens, so this is the mean over the whole update's tokens), then one optimizer update. Params
  and optimizer state are donated.
- **Random numbers**: dropout's key of micro-batch ``m`` of update ``s`` is ``fold_in(fold_in(key(seed), s), m)``:
  a pure function of the update's number, so a resumed run draws the very masks of an uninterrupted one. The
  checkpoint records the rule and the seed (trainer_state.json's ``rng``); nothing else needs saving.
- **Precision**: ``fp32``; ``bf16`` is mixed precision, the Flax way: weights and optimizer state in float32
  (``param_dtype``), the computation in bfloat16 (``dtype``), the loss in float32. ``fp16`` computes in float16
  with dynamic loss scaling (``_LossScale``, torch's GradScaler rule: the loss times the scale, the gradients
  divided by it; an update whose gradients are not finite is skipped and halves the scale; 2000 finite updates in a
  row double it), on a GPU (``FP16_BACKENDS``: a CPU emulates fp16 products slowly; bf16 is its mixed precision).
- **Devices**: a ``Mesh`` (gpt2/flax/sharding.py) with a "data" axis over every local device by default: the weights
  placed by their partitioning annotations (replicated on a data-only mesh; split over "model" when the mesh has
  one), each micro-batch split over "data", the same jitted step (XLA inserts the gradient all-reduce). One and N
  devices see the same rows per update, so the losses agree up to the order of floating-point sums.
- **Checkpoints**: ``save_pretrained`` (flax_model.msgpack + config.json: loads in every framework) plus
  ``optimizer.msgpack`` (``flax.serialization`` of the optax state, which holds the update count the schedule
  reads; with fp16, the loss scale too) inside the run folder's atomic ``checkpoint-<step>/``. ``resume=True``
  loads the newest: the weights from its save_pretrained files (float32, exact), the optimizer state, and the step;
  the data of every update is a function of its number (common/data.py).

Multi-process JAX (``jax.distributed``, several hosts) is not offered: one process drives its local devices.

>>> from gpt2.flax.train import train
>>> summary = train(data="corpus.txt", config="gpt2", out="run1", steps=1000, batch_size=8, block_size=256)
>>> summary["eval_loss"], summary["out"]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..common.training import Run, TrainArgs, decays
from .heads import FlaxGPT2LMHeadModel, causal_lm_loss
from .sharding import DATA, make_mesh, shard_batch, shard_model
from .weights import variables

OPTIMIZER_FILE = "optimizer.msgpack"
DROPOUT_RULE = "fold_in(fold_in(jax.random.key(seed), update), micro_batch)"
_COMPUTE = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}
# The JAX backends --precision fp16 is offered on. XLA runs float16 on a CPU too, but emulates its products slowly
# (bf16 is the CPU's mixed precision); the tests add "cpu" here to run the loss scaling where CI can.
FP16_BACKENDS = frozenset({"gpu"})


def train(*, mesh: Mesh | None = None, **options) -> dict:
    """Train a Flax GPT-2 (the Python form of ``gpt2 train --framework flax``); keyword names are TrainArgs' fields
    (``data``, ``out``, ``config`` or ``model``, ``steps``, ``batch_size``, ``lr``, ``resume``, ...). ``mesh``: a
    ``jax.sharding.Mesh`` with axes ("data", "model") (sharding.make_mesh) to train on; default: every local device
    on "data". Returns the summary of ``train_from_args``.

    >>> train(data="corpus.txt", config="config.json", out="run", steps=200, batch_size=8, block_size=128)
    """
    framework = options.pop("framework", "flax")
    if framework != "flax":
        raise ValueError(f"gpt2.flax.train.train(): framework={framework!r}; this is the Flax trainer (use "
                         f"gpt2.{framework}.train.train, or gpt2.common.training.train for any framework)")
    known = {f.name for f in dataclasses.fields(TrainArgs)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"gpt2.flax.train.train(): unknown option(s) {', '.join(unknown)} (the options are "
                        f"TrainArgs' fields: {', '.join(sorted(known - {'framework'}))})")
    return train_from_args(TrainArgs(framework="flax", **options), mesh=mesh)


def train_from_args(args: TrainArgs, *, mesh: Mesh | None = None) -> dict:
    """Run ``args`` (a TrainArgs with framework "flax"). Returns ``{"step", "loss", "eval_loss", "perplexity",
    "out", "losses"}``: the last update, its training loss, the last evaluation, the run folder, and
    ``{update: training loss}`` for every update this call made (1-based, as metrics.jsonl)."""
    if not isinstance(args, TrainArgs):
        raise TypeError(f"train_from_args() takes a TrainArgs, got {type(args).__name__}")
    args.validate()
    if args.framework != "flax":
        raise ValueError(f"--framework {args.framework}: gpt2.flax.train runs only --framework flax")
    compute = _compute_dtype(args.precision)
    mesh = _mesh(mesh)
    run = Run(args, devices=mesh.shape[DATA])

    model = _load_model(run, compute)
    if mesh.size > 1:
        shard_model(model, mesh)
    params = model.params
    tx = _optimizer(run, _decay_mask(model))
    opt_state = jax.jit(tx.init)(params)  # laid out as params (sharded where they are)
    if args.precision == "fp16":
        opt_state = (opt_state, _LossScale.initial())
    if run.resume_from is not None:
        opt_state = _load_optimizer(run.resume_from / OPTIMIZER_FILE, opt_state)
        run.metrics.write(f"resuming from {run.resume_from} (update {run.start_step})")

    step_fn = _train_step(model, tx, seed=args.seed, loss_scaling=args.precision == "fp16")
    eval_fn = _eval_step(model)
    place = _batch_placer(mesh)
    rng = {"seed": args.seed, "dropout": DROPOUT_RULE}

    def write(folder: Path, params=None, opt_state=None) -> None:
        model.save_pretrained(folder, params=params)
        if opt_state is not None:
            (folder / OPTIMIZER_FILE).write_bytes(serialization.to_bytes(jax.device_get(opt_state)))

    losses: dict[int, jax.Array] = {}
    evaluated = None
    try:
        for step in range(run.start_step, run.steps):
            micro = place(run.batches.batch(step, run.rank))
            params, opt_state, loss = step_fn(params, opt_state, micro, jnp.asarray(step, jnp.int32))
            done = step + 1
            losses[done] = loss
            if run.should_log(done):
                run.log(done, loss=float(loss), lr=run.schedule(step))
            else:
                run.metrics.advance(done)
            if run.should_eval(done):
                evaluated = run.log_eval(done, _evaluate(run, eval_fn, params, mesh))
            if run.should_save(done):
                run.save(done, lambda folder, p=params, o=opt_state: write(folder, p, o), rng=rng)
        if evaluated is None:  # nothing trained in this call (resumed at the end): the model is still evaluated
            evaluated = run.log_eval(run.steps, _evaluate(run, eval_fn, params, mesh))
    except BaseException:
        run.metrics.close()
        raise
    model.params = params  # the trained weights in the model itself (gathered by save_pretrained when sharded)
    run.finish(lambda folder: write(folder), rng=rng)
    history = {s: float(v) for s, v in jax.device_get(losses).items()}
    last = history[run.steps] if run.steps in history else None
    return {"step": run.steps, "loss": last, "eval_loss": evaluated["eval_loss"],
            "perplexity": evaluated["perplexity"], "out": str(run.out), "losses": history}


# -- set-up ------------------------------------------------------------------------------------------------------------
def _compute_dtype(precision: str):
    if precision == "fp16" and jax.default_backend() not in FP16_BACKENDS:
        raise ValueError(f"--precision fp16 needs a GPU (float16 compute with loss scaling); JAX's backend here is "
                         f"{jax.default_backend()!r}, which emulates float16 slowly: use --precision bf16 (mixed "
                         f"precision) or fp32")
    return _COMPUTE[precision]


def _mesh(mesh: Mesh | None) -> Mesh:
    if mesh is None:
        return make_mesh(data=len(jax.devices()), model=1)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (gpt2.flax.sharding.make_mesh builds one), got "
                        f"{type(mesh).__name__}")
    if DATA not in mesh.shape:
        raise ValueError(f"mesh must have a {DATA!r} axis (the batch is split over it); its axes are "
                         f"{tuple(mesh.axis_names)}")
    return mesh


def _load_model(run: Run, compute) -> FlaxGPT2LMHeadModel:
    """The model to train: the checkpoint's weights on resume, else ``--model``'s, else a new model from the config
    with GPT-2's initialisation (the layers' own initializers; residual projections scaled by 1/sqrt(2 n_layer)),
    seeded by ``--seed``. Weights always float32; ``compute`` the computation dtype."""
    source = run.resume_from if run.resume_from is not None else run.init_from
    if source is None:
        return FlaxGPT2LMHeadModel(run.config, dtype=compute, param_dtype=jnp.float32, seed=run.args.seed)
    model = FlaxGPT2LMHeadModel.from_pretrained(source, dtype=compute, param_dtype="float32", seed=run.args.seed)
    return model


def _decay_mask(model) -> dict:
    """A pytree shaped as ``model.params``: True where AdamW's weight decay applies (common.training.decays of the
    parameter's canonical name)."""
    names = {id(var): name for name, (_, var, _) in variables(model).items()}
    mask: dict = {}
    for keys, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if id(var) not in names:
            raise RuntimeError(f"parameter {'.'.join(map(str, keys))} has no canonical name (weights.variables)")
        node = mask
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = decays(names[id(var)])
    return mask


def _learning_rate(run: Run):
    """optax's warmup + cosine schedule with ``run.schedule``'s numbers (the same rate at every update)."""
    s = run.schedule
    if s.total <= s.warmup:  # the run is all warmup: optax's cosine needs a positive decay length
        return optax.linear_schedule(0.0, s.peak, max(1, s.warmup))
    return optax.warmup_cosine_decay_schedule(0.0, s.peak, s.warmup, s.total, s.final)


def _optimizer(run: Run, mask: dict) -> optax.GradientTransformation:
    args = run.args
    adamw = optax.adamw(_learning_rate(run), b1=args.beta1, b2=args.beta2, eps=args.eps,
                        weight_decay=args.weight_decay, mask=mask)
    return optax.chain(optax.clip_by_global_norm(args.clip), adamw) if args.clip else adamw


def _load_optimizer(path: Path, template):
    """The optimizer state saved at ``path``, placed as ``template`` (a freshly initialised state) is."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} is missing (a Flax checkpoint holds its optimizer state there)")
    try:
        restored = serialization.from_bytes(jax.device_get(template), path.read_bytes())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--resume: {path} does not hold this run's optimizer state ({e})") from e

    def place(like, value):
        if np.shape(value) != like.shape:
            raise ValueError(f"--resume: {path}: an optimizer array of shape {np.shape(value)}, this run's is "
                             f"{like.shape}")
        return jax.device_put(jnp.asarray(value, like.dtype), like.sharding)

    return jax.tree.map(place, template, restored)


# -- the compiled functions --------------------------------------------------------------------------------------------
class _LossScale:
    """Dynamic loss scaling for fp16, as a pytree {"scale": float32, "good": int32} carried beside the optax state
    (and saved with it). torch's GradScaler numbers: start at 2**16; a non-finite gradient skips the update and
    halves the scale (never below 1); ``GROWTH_INTERVAL`` finite updates in a row double it."""

    INITIAL, GROWTH_INTERVAL = 2.0 ** 16, 2000

    @staticmethod
    def initial() -> dict:
        return {"scale": jnp.asarray(_LossScale.INITIAL, jnp.float32), "good": jnp.zeros((), jnp.int32)}

    @staticmethod
    def next(state: dict, finite) -> dict:
        good = jnp.where(finite, state["good"] + 1, 0)
        grow = good >= _LossScale.GROWTH_INTERVAL
        scale = jnp.where(finite, jnp.where(grow, state["scale"] * 2, state["scale"]),
                          jnp.maximum(state["scale"] / 2, 1.0))
        return {"scale": scale, "good": jnp.where(grow, 0, good)}


def _train_step(model, tx: optax.GradientTransformation, *, seed: int, loss_scaling: bool = False):
    """The jitted update: (params, opt_state, micro (grad_accum, B, T) int32, update number) -> (params, opt_state,
    the update's mean loss). With ``loss_scaling`` (fp16) ``opt_state`` is (the optax state, ``_LossScale``'s
    state): each micro-batch's loss is multiplied by the scale before its gradient, the summed gradients divided by
    it, and an update with a non-finite gradient leaves params and optax state as they were."""
    root = jax.random.key(seed)

    def step(params, opt_state, micro, number):
        key = jax.random.fold_in(root, number)
        if loss_scaling:
            opt_state, scaling = opt_state
            scale = scaling["scale"]
        else:
            scale = None

        def gradients(index, ids):
            def loss_fn(p):
                logits = model(ids, params=p, dropout_rng=jax.random.fold_in(key, index), train=True,
                               use_cache=False).logits
                loss = causal_lm_loss(logits, ids)
                return (loss if scale is None else loss * scale), loss

            (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return loss, grads

        def one(total, xs):
            return jax.tree.map(jnp.add, total, gradients(*xs)), None

        # the first micro-batch's gradients start the sums (no zero-filled accumulators), the others are added
        n = micro.shape[0]
        loss, grads = gradients(jnp.asarray(0), micro[0])
        if n > 1:
            (loss, grads), _ = jax.lax.scan(one, (loss, grads), (jnp.arange(1, n), micro[1:]))
        divisor = n if scale is None else n * scale
        loss, grads = loss / n, jax.tree.map(lambda g: g / divisor, grads)
        updates, new_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if scale is None:
            return new_params, new_state, loss
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        return keep(new_params, params), (keep(new_state, opt_state), _LossScale.next(scaling, finite)), loss

    return jax.jit(step, donate_argnums=(0, 1))


def _eval_step(model):
    def loss(params, ids):
        return causal_lm_loss(model(ids, params=params, use_cache=False).logits, ids)

    return jax.jit(loss)


def _batch_placer(mesh: Mesh):
    """micro-batches (grad_accum, B, T) -> device arrays, B split over "data" (one device: a plain transfer)."""
    if mesh.size == 1:
        return jnp.asarray
    sharding = NamedSharding(mesh, PartitionSpec(None, DATA, None))
    return lambda micro: jax.device_put(micro, sharding)


def _evaluate(run: Run, eval_fn, params, mesh: Mesh) -> float:
    """The mean loss over the run's validation batches (full batches of equal size: the mean over their tokens)."""
    losses = [eval_fn(params, shard_batch(mesh, ids) if mesh.size > 1 else jnp.asarray(ids))
              for ids in run.eval_batches()]
    return float(np.mean(jax.device_get(losses)))
