"""The Flax base class: every checkpoint format loads with our PyTorch model's outputs, save_pretrained round trips
(msgpack and safetensors) back into torch, dtype / param_dtype, the loading report, ``params`` (property, setter,
``params=`` under jax.jit and jax.grad against torch's gradients), init_cache, embeddings utilities, pickling, and
bad files and arguments as clear errors."""

from __future__ import annotations

import copy
import importlib.util
import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_flax, requires_torch  # every folder's conftest re-exports tests/conftest.py's names


def _helpers():
    """tests/flax/conftest.py's helpers, loaded by path: pytest imports every conftest.py under the one name
    ``conftest``, so with several folders collected a plain import may find another folder's."""
    name = "_gpt2_tests_flax_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_h = _helpers()
FLAX_CLASSES, FLAX_IDS, assert_close, flax_config, flax_outputs, ids_for, reference_torch_model, torch_outputs = (
    _h.FLAX_CLASSES, _h.FLAX_IDS, _h.assert_close, _h.flax_config, _h.flax_outputs, _h.ids_for,
    _h.reference_torch_model, _h.torch_outputs)

pytestmark = [requires_flax, requires_torch]

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")
nnx = pytest.importorskip("flax.nnx")

import gpt2.flax as ours  # noqa: E402
import gpt2.torch as pt_classes  # noqa: E402

GENERATING = ("GPT2LMHeadModel", "GPT2DoubleHeadsModel")


def flax_cls(cls_name: str):
    return getattr(ours, "Flax" + cls_name)


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """Our torch LM (untied head, so that lm_head is a weight of its own) saved as safetensors, once."""
    folder = tmp_path_factory.mktemp("lm")
    model = reference_torch_model("GPT2LMHeadModel", tie_word_embeddings=False)
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "tf", "flax"])
def test_every_format_loads_with_torchs_outputs(fmt, tmp_path):
    from gpt2.common.checkpoint import save_checkpoint

    pt = reference_torch_model("GPT2LMHeadModel")
    save_checkpoint(pt.state_to_canonical(), tmp_path, pt.config, format=fmt)
    model = ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
    assert_close(flax_outputs(model, FLAX_IDS), torch_outputs(pt, FLAX_IDS))


@pytest.mark.parametrize("cls_name", FLAX_CLASSES)
@pytest.mark.parametrize("fmt", ["msgpack", "safetensors"])
def test_every_class_saves_and_loads_back_in_torch(cls_name, fmt, tmp_path):
    """torch -> (our files) -> Flax -> save_pretrained -> torch and Flax: the same outputs at every stop; the files
    are flax_model.msgpack (or model.safetensors) and config.json (+ generation_config.json where the class
    generates); config.json names transformers' architecture (no Flax prefix, as transformers' Flax classes)."""
    pt = reference_torch_model(cls_name)
    pt.save_pretrained(tmp_path / "pt")
    model = flax_cls(cls_name).from_pretrained(tmp_path / "pt")
    reference = torch_outputs(pt, ids_for(cls_name))
    assert_close(flax_outputs(model, ids_for(cls_name)), reference)
    model.save_pretrained(tmp_path / "flax", format=fmt)
    names = sorted(p.name for p in (tmp_path / "flax").iterdir())
    weights_file = "flax_model.msgpack" if fmt == "msgpack" else "model.safetensors"
    generates = hasattr(model, "generation_config")
    assert names == sorted(["config.json", weights_file] + (["generation_config.json"] if generates else []))
    saved = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert saved["architectures"] == [cls_name] and saved["dtype"] == "float32"
    back = getattr(pt_classes, cls_name).from_pretrained(tmp_path / "flax")
    assert_close(torch_outputs(back, ids_for(cls_name)), reference)
    again = flax_cls(cls_name).from_pretrained(tmp_path / "flax")
    want = model.state_to_canonical()
    assert again.state_to_canonical().keys() == want.keys()
    for name, array in again.state_to_canonical().items():
        np.testing.assert_array_equal(array, want[name], err_msg=name)


