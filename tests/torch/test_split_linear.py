"""model.project: on the CPU, a product of at most SPLIT_ROWS rows without autograd is split over the intra-op
threads (a bmm over slabs of the input dimension, then a sum); everything else is the layer's own call. The split
gives the layer's values within float rounding, a model's outputs and greedy tokens are those of the plain product,
and hooks, autograd, other dtypes and layouts take the layer's call."""

from __future__ import annotations

import pytest

from conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402
from gpt2.torch.model import SPLIT_ROWS as SPLIT_ROWS_AS_IMPORTED  # noqa: E402  (before the fixture below sets it)


def linear(C=32, out=48, bias=True):
    from gpt2.torch.model import _in_out

    torch.manual_seed(0)
    return _in_out(torch.nn.Linear(C, out, bias=bias))


@pytest.fixture(autouse=True)
def split_rows(monkeypatch):
    """The split at 32 rows as on the x86 wheels (MKL), whatever BLAS this torch was built with."""
    import gpt2.torch.model as model_module

    monkeypatch.setattr(model_module, "SPLIT_ROWS", 32)


def test_split_only_with_mkl():
    assert SPLIT_ROWS_AS_IMPORTED == (32 if torch.backends.mkl.is_available() else 0)


@pytest.fixture
def bmm_calls(monkeypatch):
    """How many times torch.bmm was called (model.project's split is the only torch.bmm in these paths)."""
    calls = []
    bmm = torch.bmm

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return bmm(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counted)
    return calls


@pytest.mark.parametrize("shape", [(1, 32), (1, 1, 32), (4, 1, 32), (2, 16, 32), (5, 3, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_split_equals_the_layer(shape, bias, two_threads, bmm_calls):
    from gpt2.torch.model import project

    layer, x = linear(bias=bias), torch.randn(shape)
    with torch.no_grad():
        got = project(layer, x)
        bmm_calls_split = len(bmm_calls)
        want = layer(x)
    assert bmm_calls_split == 1  # split: rows <= SPLIT_ROWS on two threads
    assert got.shape == want.shape == (*shape[:-1], 48)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_more_rows_than_split_rows_take_the_layer(two_threads, bmm_calls):
    from gpt2.torch.model import SPLIT_ROWS, project

    layer = linear()
    with torch.no_grad():
        assert torch.equal(project(layer, torch.ones(SPLIT_ROWS + 1, 32)), layer(torch.ones(SPLIT_ROWS + 1, 32)))
    assert bmm_calls == []


def test_not_split_with_autograd_hooks_other_dtypes_or_layouts(two_threads, bmm_calls):
    from gpt2.torch.model import project

    layer, x = linear(), torch.randn(1, 32)
    y = project(layer, x)  # grad enabled, the weight requires grad: the layer's own call, which autograd records
    y.sum().backward()
    assert layer.weight.grad is not None and bmm_calls == []
    seen = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with torch.no_grad():
        project(layer, x)
    handle.remove()
    assert seen == [(1, 48)] and bmm_calls == []  # the hook ran: the layer was called
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: seen.append(1))
    try:
        with torch.no_grad():
            project(layer, x)
    finally:
        handle.remove()
    assert seen[-1] == 1 and bmm_calls == []  # a global hook also runs
    with torch.no_grad():
        project(linear().to(torch.bfloat16), x.bfloat16())  # fp32 only
        plain = torch.nn.Linear(32, 48)  # [out, in] memory: the slabs of its input dimension are not contiguous
        torch.testing.assert_close(project(plain, x), plain(x))
    assert bmm_calls == []
    with torch.no_grad():
        project(layer, x)
    assert len(bmm_calls) == 1  # and with none of those, split


def test_one_thread_is_not_split(bmm_calls):
    from gpt2.torch.model import project

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            project(linear(), torch.randn(1, 32))
    finally:
        torch.set_num_threads(threads)
    assert bmm_calls == []


@pytest.mark.parametrize("threads, n, parts", [(2, 32, 2), (3, 32, 2), (3, 48, 3), (4, 6, 3), (2, 7, 1), (1, 32, 1)])
def test_split_parts_divide_the_input_dimension(threads, n, parts):
    from gpt2.torch.model import _split_parts

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert _split_parts(n) == parts
    finally:
        torch.set_num_threads(before)


def test_model_and_generate_equal_the_plain_products(two_threads, bmm_calls, monkeypatch):
    """A decoding model on two threads (split products) against the same model with splitting off: logits within
    float rounding, the same greedy tokens (prefill, fixed step and eager step all run through project)."""
    import gpt2.torch.model as model_module
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64)).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15]])
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, pad_token_id=0, do_sample=False)
    with torch.no_grad():
        split_logits = model(ids).logits
        split = model.generate(ids, **kwargs)
        split_eager = model.generate(ids, disable_compile=True, **kwargs)
    assert len(bmm_calls) > 12 * 9  # every product of every step, and the lm head's
    monkeypatch.setattr(model_module, "SPLIT_ROWS", 0)
    with torch.no_grad():
        torch.testing.assert_close(split_logits, model(ids).logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(split, model.generate(ids, **kwargs))
        assert torch.equal(split_eager, model.generate(ids, disable_compile=True, **kwargs))
