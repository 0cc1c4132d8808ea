"""Checkpoints: one canonical in-memory form, and every file format to and from it.

The canonical form is a dict of named numpy arrays with transformers' PyTorch names and layouts: the trunk under
``transformer.`` (``transformer.h.0.attn.c_attn.weight``, Conv1D weights as [in, out]), heads at the top level
(``lm_head.weight`` only when untied, ``score.weight``, ``classifier.*``, ``qa_outputs.*``,
``multiple_choice_head.summary.*``). Each format module in ``gpt2.common.formats`` says, tensor by tensor, which name
and which layout op it uses (``key_of``); ``gpt2.common.formats.canonical`` holds the canonical names and shapes
and applies those tables (re-exported here); this module does the rest once for all of them: detection, reading,
validation against the config, writing.

>>> from gpt2.common.checkpoint import load_checkpoint, save_checkpoint
>>> state, config = load_checkpoint("some-folder")                   # any format
>>> save_checkpoint(state, "out", config, format="tf")                 # tf_model.h5 that transformers' TF loads
"""

from __future__ import annotations

import importlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import files, hub
from .config import GPT2Config
from .formats import pt_layout
from .formats.canonical import (  # noqa: F401  (the canonical form's names, public here as before)
    HEAD_CLASSES,
    LAYOUT_DOC,
    LAYOUT_OPS,
    CheckpointError,
    Lazy,
    all_shapes,
    architecture_of,
    expected_shape_message,
    from_format,
    head_shapes,
    heads_of,
    is_float_dtype,
    max_file_bytes,
    native,
    parse_size,
    to_format,
    trunk_shapes,
)


# -- validation ------------------------------------------------------------------------------------------------------
def validate(state: dict[str, np.ndarray], config: GPT2Config, where: str) -> dict[str, np.ndarray]:
    """Check names, shapes, dtypes and finiteness against ``config``; drop a tied lm_head. Returns the state, every
    array in native byte order (a big-endian array would be written byte-swapped by formats that store raw bytes).

    Every problem is a CheckpointError naming ``where`` and the tensor.
    """
    expected = trunk_shapes(config)
    heads = head_shapes(config)
    missing = [n for n in expected if n not in state]
    for head in heads_of(state):
        expected.update(heads[head])
        missing += [n for n in heads[head] if n not in state]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{where}: missing tensors {shown}")
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise CheckpointError(f"{where}: unexpected tensors {', '.join(map(repr, unknown[:8]))}")
    for name, array in state.items():
        if not isinstance(array, np.ndarray):
            raise CheckpointError(f"{where}: tensor {name!r} is a {type(array).__name__}, not a numpy array")
        if tuple(array.shape) != tuple(expected[name]):
            raise CheckpointError(expected_shape_message(where, name, array.shape, expected[name], config))
        if not is_float_dtype(array.dtype):
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {array.dtype}, expected a float type")
        if not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise CheckpointError(f"{where}: tensor {name!r} has {bad} non-finite values (NaN or inf)")
    state = {name: native(array) for name, array in state.items()}
    if "lm_head.weight" in state and config.tie_word_embeddings:
        if not np.array_equal(state["lm_head.weight"], state["transformer.wte.weight"]):
            warnings.warn(
                f"{where}: lm_head.weight differs from transformer.wte.weight but the config ties them "
                f"(tie_word_embeddings=True); the model uses wte, as transformers does", stacklevel=3,
            )
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state


# -- formats ---------------------------------------------------------------------------------------------------------
# format -> (module in gpt2.common.formats, file suffix). Order = preference when a folder holds several.
_FORMATS = {
    "safetensors": ("safetensors_format", ".safetensors"),
    "pytorch": ("torch_bin", ".bin"),
    "tf": ("keras_h5", ".h5"),
    "flax": ("flax_msgpack", ".msgpack"),
    "openai": ("openai_tf", ".index"),
}
FORMAT_NAMES = tuple(_FORMATS)
WRITABLE_FORMATS = FORMAT_NAMES[:-1]  # OpenAI's format is read only


def _formats():
    return {fmt: importlib.import_module(f"{__package__}.formats.{module}") for fmt, (module, _) in _FORMATS.items()}


