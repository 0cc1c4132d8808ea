"""The ``gpt2`` command: ``gpt2 convert SRC DST --to FORMAT``, ``gpt2 train ...``, ``gpt2 demo``.

Exit code 0 on success; on failure one line ``gpt2: error: ...`` on stderr and a non-zero code. The exit code is
the work's: the report on stdout is written best-effort, so ``gpt2 convert ... | head -0`` (a closed pipe) still
exits 0 when every file was written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

_BIG = 50 * 2**20  # show a progress bar from this many bytes on


class ProgressBar:
    """A one-line progress bar on stderr, drawn only for big files and only on a terminal."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.phase = None
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total < _BIG or not self.stream.isatty():
            return
        now = time.monotonic()
        if phase == self.phase and done < total and now - self.last < 0.1:
            return
        self.phase, self.last = phase, now
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * self.width)
        end = "\n" if done >= total else ""
        try:
            self.stream.write(f"\r{phase:<28} [{bar:<{self.width}}] {done / 2**20:8.1f}/{total / 2**20:.1f} MiB{end}")
            self.stream.flush()
        except OSError:  # the terminal went away: the conversion goes on without a bar
            self.width, self.stream = 0, _NoTerminal()


class _NoTerminal:
    def isatty(self) -> bool:
        return False


def _parser() -> argparse.ArgumentParser:
    from .common.checkpoint import WRITABLE_FORMATS

    parser = argparse.ArgumentParser(prog="gpt2", description="GPT-2 in PyTorch, TensorFlow and JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conv = sub.add_parser(
        "convert",
        help="convert a checkpoint between formats",
        description="Read a checkpoint in any supported format (model.safetensors, pytorch_model.bin, tf_model.h5, "
        "flax_model.msgpack, OpenAI's model.ckpt) from a folder, a file or a hub name, and write an HF-layout folder "
        "(config.json, the weights, the vocabulary when known) that transformers loads.",
    )
    conv.add_argument("src", help="folder, weights file, or model name (local Hugging Face cache first)")
    conv.add_argument("dst", help="output folder (created if needed)")
    conv.add_argument("--to", required=True, choices=WRITABLE_FORMATS, help="format to write")
    conv.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                      help="cast the weights (default: keep the stored dtype)")
    conv.add_argument("--max-shard-size", default=None, help="shard safetensors/pytorch/tf output, e.g. 2GB")
    conv.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    conv.add_argument("--local-files-only", action="store_true", help="never download")
    _train_parser(sub)
    demo = sub.add_parser("demo", help="a short tour: generate text, convert a checkpoint through every format")
    demo.add_argument("--model", default=None, help="a model folder (any checkpoint format) to generate with")
    demo.add_argument("--prompt", default="The quick brown fox", help="the prompt to continue")
    return parser


