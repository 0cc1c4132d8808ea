"""The few numerical decisions every framework shares, in one place.

Each framework's model reads these instead of choosing its own, so the three implementations cannot drift apart.
"""

from __future__ import annotations

# Additive mask value for masked attention scores. Finite on purpose: with -inf a fully masked row (a left-padding
# query, or a query that sees only padding) softmaxes to NaN, which then leaks into every later layer through the
# residual stream. transformers uses torch.finfo(dtype).min for the same reason; a per-dtype minimum is chosen by
# each framework from this policy.
MASK_VALUE_POLICY = "dtype_min"

# GPT-2 was trained with the tanh approximation of GELU (OpenAI gpt-2/src/model.py: 0.5*x*(1+tanh(sqrt(2/pi)*(x +
# 0.044715*x^3)))). torch.nn.GELU() defaults to the exact erf form, so each framework must ask for tanh explicitly.
GELU_TANH_COEFF = 0.044715

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

# LayerNorm epsilon comes from config.layer_norm_epsilon (1e-5 for every GPT-2 checkpoint). Framework defaults
# differ (torch 1e-5, Flax 1e-6, Keras 1e-3), so each framework passes the config value explicitly.
DEFAULT_LAYER_NORM_EPSILON = 1e-5
