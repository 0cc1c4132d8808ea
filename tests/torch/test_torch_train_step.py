"""The torch training step's fast parts: heads.causal_lm_loss (cross-entropy with its gradient computed a few rows
at a time) equals transformers' loss and gradients; the trainer trains row-major parameters with fused AdamW, and
a training step (loss, every gradient, the update) equals transformers' GPT2LMHeadModel in a plain loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from conftest import requires_transformers  # noqa: E402
from gpt2.common.training import TrainArgs, decays  # noqa: E402
from gpt2.torch import train as torch_train  # noqa: E402
from gpt2.torch.heads import CROSS_ENTROPY_ROWS, GPT2LMHeadModel, causal_lm_loss  # noqa: E402

# A config whose vocabulary and rows span several chunks of CROSS_ENTROPY_ROWS
CONFIG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=53, n_positions=40, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0)


def reference_loss(logits, labels):
    """transformers' causal LM loss: shift the logits, fp32 cross-entropy, -100 ignored."""
    shifted = logits[..., :-1, :].float()
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[..., 1:].reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("shape", [(3, 37, 101), (2, 3, 20, 50), (1, 1, 7), (2, CROSS_ENTROPY_ROWS, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_lm_loss_and_gradient_equal_cross_entropy(shape, dtype):
    torch.manual_seed(0)
    logits = (torch.randn(*shape) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, shape[-1], shape[:-1])
    labels.view(-1)[::5] = -100
    ours = causal_lm_loss(logits, labels)
    (grad,) = torch.autograd.grad(ours * 2.5, logits)
    theirs = reference_loss(logits, labels)
    (want,) = torch.autograd.grad(theirs * 2.5, logits)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    if shape[-2] == 1:  # one position: nothing to predict, NaN as transformers'
        assert torch.isnan(ours) and torch.isnan(theirs) and not grad.any()
        return
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-6)
    np.testing.assert_allclose(grad.float().numpy(), want.float().numpy(), atol=1e-7 if dtype == torch.float32
                               else 1e-2 * want.abs().max().item())


def test_causal_lm_loss_gradient_of_one_is_handed_on_unscaled_and_stays_intact():
    """loss.backward() hands the saved gradient on as it is (no pass to multiply it by one): a retained graph run
    twice, and the logits used by a second term too, still give the right sums."""
    logits = torch.randn(2, 6, 13, requires_grad=True)
    labels = torch.randint(0, 13, (2, 6))
    (want,) = torch.autograd.grad(reference_loss(logits, labels), logits)
    loss = causal_lm_loss(logits, labels)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(logits.grad, want)
    loss.backward()
    torch.testing.assert_close(logits.grad, 2 * want)
    logits.grad = None
    (causal_lm_loss(logits, labels) + 0.5 * logits.sum()).backward()
    torch.testing.assert_close(logits.grad, want + 0.5)


def test_causal_lm_loss_ignores_rows_refuses_bad_labels_and_needs_no_grad():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    ignored = torch.full((2, 5), -100)
    loss = causal_lm_loss(logits, ignored)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(reference_loss(logits, ignored))
    assert not logits.grad.any()  # nothing counted: no gradient (never NaN)
    labels = torch.randint(0, 11, (2, 5))
    with torch.no_grad():
        np.testing.assert_allclose(causal_lm_loss(logits, labels).item(), reference_loss(logits, labels).item(),
                                   rtol=1e-6)
    with pytest.raises((IndexError, RuntimeError)):
        causal_lm_loss(logits, torch.full((2, 5), 11))
    with pytest.raises((IndexError, RuntimeError)):
        causal_lm_loss(logits, torch.full((2, 5), -3))
    kept = logits.detach().clone()
    causal_lm_loss(logits, labels).backward()
    assert torch.equal(logits.detach(), kept)  # fp32 logits are read, never written


def test_trainer_parameters_row_major_tied_and_fused_adamw():
    model = GPT2LMHeadModel(_config())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert not model.transformer.h[0].attn.c_attn.weight.is_contiguous()  # the decoding layout ([in, out] memory)
    torch_train._contiguous(model)
    assert all(p.is_contiguous() for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    args = TrainArgs(framework="torch", data="x", out="y", config="gpt2")
    optimizer = torch_train._optimizer(model, args, torch.device("cpu"))
    assert optimizer.defaults["fused"] is True


def _config():
    from gpt2.common.config import GPT2Config

    return GPT2Config(**CONFIG)


@requires_transformers
def test_training_step_equals_transformers(tmp_path):
    """One update as the trainer makes it (row-major weights, causal_lm_loss, fused AdamW, clipping) against
    transformers' model with torch's default AdamW: the loss, every gradient and the updated weights."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)).train()
    theirs.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = GPT2LMHeadModel.from_pretrained(tmp_path).train()
    torch_train._contiguous(ours)
    ids = torch.randint(0, CONFIG["vocab_size"], (3, 33))
    args = TrainArgs(framework="torch", data="x", out="y", config="gpt2", lr=1e-2)
    optimizers = [torch_train._optimizer(ours, args, torch.device("cpu"))]
    groups = ([p for n, p in theirs.named_parameters() if decays(n)],
              [p for n, p in theirs.named_parameters() if not decays(n)])
    optimizers.append(torch.optim.AdamW([{"params": groups[0], "weight_decay": args.weight_decay},
                                         {"params": groups[1], "weight_decay": 0.0}], lr=args.lr,
                                        betas=(args.beta1, args.beta2), eps=args.eps))
    losses = []
    for model, optimizer in zip((ours, theirs), optimizers):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)  # below the norm: clipping acts
        losses.append(loss.item())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs_params[name]
        flip = p.dim() == 2 and "wte" not in name and "wpe" not in name  # Conv1D [in, out] vs Linear [out, in]
        np.testing.assert_allclose(p.grad.numpy(), (q.grad.t() if flip else q.grad).numpy(), atol=1e-6,
                                   err_msg=name)
    for optimizer in optimizers:
        optimizer.step()
    for name, p in ours.named_parameters():
        q = theirs_params[name]
        flip = p.dim() == 2 and "wte" not in name and "wpe" not in name
        np.testing.assert_allclose(p.detach().numpy(), (q.t() if flip else q).detach().numpy(), atol=1e-6,
                                   err_msg=name)
