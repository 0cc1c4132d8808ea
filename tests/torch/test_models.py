"""Our PyTorch models against transformers 4.57.6's eager GPT-2 (test-only oracle) on random checkpoints."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_torch, requires_transformers

pytestmark = [requires_torch, requires_transformers]

torch = pytest.importorskip("torch")

BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49)
CONFIGS = {
    "default": {},
    "flags": dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    "unscaled": dict(scale_attn_weights=False),
    "relu-inner": dict(activation_function="relu", n_inner=24),
    "gelu-exact": dict(activation_function="gelu"),
    "untied": dict(tie_word_embeddings=False),
}
CLASSES = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
           "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"]
IDS = torch.tensor([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]])
LEFT_PAD = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
OUTPUT_KEYS = ("last_hidden_state", "logits", "mc_logits", "start_logits", "end_logits", "loss", "mc_loss")


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def pair(cls_name, tmp_path, attn="eager", seed=0, **config):
    """(theirs, ours): transformers' eager model with random weights, and ours loaded from its saved folder."""
    import gpt2.torch as ours_module

    T = _hf()
    torch.manual_seed(seed)
    theirs = getattr(T, cls_name)(T.GPT2Config(**{**BASE, **config}, attn_implementation="eager")).eval()
    theirs.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = getattr(ours_module, cls_name).from_pretrained(tmp_path, attn_implementation=attn)
    return theirs, ours


def compare(a, b, tol=1e-5, keys=OUTPUT_KEYS):
    checked = 0
    for key in keys:
        if getattr(a, key, None) is not None:
            np.testing.assert_allclose(getattr(a, key).detach().numpy(), getattr(b, key).detach().numpy(),
                                       atol=tol, rtol=0, err_msg=key)
            checked += 1
    assert checked


def inputs_for(cls_name, padded=False):
    kwargs = {"input_ids": IDS}
    if padded:
        kwargs["attention_mask"] = LEFT_PAD
        kwargs["position_ids"] = (LEFT_PAD.cumsum(-1) - 1).clamp(min=0)
    if cls_name == "GPT2DoubleHeadsModel":  # (transformers fails on 3-D position_ids: not given here)
        kwargs = {k: torch.stack([v, v.flip(0)], 0) for k, v in kwargs.items() if k != "position_ids"}
        kwargs["mc_token_ids"] = torch.tensor([[5, 4], [3, 5]])
    return kwargs


def labels_for(cls_name):
    return {
        "GPT2LMHeadModel": {"labels": IDS},
        "GPT2ForSequenceClassification": {"labels": torch.tensor([1, 0])},
        "GPT2ForTokenClassification": {"labels": IDS % 2},
        "GPT2ForQuestionAnswering": {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 9])},
        "GPT2DoubleHeadsModel": {"labels": torch.stack([IDS, IDS]), "mc_labels": torch.tensor([1, 0])},
    }.get(cls_name, {})


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_outputs_and_losses_like_transformers(cls_name, config_name, attn, tmp_path):
    theirs, ours = pair(cls_name, tmp_path, attn, **CONFIGS[config_name])
    for padded in (False, True):
        kwargs = {**inputs_for(cls_name, padded), **labels_for(cls_name)}
        with torch.no_grad():
            compare(theirs(**kwargs), ours(**kwargs))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_incremental_decoding_equals_full_pass(attn, tmp_path):
    theirs, ours = pair("GPT2LMHeadModel", tmp_path, attn)
    with torch.no_grad():
        full = ours(IDS, attention_mask=LEFT_PAD, position_ids=(LEFT_PAD.cumsum(-1) - 1).clamp(min=0)).logits
        positions = (LEFT_PAD.cumsum(-1) - 1).clamp(min=0)
        out = ours(IDS[:, :3], attention_mask=LEFT_PAD[:, :3], position_ids=positions[:, :3])
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(3, 6):
            out = ours(IDS[:, t:t + 1], past_key_values=cache, attention_mask=LEFT_PAD[:, :t + 1],
                       position_ids=positions[:, t:t + 1])
            steps.append(out.logits)
        assert cache.get_seq_length() == 6
        np.testing.assert_allclose(torch.cat(steps, 1).numpy(), full.numpy(), atol=1e-5, rtol=0)
        # a chunk of several tokens on top of a cache (no padding): causal offset right
        first = ours(IDS[:, :2])
        rest = ours(IDS[:, 2:], past_key_values=first.past_key_values)
        np.testing.assert_allclose(rest.logits.numpy(), ours(IDS).logits[:, 2:].numpy(), atol=1e-5, rtol=0)
        # transformers' legacy tuple cache is accepted
        legacy = ours(IDS[:, :4]).past_key_values.to_legacy_cache()
        np.testing.assert_allclose(ours(IDS[:, 4:], past_key_values=legacy).logits.numpy(),
                                   ours(IDS).logits[:, 4:].numpy(), atol=1e-5, rtol=0)


