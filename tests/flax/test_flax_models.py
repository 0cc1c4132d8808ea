"""Our Flax models against transformers 4.57.6's eager PyTorch GPT-2 (test-only oracle) and our PyTorch models, on
the same random canonical weights: every class and tiny config, unpadded and left-padded, losses, output fields,
the tied / untied head, masks, bad input, bf16, jax.jit and params=, dropout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nnx = pytest.importorskip("flax.nnx")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _shared_helpers():
    """The tiny configs and oracle helpers of tests/tf/conftest.py (framework-free at module level), loaded by path:
    pytest imports every conftest.py under the one name ``conftest``, so a plain import may find another one."""
    name = "_gpt2_tests_tf_conftest"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "tf" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_h = _shared_helpers()
CONFIGS, CLASSES, IDS, LEFT_PAD, POSITIONS = _h.CONFIGS, _h.CLASSES, _h.IDS, _h.LEFT_PAD, _h.POSITIONS
assert_outputs_close, to_numpy, torch_inputs, gpt2_config = (_h.assert_outputs_close, _h.to_numpy, _h.torch_inputs,
                                                             _h.gpt2_config)

OUTPUT_KEYS = ("last_hidden_state", "logits", "mc_logits", "start_logits", "end_logits", "loss", "mc_loss")


def flax_model(cls_name: str, state: dict | None = None, **kwargs):
    """Our Flax model (``Flax`` + cls_name). With ``state``: built abstract (nnx.eval_shape, nothing allocated) and
    given the canonical weights through gpt2/flax/weights.py's load_canonical."""
    from gpt2.flax import heads, model
    from gpt2.flax.weights import load_canonical

    dtypes = {k: kwargs.pop(k) for k in ("dtype", "param_dtype") if k in kwargs}
    cls = getattr(model if cls_name == "GPT2Model" else heads, "Flax" + cls_name)
    config = gpt2_config(**kwargs)
    if state is None:
        return cls(config, **dtypes)
    built = nnx.eval_shape(lambda: cls(config, **dtypes))
    missing, unused = load_canonical(built, state)
    assert not missing and not unused, (missing, unused)
    return built


def triple(cls_name: str, seed: int = 0, **config):
    """(transformers' PyTorch eager model, our PyTorch model, our Flax model) on the same random weights."""
    theirs = _h.transformers_model(cls_name, seed, **config)
    state = _h.canonical_from_transformers(theirs)
    return theirs, _h.torch_model(cls_name, state, **config), flax_model(cls_name, state, **config)


def inputs_for(cls_name, padded=False):
    kwargs = {"input_ids": IDS}
    if padded:
        kwargs["attention_mask"] = LEFT_PAD
        kwargs["position_ids"] = POSITIONS
    if cls_name == "GPT2DoubleHeadsModel":  # (transformers fails on 3-D position_ids: not given here)
        kwargs = {k: np.stack([v, v[::-1]], 0) for k, v in kwargs.items() if k != "position_ids"}
        kwargs["mc_token_ids"] = np.array([[5, 4], [3, 5]])
    return kwargs


def labels_for(cls_name):
    return {
        "GPT2LMHeadModel": {"labels": np.where(LEFT_PAD == 1, IDS, -100)},
        "GPT2ForSequenceClassification": {"labels": np.array([1, 0])},
        "GPT2ForTokenClassification": {"labels": IDS % 2},
        "GPT2ForQuestionAnswering": {"start_positions": np.array([1, 2]), "end_positions": np.array([3, 9])},
        "GPT2DoubleHeadsModel": {"labels": np.stack([IDS, IDS]), "mc_labels": np.array([1, 0])},
    }.get(cls_name, {})


