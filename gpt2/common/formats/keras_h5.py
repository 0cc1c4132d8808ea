"""tf_model.h5: transformers' TensorFlow (Keras 2) weights file, read and written with h5py, no TensorFlow.

Layout (as tf-keras' ``save_weights`` writes it for transformers' TF GPT-2): the root attribute ``layer_names``
lists the model's top layers (``transformer`` and the head, e.g. ``score``); each layer group has a
``weight_names`` attribute (split into ``weight_names0``, ``weight_names1``... past HDF5's 64 KiB attribute limit)
whose entries are ``<model name>/<layer>/.../<weight>:0``, and the dataset at ``<layer>/<weight name>``.
transformers matches weights by name with the model name (first component) stripped, so ``key_of`` uses that form:
``transformer/h_._0/attn/c_attn/weight:0``. Conv1D weights are already [in, out]; their biases are [1, out];
LayerNorms are gamma/beta; Dense heads store kernels [in, out] (torch Linear's transpose). transformers' TF GPT-2
always ties lm_head to wte, so an untied lm_head has no place here.

Sharded (transformers' TF ``save_pretrained(max_shard_size=...)``): ``tf_model-0000k-of-0000n.h5`` files, each with
its weights as root datasets named without the model name and listed in a ``layer_names`` attribute, and
``tf_model.h5.index.json`` whose weight_map uses the full names (model name first).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import files
from .canonical import CheckpointError, Lazy, architecture_of, from_format, to_format
from . import pt_layout

FORMAT = "tf"
FILENAMES = ("tf_model.h5", "tf_model.h5.index.json")
_LAYER_NORMS = ("ln_1", "ln_2", "ln_cross_attn", "ln_f")
_DENSE_HEADS = ("score", "classifier", "qa_outputs", "multiple_choice_head")
_ATTR_LIMIT = 64512  # HDF5 object header limit that Keras splits attributes at
# transformers' TF class names, lower-cased as Keras names the model (the first component of every weight name).
_MODEL_NAMES = {
    "GPT2Model": "tfgpt2_model",
    "GPT2LMHeadModel": "tfgpt2lm_head_model",
    "GPT2DoubleHeadsModel": "tfgpt2_double_heads_model",
    "GPT2ForSequenceClassification": "tfgpt2_for_sequence_classification",
    "GPT2ForTokenClassification": "tfgpt2_for_token_classification",
    "GPT2ForQuestionAnswering": "tfgpt2_for_question_answering",
}


def find(folder: Path) -> Path | None:
    return pt_layout.find(folder, FILENAMES)


def key_of(name: str) -> tuple[str, str] | None:
    parts = name.split(".")
    leaf = parts[-1]
    if parts[0] == "lm_head":
        return None
    if parts[0] in _DENSE_HEADS:
        return "/".join(parts[:-1]) + ("/kernel:0" if leaf == "weight" else "/bias:0"), (
            "transpose" if leaf == "weight" else "copy")
    if parts[1] in ("wte", "wpe"):
        return f"transformer/{parts[1]}/embeddings:0", "copy"
    path = re.sub(r"^transformer/h/(\d+)", r"transformer/h_._\1", "/".join(parts[:-1]))
    if parts[-2] in _LAYER_NORMS:
        return f"{path}/{'gamma' if leaf == 'weight' else 'beta'}:0", "copy"
    return f"{path}/{leaf}:0", ("copy" if leaf == "weight" else "bias_row")


def aliases(key: str):
    """The spellings a reader accepts for ``key`` (older writers' names); the safetensors reader uses them too."""
    yield key
    if key.endswith("/weight:0") and key.count("/") == 2:  # TFSharedEmbeddings in older files: wte/weight:0
        yield key[: -len("weight:0")] + "embeddings:0"


def _attr_list(group, name: str, path: Path) -> list[str]:
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
        if i == 0:
            raise CheckpointError(f"{path}: not a Keras weights file (no {name!r} attribute on {group.name!r})")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _set_attr_list(group, name: str, values: list[str]) -> None:
    data = np.array([v.encode("utf-8") for v in values])
    if data.nbytes <= _ATTR_LIMIT:
        group.attrs[name] = data
        return
    chunks = int(np.ceil(data.nbytes / _ATTR_LIMIT)) + 1
    for i, part in enumerate(np.array_split(data, chunks)):
        group.attrs[f"{name}{i}"] = part


def _weights(path: Path, walk):
    """``walk(h5 file)``'s (name, Lazy) pairs from the file at ``path``, lazily; a damaged file is a
    CheckpointError naming it (h5py reports damage as OSError, KeyError, RuntimeError, UnicodeDecodeError...)."""
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    try:
        with h5py.File(path, "r") as f:
            yield from walk(f)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable HDF5 weights file ({type(e).__name__}: {e})") from None


def _dataset(root, name: str, path: Path):
    """The dataset at ``name`` (a '/'-separated path below ``root``) as a Lazy, once it is known to hold its own
    bytes, all written, in this file.

    HDF5 can make a dataset read another file's bytes: external storage (raw bytes of any local file), virtual
    datasets (another HDF5 file's data), external links; soft links alias another object of the file. Keras writes
    none of them, and a weights file that uses them could read any local file into the weights (and a conversion
    would then write those bytes out), so each is refused, naming the tensor. A dataset declared but never written
    (its data is then the fill value, however large the shape) is refused too: a small file must not allocate a
    huge array.
    """
    import h5py
    from h5py import h5d

    node = root
    for part in name.strip("/").split("/"):
        link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
        if link is None:
            raise CheckpointError(f"{path}: weight {name!r} is listed but absent")
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise CheckpointError(f"{path}: weight {name!r} goes through {kind} ({part!r}); refused: a weights file "
                                  "must hold its tensors itself")
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise CheckpointError(f"{path}: weight {name!r} is a {type(node).__name__}, not a dataset")
    dcpl = node.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise CheckpointError(f"{path}: weight {name!r} is a virtual dataset (data from other files); refused")
    if dcpl.get_external_count():
        raise CheckpointError(f"{path}: weight {name!r} stores its data in an external file; refused")
    nbytes = node.id.get_storage_size()
    declared = node.size * node.dtype.itemsize
    if layout == h5d.CONTIGUOUS and nbytes < declared or layout == h5d.CHUNKED and node.size and not nbytes:
        raise CheckpointError(f"{path}: weight {name!r} declares {node.shape} but its data was never written "
                              f"({nbytes} of {declared} bytes stored)")
    if layout == h5d.CHUNKED and node.size:
        chunks = 1
        for dim, c in zip(node.shape, node.chunks):
            chunks *= -(-dim // c)
        if node.id.get_num_chunks() < chunks:
            raise CheckpointError(f"{path}: weight {name!r} has unwritten chunks "
                                  f"({node.id.get_num_chunks()} of {chunks} stored)")

    def load():
        try:
            return np.asarray(node[()])
        except Exception as e:  # damaged chunks, a failing filter: h5py raises OSError, ValueError...
            raise CheckpointError(f"{path}: weight {name!r} cannot be read ({type(e).__name__}: {e})") from None

    return Lazy(node.shape, node.dtype, load)


def read_raw(path: Path):
    """Every weight of a tf_model.h5 as a Lazy, keyed by its name without the model-name component, lazily."""
    def walk(f):
        for layer in _attr_list(f, "layer_names", path):
            group = _dataset_group(f, layer, path)
            for weight in _attr_list(group, "weight_names", path):
                yield "/".join(weight.split("/")[1:]), _dataset(group, weight, path)

    return _weights(path, walk)


def _dataset_group(f, layer: str, path: Path):
    import h5py

    link = f.get(layer, getlink=True)
    if link is None:
        raise CheckpointError(f"{path}: layer {layer!r} is listed but has no group")
    if not isinstance(link, h5py.HardLink) or not isinstance(f[layer], h5py.Group):
        raise CheckpointError(f"{path}: layer {layer!r} is not a group of this file (a link or a dataset); refused")
    return f[layer]


def _read_shard(path: Path):
    """A shard of transformers' sharded TF checkpoint: root datasets listed in ``layer_names``, as Lazy, lazily."""
    def walk(f):
        for name in _attr_list(f, "layer_names", path):
            yield name, _dataset(f, name, path)

    return _weights(path, walk)


def strip_model_name(name: str) -> str:
    """A TF shard index's name without the model name in front (the name inside the shard file)."""
    return name if "/" not in name else name.split("/", 1)[1]


def read(main: Path, config, progress=None) -> dict[str, np.ndarray]:
    if main.name.endswith(".index.json"):
        raw = pt_layout.read(main, _read_shard, index_key=strip_model_name)
    else:
        raw = read_raw(main)
    return from_format(raw, key_of, config, str(main), aliases, progress)


def write(state, stage: files.FolderWrite, config, *, max_shard_size=None, progress=None) -> list[Path]:
    if "lm_head.weight" in state:
        raise CheckpointError(
            "tf_model.h5 cannot hold an untied lm_head.weight: transformers' TF GPT-2 always ties it to wte "
            "(convert to safetensors or flax, or tie the weights)"
        )
    model_name = _MODEL_NAMES[architecture_of(state, config)]
    path = stage.folder / FILENAMES[0]
    weights = {}
    for key, array in to_format(state, key_of, str(path)).items():
        weights[key] = array.astype(np.float32) if array.dtype.name == "bfloat16" else array  # HDF5: no bfloat16

    def write_file(part: dict[str, np.ndarray], target: Path) -> None:
        # HDF5 meets a full disk while freeing objects, where h5py cannot raise (and then crashes): check first,
        # with room for the metadata (names, attributes: a few KiB per tensor)
        files.ensure_space(target, sum(a.nbytes for a in part.values()) + 4096 * (len(part) + 16))
        if part is weights:  # the whole state: one tf_model.h5 (a sharded save passes parts)
            _write_keras(part, target, model_name)
        else:
            _write_shard(part, target)

    # h5py reports most write failures as OSError, some (a failing flush) as RuntimeError
    return pt_layout.write(weights, stage, FILENAMES[0], write_file, max_shard_size, progress,
                           index_name=lambda key: f"{model_name}/{key}", errors=(RuntimeError,))


def _write_keras(weights: dict[str, np.ndarray], path: Path, model_name: str) -> None:
    """One tf_model.h5 in tf-keras' save_weights layout."""
    import h5py

    layers: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, array in weights.items():
        layers.setdefault(key.split("/")[0], []).append((f"{model_name}/{key}", array))
    with h5py.File(path, "w") as f:
        _set_attr_list(f, "layer_names", list(layers))
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.21.0"
        for layer, items in layers.items():
            group = f.create_group(layer)
            _set_attr_list(group, "weight_names", [w for w, _ in items])
            for weight, array in items:
                group.create_dataset(weight, data=array)
        f.create_group("top_level_model_weights").attrs["weight_names"] = np.array([], dtype="S1")


def _write_shard(weights: dict[str, np.ndarray], path: Path) -> None:
    """One shard as transformers' TF save_pretrained writes it: root datasets (sorted), listed in layer_names."""
    import h5py

    with h5py.File(path, "w") as f:
        names = sorted(weights)
        for name in names:
            f.create_dataset(name, data=weights[name])
        _set_attr_list(f, "layer_names", names)
