"""Training data, framework-free: text -> a memory-mapped token file -> packed blocks -> batches by step.

>>> from gpt2.common.data import prepare, split_blocks, Batches, eval_batches
>>> tokens = prepare("corpus.txt")                   # tokenized once; reused while corpus.txt is unchanged
>>> train, val = split_blocks(tokens, block_size=128, seed=0)
>>> batches = Batches(train, batch_size=8, grad_accum=2, seed=0)
>>> batches.batch(step=0).shape                      # (grad_accum, batch_size // world, block_size)
(2, 8, 128)

Decisions (each written once, here):

- **Sources.** ``prepare(path)`` takes a text file, a folder (every ``*.txt`` under it, recursively, in sorted
  relative-path order), or a token file made earlier (``*.gpt2-tokens`` or its ``.json``).
- **Documents.** Each file is one document; a literal ``<|endoftext|>`` inside a file also separates documents
  (the tokenizer's default: it becomes the special token, so a corpus dumped with separators keeps them). Every
  document ends with ``<|endoftext|>`` (as OpenAI's WebText and nanoGPT's OpenWebText preparation), so documents
  are joined by it and a model learns where text ends. A UTF-8 byte order mark at the start of a file is dropped;
  the text is otherwise tokenized exactly as written (no newline normalisation).
- **Tokenizing.** GPT2TokenizerFast (OpenAI's vocabulary unless a tokenizer is given), in batches of text chunks.
  A long file is cut into chunks only after a newline that follows a non-space and precedes a non-space: GPT-2's
  pre-tokenizer never joins such a newline with its neighbours, so the ids equal those of the whole file at once
  (tested). Files are read in binary blocks, so memory stays bounded by the chunk size, not the file size.
- **The token file.** Raw little-endian uint16 ids (``count * 2`` bytes, read with ``np.memmap``) and beside it a
  JSON of what made it: the tokenizer (class, vocabulary size and a sha256 of its vocabulary, merges and added
  tokens), the source files with their sizes, modification times and sha256, the token count. Both are written as
  temporary files renamed into place, the JSON last: a crash between the two renames leaves a JSON whose count or
  source hashes no longer match, so the token file is remade, never read half-new. Processes preparing the same
  source at once (test workers, ranks without a barrier) each write whole files and rename them; no reader ever sees
  a missing or partial file.
- **Where.** For ``corpus.txt``: ``corpus.txt.gpt2-tokens`` (+ ``.json``) beside it; for a folder ``data/``:
  ``data/gpt2-tokens`` (+ ``.json``) inside it (not a ``.txt``, so never read back as text). When that place is not
  writable (a read-only dataset), the cache folder is used instead: ``cache_dir`` if given, else
  ``$XDG_CACHE_HOME/gpt2/tokens`` (``~/.cache/gpt2/tokens``), in a subfolder named by a hash of the source's absolute
  path. Both places are looked in before anything is remade.
- **Reuse.** A token file is reused when its tokenizer digest is the one asked for and the source files are the same
  list with the same sizes and (modification times, or failing that, sha256). Any change remakes it.
- **Blocks.** Packed, non-overlapping blocks of ``block_size`` tokens (block ``i`` is tokens
  ``[i*T, (i+1)*T)``); the tail shorter than a block is dropped. ``labels = input_ids``: the models shift inside
  their loss, so a block of T tokens gives T-1 predictions.
- **Held-out split.** Without ``--val-data``, a seeded random choice of whole blocks (``val_fraction``, at least
  ``min_val_blocks``) is held out; training never sees them. With ``--val-data`` every block of that file is
  validation and every block of the training file is training.
- **Order.** Epoch ``e`` visits the training blocks in the order ``np.random.default_rng([seed, e]).permutation``.
  The rows of all epochs, one after the other, form one endless stream; optimizer step ``s`` takes rows
  ``[s*R, (s+1)*R)`` with ``R = batch_size * grad_accum`` (a step may straddle two epochs). So the batch of any step
  is computed from the step alone: resuming needs only the step number.
- **Sharding.** ``batch_size`` is the global micro-batch (all ranks together); the global batch of a step has shape
  ``(grad_accum, batch_size, T)``; rank ``r`` of ``world`` takes rows ``[r*b, (r+1)*b)`` of each micro-batch, with
  ``b = batch_size // world``. The ranks' rows partition the global batch, so one device and N devices see the same
  data per step. ``batch_size`` must divide by ``world`` (and by the devices a framework shards over:
  ``check_divides``).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import regex

from . import files

FORMAT = "gpt2-tokens"
VERSION = 1
SUFFIX = ".gpt2-tokens"          # corpus.txt -> corpus.txt.gpt2-tokens
FOLDER_NAME = "gpt2-tokens"       # data/ -> data/gpt2-tokens
META_SUFFIX = ".json"             # the JSON beside the ids: <token file>.json
DTYPE = np.dtype("<u2")

_READ_BYTES = 1 << 22             # binary read size
_CHUNK_CHARS = 1 << 18            # text handed to the tokenizer per chunk (cut at safe points)
_CHUNKS_PER_CALL = 32             # chunks per batched tokenizer call
# After a newline that follows a non-space and precedes a non-space, GPT-2's pre-tokenizer regex always ends a piece
# (" ?\p{L}+" only takes a space, and a lone newline before a non-space is matched alone by "\s+"): a safe cut.
_SAFE_CUT = regex.compile(r"(?<=\S\n)(?=\S)")


# -- the token file ----------------------------------------------------------------------------------------------------
class TokenFile:
    """A token file made by ``prepare``: ``.tokens`` (a read-only ``np.memmap`` of uint16 ids), ``.meta`` (its JSON),
    ``.path``, ``len(token_file)`` (the token count). ``.made`` says whether this call tokenized (False: reused)."""

    def __init__(self, path: str | os.PathLike, made: bool = False) -> None:
        path = Path(path)
        if path.name.endswith(SUFFIX + META_SUFFIX) or path.name == FOLDER_NAME + META_SUFFIX:
            path = path.with_name(path.name[: -len(META_SUFFIX)])
        self.path = path
        self.meta_path = _meta_path(path)
        self.meta = _read_meta(self.meta_path)
        count = self.meta["count"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the token file described by {self.meta_path.name} is missing")
        size = path.stat().st_size
        if size != count * DTYPE.itemsize:
            raise ValueError(f"{path}: {size} bytes, but {self.meta_path.name} says {count} uint16 tokens "
                             f"({count * DTYPE.itemsize} bytes): the token file is damaged; delete both and prepare "
                             f"the data again")
        self.tokens = np.memmap(path, dtype=DTYPE, mode="r", shape=(count,))
        self.made = made

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def max_id(self) -> int:
        """The largest token id in the file (checked against a model's vocab_size before training)."""
        return int(self.meta["max_id"])

    def check_vocab(self, vocab_size: int) -> None:
        """ValueError when an id in the file is past a model's vocabulary (a token file made by another tokenizer)."""
        if self.max_id >= vocab_size:
            raise ValueError(f"{self.path}: holds token id {self.max_id}, past the model's vocab_size {vocab_size} "
                             f"(tokenized with {self.meta['tokenizer']['class']} of {self.meta['tokenizer']['size']} "
                             f"tokens)")

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self)})"


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def _read_meta(meta_path: Path) -> dict:
    meta = files.read_json(meta_path, "token file description")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: not a {FORMAT} v{VERSION} description (format={meta.get('format')!r}, "
                         f"version={meta.get('version')!r})")
    count = meta.get("count")
    if not isinstance(count, int) or count < 1 or meta.get("dtype") != "uint16":
        raise ValueError(f"{meta_path}: bad token count {count!r} or dtype {meta.get('dtype')!r}")
    return meta