def run_all(models, kwargs):
    theirs, ours_torch, ours = models
    with torch.no_grad():
        a, b = theirs(**torch_inputs(kwargs)), ours_torch(**torch_inputs(kwargs))
    return a, b, ours(**{k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()})


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_outputs_and_losses_like_transformers_and_torch(cls_name, config_name):
    models = triple(cls_name, **CONFIGS[config_name])
    for padded in (False, True):
        theirs, ours_torch, ours = run_all(models, {**inputs_for(cls_name, padded), **labels_for(cls_name)})
        assert assert_outputs_close(theirs, ours, OUTPUT_KEYS) >= (1 if cls_name == "GPT2Model" else 2)
        assert assert_outputs_close(ours_torch, ours, OUTPUT_KEYS)
        assert type(ours).__name__ == type(ours_torch).__name__  # the shared output classes
        assert ours.keys() == ours_torch.keys(), (ours.keys(), ours_torch.keys())


def test_problem_types_and_the_callers_config():
    """Sequence classification's three losses equal transformers'; the inferred problem_type is recorded on the
    model's own copy (shared with its trunk), never the caller's config; DoubleHeads' num_labels=1 likewise."""
    from gpt2.flax import heads

    for labels, extra in [(np.array([0.5, -1.0], np.float32), dict(num_labels=1)),
                          (np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32), dict(num_labels=3)),
                          (np.array([2, 0]), dict(num_labels=3))]:
        models = triple("GPT2ForSequenceClassification", **extra)
        theirs, _, ours = run_all(models, {"input_ids": IDS, "labels": labels})
        assert assert_outputs_close(theirs, ours, ("logits", "loss")) == 2
        assert models[2].transformer.config is models[2].config  # one config object, as torch's post_init
    config = gpt2_config(num_labels=3)
    model = heads.FlaxGPT2ForSequenceClassification(config)
    model(jnp.asarray(IDS), labels=jnp.array([1, 2]))
    assert model.config.problem_type == "single_label_classification" and config.problem_type is None
    assert model.transformer.config.problem_type == "single_label_classification"
    double = nnx.eval_shape(lambda: heads.FlaxGPT2DoubleHeadsModel(config))
    assert double.config.num_labels == 1 and double.transformer.config is double.config and config.num_labels == 3
    assert double.multiple_choice_head.summary.kernel.shape == (16, 1)


def test_double_heads_summary_options_like_transformers_and_pickle():
    """SequenceSummary's other settings: tanh and no projection at cls_index equal transformers'; first / last /
    mean pooling equal our torch model's (transformers indexes dim 1 there, the choices of 4-D inputs; ours the
    tokens); a model with its functions pickles and gives the same answer after."""
    import pickle

    kwargs = inputs_for("GPT2DoubleHeadsModel", True)
    for extra in [dict(summary_type="mean"), dict(summary_use_proj=False, summary_type="first"),
                  dict(summary_type="last", summary_proj_to_labels=False), dict(summary_use_proj=False),
                  dict(summary_activation="tanh")]:
        models = triple("GPT2DoubleHeadsModel", **extra)
        theirs, ours_torch, ours = run_all(models, kwargs)
        reference = ours_torch if "summary_type" in extra else theirs
        assert assert_outputs_close(reference, ours, ("mc_logits", "logits")) == 2, extra
        assert ours.mc_logits.shape == tuple(ours_torch.mc_logits.shape), extra
    again = pickle.loads(pickle.dumps(models[2]))
    np.testing.assert_array_equal(np.asarray(again(**{k: jnp.asarray(v) for k, v in kwargs.items()}).mc_logits),
                                  np.asarray(ours.mc_logits))
    tanh = pickle.loads(pickle.dumps(flax_model("GPT2DoubleHeadsModel", summary_activation="tanh")))
    assert tanh.multiple_choice_head.activation.__name__ == "tanh"


