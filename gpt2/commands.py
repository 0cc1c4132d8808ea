"""The work behind ``gpt2 generate``, ``gpt2 score`` and ``gpt2 info`` (gpt2/cli.py parses the command line and
reports errors; this module does the work and can be called from Python too).

``import gpt2.commands`` imports numpy-level code only: torch, tensorflow or jax is imported inside the functions,
for the one framework asked for.

>>> from gpt2.commands import perplexity
>>> perplexity("book.txt", model="gpt2-tiny", framework="flax", stride=128).perplexity
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .common.streamers import TextStreamer

FRAMEWORKS = ("torch", "tf", "flax")
_NEEDS = {"torch": ("PyTorch", "torch"), "tf": ("TensorFlow", "tf"), "flax": ("JAX and Flax", "flax")}
OPENAI_VOCAB_SIZE = 50257


# -- the model a command works with ----------------------------------------------------------------------------------
def default_model() -> str | None:
    """The name of the model the package ships (used when no ``--model`` is given), or None when it holds none."""
    from .common import embedded

    return embedded.NAME if embedded.folder(embedded.NAME) is not None else None


def model_or_default(model: str | os.PathLike | None) -> str:
    if model is not None:
        if str(model) == "":
            raise ValueError("--model is empty: give a model folder or name")
        return str(model)
    name = default_model()
    if name is None:
        raise ValueError("no model given and this package ships none: pass --model FOLDER_OR_NAME")
    return name


def load_config(model: str):
    from .common.config import GPT2Config

    return GPT2Config.from_pretrained(model)


def load_tokenizer(model: str, config, note: Callable[[str], None] | None = None):
    """The model's tokenizer; for a folder without tokenizer files whose vocabulary is OpenAI's size, OpenAI's
    vocabulary (shipped with the package), with a ``note`` saying so."""
    from .common.tokenizer_fast import GPT2TokenizerFast

    try:
        return GPT2TokenizerFast.from_pretrained(model)
    except FileNotFoundError as e:
        if not str(e).startswith("no vocab.json"):  # no model at all: the config would have said so first
            raise
        if config.vocab_size != OPENAI_VOCAB_SIZE:
            raise FileNotFoundError(f"{model}: no tokenizer files (vocab.json and merges.txt, or tokenizer.json), "
                                    f"and its vocabulary of {config.vocab_size} tokens is not OpenAI's "
                                    f"{OPENAI_VOCAB_SIZE}: save the tokenizer beside the model") from None
    if note is not None:
        note(f"{model} has no tokenizer files; using OpenAI's GPT-2 vocabulary (its size matches the model's)")
    return GPT2TokenizerFast.from_pretrained("gpt2")


def _framework(framework: str):
    """The framework's package (gpt2.torch, gpt2.tf or gpt2.flax); ImportError naming what to install."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    import importlib

    name, extra = _NEEDS[framework]
    try:
        return importlib.import_module(f"gpt2.{framework}")
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        raise ImportError(f"--framework {framework} needs {name}, which is not installed here ({missing}): "
                          f"pip install 'gpt2[{extra}]'") from None


