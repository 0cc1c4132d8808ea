"""The framework-free half of ``gpt2 train``: options, schedule, weight-decay rule, the run folder, metrics.

Each framework's ``gpt2.<framework>.train.train_from_args(args)`` builds its model and optimizer and runs its loop
around a ``Run``, which owns everything that is the same in all three:

>>> from gpt2.common.training import TrainArgs, Run
>>> args = TrainArgs(framework="torch", data="corpus.txt", config="gpt2", out="run1", steps=1000)
>>> run = Run(args, rank=0, world=1)       # validates, prepares the data, checks the output folder, finds --resume
>>> for step in range(run.start_step, run.steps):          # step: the 0-based index of the update being made
...     micro = run.batches.batch(step, run.rank)           # int32 (grad_accum, batch_size // world, block_size)
...     lr = run.schedule(step)                             # the framework's own schedule gives the same numbers
...     loss = ...                                          # the framework's step (labels = input_ids)
...     run.log(step + 1, loss=loss, lr=lr)                 # tqdm bar + metrics.jsonl every log_every updates
...     if run.should_eval(step + 1):
...         run.log_eval(step + 1, mean_of(run.eval_batches()))
...     if run.should_save(step + 1):
...         run.save(step + 1, write=lambda folder: ..., rng={...})   # save_pretrained + optimizer state files
>>> run.finish(write=lambda folder: model.save_pretrained(folder))  # final model into out/, loss.png

Decisions:

- **Schedule**: linear warmup from 0 (``lr * i / warmup`` for update ``i < warmup``: as optax's
  ``warmup_cosine_decay_schedule``, Keras' ``CosineDecay(warmup_steps=...)`` and transformers'
  ``get_cosine_schedule_with_warmup``), then cosine decay to ``min_lr_ratio * lr`` (10% by default, as nanoGPT and
  the Chinchilla paper) at the last update, constant after. ``Schedule`` holds the four numbers the native
  schedules take: ``optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, final)``;
  ``keras.optimizers.schedules.CosineDecay(0.0, total - warmup, alpha=final / peak, warmup_target=peak,
  warmup_steps=warmup)``; torch ``LambdaLR(opt, schedule.multiplier)``.
- **Weight decay** (``decays``): only the 2-D matrices of the projections and heads (``c_attn``, ``c_proj``,
  ``c_fc``, ``q_attn``, an untied ``lm_head``, ``score``, ``classifier``, ``qa_outputs``, the summary projection);
  never biases, LayerNorms or the embeddings ``wte`` / ``wpe`` (GPT-2 / nanoGPT / Megatron practice).
- **The run folder** ``out/``: ``checkpoint-<step>/`` every ``save_every`` updates (save_pretrained's files, the
  framework's optimizer state files, ``trainer_state.json``), written as a temporary folder in ``out`` that is
  renamed into place once complete (``trainer_state.json`` is written last), so a crash mid-save leaves the last good
  checkpoint as the newest; the ``keep_checkpoints`` newest are kept. At the end the model is saved into ``out``
  itself (with a ``trainer_state.json`` and the tokenizer's files), then ``metrics.jsonl`` is turned into
  ``loss.png``.
- **Refusals**: ``--resume`` with a checkpoint of another framework or another model (config digest), or with other
  data-order options (seed, batch size, grad accum, block size, validation split, the data itself), which would
  break "the same batches as an uninterrupted run"; an ``--out`` holding another model, or holding a run when
  ``--resume`` is not given (it would be overwritten). ``--resume`` with no checkpoint yet starts from step 0 (so a
  pre-emptible job can always pass it) and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from . import files
from .checkpoint import resolve_checkpoint
from .config import PRESETS, GPT2Config
from .data import (Batches, TokenFile, check_block_size, check_divides, eval_batches, num_eval_batches, prepare,
                   split_blocks)
from .tokenizer_fast import GPT2TokenizerFast

FRAMEWORKS = ("torch", "tf", "flax")
PRECISIONS = ("fp32", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")  # torch only: how a torchrun job spreads the model
STATE_NAME = "trainer_state.json"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TEMP_DIR = re.compile(r"^\.checkpoint-\d+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
STATE_VERSION = 1


# -- options -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainArgs:
    """Every option of ``gpt2 train`` (the command's flags, dashes as underscores). ``validate()`` checks them all.

    framework: "torch", "tf" or "flax".  data / val_data: a .txt file, a folder of .txt files or a token file.
    config: a preset name ("gpt2", "gpt2-medium", ...) or a config JSON file, for a new model; model: a folder of a
    saved model to continue training from (exactly one of the two).  out: the run folder.
    steps / epochs: the length (at most one; neither: one epoch); steps counts optimizer updates.
    batch_size: rows per micro-batch over all ranks/devices together; grad_accum: micro-batches per update (an update
    sees batch_size * grad_accum rows).  block_size: tokens per row (default: the model's n_positions).
    lr: the peak learning rate; warmup: warmup updates (default: 5% of steps); min_lr_ratio: the final lr / lr.
    weight_decay: AdamW's decoupled decay (on ``decays()`` parameters only); beta1, beta2, eps: AdamW's.
    clip: the global gradient-norm bound (0: no clipping).  precision: fp32, bf16 (autocast; weights stay fp32) or
    fp16 (autocast + loss scaling; GPU only).  eval_every / save_every / log_every: in updates (0: eval and save only
    at the end).  eval_batches: validation batches per evaluation.  keep_checkpoints: how many checkpoint folders to
    keep (0: all).  val_fraction: the held-out share of blocks when no val_data.  seed: data order, initialisation,
    dropout.  resume: continue from the newest checkpoint in ``out``.  progress: the tqdm bar.  distributed: how
    torch spreads a torchrun job: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2's fully_shard); TF and JAX have
    their own engines (MirroredStrategy, a Mesh) and refuse "fsdp".
    """

    framework: str
    data: str
    out: str
    config: str | None = None
    model: str | None = None
    val_data: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 8
    block_size: int | None = None
    lr: float = 3e-4
    warmup: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_accum: int = 1
    clip: float = 1.0
    precision: str = "fp32"
    eval_every: int = 200
    save_every: int = 500
    log_every: int = 10
    eval_batches: int = 20
    keep_checkpoints: int = 3
    val_fraction: float = 0.05
    seed: int = 0
    resume: bool = False
    progress: bool = True
    distributed: str = "ddp"

    def validate(self) -> "TrainArgs":
        """Check every option; ValueError / TypeError naming the option (as its command-line flag). Returns self."""
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"--framework must be one of {', '.join(FRAMEWORKS)}, got {self.framework!r}")
        for name in ("data", "out"):
            if not isinstance(getattr(self, name), (str, os.PathLike)) or not str(getattr(self, name)):
                raise TypeError(f"{_flag(name)} must be a path, got {getattr(self, name)!r}")
        if (self.config is None) == (self.model is None):
            raise ValueError("give exactly one of --config (a preset name or a config JSON file, for a new model) and "
                             "--model (a saved model folder to continue training)")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give at most one of --steps and --epochs")
        _int(self, "steps", low=1, optional=True)
        _number(self, "epochs", low=0, low_open=True, optional=True)
        for name in ("batch_size", "grad_accum", "eval_batches", "log_every"):
            _int(self, name, low=1)
        _int(self, "block_size", low=1, optional=True)
        for name in ("eval_every", "save_every", "keep_checkpoints", "seed"):
            _int(self, name, low=0)
        _int(self, "warmup", low=0, optional=True)
        _number(self, "lr", low=0, low_open=True)
        _number(self, "min_lr_ratio", low=0, high=1)
        _number(self, "weight_decay", low=0)
        _number(self, "beta1", low=0, high=1, high_open=True)
        _number(self, "beta2", low=0, high=1, high_open=True)
        _number(self, "eps", low=0, low_open=True)
        _number(self, "clip", low=0)
        _number(self, "val_fraction", low=0, high=1, low_open=True, high_open=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"--distributed must be one of {', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        if self.distributed == "fsdp" and self.framework != "torch":
            raise ValueError(f"--distributed fsdp is PyTorch's FSDP2; --framework {self.framework} spreads a run with "
                             f"its own engine ({'MirroredStrategy' if self.framework == 'tf' else 'a jax Mesh'})")
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{_flag(name)} must be True or False, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(self).items()}


# glibc's malloc returns a freed block of more than ~32 MiB (mmap'ed) and the free top of its heap (above 128 KiB) to
# the operating system at once; a training step frees and allocates the same large tensors every update (gpt2 124M
# at batch 4 x 256: the 200 MB logits and their gradient, the 150 MB token table's gradient, the activations), and
# the kernel then maps and zeroes fresh pages for each again: 180-350 thousand page faults and 0.4-0.7 s of system
# CPU time per update on this project's 2-core CPU (benchmarks/RESULTS.md, issue 13). Kept in the process, the same
# memory is reused with no fault. Peak memory is unchanged (the step needs it all at once anyway).
MALLOC_KEEP_BYTES = (1 << 31) - 1  # the most mallopt takes (a C int): blocks up to 2 GiB come from the heap, kept


def keep_freed_memory() -> bool:
    """Ask glibc's malloc (Linux) to keep freed memory for reuse rather than return it to the system after every
    update: mallopt's mmap threshold and trim threshold raised to MALLOC_KEEP_BYTES. What users can do for their own
    loops with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set before Python starts. Returns whether
    both settings were taken (False elsewhere: another C library, or no mallopt)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mmap_taken = mallopt(m_mmap_threshold, MALLOC_KEEP_BYTES)
    trim_taken = mallopt(m_trim_threshold, MALLOC_KEEP_BYTES)
    return bool(mmap_taken and trim_taken)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _int(args, name, low, optional=False):
    value = getattr(args, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_flag(name)} must be an integer >= {low}, got {value!r}")


def _number(args, name, low=None, high=None, low_open=False, high_open=False, optional=False):
    value = getattr(args, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{_flag(name)} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{_flag(name)} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{_flag(name)} must be {'<' if high_open else '<='} {high}, got {value!r}")


# -- model config ------------------------------------------------------------------------------------------------------
def load_config(args: TrainArgs) -> GPT2Config:
    """The model's config: ``--config`` (a preset name or a JSON file) for a new model, else ``--model``'s."""
    if args.model is not None:
        return GPT2Config.from_pretrained(model_folder(args.model))
    name = str(args.config)
    if Path(name).is_file():
        return GPT2Config.from_json_file(name)
    if name in PRESETS:
        return GPT2Config.from_pretrained(name)
    raise ValueError(f"--config {name!r}: neither a preset ({', '.join(sorted(p for p in PRESETS if '/' not in p))}) "
                     f"nor a config JSON file")


def model_folder(model: str | os.PathLike) -> Path:
    """``--model``: a saved model folder, the name of the model shipped in the package (``gpt2-tiny-kjv``), or a hub
    name (``openai-community/gpt2``: the local Hugging Face cache first, then a download)."""
    if Path(model).is_dir():
        return Path(model)
    try:
        _, main = resolve_checkpoint(model)
    except (FileNotFoundError, ValueError) as e:
        raise FileNotFoundError(f"--model {str(model)!r}: not a model folder, the shipped model's name or a hub "
                                f"name ({e})") from None
    return main.parent


_ARCHITECTURE = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                 "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                 "reorder_and_upcast_attn", "tie_word_embeddings", "add_cross_attention")


def config_digest(config: GPT2Config) -> str:
    """A sha256 of the fields that make a model's weights mean what they mean (shapes and computation; not dropout
    rates or generation settings): two configs with the same digest can continue each other's training."""
    data = config.to_dict()
    arch = {k: data.get(k, getattr(config, k, None)) for k in _ARCHITECTURE}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


# -- schedule and weight decay -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warmup then cosine decay (see the module doc). ``schedule(i)``: the rate of update ``i`` (0-based);
    ``schedule.multiplier(i)``: that over ``peak`` (for torch's LambdaLR)."""

    peak: float
    warmup: int
    total: int
    final: float

    def __call__(self, i: int) -> float:
        if self.warmup and i < self.warmup:
            return self.peak * i / self.warmup
        if i >= self.total:
            return self.final
        progress = (i - self.warmup) / max(1, self.total - self.warmup)
        return self.final + (self.peak - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def multiplier(self, i: int) -> float:
        return self(i) / self.peak


def make_schedule(args: TrainArgs, steps: int) -> Schedule:
    warmup = resolve_warmup(args, steps)
    return Schedule(peak=float(args.lr), warmup=warmup, total=int(steps), final=float(args.lr * args.min_lr_ratio))


def resolve_warmup(args: TrainArgs, steps: int) -> int:
    """``--warmup``, or 5% of the updates when not given; never more than the updates."""
    warmup = round(0.05 * steps) if args.warmup is None else args.warmup
    if warmup > steps:
        raise ValueError(f"--warmup {warmup} is longer than the run ({steps} updates)")
    return int(warmup)


def learning_rate(step: int, args: TrainArgs, steps: int | None = None) -> float:
    """The learning rate of update ``step`` (0-based): ``make_schedule(args, steps)(step)``."""
    steps = args.steps if steps is None else steps
    if steps is None:
        raise ValueError("learning_rate() needs the number of updates: give args.steps or steps=")
    return make_schedule(args, steps)(step)


_DECAYED = ("c_attn", "q_attn", "c_proj", "c_fc", "lm_head", "score", "classifier", "qa_outputs", "summary")


def decays(name: str) -> bool:
    """Whether AdamW's weight decay applies to the parameter with this canonical name
    (``transformer.h.0.attn.c_attn.weight``, ``lm_head.weight``, ...): the 2-D matrices of projections and heads;
    never a bias, a LayerNorm (``ln_*``) or an embedding (``wte``, ``wpe``)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in _DECAYED


# -- the run folder ----------------------------------------------------------------------------------------------------
def checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``out`` as (step, folder), oldest first (a folder without its trainer_state.json,
    or whose state names another step, is not a complete checkpoint)."""
    out = Path(out)
    found = []
    if not out.is_dir():
        return found
    for child in out.iterdir():
        m = _CHECKPOINT.match(child.name)
        if m and child.is_dir() and (child / STATE_NAME).is_file():
            with contextlib.suppress(OSError, ValueError):
                if read_state(child).get("step") == int(m.group(1)):
                    found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-<step>`` folder in ``out``, or None."""
    found = checkpoints(out)
    return found[-1][1] if found else None


def read_state(folder: str | os.PathLike) -> dict:
    """A checkpoint's (or a finished run's) trainer_state.json."""
    state = files.read_json(Path(folder) / STATE_NAME, "trainer state")
    if not isinstance(state.get("step"), int):
        raise ValueError(f"{Path(folder) / STATE_NAME}: no integer 'step'")
    return state


def save_checkpoint(out: str | os.PathLike, step: int, write: Callable[[Path], Any], state: dict,
                    keep: int = 0) -> Path:
    """Write ``out/checkpoint-<step>/`` atomically: ``write(folder)`` fills a temporary folder in ``out`` (the model's
    save_pretrained, the optimizer state files), then ``trainer_state.json`` (``state`` plus ``step``) is written,
    and the folder is renamed into place. Any exception (or a crash) before the rename leaves the previous
    checkpoints as they were; temporary folders of dead processes are removed by the next save. Then only the
    ``keep`` newest checkpoints are kept (0: all). Returns the checkpoint folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_dead_temp_dirs(out)
    final = out / f"{CHECKPOINT_PREFIX}{int(step)}"
    tmp = out / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        write(tmp)
        files.write_text(tmp / STATE_NAME, json.dumps({**state, "step": int(step)}, indent=1) + "\n")
        files.sync_folder(tmp)
        if final.exists():  # the same step saved again (a resumed run): swap, never a moment without one
            old = out / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        files.sync_folder(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        prune_checkpoints(out, keep)
    return final


def prune_checkpoints(out: str | os.PathLike, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest complete checkpoints; returns the removed folders."""
    found = checkpoints(out)
    removed = [folder for _, folder in found[:-keep]] if keep > 0 else []
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _remove_dead_temp_dirs(out: Path) -> None:
    for child in out.iterdir():
        m = _TEMP_DIR.match(child.name)
        if m and child.is_dir() and not files.pid_alive(int(m.group("pid"))):
            shutil.rmtree(child, ignore_errors=True)


_DATA_ORDER = ("seed", "batch_size", "grad_accum", "block_size", "val_fraction")


def check_out_folder(out: str | os.PathLike, *, digest: str, framework: str, resume: bool,
                     data_order: dict | None = None) -> Path | None:
    """Check ``out`` before training; return the checkpoint to resume from (None: start at step 0).

    ValueError when ``out`` holds another model (config digest), when it holds a run and ``resume`` is False, or when
    resuming a checkpoint of another framework or another data order (``data_order``: the resolved options and data
    identity that decide the batches; see ``Run.data_order``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    if not out.exists():
        return None
    latest = latest_checkpoint(out)
    states = [(p, read_state(p)) for p in (latest, out) if p is not None and (p / STATE_NAME).is_file()]
    for folder, state in states:
        if state.get("config_digest") != digest:
            raise ValueError(f"--out {str(out)!r} holds a different model ({folder / STATE_NAME}: config digest "
                             f"{state.get('config_digest')}, this run's is {digest}); choose another --out")
    if not states and (out / "config.json").is_file():
        other = GPT2Config.from_pretrained(out)
        why = "a different model" if config_digest(other) != digest else "a saved model"
        raise ValueError(f"--out {str(out)!r} holds {why} (config.json) that training would overwrite; choose another "
                         f"--out")
    holds_run = bool(states) or (out / METRICS_NAME).exists()
    if not resume:
        if holds_run:
            raise ValueError(f"--out {str(out)!r} holds a training run; pass --resume to continue it, or choose "
                             f"another --out")
        return None
    if latest is None:
        return None
    state = read_state(latest)
    if state.get("framework") != framework:
        raise ValueError(f"--resume: {latest} was written by --framework {state.get('framework')}, not {framework} "
                         f"(optimizer states do not carry over; start a new run from --model {latest})")
    if data_order is not None:
        theirs = state.get("data_order", {})
        differ = sorted(k for k in data_order if theirs.get(k) != data_order[k])
        if differ:
            raise ValueError(f"--resume: {latest} was trained with other data-order settings ("
                             + ", ".join(f"{k}: {theirs.get(k)!r} there, {data_order[k]!r} now" for k in differ)
                             + "); resuming would not give the batches of an uninterrupted run")
    return latest


# -- metrics -----------------------------------------------------------------------------------------------------------
class Metrics:
    """A tqdm bar (loss, lr, tokens/s) and ``metrics.jsonl``: one JSON line per logged update
    (``{"step", "loss", "lr", "tokens_per_s", "tokens", "time"}``) and per evaluation (``{"step", "eval_loss",
    "perplexity"}``). On resume, lines past the resumed step are dropped first, so the file reads as one run."""

    def __init__(self, out: str | os.PathLike, *, total: int, start: int = 0, tokens_per_step: int = 0,
                 progress: bool = True, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.path = Path(out) / METRICS_NAME
        self.enabled = enabled
        self.tokens_per_step = tokens_per_step
        self._last_step, self._last_time = start, time.perf_counter()
        self._start_time = self._last_time
        if enabled and self.path.exists():  # created by the first record (other ranks may be checking --out now)
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start] if start else []
            files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.verbose = enabled and progress  # eval / save lines on stderr (a log file gets them without the bar)
        self.bar = tqdm(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True,
                        disable=None if (enabled and progress) else True)  # None: only on a terminal

    def log(self, step: int, *, loss: float, lr: float, **extra: float) -> dict:
        """Record update ``step`` (1-based: updates done); tokens/s since the previous log."""
        now = time.perf_counter()
        steps = max(1, step - self._last_step)
        rate = self.tokens_per_step * steps / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        record = {"step": int(step), "loss": float(loss), "lr": float(lr), "tokens_per_s": rate,
                  "tokens": int(step) * self.tokens_per_step, "time": now - self._start_time,
                  **{k: float(v) for k, v in extra.items()}}
        if self.enabled:
            self._append(record)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        return record

    def log_eval(self, step: int, loss: float) -> dict:
        record = {"step": int(step), "eval_loss": float(loss), "perplexity": _perplexity(loss)}
        if self.enabled:
            self._append(record)
            self.write(f"step {step}: eval loss {loss:.4f}, perplexity {record['perplexity']:.2f}")
        return record

    def advance(self, step: int) -> None:
        """Move the bar to ``step`` without logging (the updates between log lines)."""
        if self.enabled:
            self.bar.update(step - self.bar.n)

    def write(self, message: str) -> None:
        if self.verbose:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    def _append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def plot_loss(metrics: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Draw the training loss (and the evaluation loss, when any) against the update from ``metrics`` (a
    metrics.jsonl) into ``png`` (matplotlib's Agg backend: no display needed), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        raise ValueError(f"{metrics}: no loss records to plot")
    fig = Figure(figsize=(7, 4), dpi=100)  # a Figure without pyplot: no global state, no GUI backend
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="training loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation loss", ms=4)
    ax.set_xlabel("update")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = Path(png)
    with files.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    return png


# -- the run -----------------------------------------------------------------------------------------------------------
class Run:
    """One training run's framework-free state (see the module doc for the loop around it).

    ``rank`` / ``world``: this process among the data-parallel processes; ``devices``: the devices this process
    shards its rows over (JAX's data axis, Keras' MirroredStrategy replicas): its share of ``batch_size`` must
    divide over them. ``barrier``: the framework's barrier (torch.distributed.barrier), so that rank 0 tokenizes
    while the others wait. Only rank 0 writes files (``self.main``).

    Attributes: ``args`` (validated), ``config`` (GPT2Config), ``digest``, ``init_from`` (``--model``'s folder or None:
    a new model), ``block_size``, ``train_tokens`` / ``val_tokens`` (TokenFile; val None when held out), ``train`` /
    ``val`` (Blocks), ``batches`` (Batches), ``steps``, ``schedule``, ``out``, ``resume_from`` (checkpoint folder or
    None), ``state`` (its trainer_state.json or None), ``start_step``, ``metrics`` (Metrics).
    """

    def __init__(self, args: TrainArgs, *, rank: int = 0, world: int = 1, devices: int = 1,
                 barrier: Callable[[], Any] | None = None) -> None:
        self.args = args.validate()
        self.rank, self.world, self.devices = int(rank), int(world), int(devices)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        self.main = self.rank == 0
        self.config = load_config(args)
        self.digest = config_digest(self.config)
        self.init_from = model_folder(args.model) if args.model is not None else None
        self.block_size = args.block_size or self.config.n_positions
        check_block_size(self.block_size, self.config.n_positions)
        check_divides(args.batch_size, self.world, "processes (ranks)")
        check_divides(args.batch_size // self.world, self.devices,
                      "devices" if self.world == 1 else f"devices per process (batch {args.batch_size // self.world} "
                                                        f"per process)")
        self.train_tokens, self.val_tokens = self._prepare(barrier)
        for token_file in (self.train_tokens, self.val_tokens):
            if token_file is not None:
                token_file.check_vocab(self.config.vocab_size)
        self.train, self.val = split_blocks(self.train_tokens, self.block_size, seed=args.seed,
                                            val_fraction=args.val_fraction, min_val_blocks=args.batch_size,
                                            val_tokens=self.val_tokens)
        self.batches = Batches(self.train, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
                               world=self.world)
        self.steps = resolve_steps(args, self.batches)
        self.schedule = make_schedule(args, self.steps)
        self.out = Path(args.out)
        self.resume_from = check_out_folder(self.out, digest=self.digest, framework=args.framework,
                                            resume=args.resume, data_order=self.data_order)
        self.state = read_state(self.resume_from) if self.resume_from is not None else None
        self.start_step = self.state["step"] if self.state else 0
        if self.start_step > self.steps:
            raise ValueError(f"--resume: {self.resume_from} is at update {self.start_step}, past this run's "
                             f"{self.steps} updates")
        self.metrics = Metrics(self.out, total=self.steps, start=self.start_step,
                               tokens_per_step=self.batches.tokens_per_step, progress=args.progress,
                               enabled=self.main)
        if args.resume and self.resume_from is None:
            self.metrics.write(f"--resume: no checkpoint in {self.out} yet; starting at update 0")

    def _prepare(self, barrier) -> tuple[TokenFile, TokenFile | None]:
        def both():
            train = prepare(self.args.data, progress=self.args.progress and self.main)
            val = prepare(self.args.val_data, progress=self.args.progress and self.main) \
                if self.args.val_data is not None else None
            return train, val

        if barrier is None or self.world == 1:
            return both()
        if self.main:
            result = both()
            barrier()
            return result
        barrier()
        return both()

    @property
    def data_order(self) -> dict:
        """What decides the batches of each update (compared on --resume)."""
        opts = {k: getattr(self.args, k) for k in _DATA_ORDER}
        opts["block_size"] = self.block_size
        if self.val_tokens is not None:
            opts.pop("val_fraction")
            opts["val_tokens"] = len(self.val_tokens)
        opts["train_tokens"] = len(self.train_tokens)
        opts["tokenizer"] = self.train_tokens.meta.get("tokenizer", {}).get("sha256")
        return opts

    # -- during the loop
    def should_log(self, step: int) -> bool:
        return step % self.args.log_every == 0 or step == self.steps

    def should_eval(self, step: int) -> bool:
        return (self.args.eval_every and step % self.args.eval_every == 0) or step == self.steps

    def should_save(self, step: int) -> bool:
        """Checkpoint after update ``step`` (every save_every updates; the end is saved by ``finish``)."""
        return bool(self.args.save_every) and step % self.args.save_every == 0 and step < self.steps

    def eval_batches(self) -> Iterator:
        """This rank's validation batches: int32 ``(batch_size // world, block_size)``, the same every evaluation."""
        return eval_batches(self.val, self.args.batch_size, max_batches=self.args.eval_batches, rank=self.rank,
                            world=self.world)

    @property
    def num_eval_batches(self) -> int:
        return num_eval_batches(self.val, self.args.batch_size, self.args.eval_batches)

    def log(self, step: int, *, loss: float, lr: float | None = None, **extra) -> dict | None:
        """Log update ``step`` (1-based) when ``should_log(step)``; otherwise just move the bar."""
        if not self.should_log(step):
            self.metrics.advance(step)
            return None
        return self.metrics.log(step, loss=loss, lr=self.schedule(step - 1) if lr is None else lr, **extra)

    def log_eval(self, step: int, loss: float) -> dict:
        return self.metrics.log_eval(step, loss)

    def trainer_state(self, step: int, rng: Any = None, **extra) -> dict:
        return {"version": STATE_VERSION, "step": int(step), "steps": self.steps, "framework": self.args.framework,
                "config_digest": self.digest, "args": self.args.to_dict(), "data_order": self.data_order,
                "data": self.batches.position(step), "world": self.world, "rng": rng, **extra}

    def save(self, step: int, write: Callable[[Path], Any], rng: Any = None, **extra) -> Path | None:
        """Checkpoint after update ``step`` (rank 0 only; others return None). ``write(folder)``: the framework's
        save_pretrained + optimizer state files into ``folder``; ``rng``: JSON-able RNG states to restore."""
        if not self.main:
            return None
        path = save_checkpoint(self.out, step, write, self.trainer_state(step, rng, **extra),
                               keep=self.args.keep_checkpoints)
        self.metrics.write(f"saved {path}")
        return path

    def finish(self, write: Callable[[Path], Any], rng: Any = None, **extra) -> Path | None:
        """The end: ``write(out)`` saves the final model into ``out`` itself, trainer_state.json beside it, and the
        loss curve ``loss.png`` from metrics.jsonl. Rank 0 only."""
        self.metrics.close()
        if not self.main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        write(self.out)
        if not any((self.out / name).is_file() for name in TOKENIZER_FILES):
            # The tokenizer that made the token files (OpenAI's vocabulary): out/ is then a complete model folder
            # for from_pretrained, `gpt2 generate --model out` and the hub.
            GPT2TokenizerFast.from_pretrained("gpt2", model_max_length=self.config.n_positions).save_pretrained(self.out)
        files.write_text(self.out / STATE_NAME,
                         json.dumps(self.trainer_state(self.steps, rng, **extra), indent=1) + "\n")
        if read_metrics(self.out / METRICS_NAME):
            plot_loss(self.out / METRICS_NAME, self.out / PLOT_NAME)
        return self.out


TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # a folder holding either has a tokenizer


def resolve_steps(args: TrainArgs, batches: Batches) -> int:
    """``--steps``, or ``ceil(epochs * training blocks / (batch_size * grad_accum))`` (one epoch when neither)."""
    if args.steps is not None:
        return int(args.steps)
    epochs = 1.0 if args.epochs is None else float(args.epochs)
    return max(1, math.ceil(epochs * len(batches.blocks) / batches.rows_per_step))


# -- dispatch ----------------------------------------------------------------------------------------------------------
def train(args: TrainArgs):
    """Run ``gpt2.<framework>.train.train_from_args(args)``; ImportError naming the framework when it is missing."""
    args.validate()
    module = f"gpt2.{args.framework}.train"
    package = {"torch": "torch", "tf": "tensorflow", "flax": "flax"}[args.framework]
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"--framework {args.framework}: {package} is not installed "
                          f"(pip install 'gpt2[{args.framework}]')")
    try:
        trainer = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name in (module, package) or (e.name or "").startswith(package + "."):
            raise ImportError(f"--framework {args.framework}: {e.name} is not available ({e})") from e
        raise
    return trainer.train_from_args(args)