# -- prepare -----------------------------------------------------------------------------------------------------------
def prepare(path: str | os.PathLike, *, tokenizer=None, progress: bool = True,
            cache_dir: str | os.PathLike | None = None) -> TokenFile:
    """Tokenize ``path`` (a text file, a folder of ``.txt`` files, or a token file) once; return the TokenFile.

    ``tokenizer``: a GPT2TokenizerFast / GPT2Tokenizer (default: OpenAI's vocabulary). ``progress``: a tqdm bar on
    stderr while tokenizing. ``cache_dir``: where to write when the source's folder is read-only (see the module doc).
    Errors: FileNotFoundError (no such path, no .txt in a folder), ValueError (an empty file, a file that is not
    UTF-8 -- naming the file and the byte offset --, a vocabulary too big for uint16, a damaged token file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no training data at {str(path)!r} (expected a .txt file, a folder of .txt files or "
                                f"a {SUFFIX} token file)")
    if path.is_file() and (path.name.endswith(SUFFIX) or path.name.endswith(SUFFIX + META_SUFFIX)
                           or path.name in (FOLDER_NAME, FOLDER_NAME + META_SUFFIX)):
        return TokenFile(path)
    sources = _sources(path)
    if tokenizer is None:
        from .tokenizer_fast import GPT2TokenizerFast

        tokenizer = GPT2TokenizerFast()
    identity = tokenizer_identity(tokenizer)
    places = _places(path, cache_dir)
    for place in places:
        if _up_to_date(place, sources, identity):
            return TokenFile(place)
    last_error = None
    for place in places:
        try:
            _make(place, path, sources, tokenizer, identity, progress)
        except PermissionError as e:
            last_error = e
            continue
        except OSError as e:
            if getattr(e, "errno", None) in (13, 30) or isinstance(e.__cause__, PermissionError):  # EACCES, EROFS
                last_error = e
                continue
            raise
        return TokenFile(place, made=True)
    raise OSError(f"cannot write a token file for {path} beside it nor in the cache folder {places[-1].parent} "
                  f"({last_error}); pass a writable cache_dir")


def _sources(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        if not found:
            raise FileNotFoundError(f"{path}: a folder with no .txt files (training data is UTF-8 text in .txt files)")
        return found
    return [path]


def _places(path: Path, cache_dir) -> list[Path]:
    beside = path / FOLDER_NAME if path.is_dir() else path.with_name(path.name + SUFFIX)
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2" / "tokens"
    key = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = FOLDER_NAME if path.is_dir() else path.name + SUFFIX
    return [beside, Path(cache_dir) / key / name]


def tokenizer_identity(tokenizer) -> dict:
    """What identifies a tokenizer's ids: its class, size and a sha256 of its vocabulary, merges and added tokens."""
    if len(tokenizer) > 2 ** 16:
        raise ValueError(f"a tokenizer of {len(tokenizer)} tokens does not fit uint16 token files (at most 65536)")
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    h.update(json.dumps([list(m) for m in getattr(tokenizer, "merges", [])], ensure_ascii=False).encode())
    h.update(json.dumps(sorted(tokenizer.all_special_tokens), ensure_ascii=False).encode())
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token (<|endoftext|>), which separates documents")
    return {"class": type(tokenizer).__name__, "size": len(tokenizer), "eos_token_id": int(eos),
            "sha256": h.hexdigest()}