def test_static_cache_equals_dynamic(tmp_path):
    from gpt2.torch import KVCache

    _, ours = pair("GPT2LMHeadModel", tmp_path)
    c = ours.config
    cache = KVCache.static_cache(c.n_layer, 2, c.n_head, 10, c.n_embd // c.n_head, torch.float32, "cpu")
    with torch.no_grad():
        a = ours(IDS[:, :4], past_key_values=cache)
        b = ours(IDS[:, 4:], past_key_values=cache)
        np.testing.assert_allclose(b.logits.numpy(), ours(IDS).logits[:, 4:].numpy(), atol=1e-5, rtol=0)
    assert a.past_key_values is cache and cache.get_seq_length() == 6
    with pytest.raises(ValueError, match="static KV cache"):
        ours(torch.ones(2, 5, dtype=torch.long), past_key_values=cache)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attentions_hidden_states_head_mask_token_types(attn, tmp_path):
    theirs, ours = pair("GPT2LMHeadModel", tmp_path, attn)
    head_mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    kwargs = dict(input_ids=IDS, attention_mask=LEFT_PAD, token_type_ids=IDS.flip(1) % 7, head_mask=head_mask,
                  output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        a, b = theirs(**kwargs), ours(**kwargs)
    compare(a, b)
    assert len(a.attentions) == len(b.attentions) == 2 and len(a.hidden_states) == len(b.hidden_states) == 3
    for x, y in zip(a.attentions + a.hidden_states, b.attentions + b.hidden_states):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5, rtol=0)


def test_cross_attention_like_transformers(tmp_path):
    theirs, ours = pair("GPT2LMHeadModel", tmp_path, "sdpa", add_cross_attention=True)
    enc = torch.randn(2, 3, 16)
    enc_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        compare(theirs(IDS, encoder_hidden_states=enc, encoder_attention_mask=enc_mask),
                ours(IDS, encoder_hidden_states=enc, encoder_attention_mask=enc_mask))


def test_cross_attention_cache_like_transformers(tmp_path):
    """Encoder keys/values are computed once and kept in the cache; decoding through it equals a full pass, and
    the legacy tuples are transformers' (k, v, cross_k, cross_v) per layer, in both directions."""
    theirs, ours = pair("GPT2LMHeadModel", tmp_path, add_cross_attention=True)
    enc = torch.randn(2, 3, 16)
    enc_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    cross = dict(encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
    with torch.no_grad():
        full = ours(IDS, **cross).logits
        first = ours(IDS[:, :4], **cross)
        cache = first.past_key_values
        assert len(cache.cross_keys) == 2
        kept = cache.cross_keys[0]
        rest = ours(IDS[:, 4:], past_key_values=cache, **cross)
        assert rest.past_key_values.cross_keys[0] is kept  # not recomputed
        np.testing.assert_allclose(rest.logits.numpy(), full[:, 4:].numpy(), atol=1e-5, rtol=0)
        their_first = theirs(IDS[:, :4], use_cache=True, **cross)
        legacy = their_first.past_key_values.to_legacy_cache()
        ours_legacy = first.past_key_values.to_legacy_cache()
        assert len(ours_legacy[0]) == len(legacy[0]) == 4
        for a, b in zip(sum(map(tuple, legacy), ()), sum(map(tuple, ours_legacy), ())):
            np.testing.assert_allclose(a.numpy(), b[:, :, : a.shape[2]].numpy(), atol=1e-5, rtol=0)
        from_theirs = ours(IDS[:, 4:], past_key_values=legacy, **cross).logits
        np.testing.assert_allclose(from_theirs.numpy(), full[:, 4:].numpy(), atol=1e-5, rtol=0)


def test_saved_folder_loads_in_transformers(tmp_path):
    T = _hf()
    theirs, ours = pair("GPT2ForSequenceClassification", tmp_path / "a", num_labels=3)
    ours.save_pretrained(tmp_path / "b")
    back = T.GPT2ForSequenceClassification.from_pretrained(tmp_path / "b").eval()
    with torch.no_grad():
        compare(theirs(IDS), back(IDS), tol=1e-6)
    ours.save_pretrained(tmp_path / "c", safe_serialization=False)
    assert (tmp_path / "c" / "pytorch_model.bin").is_file()
    compare(theirs(IDS), T.GPT2ForSequenceClassification.from_pretrained(tmp_path / "c").eval()(IDS), tol=1e-6)


def test_every_format_loads(tmp_path):
    """Weights saved by transformers' TF and Flax classes load straight into our PyTorch model."""
    T = _hf()
    theirs, _ = pair("GPT2LMHeadModel", tmp_path / "pt")
    T.FlaxGPT2LMHeadModel.from_pretrained(tmp_path / "pt", from_pt=True).save_pretrained(tmp_path / "flax")
    T.TFGPT2LMHeadModel.from_pretrained(tmp_path / "pt", from_pt=True).save_pretrained(tmp_path / "tf")
    import gpt2.torch as ours_module

    for fmt in ("flax", "tf"):
        ours = ours_module.GPT2LMHeadModel.from_pretrained(tmp_path / fmt)
        with torch.no_grad():
            compare(theirs(IDS), ours(IDS))


def test_missing_head_is_initialised_with_a_warning(tmp_path):
    import gpt2.torch as ours_module

    pair("GPT2LMHeadModel", tmp_path)
    with pytest.warns(UserWarning, match="score.weight"):
        model = ours_module.GPT2ForSequenceClassification.from_pretrained(tmp_path)
    assert model.score.weight.abs().sum() > 0 and torch.isfinite(model.score.weight).all()


def test_bad_inputs_are_clear_errors(tmp_path):
    _, ours = pair("GPT2LMHeadModel", tmp_path)
    with pytest.raises(ValueError, match="input_ids holds 50"):
        ours(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="input_ids holds -1"):
        ours(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="n_positions=12"):
        ours(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ours(IDS, attention_mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="integer"):
        ours(IDS.float())
    with pytest.raises(ValueError, match="exactly one"):
        ours()
    with pytest.raises(ValueError, match="position_ids holds 12"):
        ours(IDS, position_ids=torch.full_like(IDS, 12))
    with pytest.raises(ValueError, match="head_mask"):
        ours(IDS, head_mask=torch.ones(3))
    with pytest.raises(ValueError, match="pad_token_id"):
        import gpt2.torch as m
        from gpt2 import GPT2Config

        m.GPT2ForSequenceClassification(GPT2Config(**{**BASE, "pad_token_id": None}))(IDS)
    with pytest.raises(ValueError, match="attn_implementation"):
        ours.set_attn_implementation("fast")


def test_flash_attention_needs_its_package_and_cuda(tmp_path):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        pytest.skip("flash-attn and CUDA are present: covered by the GPU tests")
    _, ours = pair("GPT2LMHeadModel", tmp_path)
    with pytest.raises(ImportError, match="flash"):
        ours.set_attn_implementation("flash_attention_2")


def test_fully_masked_rows_and_fp16_upcast_never_nan(tmp_path):
    _, ours = pair("GPT2LMHeadModel", tmp_path, "sdpa", reorder_and_upcast_attn=True)
    mask = torch.tensor([[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    for impl in ("eager", "sdpa"):
        ours.set_attn_implementation(impl)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            model = ours.to(dtype)
            with torch.no_grad():
                logits = model(IDS, attention_mask=mask).logits
            assert torch.isfinite(logits).all(), (impl, dtype)
    ours.to(torch.float32)


def test_dropout_train_mode_and_gradient_checkpointing(tmp_path):
    _, ours = pair("GPT2LMHeadModel", tmp_path)
    ours.train()
    torch.manual_seed(1)
    a = ours(IDS).logits
    torch.manual_seed(2)
    b = ours(IDS).logits
    assert not torch.allclose(a, b)  # dropout is on
    ours.eval()
    loss = ours(IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad.clone() for p in ours.parameters()]
    ours.zero_grad()
    ours.gradient_checkpointing_enable()
    ours.train()
    for m in ours.modules():  # same computation as eval, but through checkpointed blocks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ours(IDS, labels=IDS).loss.backward()
    for g, p in zip(grads, ours.parameters()):
        np.testing.assert_allclose(g.numpy(), p.grad.numpy(), atol=1e-6, rtol=0)


def test_resize_token_embeddings(tmp_path):
    _, ours = pair("GPT2LMHeadModel", tmp_path)
    old = ours.transformer.wte.weight.detach().clone()
    ours.resize_token_embeddings(53, pad_to_multiple_of=8)
    assert ours.transformer.wte.weight.shape == (56, 16) and ours.config.vocab_size == 56
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert torch.equal(ours.transformer.wte.weight[:50], old)
    assert ours(torch.tensor([[55, 1]])).logits.shape == (1, 2, 56)


def test_device_and_device_map(tmp_path):
    """One device, however transformers' users name it; a map over several devices is a clear error."""
    import gpt2.torch as ours_module

    pair("GPT2LMHeadModel", tmp_path)
    load = ours_module.GPT2LMHeadModel.from_pretrained
    for device_map in ({"": "cpu"}, {"transformer": "cpu", "lm_head": torch.device("cpu")}, "cpu", "auto"
                       if not torch.cuda.is_available() else "cpu"):
        assert load(tmp_path, device_map=device_map).device == torch.device("cpu")
    with pytest.raises(ValueError, match="model parallelism is not supported"):
        load(tmp_path, device_map={"transformer": "cpu", "lm_head": "meta"})
    with pytest.raises(ValueError, match="module names"):
        load(tmp_path, device_map={0: "cpu"})
    with pytest.raises(ValueError, match="not supported"):
        load(tmp_path, device_map="disk")
    with pytest.raises(ValueError, match="not a device torch knows"):
        load(tmp_path, device="gpu7")
    with pytest.raises(TypeError, match="device must be"):
        load(tmp_path, device=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees 0 CUDA device"):
            load(tmp_path, device_map={"": 0})


def test_embedding_helpers_and_memory_footprint(tmp_path):
    theirs, ours = pair("GPT2LMHeadModel", tmp_path)
    assert ours.get_memory_footprint(return_buffers=False) == theirs.get_memory_footprint(return_buffers=False)
    assert ours.get_memory_footprint() == ours.get_memory_footprint(return_buffers=False)  # no causal-mask buffers
    for p in ours.parameters():
        p.requires_grad_(False)
    embed = ours.get_input_embeddings()
    assert not embed(IDS).requires_grad
    ours.enable_input_require_grads()
    ours.enable_input_require_grads()  # twice: still one hook
    assert embed(IDS).requires_grad and len(embed._forward_hooks) == 1
    ours.disable_input_require_grads()
    assert not embed(IDS).requires_grad and not embed._forward_hooks
    head = torch.nn.Linear(16, 50, bias=False)
    ours.set_output_embeddings(head)
    assert ours.get_output_embeddings() is head
    with pytest.raises(ValueError, match="no output embeddings"):
        __import__("gpt2.torch", fromlist=["GPT2Model"]).GPT2Model(ours.config).set_output_embeddings(head)


def test_from_pretrained_options_like_transformers(tmp_path):
    """transformers' loading options: accepted where they change nothing, refused by name where they are not
    offered, loading info returned; an unknown keyword is a TypeError, never an entry written into config.json."""
    import gpt2.torch as ours_module

    theirs, _ = pair("GPT2LMHeadModel", tmp_path)
    load = ours_module.GPT2ForSequenceClassification.from_pretrained
    with pytest.warns(UserWarning, match="newly initialised.*score.weight"):
        model = load(tmp_path, low_cpu_mem_usage=True, from_tf=False, trust_remote_code=False, use_safetensors=True,
                     num_labels=3, resid_pdrop=0.0)
    assert model.config.num_labels == 3 and model.config.resid_pdrop == 0.0
    assert not hasattr(model.config, "low_cpu_mem_usage")
    with pytest.warns(UserWarning, match="newly initialised"):
        _, info = load(tmp_path, output_loading_info=True)
    assert info == {"missing_keys": ["score.weight"], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    lm, info = ours_module.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and lm.generation_config is not None
    for bad, error, match in [(dict(token="hf_x"), TypeError, "token= is not supported.*HF_TOKEN"),
                              (dict(n_layerz=3), TypeError, "unexpected keyword argument.*n_layerz"),
                              (dict(weights_only=False), TypeError, "never unpickled"),
                              (dict(use_safetensors=False), ValueError, "'safetensors' format")]:
        with pytest.raises(error, match=match):
            load(tmp_path, **bad)
    theirs.save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="use_safetensors=True.*'pytorch' format"):
        load(tmp_path / "bin", use_safetensors=True)
