"""Triton gated linear attention: S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t.

Chunked forward (per chunk of 64 tokens: intra-chunk attention with tl.dot, inter-chunk state
passing) and backward in a torch.autograd.Function; a one-token decode step. Decays come in log space:
`g` per head [B, T, H] or `gk` per key channel [B, T, H, K] (or neither). States are float32.

Forward:  cumsum(decay) -> [per-channel: pair matrix A] -> fwd_h (sequential over chunks, parallel
over value blocks x batch*heads) -> fwd_o (parallel over chunks).
Backward: recompute the forward states -> bwd_dh (sequential, reverse) -> bwd_dv (parallel) and
gla_bwd (parallel over key slices x chunks: dq, dk, dg for no / per-head decay) -> [per-channel:
pair bwd for the intra-chunk part of dq, dk and the decay gradient].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hybridnas.kernels.triton_common import (
    DECAY_CHANNEL,
    DECAY_HEAD,
    DECAY_NONE,
    ChunkConfig,
    _bwd_dqk,
    _step,
    chunk_bwd_dh,
    chunk_bwd_dqk,
    chunk_bwd_dv,
    chunk_fwd_h,
    chunk_fwd_o,
    chunk_local_cumsum,
    chunk_pair_bwd,
    chunk_pair_fwd,
    chunked,
    decode_step,
    output_grads,
    save_inputs,
)

__all__ = [
    "triton_gated_linear_attention",
    "triton_gated_linear_attention_step",
]


@triton.jit
def gla_bwd_kernel(
    Q, Kp, Vp, GC, DU, HS, DHS, DO, DQ, DK, DW, DG, DA, DBP, DLAST, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, NV: tl.constexpr, DECAY: tl.constexpr, DT: tl.constexpr,
):
    """_bwd_dqk for gated linear attention: values v, no WY transform (DU and DW unused)."""
    _bwd_dqk(Q, Kp, Vp, GC, DU, HS, DHS, DO, DQ, DK, DW, DG, DA, DBP, DLAST, scale, T,
                  H, K, V, BT, BK, BV, NV, DECAY, False, DT)


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor | None,
    initial_state: torch.Tensor | None, cfg: ChunkConfig,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(cumulative decay, pair matrix A, states entering each chunk, final state)."""
    gcum = chunk_local_cumsum(decay, cfg) if decay is not None else None
    aqk = chunk_pair_fwd(q, k, gcum, cfg, delta=False)[0] if cfg.decay == DECAY_CHANNEL else None
    hs, ht, _ = chunk_fwd_h(k, v, gcum, initial_state, cfg)
    return gcum, aqk, hs, ht


class _ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, decay, scale, initial_state, cfg):  # type: ignore[override]
        gcum, aqk, hs, ht = _forward(q, k, v, decay, initial_state, cfg)
        o = chunk_fwd_o(q, k, v, gcum, aqk, hs, scale, cfg, q.dtype)
        save_inputs(ctx, cfg, scale, q, k, v, decay, initial_state)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):  # type: ignore[override]
        q, k, v, decay, initial_state = ctx.saved_tensors
        cfg: ChunkConfig = ctx.cfg
        do, dht = output_grads(do, dht, v)
        scale = ctx.scale
        gcum, aqk, hs, _ = _forward(q, k, v, decay, initial_state, cfg)
        dhs, dh0, _ = chunk_bwd_dh(q, k, gcum, aqk, do, dht, initial_state, scale, cfg)
        dv = chunk_bwd_dv(q, k, gcum, aqk, dhs, do, scale, cfg, v.dtype)
        dq, dk, dg, _, da, dbp, dlast = chunk_bwd_dqk(gla_bwd_kernel, q, k, v, gcum, hs, dhs, do, None, scale, cfg)
        if cfg.decay == DECAY_HEAD:
            dg = dg.sum(0).to(decay.dtype)
        if cfg.decay == DECAY_CHANNEL:
            dq, dk, dg = chunk_pair_bwd(q, k, gcum, da, None, dq, dk, dbp, dlast, cfg, decay.dtype)
        if cfg.decay == DECAY_NONE:
            dg = None
        return dq, dk, dv, None, dg, None, dh0, None


def triton_gated_linear_attention(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    g: torch.Tensor | None = None,  # [B, T, H] log decay per head (<= 0)
    gk: torch.Tensor | None = None,  # [B, T, H, K] log decay per key channel (<= 0)
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated linear attention; returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V]
    float32 or None). Differentiable w.r.t. q, k, v, g / gk and initial_state."""
    return chunked(_ChunkGLAFunction, q, k, v, None, g, gk, scale, initial_state, output_final_state)


# --------------------------------------------------------------------------------------------------
# decode step


@triton.jit
def gla_step_kernel(
    Q, Kp, Vp, BETA, G, S, O, SN, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
):
    """_step for gated linear attention (BETA unused): S = alpha S + k v^T ; o = scale S^T q."""
    _step(Q, Kp, Vp, BETA, G, S, O, SN, scale, K, V, BK, BV, DECAY, False)


def triton_gated_linear_attention_step(
    q: torch.Tensor,  # [B, H, K]
    k: torch.Tensor,  # [B, H, K]
    v: torch.Tensor,  # [B, H, V]
    state: torch.Tensor,  # [B, H, K, V]
    g: torch.Tensor | None = None,  # [B, H]
    gk: torch.Tensor | None = None,  # [B, H, K]
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token: (o [B, H, V] in q's dtype, new state in the state's dtype). Inference only."""
    return decode_step(gla_step_kernel, q, k, v, None, state, g, gk, scale)