def _file_entry(root: Path, file: Path, digest: str | None = None) -> dict:
    stat = file.stat()
    rel = file.name if root.is_file() else file.relative_to(root).as_posix()
    return {"path": rel, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(_READ_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def _up_to_date(place: Path, sources: list[Path], identity: dict) -> bool:
    try:
        meta = _read_meta(_meta_path(place))
        if not place.is_file() or place.stat().st_size != meta["count"] * DTYPE.itemsize:
            return False
    except (OSError, ValueError):
        return False
    if meta.get("tokenizer") != identity:
        return False
    recorded = meta.get("files") or []
    root = Path(meta.get("source", ""))
    if len(recorded) != len(sources):
        return False
    for entry, file in zip(recorded, sources):
        now = _file_entry(root if root.exists() else file, file)
        if entry.get("path") != now["path"] or entry.get("size") != now["size"]:
            return False
        if entry.get("mtime_ns") != now["mtime_ns"] and entry.get("sha256") != _sha256(file):
            return False
    return True


def _chunks(file: Path, digest) -> Iterator[str]:
    """The text of ``file`` in chunks cut at safe points; ``digest`` (a sha256) is fed every byte read.
    ValueError naming the file and the byte offset of the first byte that is not UTF-8; an empty file refused."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    pending, offset, first, any_text = "", 0, True, False
    with open(file, "rb") as f:
        while True:
            block = f.read(_READ_BYTES)
            digest.update(block)
            held = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: not UTF-8 text: byte offset {offset - held + e.start} "
                                 f"({e.reason}; training data must be UTF-8)") from None
            offset += len(block)
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            pending += text
            any_text = any_text or bool(pending.strip())
            while len(pending) > _CHUNK_CHARS:
                cut = _last_safe_cut(pending, _CHUNK_CHARS)
                if cut is None:
                    break
                yield pending[:cut]
                pending = pending[cut:]
            if not block:
                break
    if not any_text:
        raise ValueError(f"{file}: empty (no text to train on)")
    if pending:
        yield pending


def _last_safe_cut(text: str, near: int) -> int | None:
    """The last safe cut at or before ``near`` characters, else the first after it, else None."""
    start = max(0, near - _CHUNK_CHARS // 4)
    found = None
    for m in _SAFE_CUT.finditer(text, start, near + 1):
        found = m.start()
    if found:
        return found
    m = _SAFE_CUT.search(text, near)
    return m.start() if m else None


def _make(place: Path, root: Path, sources: list[Path], tokenizer, identity: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    place.parent.mkdir(parents=True, exist_ok=True)
    meta_path = _meta_path(place)
    eos = identity["eos_token_id"]
    count, max_id, entries = 0, 0, []
    total = sum(f.stat().st_size for f in sources)
    with files.atomic_path(place) as tmp, open(tmp, "wb") as out, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {root.name}", leave=False,
                 disable=None if progress else True) as bar:  # disable=None: a bar only on a terminal

        def flush(texts: list[str]) -> None:
            nonlocal count, max_id
            if not texts:
                return
            with warnings.catch_warnings():  # model_max_length is about a model's input, not a corpus
                warnings.filterwarnings("ignore", message="Token indices sequence length")
                ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            for row in ids:
                arr = np.asarray(row, dtype=np.int64)
                if arr.size:
                    max_id = max(max_id, int(arr.max()))
                    out.write(arr.astype(DTYPE).tobytes())
                    count += arr.size
            bar.update(sum(len(t.encode("utf-8", "surrogatepass")) for t in texts))

        for file in sources:
            digest = hashlib.sha256()
            batch: list[str] = []
            for chunk in _chunks(file, digest):
                batch.append(chunk)
                if len(batch) >= _CHUNKS_PER_CALL:
                    flush(batch)
                    batch = []
            flush(batch)
            out.write(np.asarray([eos], dtype=DTYPE).tobytes())
            count += 1
            max_id = max(max_id, eos)
            entries.append(_file_entry(root, file, digest.hexdigest()))
        out.flush()
    meta = {"format": FORMAT, "version": VERSION, "dtype": "uint16", "count": count, "max_id": max_id,
            "tokenizer": identity, "documents": "one per file (and per <|endoftext|> in it); each ends with "
            "<|endoftext|>", "source": str(root.resolve()), "files": entries}
    files.write_text(meta_path, json.dumps(meta, indent=1) + "\n")


# -- blocks, the split, batches ----------------------------------------------------------------------------------------
class Blocks:
    """Packed blocks of ``block_size`` tokens of a token file, restricted to the block numbers ``index``.
    ``len(blocks)`` blocks; ``blocks.rows(i)`` -> ``(len(i), block_size)`` int32 ids of the i-th blocks of this set."""

    def __init__(self, tokens: TokenFile | np.ndarray, block_size: int, index: np.ndarray | None = None) -> None:
        self.tokens = tokens.tokens if isinstance(tokens, TokenFile) else np.asarray(tokens)
        self.block_size = _positive_int(block_size, "block_size")
        total = len(self.tokens) // self.block_size
        self.index = np.arange(total, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        if total < 1:
            raise ValueError(f"the data holds {len(self.tokens)} tokens, fewer than one block of block_size "
                             f"{self.block_size}")

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, which) -> np.ndarray:
        T = self.block_size
        starts = self.index[np.asarray(which, dtype=np.int64)] * T
        return np.stack([np.asarray(self.tokens[s:s + T], dtype=np.int32) for s in starts]) if len(starts) else \
            np.zeros((0, T), dtype=np.int32)


def split_blocks(tokens: TokenFile | np.ndarray, block_size: int, *, seed: int = 0, val_fraction: float = 0.05,
                 min_val_blocks: int = 1, val_tokens: TokenFile | np.ndarray | None = None) -> tuple[Blocks, Blocks]:
    """(train, val) Blocks. With ``val_tokens`` (``--val-data``) all of ``tokens`` trains and all of ``val_tokens``
    validates; otherwise ``max(ceil(val_fraction * blocks), min_val_blocks)`` blocks, chosen by
    ``default_rng([seed, 2**31])`` (a stream no epoch order uses), are held out, and never trained on."""
    if val_tokens is not None:
        return Blocks(tokens, block_size), Blocks(val_tokens, block_size)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    every = Blocks(tokens, block_size)
    n = len(every)
    n_val = max(math.ceil(val_fraction * n), int(min_val_blocks))
    if n - n_val < 1:
        raise ValueError(f"the data holds {n} blocks of {block_size} tokens: too few to hold out {n_val} for "
                         f"validation and still train (give more text, a smaller block size, or --val-data)")
    chosen = np.random.default_rng([int(seed), 2 ** 31]).permutation(n)
    val = np.sort(chosen[:n_val])
    train = np.sort(chosen[n_val:])
    return Blocks(tokens, block_size, train), Blocks(tokens, block_size, val)


class Batches:
    """The training batches as a pure function of the step (see the module doc for the order and the sharding).

    ``batch(step, rank)`` -> int32 ``(grad_accum, batch_size // world, block_size)``: this rank's micro-batches of
    optimizer step ``step`` (0-based). ``global_batch(step)`` -> ``(grad_accum, batch_size, block_size)``.
    """

    def __init__(self, blocks: Blocks, *, batch_size: int, grad_accum: int = 1, seed: int = 0, world: int = 1) -> None:
        self.blocks = blocks
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.grad_accum = _positive_int(grad_accum, "grad_accum")
        self.world = _positive_int(world, "world")
        self.seed = int(seed)
        check_divides(self.batch_size, self.world, "processes (ranks)")
        if len(blocks) < 1:
            raise ValueError("no training blocks")
        self._orders: dict[int, np.ndarray] = {}

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.rows_per_step * self.blocks.block_size

    @property
    def steps_per_epoch(self) -> float:
        return len(self.blocks) / self.rows_per_step

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the training blocks for ``epoch``."""
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.blocks))
        return self._orders[epoch]

    def _stream_rows(self, start: int, count: int) -> np.ndarray:
        """Positions in ``self.blocks`` of the stream rows ``[start, start + count)``."""
        n = len(self.blocks)
        g = np.arange(start, start + count, dtype=np.int64)
        epochs, offsets = g // n, g % n
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.order(int(e))[offsets[sel]]
        return out

    def global_batch(self, step: int) -> np.ndarray:
        step = _step(step)
        rows = self._stream_rows(step * self.rows_per_step, self.rows_per_step)
        return self.blocks.rows(rows).reshape(self.grad_accum, self.batch_size, self.blocks.block_size)

    def batch(self, step: int, rank: int = 0) -> np.ndarray:
        step = _step(step)
        if not (isinstance(rank, (int, np.integer)) and 0 <= rank < self.world):
            raise ValueError(f"rank must be in [0, {self.world}), got {rank!r}")
        b = self.batch_size // self.world
        picks = self._stream_rows(step * self.rows_per_step, self.rows_per_step).reshape(self.grad_accum,
                                                                                          self.batch_size)
        mine = picks[:, rank * b:(rank + 1) * b].reshape(-1)
        return self.blocks.rows(mine).reshape(self.grad_accum, b, self.blocks.block_size)

    def position(self, step: int) -> dict:
        """Where step ``step`` starts in the data (JSON-able; for trainer_state.json and the logs)."""
        start = _step(step) * self.rows_per_step
        n = len(self.blocks)
        return {"step": int(step), "epoch": start // n, "block_in_epoch": start % n, "rows_seen": start,
                "epochs_done": start / n}


def eval_batches(blocks: Blocks, batch_size: int, *, max_batches: int | None = None, rank: int = 0,
                 world: int = 1) -> Iterator[np.ndarray]:
    """Validation batches in a fixed order (block order, no shuffling): int32 ``(batch_size // world, block_size)``
    for this rank, full batches only (static shapes for jit), at most ``max_batches``. ValueError when the split holds
    fewer blocks than one batch."""
    batch_size = _positive_int(batch_size, "batch_size")
    check_divides(batch_size, world, "processes (ranks)")
    count = len(blocks) // batch_size
    if count < 1:
        raise ValueError(f"the validation data holds {len(blocks)} blocks, fewer than one batch of {batch_size} "
                         f"(give more validation text, a smaller --batch-size or --block-size)")
    if max_batches is not None:
        count = min(count, _positive_int(max_batches, "max_batches"))
    b = batch_size // world
    for i in range(count):
        yield blocks.rows(np.arange(i * batch_size + rank * b, i * batch_size + (rank + 1) * b))


def num_eval_batches(blocks: Blocks, batch_size: int, max_batches: int | None = None) -> int:
    count = len(blocks) // batch_size
    return count if max_batches is None else min(count, max_batches)


def check_divides(batch_size: int, parts: int, what: str = "devices") -> None:
    """ValueError when ``batch_size`` rows do not split evenly over ``parts`` ranks / devices."""
    if parts < 1 or batch_size % parts:
        raise ValueError(f"--batch-size {batch_size} does not divide over {parts} {what}: give a multiple of {parts}")


def check_block_size(block_size: int, n_positions: int) -> None:
    """ValueError for a block longer than the model's position table."""
    _positive_int(block_size, "block_size")
    if block_size > n_positions:
        raise ValueError(f"--block-size {block_size} is above the model's n_positions {n_positions} (GPT-2 has no "
                         f"position embedding past it)")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return int(step)