def test_safe_serialization_and_format_options(tmp_path):
    model = ours.FlaxGPT2Model(flax_config())
    model.save_pretrained(tmp_path / "a", safe_serialization=True)
    assert (tmp_path / "a" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="format must be one of"):
        model.save_pretrained(tmp_path / "b", format="h5")
    with pytest.raises(ValueError, match="safe_serialization=True"):
        model.save_pretrained(tmp_path / "b", format="msgpack", safe_serialization=True)
    with pytest.raises(ValueError, match="one file"):
        model.save_pretrained(tmp_path / "b", max_shard_size="1KB")
    model.save_pretrained(tmp_path / "c", format="safetensors", max_shard_size=2000)  # sharded safetensors
    again = ours.FlaxGPT2Model.from_pretrained(tmp_path / "c")
    np.testing.assert_array_equal(np.asarray(again(FLAX_IDS).last_hidden_state),
                                  np.asarray(model(FLAX_IDS).last_hidden_state))


def test_save_pretrained_with_params_writes_those(tmp_path):
    model = ours.FlaxGPT2LMHeadModel(flax_config())
    halved = jax.tree.map(lambda x: x / 2, model.params)
    model.save_pretrained(tmp_path, params=halved)
    again = ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
    np.testing.assert_allclose(np.asarray(again.transformer.wte.embedding.get_value()),
                               np.asarray(model.transformer.wte.embedding.get_value()) / 2, rtol=1e-7)


def test_loading_report_and_config_overrides(lm_folder):
    """An LM checkpoint into a classifier: score is newly initialised (GPT-2's init from ``seed``) and reported,
    lm_head is reported unused; overrides go to the model's config, never the caller's."""
    folder, _ = lm_folder
    config = flax_config(tie_word_embeddings=False)
    before = config.to_dict()
    with pytest.warns(UserWarning) as caught:
        model, info = ours.FlaxGPT2ForSequenceClassification.from_pretrained(
            folder, config=config, num_labels=5, output_loading_info=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "score.weight" in messages and "lm_head.weight" in messages
    assert info == {"missing_keys": ["score.weight"], "unexpected_keys": ["lm_head.weight"], "mismatched_keys": [],
                    "error_msgs": []}
    assert model.config.num_labels == 5 and config.to_dict() == before
    score = np.asarray(model.score.kernel.get_value())
    assert score.shape == (16, 5) and np.isfinite(score).all() and 0.005 < score.std() < 0.05
    with pytest.warns(UserWarning):  # the same seed, the same new head
        other = ours.FlaxGPT2ForSequenceClassification.from_pretrained(folder, num_labels=5)
    np.testing.assert_array_equal(np.asarray(other.score.kernel.get_value()), score)
    assert model(FLAX_IDS).logits.shape == (2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full checkpoint loads silently
        ours.FlaxGPT2LMHeadModel.from_pretrained(folder)


def test_missing_weights_get_gpt2s_init(lm_folder):
    """A new head's bias is 0 and its weight N(0, initializer_range); torch's _init_weights rules for the rest
    (LayerNorm weights 1, residual projections scaled by 1/sqrt(2 n_layer))."""
    folder, _ = lm_folder
    with pytest.warns(UserWarning, match="multiple_choice_head.summary"):
        model, info = ours.FlaxGPT2DoubleHeadsModel.from_pretrained(folder, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["multiple_choice_head.summary.bias", "multiple_choice_head.summary.weight"]
    summary = model.multiple_choice_head.summary
    np.testing.assert_array_equal(np.asarray(summary.bias.get_value()), np.zeros(1, np.float32))
    assert 0.005 < float(np.asarray(summary.kernel.get_value()).std()) < 0.05
    model._init_missing(["transformer.ln_f.weight", "transformer.ln_f.bias", "transformer.h.1.mlp.c_proj.weight"],
                        seed=1)
    np.testing.assert_array_equal(np.asarray(model.transformer.ln_f.scale.get_value()), np.ones(16, np.float32))
    np.testing.assert_array_equal(np.asarray(model.transformer.ln_f.bias.get_value()), np.zeros(16, np.float32))
    std = float(np.asarray(model.transformer.h[1].mlp.c_proj.kernel.get_value()).std())
    assert 0.5 * 0.01 < std < 1.5 * 0.01  # 0.02 / sqrt(2 * n_layer)


def test_wrong_shapes_name_the_tensor(tmp_path):
    model = ours.FlaxGPT2Model(flax_config())
    before = model.state_to_canonical()
    state = dict(reference_torch_model("GPT2Model").state_to_canonical())
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:3]
    with pytest.raises(ValueError, match="transformer.wpe.weight.*checkpoint shape"):
        model.load_canonical(state)
    for name, array in model.state_to_canonical().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)  # checked before any assignment
    reference_torch_model("GPT2Model").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="wpe"):  # a config that disagrees with the file: refused by name
        ours.FlaxGPT2Model.from_pretrained(tmp_path, n_positions=10)


