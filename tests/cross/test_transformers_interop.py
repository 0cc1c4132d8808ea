"""The bar: transformers 4.57.6 writes a random checkpoint in every format; we read theirs, write ours in every
format, and transformers' class for that framework loads ours with the same logits. transformers itself cannot
load tf_model.h5 or flax_model.msgpack into PyTorch, nor model.safetensors into TF here: through us it can.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import has, requires_flax, requires_tf, requires_torch, requires_transformers
from gpt2.common.checkpoint import load_checkpoint
from gpt2.common.convert import convert

pytestmark = [requires_transformers, requires_torch, requires_tf, requires_flax]

CFG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49)
FORMATS = ("safetensors", "pytorch", "tf", "flax")
PT_FORMATS = ("safetensors", "pytorch")
IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]])


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def framework_of(fmt: str) -> str:
    return "pt" if fmt in PT_FORMATS else fmt


def their_outputs(cls_name: str, fw: str, folder, inputs: dict) -> dict[str, np.ndarray]:
    """Outputs of transformers' class for framework ``fw`` loaded from ``folder``."""
    T = _hf()
    prefix = {"pt": "", "tf": "TF", "flax": "Flax"}[fw]
    model = getattr(T, prefix + cls_name).from_pretrained(folder)
    if fw == "pt":
        import torch

        model.eval()
        with torch.no_grad():
            out = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    else:
        out = model(**inputs)
    keys = [k for k in ("logits", "mc_logits", "start_logits", "end_logits", "last_hidden_state") if k in out]
    return {k: np.asarray(out[k]) for k in keys}


def assert_outputs_close(a, b, fw):
    assert a.keys() == b.keys() and a
    tol = 1e-5 if fw == "pt" else 1e-4
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=tol, rtol=0, err_msg=k)


def make_sources(root, cls_name, config_kwargs, frameworks=("pt", "tf", "flax")):
    """transformers' own files for a random model: PT (safetensors + bin), and TF / Flax where it has the class."""
    import torch

    T = _hf()
    torch.manual_seed(0)
    model = getattr(T, cls_name)(T.GPT2Config(**config_kwargs)).eval()
    model.save_pretrained(root / "safetensors")
    model.save_pretrained(root / "pytorch", safe_serialization=False)
    made = list(PT_FORMATS)
    for fw, fmt in (("tf", "tf"), ("flax", "flax")):
        if fw in frameworks and hasattr(T, fw.upper().replace("FLAX", "Flax") + cls_name):
            prefix = "TF" if fw == "tf" else "Flax"
            getattr(T, prefix + cls_name).from_pretrained(root / "pytorch", from_pt=True).save_pretrained(root / fmt)
            made.append(fmt)
    return made


@pytest.fixture(scope="module")
def lm_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-lm")
    made = make_sources(root, "GPT2LMHeadModel", CFG)
    assert made == list(FORMATS)
    reference = their_outputs("GPT2LMHeadModel", "pt", root / "safetensors", {"input_ids": IDS})
    return root, reference


@pytest.mark.parametrize("src", FORMATS)
def test_every_format_reads_to_the_same_state(lm_sources, src):
    root, _ = lm_sources
    theirs, _ = load_checkpoint(root / src)
    base, _ = load_checkpoint(root / "safetensors")
    assert theirs.keys() == base.keys()
    for k in base:
        np.testing.assert_array_equal(theirs[k], base[k], err_msg=k)


@pytest.mark.parametrize("dst", FORMATS)
@pytest.mark.parametrize("src", FORMATS)
def test_lm_every_format_pair(lm_sources, src, dst, tmp_path):
    root, reference = lm_sources
    convert(root / src, tmp_path, to=dst)
    fw = framework_of(dst)
    assert_outputs_close(their_outputs("GPT2LMHeadModel", fw, tmp_path, {"input_ids": IDS}), reference, fw)


HEADS = {
    # class -> (inputs, config additions)
    "GPT2Model": ({"input_ids": IDS}, {}),
    "GPT2ForSequenceClassification": ({"input_ids": IDS}, {"num_labels": 3}),
    "GPT2ForTokenClassification": ({"input_ids": IDS}, {"num_labels": 4}),
    "GPT2ForQuestionAnswering": ({"input_ids": IDS}, {}),
    "GPT2DoubleHeadsModel": ({"input_ids": np.stack([IDS, IDS[::-1]]), "mc_token_ids": np.array([[5, 4], [3, 5]])},
                             {}),
}


