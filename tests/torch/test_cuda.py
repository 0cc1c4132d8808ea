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


def _padded_prompt():
    ids = torch.randint(1, 100, (3, 9), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 10}])
def test_cuda_graph_decoding_equals_eager_steps(dtype, kwargs, monkeypatch):
    import gpt2.torch.compiled as compiled

    captures = []
    original = compiled.FixedStep._capture
    monkeypatch.setattr(compiled.FixedStep, "_capture", lambda self: captures.append(1) or original(self))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG, initializer_range=0.4)).to("cuda", dtype).eval()
    ids, mask = _padded_prompt()
    common = dict(attention_mask=mask, max_new_tokens=16, pad_token_id=0, return_dict_in_generate=True,
                  output_logits=True, **kwargs)
    graph = model.generate(ids, generator=torch.Generator("cuda").manual_seed(0), **common)
    assert captures == [1]
    eager = model.generate(ids, generator=torch.Generator("cuda").manual_seed(0), disable_compile=True, **common)
    assert captures == [1]
    assert torch.equal(graph.sequences, eager.sequences)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(graph.logits, eager.logits):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


def test_torch_compile_reduce_overhead_on_cuda():
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG, initializer_range=0.4)).to("cuda").eval()
    ids, mask = _padded_prompt()
    eager = model.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, disable_compile=True)
    for _ in range(2):  # the second call replays what the first compiled
        compiled = model.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0,
                                  compile_config={"mode": "reduce-overhead"})
        assert torch.equal(compiled, eager)


@pytest.mark.parametrize("sample", [False, True])
def test_default_cuda_generate_with_rows_finishing_early(sample):
    """The default path on CUDA (CUDA graph + the one-step-late stop check) against the eager, immediate one."""
    torch.manual_seed(2)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG, initializer_range=0.4)).to("cuda").eval()
    ids, mask = _padded_prompt()
    kwargs = dict(attention_mask=mask, max_new_tokens=14, pad_token_id=0, do_sample=sample)
    free = model.generate(ids, generator=torch.Generator("cuda").manual_seed(0), **kwargs)
    eos = sorted({int(free[0, 11]), int(free[1, 15]), int(free[2, 17])})
    fast = model.generate(ids, generator=torch.Generator("cuda").manual_seed(0), eos_token_id=eos, **kwargs)
    slow = model.generate(ids, generator=torch.Generator("cuda").manual_seed(0), eos_token_id=eos,
                          disable_compile=True, return_dict_in_generate=True, **kwargs).sequences
    assert torch.equal(fast, slow)
    assert fast.shape[1] < ids.shape[1] + 14
