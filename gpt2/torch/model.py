"""GPT-2 in PyTorch: Attention, MLP, Block, GPT2Model (the trunk). Heads are in heads.py.

Attribute paths are the checkpoint names (``wte``, ``wpe``, ``h[i].ln_1``, ``h[i].attn.c_attn``, ...). Projections
are ``nn.Linear`` (weight [out, in]); checkpoints store HF Conv1D weights [in, out], so weights.py transposes them.
In memory the projections and ``wte`` (the tied lm_head) keep the checkpoints' order, [in, out] (``_in_out``).

>>> from gpt2.torch import GPT2Model
>>> model = GPT2Model.from_pretrained("my-gpt2")        # any checkpoint format
>>> out = model(input_ids, attention_mask=mask)          # out.last_hidden_state: (B, T, C)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module
from torch.utils.checkpoint import checkpoint

from ..common.outputs import BaseModelOutputWithPastAndCrossAttentions
from .attention import (eager_attention, flash_attention, mask_value, scores_dtype, sdpa_attention,
                        train_dropout, transformed)
from .cache import KVCache
from .pretrained import GPT2PreTrainedModel


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, the tanh form (OpenAI gpt-2/src/model.py); torch's default is the exact erf form."""
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


# Module-level functions only (no lambdas): a model keeps its activation, and a model must pickle.
ACTIVATION_FUNCTIONS = {
    "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu_fast": gelu_tanh, "gelu": F.gelu,
    "quick_gelu": quick_gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid, "linear": identity,
}


def activation(name: str):
    """The activation named by config.activation_function (common/numerics.py lists them)."""
    return ACTIVATION_FUNCTIONS[name]


def _dropout(layer: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``: in training mode ``train_dropout`` (attention.py: faster on the CPU), or the layer's own call
    when it has hooks or is not an exact nn.Dropout; in eval mode, where it returns ``x``, not called: three module
    calls per layer and decoding step saved (~3 us each on the CPU; forward hooks on a Dropout in eval mode do not
    run)."""
    if not layer.training:
        return x
    if type(layer) is not nn.Dropout or layer.inplace or _hooked(layer):
        return layer(x)
    return train_dropout(x, layer.p) if layer.p > 0 else x


def _in_out(layer: nn.Module) -> nn.Module:
    """``layer`` (nn.Linear or the token table) with its weight's shape unchanged, [out, in], but its memory in
    [in, out] order (column-major), as GPT-2's checkpoints store it. Decoding multiplies one row x (1, in) by every
    matrix, and ``x @ W`` over [in, out] memory streams the weight with vector adds, where [out, in] rows need one
    dot product each: on the CPU the whole step's matrices take ~1.4x longer in [out, in] order
    (benchmarks/RESULTS.md, "the floor"). Larger products (prefill, training) run at the same speed either way;
    .to(), to_empty(), copies, pickles and loading (param.copy_) keep the layout."""
    layer.weight = nn.Parameter(layer.weight.detach().t().contiguous().t(), requires_grad=layer.weight.requires_grad)
    return layer


# Rows up to which a product without autograd on the CPU is split over the intra-op threads (project): measured on
# 2 threads over the gpt2 shape's 48 block matrices, 0.61x addmm's time at 1 row, 0.58x at 2, 0.86x at 16 and 32,
# even at 64 and slower beyond (benchmarks/RESULTS.md, issue 9). Measured with the x86 wheels' MKL, whose few-row
# products take one thread; other BLAS builds (Accelerate, OpenBLAS) keep the layer's call.
SPLIT_ROWS = 32 if torch.backends.mkl.is_available() else 0


def _hooked(layer: nn.Module) -> bool:
    """Whether calling ``layer`` would run a hook (its own or a global one, forward or backward). Written out: it
    runs for every product of a decoding step."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                or layer._backward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks or _torch_module._global_backward_hooks
                or _torch_module._global_backward_pre_hooks)


