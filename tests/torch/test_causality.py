"""Causality, exactly: changing a later token never changes an earlier position's logits, under every dtype, every
attention flag (scale_attn_weights, scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn), every attention
implementation (flash_attention_2 through the CPU stand-in of test_flash_packing.py), with and without left padding,
with and without a cache. The same shapes run twice, so the kernels run the same arithmetic: any difference at all
is a leak (a masked score still weighing something), not noise.

The attention scores are made large (~1e5) wherever the scores' dtype holds them, because that is where a mask
value chosen for the wrong dtype stops masking: fp16's minimum (-65504) added to fp32 scores of 1e5 (issue 8).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_torch

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402
from gpt2.common import numerics  # noqa: E402

CONFIG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLAGS = list(itertools.product([True, False], repeat=3))  # scale_attn_weights, by_inverse_layer_idx, upcast


def _flash_stand_in():
    """The stand-in flash_attn module of test_flash_packing.py (flash-attn's semantics in plain tensor math)."""
    spec = importlib.util.spec_from_file_location("_flash_packing", Path(__file__).with_name("test_flash_packing.py"))
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = source.flash_attn_func, source.flash_attn_varlen_func
    return module


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]  # CUDA: its own SDPA / eager kernels, same rule


def _model(dtype, flags, implementation, monkeypatch, device="cpu"):
    from gpt2.torch import GPT2LMHeadModel

    scale, by_layer, upcast = flags
    torch.manual_seed(0)
    config = GPT2Config(**CONFIG, scale_attn_weights=scale, scale_attn_by_inverse_layer_idx=by_layer,
                        reorder_and_upcast_attn=upcast)
    model = GPT2LMHeadModel(config, attn_implementation="eager" if implementation == "eager" else "sdpa")
    if dtype != torch.float16 or upcast:  # scores of ~1e5: fp32 (upcast) or bf16 hold them; fp16 scores would not
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[: 2 * config.n_embd] *= 20000.0  # query and key rows: |q|, |k| ~ 5e3
    model = model.to(device=device, dtype=dtype).eval()
    if implementation == "flash_attention_2":
        monkeypatch.setitem(sys.modules, "flash_attn", _flash_stand_in())
        for block in model.transformer.h:
            block.attn.implementation = implementation  # set_attn_implementation would (rightly) ask for CUDA
    return model


def _logits(model, ids, mask, cached: int | None):
    """The logits of every position; with ``cached``, the first ``cached`` tokens go in first, the rest after."""
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        if cached is None:
            return model(ids, attention_mask=mask, position_ids=positions).logits.float()
        first = model(ids[:, :cached], attention_mask=None if mask is None else mask[:, :cached],
                      position_ids=None if positions is None else positions[:, :cached], use_cache=True)
        rest = model(ids[:, cached:], attention_mask=mask, past_key_values=first.past_key_values,
                     position_ids=None if positions is None else positions[:, cached:])
        return torch.cat([first.logits, rest.logits], dim=1).float()


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "scale{}-bylayer{}-upcast{}".format(*map(int, f)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flash_attention_2"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_later_token_never_changes_earlier_logits(device, implementation, dtype, flags, monkeypatch):
    if implementation == "flash_attention_2" and dtype == "float32":
        pytest.skip("flash_attention_2 runs in float16 or bfloat16 only")
    model = _model(DTYPES[dtype], flags, implementation, monkeypatch, device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CONFIG["vocab_size"], (3, 9), generator=g).to(device)
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % CONFIG["vocab_size"]
    padded = torch.ones_like(ids)
    padded[0, :3] = 0  # left padding
    padded[2, :8] = 0  # a row with one real token, the last
    for mask, cached in itertools.product([None, padded], [None, 6]):
        a, b = _logits(model, ids, mask, cached), _logits(model, changed, mask, cached)
        assert torch.isfinite(a).all()
        where = f"mask={'padded' if mask is not None else None}, cached={cached}"
        assert torch.equal(a[:, :-1], b[:, :-1]), (
            f"{where}: changing the last token moved earlier logits by {(a[:, :-1] - b[:, :-1]).abs().max():.3g}")
        assert not torch.equal(a[:, -1], b[:, -1]), f"{where}: the last token changed nothing (a test that cannot fail)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("upcast", [False, True])
@pytest.mark.parametrize("past", [0, 3])
def test_mask_builder_matches_the_numpy_reference(dtype, upcast, past):
    """The trunk's mask equals common/numerics.py's attention_bias in the scores' dtype (fp32 under upcast)."""
    from gpt2.torch import GPT2Model
    from gpt2.torch.attention import scores_dtype

    model = GPT2Model(GPT2Config(**CONFIG, reorder_and_upcast_attn=upcast))
    padding = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    T = padding.shape[1] - past
    target = scores_dtype(DTYPES[dtype], upcast, "cpu")
    mask, is_causal, _ = model._self_attention_mask(padding, 2, T, past, target, torch.device("cpu"))
    assert mask.dtype == (torch.float32 if upcast else DTYPES[dtype]) and not is_causal
    numpy_dtype = "float32" if target == torch.float32 else dtype
    expected = numerics.attention_bias(T, past, padding.numpy(), numpy_dtype).astype(np.float64)
    np.testing.assert_array_equal(mask.double().expand(2, 1, T, past + T).numpy(), expected)


def test_an_fp32_four_d_mask_stays_finite_in_fp16():
    """A caller's additive 4-D mask made for fp32 (-3.4e38) becomes -inf in fp16 and NaNs a fully masked row; it is
    clamped to fp16's finite minimum instead."""
    from gpt2.torch import GPT2Model

    model = GPT2Model(GPT2Config(**CONFIG), attn_implementation="eager").to(torch.float16).eval()
    mask = torch.zeros(1, 1, 4, 4)
    mask[:, :, 0, :] = torch.finfo(torch.float32).min  # the first query sees nothing
    mask[:, :, 1:, :] = torch.triu(torch.full((3, 4), torch.finfo(torch.float32).min), 2)
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3, 4]]), attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()


def test_autocast_masks_in_the_autocast_dtype():
    """Under CPU autocast (bf16 scores from an fp32 model) the padded batch is finite and causal."""
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG)).eval()
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 6))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % CONFIG["vocab_size"]
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = model(ids, attention_mask=mask).logits.float()
        b = model(changed, attention_mask=mask).logits.float()
    assert torch.isfinite(a).all()
    assert torch.equal(a[:, :-1], b[:, :-1])


def test_fixed_decoding_step_masks_in_the_scores_dtype(monkeypatch):
    """The fixed-shape decoding step (compiled.py) keeps its own mask buffer: in fp16 under reorder_and_upcast_attn
    it is fp32 too, so padding and not-yet-written cache slots stay masked; greedy tokens and logits equal the
    eager steps'."""
    import warnings

    import gpt2.torch.generation as generation

    model = _model(torch.float16, (True, False, True), "sdpa", monkeypatch)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])

    def run(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0,
                                  return_dict_in_generate=True, output_logits=True, **kwargs)

    eager = run(disable_compile=True)
    monkeypatch.setattr(generation, "_fixed_step", lambda model, cfg, device: ("fixed", None, False))
    fixed = run()
    assert torch.equal(fixed.sequences, eager.sequences)
    for a, b in zip(fixed.logits, eager.logits):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-3)
