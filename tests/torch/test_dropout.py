"""Dropout in training on the CPU (gpt2/torch/attention.py): ``train_dropout`` drops with the probability asked
(15-bit decisions, the scale of the probability used), reproducibly from torch's seed, and falls back to torch's
dropout where 15 bits cannot express p; ``_CausalDropoutAttention`` gives the explicit attention's values and
gradients (double backward included) with the same decisions; a model in training mode gives the same loss and
gradients under SDPA and eager attention, and under gradient checkpointing."""

from __future__ import annotations

import pytest

from conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from gpt2 import GPT2Config  # noqa: E402
from gpt2.torch import attention  # noqa: E402
from gpt2.torch.attention import eager_attention, train_attention, train_dropout  # noqa: E402

ONE = 1 << attention.DROP_BITS


def test_drops_with_the_probability_asked_and_keeps_the_mean():
    x = torch.ones(1 << 21)
    torch.manual_seed(0)
    y = train_dropout(x, 0.1)
    threshold = round(0.1 * ONE)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - threshold / ONE) < 5 * (0.1 * 0.9 / x.numel()) ** 0.5  # 5 sigma: ~1e-3
    kept = y[y != 0]
    assert torch.all(kept == ONE / (ONE - threshold))  # the scale of the probability used: the mean is kept
    for p in (0.5, 0.9):
        torch.manual_seed(1)
        assert abs((train_dropout(x, p) == 0).float().mean().item() - p) < 5e-3


def test_every_draw_of_a_word_is_used_and_independent():
    """Each 64-bit word gives four decisions; neighbours (the same word) are not correlated."""
    torch.manual_seed(2)
    d = (train_dropout(torch.ones(4, 1 << 18), 0.5) == 0).float()
    for shift in (1, 2, 3, 4):
        both = (d[:, shift:] * d[:, :-shift]).mean().item()
        assert abs(both - 0.25) < 3e-3, shift


def test_reproducible_from_the_seed_and_different_without_it():
    x = torch.randn(3, 50, 7)
    torch.manual_seed(3)
    a = train_dropout(x, 0.2)
    torch.manual_seed(3)
    b = train_dropout(x, 0.2)
    c = train_dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_gradient_is_the_same_mask_and_scale():
    x = torch.randn(6, 33, requires_grad=True)
    g = torch.randn(6, 33)
    torch.manual_seed(4)
    y = train_dropout(x, 0.3)
    y.backward(g)
    scale = ONE / (ONE - round(0.3 * ONE))
    torch.testing.assert_close(x.grad, g * (y != 0) * scale)
    torch.testing.assert_close(y, x.detach() * (y != 0) * scale)


@pytest.mark.parametrize("p", [1e-4, 0.001, 1.0])
def test_torch_dropout_where_15_bits_cannot_express_p(p):
    x = torch.randn(1000)
    torch.manual_seed(5)
    ours = train_dropout(x, p)
    torch.manual_seed(5)
    assert torch.equal(ours, F.dropout(x, p=p, training=True))


def _explicit(q, k, v, scale, p):
    """The same attention as plain autograd ops, with train_dropout's decisions (drawn at the same point)."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), torch.finfo(q.dtype).min)
    return train_dropout(torch.softmax(scores, -1), p) @ v


def _qkv(shape=(2, 3, 9, 4), seed=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]


def test_fused_attention_equals_the_explicit_ops_forward_backward_and_double_backward():
    outs = []
    for fused in (True, False):
        q, k, v = _qkv()
        torch.manual_seed(7)
        if fused:
            y = train_attention(q, k, v, mask=None, is_causal=True, scale=0.3, dropout=0.25, head_mask=None)
            assert type(y.grad_fn).__name__ == "_CausalDropoutAttentionBackward"
        else:
            y = _explicit(q, k, v, 0.3, 0.25)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
        grads = torch.autograd.grad((y * w).sum(), (q, k, v), create_graph=True)
        second = torch.autograd.grad(sum((g ** 2).sum() for g in grads), (q, k, v))
        outs.append([y, *grads, *second])
    assert (outs[0][0] == 0).any()  # some probabilities were dropped
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["mask", "not causal", "no dropout", "float64", "no grad", "autocast",
                                  "unexpressible p"])
def test_fused_attention_only_where_it_applies(case):
    q, k, v = _qkv()
    kwargs = dict(mask=None, is_causal=True, scale=0.5, dropout=0.1, head_mask=None)
    if case == "mask":
        kwargs["mask"] = torch.zeros(9, 9)
    elif case == "not causal":
        kwargs["is_causal"] = False
    elif case == "no dropout":
        kwargs["dropout"] = 0.0
    elif case == "unexpressible p":
        kwargs["dropout"] = 1e-4
    elif case == "float64":
        q, k, v = (t.double() for t in (q, k, v))
    if case == "no grad":
        with torch.no_grad():
            assert train_attention(q, k, v, **kwargs) is None
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert train_attention(q, k, v, **kwargs) is None
    else:
        assert train_attention(q, k, v, **kwargs) is None


def _lm(implementation="sdpa"):
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, attn_pdrop=0.2,
                        resid_pdrop=0.1, embd_pdrop=0.1)
    return GPT2LMHeadModel(config, attn_implementation=implementation).train()


IDS = torch.tensor([[3, 3, 5, 6, 7, 9, 1], [10, 11, 12, 13, 14, 2, 2]])


def _loss_and_grads(model, seed=9):
    torch.manual_seed(seed)
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


def test_a_training_model_gives_the_same_loss_and_gradients_under_sdpa_eager_and_checkpointing():
    """SDPA's dropout runs the fused attention, eager the explicit ops: the same decisions, drawn in the same order.
    Checkpointed blocks draw their decisions again in the recomputation: torch restores the CPU generator's state
    there, so they are the same ones too."""
    sdpa = _loss_and_grads(_lm("sdpa"))
    eager = _loss_and_grads(_lm("eager"))
    checkpointed = _lm("sdpa")
    checkpointed.gradient_checkpointing_enable()
    again = _loss_and_grads(checkpointed)
    other_seed = _loss_and_grads(_lm("sdpa"), seed=10)
    for a, b, c in zip(sdpa, eager, again, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(sdpa[0], other_seed[0])  # dropout is on


def test_eager_attention_returns_the_dropped_probabilities():
    q, k, v = _qkv()
    torch.manual_seed(11)
    y, probs = eager_attention(q, k, v, mask=None, is_causal=True, scale=0.5, dropout=0.5, head_mask=None,
                               upcast=False)
    assert (probs == 0).float().mean() > 0.5  # the causal zeros and about half the rest
    torch.testing.assert_close(y, probs @ v)