def _split_parts(n: int) -> int:
    """How many slabs of an input dimension of ``n`` a split product uses: the most, up to the intra-op threads,
    that divide ``n``."""
    k = torch.get_num_threads()
    while k > 1 and n % k:
        k -= 1
    return k


def _onednn_linear():
    """torch's oneDNN linear (``mkldnn::_linear_pointwise``, the op Inductor's CPU code calls for linear layers) on
    x86 builds with MKL, or None: elsewhere it is absent or unmeasured. It is an internal op, so it is first tried on
    a small product: a torch whose op is missing or takes other arguments keeps the layer's own call."""
    if not (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available()):
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w, b = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3), torch.arange(4.0)
        if torch.equal(op(x, w, b, "none", [], ""), torch.addmm(b, x, w.t())):
            return op
    except (AttributeError, RuntimeError, TypeError):
        pass
    return None


_ONEDNN_LINEAR = _onednn_linear()
# The least multiply-adds (rows x in x out) of a training product for which oneDNN's linear is used: its fixed cost
# per call (~10 us) makes it slower than MKL below ~2^22 and about even at 2^23 (2 threads, forward and input
# gradient, rows 64-1024 x C 64-768, benchmarks/RESULTS.md, issue 13); gpt2 (124M) at 1024 rows does 2^29-2^35.
TRAINING_PRODUCT_MACS = 1 << 23


