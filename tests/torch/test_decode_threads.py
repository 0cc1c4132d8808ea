"""generate()'s per-token work on the CPU: each step's processors, choice of token and stop check run on one intra-op
thread when its scores are small (generation.ONE_THREAD_SCORES), the caller's thread count restored after (also on
an error); the column-filling processors (min_length, suppress_tokens) give torch.where's scores exactly."""

from __future__ import annotations

import math

import pytest

from conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

from gpt2 import GPT2Config  # noqa: E402

IDS = torch.tensor([[3, 4, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15]])


def model(vocab_size=100):
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=64,
                                      initializer_range=0.4)).eval()


def spy_threads(seen):
    """A logits processor and a stopping criterion that record the thread count they run with (the criteria are
    not asked at the last step: max_length stops first)."""
    def processor(ids, scores):
        seen.append(torch.get_num_threads())
        return scores

    def criterion(ids, scores):
        seen.append(torch.get_num_threads())
        return torch.zeros(ids.shape[0], dtype=torch.bool)

    return dict(logits_processor=[processor], stopping_criteria=[criterion])


@pytest.mark.parametrize("rows, limit, expected", [(1, None, 1), (2, None, 1), (2, 199, 2), (1, 0, 2)])
def test_per_token_work_on_one_thread_when_small(rows, limit, expected, two_threads, monkeypatch):
    import gpt2.torch.generation as generation

    if limit is not None:
        monkeypatch.setattr(generation, "ONE_THREAD_SCORES", limit)  # rows * V = 200 above it: two threads
    seen = []
    kwargs = dict(max_new_tokens=5, pad_token_id=0, min_new_tokens=5, suppress_tokens=[1])
    out = model().generate(IDS[:rows], **kwargs, **spy_threads(seen))
    assert len(seen) == 9 and set(seen) == {expected} and torch.get_num_threads() == 2  # 5 steps, 4 checks
    monkeypatch.setattr(generation, "ONE_THREAD_SCORES", 0)
    assert torch.equal(out, model().generate(IDS[:rows], **kwargs))  # the same tokens on two threads


def test_thread_count_restored_after_an_error(two_threads):
    def fails(ids, scores):
        raise RuntimeError("processor failed")

    with pytest.raises(RuntimeError, match="processor failed"):
        model().generate(IDS[:1], max_new_tokens=3, pad_token_id=0, logits_processor=[fails])
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("tokens", [[7], [7, 7, 2], [99, 150, -1], [], [torch.tensor(5)]])
def test_filled_columns_equal_a_vocabulary_mask(tokens):
    """min_length's and suppress_tokens' index_fill against torch.where over an isin mask of the vocabulary
    (transformers' rule: ids outside it ignored), bit for bit, and only when their length rule holds."""
    from gpt2.torch.logits_process import _min_length, _suppress

    V = 100
    scores = torch.randn(3, V)
    mask = torch.isin(torch.arange(V), torch.tensor([int(t) for t in tokens], dtype=torch.long))
    reference = torch.where(mask, -math.inf, scores)
    ids = torch.zeros(3, 10, dtype=torch.long)
    min_length = _min_length(min_length=4, eos=tokens, vocab_size=V, device="cpu")
    assert torch.equal(min_length(ids, 3, scores), reference)
    assert min_length(ids, 4, scores) is scores
    every = _suppress(tokens=tokens, at_length=None, vocab_size=V, device="cpu")
    assert torch.equal(every(ids, 9, scores), reference)
    begin = _suppress(tokens=tokens, at_length=2, vocab_size=V, device="cpu")
    assert torch.equal(begin(ids, 2, scores), reference) and begin(ids, 3, scores) is scores
    assert not torch.equal(scores, reference) or not mask.any()  # the caller's scores are left as they were


def test_cpu_step_attends_over_the_positions_written(monkeypatch):
    """The CPU's default step (compiled.FixedStep, "fixed": nothing captured) reads the n + 1 cached positions of
    step n, as the eager step does, not the whole buffer of max_length positions; the same tokens."""
    import gpt2.torch.attention as attention

    m = model()
    keys = []
    original = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: keys.append(k.shape[-2]) or original(q, k, v, **kw))
    kwargs = dict(max_length=40, min_length=40, pad_token_id=0)
    expected = [n for n in range(6, 40) for _ in range(2)]  # the prompt's 6, then 7, 8, ... 39; 2 layers each
    out = m.generate(IDS[:1], **kwargs)
    assert keys == expected
    keys.clear()
    eager = m.generate(IDS[:1], disable_compile=True, **kwargs)
    assert torch.equal(out, eager) and keys == expected
