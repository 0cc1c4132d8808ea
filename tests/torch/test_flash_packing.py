"""The FlashAttention-2 path's own logic (gpt2/torch/attention.py: packing left-padded rows for the varlen kernel,
the bottom-right causal alignment when decoding with a cache), on the CPU, through a stand-in ``flash_attn`` module
that computes flash-attn's documented semantics with plain tensor math. The real kernel needs the flash-attn package
and a CUDA GPU: tests/torch/test_cuda.py runs it where both exist.
"""

from __future__ import annotations

import sys
import types

import pytest

from conftest import requires_torch

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402

CONFIG = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.2)


def _attend(q, k, v, scale, causal):
    """One sequence: q (T, nh, hs), k / v (S, nh, hs); causal aligned to the bottom right, as flash-attn >= 2.1."""
    T, S = q.shape[0], k.shape[0]
    scores = torch.einsum("tnd,snd->nts", q.float(), k.float()) * scale
    if causal:
        keep = torch.ones(T, S, dtype=torch.bool).tril(S - T)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("nts,snd->tnd", scores.softmax(-1), v.float()).to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    assert q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0
    return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False):
    assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32
    lens_q, lens_k = cu_seqlens_q.diff(), cu_seqlens_k.diff()
    assert int(lens_q.max()) == max_seqlen_q and int(lens_k.max()) == max_seqlen_k
    out = torch.empty_like(q)
    for (q0, q1), (k0, k1) in zip(zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist()),
                                  zip(cu_seqlens_k[:-1].tolist(), cu_seqlens_k[1:].tolist())):
        out[q0:q1] = _attend(q[q0:q1], k[k0:k1], v[k0:k1], softmax_scale, causal)
    return out


@pytest.fixture
def model(monkeypatch):
    from gpt2.torch import GPT2LMHeadModel

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(**CONFIG, scale_attn_by_inverse_layer_idx=True)).to(torch.float16).eval()

    def use(impl):
        for block in m.transformer.h:
            block.attn.implementation = impl  # set_attn_implementation would (rightly) ask for a CUDA GPU

    m.use = use
    return m


def test_left_padded_batch_packs_rows(model):
    ids = torch.randint(0, 100, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :9] = 0  # one real token
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model.use("sdpa")
    ref = model(ids, attention_mask=mask, position_ids=positions).logits.float()
    model.use("flash_attention_2")
    out = model(ids, attention_mask=mask, position_ids=positions).logits.float()
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=3e-2, rtol=3e-2)
    assert torch.isfinite(out).all()  # padding queries attend to nothing: zeros, never NaN


def test_decoding_with_cache_and_padding(model):
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model.use("flash_attention_2")
    first = model(ids[:, :8], attention_mask=mask[:, :8], position_ids=positions[:, :8])
    rest = model(ids[:, 8:], past_key_values=first.past_key_values, attention_mask=mask,
                 position_ids=positions[:, 8:]).logits.float()
    model.use("sdpa")
    full = model(ids, attention_mask=mask, position_ids=positions).logits.float()
    torch.testing.assert_close(rest, full[:, 8:], atol=3e-2, rtol=3e-2)


def test_unpadded_generate_matches_sdpa(model):
    ids = torch.randint(0, 100, (2, 6))
    model.use("sdpa")
    ref = model.generate(ids, max_new_tokens=8, pad_token_id=0)
    model.use("flash_attention_2")
    assert torch.equal(model.generate(ids, max_new_tokens=8, pad_token_id=0), ref)
