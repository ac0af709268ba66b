"""Causal depthwise 1-d convolution (the short convolution on q/k/v and the short_conv mixer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ShiftedTaps(torch.autograd.Function):
    """y[:, t] = sum_j xp[:, t + j] * weight[:, j] for a padded input xp [B, T + W - 1, D], weight [D, W].

    W shifted multiply-adds in the [B, T, D] layout, forward and backward. On CPU, at the widths and
    sizes of a short conv, this is faster than F.conv1d, which needs the input transposed to
    [B, D, T] and returns a transposed (non-contiguous) output that later reshapes copy again.
    """

    @staticmethod
    def forward(ctx, xp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        W = weight.shape[1]
        T = xp.shape[1] - (W - 1)
        taps = weight.t().contiguous()  # [W, D]: each tap a contiguous row
        y = xp[:, W - 1 :] * taps[W - 1]
        for j in range(W - 1):
            y.addcmul_(xp[:, j : j + T], taps[j])
        ctx.save_for_backward(xp, weight)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        xp, weight = ctx.saved_tensors
        taps = weight.t().contiguous()  # from the saved weight, so that a double backward sees it
        W, T = taps.shape[0], gy.shape[1]
        gxp = gw = None
        if ctx.needs_input_grad[0]:
            gxp = gy.new_zeros(xp.shape)
            for j in range(W):
                gxp[:, j : j + T].addcmul_(gy, taps[j])
        if ctx.needs_input_grad[1]:
            gw = torch.stack([(gy * xp[:, j : j + T]).sum((0, 1)) for j in range(W)], 1)  # [D, W]
        return gxp, gw


def causal_conv1d(
    x: torch.Tensor,  # [B, T, D]
    weight: torch.Tensor,  # [D, W]; weight[:, W - 1] multiplies the current token
    state: torch.Tensor | None = None,  # [B, W - 1, D] the last W - 1 inputs before x (zeros if None)
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y_t = sum_j weight[:, j] * x_{t - (W - 1) + j}, per channel; no bias, no activation.

    Returns y [B, T, D] and, when output_final_state, the last W - 1 inputs [B, W - 1, D], which
    continue the sequence exactly when passed back as `state` (decoding one token at a time).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x: expected a 3-d tensor [B, T, D], got {getattr(x, 'shape', type(x).__name__)}")
    B, T, D = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != D or weight.shape[1] < 1:
        shape = list(getattr(weight, "shape", []))
        raise ValueError(f"weight: expected shape [D, W] with D = {D}, W >= 1, got {shape}")
    W = weight.shape[1]
    if state is None:
        state = x.new_zeros(B, W - 1, D)
    elif tuple(state.shape) != (B, W - 1, D):
        raise ValueError(f"state: expected shape [B, W - 1, D] = {[B, W - 1, D]}, got {list(state.shape)}")
    xp = torch.cat([state.to(x.dtype), x], dim=1)  # [B, W - 1 + T, D]
    if x.device.type == "cpu":
        y = _ShiftedTaps.apply(xp, weight.to(x.dtype))  # [B, T, D]
    else:  # one cuDNN kernel
        y = F.conv1d(xp.transpose(1, 2), weight.to(x.dtype)[:, None, :], groups=D).transpose(1, 2)
    final = xp[:, xp.shape[1] - (W - 1) :].clone() if output_final_state else None  # no view pinning xp
    return y, final