@pytest.mark.parametrize("dtype, param_dtype, compute, stored", [
    (None, None, "float32", "float32"), ("bfloat16", None, "bfloat16", "float32"),
    (jnp.bfloat16, jnp.bfloat16, "bfloat16", "bfloat16"), ("float16", "float16", "float16", "float16"),
    (None, "bfloat16", "float32", "bfloat16")])
def test_dtype_and_param_dtype(dtype, param_dtype, compute, stored, lm_folder):
    folder, pt = lm_folder
    model = ours.FlaxGPT2LMHeadModel.from_pretrained(folder, dtype=dtype, param_dtype=param_dtype)
    assert model.dtype == jnp.dtype(compute) and model.param_dtype == jnp.dtype(stored)
    assert {str(x.dtype) for x in jax.tree.leaves(model.params)} == {stored}
    out = model(FLAX_IDS)
    assert out.logits.dtype == jnp.dtype(compute)
    assert_close(flax_outputs(model, FLAX_IDS), torch_outputs(pt, FLAX_IDS),
                 atol=1e-4 if compute == stored == "float32" else 0.1)
    assert model.get_memory_footprint() == model.num_parameters() * jnp.dtype(stored).itemsize


def test_dtype_auto_is_the_checkpoints(tmp_path):
    pt = reference_torch_model("GPT2LMHeadModel").to(torch.bfloat16)
    pt.save_pretrained(tmp_path)
    model = ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path, dtype="auto", param_dtype="auto")
    assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.bfloat16
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["dtype"] == "bfloat16"
    again = ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path / "again", param_dtype="auto")
    assert again.param_dtype == jnp.bfloat16 and again.dtype == jnp.float32
    np.testing.assert_array_equal(again.state_to_canonical()["transformer.wte.weight"],
                                  model.state_to_canonical()["transformer.wte.weight"])


def test_float16_overflow_and_bad_options_are_errors(tmp_path):
    pt = reference_torch_model("GPT2Model")
    with torch.no_grad():
        pt.wpe.weight[0, 0] = 1e5
    pt.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="transformer.wpe.weight.*float16"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, param_dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="param_dtype must be one of"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, param_dtype=jnp.int32)
    with pytest.raises(TypeError, match="dtype must be"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, dtype=3)
    with pytest.raises(TypeError, match="torch_dtype= is torch's"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, torch_dtype="float32")
    with pytest.raises(TypeError, match="device_map= is torch's"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, device_map="auto")
    with pytest.raises(TypeError, match="_do_init=False"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, _do_init=False)
    with pytest.raises(TypeError, match="no_such_option"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, no_such_option=1)
    with pytest.raises(TypeError, match="token="):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, token="x")
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="use_safetensors=False"):
        ours.FlaxGPT2Model.from_pretrained(tmp_path, use_safetensors=False)
    ours.FlaxGPT2Model.from_pretrained(tmp_path, from_pt=True, _do_init=True)  # transformers' harmless flags


def test_bad_files_are_clear_errors(tmp_path):
    from gpt2.common.checkpoint import CheckpointError

    ours.FlaxGPT2LMHeadModel(flax_config()).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="use_safetensors=True"):
        ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path, use_safetensors=True)
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(CheckpointError, match="flax_model.msgpack"):
        ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
    with pytest.raises((OSError, ValueError)):
        ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path / "nothing-here", local_files_only=True)


