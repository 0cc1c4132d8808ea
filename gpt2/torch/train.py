"""``gpt2 train --framework torch``: a plain PyTorch loop around ``gpt2.common.training.Run``.

Everything that is the same in the three frameworks (options, data, schedule, weight-decay rule, the run folder,
metrics, the loss plot, refusals) lives in ``gpt2/common/training.py`` and ``gpt2/common/data.py``; this file is
the PyTorch half: the model (GPT-2's own init for a new one, ``from_pretrained`` to fine-tune or resume), trained
in row-major parameter order, fused ``torch.optim.AdamW`` with two parameter groups, ``LambdaLR`` over the common
schedule, gradient accumulation (micro-batch losses / grad_accum summed by backward), ``clip_grad_norm_``, mixed
precision (bf16 autocast on CPU and GPU; fp16 autocast + ``torch.amp.GradScaler`` on ``FP16_DEVICES``: CUDA), and
data parallelism through ``torchrun``: DistributedDataParallel (default) or FSDP2 (``fully_shard``), every rank
reading its own rows of the global batch.

>>> from gpt2.torch.train import train
>>> summary = train(framework="torch", data="corpus.txt", config="gpt2", out="run1", steps=1000, batch_size=8)
>>> summary["eval_loss"], summary["out"]

Under ``torchrun --nproc_per_node N`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the same call trains on
N processes: gloo on CPU, nccl on CUDA; ``distributed="fsdp"`` shards parameters, gradients and optimizer state.

Resuming (``resume=True``) continues from the newest checkpoint with the same losses as an uninterrupted run: the
weights (safetensors, exact), AdamW's moments and step, the learning-rate position, the fp16 loss scale, and every
rank's torch RNG states (dropout) are restored; the batches are a function of the step (common.data.Batches).
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..common import training
from .heads import GPT2LMHeadModel

OPTIMIZER_NAME = "optimizer.pt"  # AdamW's state (by parameter name), the GradScaler's, in every checkpoint folder
# The device types --precision fp16 is offered on. torch runs fp16 autocast and GradScaler on a CPU too, but a CPU
# without fp16 units emulates the products slowly (bf16 is the CPU's mixed precision); the tests add "cpu" here to
# run the loss scaling where CI can.
FP16_DEVICES = frozenset({"cuda"})


# -- public ------------------------------------------------------------------------------------------------------------
def train(**options) -> dict:
    """Train with PyTorch; ``options`` are ``gpt2.common.training.TrainArgs``' fields (``framework`` defaults to
    "torch"). Returns a summary: ``step`` (updates done), ``loss`` (the last training loss), ``eval_loss``,
    ``perplexity``, ``out`` (the run folder, holding the final model), ``world`` (processes).

    >>> train(data="corpus.txt", config="gpt2", out="run1", steps=100, batch_size=4, block_size=256,
    ...       precision="bf16", eval_every=50, save_every=50)
    """
    options.setdefault("framework", "torch")
    if options["framework"] != "torch":
        raise ValueError(f"gpt2.torch.train.train() trains with torch; got framework={options['framework']!r} (use "
                         f"gpt2.common.training.train for another framework)")
    return train_from_args(training.TrainArgs(**options))


def train_from_args(args: training.TrainArgs) -> dict:
    """Run the training that ``args`` (a TrainArgs) describes; see ``train``."""
    if not isinstance(args, training.TrainArgs):
        raise TypeError(f"train_from_args takes a gpt2.common.training.TrainArgs, got {type(args).__name__}")
    args.validate()
    if args.framework != "torch":
        raise ValueError(f"--framework {args.framework}: this is the torch trainer")
    mode = args.distributed
    started = _init_distributed()
    try:
        return _train(args, mode)
    finally:
        if started:
            dist.destroy_process_group()


# -- set-up ------------------------------------------------------------------------------------------------------------
def _init_distributed() -> bool:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1) and nobody has yet; True when we did."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def _device() -> torch.device:
    if torch.cuda.is_available():  # one GPU per process: torchrun's LOCAL_RANK
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _autocast(precision: str, device: torch.device):
    """The autocast context of a forward pass (a null context for fp32). fp16: on FP16_DEVICES (a CUDA GPU)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16":
        if device.type not in FP16_DEVICES:
            raise ValueError("--precision fp16 needs a CUDA GPU (fp16 autocast with GradScaler loss scaling); on CPU "
                             "use --precision bf16 or fp32")
        return torch.autocast(device.type, dtype=torch.float16)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _build_model(run: training.Run, device: torch.device) -> GPT2LMHeadModel:
    """The checkpoint to resume, the --model to fine-tune, or a new model with GPT-2's init (same on every rank)."""
    source = run.resume_from or run.init_from
    if source is not None:
        model = GPT2LMHeadModel.from_pretrained(source, device=device)
    else:
        torch.manual_seed(run.args.seed)  # every rank builds the same weights (FSDP shards each rank's copy)
        model = GPT2LMHeadModel(run.config).to(device)
    _contiguous(model)
    return model.train()


