"""hybridnas.kernels: the token-mixer ops.

Two recurrence primitives over a per-head state S [K, V] (gated linear attention and the gated
delta rule), each with a ground-truth loop ("naive"), a chunk-parallel PyTorch form ("chunk"), a
Triton form ("triton", GPU) and a one-token decode step; plus causal softmax / sliding-window
attention and a causal depthwise convolution. Tensors are [B, T, H, D]; decays are log-space.
"""

from __future__ import annotations

from hybridnas.kernels.attention import softmax_attention
from hybridnas.kernels.conv import causal_conv1d
from hybridnas.kernels.dispatch import (
    BACKENDS,
    available_backends,
    gated_delta_rule,
    gated_linear_attention,
)
from hybridnas.kernels.step import gated_delta_rule_step, gated_linear_attention_step

__all__ = [
    "BACKENDS",
    "available_backends",
    "causal_conv1d",
    "gated_delta_rule",
    "gated_delta_rule_step",
    "gated_linear_attention",
    "gated_linear_attention_step",
    "softmax_attention",
]
