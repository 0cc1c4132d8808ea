"""Our TensorFlow models against transformers 4.57.6's eager PyTorch GPT-2 (test-only oracle) and our PyTorch
models, on the same random canonical weights: outputs, losses, masks, the cache, errors, mixed precision."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (
    CLASSES,
    CONFIGS,
    IDS,
    LEFT_PAD,
    POSITIONS,
    assert_outputs_close,
    requires_tf,
    requires_torch,
    requires_transformers,
    tf_model,
    to_numpy,
    torch_inputs,
    triple,
)

pytestmark = [requires_tf, requires_torch, requires_transformers]

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

OUTPUT_KEYS = ("last_hidden_state", "logits", "mc_logits", "start_logits", "end_logits", "loss", "mc_loss")


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
    theirs, ours_torch, ours_tf = models
    with torch.no_grad():
        a, b = theirs(**torch_inputs(kwargs)), ours_torch(**torch_inputs(kwargs))
    return a, b, ours_tf(**{k: tf.constant(v) for k, v in kwargs.items()})


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("cls_name", CLASSES)
def test_outputs_and_losses_like_transformers_and_torch(cls_name, config_name):
    models = triple(cls_name, **CONFIGS[config_name])
    for padded in (False, True):
        theirs, ours_torch, ours_tf = run_all(models, {**inputs_for(cls_name, padded), **labels_for(cls_name)})
        assert assert_outputs_close(theirs, ours_tf, OUTPUT_KEYS) >= (1 if cls_name == "GPT2Model" else 2)
        assert assert_outputs_close(ours_torch, ours_tf, OUTPUT_KEYS)


def test_problem_types_and_the_callers_config():
    """Sequence classification's three losses equal transformers'; the inferred problem_type is recorded on the
    model's own copy, never the caller's config; DoubleHeads' num_labels=1 likewise."""
    from gpt2.common.config import GPT2Config
    from gpt2.tf import heads

    for labels, extra in [(np.array([0.5, -1.0], np.float32), dict(num_labels=1)),
                          (np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32), dict(num_labels=3)),
                          (np.array([2, 0]), dict(num_labels=3))]:
        models = triple("GPT2ForSequenceClassification", **extra)
        theirs, _, ours = run_all(models, {"input_ids": IDS, "labels": labels})
        assert assert_outputs_close(theirs, ours, ("logits", "loss")) == 2
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=7, num_labels=3)
    model = heads.TFGPT2ForSequenceClassification(config)
    model(tf.constant([[1, 2]]), labels=tf.constant([1]))
    assert model.config.problem_type == "single_label_classification" and config.problem_type is None
    assert heads.TFGPT2DoubleHeadsModel(config).config.num_labels == 1 and config.num_labels == 3


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
    tuple_out = models[2](tf.constant(IDS), return_dict=False, use_cache=False)
    assert isinstance(tuple_out, tuple) and len(tuple_out) == 1  # logits only: no loss, no cache


