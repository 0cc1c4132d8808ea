"""The TensorFlow base class and weight map: every checkpoint format round-trips through our PyTorch model with the
same outputs, dtypes and policies, the loading report, the caller's config never changes, bad files and arguments
are clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf, requires_torch]

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49, num_labels=3)
CLASSES = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
           "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"]
IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]])
OUTPUT_KEYS = ("logits", "mc_logits", "start_logits", "end_logits", "last_hidden_state")


def _config(**kw):
    from gpt2.common.config import GPT2Config

    return GPT2Config(**{**BASE, **kw})


def _ids(cls_name: str) -> np.ndarray:
    return IDS[None] if cls_name == "GPT2DoubleHeadsModel" else IDS


def torch_outputs(model, ids) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids))
    return {k: out[k].float().numpy() for k in OUTPUT_KEYS if k in out.keys()}


def tf_outputs(model, ids) -> dict[str, np.ndarray]:
    out = model(input_ids=tf.constant(ids), training=False)
    return {k: np.asarray(tf.cast(out[k], tf.float32)) for k in OUTPUT_KEYS if k in out.keys()}


def assert_close(a: dict, b: dict, atol=1e-4):
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


def torch_model(cls_name: str, **kw):
    import gpt2.torch as pt

    torch.manual_seed(0)
    model = getattr(pt, cls_name)(_config(**kw)).eval()
    with torch.no_grad():  # biases and LayerNorms off their init, so that a missed or swapped one shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "tf", "flax"])
def test_every_format_loads_with_torchs_outputs(fmt, tmp_path):
    """Our torch model's weights written in each format load into the TF class with the same logits."""
    from gpt2.common.checkpoint import save_checkpoint

    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel")
    save_checkpoint(pt.state_to_canonical(), tmp_path, pt.config, format=fmt)
    model = ours.TFGPT2LMHeadModel.from_pretrained(tmp_path)
    assert_close(tf_outputs(model, IDS), torch_outputs(pt, IDS))


@pytest.mark.parametrize("cls_name", CLASSES)
@pytest.mark.parametrize("safe", [False, True], ids=["h5", "safetensors"])
def test_every_head_saves_and_loads_back_in_torch(cls_name, safe, tmp_path):
    """torch -> (our files) -> TF -> save_pretrained -> torch: the same outputs at every stop, and the files TF
    writes are tf_model.h5 (or model.safetensors) with config.json and, for the generating classes,
    generation_config.json."""
    import gpt2.torch as pt_classes
    import gpt2.tf as ours

    pt = torch_model(cls_name)
    pt.save_pretrained(tmp_path / "pt")
    model = getattr(ours, "TF" + cls_name).from_pretrained(tmp_path / "pt")
    reference = torch_outputs(pt, _ids(cls_name))
    assert_close(tf_outputs(model, _ids(cls_name)), reference)
    model.save_pretrained(tmp_path / "tf", safe_serialization=safe)
    names = sorted(p.name for p in (tmp_path / "tf").iterdir())
    weights_file = "model.safetensors" if safe else "tf_model.h5"
    generates = cls_name in ("GPT2LMHeadModel", "GPT2DoubleHeadsModel")
    assert names == sorted(["config.json", weights_file] + (["generation_config.json"] if generates else []))
    back = getattr(pt_classes, cls_name).from_pretrained(tmp_path / "tf")
    assert_close(torch_outputs(back, _ids(cls_name)), reference)
    again = getattr(ours, "TF" + cls_name).from_pretrained(tmp_path / "tf")
    for name, array in model.state_to_canonical().items():
        np.testing.assert_array_equal(again.state_to_canonical()[name], array, err_msg=name)


@pytest.mark.parametrize("cls_name", ["GPT2Model", "GPT2LMHeadModel", "GPT2DoubleHeadsModel"])
def test_weight_map_round_trips_with_heads_transposed(cls_name):
    """canonical -> variables -> canonical is the identity; Conv1D weights are Dense kernels as they are, heads
    are the one transpose; a tied lm_head is not stored."""
    import gpt2.tf as ours
    from gpt2.tf import weights

    pt = torch_model(cls_name, tie_word_embeddings=cls_name != "GPT2DoubleHeadsModel")
    state = pt.state_to_canonical()
    tf_model = getattr(ours, "TF" + cls_name)(pt.config)
    tf_model._build_for_loading()
    missing, unused = weights.load_canonical(tf_model, state)
    assert missing == [] and unused == []
    assert weights.state_to_canonical(tf_model).keys() == state.keys()
    for name, array in weights.state_to_canonical(tf_model).items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)
    np.testing.assert_array_equal(weights.to_numpy(tf_model.trunk.h[0].mlp.c_fc.kernel),
                                  state["transformer.h.0.mlp.c_fc.weight"])  # [in, out] both
    if cls_name == "GPT2DoubleHeadsModel":
        np.testing.assert_array_equal(weights.to_numpy(tf_model.multiple_choice_head.summary.kernel).T,
                                      state["multiple_choice_head.summary.weight"])
    assert tf_model.num_parameters() == sum(p.numel() for p in pt.parameters())


