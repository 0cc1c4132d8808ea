"""The few numerical decisions every framework shares, in one place.

Each framework's model reads these instead of choosing its own, so the three implementations cannot drift apart.
"""

from __future__ import annotations

import numpy as np

# The mask rule (attention_bias below is its reference; every framework's mask builder is tested against it).
# Masked scores get the most negative FINITE value of the scores' dtype (torch.finfo(dtype).min, tf's dtype.min,
# jnp.finfo(dtype).min), never -inf: with -inf a fully masked row (a left-padding query, or a query that sees only
# padding) softmaxes to NaN, which then leaks into every later layer through the residual stream.
#
# "The dtype" is the dtype of the SCORES the mask is added to, not of the activations: under
# reorder_and_upcast_attn the scores are fp32, and fp16's minimum (-65504) is then an ordinary number next to
# scores of 1e5, so a future token would leak into earlier positions. Padding keys get half the value, so that a
# padding query (all its visible keys padding) still ranks its padding keys above the future ones and stays causal.
#
# GPT-2 was trained with the tanh approximation of GELU (OpenAI gpt-2/src/model.py: 0.5*x*(1+tanh(sqrt(2/pi)*(x +
# 0.044715*x^3)))). torch.nn.GELU() defaults to the exact erf form, so each framework asks for tanh explicitly.
#
# LayerNorm epsilon comes from config.layer_norm_epsilon (1e-5 for every GPT-2 checkpoint). Framework defaults
# differ (torch 1e-5, Flax 1e-6, Keras 1e-3), so each framework passes the config value explicitly.

# Activation names accepted in GPT2Config.activation_function, as transformers spells them. Every framework
# implements each of these; the config rejects anything else up front instead of failing deep inside a model.
ACTIVATIONS = {
    "gelu_new": "GELU, tanh approximation (GPT-2's own)",
    "gelu_pytorch_tanh": "GELU, tanh approximation (the same function as gelu_new)",
    "gelu_fast": "GELU, tanh approximation with a rearranged polynomial",
    "gelu": "GELU, exact (erf)",
    "quick_gelu": "x * sigmoid(1.702 x)",
    "relu": "max(x, 0)",
    "silu": "x * sigmoid(x)",
    "swish": "x * sigmoid(x) (the same function as silu)",
    "tanh": "tanh(x)",
    "sigmoid": "sigmoid(x)",
    "linear": "identity",
}


def _finfo(dtype):
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # numpy's finfo does not know ml_dtypes' bfloat16
        import ml_dtypes

        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def attention_bias(T: int, past: int = 0, attention_mask=None, dtype="float32") -> np.ndarray:
    """The numpy reference of the self-attention mask every framework builds: (B or 1, 1, T, past + T), added to the
    scores (computed in ``dtype``). Query i (at position past + i) sees keys j <= past + i: those get 0, later keys
    the dtype's most negative finite value, and visible keys that are padding (``attention_mask`` (B, past + T) of
    1/0) half of it."""
    S = past + T
    low = _finfo(dtype).min
    causal = np.tril(np.ones((T, S), dtype=bool), past)  # (T, S)
    bias = np.where(causal, 0.0, low)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        padding = ~np.asarray(attention_mask).astype(bool)[:, None, None, :]  # (B, 1, 1, S)
        bias = np.where(padding & causal, low / 2, bias)  # (B, 1, T, S)
    return bias.astype(dtype)


def cast_overflow_error(name: str, max_abs: float, source, target) -> ValueError:
    """The one message for weights a dtype cast turns into inf (numpy in convert, torch in from_pretrained)."""
    return ValueError(f"tensor {name!r} has values beyond {target}'s range (max |x| = {max_abs:.6g}, {target} holds "
                      f"up to {float(_finfo(target).max):.6g}): the cast from {source} to {target} makes them inf; "
                      f"keep {source} (or use bfloat16, which has float32's range)")


def cast_checked(name: str, array: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    """``array`` cast to ``dtype``, refusing values the cast makes inf (a ValueError, cast_overflow_error); returns
    (cast array, how many nonzero values the cast rounded to zero). float16 overflows from |x| >= 65520 (its max
    65504 plus half a unit in the last place, IEEE 754 round to nearest) and flushes |x| < 2**-25 to zero."""
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array, 0
    with np.errstate(over="ignore"):  # overflow is reported below, by name
        out = array.astype(dtype)
    finite = np.isfinite(out)
    if not finite.all() and np.isfinite(array).all():
        raise cast_overflow_error(name, float(np.abs(array.astype(np.float64)).max()), array.dtype.name, dtype.name)
    underflow = int(np.count_nonzero((out == 0) & (array != 0)))
    return out, underflow
