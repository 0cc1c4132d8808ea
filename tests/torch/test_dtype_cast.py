"""from_pretrained(torch_dtype=...) refuses weights the cast cannot hold, with the same message as gpt2 convert
(common/numerics.py cast_overflow_error): checkpoints are checked finite when read, the cast must not undo it."""

from __future__ import annotations

import pytest

from conftest import requires_torch

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402

CONFIG = dict(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=7)


@pytest.fixture
def folder(tmp_path):
    from gpt2.torch import GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(**CONFIG))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = 1e5  # fine in float32 and bfloat16, inf in float16
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("dtype", [torch.float16, "float16"])
def test_float16_overflow_is_refused_by_name(folder, dtype):
    from gpt2.torch import GPT2LMHeadModel

    with pytest.raises(ValueError, match=r"tensor 'transformer.h.0.mlp.c_fc.weight' has values beyond float16's range "
                                         r"\(max \|x\| = 100000.*cast from float32 to float16 makes them inf"):
        GPT2LMHeadModel.from_pretrained(folder, torch_dtype=dtype)


def test_bfloat16_and_float32_hold_it(folder):
    from gpt2.torch import GPT2LMHeadModel

    for dtype in (torch.bfloat16, torch.float32, "auto"):
        model = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=dtype)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert float(model.transformer.h[0].mlp.c_fc.weight.detach()[0, 0]) == pytest.approx(1e5, rel=1e-2)


def test_the_torch_check_and_the_numpy_check_say_the_same(folder):
    """One rule, one message: the numpy cast (gpt2 convert) and the torch one (from_pretrained) agree."""
    from gpt2.common.checkpoint import load_checkpoint
    from gpt2.common.numerics import cast_checked
    from gpt2.torch import GPT2LMHeadModel

    state, _ = load_checkpoint(folder)
    name = "transformer.h.0.mlp.c_fc.weight"
    with pytest.raises(ValueError) as numpy_side:
        cast_checked(name, state[name], "float16")
    with pytest.raises(ValueError) as torch_side:
        GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float16)
    assert str(numpy_side.value) == str(torch_side.value)
