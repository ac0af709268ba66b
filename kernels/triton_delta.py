"""Triton gated delta rule:
S' = diag(alpha_t) S_{t-1};  S_t = S' + beta_t k_t (v_t - S'^T k_t)^T;  o_t = scale * S_t^T q_t.

Chunked with the WY / UT transform. Inside a chunk with entering state h and cumulative log decay b:
  L[i, j] = beta_i sum_k k_ik k_jk e^{b_ik - b_jk} (j < i),   M = (I + L)^{-1}   (forward substitution)
  W = M (beta k e^b),  U0 = M (beta v),  U = U0 - W h          (pseudo-values, U depends on h)
  o = scale (q e^b) h + scale A U,  A[i, j] = sum_k q_ik k_jk e^{b_ik - b_jk} (j <= i)
  h_out = e^{b_last} h + (k e^{b_last - b})^T U
so after the WY step the chunk is gated linear attention with values U. Forward and backward run in a
torch.autograd.Function (gradients for q, k, v, beta, g / gk, initial_state); states are float32.

Forward:  cumsum(decay) -> [per-channel: pair matrices A, L] -> wy (M, W, U0 per chunk) -> fwd_h
(sequential, forms U) -> fwd_o.
Backward: recompute -> bwd_dh (sequential, reverse; forms dU) -> bwd_dqk (parallel over key slices x
chunks: everything outside the WY transform) -> bwd_wy (parallel over chunks: dv, dbeta, the WY and
L parts of dk) -> [per-channel: pair bwd for the intra-chunk parts and the decay gradient].
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
    ChunkConfig,
    _block,
    _bwd_dqk,
    _chunk_rows,
    _dot,
    _step,
    chunk_bwd_dh,
    chunk_bwd_dqk,
    chunk_fwd_h,
    chunk_fwd_o,
    chunk_local_cumsum,
    chunk_pair_bwd,
    chunk_pair_fwd,
    chunked,
    decode_step,
    empty,
    empty_like,
    output_grads,
    save_inputs,
)

__all__ = [
    "triton_gated_delta_rule",
    "triton_gated_delta_rule_step",
]


@triton.jit
def delta_wy_kernel(
    Kp, Vp, BETA, GC, AKK, M, W, U0, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, NV: tl.constexpr, DECAY: tl.constexpr, DT: tl.constexpr,
):
    """One chunk: M = (I + L)^{-1}, W = M (beta k e^b), U0 = M (beta v)."""
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)
    o_k, m_k = _block(0, BK, K)
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = tok[:, None] * K + o_k[None, :]
    p_mat = (i_bh.to(tl.int64) * T + rows)[:, None] * BT + o_bt[None, :]
    strict = (o_bt[:, None] > o_bt[None, :]) & m_t[:, None]
    b_beta = tl.load(BETA + tok, mask=m_t, other=0.0).to(tl.float32)  # [BT]
    if DECAY == 2:
        b_l = tl.load(AKK + p_mat, mask=m_t[:, None], other=0.0)
    else:
        b_k = tl.load(Kp + p_tk, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
        b_l = _dot(b_k, tl.trans(b_k), DT)
        if DECAY == 1:
            b_g = tl.load(GC + tok, mask=m_t, other=0.0)
            b_l = b_l * tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], 0.0))
        b_l = tl.where(strict, b_l, 0.0)
    b_l = b_l * b_beta[:, None]
    # forward substitution, one row at a time: M_i = e_i - sum_{j<i} L_ij M_j
    b_m = tl.where(o_bt[:, None] == o_bt[None, :], 1.0, 0.0)
    for i in range(1, BT):
        l_i = tl.sum(tl.where(o_bt[:, None] == i, b_l, 0.0), axis=0)  # [BT] row i of L
        m_i = tl.sum(l_i[:, None] * b_m, axis=0)  # [BT]
        b_m = tl.where(o_bt[:, None] == i, b_m - m_i[None, :], b_m)
    b_k = tl.load(Kp + p_tk, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
    if DECAY == 1:
        b_kb = b_k * tl.exp(tl.load(GC + tok, mask=m_t, other=0.0))[:, None]
    elif DECAY == 2:
        b_kb = b_k * tl.exp(tl.load(GC + p_tk, mask=m_tk, other=0.0))
    else:
        b_kb = b_k
    tl.store(M + p_mat, b_m, mask=m_t[:, None])
    tl.store(W + p_tk, _dot(b_m, b_kb * b_beta[:, None], DT), mask=m_tk)
    for i_v in range(0, NV):
        o_v, m_v = _block(i_v, BV, V)
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = tok[:, None] * V + o_v[None, :]
        b_v = tl.load(Vp + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        tl.store(U0 + p_tv, _dot(b_m, b_v * b_beta[:, None], DT), mask=m_tv)


@triton.jit
def delta_bwd_dqk_kernel(
    Q, Kp, U, GC, DU, HS, DHS, DO, DQ, DKP, DW, DGP, DA, DBP, DLAST, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, NV: tl.constexpr, DECAY: tl.constexpr, DT: tl.constexpr,
):
    """_bwd_dqk for the delta rule: everything that does not go through the WY transform, with
    the pseudo-values U as values; the k-gradient (DKP) and per-head dg shares (DGP) are partials."""
    _bwd_dqk(Q, Kp, U, GC, DU, HS, DHS, DO, DQ, DKP, DW, DGP, DA, DBP, DLAST, scale, T,
                  H, K, V, BT, BK, BV, NV, DECAY, True, DT)


@triton.jit
def delta_bwd_wy_kernel(
    Kp, Vp, BETA, GC, AKK, M, DU, DW, DKP, DGP, DV, DBETA, DK, DG, DL, DBP, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, NK: tl.constexpr, NV: tl.constexpr, DECAY: tl.constexpr, DT: tl.constexpr,
):
    """One chunk, through the WY transform (U0 = M beta v, W = M beta k e^b, M = (I + L)^{-1}):
    dv and dbeta (final), the k-gradient of W and of L added to DKP's partial; dk and dg final for
    no / per-head decay, or (per-channel) DKP and DBP updated in place and beta * dL to DL for
    chunk_pair_bwd. Loops over value blocks and BK-wide key slices."""
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)
    p_mat = (i_bh.to(tl.int64) * T + rows)[:, None] * BT + o_bt[None, :]
    strict = (o_bt[:, None] > o_bt[None, :]) & m_t[:, None]
    b_beta = tl.load(BETA + tok, mask=m_t, other=0.0).to(tl.float32)  # [BT]
    b_m = tl.load(M + p_mat, mask=m_t[:, None], other=0.0)  # [BT, BT]
    b_dm = tl.zeros([BT, BT], dtype=tl.float32)  # gradient of M
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, NV):
        o_v, m_v = _block(i_v, BV, V)
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = tok[:, None] * V + o_v[None, :]
        b_v = tl.load(Vp + p_tv, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
        b_du = tl.load(DU + p_tv, mask=m_tv, other=0.0)
        b_dbv = _dot(tl.trans(b_m), b_du, DT)  # gradient of beta v
        tl.store(DV + p_tv, (b_dbv * b_beta[:, None]).to(DV.dtype.element_ty), mask=m_tv)
        b_dbeta += tl.sum(b_dbv * b_v, axis=1)
        b_dm += _dot(b_du, tl.trans(b_v * b_beta[:, None]), DT)
    if DECAY == 1:
        b_g = tl.load(GC + tok, mask=m_t, other=0.0)  # [BT]
    b_lraw = tl.zeros([BT, BT], dtype=tl.float32)  # k k^T (no / per-head decay)
    for i_k in range(0, NK):
        o_k, m_k = _block(i_k, BK, K)
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = tok[:, None] * K + o_k[None, :]
        b_k = tl.load(Kp + p_tk, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
        b_dw = tl.load(DW + p_tk, mask=m_tk, other=0.0)
        if DECAY == 0:
            b_kb = b_k
        elif DECAY == 1:
            b_kb = b_k * tl.exp(b_g)[:, None]
        else:
            b_kb = b_k * tl.exp(tl.load(GC + p_tk, mask=m_tk, other=0.0))
        b_dm += _dot(b_dw, tl.trans(b_kb * b_beta[:, None]), DT)
        b_dbeta += tl.sum(_dot(tl.trans(b_m), b_dw, DT) * b_kb, axis=1)
        if DECAY != 2:
            b_lraw += _dot(b_k, tl.trans(b_k), DT)
    # dL = -M^T dM M^T on the strict lower triangle
    b_dl = tl.where(strict, -_dot(_dot(tl.trans(b_m), b_dm, DT), tl.trans(b_m), DT), 0.0)
    if DECAY == 2:
        b_lraw = tl.load(AKK + p_mat, mask=m_t[:, None], other=0.0)
    elif DECAY == 1:
        e_pair = tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], 0.0))
        b_lraw = b_lraw * e_pair
    b_lraw = tl.where(strict, b_lraw, 0.0)
    b_dbeta += tl.sum(b_dl * b_lraw, axis=1)
    tl.store(DBETA + tok, b_dbeta.to(DBETA.dtype.element_ty), mask=m_t)
    b_dl = b_dl * b_beta[:, None]  # gradient of the beta-free pair matrix
    if DECAY == 2:
        tl.store(DL + p_mat, b_dl, mask=m_t[:, None])
    if DECAY == 1:
        b_dl = b_dl * e_pair
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(0, NK):
        o_k, m_k = _block(i_k, BK, K)
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = tok[:, None] * K + o_k[None, :]
        b_k = tl.load(Kp + p_tk, mask=m_tk, other=0.0).to(tl.float32)
        b_dw = tl.load(DW + p_tk, mask=m_tk, other=0.0)
        b_dkw = _dot(tl.trans(b_m), b_dw, DT) * b_beta[:, None]  # gradient of k e^b
        if DECAY == 1:
            b_dkw = b_dkw * tl.exp(b_g)[:, None]
        elif DECAY == 2:
            b_dkw = b_dkw * tl.exp(tl.load(GC + p_tk, mask=m_tk, other=0.0))
        b_dk = tl.load(DKP + p_tk, mask=m_tk, other=0.0) + b_dkw
        if DECAY == 2:
            tl.store(DKP + p_tk, b_dk, mask=m_tk)
            tl.store(DBP + p_tk, tl.load(DBP + p_tk, mask=m_tk, other=0.0) + b_k * b_dkw, mask=m_tk)
        else:
            b_dkx = _dot(b_dl, b_k, DT)  # k as the row of L
            b_dky = _dot(tl.trans(b_dl), b_k, DT)  # k as the column of L
            tl.store(DK + p_tk, (b_dk + b_dkx + b_dky).to(DK.dtype.element_ty), mask=m_tk)
            if DECAY == 1:
                b_db += tl.sum(b_k * (b_dkw + b_dkx - b_dky), axis=1)
    if DECAY == 1:
        b_dg = tl.cumsum(b_db, axis=0, reverse=True)
        for i_k in range(0, NK):
            b_dg += tl.load(DGP + i_k * (tl.num_programs(1) * T) + tok, mask=m_t, other=0.0)
        tl.store(DG + tok, b_dg.to(DG.dtype.element_ty), mask=m_t)


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor | None,
    initial_state: torch.Tensor | None, cfg: ChunkConfig,
) -> dict[str, torch.Tensor | None]:
    """Chunk quantities shared by forward and backward (all float32)."""
    f32 = dict(dtype=torch.float32, device=q.device)
    gcum = chunk_local_cumsum(decay, cfg) if decay is not None else None
    aqk = akk = None
    if cfg.decay == DECAY_CHANNEL:
        aqk, akk = chunk_pair_fwd(q, k, gcum, cfg, delta=True)
    m = empty((cfg.B * cfg.H, cfg.T, CHUNK), **f32)
    w = empty((cfg.B, cfg.T, cfg.H, cfg.K), **f32)
    u0 = empty((cfg.B, cfg.T, cfg.H, cfg.V), **f32)
    dummy = m
    delta_wy_kernel[(cfg.NT, cfg.B * cfg.H)](
        k, v, beta, gcum if gcum is not None else dummy, akk if akk is not None else dummy,
        m, w, u0, cfg.T,
        H=cfg.H, K=cfg.K, V=cfg.V, BT=CHUNK, BK=cfg.BK, BV=cfg.BV, NV=cfg.NV, DECAY=cfg.decay,
        DT=cfg.dot_dtype, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    hs, ht, u = chunk_fwd_h(k, None, gcum, initial_state, cfg, w=w, u0=u0)
    return dict(gcum=gcum, aqk=aqk, akk=akk, m=m, w=w, hs=hs, ht=ht, u=u)


class _ChunkDeltaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, decay, scale, initial_state, cfg):  # type: ignore[override]
        fw = _forward(q, k, v, beta, decay, initial_state, cfg)
        o = chunk_fwd_o(q, k, fw["u"], fw["gcum"], fw["aqk"], fw["hs"], scale, cfg, q.dtype)
        save_inputs(ctx, cfg, scale, q, k, v, beta, decay, initial_state)
        return o, fw["ht"]

    @staticmethod
    def backward(ctx, do, dht):  # type: ignore[override]
        q, k, v, beta, decay, initial_state = ctx.saved_tensors
        cfg: ChunkConfig = ctx.cfg
        do, dht = output_grads(do, dht, v)
        scale = ctx.scale
        fw = _forward(q, k, v, beta, decay, initial_state, cfg)
        gcum, aqk = fw["gcum"], fw["aqk"]
        dhs, dh0, du = chunk_bwd_dh(q, k, gcum, aqk, do, dht, initial_state, scale, cfg, w=fw["w"])
        dq, dkp, dgp, dw, da, dbp, dlast = chunk_bwd_dqk(
            delta_bwd_dqk_kernel, q, k, fw["u"], gcum, fw["hs"], dhs, do, du, scale, cfg
        )
        dummy = dhs
        channel = cfg.decay == DECAY_CHANNEL
        dl = empty((cfg.B * cfg.H, cfg.T, CHUNK), torch.float32, q.device) if channel else dummy
        gc = gcum if gcum is not None else dummy
        dv = empty_like(v)
        dbeta = empty_like(beta)
        dk = dkp if channel else empty_like(k)
        dg = empty_like(decay) if cfg.decay == DECAY_HEAD else dummy
        delta_bwd_wy_kernel[(cfg.NT, cfg.B * cfg.H)](
            k, v, beta, gc, fw["akk"] if channel else dummy, fw["m"], du, dw, dkp, dgp, dv, dbeta, dk,
            dg, dl, dbp, cfg.T,
            H=cfg.H, K=cfg.K, V=cfg.V, BT=CHUNK, BK=cfg.BKS, BV=cfg.BV, NK=cfg.NK, NV=cfg.NV,
            DECAY=cfg.decay, DT=cfg.dot_dtype, num_warps=cfg.split_warps, num_stages=cfg.num_stages,
        )
        if channel:
            dq, dk, dg = chunk_pair_bwd(q, k, gcum, da, dl, dq, dkp, dbp, dlast, cfg, decay.dtype)
        if cfg.decay == DECAY_NONE:
            dg = None
        return dq, dk, dv, dbeta, dg, None, dh0, None


def triton_gated_delta_rule(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    beta: torch.Tensor,  # [B, T, H]
    g: torch.Tensor | None = None,  # [B, T, H] log decay per head (<= 0)
    gk: torch.Tensor | None = None,  # [B, T, H, K] log decay per key channel (<= 0)
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule; returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V]
    float32 or None). Differentiable w.r.t. q, k, v, beta, g / gk and initial_state.

    Keys are expected L2-normalised and beta in [0, 1] (as in DeltaNet); the intra-chunk inverse
    (I + L)^{-1} is then well conditioned."""
    return chunked(_ChunkDeltaFunction, q, k, v, beta, g, gk, scale, initial_state, output_final_state)


# --------------------------------------------------------------------------------------------------
# decode step


@triton.jit
def delta_step_kernel(
    Q, Kp, Vp, BETA, G, S, O, SN, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
):
    """_step for the delta rule: S' = alpha S; S = S' + beta k (v - S'^T k)^T ; o = scale S^T q."""
    _step(Q, Kp, Vp, BETA, G, S, O, SN, scale, K, V, BK, BV, DECAY, True)


def triton_gated_delta_rule_step(
    q: torch.Tensor,  # [B, H, K]
    k: torch.Tensor,  # [B, H, K]
    v: torch.Tensor,  # [B, H, V]
    beta: torch.Tensor,  # [B, H]
    state: torch.Tensor,  # [B, H, K, V]
    g: torch.Tensor | None = None,  # [B, H]
    gk: torch.Tensor | None = None,  # [B, H, K]
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token: (o [B, H, V] in q's dtype, new state in the state's dtype). Inference only."""
    return decode_step(delta_step_kernel, q, k, v, beta, state, g, gk, scale)