class _TrainingProduct(torch.autograd.Function):
    """``x @ W^T + b`` with autograd for training on the CPU in fp32, W row-major [out, in] (``gpt2 train``'s
    layout): the forward product and the input's gradient run through oneDNN's linear, the weight's gradient is
    torch's ``mm`` (MKL). On this machine's AMD EPYC (Zen 4), with the x86 wheels, MKL's sgemm ran the gpt2 shape's
    training products at 115-200 GFLOP/s (115 for the lm head's forward), oneDNN at 180-215; for the weight's
    gradient oneDNN is no faster, its wrapper copying both transposed operands. An update of gpt2 (124M), batch 4 x
    256, took 0.87-0.96x the time with it, in alternating updates in one process (benchmarks/RESULTS.md, issue 13).
    The sums run in another order than MKL's: the same values within float rounding. Under ``create_graph`` the
    backward uses differentiable products, so double backward works."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])  # [rows, in]
        ctx.save_for_backward(x2, weight)
        ctx.with_bias = bias is not None
        y = _ONEDNN_LINEAR(x2, weight, bias, "none", [], "")  # [rows, out]
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # [rows, out]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph: the oneDNN op has no derivative
                dx = dy2 @ weight  # [rows, in]
            else:
                dx = _ONEDNN_LINEAR(dy2, weight.t(), None, "none", [], "")  # [rows, in]
            dx = dx.view(*dy.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = dy2.t() @ x2  # [out, in]
        if ctx.with_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, faster on the CPU for an exact ``nn.Linear`` in fp32 without hooks, autocast or
    torch.compile, in two cases (elsewhere the layer's own call: CUDA, bf16 / fp16, a module put in the layer's place
    such as LoRA, other BLAS builds):

    - **Decoding** (no autograd, at most SPLIT_ROWS rows, [in, out] memory, ``_in_out``): the product split over
      the intra-op threads. torch's CPU matmul multiplies a few rows by a matrix on one thread, which streams the
      weight at one core's memory bandwidth (a decoding step is that and little else). Cut into k slabs of the
      input dimension (each contiguous in [in, out] memory) it runs as one bmm, a slab per thread, and the k partial
      products are summed: a gpt2-shape decoding step's matrices in ~0.65x the time of ``x @ W`` on 2 threads.
    - **Training** (autograd, a row-major [out, in] weight, as ``gpt2 train`` keeps them, at least
      TRAINING_PRODUCT_MACS multiply-adds): ``_TrainingProduct``, oneDNN's linear for the forward and the input's
      gradient.

    The sums are taken in another order than addmm's: the same values within float rounding. torch only: TF and
    Flax call their layers directly, because under XLA the same split measured no faster than XLA's own one-row
    dot (benchmarks/RESULTS.md, issue 10)."""
    weight = layer.weight
    if (type(layer) is not nn.Linear or x.device.type != "cpu" or x.dtype != torch.float32
            or weight.dtype != torch.float32 or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")
            or _hooked(layer)):
        return layer(x)
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        if (_ONEDNN_LINEAR is None or not weight.is_contiguous() or x.numel() * weight.shape[0] < TRAINING_PRODUCT_MACS
                or x.numel() == 0 or transformed()):
            return layer(x)
        return _TrainingProduct.apply(x, weight, layer.bias)
    C = x.shape[-1]
    rows, k = x.numel() // C, _split_parts(C)
    w = weight.t()  # [in, out]
    if rows > SPLIT_ROWS or k < 2 or not w.is_contiguous():
        return layer(x)
    y = torch.bmm(x.reshape(rows, k, C // k).transpose(0, 1), w.view(k, C // k, w.shape[1])).sum(0)  # [rows, out]
    if layer.bias is not None:
        y += layer.bias
    return y.view(*x.shape[:-1], w.shape[1])


class Attention(nn.Module):
    """Multi-head self-attention (or cross-attention: queries from x, keys/values from the encoder)."""

    def __init__(self, config, layer_idx: int, is_cross_attention: bool = False) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head, self.head_dim = config.n_head, C // config.n_head
        self.layer_idx, self.is_cross_attention = layer_idx, is_cross_attention
        if is_cross_attention:
            self.c_attn = _in_out(nn.Linear(C, 2 * C))  # keys and values, from the encoder
            self.q_attn = _in_out(nn.Linear(C, C))
        else:
            self.c_attn = _in_out(nn.Linear(C, 3 * C))
        self.c_proj = _in_out(nn.Linear(C, C))
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.scale = (1 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0) / (
            layer_idx + 1 if config.scale_attn_by_inverse_layer_idx else 1)
        self.upcast = config.reorder_and_upcast_attn
        self.implementation = "sdpa"

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x, *, mask=None, is_causal=False, cache: KVCache | None = None, head_mask=None,
                encoder_hidden_states=None, padding_mask=None, output_attentions=False):
        """(output (B, T, C), probabilities or None). The cache decides where this step's keys and values go
        (cache.py): appended after what it holds, or written at the fixed step's position."""
        B, T, C = x.shape
        if self.is_cross_attention:
            q = self._heads(project(self.q_attn, x))  # (B, nh, T, hs)
            held = cache.cross(self.layer_idx) if cache is not None else None
            if held is None:  # the encoder's keys and values: computed once, then re-used from the cache
                k, v = project(self.c_attn, encoder_hidden_states).split(C, dim=2)
                k, v = self._heads(k), self._heads(v)  # (B, nh, S, hs)
                if cache is not None:
                    cache.set_cross(self.layer_idx, k, v)
            else:
                k, v = held
        else:  # the views that split + _heads give, in 3 ops rather than 9 (each a few us on a decoding step)
            qkv = project(self.c_attn, x).view(B, T, 3, self.n_head, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S, hs)
        dropout = self.attn_dropout.p if self.training else 0.0
        probs = None
        if output_attentions or head_mask is not None or self.implementation == "eager":
            y, probs = eager_attention(q, k, v, mask=mask, is_causal=is_causal, scale=self.scale, dropout=dropout,
                                       head_mask=head_mask, upcast=self.upcast)
        # flash-attn takes padding, not an arbitrary additive mask: a caller's 4-D mask goes to SDPA
        elif self.implementation == "flash_attention_2" and (mask is None or padding_mask is not None):
            y = flash_attention(q, k, v, padding_mask=padding_mask,
                                is_causal=is_causal or (not self.is_cross_attention and T > 1), scale=self.scale,
                                dropout=dropout)
        else:
            y = sdpa_attention(q, k, v, mask=mask, is_causal=is_causal, scale=self.scale, dropout=dropout,
                               upcast=self.upcast)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return _dropout(self.resid_dropout, project(self.c_proj, y)), probs


class MLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.c_fc = _in_out(nn.Linear(config.n_embd, config.inner_dim))
        self.c_proj = _in_out(nn.Linear(config.inner_dim, config.n_embd))
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(self.dropout, project(self.c_proj, self.act(project(self.c_fc, x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)) [+ crossattention(ln_cross_attn(x))] + mlp(ln_2(x))."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(C, eps=eps)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(C, eps=eps)
        if config.add_cross_attention:
            self.crossattention = Attention(config, layer_idx, is_cross_attention=True)
            self.ln_cross_attn = nn.LayerNorm(C, eps=eps)
        self.mlp = MLP(config)

    def forward(self, x, *, mask=None, is_causal=False, cache=None, head_mask=None, encoder_hidden_states=None,
                encoder_mask=None, padding_mask=None, encoder_padding_mask=None, output_attentions=False):
        """(x (B, T, C), self-attention probabilities, cross-attention probabilities); probabilities are None unless
        asked for. Cross-attention runs when ``encoder_hidden_states`` is given (GPT2Model.forward checks that the
        block has it)."""
        a, self_probs = self.attn(self.ln_1(x), mask=mask, is_causal=is_causal, cache=cache, head_mask=head_mask,
                                  padding_mask=padding_mask, output_attentions=output_attentions)
        x = x + a
        cross_probs = None
        if encoder_hidden_states is not None:
            a, cross_probs = self.crossattention(self.ln_cross_attn(x), mask=encoder_mask, cache=cache,
                                                head_mask=head_mask, encoder_hidden_states=encoder_hidden_states,
                                                padding_mask=encoder_padding_mask,
                                                output_attentions=output_attentions)
            x = x + a
        return x + self.mlp(self.ln_2(x)), self_probs, cross_probs


class GPT2Model(GPT2PreTrainedModel):
    """The GPT-2 trunk: embeddings, n_layer blocks, final LayerNorm. transformers' GPT2Model forward arguments.

    ``forward`` is the boundary: it checks the inputs on the host, embeds them (``embed``), builds the masks and
    resolves the cache. ``core`` runs the blocks and ``ln_f`` without a host sync or a Python branch on tensor
    values; every path runs it: ``forward`` and the fixed-shape decoding step of generate() (compiled.py), which
    captures it in a CUDA graph or compiles it.
    """

    def __init__(self, config, attn_implementation: str | None = None) -> None:
        super().__init__(config)
        C = config.n_embd
        self.wte = _in_out(nn.Embedding(config.vocab_size, C))  # read as the tied lm_head's matrix when decoding
        self.wpe = nn.Embedding(config.n_positions, C)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init(attn_implementation)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
                encoder_attention_mask=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation in backward cannot append to a cache twice
        cache = self._cache_from(past_key_values, use_cache)
        past = cache.get_seq_length() if cache is not None else 0
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if encoder_hidden_states is not None and not config.add_cross_attention:
            raise ValueError("encoder_hidden_states given, but the model has no cross-attention "
                             "(config.add_cross_attention=False)")
        # (B, num_choices, T) inputs (GPT2DoubleHeadsModel) run as (B * num_choices, T) and are shaped back.
        input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        input_ids, token_type_ids, position_ids = _flat(input_ids), _flat(token_type_ids), _flat(position_ids)
        if attention_mask is not None and attention_mask.dim() == 3:
            attention_mask = _flat(attention_mask)
        if inputs_embeds is not None and inputs_embeds.dim() > 3:
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        B, T = self._check_inputs(input_ids, inputs_embeds, past, attention_mask, position_ids, token_type_ids)
        device = self.wte.weight.device if inputs_embeds is None else inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=device).unsqueeze(0)  # (1, T)
        x = self.embed(input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                       inputs_embeds=inputs_embeds)

        # masks in the dtype the scores are added in (fp32 under reorder_and_upcast_attn), never the activations'
        dtype = scores_dtype(x.dtype, config.reorder_and_upcast_attn, device.type)
        mask, is_causal, padding_mask = self._self_attention_mask(attention_mask, B, T, past, dtype, device)
        encoder_mask = encoder_padding_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_padding_mask = encoder_attention_mask.view(encoder_hidden_states.shape[0], -1)
            encoder_mask = (1.0 - encoder_padding_mask[:, None, None, :].to(dtype)) * mask_value(dtype)

        x, hidden_states, attentions, cross_attentions = self.core(
            x, mask=mask, is_causal=is_causal, cache=cache, head_masks=self._head_masks(head_mask, x.dtype),
            encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask, padding_mask=padding_mask,
            encoder_padding_mask=encoder_padding_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        if cache is not None:
            cache.advance(T)
        x = x.view(*input_shape, x.shape[-1])
        if output_hidden_states:
            hidden_states = hidden_states[:-1] + (x,)  # the last one in the caller's (B, num_choices, T, C) shape
        out = BaseModelOutputWithPastAndCrossAttentions(x, cache, hidden_states, attentions, cross_attentions)
        return out if return_dict else out.to_tuple()

    def embed(self, input_ids=None, *, position_ids, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        """Token + position (+ token type) embeddings, after dropout: (B, T, C). Unchecked: forward checks."""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        T = x.shape[1]
        x = x + self.wpe(position_ids.view(-1, T))
        if token_type_ids is not None:  # GPT-2 embeds token types with the token table, as transformers does
            x = x + self.wte(token_type_ids.view(-1, T))
        return _dropout(self.drop, x)

    def core(self, x, *, mask=None, is_causal=False, cache: KVCache | None = None, head_masks=None,
             encoder_hidden_states=None, encoder_mask=None, padding_mask=None, encoder_padding_mask=None,
             output_attentions=False, output_hidden_states=False):
        """The blocks and ``ln_f`` over embedded ``x`` (B, T, C); returns (x, hidden states, attentions,
        cross-attentions), the last three tuples or None.

        ``mask``: additive (B|1, 1, T, S) in the scores' dtype, or None with ``is_causal``; ``cache`` takes each
        layer's keys and values by its own rule (cache.py). Nothing here reads a tensor's value on the host, so
        the fixed-shape step can capture or compile it; the cache's length is advanced by the caller.
        """
        hidden_states = () if output_hidden_states else None
        attentions = () if output_attentions else None
        cross_attentions = () if output_attentions and self.config.add_cross_attention else None
        checkpointed = self.gradient_checkpointing and self.training
        for i, block in enumerate(self.h):
            if output_hidden_states:
                hidden_states += (x,)
            kwargs = dict(mask=mask, is_causal=is_causal, cache=cache,
                          head_mask=head_masks[i] if head_masks is not None else None,
                          encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                          padding_mask=padding_mask, encoder_padding_mask=encoder_padding_mask,
                          output_attentions=output_attentions)
            if checkpointed:
                x, self_probs, cross_probs = checkpoint(block, x, use_reentrant=False, **kwargs)
            else:
                x, self_probs, cross_probs = block(x, **kwargs)
            if output_attentions:
                attentions += (self_probs,)
                if cross_attentions is not None:
                    cross_attentions += (cross_probs,)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden_states += (x,)
        return x, hidden_states, attentions, cross_attentions

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _cache_from(self, past_key_values, use_cache: bool) -> KVCache | None:
        if past_key_values is None:
            return KVCache() if use_cache else None
        if isinstance(past_key_values, KVCache):
            return past_key_values
        if isinstance(past_key_values, (tuple, list)):
            return KVCache.from_legacy_cache(past_key_values)
        raise TypeError(f"past_key_values must be a KVCache or transformers' tuple format, got "
                        f"{type(past_key_values).__name__}")

    def _check_inputs(self, input_ids, inputs_embeds, past: int, attention_mask, position_ids, token_type_ids):
        """Validate once, at the boundary; returns (B, T)."""
        V, P = self.config.vocab_size, self.config.n_positions
        if input_ids is not None:
            if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
            _check_range(input_ids, V, "input_ids", "the vocabulary")
            B, T = input_ids.shape
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.n_embd:
            raise ValueError(f"inputs_embeds must be (B, T, {self.config.n_embd}), got {tuple(inputs_embeds.shape)}")
        else:
            B, T = inputs_embeds.shape[:2]
        if position_ids is None and past + T > P:
            raise ValueError(f"{past + T} positions ({past} cached + {T} new) exceed n_positions={P}: GPT-2 has "
                             f"no position embedding beyond {P - 1}")
        if position_ids is not None:
            if position_ids.shape[-1] != T:
                raise ValueError(f"position_ids has length {position_ids.shape[-1]}, input has {T}")
            _check_range(position_ids, P, "position_ids", f"the position table (n_positions={P})")
        if token_type_ids is not None:
            if token_type_ids.shape[-1] != T:
                raise ValueError(f"token_type_ids has length {token_type_ids.shape[-1]}, input has {T}")
            _check_range(token_type_ids, V, "token_type_ids", "the vocabulary")
        if attention_mask is not None and attention_mask.dim() == 2 and tuple(attention_mask.shape) != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, cached + "
                             f"new tokens) = ({B}, {past + T})")
        return B, T

    def _self_attention_mask(self, attention_mask, B, T, past, dtype, device):
        """(additive mask or None, is_causal, 2-D padding mask or None) for the self-attention of this step."""
        S = past + T
        if attention_mask is not None and attention_mask.dim() == 4:  # a ready additive mask, as transformers
            # narrowed (an fp32 mask for fp16 scores) its minimum would become -inf: keep it finite (numerics.py)
            return attention_mask.to(dtype).clamp(min=mask_value(dtype)), False, None
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if attention_mask is None and (T == 1 or past == 0):
            return None, T > 1, None  # one new token sees everything; a fresh sequence is plainly causal
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)  # (T, S): query i sees keys <= past+i
        mask = torch.zeros(T, S, dtype=dtype, device=device).masked_fill(~causal, mask_value(dtype))  # (T, S)
        if attention_mask is not None:
            # Padding keys get half the mask value: a real query sees neither, but a padding query (all its keys
            # padding) spreads evenly over the keys before it, exactly as transformers' (causal, then padding)
            # masks give. Finite either way: no NaN.
            padding = ~attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            mask = torch.where(padding & causal, mask_value(dtype) / 2, mask)  # (B, 1, T, S)
        return mask, False, attention_mask

    def _head_masks(self, head_mask, dtype):
        """transformers' head_mask ((n_head,) or (n_layer, n_head); 1 keeps a head) -> per layer (1, nh, 1, 1)."""
        L, H = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * L
        if head_mask.shape == (H,):
            head_mask = head_mask.expand(L, H)
        if head_mask.shape != (L, H):
            raise ValueError(f"head_mask must have shape ({H},) or ({L}, {H}), got {tuple(head_mask.shape)}")
        return [m.to(dtype).view(1, H, 1, 1) for m in head_mask]


def _flat(t):
    """(..., T) -> (N, T): GPT2DoubleHeadsModel's (B, num_choices, T) inputs run as one batch."""
    return t.reshape(-1, t.shape[-1]) if t is not None and t.dim() > 2 else t


def _check_range(ids: torch.Tensor, size: int, name: str, what: str) -> None:
    """Embedding gathers crash (CPU) or read garbage (CUDA) on bad ids: refuse them with the offending value."""
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds {bad}, outside {what} (0..{size - 1})")
