"""The fixed-shape decoding step (gpt2/torch/compiled.py) behind generate()'s CUDA graphs and compile_config.

On the CPU the step runs as it is ("fixed", generate()'s default there) and through torch.compile;
tests/torch/test_cuda.py runs the CUDA graph. Each must give the eager step's tokens (disable_compile=True), and
logits within float summation order.
"""

from __future__ import annotations

import warnings

import pytest

from conftest import requires_torch

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402
from gpt2.common.generation import GenerationConfig  # noqa: E402

CONFIG = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.4)
IDS = torch.tensor([[3, 3, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15], [3, 40, 41, 42, 43, 44]])
MASK = (IDS != 3).long()
FLAGS = [{}, {"scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True},
         {"scale_attn_weights": False, "activation_function": "relu"}]


def model(seed=0, **flags):
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**CONFIG, **flags)).eval()


@pytest.fixture
def force_fixed(monkeypatch):
    """generate() with the fixed-shape step run uncompiled, counting its calls."""
    import gpt2.torch.compiled as compiled
    import gpt2.torch.generation as generation

    calls = []
    original = compiled.FixedStep.__call__

    def counted(self, *args):
        calls.append(self.how)
        return original(self, *args)

    monkeypatch.setattr(generation, "_fixed_step",
                        lambda model, cfg, device: None if cfg.disable_compile else ("fixed", None, True))
    monkeypatch.setattr(compiled.FixedStep, "__call__", counted)
    return calls


