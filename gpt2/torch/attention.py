"""The attention kernels behind ``Attention``: eager (explicit softmax), SDPA and FlashAttention-2.

All three honour the scale that GPT-2's config asks for (scale_attn_weights, scale_attn_by_inverse_layer_idx) and
reorder_and_upcast_attn (scores and softmax in fp32). transformers 4.57 ignores the first two under SDPA; we do
not. Masks are additive, 0 where a query may look and the dtype's most negative finite value where it may not:
a fully masked row (a left-padding query) then softmaxes to a uniform row instead of NaN (see common/numerics.py).

On the CPU a decoding step's attention (one query per row over a short cache) runs on one thread (``OneThread``):
its work is microseconds, less than waking a second thread costs, and a thread left spinning after it takes a core
from whatever else runs on the machine, while the step's products of one row run on one thread anyway.

Training on the CPU has its own dropout (``train_dropout``: decisions from 15-bit random integers, ~3x faster than
torch's per-element Bernoulli draws) and, for a causal self-attention with dropout in fp32, a fused kernel
(``train_attention``) in place of SDPA's CPU math path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# A one-query attention over at most this many key elements (B * nh * S * hs) runs on one CPU thread: 128 Ki
# elements of keys and as many of values (1 MiB in fp32) take ~40 us on one core, about what a fork/join of the
# intra-op threads costs on a 2-core VM (SDPA over gpt2's 12 heads and 96 positions: ~75 us on 2 threads, ~23 us on
# one). gpt2 (124M) with one row stays below it up to 170 positions.
ONE_THREAD_KEYS = 1 << 17


def mask_value(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


def scores_dtype(dtype: torch.dtype, upcast: bool, device_type: str) -> torch.dtype:
    """The dtype the attention scores are computed in, which is the dtype masks must be built in: fp32 under
    reorder_and_upcast_attn, the autocast dtype under autocast, else the activations' ``dtype``. A mask built in
    fp16 (-65504) and added to fp32 scores of 1e5 does not mask (common/numerics.py); one built
    in fp32 and cast to fp16 becomes -inf and NaNs a fully masked row."""
    if upcast:
        return torch.float32
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class OneThread:
    """``with OneThread(q, k):`` runs the attention of one query per row (a decoding step) on the CPU on one
    intra-op thread when its keys hold at most ONE_THREAD_KEYS elements; otherwise, on other devices and while
    torch.compile traces, it changes nothing.

    Why: ATen's CPU kernels for it (SDPA's loop over (B, nh), batched matmul) hand each head to a thread of the
    pool however small the work, so every layer of every decoding step pays a fork/join, and the woken thread then
    spins, taking a core from other processes and stalling at the next join whenever its core is busy: on a loaded
    2-core machine the gpt2 (124M) fixed step took 2.4x the matvec floor's time on two threads and 1.1-1.2x on one
    (benchmarks/bench_torch.py's floor, interleaved in one process). The step's products of one row run on one
    thread whatever the setting (MKL starts no pool thread for them), so nothing else changes.
    ``torch.set_num_threads`` is per calling thread (OpenMP's nthreads-var, MKL's local setting): other threads are
    not affected, and the count found is restored on exit.
    """

    __slots__ = ("threads",)

    def __init__(self, q: torch.Tensor, k: torch.Tensor) -> None:
        self.threads = 0
        if (q.shape[-2] == 1 and q.device.type == "cpu" and k.numel() <= ONE_THREAD_KEYS
                and not torch.compiler.is_compiling()):
            self.threads = torch.get_num_threads()

    @classmethod
    def when(cls, small: bool) -> "OneThread":
        """One intra-op thread inside the ``with`` when ``small`` (the caller's rule: CPU work too small to share),
        else no change; nothing changes while torch.compile traces. generate() runs each token's processors and
        choice this way (generation.py)."""
        self = cls.__new__(cls)
        self.threads = torch.get_num_threads() if small and not torch.compiler.is_compiling() else 0
        return self

    def __enter__(self) -> None:
        if self.threads > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.threads > 1:
            torch.set_num_threads(self.threads)


# Dropout on the CPU keeps an element unless a 15-bit random integer falls below round(p * 2^15): four such integers
# come from each 64-bit word of torch's generator (``random_`` on int64 draws 63 uniform bits). torch's own CPU
# dropout draws one Bernoulli variate per element: 30 ms for gpt2's attention probabilities of one layer at batch
# 4 x 256 (3.1M elements, 2 threads), where the words, the comparison and the masking take ~9 ms; over an update
# of gpt2 (124M) that is ~0.3 s of ~5.3 (benchmarks/RESULTS.md, issue 13). p is used where a multiple of 2^-15 is
# within 0.1% of it (any p >= 0.016, and 0.01): elsewhere, and off the CPU, torch's dropout runs.
DROP_BITS = 15


def transformed() -> bool:
    """Whether a torch.func transform or a forward-mode AD level is active: the model's own fast paths (oneDNN
    training products, CPU dropout) have no rule for either, so torch's ops run there."""
    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(functorch is not None and functorch()) or torch.autograd.forward_ad._current_level >= 0


def _drop_threshold(x: torch.Tensor, p: float) -> int | None:
    """The 15-bit threshold ``train_dropout`` uses for ``x`` and ``p``, or None where torch's dropout runs."""
    one = 1 << DROP_BITS
    threshold = round(p * one)
    if (x.device.type != "cpu" or not 0 < threshold < one or abs(threshold - p * one) > 1e-3 * p * one
            or torch.compiler.is_compiling() or transformed()):
        return None
    return threshold


def _drops(x: torch.Tensor, threshold: int) -> torch.Tensor:
    """Where ``train_dropout`` zeroes ``x``: a bool tensor of x's shape, from torch's default CPU generator."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each, uniform
    return ((words.view(torch.int16)[:n] & ((1 << DROP_BITS) - 1)) < threshold).view(x.shape)


def _keep_scale(threshold: int) -> float:
    """1 / (1 - p) for the probability a 15-bit ``threshold`` drops with: the kept values' scale."""
    return (1 << DROP_BITS) / ((1 << DROP_BITS) - threshold)


def train_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p, training=True)``: each element zeroed with probability p, the others scaled by 1 / (1 -
    p). On the CPU the drop decisions come from 15-bit random integers (see DROP_BITS), with the scale of the
    probability actually used, so that the mean is kept exactly; the same seed gives the same decisions."""
    threshold = _drop_threshold(x, p)
    if threshold is None:
        return F.dropout(x, p=p, training=True)
    return (x * _keep_scale(threshold)).masked_fill_(_drops(x, threshold), 0)


class _CausalDropoutAttention(torch.autograd.Function):
    """softmax(q k^T * scale + causal mask), dropout (``train_dropout``'s decisions), times v: the attention of a
    training step on the CPU in fp32 (``train_attention``), with fewer passes over the (B * nh, T, T) scores than
    autograd's graph of the same ops: the causal mask and the scale go into the product (baddbmm), dropout's scale
    into the (T, hs) output, and backward masks the probabilities' gradient in place. gpt2's attention at batch 4 x
    256 took ~0.7x the time of that graph, forward and backward (benchmarks/RESULTS.md, issue 13). Backward is
    built from differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, threshold: int):
        B, nh, T, hs = q.shape
        q3, k3, v3 = (t.reshape(B * nh, T, hs) for t in (q, k, v))  # (B*nh, T, hs)
        probs = _causal_probs(q3, k3, scale)  # (B*nh, T, T)
        drops = _drops(probs, threshold)
        kept = torch.where(drops, 0.0, probs)  # one pass (masked_fill copies, then fills)
        keep_scale = _keep_scale(threshold)
        ctx.save_for_backward(q, k, v, q3, k3, v3, probs, kept, drops)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        return torch.bmm(kept, v3).mul_(keep_scale).view(B, nh, T, hs)  # (B, nh, T, hs)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, q3, k3, v3, probs, kept, drops = ctx.saved_tensors
        B, nh, T, hs = dy.shape
        if torch.is_grad_enabled():  # create_graph: what q, k, v made, again from them, so that it carries a graph
            q3, k3, v3 = (t.reshape(B * nh, T, hs) for t in (q, k, v))
            probs = _causal_probs(q3, k3, ctx.scale)
            kept = torch.where(drops, 0.0, probs)
        dy3 = dy.reshape(B * nh, T, hs) * ctx.keep_scale
        dv = torch.bmm(kept.transpose(1, 2), dy3)
        dprobs = torch.bmm(dy3, v3.transpose(1, 2)).masked_fill_(drops, 0)
        dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
        dq = torch.bmm(dscores, k3).mul_(ctx.scale)
        dk = torch.bmm(dscores.transpose(1, 2), q3).mul_(ctx.scale)
        return dq.view(B, nh, T, hs), dk.view(B, nh, T, hs), dv.view(B, nh, T, hs), None, None


