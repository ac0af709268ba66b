"""Ground-truth recurrences: one token at a time, exactly as the math is written.

Slow on purpose (a Python loop over T) and correct in any dtype, float64 included; every other
backend is tested against these. Half and bfloat16 inputs accumulate the state in float32.
"""

from __future__ import annotations

import torch

from hybridnas.kernels.chunk import accumulation_dtype


def _decay(g: torch.Tensor | None, gk: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """alpha_t broadcastable to the state [B, H, K, V], or None when there is no decay."""
    if g is not None and gk is not None:
        raise ValueError("g and gk: pass at most one decay (per-head g or per-channel gk)")
    if g is not None:
        return g[:, t].exp()[..., None, None]  # [B, H, 1, 1]
    if gk is not None:
        return gk[:, t].exp()[..., None]  # [B, H, K, 1]
    return None


def _recurrence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor | None, g: torch.Tensor | None,
    gk: torch.Tensor | None, scale: float | None, initial_state: torch.Tensor | None, output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both primitives, token by token: the state decays, then takes k_t times the write, which is
    v_t (beta None: gated linear attention) or the delta beta_t (v_t - S'^T k_t)."""
    B, _, H, K = q.shape
    acc = accumulation_dtype(q.dtype)
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    dtype = q.dtype
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    beta = None if beta is None else beta.to(acc)
    g = None if g is None else g.to(acc)
    gk = None if gk is None else gk.to(acc)
    outs = []
    for t in range(q.shape[1]):
        alpha = _decay(g, gk, t)
        if alpha is not None:
            S = alpha * S
        kt = k[:, t, :, :, None]  # [B, H, K, 1]
        if beta is None:
            write = v[:, t]  # [B, H, V]
        else:
            recalled = (kt * S).sum(-2)  # S'^T k_t: [B, H, V]
            write = beta[:, t, :, None] * (v[:, t] - recalled)  # [B, H, V]
        S = S + kt * write[:, :, None, :]  # [B, H, K, V]
        outs.append(scale * (q[:, t, :, :, None] * S).sum(-2))  # [B, H, V]
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o.to(dtype), (S if output_final_state else None)


def naive_gated_linear_attention(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    g: torch.Tensor | None = None,  # [B, T, H] log decay per head
    gk: torch.Tensor | None = None,  # [B, T, H, K] log decay per key channel
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S_t = diag(alpha_t) S_{t-1} + k_t v_t^T ;  o_t = scale * S_t^T q_t."""
    return _recurrence(q, k, v, None, g, gk, scale, initial_state, output_final_state)


def naive_gated_delta_rule(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    beta: torch.Tensor,  # [B, T, H]
    g: torch.Tensor | None = None,  # [B, T, H]
    gk: torch.Tensor | None = None,  # [B, T, H, K]
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S' = diag(alpha_t) S_{t-1} ; S_t = S' + beta_t k_t (v_t - S'^T k_t)^T ; o_t = scale * S_t^T q_t."""
    return _recurrence(q, k, v, beta, g, gk, scale, initial_state, output_final_state)