def format_module(fmt: str):
    formats = _formats()
    if fmt not in formats:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(formats)}")
    return formats[fmt]


def detect_format(folder: str | os.PathLike) -> tuple[str, Path]:
    """(format, main file) of the checkpoint in a local folder, in preference order; FileNotFoundError when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r}")
    check_complete(folder)
    for fmt, module in _formats().items():
        found = module.find(folder)
        if found is not None:
            return fmt, found
    raise FileNotFoundError(
        f"no checkpoint in {str(folder)!r}: expected one of "
        "model.safetensors[.index.json], pytorch_model.bin[.index.json], tf_model.h5, flax_model.msgpack, "
        "or an OpenAI model.ckpt.index"
    )


def check_complete(folder: str | os.PathLike) -> None:
    """CheckpointError when a save into ``folder`` has not finished (its marker is there): the weights and
    config.json may then be of different saves, or of two formats at once. See docs/checkpoints.md."""
    info = files.interrupted_save(folder)
    if info is None:
        return
    if info["running"]:
        raise CheckpointError(
            f"{folder}: a save into this folder is in progress (pid {info['pid']} on {info['host']}, started "
            f"{info['started']}); load it when the save has finished (or delete {info['path']} if none runs)")
    raise CheckpointError(
        f"{folder}: an interrupted save left this folder inconsistent (started {info['started']}, pid "
        f"{info['pid']}); save again or delete {info['path']}")


def resolve_checkpoint(
    name_or_path: str | os.PathLike, *, revision=None, cache_dir=None, local_files_only=False
) -> tuple[str, Path]:
    """(format, local main file) for a folder, a weights file, or a hub name (local HF cache first).
    A local folder that a save has not finished writing is a CheckpointError (``check_complete``)."""
    path = Path(name_or_path)
    if path.is_dir() or path.is_file():
        check_complete(path if path.is_dir() else path.parent)
    if path.is_file():
        name = path.name[: -len(".index.json")] if path.name.endswith(".index.json") else path.name
        for fmt, (_, suffix) in _FORMATS.items():
            if name.endswith(suffix):
                return fmt, path
        suffixes = ", ".join(s for _, s in _FORMATS.values())
        raise ValueError(f"{str(path)!r}: not a checkpoint file (expected a name ending in {suffixes})")
    if hub.local_folder(path) is not None:
        return detect_format(path)
    for allow_download in ((False, True) if not local_files_only else (False,)):
        for fmt, module in _formats().items():
            for filename in module.FILENAMES:
                found = hub.resolve_file(name_or_path, filename, revision=revision, cache_dir=cache_dir,
                                         local_files_only=not allow_download)
                if found is not None and _shards_available(name_or_path, found, revision, cache_dir,
                                                            local_files_only or not allow_download):
                    return fmt, found
    raise FileNotFoundError(f"no checkpoint for {str(name_or_path)!r}: looked in {hub.describe_lookup(name_or_path)}")


def _shards_available(name, main: Path, revision, cache_dir, local_files_only: bool) -> bool:
    """For a hub checkpoint's shard index: whether every shard it lists is (or now, downloaded, is) in the cache."""
    if not main.name.endswith(".index.json"):
        return True
    return all(
        hub.resolve_file(name, shard, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        is not None
        for shard in sorted(set(pt_layout.shard_files(main).values()))
    )


def load_checkpoint(
    name_or_path: str | os.PathLike,
    config: GPT2Config | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    progress: Callable[[int], None] | None = None,
    resolved: tuple[str, Path] | None = None,
) -> tuple[dict[str, np.ndarray], GPT2Config]:
    """Read any supported checkpoint into the canonical form; returns (state, config).

    ``config`` defaults to the config.json beside the weights (hparams.json for OpenAI's format). Everything is read
    and validated before anything is returned: nothing is ever half-loaded. ``progress(nbytes)`` is called as
    tensors are read. ``resolved``: what ``resolve_checkpoint`` already answered for ``name_or_path`` (a caller
    that looked at the format first need not look the files up twice).
    """
    fmt, main = resolved or resolve_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir,
                                               local_files_only=local_files_only)
    if config is None:
        local = fmt == "openai" or Path(name_or_path).exists() or (main.parent / "config.json").is_file()
        config = GPT2Config.from_pretrained(main.parent if local else name_or_path, revision=revision,
                                            cache_dir=cache_dir, local_files_only=local_files_only)
    state = format_module(fmt).read(main, config, progress)
    return validate(state, config, str(main)), config