def test_sequence_classification_pooling_without_pad_or_ids():
    """No pad_token_id: one sequence pools its last token (transformers' rule); inputs_embeds pools the last too."""
    theirs, ours_torch, ours = triple("GPT2ForSequenceClassification", pad_token_id=None)
    one = {"input_ids": IDS[:1]}
    a, b, c = run_all((theirs, ours_torch, ours), one)
    assert assert_outputs_close(a, c, ("logits",)) == 1
    embeds = np.asarray(ours.transformer.wte(jnp.asarray(IDS[:1])))
    with torch.no_grad():
        expected = theirs(inputs_embeds=torch.tensor(embeds)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(inputs_embeds=embeds).logits), expected, atol=1e-4, rtol=0)


def test_attentions_hidden_states_head_mask_token_types():
    models = triple("GPT2LMHeadModel", **CONFIGS["flags"])
    kwargs = dict(input_ids=IDS, attention_mask=LEFT_PAD, token_type_ids=IDS[:, ::-1] % 7,
                  head_mask=np.array([[1.0, 0.0], [1.0, 1.0]], np.float32), output_attentions=True,
                  output_hidden_states=True)
    theirs, _, ours = run_all(models, kwargs)
    assert assert_outputs_close(theirs, ours, ("logits",))
    assert len(ours.attentions) == 2 and len(ours.hidden_states) == 3
    for x, y in zip(theirs.attentions + theirs.hidden_states, ours.attentions + ours.hidden_states):
        np.testing.assert_allclose(to_numpy(y), to_numpy(x), atol=1e-4, rtol=0)
    tuple_out = models[2](jnp.asarray(IDS), return_dict=False, use_cache=False)
    assert isinstance(tuple_out, tuple) and len(tuple_out) == 1  # logits only: no loss, no cache
    double = triple("GPT2DoubleHeadsModel")
    kwargs = {**inputs_for("GPT2DoubleHeadsModel", True), "output_hidden_states": True, "output_attentions": True}
    theirs, _, ours = run_all(double, kwargs)
    assert ours.hidden_states[-1].shape == (2, 2, 6, 16)  # the last in the caller's (B, num_choices, T, C) shape
    for x, y in zip(theirs.hidden_states + theirs.attentions, ours.hidden_states + ours.attentions):
        np.testing.assert_allclose(to_numpy(y), to_numpy(x), atol=1e-4, rtol=0)


def test_cross_attention_and_its_cache_like_transformers():
    theirs, _, ours = triple("GPT2LMHeadModel", add_cross_attention=True)
    enc = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
    enc_mask = np.array([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        full = theirs(torch.tensor(IDS), encoder_hidden_states=torch.tensor(enc),
                      encoder_attention_mask=torch.tensor(enc_mask), output_attentions=True)
    cross = dict(encoder_hidden_states=jnp.asarray(enc), encoder_attention_mask=jnp.asarray(enc_mask))
    out = ours(jnp.asarray(IDS), output_attentions=True, **cross)
    np.testing.assert_allclose(np.asarray(out.logits), full.logits.numpy(), atol=1e-4, rtol=0)
    for x, y in zip(full.cross_attentions, out.cross_attentions):
        np.testing.assert_allclose(np.asarray(y), x.numpy(), atol=1e-4, rtol=0)
    first = ours(jnp.asarray(IDS[:, :4]), **cross)
    rest = ours(jnp.asarray(IDS[:, 4:]), past_key_values=first.past_key_values, **cross)
    np.testing.assert_allclose(np.asarray(rest.logits), full.logits.numpy()[:, 4:], atol=1e-4, rtol=0)


def test_incremental_decoding_and_logits_to_keep():
    """Left padding with explicit positions through the growing cache equals the full pass; logits_to_keep keeps
    the last positions; the cache passed in is left as it was."""
    _, ours_torch, ours = triple("GPT2LMHeadModel")
    ids, mask, positions = jnp.asarray(IDS), jnp.asarray(LEFT_PAD), jnp.asarray(POSITIONS)
    full = np.asarray(ours(ids, attention_mask=mask, position_ids=positions).logits)
    out = ours(ids[:, :3], attention_mask=mask[:, :3], position_ids=positions[:, :3])
    steps, cache = [np.asarray(out.logits)], out.past_key_values
    for t in range(3, 6):
        out = ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                   past_key_values=cache)
        assert cache.get_seq_length() == t
        steps.append(np.asarray(out.logits))
        cache = out.past_key_values
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5, rtol=0)
    last = ours(ids, attention_mask=mask, position_ids=positions, logits_to_keep=2).logits
    np.testing.assert_allclose(np.asarray(last), full[:, -2:], atol=1e-6, rtol=0)
    with torch.no_grad():
        theirs_last = ours_torch(torch.tensor(IDS), logits_to_keep=1).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids, logits_to_keep=1).logits), theirs_last, atol=1e-5, rtol=0)