def test_params_property_and_setter():
    model = ours.FlaxGPT2LMHeadModel(flax_config())
    params = model.params
    assert set(params) == {"transformer"} and set(params["transformer"]["h"]) == {0, 1}  # tied: no lm_head
    assert params["transformer"]["h"][0]["attn"]["c_attn"]["kernel"].shape == (16, 48)
    want = np.asarray(model(FLAX_IDS).logits)
    model.params = jax.tree.map(jnp.zeros_like, params)
    assert float(jnp.abs(model.transformer.wte.embedding.get_value()).max()) == 0.0
    # keys of the blocks as strings (as msgpack / transformers' trees have them) and another dtype: cast back
    as_strings = {"transformer": {**params["transformer"],
                                  "h": {str(k): v for k, v in params["transformer"]["h"].items()}}}
    model.params = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32) * 0 + x, as_strings)
    np.testing.assert_array_equal(np.asarray(model(FLAX_IDS).logits), want)
    model.params = jax.tree.map(lambda x: x.astype(jnp.float16), params)
    assert {x.dtype for x in jax.tree.leaves(model.params)} == {jnp.dtype(jnp.float32)}
    wrong = copy.deepcopy(params)
    wrong["transformer"]["wpe"]["embedding"] = jnp.zeros((3, 16))
    with pytest.raises(ValueError, match=r"transformer\.wpe\.embedding.*\(3, 16\).*\(12, 16\)"):
        model.params = wrong
    del wrong["transformer"]["wpe"]
    with pytest.raises(ValueError, match="missing transformer.wpe.embedding"):
        model.params = wrong
    with pytest.raises(ValueError, match="not in the model lm_head.kernel"):
        model.params = {**params, "lm_head": {"kernel": jnp.zeros((16, 50))}}
    with pytest.raises(TypeError, match="nested dict"):
        model.params = [1, 2]
    with pytest.raises(ValueError, match="wpe"):  # params= is checked the same way
        model(FLAX_IDS, params={"transformer": {**params["transformer"], "wpe": {"embedding": jnp.zeros((3, 16))}}})


@pytest.fixture(scope="module")
def untied_lm(lm_folder):
    """(our Flax LM, our torch LM, the jitted loss gradient): compiled once for the tests that use it."""
    folder, pt = lm_folder
    model = ours.FlaxGPT2LMHeadModel.from_pretrained(folder)

    def loss(params, ids):
        return model(ids, params=params, labels=ids).loss

    return model, pt, jax.jit(jax.value_and_grad(loss))


def test_params_under_jit_and_grad_equal_torchs_gradients(untied_lm):
    """jax.grad of the LM loss through ``params=`` (jitted) equals torch's loss.backward() gradients (1e-4), read in
    canonical names through each framework's own weight map."""
    model, pt, grad_fn = untied_lm
    value, grads = grad_fn(model.params, jnp.asarray(FLAX_IDS))
    reference = copy.deepcopy(pt)
    out = reference(torch.tensor(FLAX_IDS), labels=torch.tensor(FLAX_IDS))
    out.loss.backward()
    np.testing.assert_allclose(float(value), float(out.loss.detach()), atol=1e-5, rtol=0)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.grad)
    want = reference.state_to_canonical()
    holder = copy.deepcopy(model)
    holder.params = grads
    got = holder.state_to_canonical()
    assert got.keys() == want.keys() and "lm_head.weight" in got
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0, err_msg=name)
    # the same jitted function with other weights: no retrace needed, and the model itself is unchanged
    halved = jax.tree.map(lambda x: x / 2, model.params)
    value2, _ = grad_fn(halved, jnp.asarray(FLAX_IDS))
    assert float(value2) != float(value)
    assert float(model(FLAX_IDS, labels=FLAX_IDS).loss) == pytest.approx(float(value), abs=1e-6)