def _train_parser(sub) -> None:
    from .common.training import DISTRIBUTED, FRAMEWORKS, PRECISIONS, TrainArgs

    defaults = TrainArgs(framework="torch", data="", out="")
    train = sub.add_parser(
        "train",
        help="train a new GPT-2 or continue one, in PyTorch, TensorFlow or JAX/Flax",
        description="Tokenize PATH once (a .txt file, a folder of .txt files, or a token file made earlier), then "
        "train with AdamW, warmup + cosine decay, clipping and accumulation; checkpoints in OUT/checkpoint-<step>, "
        "the final model in OUT, metrics.jsonl and loss.png beside it. --resume continues from the newest checkpoint.",
    )
    add = train.add_argument
    add("--framework", required=True, choices=FRAMEWORKS, help="the engine to train with")
    add("--data", required=True, metavar="PATH", help="training text: a .txt file, a folder of .txt files, or a "
        "token file made earlier")
    add("--val-data", metavar="PATH", help="validation text (default: a held-out 5%% of the training blocks)")
    model = train.add_mutually_exclusive_group(required=True)
    model.add_argument("--config", metavar="PRESET_OR_JSON", help="a new model: a preset name (gpt2, gpt2-medium, "
                       "...) or a config JSON file")
    model.add_argument("--model", metavar="DIR", help="continue training a saved model folder")
    add("--out", required=True, metavar="DIR", help="the run folder (checkpoints, final model, metrics)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="optimizer updates to make")
    length.add_argument("--epochs", type=float, metavar="N", help="passes over the training blocks (default 1)")
    add("--batch-size", type=int, default=defaults.batch_size, metavar="B",
        help="rows per micro-batch over all devices (default %(default)s)")
    add("--block-size", type=int, metavar="T", help="tokens per row (default: the model's n_positions)")
    add("--lr", type=float, default=defaults.lr, help="peak learning rate (default %(default)s)")
    add("--warmup", type=int, metavar="N", help="linear warmup updates (default: 5%% of the updates)")
    add("--weight-decay", type=float, default=defaults.weight_decay, metavar="W",
        help="AdamW weight decay on projection/head matrices (default %(default)s)")
    add("--grad-accum", type=int, default=defaults.grad_accum, metavar="N",
        help="micro-batches per update (default %(default)s)")
    add("--clip", type=float, default=defaults.clip, help="gradient-norm bound, 0 for none (default %(default)s)")
    add("--precision", choices=PRECISIONS, default=defaults.precision,
        help="fp32, bf16 autocast, or fp16 autocast with loss scaling (GPU) (default %(default)s)")
    add("--eval-every", type=int, default=defaults.eval_every, metavar="N",
        help="evaluate every N updates, 0 for only at the end (default %(default)s)")
    add("--eval-batches", type=int, default=defaults.eval_batches, metavar="N",
        help="validation batches per evaluation (default %(default)s)")
    add("--save-every", type=int, default=defaults.save_every, metavar="N",
        help="checkpoint every N updates, 0 for only the final model (default %(default)s)")
    add("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, metavar="N",
        help="checkpoints to keep, 0 for all (default %(default)s)")
    add("--log-every", type=int, default=defaults.log_every, metavar="N",
        help="metrics line every N updates (default %(default)s)")
    add("--seed", type=int, default=defaults.seed, metavar="S", help="data order, initialisation, dropout "
        "(default %(default)s)")
    add("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    add("--distributed", choices=DISTRIBUTED, default=defaults.distributed,
        help="torch under torchrun: DistributedDataParallel or FSDP2 (default %(default)s)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _train_args(args):
    from .common.training import TrainArgs

    names = [f.name for f in __import__("dataclasses").fields(TrainArgs)]
    return TrainArgs(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def _train(args) -> int:
    from .common.training import train

    result = train(_train_args(args).validate())
    lines = [f"trained model saved to {args.out}"]
    if isinstance(result, dict):  # the frameworks' summary: step, loss, eval_loss, perplexity, ...
        parts = [f"{key} {result[key]:.4g}" if isinstance(result[key], float) else f"{key} {result[key]}"
                 for key in ("step", "loss", "eval_loss", "perplexity") if key in result]
        if parts:
            lines.append("final " + ", ".join(parts))
    _report(lines)
    return 0


def _convert(args) -> int:
    from .common.convert import convert

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's two-line warning format
        warnings.simplefilter("always")
        try:
            written = convert(args.src, args.dst, to=args.to, dtype=args.dtype, max_shard_size=args.max_shard_size,
                              revision=args.revision, local_files_only=args.local_files_only, progress=ProgressBar())
        finally:
            for warning in caught:
                _error(f"gpt2: warning: {' '.join(str(warning.message).split())}")
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in written)
    removed = getattr(written, "removed", [])
    _report([f"wrote {len(written)} files ({size / 2**20:.1f} MiB) to {args.dst} in {elapsed:.2f}s:",
             *(f"  {path.name}" for path in written),
             *([f"removed {len(removed)} files of earlier saves:", *(f"  {p.name}" for p in removed)] if removed
               else [])])
    return 0


def _report(lines: list[str]) -> None:
    """Print to stdout best-effort: the files are written whether or not anyone reads the report."""
    stream = sys.stdout
    if stream is None:  # started with stdout closed (`gpt2 ... >&-`)
        return
    try:
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()
    except OSError:  # BrokenPipeError (the reader left), EBADF, ENOSPC ...
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at devnull, so that the interpreter's flush at exit neither fails again (printing "Exception
    ignored ... BrokenPipeError" and exiting 120) nor changes our exit code (Python docs, signal module: "Note on
    SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor behind it (a test's StringIO, closed file)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- lives until exit, as stdout does


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__  # multi-line library messages as one line
    return f"gpt2: error: {text}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "convert":
            return _convert(args)
        if args.command == "train":
            return _train(args)
        from .demo import run_demo

        return run_demo(args.model, args.prompt)
    except MemoryError:
        _error("gpt2: error: out of memory (the checkpoint does not fit; try a machine with more memory)")
        return 1
    except RecursionError as e:  # a file nested deeper than Python recurses (json, pickle): bad input, not a bug
        _error(f"gpt2: error: input nested too deeply to read ({e})")
        return 1
    except (ValueError, TypeError, ImportError, OSError) as e:  # OSError: FileNotFoundError, ConnectionError, ...
        if isinstance(e, BrokenPipeError):  # the demo's reader left: no second failure at exit
            _silence_stdout()
        _error(_one_line(e))
        return 1
    except KeyboardInterrupt:
        _error("gpt2: interrupted")
        return 130


def _error(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, AttributeError, ValueError):  # stderr closed too: the exit code still tells
        pass