def save_checkpoint(
    state: dict[str, np.ndarray],
    save_directory: str | os.PathLike,
    config: GPT2Config,
    *,
    format: str = "safetensors",
    max_shard_size: int | str | None = None,
    write_config: bool = True,
    progress: Callable[[int], None] | None = None,
    architecture: str | None = None,
    side_files: dict[str, "Path | str"] | None = None,
) -> "SavedFiles":
    """Write a canonical state (and config.json) to a folder in ``format``; returns the files written (a list, whose
    ``removed`` lists the files the save removed).

    The state is validated first. ``max_shard_size`` (bytes or "5GB") shards the safetensors, pytorch and tf
    formats as transformers does. ``architecture`` (a transformers class name) goes to config.json; by default it
    is inferred from the heads present. ``side_files`` ({name in the folder: source file}) are copied in by the same
    transaction: a Path is copied (the vocabulary and generation files that ``convert`` carries over), a str is
    the file's text (a model's generation_config.json).

    The save is one transaction (``files.FolderWrite``): every file is written under a temporary name first, so a
    failure while writing (a full disk) changes nothing; then the files are renamed into place, and the weights of
    an earlier save (old shards, another format's files, which would otherwise win the format order) are removed,
    with a warning naming any other format's files. A crash during that last step leaves a marker that makes every
    load refuse the folder until a save completes. Temporary files that killed saves left are removed.
    """
    if format not in WRITABLE_FORMATS:
        raise ValueError(f"cannot write format {format!r}; expected one of {', '.join(WRITABLE_FORMATS)}")
    save_directory = Path(save_directory)
    if save_directory.is_file():
        raise ValueError(f"{str(save_directory)!r} is a file, expected a folder")
    state = validate(dict(state), config, "state to save")
    module = format_module(format)
    with files.FolderWrite(save_directory) as stage:
        written = SavedFiles(module.write(state, stage, config, max_shard_size=max_shard_size, progress=progress))
        if write_config:
            config = config.copy()
            config.architectures = [architecture or architecture_of(state, config)]
            config.validate()
            stage.write_text(save_directory / "config.json", config.to_json_string())
            written.append(save_directory / "config.json")
        for name, source in (side_files or {}).items():
            target = save_directory / name
            if isinstance(source, str):
                stage.write_text(target, source)
            elif target.exists() and Path(source).resolve() == target.resolve():
                continue  # converting in place: the file is already there
            else:
                with stage.path(target) as tmp:
                    shutil.copyfile(source, tmp)
            written.append(target)
        # One model per folder: a file of any writable format not written now is an earlier save's (OpenAI's files
        # stay: they never win the format order, and no save can write them back).
        stale = [p for fmt in WRITABLE_FORMATS
                 for p in pt_layout.weight_files(save_directory, format_module(fmt).FILENAMES) if p not in written]
        own = set(pt_layout.weight_files(save_directory, module.FILENAMES))
        stage.commit(remove=stale)
    written.removed = stage.cleaned + stage.removed
    others = [p.name for p in stage.removed if p not in own]
    if others:
        warnings.warn(f"saving {format} weights into {str(save_directory)!r} removed the weights of other formats "
                      f"there, so that the folder holds one model: {', '.join(others)}", stacklevel=2)
    if stage.cleaned:
        warnings.warn(f"removed {len(stage.cleaned)} temporary files that interrupted saves left in "
                      f"{str(save_directory)!r}: {', '.join(p.name for p in stage.cleaned)}", stacklevel=2)
    return written


class SavedFiles(list):
    """The files a save wrote (a list of paths), with ``removed``: the files it removed (an earlier save's weights,
    other formats' weights, temporary files of killed saves)."""

    def __init__(self, paths: Iterable[Path] = (), removed: Iterable[Path] = ()) -> None:
        super().__init__(paths)
        self.removed = list(removed)