def test_tied_and_untied_heads_weights():
    """Tied: the head owns nothing (model.params has wte once, at transformer.wte, as transformers' Flax layout);
    untied: lm_head.weight is the Linear kernel transposed, and the canonical round trip is exact."""
    from gpt2.flax.weights import state_to_canonical, variables

    theirs, _, tied = triple("GPT2LMHeadModel")
    params = nnx.state(tied, nnx.Param).to_pure_dict()
    assert set(params) == {"transformer"} and "embedding" in params["transformer"]["wte"]
    assert "lm_head.weight" not in variables(tied)
    theirs, _, untied = triple("GPT2LMHeadModel", tie_word_embeddings=False)
    own, var, transposed = variables(untied)["lm_head.weight"]
    assert own == "lm_head.weight" and transposed and var.get_value().shape == (16, 50)
    np.testing.assert_array_equal(np.asarray(var.get_value()).T, theirs.lm_head.weight.detach().numpy())
    state = state_to_canonical(untied)
    reference = _h.canonical_from_transformers(theirs)
    assert sorted(state) == sorted(reference)
    for name in reference:
        np.testing.assert_array_equal(state[name], reference[name], err_msg=name)
    assert not np.allclose(np.asarray(untied.lm_head.kernel.get_value()).T,
                           np.asarray(untied.transformer.wte.embedding.get_value()))


def test_bad_inputs_are_clear_errors():
    ours = flax_model("GPT2LMHeadModel")
    ids = jnp.asarray(IDS)
    for call, error, match in [
        (lambda: ours(jnp.array([[1, 50]])), ValueError, "input_ids holds 50"),
        (lambda: ours(jnp.array([[-1, 2]])), ValueError, "input_ids holds -1"),
        (lambda: ours(ids, labels=jnp.full(ids.shape, 50)), ValueError, "labels holds 50"),
        (lambda: ours(ids, labels=ids.astype(jnp.float32)), TypeError, "labels must be an integer"),
        (lambda: ours(ids, position_ids=jnp.full(ids.shape, 12)), ValueError, "position_ids holds 12"),
    ]:
        with pytest.raises(error, match=match):
            call()
    double = flax_model("GPT2DoubleHeadsModel")
    with pytest.raises(ValueError, match="mc_token_ids holds 6"):
        double(jnp.asarray(IDS[None]), mc_token_ids=jnp.array([[6, 0]]))
    with pytest.raises(ValueError, match="mc_token_ids must have shape"):
        double(jnp.asarray(IDS[None]), mc_token_ids=jnp.array([6, 0]))
    with pytest.raises(ValueError, match="mc_labels holds 2"):
        double(jnp.asarray(IDS[None]), mc_labels=jnp.array([2]))
    with pytest.raises(ValueError, match="pad_token_id"):
        flax_model("GPT2ForSequenceClassification", pad_token_id=None)(ids)
    with pytest.raises(ValueError, match="labels holds 3"):
        flax_model("GPT2ForSequenceClassification", num_labels=3)(ids, labels=jnp.array([0, 3]))
    with pytest.raises(ValueError, match="labels holds -2"):
        flax_model("GPT2ForTokenClassification")(ids, labels=jnp.full(ids.shape, -2))
    assert np.isfinite(float(flax_model("GPT2ForTokenClassification")(ids, labels=jnp.where(
        ids > 8, 1, -100)).loss))  # -100 is ignored, never refused
    traced = jax.jit(lambda x: ours(x, use_cache=False).logits)  # under a trace: a host callback fails the call
    with pytest.raises(Exception, match="input_ids holds 50"):
        jax.block_until_ready(traced(jnp.array([[1, 50]])))