@pytest.mark.parametrize("cls_name", HEADS)
def test_every_head_through_every_format(cls_name, tmp_path):
    """Each class: their PT files -> ours in each format -> their class in that framework (where it exists), or our
    reader (where transformers has no such class) gives the same tensors back."""
    T = _hf()
    inputs, extra = HEADS[cls_name]
    made = make_sources(tmp_path / "theirs", cls_name, {**CFG, **extra})
    reference = their_outputs(cls_name, "pt", tmp_path / "theirs" / "safetensors", inputs)
    state, _ = load_checkpoint(tmp_path / "theirs" / "safetensors")
    for src in made:
        for dst in FORMATS:
            out = tmp_path / f"{src}-{dst}"
            convert(tmp_path / "theirs" / src, out, to=dst)
            back, _ = load_checkpoint(out)
            assert back.keys() == state.keys()
            assert all(np.array_equal(back[k], state[k]) for k in state)
            fw = framework_of(dst)
            prefix = {"pt": "", "tf": "TF", "flax": "Flax"}[fw]
            if hasattr(T, prefix + cls_name):
                assert_outputs_close(their_outputs(cls_name, fw, out, inputs), reference, fw)


def test_cross_attention_and_untied_lm_head(tmp_path):
    """add_cross_attention (q_attn, ln_cross_attn) and an untied lm_head, through PT and Flax (TF always ties)."""
    rng = np.random.default_rng(0)
    inputs = {"input_ids": IDS, "encoder_hidden_states": rng.standard_normal((2, 3, 16)).astype(np.float32)}
    kwargs = {**CFG, "add_cross_attention": True, "tie_word_embeddings": False}
    make_sources(tmp_path / "theirs", "GPT2LMHeadModel", kwargs, frameworks=("flax",))
    reference = their_outputs("GPT2LMHeadModel", "pt", tmp_path / "theirs" / "safetensors", inputs)
    state, _ = load_checkpoint(tmp_path / "theirs" / "flax")
    assert "lm_head.weight" in state and "transformer.h.1.crossattention.q_attn.weight" in state
    for src in ("pytorch", "flax"):
        for dst in ("safetensors", "pytorch", "flax"):
            convert(tmp_path / "theirs" / src, tmp_path / f"{src}-{dst}", to=dst)
            fw = framework_of(dst)
            assert_outputs_close(their_outputs("GPT2LMHeadModel", fw, tmp_path / f"{src}-{dst}", inputs), reference,
                                 fw)


@requires_tf
def test_cross_attention_through_tf(tmp_path):
    rng = np.random.default_rng(0)
    inputs = {"input_ids": IDS, "encoder_hidden_states": rng.standard_normal((2, 3, 16)).astype(np.float32)}
    make_sources(tmp_path / "theirs", "GPT2LMHeadModel", {**CFG, "add_cross_attention": True}, frameworks=("tf",))
    reference = their_outputs("GPT2LMHeadModel", "pt", tmp_path / "theirs" / "safetensors", inputs)
    convert(tmp_path / "theirs" / "tf", tmp_path / "pt", to="safetensors")
    assert_outputs_close(their_outputs("GPT2LMHeadModel", "pt", tmp_path / "pt", inputs), reference, "pt")
    convert(tmp_path / "theirs" / "safetensors", tmp_path / "tf", to="tf")
    assert_outputs_close(their_outputs("GPT2LMHeadModel", "tf", tmp_path / "tf", inputs), reference, "tf")


@pytest.mark.parametrize("how", ["h5 sharded", "safetensors", "safetensors sharded"])
def test_transformers_tf_files_in_every_form(lm_sources, how, tmp_path):
    """transformers' TF class also writes sharded tf_model.h5 (its own shard layout, an index with model-named
    keys) and model.safetensors with TF names (metadata format "tf"): all read to the same state."""
    root, _ = lm_sources
    model = _hf().TFGPT2LMHeadModel.from_pretrained(root / "tf")
    model.save_pretrained(tmp_path, safe_serialization=how.startswith("safetensors"),
                          max_shard_size="2KB" if how.endswith("sharded") else "10GB")
    assert any(p.name.endswith(".index.json") for p in tmp_path.iterdir()) == how.endswith("sharded")
    theirs, _ = load_checkpoint(tmp_path)
    base, _ = load_checkpoint(root / "safetensors")
    assert theirs.keys() == base.keys()
    for k in base:
        np.testing.assert_array_equal(theirs[k], base[k], err_msg=k)


def test_sharded_tf_h5_we_write_loads_in_transformers(lm_sources, tmp_path):
    root, reference = lm_sources
    written = convert(root / "safetensors", tmp_path, to="tf", max_shard_size="2KB")
    names = sorted(p.name for p in written)
    assert "tf_model.h5.index.json" in names and any(n.startswith("tf_model-00001-of-") for n in names)
    assert not (tmp_path / "tf_model.h5").exists()
    assert_outputs_close(their_outputs("GPT2LMHeadModel", "tf", tmp_path, {"input_ids": IDS}), reference, "tf")
    convert(root / "safetensors", tmp_path, to="tf")  # one file again: the shards and index go
    assert sorted(p.name for p in tmp_path.iterdir() if "tf_model" in p.name) == ["tf_model.h5"]