class Engine:
    """A loaded language model in one framework, seen through numpy: ``logits(ids)`` and ``generate(ids, ...)``."""

    def __init__(self, model: str, framework: str) -> None:
        self.framework = framework
        package = _framework(framework)
        cls = {"torch": "GPT2LMHeadModel", "tf": "TFGPT2LMHeadModel", "flax": "FlaxGPT2LMHeadModel"}[framework]
        with warnings.catch_warnings():  # the load report (unused heads...) is not the command's business
            warnings.simplefilter("ignore")
            self.model = getattr(package, cls).from_pretrained(model)
        if framework == "torch":
            self.model.eval()

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Float32 logits (B, T, V) for ids (B, T), no dropout."""
        if self.framework == "torch":
            import torch

            with torch.inference_mode():
                out = self.model(torch.as_tensor(ids, dtype=torch.long)).logits
            return out.float().numpy()
        if self.framework == "tf":
            import tensorflow as tf

            return np.asarray(self.model(tf.constant(ids, dtype=tf.int32), training=False).logits, np.float32)
        return np.asarray(self.model(np.asarray(ids, np.int32)).logits, np.float32)

    def generate(self, ids: np.ndarray, *, seed: int, streamer=None, **options) -> np.ndarray:
        """The sequences (n, T') that ``generate`` gives for ids (1, T) with GenerationConfig ``options``."""
        if self.framework == "torch":
            import torch

            generator = torch.Generator().manual_seed(seed)
            out = self.model.generate(torch.as_tensor(ids, dtype=torch.long), generator=generator,
                                      streamer=streamer, **options)
            return out.numpy()
        if self.framework == "tf":
            import tensorflow as tf

            out = self.model.generate(tf.constant(ids, dtype=tf.int32), seed=seed, streamer=streamer, **options)
            return np.asarray(out)
        out = self.model.generate(np.asarray(ids, np.int32), seed=seed, streamer=streamer, **options)
        return np.asarray(out.sequences)


# -- gpt2 generate ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Generation:
    """One prompt's result: its texts (prompt included), the new tokens of each, and the seconds generate() took."""

    prompt: str
    texts: list[str]
    new_tokens: list[int]
    seconds: float



def generate(prompts: list[str], *, model: str | None = None, framework: str = "torch", max_new_tokens: int = 50,
             do_sample: bool = False, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
             num_return_sequences: int = 1, stream: bool | None = None, out=None,
             note: Callable[[str], None] | None = None) -> list[Generation]:
    """Continue each prompt; returns a Generation per prompt, with its ``num_return_sequences`` texts.

    ``stream``: print each text token by token as it is made (TextStreamer; one sequence at a time), else print
    each text when done; None: stream when ``out`` (default stdout) is a terminal. Greedy unless ``do_sample``;
    ``seed`` makes sampling repeatable (default: a fresh one). Everything is checked before a model is loaded: a
    prompt that leaves no room in the model's context (n_positions) for ``max_new_tokens`` is a ValueError.
    """
    if not prompts:
        raise ValueError("give at least one prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise ValueError(f"--num-return-sequences must be a positive integer, got {num_return_sequences!r}")
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    if not do_sample:
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"{', '.join(named)} only applies with --do-sample (greedy decoding ignores it)")
        if num_return_sequences > 1:
            raise ValueError("--num-return-sequences above 1 needs --do-sample (greedy decoding gives one text)")
    out = sys.stdout if out is None else out
    name = model_or_default(model)
    _framework(framework)  # a missing framework is reported before anything is read
    config = load_config(name)
    tokenizer = load_tokenizer(name, config, note)
    encoded = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if not ids:
            raise ValueError("a prompt is empty: GPT-2 needs at least one token to continue")
        if len(ids) + max_new_tokens > config.n_positions:
            room = config.n_positions - len(ids)
            what = (f"longer than the model's context of {config.n_positions} tokens" if room <= 0
                    else f"leaves room for {room} new tokens in the model's context of {config.n_positions}, "
                         f"not --max-new-tokens {max_new_tokens}")
            raise ValueError(f"prompt {_short(prompt)!r} is {len(ids)} token{'s' * (len(ids) != 1)}, {what}")
        encoded.append(ids)
    engine = Engine(name, framework)
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences,
                   pad_token_id=tokenizer.eos_token_id,
                   **{k: v for k, v in given.items() if v is not None})
    if repetition_penalty is not None:
        options["repetition_penalty"] = repetition_penalty
    if seed is None:
        seed = secrets.randbelow(2**31) if do_sample else 0
    stream = (_isatty(out) if stream is None else stream) and num_return_sequences == 1
    results = []
    for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
        if i:
            _write(out, "\n")
        streamer = _Streamer(tokenizer, out) if stream else None
        start = time.perf_counter()
        sequences = engine.generate(np.asarray([ids]), seed=seed + i, streamer=streamer, **options)
        seconds = time.perf_counter() - start
        rows = [row.tolist() for row in sequences]
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
        if not stream:
            _write(out, "\n".join(texts) + "\n")
        new = [_new_tokens(row, len(ids), pad=tokenizer.eos_token_id) for row in rows]  # pad_token_id above
        results.append(Generation(prompt, texts, new, seconds))
    return results