def test_qa_positions_outside_the_sequence_are_ignored_like_transformers():
    models = triple("GPT2ForQuestionAnswering")
    kwargs = {"input_ids": IDS, "start_positions": np.array([-3, 2]), "end_positions": np.array([30, 6])}
    theirs, ours_torch, ours = run_all(models, kwargs)
    assert assert_outputs_close(theirs, ours, ("start_logits", "loss")) == 2
    assert assert_outputs_close(ours_torch, ours, ("loss",)) == 1


def test_fully_masked_rows_and_bf16_never_nan():
    """A padding-only query row and a 4-D mask hiding everything from the first query stay finite, in fp32 and in
    bf16 (dtype and param_dtype), with and without reorder_and_upcast_attn; bf16 stays close to fp32 and its
    logits are bf16 (the computation dtype), its losses fp32."""
    cls_name = "GPT2LMHeadModel"
    theirs = _h.transformers_model(cls_name, reorder_and_upcast_attn=True)
    state = _h.canonical_from_transformers(theirs)
    mask = jnp.array([[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    four_d = np.triu(np.full((6, 6), np.finfo(np.float32).min, np.float32), 1)[None, None].copy()
    four_d[..., 0, :] = np.finfo(np.float32).min  # the first query sees nothing
    labels = {"labels": jnp.asarray(IDS)}
    ids = jnp.asarray(IDS)
    reference = flax_model(cls_name, state, reorder_and_upcast_attn=True)(ids, attention_mask=mask, **labels)
    for upcast in (False, True):
        for dtypes in ({}, {"dtype": jnp.bfloat16, "param_dtype": jnp.bfloat16}, {"dtype": jnp.bfloat16}):
            model = flax_model(cls_name, state, reorder_and_upcast_attn=upcast, **dtypes)
            out = model(ids, attention_mask=mask, output_attentions=True, **labels)
            assert out.logits.dtype == dtypes.get("dtype", jnp.float32), (upcast, dtypes)
            assert out.loss.dtype == jnp.float32 and np.isfinite(float(out.loss))
            assert np.isfinite(np.asarray(out.logits, np.float32)).all(), (upcast, dtypes)
            np.testing.assert_allclose(np.asarray(out.attentions[0], np.float32).sum(-1), 1.0, atol=2e-2)
            tol = 5e-2 if dtypes else 1e-5
            np.testing.assert_allclose(np.asarray(out.logits, np.float32), np.asarray(reference.logits), atol=tol)
            np.testing.assert_allclose(float(out.loss), float(reference.loss), atol=tol)
            hidden = model(ids[:1], attention_mask=jnp.asarray(four_d)).logits
            assert np.isfinite(np.asarray(hidden, np.float32)).all(), (upcast, dtypes, "4-D mask")


@pytest.fixture(scope="module")
def lm_and_jitted():
    """One LM head model and its jitted forward (a pure function of the weights: params=), compiled once here."""
    _, ours_torch, ours = triple("GPT2LMHeadModel", **CONFIGS["flags"])

    @jax.jit
    def forward(params, ids, mask, labels):
        out = ours(ids, attention_mask=mask, params=params, labels=labels, use_cache=False)
        return out.loss, out.logits

    return ours_torch, ours, forward


def test_jit_with_params_equals_eager_and_torch(lm_and_jitted):
    ours_torch, ours, forward = lm_and_jitted
    params = nnx.state(ours, nnx.Param).to_pure_dict()
    ids, mask = jnp.asarray(IDS), jnp.asarray(LEFT_PAD)
    labels = jnp.where(mask == 1, ids, -100)
    loss, logits = forward(params, ids, mask, labels)
    eager = ours(ids, attention_mask=mask, labels=labels)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(eager.logits), atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(loss), float(eager.loss), atol=1e-6)
    with torch.no_grad():
        expected = ours_torch(torch.tensor(IDS), attention_mask=torch.tensor(LEFT_PAD),
                              labels=torch.tensor(np.asarray(labels), dtype=torch.long))
    np.testing.assert_allclose(np.asarray(logits), expected.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(float(loss), float(expected.loss), atol=1e-5)
    # other weights through params=: another answer, and the model's own weights untouched
    moved = jax.tree.map(lambda p: p * 1.5, params)
    other = forward(moved, ids, mask, labels)[1]
    assert not np.allclose(np.asarray(other), np.asarray(logits), atol=1e-3)
    np.testing.assert_allclose(np.asarray(ours(ids, attention_mask=mask, params=moved).logits), np.asarray(other),
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(ours(ids, attention_mask=mask).logits), np.asarray(logits), atol=1e-5)
    assert forward._cache_size() == 1  # the same shapes: compiled once


def test_nnx_jit_of_every_head():
    """nnx.jit over the module itself (tuples out: return_dict=False) equals eager for every head."""
    for cls_name in CLASSES[1:]:
        ours = flax_model(cls_name, _h.canonical_from_transformers(_h.transformers_model(cls_name)))
        kwargs = {k: jnp.asarray(v) for k, v in {**inputs_for(cls_name, True), **labels_for(cls_name)}.items()}
        eager = ours(**kwargs, return_dict=False)
        compiled = nnx.jit(lambda m, kw: m(**kw, return_dict=False, **(
            {} if "QuestionAnswering" in cls_name else {"use_cache": False})))(ours, kwargs)
        arrays = [x for x in eager if isinstance(x, jax.Array)]
        assert len(compiled) >= 2 and len(arrays) == len(compiled)
        for a, b in zip(arrays, compiled):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0, err_msg=cls_name)


def test_dropout_in_training_only():
    """train=False (the default) is deterministic; train=True with a dropout_rng draws masks reproducibly from the
    key, in the trunk and in the heads' own dropout; train=True without a key is refused."""
    rates = dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    ids = jnp.asarray(IDS)
    for cls_name, extra in [("GPT2LMHeadModel", {}), ("GPT2ForTokenClassification", {}),
                            ("GPT2DoubleHeadsModel", {})]:
        ours = flax_model(cls_name, **rates)
        x = ids[None] if cls_name == "GPT2DoubleHeadsModel" else ids
        plain = np.asarray(ours(x).logits)
        np.testing.assert_array_equal(np.asarray(ours(x, train=False).logits), plain)
        a = np.asarray(ours(x, dropout_rng=jax.random.key(0), train=True).logits)
        b = np.asarray(ours(x, dropout_rng=jax.random.key(0), train=True).logits)
        c = np.asarray(ours(x, dropout_rng=jax.random.key(1), train=True).logits)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c) and not np.allclose(a, plain)
        with pytest.raises(ValueError, match="dropout_rng"):
            ours(x, train=True)
    # the classifier's own dropout (0.1 by default) runs even when the trunk's rates are all 0
    quiet = flax_model("GPT2ForTokenClassification", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                       summary_first_dropout=0.0, summary_last_dropout=0.0)
    assert not np.allclose(np.asarray(quiet(ids, dropout_rng=jax.random.key(0), train=True).logits),
                           np.asarray(quiet(ids).logits))
    with pytest.raises(ValueError, match="classifier's dropout"):
        quiet(ids, train=True)
