"""return_overflowing_tokens and stride against transformers' two GPT-2 tokenizers (test-only oracles), each of ours
against its counterpart: windows as extra rows with overflow_to_sample_mapping (fast), overflowing_tokens and
num_truncated_tokens (slow)."""

from __future__ import annotations

import pytest

from conftest import requires_transformers
from test_tokenizer import ours, plain, theirs

pytestmark = requires_transformers

A = "one two three four five six seven eight nine ten eleven twelve"
B = "a b c d e f g"
C = "short"

CASES = [
    dict(text=A, truncation=True, max_length=4),
    dict(text=A, truncation=True, max_length=4, stride=1),
    dict(text=A, truncation=True, max_length=5, stride=3),
    dict(text=[A, B, C], truncation=True, max_length=4, stride=2),
    dict(text=[A, B, C], truncation=True, max_length=4, stride=1, padding=True),
    dict(text=[A, B], truncation=True, max_length=4, stride=1, padding="max_length", return_tensors="np"),
    dict(text=A, max_length=6, stride=2, return_special_tokens_mask=True, return_length=True,
         return_token_type_ids=True),
    dict(text=C, truncation=True, max_length=4, stride=1),
    dict(text=A, text_pair=B, truncation="only_first", max_length=9, stride=1),
    dict(text=B, text_pair=A, truncation="only_second", max_length=10, stride=2),
    dict(text=[A, B], text_pair=[B, A], truncation="only_first", max_length=14, stride=1),
]


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_overflow_like_transformers(kind, side, case):
    kwargs = dict(CASES[case], return_overflowing_tokens=True)
    a, b = ours(kind, pad_token="<|endoftext|>"), theirs(kind, pad_token="<|endoftext|>")
    a.truncation_side = b.truncation_side = side
    if kind == "slow" and "return_tensors" in kwargs:  # ragged overflowing_tokens: no tensor (transformers with
        with pytest.raises(ValueError, match="overflowing_tokens"):  # "pt" raises too; with "np" it makes an
            a(**kwargs)  # object array)
        return
    assert plain(a(**kwargs)) == plain(b(**kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(text=A, text_pair=B, truncation="longest_first", max_length=8, stride=1),
    dict(text=[A, C], text_pair=[B, A], truncation="longest_first", max_length=7, stride=0),
    dict(text=A, truncation=True, max_length=6, stride=2, return_offsets_mapping=True),
    dict(text=[A, B], text_pair=[C, C], truncation="only_first", max_length=6, stride=1, return_offsets_mapping=True),
])
def test_fast_pairs_and_offsets_like_transformers(kwargs):
    """The Rust tokenizer's order for two truncated sequences (every window of one with every window of the
    other), and character offsets of every window."""
    got = ours("fast")(**kwargs, return_overflowing_tokens=True)
    assert plain(got) == plain(theirs("fast")(**kwargs, return_overflowing_tokens=True))


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_add_bos_token_windows_like_transformers(kind):
    kwargs = dict(text=[A, B], truncation=True, max_length=5, stride=1, return_overflowing_tokens=True)
    a, b = ours(kind, add_bos_token=True), theirs(kind, add_bos_token=True)
    assert plain(a(**kwargs)) == plain(b(**kwargs))


def test_stride_without_overflow_keeps_the_first_window():
    for kind in ("slow", "fast"):
        a, b = ours(kind), theirs(kind)
        assert plain(a(A, truncation=True, max_length=5, stride=2)) == plain(b(A, truncation=True, max_length=5,
                                                                                stride=2))


def test_overflow_errors():
    fast, slow = ours("fast"), ours("slow")
    # transformers' Rust tokenizer panics here (a BaseException from deep inside): ours names the problem.
    with pytest.raises(ValueError, match="stride=4 must be smaller than the length each window keeps"):
        fast(A, truncation=True, max_length=4, stride=4, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="not 'longest_first'"):
        slow(A, B, truncation="longest_first", max_length=8, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="needs truncation"):  # transformers' Python tokenizer: a TypeError
        slow(A, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="stride must be a non-negative integer"):
        fast(A, truncation=True, max_length=4, stride=-1)
    assert fast(A, return_overflowing_tokens=True)["overflow_to_sample_mapping"] == [0]  # nothing to cut
