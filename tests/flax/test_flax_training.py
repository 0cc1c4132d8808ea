"""Training the Flax models: jax.grad of the heads' losses through ``params=`` equals PyTorch's autograd on the same
weights (transformers' eager model, 1e-4), tied head included; an optax step under jax.jit lowers the loss and
compiles once; gradient checkpointing (nnx.remat per block) gives the same gradients as storing activations."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _shared_helpers():
    """tests/tf/conftest.py's tiny configs and oracle helpers, loaded by path (see test_flax_models.py)."""
    name = "_gpt2_tests_tf_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "tf" /
                                                      "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_h = _shared_helpers()
IDS, LEFT_PAD = _h.IDS, _h.LEFT_PAD
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)


def flax_model(cls_name: str, state: dict, **config):
    from gpt2.flax import heads
    from gpt2.flax.weights import load_canonical

    model = nnx.eval_shape(lambda: getattr(heads, "Flax" + cls_name)(_h.gpt2_config(**config)))
    missing, unused = load_canonical(model, state)
    assert not missing and not unused, (missing, unused)
    return model


def canonical_grads(model, grads: dict) -> dict[str, np.ndarray]:
    """Gradients shaped as model.params, under the canonical names and layouts (the weight map's transposes)."""
    from gpt2.flax.weights import state_to_canonical

    graphdef, state = nnx.split(model)
    state = nnx.State(state)
    nnx.replace_by_pure_dict(state, grads)
    return state_to_canonical(nnx.merge(graphdef, state))


CASES = {
    "GPT2LMHeadModel": (dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
                        {"labels": np.where(LEFT_PAD == 1, IDS, -100)}),
    "GPT2ForSequenceClassification": (dict(tie_word_embeddings=False), {"labels": np.array([1, 0])}),
    "GPT2DoubleHeadsModel": ({}, {"labels": np.stack([IDS, IDS]), "mc_labels": np.array([1, 0]),
                                  "mc_token_ids": np.array([[5, 4], [3, 5]])}),
}


@pytest.mark.parametrize("cls_name", list(CASES))
def test_gradients_equal_torch_autograd(cls_name):
    config, targets = CASES[cls_name]
    config = {**config, **NO_DROPOUT}
    theirs = _h.transformers_model(cls_name, **config)
    ours = flax_model(cls_name, _h.canonical_from_transformers(theirs), **config)
    ids, mask = IDS, LEFT_PAD
    if cls_name == "GPT2DoubleHeadsModel":
        ids, mask = np.stack([IDS, IDS[::-1]]), np.stack([LEFT_PAD, LEFT_PAD[::-1]])
    out = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 **{k: torch.tensor(v) for k, v in targets.items()})
    total = out.loss + (out.mc_loss if cls_name == "GPT2DoubleHeadsModel" else 0)
    total.backward()
    expected = {name: p.grad.numpy() for name, p in theirs.named_parameters()}

    def loss_fn(params):
        o = ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask), params=params, use_cache=False,
                 **{k: jnp.asarray(v) for k, v in targets.items()})
        return o.loss + (o.mc_loss if cls_name == "GPT2DoubleHeadsModel" else 0)

    params = nnx.state(ours, nnx.Param).to_pure_dict()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    np.testing.assert_allclose(float(loss), total.item(), atol=1e-5)
    got = canonical_grads(ours, grads)
    assert set(got) <= set(expected) and len(got) >= 26  # every weight (a tied lm_head is wte's entry)
    for name, grad in got.items():  # a tied head's gradient is wte's (both uses summed), as in torch
        np.testing.assert_allclose(grad, expected[name], atol=1e-4, rtol=0, err_msg=name)


def test_an_optax_step_under_jit_lowers_the_loss_and_compiles_once():
    theirs = _h.transformers_model("GPT2LMHeadModel", **NO_DROPOUT)
    ours = flax_model("GPT2LMHeadModel", _h.canonical_from_transformers(theirs), **NO_DROPOUT)
    ids, mask = jnp.asarray(IDS), jnp.asarray(LEFT_PAD)
    labels = jnp.where(mask == 1, ids, -100)
    optimizer = optax.adamw(3e-2)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            return ours(ids, attention_mask=mask, labels=labels, params=p, use_cache=False).loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = nnx.state(ours, nnx.Param).to_pure_dict()
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(5):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    assert step._cache_size() == 1
    # the trained weights back into a model: its own forward gives the lower loss
    graphdef, state = nnx.split(ours)
    state = nnx.State(state)
    nnx.replace_by_pure_dict(state, params)
    trained = nnx.merge(graphdef, state)
    assert float(trained(ids, attention_mask=mask, labels=labels).loss) < losses[-1] + 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    """nnx.remat per block (training with dropout: the masks come from the same keys in both runs)."""
    rates = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    theirs = _h.transformers_model("GPT2LMHeadModel", **rates)
    ours = flax_model("GPT2LMHeadModel", _h.canonical_from_transformers(theirs), **rates)
    ids = jnp.asarray(IDS)
    key = jax.random.key(3)

    def loss_fn(params):
        return ours(ids, labels=ids, params=params, dropout_rng=key, train=True).loss

    params = nnx.state(ours, nnx.Param).to_pure_dict()
    plain_loss, plain = jax.value_and_grad(loss_fn)(params)
    ours.transformer.gradient_checkpointing = True
    try:
        loss, checkpointed = jax.value_and_grad(loss_fn)(params)
    finally:
        ours.transformer.gradient_checkpointing = False
    np.testing.assert_allclose(float(loss), float(plain_loss), atol=1e-6)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(checkpointed)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=0)
