"""The trunk (gpt2/torch/model.py): one core that every path runs, a cache that owns its write rule, keyword
arguments between layers, models that pickle, weights kept in the checkpoints' [in, out] order."""

from __future__ import annotations

import inspect
import pickle

import pytest

from conftest import requires_torch

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402
from gpt2.common.numerics import ACTIVATIONS  # noqa: E402

CONFIG = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.4)
CLASSES = ["GPT2Model", "GPT2LMHeadModel", "GPT2DoubleHeadsModel", "GPT2ForSequenceClassification",
           "GPT2ForTokenClassification", "GPT2ForQuestionAnswering"]
IDS = torch.tensor([[3, 3, 5, 6, 7], [10, 11, 12, 13, 14]])
MASK = (IDS != 3).long()


def lm(seed=0, **flags):
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**CONFIG, **flags)).eval()


def _outputs(model, ids):
    with torch.no_grad():
        out = model(ids)
    return [t for t in out.to_tuple() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("name", CLASSES)
def test_every_model_pickles(name, activation):
    import gpt2.torch as module

    torch.manual_seed(0)
    extra = dict(pad_token_id=0) if name == "GPT2ForSequenceClassification" else {}
    model = getattr(module, name)(GPT2Config(**CONFIG, activation_function=activation, **extra)).eval()
    copy = pickle.loads(pickle.dumps(model))
    ids = IDS[:, None] if name == "GPT2DoubleHeadsModel" else IDS  # (B, num_choices, T)
    for a, b in zip(_outputs(model, ids), _outputs(copy, ids), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("flags", [{}, dict(reorder_and_upcast_attn=True, scale_attn_by_inverse_layer_idx=True)])
def test_fixed_step_and_forward_run_the_same_core(padded, flags, monkeypatch):
    """The next token's logits three ways: a plain forward over the whole sequence, a forward after a cache, and
    the fixed-shape step (compiled.py) over a static cache; all through GPT2Model.core, once per forward."""
    from gpt2.torch import GPT2Model
    from gpt2.torch.cache import KVCache
    from gpt2.torch.compiled import FixedStep

    calls = []
    core = GPT2Model.core
    monkeypatch.setattr(GPT2Model, "core", lambda self, x, **kw: calls.append(x.shape[1]) or core(self, x, **kw))
    m = lm(1, **flags)
    B, T = IDS.shape
    mask = MASK if padded else torch.ones_like(IDS)
    nxt = torch.tensor([[41], [42]])
    full_mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T + 1)
    with torch.no_grad():
        whole = m(torch.cat([IDS, nxt], dim=1), attention_mask=full_mask, position_ids=positions).logits[:, -1]
        first = m(IDS, attention_mask=mask, position_ids=positions[:, :T], use_cache=True)
        cached = m(nxt, attention_mask=full_mask, position_ids=positions[:, T:],
                   past_key_values=first.past_key_values).logits[:, -1]
        step = FixedStep(m, KVCache.for_model(m, B, 16, "cpu"), "fixed")
        m(IDS, attention_mask=mask, position_ids=positions[:, :T], past_key_values=step.cache, use_cache=True)
        step.start(mask if padded else None, T)
        assert calls == [T + 1, T, 1, T]
        fixed = step(nxt, positions[:, T:], T)
    assert calls[-1] == 1, "the fixed step did not run GPT2Model.core"
    torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed, whole.float(), atol=1e-5, rtol=0)
    for layer in range(CONFIG["n_layer"]):  # the step wrote its key and value where the growing cache appended them
        torch.testing.assert_close(step.cache.keys[layer][:, :, : T + 1], first.past_key_values.keys[layer])
        torch.testing.assert_close(step.cache.values[layer][:, :, : T + 1], first.past_key_values.values[layer])


def test_compiled_step_has_no_copy_of_the_blocks():
    """compiled.py runs the trunk's own embed and core: no attention or block code of its own."""
    import ast

    import gpt2.torch.compiled as compiled

    tree = ast.parse(inspect.getsource(compiled))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for name in ("c_attn", "ln_1", "ln_2", "c_proj", "mlp", "sdpa_attention", "eager_attention", "index_copy_"):
        assert name not in used, f"compiled.py uses {name}: a second copy of the block code"
    assert "core" in used


def test_the_cache_owns_its_write_rule():
    from gpt2.torch.cache import KVCache

    k1, v1 = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)  # (B, nh, T, hs)
    k2, v2 = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 1, 8)
    growing = KVCache()
    growing.update(0, k1, v1)
    growing.advance(3)
    k, v = growing.update(0, k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))

    static = KVCache.static_cache(1, 2, 4, 10, 8, torch.float32, "cpu")
    static.update(0, k1, v1)  # appended at its length: the filled part comes back
    static.advance(3)
    position = torch.tensor([3])
    k, v = static.at(position).update(0, k2, v2)  # written at a device-tensor position: the whole buffer comes back
    assert k.shape == (2, 4, 10, 8) and k.data_ptr() == static.keys[0].data_ptr()
    assert torch.equal(k[:, :, :4], torch.cat([k1, k2], dim=2)) and not k[:, :, 4:].any()
    assert static.get_seq_length() == 3  # the caller advances the length
    with pytest.raises(ValueError, match="only a static cache"):
        growing.at(position)


@pytest.mark.parametrize("layer", ["Attention", "Block"])
def test_layers_take_keyword_arguments(layer):
    import gpt2.torch.model as model

    parameters = list(inspect.signature(getattr(model, layer).forward).parameters.values())
    assert [p.name for p in parameters[:2]] == ["self", "x"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[2:])


def test_gradient_checkpointing_passes_keyword_arguments():
    """torch's non-reentrant checkpoint hands the block its keyword arguments: the same loss and gradients."""
    grads = []
    for checkpointed in (False, True):
        m = lm(2, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0).train()
        if checkpointed:
            m.gradient_checkpointing_enable()
        loss = m(IDS, attention_mask=MASK, labels=IDS).loss
        loss.backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_weights_keep_the_checkpoint_order_in_memory(tmp_path):
    """Projections and the token table (the tied lm_head) are [in, out] in memory, as decoding reads them fastest;
    loading, dtype casts and pickling keep it, and the canonical arrays are unchanged."""
    from gpt2.torch import GPT2LMHeadModel

    m = lm(3)
    m.save_pretrained(tmp_path)
    for model in (m, GPT2LMHeadModel.from_pretrained(tmp_path), m.half(), pickle.loads(pickle.dumps(m))):
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.endswith("wpe.weight"):
                assert p.t().is_contiguous(), f"{name} is not stored [in, out]"
        assert model.lm_head.weight is model.transformer.wte.weight
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    for a, b in zip(lm(3).state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