def test_load_canonical_names_a_wrong_shape_and_changes_nothing():
    import gpt2.tf as ours
    from gpt2.tf import weights

    model = ours.TFGPT2Model(_config())
    model._build_for_loading()
    before = weights.state_to_canonical(model)
    state = dict(torch_model("GPT2Model").state_to_canonical())
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:3]
    with pytest.raises(ValueError, match="transformer.wpe.weight.*checkpoint shape"):
        weights.load_canonical(model, state)
    for name, array in weights.state_to_canonical(model).items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)  # checked before any assign


def test_an_unbuilt_model_has_no_weights_to_map():
    import gpt2.tf as ours

    with pytest.raises(ValueError, match="no weights yet"):
        ours.TFGPT2Model(_config()).state_to_canonical()


@pytest.mark.parametrize("dtype, variables, compute", [
    (None, "float32", "float32"), ("float16", "float16", "float16"), ("bfloat16", "bfloat16", "bfloat16"),
    ("mixed_float16", "float32", "float16"), ("mixed_bfloat16", "float32", "bfloat16")])
def test_dtype_and_mixed_precision_policies(dtype, variables, compute, tmp_path):
    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel")
    pt.save_pretrained(tmp_path)
    model = ours.TFGPT2LMHeadModel.from_pretrained(tmp_path, dtype=dtype)
    assert model.dtype == variables and model.compute_dtype == compute
    assert {v.dtype for v in model.weights} == {variables}
    assert model.trunk.h[0].attn.c_attn.compute_dtype == compute  # the policy reaches every layer
    out = tf_outputs(model, IDS)
    assert_close(out, torch_outputs(pt, IDS), atol=1e-4 if compute == "float32" else 0.1)
    assert model.get_memory_footprint() == model.num_parameters() * (4 if variables == "float32" else 2)
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_dtype_auto_is_the_checkpoints(tmp_path):
    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel").to(torch.bfloat16)
    pt.save_pretrained(tmp_path)
    model = ours.TFGPT2LMHeadModel.from_pretrained(tmp_path, dtype="auto")
    assert model.dtype == "bfloat16"
    model.save_pretrained(tmp_path / "again")
    import json

    assert json.loads((tmp_path / "again" / "config.json").read_text())["dtype"] == "bfloat16"


def test_float16_overflow_and_bad_dtypes_are_errors(tmp_path):
    import gpt2.tf as ours

    pt = torch_model("GPT2Model")
    with torch.no_grad():
        pt.wpe.weight[0, 0] = 1e5
    pt.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="transformer.wpe.weight.*float16"):
        ours.TFGPT2Model.from_pretrained(tmp_path, dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        ours.TFGPT2Model.from_pretrained(tmp_path, dtype="int8")
    with pytest.raises(TypeError, match="dtype must be"):
        ours.TFGPT2Model.from_pretrained(tmp_path, dtype=3)
    with pytest.raises(TypeError, match="torch_dtype= is torch's"):
        ours.TFGPT2Model.from_pretrained(tmp_path, torch_dtype="float32")
    with pytest.raises(TypeError, match="device_map"):
        ours.TFGPT2Model.from_pretrained(tmp_path, device_map="auto")


def test_loading_report_and_config_overrides(tmp_path):
    """An LM checkpoint into a classifier: score is newly initialised and reported; overrides go to the model's
    copy of the config, never the caller's."""
    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel", tie_word_embeddings=False)
    pt.save_pretrained(tmp_path)
    config = _config(tie_word_embeddings=False)
    before = config.to_dict()
    with pytest.warns(UserWarning) as caught:
        model, info = ours.TFGPT2ForSequenceClassification.from_pretrained(
            tmp_path, config=config, num_labels=5, output_loading_info=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "score.weight" in messages and "lm_head.weight" in messages
    assert info == {"missing_keys": ["score.weight"], "unexpected_keys": ["lm_head.weight"], "mismatched_keys": [],
                    "error_msgs": []}
    assert model.config.num_labels == 5 and config.to_dict() == before
    assert model(input_ids=tf.constant(IDS)).logits.shape == (2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full checkpoint loads silently
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path, config=config)


def test_the_callers_config_is_unchanged_by_construction(tmp_path):
    import gpt2.tf as ours

    config = _config()
    before = config.to_dict()
    model = ours.TFGPT2DoubleHeadsModel(config)
    model._build_for_loading()
    assert config.to_dict() == before and model.config is not config
    with pytest.raises(TypeError, match="GPT2Config"):
        ours.TFGPT2Model({"n_layer": 2})


def test_bad_files_and_options_are_clear_errors(tmp_path):
    from gpt2.common.checkpoint import CheckpointError

    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel")
    pt.save_pretrained(tmp_path / "ok")
    ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "ok").save_pretrained(tmp_path / "h5")
    with pytest.raises(FileNotFoundError, match="use_safetensors=True"):
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "h5", use_safetensors=True)
    with pytest.raises(TypeError, match="no_such_option"):
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "ok", no_such_option=1)
    with pytest.raises(TypeError, match="token="):
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "ok", token="x")
    h5 = tmp_path / "h5" / "tf_model.h5"
    h5.write_bytes(h5.read_bytes()[:200])  # truncated
    with pytest.raises(CheckpointError, match="tf_model.h5"):
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "h5")
    with pytest.raises((OSError, ValueError)):
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "nothing-here", local_files_only=True)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        ours.TFGPT2LMHeadModel.from_pretrained(tmp_path / "ok", attn_implementation="sdpa")


