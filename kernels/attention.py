"""Causal softmax attention, full or sliding-window, through PyTorch's scaled_dot_product_attention.

Full causal attention uses SDPA's `is_causal` (FlashAttention on GPU). A window uses an explicit
boolean mask, which every SDPA backend accepts on CPU and GPU alike (FlexAttention has no CPU
backward, so the mask keeps one code path that trains everywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(t_q: int, t_k: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[t_q, t_k] bool, True where query i may see key j.

    Queries are the last t_q of the t_k positions (so t_q < t_k means cached keys come first);
    query i sits at absolute position p = t_k - t_q + i and sees keys p - window < j <= p.
    """
    pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]  # [t_q, 1]
    j = torch.arange(t_k, device=device)[None, :]  # [1, t_k]
    mask = j <= pos
    if window is not None:
        mask = mask & (j > pos - window)
    return mask


def softmax_attention(
    q: torch.Tensor,  # [B, T, H, D]
    k: torch.Tensor,  # [B, Tk, H, D], Tk >= T (Tk = T for a plain sequence)
    v: torch.Tensor,  # [B, Tk, H, Dv]
    scale: float | None = None,  # defaults to D ** -0.5
    window: int | None = None,  # tokens each query sees, itself included; None = all before it
) -> torch.Tensor:
    """Causal softmax attention; returns [B, T, H, Dv] in q's dtype."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name}: expected a 4-d tensor [B, T, H, D], got {getattr(x, 'shape', type(x).__name__)}")
    B, T, H, D = q.shape
    if k.shape[0] != B or k.shape[2] != H or k.shape[3] != D:
        raise ValueError(f"k: expected shape [B, Tk, H, D] with B, H, D = {B}, {H}, {D}, got {list(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v: expected shape [B, Tk, H, Dv] with B, Tk, H = {list(k.shape[:3])}, got {list(v.shape)}")
    if k.shape[1] < T:
        raise ValueError(f"k: needs at least as many positions as q (Tk >= T = {T}), got Tk = {k.shape[1]}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window: expected None or an integer >= 1, got {window!r}")
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    Tk = k.shape[1]
    if (window is None or window >= Tk) and Tk == T:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:
        mask = causal_mask(T, Tk, window, q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    return o.transpose(1, 2).contiguous()  # [B, T, H, Dv]