def test_cross_attention_and_its_cache_like_transformers():
    theirs, _, ours = triple("GPT2LMHeadModel", add_cross_attention=True)
    enc = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
    enc_mask = np.array([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        full = theirs(torch.tensor(IDS), encoder_hidden_states=torch.tensor(enc),
                      encoder_attention_mask=torch.tensor(enc_mask)).logits.numpy()
    cross = dict(encoder_hidden_states=tf.constant(enc), encoder_attention_mask=tf.constant(enc_mask))
    np.testing.assert_allclose(ours(tf.constant(IDS), **cross).logits.numpy(), full, atol=1e-4, rtol=0)
    first = ours(tf.constant(IDS[:, :4]), **cross)
    cache = first.past_key_values
    kept = cache.cross_keys[0]
    rest = ours(tf.constant(IDS[:, 4:]), past_key_values=cache, **cross)
    assert rest.past_key_values.cross_keys[0] is kept  # computed once, then re-used
    np.testing.assert_allclose(rest.logits.numpy(), full[:, 4:], atol=1e-4, rtol=0)
    legacy = first.past_key_values.to_legacy_cache()
    assert len(legacy[0]) == 4
    with pytest.raises(ValueError, match="no cross-attention"):
        tf_model("GPT2Model")(tf.constant(IDS), **cross)


def test_incremental_decoding_equals_full_pass():
    """Left padding with explicit positions, one token at a time through the growing cache; a chunk on top of a
    cache; transformers' legacy tuples (PyTorch pairs and TF's stacked (2, B, nh, T, hs)); the `past` keyword."""
    _, _, ours = triple("GPT2LMHeadModel")
    ids, mask, positions = tf.constant(IDS), tf.constant(LEFT_PAD), tf.constant(POSITIONS)
    full = ours(ids, attention_mask=mask, position_ids=positions).logits.numpy()
    out = ours(ids[:, :3], attention_mask=mask[:, :3], position_ids=positions[:, :3])
    steps, cache = [out.logits.numpy()], out.past_key_values
    for t in range(3, 6):
        out = ours(ids[:, t:t + 1], past_key_values=cache, attention_mask=mask[:, :t + 1],
                   position_ids=positions[:, t:t + 1])
        assert cache.get_seq_length() == t  # the cache given is left as it was; the output holds the new one
        steps.append(out.logits.numpy())
        cache = out.past_key_values
    assert cache.get_seq_length() == 6
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5, rtol=0)
    plain = ours(ids).logits.numpy()
    rest = ours(ids[:, 2:], past_key_values=ours(ids[:, :2]).past_key_values).logits.numpy()
    np.testing.assert_allclose(rest, plain[:, 2:], atol=1e-5, rtol=0)
    legacy = ours(ids[:, :4]).past_key_values.to_legacy_cache()
    np.testing.assert_allclose(ours(ids[:, 4:], past_key_values=legacy).logits.numpy(), plain[:, 4:], atol=1e-5)
    stacked = tuple(tf.stack(layer) for layer in legacy)  # transformers' TF format
    np.testing.assert_allclose(ours(ids[:, 4:], past=stacked).logits.numpy(), plain[:, 4:], atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        ours(ids[:, 4:], past=stacked, past_key_values=legacy)


def test_static_cache_eager_and_at_a_position_under_xla():
    """A static cache written at its length (eager) and at a traced position inside tf.function(jit_compile=True),
    where the cache is rebuilt from loop-variable buffers, both equal the full pass."""
    from gpt2.tf.cache import KVCache

    _, _, ours = triple("GPT2LMHeadModel")
    ids = tf.constant(IDS)
    plain = ours(ids).logits.numpy()
    cache = KVCache.for_model(ours, 2, 10)
    a = ours(ids[:, :4], past_key_values=cache)
    b = ours(ids[:, 4:], past_key_values=a.past_key_values)
    assert cache.get_seq_length() == 0 and a.past_key_values.get_seq_length() == 4  # the given one is unchanged
    cache = b.past_key_values
    assert cache.get_seq_length() == 6 and cache.capacity == 10
    np.testing.assert_allclose(b.logits.numpy(), plain[:, 4:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="static KV cache"):
        ours(tf.ones((2, 5), tf.int32), past_key_values=cache)

    trunk, L = ours.transformer, 8

    @tf.function(jit_compile=True)
    def step(keys, values, token, position):
        view = KVCache(keys, values, static=True).at(position)
        x = trunk.embed(token, position_ids=tf.reshape(position, (1, 1)))
        visible = tf.range(L)[None, :] <= position  # one query sees the slots written so far
        mask = tf.where(visible, 0.0, tf.float32.min)[None, None]
        x = trunk.core(x, mask=mask, cache=view)[0]
        return ours.lm_head(x), view.keys, view.values

    empty = KVCache.for_model(ours, 2, L)
    keys, values, logits = empty.keys, empty.values, []
    for t in range(6):
        out, keys, values = step(keys, values, ids[:, t:t + 1], tf.constant(t))
        logits.append(out.numpy())
    np.testing.assert_allclose(np.concatenate(logits, 1), plain, atol=1e-5, rtol=0)
    assert step.experimental_get_tracing_count() == 1


def test_keras_names_build_and_tied_head():
    """build() makes every weight without a forward, under deterministic names; calling on a (1, 1) input builds
    the same; the tied head reads wte and owns nothing (no weight listed twice)."""
    built = tf_model("GPT2LMHeadModel")
    called = tf_model("GPT2LMHeadModel", None)
    called(tf.constant([[0]]))
    names = [w.path.split("/", 1)[1] for w in built.weights]
    assert names == [w.path.split("/", 1)[1] for w in called.weights]
    assert len(names) == len(set(names)) == 2 + 2 * 12 + 2  # wte, wpe, 12 per block, ln_f
    assert "transformer/h_1/attn/c_attn/kernel" in names
    assert len(tf_model("GPT2LMHeadModel", tie_word_embeddings=False).weights) == len(names) + 1


def test_mask_builder_matches_the_numpy_reference():
    from gpt2.common import numerics

    padding = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    for upcast in (False, True):
        model = tf_model("GPT2Model", reorder_and_upcast_attn=upcast)
        for dtype in ("float32", "float16", "bfloat16"):
            for past in (0, 3):
                T = padding.shape[1] - past
                from gpt2.tf.model import scores_dtype

                target = scores_dtype(dtype, upcast)
                mask, is_causal = model._self_attention_mask(tf.constant(padding), 2, T, past, target)
                assert mask.dtype == target and not is_causal
                expected = numerics.attention_bias(T, past, padding, target.name).astype(np.float64)
                got = np.broadcast_to(tf.cast(mask, tf.float64).numpy(), expected.shape)
                np.testing.assert_array_equal(got, expected)


def test_bad_inputs_are_clear_errors():
    ours = tf_model("GPT2LMHeadModel")
    ids = tf.constant(IDS)
    for call, error, match in [
        (lambda: ours(tf.constant([[1, 50]])), ValueError, "input_ids holds 50"),
        (lambda: ours(tf.constant([[-1, 2]])), ValueError, "input_ids holds -1"),
        (lambda: ours(tf.ones((1, 13), tf.int32)), ValueError, "n_positions=12"),
        (lambda: ours(ids, attention_mask=tf.ones((2, 4))), ValueError, "attention_mask has shape"),
        (lambda: ours(tf.cast(ids, tf.float32)), TypeError, "integer"),
        (lambda: ours(inputs_embeds=None), ValueError, "exactly one"),
        (lambda: ours(ids, position_ids=tf.fill(ids.shape, 12)), ValueError, "position_ids holds 12"),
        (lambda: ours(ids, token_type_ids=tf.fill(ids.shape, 50)), ValueError, "token_type_ids holds 50"),
        (lambda: ours(ids, head_mask=tf.ones(3)), ValueError, "head_mask"),
        (lambda: ours(ids, past_key_values="cache"), TypeError, "past_key_values"),
    ]:
        with pytest.raises(error, match=match):
            call()
    with pytest.raises(ValueError, match="mc_token_ids"):
        tf_model("GPT2DoubleHeadsModel")(tf.constant(IDS[None]), mc_token_ids=tf.constant([[6, 0]]))
    with pytest.raises(ValueError, match="pad_token_id"):
        tf_model("GPT2ForSequenceClassification", pad_token_id=None)(ids)
    traced = tf.function(lambda x: ours(x).logits)  # inside a graph: assertions, never a silent gather
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_ids holds a value outside the vocabulary"):
        traced(tf.constant([[1, 50]]))


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_fully_masked_rows_and_mixed_precision_never_nan(policy):
    """A padding-only query, and an fp32 4-D mask hiding everything from the first query, stay finite under every
    policy, with and without reorder_and_upcast_attn; mixed precision stays close to fp32 (softmax and LayerNorm
    statistics in fp32)."""
    import keras

    from gpt2.tf.weights import load_canonical, state_to_canonical

    reference = tf_model("GPT2LMHeadModel", reorder_and_upcast_attn=True)
    state = state_to_canonical(reference)
    mask = tf.constant([[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    four_d = np.triu(np.full((6, 6), np.finfo(np.float32).min, np.float32), 1)[None, None].copy()
    four_d[..., 0, :] = np.finfo(np.float32).min  # the first query sees nothing
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        for upcast in (False, True):
            model = tf_model("GPT2LMHeadModel", reorder_and_upcast_attn=upcast)
            load_canonical(model, state)
            logits = model(tf.constant(IDS), attention_mask=mask, output_attentions=True)
            assert logits.logits.dtype == tf.as_dtype(keras.mixed_precision.dtype_policy().compute_dtype)
            assert np.isfinite(to_numpy(logits.logits)).all(), (policy, upcast)
            sums = to_numpy(logits.attentions[0]).sum(-1)
            np.testing.assert_allclose(sums, 1.0, atol=1e-2)
            expected = reference(tf.constant(IDS), attention_mask=mask).logits.numpy()
            np.testing.assert_allclose(to_numpy(logits.logits), expected, atol=5e-2 if "mixed" in policy else 1e-5)
            out = model(tf.constant(IDS[:1]), attention_mask=tf.constant(four_d)).logits
            assert np.isfinite(to_numpy(out)).all(), (policy, upcast, "4-D mask")
    finally:
        keras.config.set_dtype_policy(previous)


def test_dropout_in_training_only():
    ours = tf_model("GPT2LMHeadModel", resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    ids = tf.constant(IDS)
    np.testing.assert_array_equal(ours(ids).logits.numpy(), ours(ids, training=False).logits.numpy())
    assert not np.allclose(ours(ids, training=True).logits.numpy(), ours(ids, training=True).logits.numpy())


def test_gradient_checkpointing_gives_the_same_gradients():
    """tf.recompute_grad around each block: the same loss and gradients as storing the activations, eagerly and
    in a tf.function (the Keras train step's setting). Dropout off: the same computation, only stored or not."""
    ours = tf_model("GPT2LMHeadModel", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ids = tf.constant(IDS)

    def grads():
        with tf.GradientTape() as tape:
            loss = ours(ids, labels=ids, training=True).loss
        return loss, tape.gradient(loss, ours.trainable_variables)

    plain_loss, plain = grads()
    ours.gradient_checkpointing_enable()
    try:
        for run in (grads, tf.function(grads)):
            loss, checkpointed = run()
            np.testing.assert_allclose(loss.numpy(), plain_loss.numpy(), atol=1e-6)
            assert len(checkpointed) == len(plain) and all(g is not None for g in checkpointed)
            for a, b in zip(plain, checkpointed):
                np.testing.assert_allclose(tf.convert_to_tensor(b).numpy(), tf.convert_to_tensor(a).numpy(),
                                           atol=1e-6, rtol=0)
    finally:
        ours.gradient_checkpointing_disable()


def test_the_whole_call_traces_with_xla_and_with_unknown_shapes():
    """tf.function(model, jit_compile=True) (tuples out: return_dict=False) equals eager, loss included; a trace
    over (None, None) ids (lengths unknown until run: the checks become assertions) too."""
    ours = tf_model("GPT2LMHeadModel")
    ids, mask = tf.constant(IDS), tf.constant(LEFT_PAD)
    eager = ours(ids, attention_mask=mask, labels=ids)
    xla = tf.function(lambda i, a: ours(i, attention_mask=a, labels=i, use_cache=False, return_dict=False),
                      jit_compile=True)(ids, mask)
    np.testing.assert_allclose(xla[1].numpy(), eager.logits.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(xla[0].numpy(), eager.loss.numpy(), atol=1e-5, rtol=0)
    spec = [tf.TensorSpec([None, None], tf.int64)] * 2
    unknown = tf.function(lambda i, a: ours(i, attention_mask=a, return_dict=False)[0], input_signature=spec)
    np.testing.assert_allclose(unknown(ids, mask).numpy(), eager.logits.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="shape is not .batch, cached . new tokens"):
        unknown(ids, mask[:, :4])


def test_a_model_whose_trunk_ran_first_still_builds():
    """generate()'s prompt pass runs the trunk's own layers before the model's build(): build() then skips what is
    built (it would otherwise make its variables twice, which Keras refuses)."""
    from conftest import gpt2_config
    from gpt2.tf import TFGPT2LMHeadModel

    ours = TFGPT2LMHeadModel(gpt2_config())
    ids = tf.constant(IDS)
    ours.transformer(ids)
    assert ours.transformer.built and not ours.built
    logits = ours(ids).logits
    assert ours.built and logits.shape == (*IDS.shape, ours.config.vocab_size)
    assert len(ours.weights) == 2 + 2 * 12 + 2