def run(m, **kwargs):
    kwargs = {"attention_mask": MASK, "max_new_tokens": 12, "pad_token_id": 0, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.generate(IDS, **kwargs)


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_step_equals_eager_greedy(flags, seed, monkeypatch):
    m = model(seed, **flags)
    kwargs = dict(return_dict_in_generate=True, output_logits=True)
    eager = run(m, disable_compile=True, **kwargs)
    import gpt2.torch.generation as generation

    monkeypatch.setattr(generation, "_fixed_step", lambda model, cfg, device: ("fixed", None, False))
    fixed = run(m, **kwargs)
    assert torch.equal(fixed.sequences, eager.sequences)
    for a, b in zip(fixed.logits, eager.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert fixed.past_key_values.get_seq_length() == eager.sequences.shape[1] - 1


@pytest.mark.parametrize("kwargs", [dict(num_beams=3, num_return_sequences=2), dict(num_beams=2, do_sample=True),
                                    dict(do_sample=True, top_k=20), dict(attention_mask=None),
                                    dict(eos_token_id=[7, 9], min_new_tokens=2)])
def test_fixed_step_equals_eager_other_strategies(kwargs, force_fixed):
    m = model(1)
    fixed = run(m, generator=torch.Generator().manual_seed(0), **kwargs)
    assert force_fixed, "the fixed-shape step was not used"
    force_fixed.clear()
    eager = run(m, generator=torch.Generator().manual_seed(0), disable_compile=True, **kwargs)
    assert not force_fixed
    assert torch.equal(fixed, eager)


def test_which_step_generate_takes():
    import gpt2.torch.generation as generation

    m = model()
    cfg = GenerationConfig(return_dict_in_generate=True, output_attentions=True)
    assert generation._fixed_step(m, cfg, torch.device("cuda")) is None
    assert generation._fixed_step(m, GenerationConfig(disable_compile=True), torch.device("cuda")) is None
    assert generation._fixed_step(m, GenerationConfig(), torch.device("cuda")) == ("cuda_graph", None, True)
    returned = GenerationConfig(return_dict_in_generate=True)  # the cache goes to the caller: not kept
    assert generation._fixed_step(m, returned, torch.device("cuda")) == ("cuda_graph", None, False)
    # the CPU's default: the same step, run as it is (no capture, so its cache is not kept)
    assert generation._fixed_step(m, GenerationConfig(), torch.device("cpu")) == ("fixed", None, False)
    assert generation._fixed_step(m, GenerationConfig(disable_compile=True), torch.device("cpu")) is None
    how, options, keep = generation._fixed_step(m, GenerationConfig(compile_config={"backend": "eager"}),
                                                torch.device("cpu"))
    assert how == "compile" and options == {"fullgraph": True, "dynamic": False, "backend": "eager"} and keep
    m.train()
    assert generation._fixed_step(m, GenerationConfig(compile_config={}), torch.device("cpu")) is None


def test_compile_config_runs_torch_compile_once_per_shape():
    """A counting backend: one graph for two generate() calls whose lengths share the 64-token cache bucket."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = model(2)
    eager = run(m, max_new_tokens=10, disable_compile=True)
    first = run(m, max_new_tokens=10, compile_config={"backend": backend})
    second = run(m, max_new_tokens=20, compile_config={"backend": backend})
    assert torch.equal(first, eager)
    assert torch.equal(second[:, : first.shape[1]], first)
    assert len(graphs) == 1


def test_compile_config_with_inductor_matches_transformers_style_object():
    """The real compiler, given as transformers' CompileConfig would be (an object with its fields)."""

    class CompileConfig:
        fullgraph, dynamic, backend, mode, options = True, False, "inductor", None, None

    m = model(3, scale_attn_by_inverse_layer_idx=True)
    eager = run(m, return_dict_in_generate=True, output_logits=True, disable_compile=True)
    compiled = run(m, return_dict_in_generate=True, output_logits=True, compile_config=CompileConfig())
    assert torch.equal(compiled.sequences, eager.sequences)
    for a, b in zip(compiled.logits, eager.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_kept_step_is_reused_only_while_valid(force_fixed, monkeypatch):
    """The step (its graph and cache) stays on the model for the next call of the same shape; new parameters, a
    new batch size or a step still in use get a new one. Every run gives the eager tokens."""
    import gpt2.torch.compiled as compiled

    made = []
    original = compiled.FixedStep.__init__
    monkeypatch.setattr(compiled.FixedStep, "__init__", lambda self, *a: made.append(1) or original(self, *a))
    m = model(4)

    def check(ids=IDS, mask=MASK, **kwargs):
        fixed = m.generate(ids, attention_mask=mask, max_new_tokens=9, pad_token_id=0, **kwargs)
        eager = m.generate(ids, attention_mask=mask, max_new_tokens=9, pad_token_id=0, disable_compile=True,
                           **kwargs)
        assert torch.equal(fixed, eager)

    check()
    check(min_new_tokens=9)  # same batch and cache bucket: re-used (the cache is emptied, the mask reset)
    check(ids=IDS[1:], mask=None)  # batch 2: a new step
    assert len(made) == 2
    with torch.no_grad():
        m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight * 1.5)  # new storage: a graph would read freed memory
    check(ids=IDS[1:], mask=None)
    assert len(made) == 3
    kept = compiled._KEPT[m]["step"][1]
    kept.busy.acquire()  # as if another thread were generating with it
    check(ids=IDS[1:], mask=None)
    assert len(made) == 4 and compiled._KEPT[m]["step"][1] is kept
    kept.release()
    copy = __import__("copy").deepcopy(m)  # what is kept lives outside the model: copies and pickles work
    check(ids=IDS[1:], mask=None)
    assert torch.equal(run(copy, attention_mask=None), run(m, attention_mask=None))
    assert compiled._KEPT[copy]["step"][1] is not compiled._KEPT[m]["step"][1]
    import gc

    n = len(compiled._KEPT)
    del copy
    gc.collect()
    assert len(compiled._KEPT) == n - 1  # gone with its model


@pytest.mark.parametrize("compile_config, error, match", [
    ({"fullgraf": True}, ValueError, "unknown key.*fullgraf"),
    (42, TypeError, "CompileConfig, got int"),
    ({"mode": "max-autotune", "options": {"x": 1}}, ValueError, "mode or options"),
])
def test_bad_compile_config(compile_config, error, match):
    with pytest.raises(error, match=match):
        run(model(), compile_config=compile_config)


def test_cache_implementation_and_compile_fields():
    m = model()
    assert torch.equal(run(m, cache_implementation="static"), run(m, cache_implementation="dynamic"))
    with pytest.raises(ValueError, match="cache_implementation='offloaded' is not supported"):
        run(m, cache_implementation="offloaded")
    with pytest.raises(ValueError, match="disable_compile must be true or false"):
        GenerationConfig(disable_compile="yes")
    cfg = GenerationConfig(compile_config={"mode": None}, disable_compile=True)
    assert "compile_config" not in cfg.to_dict() and cfg.to_diff_dict()["disable_compile"] is True


def test_flash_layer_gives_a_four_d_mask_to_sdpa():
    """A caller's ready additive mask cannot be expressed to flash-attn: that layer takes SDPA, not a wrong answer."""
    m = model()
    B, T = IDS.shape
    mask4 = torch.zeros(B, 1, T, T).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -1e9)
    mask4[0, :, :, 0] = -1e9
    ref = m(IDS, attention_mask=mask4).logits
    for block in m.transformer.h:
        block.attn.implementation = "flash_attention_2"  # without flash-attn installed: must never be reached
    torch.testing.assert_close(m(IDS, attention_mask=mask4).logits, ref)


@pytest.mark.parametrize("finish_at", [2, 5, 11, None])  # new tokens after which the last row finishes; None: never
@pytest.mark.parametrize("sample", [False, True])
def test_late_stop_check_gives_the_same_output(finish_at, sample, monkeypatch):
    """The one-step-late stop check (used on CUDA) drops the extra step: the ids equal an immediate check's."""
    import gpt2.torch.generation as generation

    m = model(5)
    kwargs = dict(do_sample=sample, generator=torch.Generator().manual_seed(0)) if sample else {}
    free = run(m, **kwargs)
    # Rows finish when they produce their own token at step finish_at (and the first row earlier).
    if finish_at is None:
        eos = [next(t for t in range(100) if t not in free)]
    else:
        eos = sorted({int(free[0, 6 + 1]), int(free[1, 6 + finish_at - 1]), int(free[2, 6 + finish_at - 1])})
    kwargs = dict(kwargs, eos_token_id=eos)
    immediate = run(m, **dict(kwargs, generator=torch.Generator().manual_seed(0)) if sample else kwargs)
    monkeypatch.setattr(generation, "use_late_check", lambda *args: True)
    late = run(m, **dict(kwargs, generator=torch.Generator().manual_seed(0)) if sample else kwargs)
    assert torch.equal(late, immediate)
    assert (immediate.shape[1] == IDS.shape[1] + 12) == (finish_at is None)


def test_fixed_step_after_an_inputs_embeds_prompt(force_fixed):
    m = model(6)
    embeds = m.transformer.wte(IDS).detach()
    kwargs = dict(inputs_embeds=embeds, attention_mask=MASK, max_new_tokens=10, pad_token_id=0)
    fixed = m.generate(**kwargs)
    assert force_fixed
    assert torch.equal(fixed, m.generate(**kwargs, disable_compile=True))
    assert torch.equal(fixed, run(m)[:, IDS.shape[1]:IDS.shape[1] + 10])  # the same as the ids' prompt


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("T, S, one", [(1, 7, True), (1, 2048, True), (1, 2049, False), (3, 7, False)])
def test_one_query_attention_runs_on_one_thread(kernel, T, S, one, two_threads, monkeypatch):
    """A decoding step's attention (one query per row, keys of at most ONE_THREAD_KEYS elements) runs on one CPU
    thread, with the same result as on two, and the thread count is restored; longer or wider ones keep theirs."""
    import gpt2.torch.attention as attention

    B, nh, hs = 2, 4, 8  # 2 * 4 * 2048 * 8 = 2 ** 17 key elements: the limit
    assert attention.ONE_THREAD_KEYS == B * nh * 2048 * hs
    torch.manual_seed(0)
    q, k, v = torch.randn(B, nh, T, hs), torch.randn(B, nh, S, hs), torch.randn(B, nh, S, hs)
    mask = torch.zeros(B, 1, T, S).masked_fill_(torch.rand(B, 1, T, S) < 0.3, attention.mask_value(torch.float32))
    seen = []
    spy = {"sdpa": ("F", "scaled_dot_product_attention"), "eager": ("F", "softmax")}[kernel]
    module = getattr(attention, spy[0])
    original = getattr(module, spy[1])
    monkeypatch.setattr(module, spy[1], lambda *a, **kw: seen.append(torch.get_num_threads()) or original(*a, **kw))

    def run_kernel():
        if kernel == "sdpa":
            return attention.sdpa_attention(q, k, v, mask=mask, is_causal=False, scale=0.3, dropout=0.0, upcast=False)
        return attention.eager_attention(q, k, v, mask=mask, is_causal=False, scale=0.3, dropout=0.0, head_mask=None,
                                         upcast=False)[0]

    y = run_kernel()
    assert seen == [1 if one else 2] and torch.get_num_threads() == 2
    reference = torch.softmax(q @ k.transpose(-1, -2) * 0.3 + mask, dim=-1) @ v  # (B, nh, T, hs)
    torch.testing.assert_close(y, reference, atol=1e-6, rtol=1e-5)


def test_one_thread_is_restored_after_an_error(two_threads, monkeypatch):
    import gpt2.torch.attention as attention

    def fails(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", fails)
    q = torch.randn(1, 2, 1, 4)
    with pytest.raises(RuntimeError, match="kernel failed"):
        attention.sdpa_attention(q, q, q, mask=None, is_causal=False, scale=0.5, dropout=0.0, upcast=False)
    assert torch.get_num_threads() == 2


def test_fixed_step_on_one_thread_gives_the_eager_tokens_of_two(two_threads, monkeypatch):
    """generate() by default on the CPU (the fixed step, its attention on one thread) against the eager step with
    every kernel on two threads: the same greedy tokens, logits within float summation order."""
    import gpt2.torch.attention as attention

    m = model(7, scale_attn_by_inverse_layer_idx=True)
    kwargs = dict(return_dict_in_generate=True, output_logits=True)
    fixed = run(m, **kwargs)
    monkeypatch.setattr(attention, "ONE_THREAD_KEYS", 0)  # nothing on one thread
    eager = run(m, disable_compile=True, **kwargs)
    assert torch.equal(fixed.sequences, eager.sequences)
    for a, b in zip(fixed.logits, eager.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