def _contiguous(model: GPT2LMHeadModel) -> None:
    """Every parameter in plain row-major order. The model keeps its projections and wte in the checkpoints'
    [in, out] memory order for decoding (model.py ``_in_out``), but a training step's weight gradients come out of
    backward row-major: autograd would copy each into the parameter's order, and the tied wte's two gradients (the
    embedding's and the lm_head's) would be added across the two orders, every update. FSDP2 also shards dim 0 of
    contiguous tensors only. The values are unchanged (the tied lm_head is wte: one tensor)."""
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()


def _wrap(model: GPT2LMHeadModel, mode: str, device: torch.device, world: int):
    """The model the loop calls: itself on one process, DDP or FSDP2 (each block, then the root) on several."""
    if world == 1:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root: embeddings (wte tied to lm_head), ln_f
    return model


def _optimizer(model, args: training.TrainArgs, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on ``training.decays`` parameters only (tied lm_head is wte: listed once), the fused
    implementation (CPU and CUDA): one pass over each parameter, its gradient and moments, where the default
    (foreach) makes about ten whole passes over them; on the CPU at the gpt2 (124M) shape the update takes ~1/4 of
    the time."""
    decay, no_decay = [], []
    for name, p in _unwrap(model).named_parameters():
        if p.requires_grad:
            (decay if training.decays(name) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=True)


def _unwrap(model) -> GPT2LMHeadModel:
    return model.module if hasattr(model, "module") and not isinstance(model, GPT2LMHeadModel) else model


# -- RNG states (dropout) ----------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if device.type == "cuda":
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()))
    if device.type == "cuda" and "cuda" in state:
        cuda = np.frombuffer(base64.b64decode(state["cuda"]), dtype=np.uint8).copy()
        torch.cuda.set_rng_state(torch.from_numpy(cuda), device)


def _all_rng_states(device: torch.device, world: int) -> list[dict]:
    """Every rank's RNG states, rank by rank (a collective: every rank calls it)."""
    mine = _rng_state(device)
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def _seed_dropout(run: training.Run, device: torch.device) -> None:
    """Dropout's random numbers: the saved ones on resume (same world size), else a stream per seed and rank."""
    saved = (run.state or {}).get("rng") or {}
    ranks = saved.get("ranks") if isinstance(saved, dict) else None
    if ranks and len(ranks) == run.world:
        _set_rng_state(ranks[run.rank], device)
        return
    if ranks:
        run.metrics.write(f"--resume: the checkpoint was written by {len(ranks)} processes, this run has "
                          f"{run.world}: dropout's random numbers start afresh")
    torch.manual_seed(int(np.random.SeedSequence([run.args.seed, 1, run.rank]).generate_state(1)[0]))


# -- checkpoints -------------------------------------------------------------------------------------------------------
def _full_states(model, optimizer, mode: str, world: int) -> tuple[dict | None, dict]:
    """(the model's full state dict for FSDP, else None; the optimizer's state by parameter name) on rank 0 -- a
    collective under FSDP (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    sharded = world > 1 and mode == "fsdp"
    options = StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    model_state = get_model_state_dict(model, options=options) if sharded else None
    return model_state, get_optimizer_state_dict(model, optimizer, options=options)


def _writer(model, model_state: dict | None, optim_state: dict, scaler, *, with_optimizer: bool):
    """``write(folder)``: save_pretrained (from the gathered full state under FSDP) plus optimizer.pt."""

    def write(folder: Path) -> None:
        plain = _unwrap(model)
        if model_state is not None:  # FSDP: a plain CPU copy from the gathered state (rank 0 only)
            with torch.device("meta"):
                plain = GPT2LMHeadModel(_unwrap(model).config)
            plain = plain.to_empty(device="cpu")
            plain.load_state_dict(model_state)
            plain.tie_weights()
        plain.save_pretrained(folder)
        if with_optimizer:
            state = {"optimizer": optim_state, "scaler": scaler.state_dict() if scaler is not None else None}
            torch.save(state, Path(folder) / OPTIMIZER_NAME)

    return write


def _load_optimizer(run: training.Run, model, optimizer, scaler) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    path = Path(run.resume_from) / OPTIMIZER_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} is missing (a checkpoint of the torch trainer holds it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--resume: {path} is not a readable optimizer state ({e})") from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise ValueError(f"--resume: {path} holds no 'optimizer' entry")
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


# -- the loop ----------------------------------------------------------------------------------------------------------
def _train(args: training.TrainArgs, mode: str) -> dict:
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = _device()
    autocast = _autocast(args.precision, device)  # refuses fp16 on CPU before any work
    training.keep_freed_memory()
    run = training.Run(args, rank=rank, world=world, barrier=dist.barrier if world > 1 else None)
    model = _wrap(_build_model(run, device), mode, device, world)
    optimizer = _optimizer(model, args, device)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    for group in optimizer.param_groups:  # LambdaLR's base rate; last_epoch puts it at update start_step
        group["initial_lr"] = args.lr
    if run.resume_from is not None:
        _load_optimizer(run, model, optimizer, scaler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, run.schedule.multiplier,
                                                  last_epoch=run.start_step - 1)
    _seed_dropout(run, device)

    loss = eval_loss = None
    accum = args.grad_accum
    for step in range(run.start_step, run.steps):
        micro = torch.from_numpy(run.batches.batch(step, run.rank)).to(device, dtype=torch.long, non_blocking=True)
        total = torch.zeros((), device=device)
        for i in range(accum):
            with _no_sync(model, mode, world, last=i == accum - 1), autocast:
                part = model(input_ids=micro[i], labels=micro[i], use_cache=False).loss / accum
            (scaler.scale(part) if scaler is not None else part).backward()
            total += part.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        lr = optimizer.param_groups[0]["lr"]
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        done = step + 1
        if run.should_log(done) or done == run.steps:
            loss = _mean_over_ranks(total, world)
        run.log(done, loss=loss, lr=lr)
        if run.should_eval(done):
            eval_loss = _evaluate(model, run, device, autocast, world)
            run.log_eval(done, eval_loss)
        if run.should_save(done):
            model_state, optim_state = _full_states(model, optimizer, mode, world)
            rng = {"ranks": _all_rng_states(device, world)}
            run.save(done, _writer(model, model_state, optim_state, scaler, with_optimizer=True), rng=rng)
    if run.start_step == run.steps and eval_loss is None:  # resumed at the end: evaluate what is there
        eval_loss = _evaluate(model, run, device, autocast, world)
    model_state, optim_state = _full_states(model, optimizer, mode, world)
    rng = {"ranks": _all_rng_states(device, world)}
    out = run.finish(_writer(model, model_state, optim_state, scaler, with_optimizer=False), rng=rng)
    if world > 1:
        dist.barrier()  # the final model is on disk before any rank returns
    return {"step": run.steps, "loss": loss, "eval_loss": eval_loss,
            "perplexity": math.exp(eval_loss) if eval_loss is not None and eval_loss < 700 else None,
            "out": str(out or run.out), "world": world}


def _no_sync(model, mode: str, world: int, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an update (DDP's no_sync, FSDP2's
    set_requires_gradient_sync): the gradients accumulate locally and are reduced once."""
    if world == 1:
        return contextlib.nullcontext()
    if mode == "ddp":
        return contextlib.nullcontext() if last else model.no_sync()
    model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The mean over ranks (every rank holds the same number of rows and tokens: the global batch's mean)."""
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world
    return float(value)


@torch.no_grad()
def _evaluate(model, run: training.Run, device: torch.device, autocast, world: int) -> float:
    """The mean loss over the validation batches (every rank its rows; the same batches every evaluation)."""
    model.eval()
    try:
        total, count = torch.zeros((), device=device), 0
        for rows in run.eval_batches():
            ids = torch.from_numpy(rows).to(device, dtype=torch.long)
            with autocast:
                total += model(input_ids=ids, labels=ids, use_cache=False).loss.float()
            count += 1
        if count == 0:
            raise ValueError("no validation batches")
        return _mean_over_ranks(total / count, world)
    finally:
        model.train()
