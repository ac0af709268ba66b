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
    CHUNK,
    DECAY_CHANNEL,
    DECAY_HEAD,
    DECAY_NONE,
    MAX_K,
    MAX_V,
    ChunkConfig,
    _block,
    _chunk_rows,
    _dot,
    check_device,
    chunk_bwd_dh,
    chunk_bwd_dq_dk,
    chunk_bwd_dqk,
    chunk_bwd_dv,
    chunk_fwd_h,
    chunk_fwd_o,
    chunk_local_cumsum,
    chunk_pair_bwd,
    chunk_pair_fwd,
    decay_mode,
    empty,
    empty_like,
    make_config,
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
    """chunk_bwd_dqk for gated linear attention: values v, no WY transform (DU and DW unused)."""
    chunk_bwd_dqk(Q, Kp, Vp, GC, DU, HS, DHS, DO, DQ, DK, DW, DG, DA, DBP, DLAST, scale, T,
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
    def forward(ctx, q, k, v, decay, scale, initial_state, mode):  # type: ignore[override]
        cfg = make_config(q, k, v, decay if mode == 1 else None, decay if mode == 2 else None, None,
                          initial_state)
        gcum, aqk, hs, ht = _forward(q, k, v, decay, initial_state, cfg)
        o = chunk_fwd_o(q, k, v, gcum, aqk, hs, scale, cfg, q.dtype)
        ctx.save_for_backward(q, k, v, decay, initial_state)
        ctx.cfg = cfg
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # an unused final state gives dht = None, not zeros
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):  # type: ignore[override]
        q, k, v, decay, initial_state = ctx.saved_tensors
        cfg: ChunkConfig = ctx.cfg
        scale: float = ctx.scale
        do = do.contiguous() if do is not None else torch.zeros(v.shape, dtype=v.dtype, device=v.device)
        dht = dht.contiguous() if dht is not None else None
        gcum, aqk, hs, _ = _forward(q, k, v, decay, initial_state, cfg)
        dhs, dh0, _ = chunk_bwd_dh(q, k, gcum, aqk, do, dht, initial_state, scale, cfg)
        dv = chunk_bwd_dv(q, k, gcum, aqk, dhs, do, scale, cfg, v.dtype)
        dq, dk, dg, _, da, dbp, dlast = chunk_bwd_dq_dk(gla_bwd_kernel, q, k, v, gcum, hs, dhs, do, None, scale, cfg)
        if cfg.decay == DECAY_HEAD:
            dg = dg.sum(0).to(decay.dtype)
        if cfg.decay == DECAY_CHANNEL:
            dq, dk, dg = chunk_pair_bwd(q, k, gcum, da, None, dq, dk, dbp, dlast, cfg, decay.dtype)
        if cfg.decay == DECAY_NONE:
            dg = None
        return dq, dk, dv, dg, None, dh0, None


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
    mode, decay = decay_mode(g, gk)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    decay = decay.contiguous() if decay is not None else None
    initial_state = initial_state.contiguous() if initial_state is not None else None
    o, ht = _ChunkGLAFunction.apply(q, k, v, decay, scale, initial_state, mode)
    return o, (ht if output_final_state else None)


# --------------------------------------------------------------------------------------------------
# decode step


@triton.jit
def gla_step_kernel(
    Q, Kp, Vp, G, S, O, SN, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
):
    """One token for one (value block, batch*head): S = alpha S + k v^T ; o = scale S^T q."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    o_k, m_k = _block(0, BK, K)
    o_v, m_v = _block(i_v, BV, V)
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    b_s = tl.load(S + p_kv, mask=m_kv, other=0.0).to(tl.float32)  # [BK, BV]
    b_q = tl.load(Q + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_k = tl.load(Kp + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_v = tl.load(Vp + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    if DECAY == 1:
        b_s = b_s * tl.exp(tl.load(G + i_bh).to(tl.float32))
    elif DECAY == 2:
        b_s = b_s * tl.exp(tl.load(G + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32))[:, None]
    b_s += b_k[:, None] * b_v[None, :]
    b_o = scale * tl.sum(b_s * b_q[:, None], axis=0)  # [BV]
    tl.store(SN + p_kv, b_s.to(SN.dtype.element_ty), mask=m_kv)
    tl.store(O + i_bh * V + o_v, b_o.to(O.dtype.element_ty), mask=m_v)


def check_step_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, g: torch.Tensor | None,
    gk: torch.Tensor | None, beta: torch.Tensor | None,
) -> tuple[int, torch.Tensor | None]:
    """Validate one-token inputs (q, k [B, H, K], v [B, H, V], state [B, H, K, V]); returns the decay."""
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, H, K]; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    B, H, K = q.shape
    if v.dim() != 3 or v.shape[:2] != (B, H):
        raise ValueError(f"v must be [B, H, V] = [{B}, {H}, V]; got {tuple(v.shape)}")
    V = v.shape[-1]
    if state.shape != (B, H, K, V):
        raise ValueError(f"state must be [B, H, K, V] = [{B}, {H}, {K}, {V}]; got {tuple(state.shape)}")
    if g is not None and g.shape != (B, H):
        raise ValueError(f"g must be [B, H] = [{B}, {H}]; got {tuple(g.shape)}")
    if gk is not None and gk.shape != (B, H, K):
        raise ValueError(f"gk must be [B, H, K] = [{B}, {H}, {K}]; got {tuple(gk.shape)}")
    if beta is not None and beta.shape != (B, H):
        raise ValueError(f"beta must be [B, H] = [{B}, {H}]; got {tuple(beta.shape)}")
    if not (1 <= K <= MAX_K and 1 <= V <= MAX_V):
        raise ValueError(f"head dims K={K}, V={V}: the triton backend supports K in [1, {MAX_K}], V in [1, {MAX_V}]")
    tensors = (q, k, v, state, g, gk, beta)
    check_device(*tensors)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise NotImplementedError(
            "the triton decode step has no backward; call it under torch.no_grad(), or train with "
            "the chunked functions"
        )
    return decay_mode(g, gk)


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
    mode, decay = check_step_inputs(q, k, v, state, g, gk, None)
    B, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else float(scale)
    q, k, v, state = q.contiguous(), k.contiguous(), v.contiguous(), state.contiguous()
    decay = decay.contiguous() if decay is not None else state
    o = empty((B, H, V), q.dtype, q.device)
    new_state = empty_like(state)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    gla_step_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, decay, state, o, new_state, scale, K=K, V=V, BK=BK, BV=BV, DECAY=mode, num_warps=4,
    )
    return o, new_state
