"""GPU paths: skipped cleanly where there is no CUDA (CI never has one). Run on a GPU machine with
`.venv/bin/python -m pytest tests/torch/test_cuda.py`."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

from gpt2 import GPT2Config  # noqa: E402
from gpt2.torch import GPT2LMHeadModel  # noqa: E402

CONFIG = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32)
IMPLS = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("flags", [{}, {"scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True}])
def test_implementations_agree_on_cuda_with_left_padding(dtype, flags):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG, **flags)).to("cuda", dtype).eval()
    ids = torch.randint(0, 100, (2, 12), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    outputs = {}
    for impl in IMPLS:
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outputs[impl] = model(ids, attention_mask=mask, position_ids=positions).logits.float()
        assert torch.isfinite(outputs[impl]).all(), impl
    real = mask.bool()
    for impl in IMPLS[1:]:
        torch.testing.assert_close(outputs[impl][real], outputs["eager"][real], atol=2e-2, rtol=2e-2)


def test_incremental_decoding_on_cuda():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG)).to("cuda", torch.float16).eval()
    ids = torch.randint(0, 100, (1, 10), device="cuda")
    for impl in IMPLS:
        model.set_attn_implementation(impl)
        with torch.no_grad():
            full = model(ids).logits
            first = model(ids[:, :6])
            rest = model(ids[:, 6:], past_key_values=first.past_key_values).logits
        torch.testing.assert_close(rest, full[:, 6:], atol=2e-2, rtol=2e-2)
