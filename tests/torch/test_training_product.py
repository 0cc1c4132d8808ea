"""model.project with autograd: on the CPU in fp32, a row-major nn.Linear (the trainer's layout) runs through
``_TrainingProduct`` (oneDNN's linear for the forward and the input's gradient, torch's mm for the weight's), with
the values and gradients of the layer's own call within float rounding; double backward works; hooks, autocast,
the decoding layout, torch.func transforms and forward-mode AD take the layer's own call; a model's loss and
gradients are those of the plain products."""

from __future__ import annotations

import pytest

from conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

import gpt2.torch.model as model_module  # noqa: E402
from gpt2.torch.model import project  # noqa: E402

ours = pytest.mark.skipif(model_module._ONEDNN_LINEAR is None, reason="this torch build has no MKL and oneDNN "
                          "(the product is used on x86 builds only); the layer's own call is tested elsewhere")


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """Every product through oneDNN, however small (these tests' shapes are below TRAINING_PRODUCT_MACS)."""
    monkeypatch.setattr(model_module, "TRAINING_PRODUCT_MACS", 0)


def linear(C=48, out=80, bias=True):
    torch.manual_seed(0)
    return torch.nn.Linear(C, out, bias=bias)  # row-major [out, in]


def node(y: torch.Tensor) -> str:
    return type(y.grad_fn).__name__


def test_available_on_the_x86_wheels():
    assert (model_module._ONEDNN_LINEAR is not None) == (torch.backends.mkl.is_available()
                                                         and torch.backends.mkldnn.is_available())


@ours
def test_the_op_is_tried_first(monkeypatch):
    """An internal op: one that is missing, takes other arguments or gives other values is not used."""
    assert model_module._onednn_linear() is not None
    namespace = torch.ops.mkldnn

    def other_arguments(x, w, b, attr):
        return x @ w.t()

    def other_values(x, w, b, *args):
        return x @ w.t()  # no bias

    for fake in (other_arguments, other_values):
        monkeypatch.setattr(namespace, "_linear_pointwise", fake)
        assert model_module._onednn_linear() is None, fake.__name__
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    assert model_module._onednn_linear() is None


@ours
@pytest.mark.parametrize("shape", [(7, 48), (2, 33, 48), (3, 1, 48), (1, 300, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_the_layer(shape, bias, two_threads):
    layer = linear(bias=bias)
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(*shape[:-1], 80)
    got = project(layer, x)
    assert node(got) == "_TrainingProductBackward" and got.shape == (*shape[:-1], 80)
    got.backward(dy)
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    x.grad = None
    layer.zero_grad(set_to_none=True)
    want = layer(x)
    want.backward(dy)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(grads, [x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert g.stride() == w.stride()  # the parameter's layout: no copy on accumulation


@ours
def test_only_the_gradients_asked_for():
    layer = linear()
    layer.weight.requires_grad_(False)
    x = torch.randn(5, 48, requires_grad=True)
    y = project(layer, x)
    assert node(y) == "_TrainingProductBackward"
    y.sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None and x.grad is not None
    layer, x = linear(), torch.randn(5, 48)  # an input without grad: the parameters' gradients only
    y = project(layer, x)
    assert node(y) == "_TrainingProductBackward"
    y.square().sum().backward()
    got = layer.weight.grad.clone()
    layer.zero_grad(set_to_none=True)
    layer(x).square().sum().backward()
    torch.testing.assert_close(got, layer.weight.grad, rtol=1e-5, atol=1e-5)


@ours
def test_double_backward():
    layer = linear()
    x = torch.randn(6, 48, requires_grad=True)
    (gx,) = torch.autograd.grad(project(layer, x).square().sum(), x, create_graph=True)
    gx.sum().backward()
    got = layer.weight.grad.clone()
    layer.zero_grad(set_to_none=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    gx.sum().backward()
    torch.testing.assert_close(got, layer.weight.grad, rtol=1e-5, atol=1e-5)


@ours
def test_the_layers_own_call_elsewhere(monkeypatch):
    layer, x = linear(), torch.randn(4, 48, requires_grad=True)
    seen = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(1))
    assert node(project(layer, x)) != "_TrainingProductBackward" and seen == [1]
    handle.remove()
    handle = layer.register_full_backward_hook(lambda module, gin, gout: seen.append(2))
    project(layer, x).sum().backward()
    handle.remove()
    assert seen == [1, 2]  # a backward hook runs: the layer was called
    handle = torch.nn.modules.module.register_module_full_backward_hook(lambda module, gin, gout: seen.append(3))
    try:
        project(layer, x).sum().backward()
    finally:
        handle.remove()
    assert seen[-1] == 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = project(layer, x)
    assert y.dtype == torch.bfloat16  # autocast's product, as the layer
    decoding = model_module._in_out(linear())  # [in, out] memory: the layer's call
    assert node(project(decoding, x)) != "_TrainingProductBackward"
    assert node(project(layer.to(torch.float64), x.double())) != "_TrainingProductBackward"
    layer.float()
    assert node(project(layer, x)) == "_TrainingProductBackward"  # and with none of those, ours
    monkeypatch.setattr(model_module, "TRAINING_PRODUCT_MACS", 4 * 48 * 80 + 1)  # one multiply-add too few
    assert node(project(layer, x)) != "_TrainingProductBackward"


@ours
def test_torch_func_and_forward_mode_take_the_layer():
    layer = linear()
    x = torch.randn(4, 48)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p):
        return torch.func.functional_call(layer, p, (x,)).square().sum()

    def loss_through_project(p):
        return torch.func.functional_call(Wrapper(layer), {"layer." + k: v for k, v in p.items()}, (x,)).square().sum()

    got = torch.func.grad(loss_through_project)(params)
    want = torch.func.grad(loss)(params)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    import torch.autograd.forward_ad as fwad

    tangent = torch.randn_like(x)
    with fwad.dual_level():
        dual = fwad.make_dual(x, tangent)
        out = fwad.unpack_dual(project(layer, dual)).tangent
    torch.testing.assert_close(out, tangent @ layer.weight.detach().t())


class Wrapper(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return project(self.layer, x)


@ours
def test_a_models_loss_and_gradients_equal_the_plain_products(monkeypatch):
    from gpt2 import GPT2Config
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    for p in model.parameters():  # the trainer's layout (train.py _contiguous)
        p.data = p.data.contiguous()
    ids = torch.randint(0, 96, (3, 20))
    runs = []
    for product in (model_module._ONEDNN_LINEAR, None):
        monkeypatch.setattr(model_module, "_ONEDNN_LINEAR", product)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        runs.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                     node(out.logits)))
        model.zero_grad(set_to_none=True)
    (loss, grads, _), (plain_loss, plain_grads, _) = runs
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert runs[0][2] != runs[1][2]  # the lm head's product differs between the two runs