def _new_tokens(row: list[int], prompt_length: int, pad: int) -> int:
    """Tokens generated in ``row``: a row that stopped at its end-of-text (``pad``, the same id) is padded with it
    to the longest row's length; its first one is generated, the rest padding."""
    new = row[prompt_length:]
    return new.index(pad) + 1 if pad in new else len(new)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _write(stream, text: str) -> None:
    if stream is None:  # started with stdout closed (`gpt2 generate ... >&-`): nobody reads the text
        return
    stream.write(text)
    stream.flush()


class _Streamer(TextStreamer):
    """TextStreamer writing to the command's ``out`` rather than through print()."""

    def __init__(self, tokenizer, out) -> None:
        super().__init__(tokenizer, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        _write(self.out, text + ("\n" if stream_end else ""))


# -- gpt2 score ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Score:
    """A text's perplexity: exp(nll / tokens), ``tokens`` the scored ones (all but the first), over ``windows``."""

    path: str
    nll: float       # summed negative log-likelihood, nats
    tokens: int
    windows: int

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def windows(n_tokens: int, max_length: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, new) for each window over ``n_tokens`` ids, as transformers' perplexity guide walks them
    (docs/transformers perplexity.md, "Example: calculating perplexity with GPT-2"): windows of ``max_length``
    starting every ``stride`` tokens; the last ``new`` ids of a window are the ones not scored yet (the others are
    context, label -100 in the guide); the walk stops at the window that reaches the end."""
    previous_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        yield begin, end, end - previous_end
        previous_end = end
        if end == n_tokens:
            break


def window_nll(logits: np.ndarray, ids: np.ndarray, new: int) -> tuple[float, int]:
    """(summed NLL, count) of the last ``new`` ids of a window given its logits (T, V); the window's first id has
    no prediction (the guide's label shift), so at most T - 1 are scored. Log-softmax in float64, by row chunks."""
    first = max(len(ids) - new, 1)
    total = 0.0
    for start in range(first, len(ids), 256):
        stop = min(start + 256, len(ids))
        rows = logits[start - 1: stop - 1].astype(np.float64)
        peak = rows.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
        total += float((log_z - rows[np.arange(stop - start), ids[start:stop]]).sum())
    return total, len(ids) - first


STDIN = "-"  # the FILE argument that means standard input


def read_text(path: str | os.PathLike) -> str:
    if str(path) == STDIN:
        return _decode(sys.stdin.buffer.read(), "standard input")
    path = Path(path)
    if str(path) == "":
        raise ValueError("a FILE argument is empty")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give text files")
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    return _decode(path.read_bytes(), str(path))


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def score(paths: list[str], *, model: str | None = None, framework: str = "torch", max_length: int | None = None,
          stride: int | None = None, progress: bool | None = None,
          note: Callable[[str], None] | None = None) -> list[Score]:
    """Perplexity of each text file, with a sliding window as transformers' perplexity guide computes it.

    ``max_length``: tokens per window (default and maximum: n_positions). ``stride``: how far each window moves
    (default max_length // 2; max_length: windows side by side, no shared context). Each token after the first is
    scored once, with up to max_length - 1 tokens before it as context; the perplexity is exp of their mean NLL.
    (The guide weights each window's mean loss by its label count less one; counting the scored tokens themselves,
    as here, is the mean of the formula at the guide's top; the two differ by one token per window after the
    first.) ``progress``: a tqdm bar over windows on stderr (None: only on a terminal).
    """
    if not paths:
        raise ValueError("give at least one text file")
    if list(map(str, paths)).count(STDIN) > 1:
        raise ValueError(f"{STDIN!r} (standard input) can be given once")
    name = model_or_default(model)
    _framework(framework)
    texts = [read_text(p) for p in paths]  # every file checked before the model is loaded
    config = load_config(name)
    max_length = config.n_positions if max_length is None else max_length
    if not isinstance(max_length, int) or not 2 <= max_length <= config.n_positions:
        raise ValueError(f"--max-length must be from 2 to the model's n_positions ({config.n_positions}), "
                         f"got {max_length!r}")
    stride = max(1, max_length // 2) if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise ValueError(f"--stride must be from 1 to --max-length ({max_length}), got {stride!r}")
    tokenizer = load_tokenizer(name, config, note)
    encoded = []
    for path, text in zip(paths, texts):
        with warnings.catch_warnings():  # a text longer than the model's context is what the windows are for
            warnings.filterwarnings("ignore", message="Token indices sequence length")
            ids = np.asarray(tokenizer.encode(text), np.int64)
        if len(ids) < 2:
            raise ValueError(f"{path}: {len(ids)} token{'s' * (len(ids) != 1)}; a perplexity needs at least 2")
        encoded.append(ids)
    engine = Engine(name, framework)
    results = []
    for path, ids in zip(paths, encoded):
        spans = list(windows(len(ids), max_length, stride))
        nll, count = 0.0, 0
        for begin, end, new in _bar(spans, f"scoring {Path(path).name}", progress):
            window = ids[begin:end]
            part, n = window_nll(engine.logits(window[None])[0], window, new)
            nll, count = nll + part, count + n
        results.append(Score("<stdin>" if str(path) == STDIN else str(path), nll, count, len(spans)))
    return results


def _bar(items: list, desc: str, progress: bool | None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the train extra; without it, no bar
        return items
    return tqdm(items, desc=desc, unit="window", leave=False, disable=None if progress in (None, True) else True)


# -- gpt2 info -------------------------------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
                       "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


@dataclasses.dataclass
class FormatInfo:
    format: str
    files: list[Path]
    bytes: int
    tensors: int | None       # None: not readable here (pytorch_model.bin without PyTorch)
    dtypes: dict[str, int]    # dtype name -> tensor count
    note: str = ""


@dataclasses.dataclass
class ModelInfo:
    folder: Path
    config: object
    parameters: int
    formats: list[FormatInfo]
    tokenizer_files: list[str]
    disk_bytes: int
    disk_files: int


def model_folder(model: str) -> Path:
    """The local folder holding ``model`` (a folder, the embedded model, or a snapshot in the Hugging Face cache)."""
    from .common import hub
    from .common.checkpoint import resolve_checkpoint

    if hub.local_folder(model) is not None:
        return Path(model)
    _, main = resolve_checkpoint(model, local_files_only=True)  # a folder without model files names no model
    return main.parent


def info(model: str | None = None) -> ModelInfo:
    """What a model folder holds, from its files' headers (no weights are loaded where the format allows it)."""
    from .common.checkpoint import FORMAT_NAMES, check_complete, format_module
    from .common.formats.canonical import trunk_shapes

    folder = model_folder(model_or_default(model))
    check_complete(folder)
    config = load_config(str(folder))
    parameters = sum(math.prod(shape) for shape in trunk_shapes(config).values())
    if not config.tie_word_embeddings:
        parameters += config.vocab_size * config.n_embd
    formats = []
    for fmt in FORMAT_NAMES:
        main = format_module(fmt).find(folder)
        if main is not None:
            formats.append(_format_info(fmt, Path(main)))
    if not formats:
        raise FileNotFoundError(f"no weights in {str(folder)!r}: expected model.safetensors, pytorch_model.bin, "
                                "tf_model.h5, flax_model.msgpack or an OpenAI model.ckpt")
    tokenizer_files = [n for n in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                                   "special_tokens_map.json") if (folder / n).is_file()]
    every = [p for p in folder.iterdir() if p.is_file()]
    return ModelInfo(folder, config, parameters, formats, tokenizer_files, sum(p.stat().st_size for p in every),
                     len(every))


def _format_info(fmt: str, main: Path) -> FormatInfo:
    from .common.formats.canonical import CheckpointError
    files = _weight_files(fmt, main)
    size = sum(p.stat().st_size for p in files)
    dtypes: dict[str, int] = {}
    try:
        count = 0
        for _, dtype in _headers(fmt, main, files):
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
            count += 1
    except ImportError as e:
        return FormatInfo(fmt, files, size, None, {}, note=str(e).split(":")[0])
    except CheckpointError:
        raise
    except Exception as e:  # safetensors, h5py and torch report damaged files each their own way
        raise CheckpointError(f"{main}: not a readable {fmt} weights file ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    return FormatInfo(fmt, files, size, count, dtypes)


def _weight_files(fmt: str, main: Path) -> list[Path]:
    from .common.formats import pt_layout

    if fmt == "openai":
        prefix = str(main)[: -len(".index")]
        return sorted(p for p in main.parent.iterdir() if str(p) == prefix + ".index"
                      or str(p).startswith(prefix + ".data-"))
    if fmt == "flax":
        return [main]
    names = {"safetensors": ("model.safetensors", "model.safetensors.index.json"),
             "pytorch": ("pytorch_model.bin", "pytorch_model.bin.index.json"),
             "tf": ("tf_model.h5", "tf_model.h5.index.json")}[fmt]
    found = pt_layout.weight_files(main.parent, names)
    if main.name.endswith(".index.json"):  # only what the index lists, and the index
        listed = set(pt_layout.shard_files(main).values())
        found = [p for p in found if p == main or p.name in listed]
    else:
        found = [main]
    return found


def _headers(fmt: str, main: Path, files: list[Path]) -> Iterator[tuple[str, str]]:
    """(tensor name, dtype name) of every tensor, read from the headers where the format has them."""
    weights = [p for p in files if not p.name.endswith(".index.json")]
    if fmt == "safetensors":
        from safetensors import safe_open

        for path in weights:
            with safe_open(str(path), framework="numpy") as f:
                for name in f.keys():
                    raw = f.get_slice(name).get_dtype()
                    yield name, _SAFETENSORS_DTYPES.get(raw, raw)
    elif fmt == "tf":
        import h5py

        for path in weights:
            found: list[tuple[str, str]] = []
            with h5py.File(path, "r") as f:  # metadata only: a dataset's dtype without its data
                f.visititems(lambda name, node: found.append((name, node.dtype.name))
                             if isinstance(node, h5py.Dataset) else None)
            yield from found
    elif fmt == "flax":
        from .common.formats import flax_msgpack

        for name, value in flax_msgpack.read_raw(main).items():  # msgpack has no index: the file is read whole
            yield name, np.dtype(value.dtype).name
    elif fmt == "openai":
        from .common.formats import openai_tf

        for name, lazy in openai_tf.iter_bundle(str(main)[: -len(".index")]):
            yield name, np.dtype(lazy.dtype).name if not isinstance(lazy.dtype, str) else lazy.dtype
    else:  # pytorch: a zip of records; torch maps it without reading the data
        try:
            import torch
        except ImportError:
            raise ImportError("dtypes unknown: reading pytorch_model.bin needs PyTorch") from None
        for path in weights:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be mapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            for name, tensor in state.items():
                yield name, str(tensor.dtype).replace("torch.", "")


def format_info(result: ModelInfo) -> list[str]:
    """``gpt2 info``'s report, one line each."""
    c = result.config
    lines = [f"model       {result.folder}"]
    arch = ", ".join(c.architectures) if c.architectures else "GPT-2"
    lines.append(f"config      {arch}: {c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, "
                 f"n_positions {c.n_positions}, vocab {c.vocab_size}, {c.activation_function}"
                 + (", tied embeddings" if c.tie_word_embeddings else ""))
    lines.append(f"parameters  {_count(result.parameters)} ({result.parameters:,})")
    for i, f in enumerate(result.formats):
        dtypes = ", ".join(f"{d} x{n}" for d, n in sorted(f.dtypes.items())) if f.tensors is not None else f.note
        names = ", ".join(p.name for p in f.files) if len(f.files) <= 3 else f"{f.files[0].name} + {len(f.files) - 1}"
        tensors = f"{f.tensors} tensors, " if f.tensors is not None else ""
        lines.append(f"{'weights' if i == 0 else '':<11} {f.format:<12}{names} ({_mib(f.bytes)}; {tensors}{dtypes})")
    lines.append(f"tokenizer   {', '.join(result.tokenizer_files) if result.tokenizer_files else 'none in the folder'}")
    lines.append(f"on disk     {_mib(result.disk_bytes)} in {result.disk_files} files")
    return lines


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
