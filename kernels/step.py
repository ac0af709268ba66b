"""Single-token state updates for decoding: the recurrences advanced by one step.

The input state is never modified; the new state is returned. Half/bfloat16 inputs are computed
with a float32 state, and the output comes back in q's dtype.
"""

from __future__ import annotations

import torch

from hybridnas.kernels.chunk import accumulation_dtype, no_autocast


def _check_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    beta: torch.Tensor | None,
    g: torch.Tensor | None,
    gk: torch.Tensor | None,
) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"q: expected a 3-d tensor [B, H, K], got {getattr(q, 'shape', type(q).__name__)}")
    B, H, K = q.shape
    if not isinstance(v, torch.Tensor) or v.dim() != 3 or tuple(v.shape[:2]) != (B, H):
        raise ValueError(f"v: expected shape [B, H, V] with B, H = {B}, {H}, got {list(getattr(v, 'shape', []))}")
    V = v.shape[-1]
    if g is not None and gk is not None:
        raise ValueError("g and gk: pass at most one decay (per-head g [B, H] or per-channel gk [B, H, K])")
    expected = {  # name -> (tensor, shape, layout)
        "k": (k, (B, H, K), "[B, H, K]"),
        "state": (state, (B, H, K, V), "[B, H, K, V]"),
        "beta": (beta, (B, H), "[B, H]"),
        "g": (g, (B, H), "[B, H]"),
        "gk": (gk, (B, H, K), "[B, H, K]"),
    }
    for name, (x, shape, layout) in expected.items():
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape {layout} = {list(shape)}, got {list(x.shape)}")


def _decayed(state: torch.Tensor, g: torch.Tensor | None, gk: torch.Tensor | None) -> torch.Tensor:
    """diag(alpha) S for the state [B, H, K, V]."""
    if g is not None:
        return state * g.to(state.dtype).exp()[..., None, None]
    if gk is not None:
        return state * gk.to(state.dtype).exp()[..., None]
    return state


def gated_linear_attention_step(
    q: torch.Tensor,  # [B, H, K]
    k: torch.Tensor,  # [B, H, K]
    v: torch.Tensor,  # [B, H, V]
    state: torch.Tensor,  # [B, H, K, V]
    g: torch.Tensor | None = None,  # [B, H] log decay per head
    gk: torch.Tensor | None = None,  # [B, H, K] log decay per key channel
    scale: float | None = None,  # defaults to K ** -0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of S = diag(alpha) S + k v^T ; o = scale * S^T q. Returns (o [B, H, V], new state)."""
    _check_step(q, k, v, state, None, g, gk)
    acc = accumulation_dtype(torch.promote_types(q.dtype, state.dtype))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with no_autocast(q):  # the state stays in float32 under bf16 autocast
        S = _decayed(state.to(acc), g, gk)
        S = torch.addcmul(S, k.to(acc)[..., :, None], v.to(acc)[..., None, :])  # [B, H, K, V]
        o = torch.einsum("bhk,bhkv->bhv", q.to(acc) * scale, S)
    return o.to(q.dtype), S


def gated_delta_rule_step(
    q: torch.Tensor,  # [B, H, K]
    k: torch.Tensor,  # [B, H, K]
    v: torch.Tensor,  # [B, H, V]
    beta: torch.Tensor,  # [B, H]
    state: torch.Tensor,  # [B, H, K, V]
    g: torch.Tensor | None = None,  # [B, H]
    gk: torch.Tensor | None = None,  # [B, H, K]
    scale: float | None = None,  # defaults to K ** -0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of S' = diag(alpha) S ; S = S' + beta k (v - S'^T k)^T ; o = scale * S^T q."""
    if beta is None:
        raise ValueError("beta: required, a tensor [B, H]")
    _check_step(q, k, v, state, beta, g, gk)
    acc = accumulation_dtype(torch.promote_types(q.dtype, state.dtype))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with no_autocast(q):  # the state stays in float32 under bf16 autocast
        k = k.to(acc)
        S = _decayed(state.to(acc), g, gk)
        recalled = torch.einsum("bhk,bhkv->bhv", k, S)  # S'^T k
        delta = beta.to(acc)[..., None] * (v.to(acc) - recalled)  # [B, H, V]
        S = torch.addcmul(S, k[..., :, None], delta[..., None, :])
        o = torch.einsum("bhk,bhkv->bhv", q.to(acc) * scale, S)
    return o.to(q.dtype), S