def _causal_probs(q3: torch.Tensor, k3: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) of (B * nh, T, hs) queries and keys, the mask and the scale inside the
    product (baddbmm)."""
    T = q3.shape[1]
    causal = torch.full((T, T), mask_value(q3.dtype), dtype=q3.dtype).triu_(1)  # (T, T)
    return torch.softmax(torch.baddbmm(causal, q3, k3.transpose(1, 2), alpha=scale), -1)  # (B*nh, T, T)


def train_attention(q, k, v, *, mask, is_causal: bool, scale: float, dropout: float, head_mask) -> torch.Tensor | None:
    """The attention output through ``_CausalDropoutAttention`` where it applies (a causal self-attention without
    mask or head mask, with dropout, fp32 on the CPU without autocast, the grad mode on), else None."""
    if (not is_causal or mask is not None or head_mask is not None or dropout <= 0 or q.dtype != torch.float32
            or q.shape[-2] != k.shape[-2] or not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")):
        return None
    threshold = _drop_threshold(q, dropout)
    if threshold is None:
        return None
    return _CausalDropoutAttention.apply(q, k, v, scale, threshold)


def eager_attention(q, k, v, *, mask, is_causal: bool, scale: float, dropout: float, head_mask, upcast: bool):
    """softmax(q k^T * scale + mask) v, explicitly; returns (y, probabilities). Shapes (B, nh, T|S, hs)."""
    with OneThread(q, k):
        return _eager_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale, dropout=dropout,
                                head_mask=head_mask, upcast=upcast)


def _eager_attention(q, k, v, *, mask, is_causal: bool, scale: float, dropout: float, head_mask, upcast: bool):
    T, S = q.shape[-2], k.shape[-2]
    if upcast:  # reorder_and_upcast_attn: the product and the softmax in fp32 (fp16 scores can overflow)
        with torch.autocast(q.device.type, enabled=False):
            scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))  # (B, nh, T, S)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, nh, T, S)
    if is_causal and mask is None:
        keep = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = scores.masked_fill(~keep, mask_value(scores.dtype))
    elif mask is not None:
        scores = scores + mask.to(scores.dtype)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    probs = train_dropout(probs, dropout) if dropout > 0 else probs
    if head_mask is not None:
        probs = probs * head_mask
    return torch.matmul(probs, v), probs


def sdpa_attention(q, k, v, *, mask, is_causal: bool, scale: float, dropout: float, upcast: bool):
    """torch's scaled_dot_product_attention with GPT-2's scale; returns y (B, nh, T, hs). With dropout on the CPU
    ``train_attention`` runs instead where it applies, else the explicit attention with ``train_dropout``: SDPA's
    CPU kernel for dropout is that same math (its fused kernel takes no dropout), with torch's slower Bernoulli
    draws."""
    if dropout > 0:  # training: never on a decoding step's path
        y = train_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale, dropout=dropout, head_mask=None)
        if y is not None:
            return y
        if _drop_threshold(q, dropout) is not None:
            return _eager_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale, dropout=dropout,
                                    head_mask=None, upcast=upcast)[0]
    dtype = v.dtype
    with OneThread(q, k):
        if upcast:  # fp32 whatever autocast would pick (as eager_attention): the model's mask is built in fp32
            with torch.autocast(q.device.type, enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                   attn_mask=mask.float() if mask is not None else None,
                                                   dropout_p=dropout, is_causal=is_causal and mask is None,
                                                   scale=scale)
            return y.to(dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                           is_causal=is_causal and mask is None, scale=scale)
    return y.to(dtype)


def _flash():
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        raise ImportError(
            "attn_implementation='flash_attention_2' needs the flash-attn package and a CUDA GPU: "
            "pip install flash-attn --no-build-isolation (or use 'sdpa')"
        ) from None
    return flash_attn_func, flash_attn_varlen_func


def check_flash_available() -> None:
    _flash()
    if not torch.cuda.is_available():
        raise ImportError("attn_implementation='flash_attention_2' needs a CUDA GPU; none is available")


def flash_attention(q, k, v, *, padding_mask, is_causal: bool, scale: float, dropout: float):
    """FlashAttention-2 on (B, nh, T|S, hs) fp16/bf16 tensors; ``padding_mask`` (B, S) of 1/0 or None.

    With padding the rows are packed (varlen) so that padding costs nothing and never mixes into real tokens.
    flash-attn aligns the causal mask to the bottom right, which is what decoding with a cache needs.
    """
    flash_attn_func, flash_attn_varlen_func = _flash()
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash_attention_2 runs in float16 or bfloat16, the model is {q.dtype}")
    B, nh, T, hs = q.shape
    S = k.shape[-2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, T|S, nh, hs)
    if padding_mask is None or bool(padding_mask.all()):
        y = flash_attn_func(q, k, v, dropout_p=dropout, softmax_scale=scale, causal=is_causal)
        return y.transpose(1, 2)
    keep_k = padding_mask.bool()  # (B, S)
    keep_q = keep_k[:, S - T:]  # (B, T): queries are the last T positions
    lens_q, lens_k = keep_q.sum(-1, dtype=torch.int32), keep_k.sum(-1, dtype=torch.int32)
    cu_q = F.pad(lens_q.cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(lens_k.cumsum(0, dtype=torch.int32), (1, 0))
    y_packed = flash_attn_varlen_func(q[keep_q], k[keep_k], v[keep_k], cu_q, cu_k, int(lens_q.max()),
                                      int(lens_k.max()), dropout_p=dropout, softmax_scale=scale, causal=is_causal)
    y = q.new_zeros(B, T, nh, hs)
    y[keep_q] = y_packed
    return y.transpose(1, 2)
