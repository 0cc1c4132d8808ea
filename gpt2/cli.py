"""The ``gpt2`` command: ``gpt2 generate PROMPT...``, ``gpt2 score FILE...``, ``gpt2 info MODEL``,
``gpt2 convert SRC DST --to FORMAT``, ``gpt2 train ...``, ``gpt2 demo`` (the work: gpt2/commands.py, gpt2/demo.py).

Exit code 0 on success; on failure one line ``gpt2: error: ...`` on stderr and a non-zero code. The exit code is
the work's: the report on stdout is written best-effort, so ``gpt2 convert ... | head -0`` (a closed pipe) still
exits 0 when every file was written, and ``gpt2 generate ... | head -1`` exits 0 once its reader leaves. Usage
errors (an unknown option, a bad value) are one line too, with exit code 2 (argparse's).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import sys
import tempfile
import time
import warnings

_BIG = 50 * 2**20  # show a progress bar from this many bytes on


class ProgressBar:
    """``convert``'s progress callback ``(phase, done_bytes, total_bytes)`` as tqdm bars on stderr, one per phase,
    drawn only for big files and only on a terminal. Without tqdm (it comes with the ``train`` extra) there is no bar:
    the conversion is the same."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.phase = None
        self.bar = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total < _BIG or self.stream is None:
            return
        try:
            if phase != self.phase:
                self.close()
                self.phase, self.bar = phase, self._open(phase, total)
            if self.bar is None:
                return
            self.bar.update(min(done, total) - self.bar.n)
            if done >= total:
                self.close()
        except OSError:  # the terminal went away: the conversion goes on without a bar
            self.bar, self.stream = None, None

    def _open(self, phase: str, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        # ascii: the bar reads the same on any terminal and in a log; unit_scale: sizes in MiB
        return tqdm(total=total, desc=f"{phase:<28}", file=self.stream, ascii=True, disable=None, leave=True,
                    unit_scale=1 / 2**20, bar_format="{desc} [{bar:%d}] {n:8.1f}/{total:.1f} MiB" % self.width)

    def close(self) -> None:
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.close()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``gpt2: error: ...`` (exit 2, argparse's code), pointing at --help."""

    def error(self, message: str):
        command = self.prog.split()
        where = " ".join(command[1:])
        hint = f" (see gpt2 {where + ' ' if where else ''}--help)"
        self.exit(2, f"gpt2: error: {' '.join(message.split())}{hint}\n")


def _parser() -> argparse.ArgumentParser:
    from .commands import FRAMEWORKS
    from .common.checkpoint import WRITABLE_FORMATS

    parser = _Parser(prog="gpt2", description="GPT-2 in PyTorch, TensorFlow and JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _generate_parser(sub)
    _score_parser(sub)
    info = sub.add_parser("info", help="what a model folder holds: config, parameters, formats, dtypes, size",
                          description="Summarise a model (a folder, the embedded model's name, or a name in the "
                          "Hugging Face cache): its config, parameter count, the weight formats in the folder with "
                          "their dtypes (read from the files' headers where the format has them), and its size.")
    info.add_argument("model", metavar="MODEL", nargs="?", default=None,
                      help=f"a model folder or name (default: {_default_name()})")
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
    demo = sub.add_parser("demo", help="a short tour: generate in each installed framework, convert a checkpoint "
                          "through every format")
    demo.add_argument("--model", default=None, help=f"a model folder or name (default: {_default_name()})")
    demo.add_argument("--prompt", default="In the beginning", help="the prompt to continue (default %(default)r)")
    demo.add_argument("--framework", action="append", choices=FRAMEWORKS, dest="frameworks",
                      help="generate in this framework (repeat for several; default: each installed one)")
    return parser


def _default_name() -> str:
    from .commands import default_model

    return default_model() or "none shipped: give one"


def _model_options(parser) -> None:
    from .commands import FRAMEWORKS

    parser.add_argument("--model", metavar="NAME_OR_DIR", default=None,
                        help=f"a model folder (any checkpoint format) or name (default: {_default_name()})")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch", help="the engine (default %(default)s)")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}")
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _probability(text: str) -> float:
    value = _positive(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _generate_parser(sub) -> None:
    gen = sub.add_parser(
        "generate", help="continue prompts with a GPT-2 (streamed on a terminal)",
        description="Continue each PROMPT with the model and print the prompt followed by its continuation, token "
        "by token on a terminal. Greedy by default; --do-sample with --temperature / --top-k / --top-p samples "
        "(--seed makes it repeatable).")
    gen.add_argument("prompts", nargs="+", metavar="PROMPT", help="text to continue (one generation each)")
    _model_options(gen)
    add = gen.add_argument
    add("--max-new-tokens", type=_positive(int), default=50, metavar="N", help="tokens to add (default %(default)s)")
    add("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    add("--temperature", type=_positive(float), metavar="T", help="divide the logits by T (with --do-sample)")
    add("--top-k", type=_positive(int), metavar="K", help="sample among the K likeliest tokens (with --do-sample)")
    add("--top-p", type=_probability, metavar="P", help="nucleus: the likeliest tokens holding P of the "
        "probability (with --do-sample)")
    add("--repetition-penalty", type=_positive(float), metavar="R", help="CTRL's penalty on tokens already present "
        "(1.0: none)")
    add("--seed", type=int, metavar="S", help="the sampling seed (default: a fresh one each run)")
    add("--num-return-sequences", type=_positive(int), default=1, metavar="N",
        help="texts per prompt (with --do-sample; default %(default)s)")


def _score_parser(sub) -> None:
    score = sub.add_parser(
        "score", help="perplexity of text files (sliding window for long texts)",
        description="The perplexity of each UTF-8 text FILE under the model: windows of --max-length tokens moved "
        "by --stride, each token scored once with the window's earlier tokens as context (transformers' perplexity "
        "guide). A lower stride gives each token more context and costs more forward passes.")
    score.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files (- reads standard input)")
    _model_options(score)
    score.add_argument("--max-length", type=_positive(int), metavar="L",
                       help="tokens per window (default: the model's n_positions)")
    score.add_argument("--stride", type=_positive(int), metavar="S", help="tokens each window moves on "
                       "(default: half of --max-length)")
    score.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


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
    model.add_argument("--model", metavar="NAME_OR_DIR", help="fine-tune a saved model: a folder, the shipped "
                       "model's name or a hub name")
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


def _note(text: str) -> None:
    _error(f"gpt2: note: {text}")


# TensorFlow's C++ log lines (absl: "I0000 00:00:1796029332.143661    2906 port.cc:153] ...") and the header absl
# prints before its logging is set up; TF_CPP_MIN_LOG_LEVEL does not reach the lines printed while TF loads.
_TF_LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] ")
_TF_LOG_HEADER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _quiet_tensorflow(framework: str) -> None:
    """TensorFlow's C++ start-up chatter on stderr (oneDNN, CPU instructions, "no CUDA drivers") is not the
    command's output: TensorFlow is imported and its devices listed with stderr held in a file, then what is not
    that chatter is written out (Python warnings, errors). Info and warning lines are dropped; of the error lines,
    only CUDA's failed initialisation on a machine where TensorFlow found no GPU."""
    if framework != "tf" or "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    gpus = None
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _tf_chatter(line, gpus)))


def _tf_chatter(line: str, gpus) -> bool:
    if line.rstrip("\n") == _TF_LOG_HEADER:
        return True
    match = _TF_LOG_LINE.match(line)
    if match is None:
        return False
    return match.group(1) in "IW" or (gpus == [] and "cuInit" in line)


def _generate(args) -> int:
    from .commands import generate

    _quiet_tensorflow(args.framework)
    try:
        generate(args.prompts, model=args.model, framework=args.framework, max_new_tokens=args.max_new_tokens,
                 do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                 repetition_penalty=args.repetition_penalty, seed=args.seed,
                 num_return_sequences=args.num_return_sequences, note=_note)
    except BrokenPipeError:  # the reader took what it wanted (`gpt2 generate ... | head -1`): not a failure
        _silence_stdout()
    return 0


def _score(args) -> int:
    from .commands import score

    _quiet_tensorflow(args.framework)
    results = score(args.files, model=args.model, framework=args.framework, max_length=args.max_length,
                    stride=args.stride, progress=None if args.progress else False, note=_note)
    width = max(len(r.path) for r in results)
    lines = [f"{r.path:<{width}}  perplexity {r.perplexity:10.3f}  ({r.tokens} tokens scored, {r.windows} "
             f"window{'s' * (r.windows != 1)}, {r.mean_nll:.4f} nats/token)" for r in results]
    if len(results) > 1:
        nll, tokens = sum(r.nll for r in results), sum(r.tokens for r in results)
        lines.append(f"{'all':<{width}}  perplexity {math.exp(nll / tokens):10.3f}  ({tokens} tokens "
                     f"scored, {nll / tokens:.4f} nats/token)")
    _report(lines)
    return 0


def _info(args) -> int:
    from .commands import format_info, info

    _report(format_info(info(args.model)))
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
    from .commands import FRAMEWORKS

    args = _parser().parse_args(argv)
    try:
        if args.command == "convert":
            return _convert(args)
        if args.command == "train":
            return _train(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "score":
            return _score(args)
        if args.command == "info":
            return _info(args)
        from .demo import run_demo

        frameworks = tuple(args.frameworks or FRAMEWORKS)
        _quiet_tensorflow("tf" if "tf" in frameworks else "")
        return run_demo(args.model, args.prompt, frameworks)
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