def test_embeddings_utilities_and_resize(tmp_path):
    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel", tie_word_embeddings=False)
    pt.save_pretrained(tmp_path)
    model = ours.TFGPT2LMHeadModel.from_pretrained(tmp_path)
    table = model.state_to_canonical()["transformer.wte.weight"]
    assert model.get_input_embeddings() is model.trunk.wte
    count = model.num_parameters()
    new = model.resize_token_embeddings(53, pad_to_multiple_of=8)  # 56 rows
    assert model.get_input_embeddings() is new and model.config.vocab_size == model.trunk.config.vocab_size == 56
    assert model.num_parameters() == count + 2 * 6 * 16  # the old table and head are no longer counted
    state = model.state_to_canonical()
    np.testing.assert_array_equal(state["transformer.wte.weight"][:50], table)
    logits = model(input_ids=tf.constant(IDS)).logits
    assert logits.shape == (2, 6, 56)  # the untied head grew with the table
    np.testing.assert_allclose(np.asarray(logits)[..., :50], torch_outputs(pt, IDS)["logits"], atol=1e-4)
    assert model.is_gradient_checkpointing is False
    model.enable_input_require_grads()  # a documented no-op under GradientTape
    model.disable_input_require_grads()
    assert "CPU" in model.device


def test_resize_a_tied_model_keeps_the_head_tied(tmp_path):
    """The tied lm_head reads the trunk's new table after a resize (tie_weights through the head's tie()), and the
    model and its trunk share one config (post_init)."""
    import gpt2.tf as ours

    pt = torch_model("GPT2LMHeadModel")
    pt.save_pretrained(tmp_path)
    model = ours.TFGPT2LMHeadModel.from_pretrained(tmp_path)
    assert model.trunk.config is model.config
    model.resize_token_embeddings(56)
    assert model.config.vocab_size == 56
    logits = model(input_ids=tf.constant(IDS)).logits
    assert logits.shape == (2, 6, 56)
    np.testing.assert_allclose(np.asarray(logits)[..., :50], torch_outputs(pt, IDS)["logits"], atol=1e-4)
    x = model.trunk(input_ids=tf.constant(IDS)).last_hidden_state
    np.testing.assert_allclose(np.asarray(logits), np.asarray(x) @ model.trunk.wte.embeddings.numpy().T, atol=1e-5)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_every_class_pickles_deepcopies_and_keras_saves(cls_name, tmp_path):
    """Keras rebuilds our models from get_config (the classes register themselves): pickle, copy.deepcopy and
    model.save(".keras") / keras.models.load_model give the same outputs, and the model's own config (a head's
    num_labels, problem_type) comes back."""
    import copy
    import pickle

    import keras

    from conftest import tf_model

    model = tf_model(cls_name, num_labels=3)
    model.config.problem_type = "single_label_classification"
    ids = tf.constant(IDS[:, None, :] if cls_name == "GPT2DoubleHeadsModel" else IDS)
    want = [np.asarray(t) for t in model(ids, return_dict=False) if tf.is_tensor(t)]
    model.save(tmp_path / "m.keras")
    for again in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                  keras.models.load_model(tmp_path / "m.keras")):
        assert type(again) is type(model) and again.config.to_dict() == model.config.to_dict()
        got = [np.asarray(t) for t in again(ids, return_dict=False) if tf.is_tensor(t)]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_new_model_saves_and_its_generation_config_round_trips(tmp_path):
    """save_pretrained builds a model never called; generation_config.json is written in the same save and read
    back by from_pretrained (the shared GenerativeModel half of GenerationMixin)."""
    import gpt2.tf as ours

    model = ours.TFGPT2LMHeadModel(_config())
    model.generation_config.max_new_tokens = 3
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", "tf_model.h5"]
    again = ours.TFGPT2LMHeadModel.from_pretrained(tmp_path)
    assert again.generation_config.max_new_tokens == 3 and again.can_generate()
    np.testing.assert_array_equal(again.state_to_canonical()["transformer.wte.weight"],
                                  model.state_to_canonical()["transformer.wte.weight"])


def test_a_model_that_only_generated_is_built_and_pickles():
    """generate() on a model never called builds it as a whole: its weights can be read, it pickles, and the copy
    generates the same tokens."""
    import pickle

    import gpt2.tf as ours

    model = ours.TFGPT2LMHeadModel(_config())
    ids = tf.constant(IDS)
    first = model.generate(ids, max_new_tokens=3, pad_token_id=0)
    assert model.built
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.generate(ids, max_new_tokens=3, pad_token_id=0).numpy(), first.numpy())
    assert model(ids).logits.shape == (*IDS.shape, 50)