def test_init_cache_decodes_like_the_full_forward(untied_lm):
    model = untied_lm[0]
    cache = model.init_cache(2, 10)
    assert cache.capacity == 10 and cache.keys[0].shape == (2, 2, 10, 8) and cache.keys[0].dtype == jnp.float32
    full = np.asarray(model(FLAX_IDS).logits)
    mask = np.zeros((2, 10), np.int32)
    mask[:, :6] = 1
    out = model(FLAX_IDS[:, :5], attention_mask=mask[:, :10] * (np.arange(10) < 5), past_key_values=cache)
    mask[:, :6] = 1
    step = model(FLAX_IDS[:, 5:], attention_mask=mask, past_key_values=out.past_key_values)
    np.testing.assert_allclose(np.asarray(step.logits[:, 0]), full[:, 5], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_length=13 exceeds n_positions=12"):
        model.init_cache(1, 13)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.init_cache(0, 4)


def test_embeddings_utilities_and_resize(lm_folder):
    folder, pt = lm_folder
    model = ours.FlaxGPT2LMHeadModel.from_pretrained(folder)
    table = model.state_to_canonical()["transformer.wte.weight"]
    assert model.get_input_embeddings() is model.transformer.wte
    assert model.get_output_embeddings() is model.lm_head
    assert model.num_parameters() == sum(p.numel() for p in pt.parameters())
    count = model.num_parameters()
    new = model.resize_token_embeddings(53, pad_to_multiple_of=8)  # 56 rows
    assert model.get_input_embeddings() is new
    assert model.config.vocab_size == model.transformer.config.vocab_size == 56
    assert model.num_parameters() == count + 2 * 6 * 16
    state = model.state_to_canonical()
    np.testing.assert_array_equal(state["transformer.wte.weight"][:50], table)
    assert state["lm_head.weight"].shape == (56, 16)
    logits = np.asarray(model(FLAX_IDS).logits)
    assert logits.shape == (2, 6, 56)  # the untied head grew with the table
    np.testing.assert_allclose(logits[..., :50], torch_outputs(pt, FLAX_IDS)["logits"], atol=1e-4)
    assert new.embedding.get_metadata()["out_sharding"] == (None, "model")  # the partitioning annotation kept
    model(np.array([[55, 54]]))  # the new ids pass the range check
    with pytest.raises(ValueError, match="new_num_tokens must be a positive integer"):
        model.resize_token_embeddings(0)
    assert model.resize_token_embeddings() is new


def test_resize_a_tied_model_and_the_other_utilities(tmp_path):
    pt = reference_torch_model("GPT2LMHeadModel")
    pt.save_pretrained(tmp_path)
    model = ours.FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
    assert model.transformer.config is model.config
    model.resize_token_embeddings(56)
    logits = np.asarray(model(FLAX_IDS).logits)
    assert logits.shape == (2, 6, 56)
    np.testing.assert_allclose(logits[..., :50], torch_outputs(pt, FLAX_IDS)["logits"], atol=1e-4)
    assert "lm_head.weight" not in model.state_to_canonical()  # still tied: the head reads the new table
    replacement = nnx.Embed(56, 16, rngs=nnx.Rngs(1))
    model.set_input_embeddings(replacement)
    np.testing.assert_allclose(np.asarray(model(FLAX_IDS).logits),
                               np.asarray(model.transformer(FLAX_IDS).last_hidden_state)
                               @ np.asarray(replacement.embedding.get_value()).T, atol=1e-5)
    with pytest.raises(TypeError, match="nnx.Embed"):
        model.set_input_embeddings(np.zeros((56, 16)))
    with pytest.raises(ValueError, match="has no output embeddings"):
        ours.FlaxGPT2Model(flax_config()).set_output_embeddings(replacement)
    assert model.is_gradient_checkpointing is False
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.transformer.gradient_checkpointing
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    model.enable_input_require_grads()  # documented no-ops under jax.grad
    model.disable_input_require_grads()
    assert model.device == jax.devices()[0] and model.attn_implementation == "eager"
    with pytest.raises(ValueError, match="flash_attention_2"):
        model.set_attn_implementation("flash_attention_2")


@pytest.mark.parametrize("cls_name", FLAX_CLASSES)
def test_every_class_pickles_and_deepcopies(cls_name):
    model = flax_cls(cls_name)(flax_config())
    model.config.problem_type = "single_label_classification"
    want = flax_outputs(model, ids_for(cls_name))
    for again in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(again) is type(model) and again.config.to_dict() == model.config.to_dict()
        assert again.config is not model.config
        assert_close(flax_outputs(again, ids_for(cls_name)), want, atol=1e-6)
