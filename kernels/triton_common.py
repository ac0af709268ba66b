"""Shared pieces of the Triton backend: input checks, launch config, and the chunk kernels that the
gated linear attention and the gated delta rule have in common.

Layout conventions used by every kernel here:
  * inputs keep the public layout [B, T, H, D] (contiguous); a token (b, t, h) sits at row
    (b * T + t) * H + h of a [B*T*H, D] view;
  * `gcum` is the chunk-local inclusive cumulative sum of the log decay, float32, same layout as the
    decay ([B, T, H] for a per-head g, [B, T, H, K] for a per-channel gk);
  * chunk-local matrices (attention A, delta-rule L, its inverse M, their gradients) are float32
    [B*H, T, BT]: row t holds the BT columns of t's chunk;
  * per-chunk states are float32 [B*H, NT, K, V], holding the state *entering* each chunk (forward)
    or the gradient w.r.t. the state *leaving* each chunk (backward).

Numerical safety: decays are only ever exponentiated as differences b_i - b_j with i after j (or a
decay measured from a reference row that lies between them), which are <= 0 because the cumulative
log decay is non-increasing. Masked lanes are forced to exponent 0 before `tl.exp`.

Kernels run under the Triton interpreter when TRITON_INTERPRET=1 is set before triton is imported,
which is how their correctness is checked on machines without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# The dispatcher owns the input contract and the limits "auto" routes by; it never imports triton.
from hybridnas.kernels.dispatch import TRITON_DTYPES, TRITON_MAX_K, TRITON_MAX_V, check_recurrence_inputs

__all__ = [
    "CHUNK",
    "SUBCHUNK",
    "MAX_K",
    "MAX_V",
    "DECAY_NONE",
    "DECAY_HEAD",
    "DECAY_CHANNEL",
    "ChunkConfig",
    "interpreting",
    "empty",
    "empty_like",
    "check_device",
    "decay_mode",
    "make_config",
    "chunked",
    "save_inputs",
    "output_grads",
    "chunk_local_cumsum",
    "chunk_pair_fwd",
    "chunk_fwd_h",
    "chunk_fwd_o",
    "chunk_bwd_dh",
    "chunk_bwd_dv",
    "chunk_bwd_dqk",
    "chunk_pair_bwd",
    "check_step_inputs",
    "decode_step",
]

CHUNK = 64  # tokens per chunk (BT): the intra-chunk attention block is BT x BT
SUBCHUNK = 16  # rows per sub-chunk (BC) for per-channel decays; tl.dot needs >= 16 per dim
# Key dim limit: several kernels hold all of K in one block. V is always blocked; larger is untested.
MAX_K, MAX_V = TRITON_MAX_K, TRITON_MAX_V

DECAY_NONE = 0  # no decay (alpha = 1)
DECAY_HEAD = 1  # scalar log decay per head, g [B, T, H]
DECAY_CHANNEL = 2  # log decay per key channel, gk [B, T, H, K]

# Debug switch: allocate every output and scratch buffer filled with NaN instead of uninitialised, so
# that an element a kernel fails to write shows up in the results (the tests turn it on).
NAN_FILL = os.environ.get("HYBRIDNAS_TRITON_NAN_FILL", "0") == "1"

SUPPORTED_DTYPES = TRITON_DTYPES
_DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_device(*tensors: torch.Tensor | None) -> None:
    """Triton kernels need CUDA tensors unless the interpreter is active."""
    if interpreting():
        return
    for t in tensors:
        if t is not None and t.device.type != "cuda":
            raise RuntimeError(
                f"triton kernels need CUDA tensors, got a tensor on {t.device}; use backend='chunk' "
                "on CPU, or set TRITON_INTERPRET=1 before triton is imported to run the kernels "
                "through the Triton interpreter"
            )


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Buffer for a kernel to fill (NaN-filled when NAN_FILL is set)."""
    if NAN_FILL:
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def empty_like(t: torch.Tensor) -> torch.Tensor:
    return empty(t.shape, t.dtype, t.device)


def decay_mode(g: torch.Tensor | None, gk: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
    """(mode, decay tensor): which of g / gk is given; they are mutually exclusive."""
    if g is not None and gk is not None:
        raise ValueError("g and gk: pass at most one decay (per-head g or per-channel gk)")
    if g is not None:
        return DECAY_HEAD, g
    if gk is not None:
        return DECAY_CHANNEL, gk
    return DECAY_NONE, None


@dataclass(frozen=True)
class ChunkConfig:
    B: int  # batch size
    T: int  # sequence length (any value >= 1; the last chunk is masked)
    H: int  # heads
    K: int  # key / query head dim
    V: int  # value head dim
    BK: int  # K rounded up to a power of two >= 16 (whole K in one block)
    BKS: int  # K block of the kernels that split K across programs (<= 64)
    NK: int  # number of BKS blocks
    BV: int  # value block of the state kernels and backward value loops, power of two in [16, 32]
    BVO: int  # value block of the output kernel, power of two in [16, 64] (it recomputes q k^T per block)
    NT: int  # number of chunks
    NV: int  # number of BV blocks
    NVO: int  # number of BVO blocks
    decay: int  # DECAY_NONE / DECAY_HEAD / DECAY_CHANNEL
    dot_dtype: tl.dtype  # operand dtype of tl.dot: the input dtype (float32 runs as 3xTF32)
    num_warps: int  # warps of the K x V-tile kernels: 8 once K reaches 128 (register pressure)
    split_warps: int  # warps of the K-split kernels: 8 for 64-wide key slices
    num_stages: int  # software pipelining depth; 1 for float32 operands to stay in shared memory


def make_config(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    gk: torch.Tensor | None,
    beta: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> ChunkConfig:
    """Validate chunk-form inputs and derive the launch configuration."""
    # The shape contract is the dispatcher's; only the Triton kernels' own limits are checked here.
    check_recurrence_inputs(q, k, v, beta, g, gk, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if not (1 <= K <= MAX_K and 1 <= V <= MAX_V):
        raise ValueError(f"head dims K={K}, V={V}: the triton backend supports K in [1, {MAX_K}], V in [1, {MAX_V}]")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}.dtype {t.dtype}: the triton backend supports float32, float16, bfloat16")
    mode, _ = decay_mode(g, gk)
    check_device(q, k, v, g, gk, beta, initial_state)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(32, max(16, triton.next_power_of_2(V)))
    BVO = min(64, max(16, triton.next_power_of_2(V)))
    return ChunkConfig(
        B=B, T=T, H=H, K=K, V=V, BK=BK, BKS=min(BK, 64), NK=triton.cdiv(K, min(BK, 64)), BV=BV, BVO=BVO,
        NT=triton.cdiv(T, CHUNK), NV=triton.cdiv(V, BV), NVO=triton.cdiv(V, BVO),
        decay=mode, dot_dtype=_DOT_DTYPES[q.dtype],
        num_warps=8 if BK >= 128 else 4, split_warps=8 if BK >= 64 else 4,
        num_stages=1 if q.dtype == torch.float32 else 2,
    )


def chunked(
    function: type[torch.autograd.Function], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    beta: torch.Tensor | None, g: torch.Tensor | None, gk: torch.Tensor | None, scale: float | None,
    initial_state: torch.Tensor | None, output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Front of the chunked entry points: the decay (g or gk), the default scale, contiguous inputs,
    the launch configuration, then `function` (forward(q, k, v, beta, decay, scale, initial_state, cfg))."""
    mode, decay = decay_mode(g, gk)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    beta, decay, initial_state = (t.contiguous() if t is not None else None for t in (beta, decay, initial_state))
    cfg = make_config(q, k, v, decay if mode == DECAY_HEAD else None, decay if mode == DECAY_CHANNEL else None, beta,
                      initial_state)
    o, ht = function.apply(q, k, v, beta, decay, scale, initial_state, cfg)
    return o, (ht if output_final_state else None)


def save_inputs(ctx: torch.autograd.function.FunctionCtx, cfg: ChunkConfig, scale: float, *inputs: torch.Tensor | None) -> None:
    """Keep what the backward recomputes the forward from."""
    ctx.save_for_backward(*inputs)
    ctx.cfg = cfg
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused final state gives dht = None, not zeros


def output_grads(
    do: torch.Tensor | None, dht: torch.Tensor | None, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients w.r.t. (o, final state), contiguous; an unused o gives zeros."""
    do = do.contiguous() if do is not None else torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    return do, (dht.contiguous() if dht is not None else None)


# --------------------------------------------------------------------------------------------------
# device helpers


# The interpreter's tl.dot mishandles bfloat16 operands (it multiplies their bit patterns), so under
# the interpreter bfloat16 dots round the operands to bfloat16 and multiply in float32 instead.
_EMULATE_BF16_DOT = tl.constexpr(interpreting())


@triton.jit
def _dot(a, b, DT: tl.constexpr):
    # float32 accumulation always. Half inputs: operands rounded to the input dtype (tensor cores at
    # full rate, half the shared memory). float32 inputs: 3xTF32 (tensor cores, close to float32
    # accuracy; plain tf32 would lose ~3 decimal digits, "ieee" falls off the tensor cores).
    if DT == tl.float32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    elif _EMULATE_BF16_DOT and DT == tl.bfloat16:
        return tl.dot(a.to(DT).to(tl.float32), b.to(DT).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(DT), b.to(DT))


@triton.jit
def _chunk_rows(i_bh, i_t, T, H: tl.constexpr, BT: tl.constexpr):
    """Token indices of chunk i_t for program i_bh = b * H + h: (base, o_bt, rows, m_t, tok) with
    base the token row of (b, t=0, h) (int64), o_bt = 0..BT-1, rows the sequence positions of the
    chunk, m_t = rows < T, tok the token rows base + rows * H."""
    i_b = i_bh // H
    i_h = i_bh % H
    base = i_b.to(tl.int64) * T * H + i_h
    o_bt = tl.arange(0, BT)
    rows = i_t * BT + o_bt
    m_t = rows < T
    tok = base + rows * H
    return base, o_bt, rows, m_t, tok


@triton.jit
def _block(i, BS: tl.constexpr, N: tl.constexpr):
    """Offsets of block i of BS lanes over a dim of size N, and their in-range mask."""
    o = i * BS + tl.arange(0, BS)
    return o, o < N


@triton.jit
def _state_tile(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """All K rows and value block i_v of a K x V state: (o_k, m_k, o_v, m_v, m_kv, p_kv), p_kv the
    [BK, BV] offsets inside one state and m_kv their mask."""
    o_k, m_k = _block(0, BK, K)
    o_v, m_v = _block(i_v, BV, V)
    return o_k, m_k, o_v, m_v, m_k[:, None] & m_v[None, :], o_k[:, None] * V + o_v[None, :]


@triton.jit
def _intra_attn(b_q, b_k, GC, AQK, i_bh, T, rows, o_bt, m_t, tok, BT: tl.constexpr, DECAY: tl.constexpr,
                DT: tl.constexpr):
    """The chunk's causal attention A[i, j] = q_i . k_j e^{b_i - b_j} for j <= i (0 above), unscaled,
    [BT, BT] float32: computed for no / per-head decay, loaded from AQK (chunk_pair_fwd) for a
    per-channel one."""
    if DECAY == 2:
        b_a = tl.load(AQK + (i_bh.to(tl.int64) * T + rows)[:, None] * BT + o_bt[None, :],
                      mask=m_t[:, None], other=0.0)
    else:
        causal = (o_bt[:, None] >= o_bt[None, :]) & m_t[:, None]
        b_a = _dot(b_q, tl.trans(b_k), DT)
        if DECAY == 1:
            b_g = tl.load(GC + tok, mask=m_t, other=0.0)
            b_a = b_a * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0))
        b_a = tl.where(causal, b_a, 0.0)
    return b_a


# --------------------------------------------------------------------------------------------------
# chunk-local cumulative sum of the log decay


@triton.jit
def chunk_local_cumsum_kernel(
    G, OUT, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PER_CHANNEL: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)  # [BT] token rows in tok
    if PER_CHANNEL:
        o_k, m_k = _block(0, BK, K)
        m = m_t[:, None] & m_k[None, :]
        p = tok[:, None] * K + o_k[None, :]
        b_g = tl.load(G + p, mask=m, other=0.0).to(tl.float32)  # [BT, BK]
        tl.store(OUT + p, tl.cumsum(b_g, axis=0), mask=m)
    else:
        b_g = tl.load(G + tok, mask=m_t, other=0.0).to(tl.float32)  # [BT]
        tl.store(OUT + tok, tl.cumsum(b_g, axis=0), mask=m_t)


def chunk_local_cumsum(decay: torch.Tensor, cfg: ChunkConfig) -> torch.Tensor:
    """float32 inclusive cumsum of the log decay within each chunk, same layout as `decay`."""
    out = empty(decay.shape, torch.float32, decay.device)
    chunk_local_cumsum_kernel[(cfg.NT, cfg.B * cfg.H)](
        decay, out, cfg.T,
        H=cfg.H, K=cfg.K, BT=CHUNK, BK=cfg.BK, PER_CHANNEL=cfg.decay == DECAY_CHANNEL,
        num_warps=4,
    )
    return out


# --------------------------------------------------------------------------------------------------
# per-channel intra-chunk pair matrices (forward)


@triton.jit
def chunk_pair_fwd_kernel(
    Q, Kp, GC, AQK, AKK, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    DELTA: tl.constexpr, DT: tl.constexpr,
):
    """Rows [i0, i0 + BC) of A_qk[i, j] = sum_k q_ik k_jk exp(b_ik - b_jk) (j <= i) and, for the delta
    rule, L[i, j] = sum_k k_ik k_jk exp(b_ik - b_jk) (j < i). Unscaled, no beta.

    Columns before the sub-chunk factor through the decay at row i0: exp(b_i - b_i0) * exp(b_i0 - b_j),
    both factors <= 0 in the exponent; the diagonal BC x BC block is summed element by element."""
    NC: tl.constexpr = BT // BC
    i_tc = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_t = i_tc // NC
    i_c = i_tc % NC
    base, o_bt, o_j, m_j, tok_j = _chunk_rows(i_bh, i_t, T, H, BT)  # o_j: [BT] columns of the chunk
    i0 = i_t * BT + i_c * BC
    o_k, m_k = _block(0, BK, K)
    o_c = tl.arange(0, BC)
    o_i = i0 + o_c  # [BC] rows of this sub-chunk
    m_i = o_i < T
    m_ik = m_i[:, None] & m_k[None, :]
    p_i = (base + o_i * H)[:, None] * K + o_k[None, :]
    b_q = tl.load(Q + p_i, mask=m_ik, other=0.0).to(tl.float32)  # [BC, BK]
    b_k = tl.load(Kp + p_i, mask=m_ik, other=0.0).to(tl.float32)  # [BC, BK]
    b_b = tl.load(GC + p_i, mask=m_ik, other=0.0)  # [BC, BK]
    m_jk = ((o_j < i0) & m_j)[:, None] & m_k[None, :]  # columns before this sub-chunk
    p_j = tok_j[:, None] * K + o_k[None, :]
    b_kj = tl.load(Kp + p_j, mask=m_jk, other=0.0).to(tl.float32)  # [BT, BK]
    b_bj = tl.load(GC + p_j, mask=m_jk, other=0.0)  # [BT, BK]
    r = tl.minimum(i0, T - 1)  # reference row (clamped so tail programs stay finite)
    b_r = tl.load(GC + (base + r * H) * K + o_k, mask=m_k, other=0.0)  # [BK]
    b_kg = b_kj * tl.exp(tl.where(m_jk, b_r[None, :] - b_bj, 0.0))  # [BT, BK]
    e_i = tl.exp(tl.where(m_ik, b_b - b_r[None, :], 0.0))  # [BC, BK]
    b_aqk = _dot(b_q * e_i, tl.trans(b_kg), DT)  # [BC, BT]
    b_akk = tl.zeros([BC, BT], dtype=tl.float32)
    if DELTA:
        b_akk = _dot(b_k * e_i, tl.trans(b_kg), DT)
    for jj in range(0, BC):
        j = i0 + jj
        # (a block-by-scalar `&` yields int32 under the interpreter, so compare a block)
        m_row = m_k & ((o_k * 0 + j) < T)
        p_row = (base + j * H) * K + o_k
        k_row = tl.load(Kp + p_row, mask=m_row, other=0.0).to(tl.float32)  # [BK]
        b_row = tl.load(GC + p_row, mask=m_row, other=0.0)  # [BK]
        m_d = (o_c >= jj)[:, None] & m_ik
        e_d = tl.exp(tl.where(m_d, b_b - b_row[None, :], 0.0))  # [BC, BK]
        sel = o_bt[None, :] == i_c * BC + jj  # [1, BT] the column of token j
        a_col = tl.sum(b_q * k_row[None, :] * e_d, axis=1)  # [BC]
        b_aqk = tl.where(sel & (o_c >= jj)[:, None], a_col[:, None], b_aqk)
        if DELTA:
            l_col = tl.sum(b_k * k_row[None, :] * e_d, axis=1)
            b_akk = tl.where(sel & (o_c > jj)[:, None], l_col[:, None], b_akk)
    p_a = (i_bh.to(tl.int64) * T + o_i)[:, None] * BT + o_bt[None, :]
    tl.store(AQK + p_a, b_aqk, mask=m_i[:, None])
    if DELTA:
        tl.store(AKK + p_a, b_akk, mask=m_i[:, None])


def chunk_pair_fwd(
    q: torch.Tensor, k: torch.Tensor, gcum: torch.Tensor, cfg: ChunkConfig, delta: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-channel decay only: (A_qk, L_kk or None), float32 [B*H, T, BT]."""
    shape = (cfg.B * cfg.H, cfg.T, CHUNK)
    aqk = empty(shape, torch.float32, q.device)
    akk = empty(shape, torch.float32, q.device) if delta else aqk
    chunk_pair_fwd_kernel[(cfg.NT * (CHUNK // SUBCHUNK), cfg.B * cfg.H)](
        q, k, gcum, aqk, akk, cfg.T,
        H=cfg.H, K=cfg.K, BT=CHUNK, BC=SUBCHUNK, BK=cfg.BK, DELTA=delta, DT=cfg.dot_dtype,
        num_warps=4, num_stages=cfg.num_stages,
    )
    return aqk, (akk if delta else None)


# --------------------------------------------------------------------------------------------------
# inter-chunk state passing (forward)


@triton.jit
def chunk_fwd_h_kernel(
    Kp, Vp, GC, W, U0, U, H0, HS, HT, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DECAY: tl.constexpr, DELTA: tl.constexpr, USE_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr, DT: tl.constexpr,
):
    """Sequential over chunks for one (value block, batch*head): stores the state entering each chunk
    in HS; for the delta rule also turns the WY pseudo-values U0 into U = U0 - W h."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    NT = tl.cdiv(T, BT)
    o_k, m_k, o_v, m_v, m_kv, p_kv = _state_tile(i_v, K, V, BK, BV)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(H0 + i_bh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    for i_t in range(0, NT):
        tl.store(HS + (i_bh.to(tl.int64) * NT + i_t) * K * V + p_kv, b_h, mask=m_kv)
        base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)  # [BT]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(Kp + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        if DELTA:
            b_w = tl.load(W + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)  # [BT, BK]
            b_u = tl.load(U0 + tok[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)  # [BT, BV]
            b_u = b_u - _dot(b_w, b_h, DT)
            tl.store(U + tok[:, None] * V + o_v[None, :], b_u, mask=m_tv)
        else:
            b_u = tl.load(Vp + tok[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        if DECAY == 0:
            b_h += _dot(tl.trans(b_k), b_u, DT)
        else:
            last = base + (tl.minimum(T, i_t * BT + BT) - 1) * H  # token row of the chunk's last token
            if DECAY == 1:
                b_g = tl.load(GC + tok, mask=m_t, other=0.0)  # [BT]
                g_last = tl.load(GC + last)
                b_kr = b_k * tl.exp(tl.where(m_t, g_last - b_g, 0.0))[:, None]
                b_h = b_h * tl.exp(g_last) + _dot(tl.trans(b_kr), b_u, DT)
            else:
                b_g = tl.load(GC + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)  # [BT, BK]
                g_last = tl.load(GC + last * K + o_k, mask=m_k, other=0.0)  # [BK]
                b_kr = b_k * tl.exp(tl.where(m_tk, g_last[None, :] - b_g, 0.0))
                b_h = b_h * tl.exp(g_last)[:, None] + _dot(tl.trans(b_kr), b_u, DT)
    if STORE_FINAL:
        tl.store(HT + i_bh.to(tl.int64) * K * V + p_kv, b_h, mask=m_kv)


def chunk_fwd_h(
    k: torch.Tensor,
    v: torch.Tensor | None,
    gcum: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    cfg: ChunkConfig,
    w: torch.Tensor | None = None,
    u0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(states entering each chunk [B*H, NT, K, V], final state [B, H, K, V], U or None); all fp32.

    Pass v for gated linear attention, or (w, u0) from the WY transform for the delta rule."""
    delta = w is not None
    dev = k.device
    hs = empty((cfg.B * cfg.H, cfg.NT, cfg.K, cfg.V), torch.float32, dev)
    ht = empty((cfg.B, cfg.H, cfg.K, cfg.V), torch.float32, dev)
    u = empty((cfg.B, cfg.T, cfg.H, cfg.V), torch.float32, dev) if delta else None
    dummy = hs
    chunk_fwd_h_kernel[(cfg.NV, cfg.B * cfg.H)](
        k, v if v is not None else dummy, gcum if gcum is not None else dummy,
        w if delta else dummy, u0 if delta else dummy, u if delta else dummy,
        initial_state if initial_state is not None else dummy, hs, ht, cfg.T,
        H=cfg.H, K=cfg.K, V=cfg.V, BT=CHUNK, BK=cfg.BK, BV=cfg.BV, DECAY=cfg.decay, DELTA=delta,
        USE_H0=initial_state is not None, STORE_FINAL=True, DT=cfg.dot_dtype,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return hs, ht, u


# --------------------------------------------------------------------------------------------------
# output (forward), parallel over chunks


@triton.jit
def _chunk_out(
    Q, Kp, Y, GC, AQK, S, OUT, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DECAY: tl.constexpr, DV: tl.constexpr, DT: tl.constexpr,
):
    """Body of chunk_fwd_o_kernel and chunk_bwd_dv_kernel over one chunk and one value block: a state
    term plus an intra-chunk term,
        o  = scale * (q exp(b)) h_in + (scale * A) v           (Y = v, S = the state entering the chunk)
        dv = (k exp(b_last - b)) dh_out + (scale * A)^T do    (DV: Y = do, S = the gradient w.r.t. the
                                                               state leaving the chunk)."""
    i_v = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)
    o_k, m_k = _block(0, BK, K)
    o_v, m_v = _block(i_v, BV, V)
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_q = tl.load(Q + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(Kp + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_y = tl.load(Y + tok[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
    b_s = tl.load(S + (i_bh.to(tl.int64) * tl.cdiv(T, BT) + i_t) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :], other=0.0)  # [BK, BV]
    b_a = _intra_attn(b_q, b_k, GC, AQK, i_bh, T, rows, o_bt, m_t, tok, BT, DECAY, DT)
    if DV:
        last = base + (tl.minimum(T, i_t * BT + BT) - 1) * H
        if DECAY == 1:
            g_last = tl.load(GC + last)
            b_kr = b_k * tl.exp(tl.where(m_t, g_last - tl.load(GC + tok, mask=m_t, other=0.0), 0.0))[:, None]
        elif DECAY == 2:
            g_last = tl.load(GC + last * K + o_k, mask=m_k, other=0.0)
            b_g = tl.load(GC + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_kr = b_k * tl.exp(tl.where(m_tk, g_last[None, :] - b_g, 0.0))
        else:
            b_kr = b_k
        b_out = scale * _dot(tl.trans(b_a), b_y, DT) + _dot(b_kr, b_s, DT)
    else:
        if DECAY == 1:
            b_qg = b_q * tl.exp(tl.load(GC + tok, mask=m_t, other=0.0))[:, None]
        elif DECAY == 2:
            b_qg = b_q * tl.exp(tl.load(GC + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0))
        else:
            b_qg = b_q
        b_out = (_dot(b_qg, b_s, DT) + _dot(b_a, b_y, DT)) * scale
    tl.store(OUT + tok[:, None] * V + o_v[None, :], b_out.to(OUT.dtype.element_ty), mask=m_tv)


def _chunk_out_launch(
    kernel: triton.JITFunction, q: torch.Tensor, k: torch.Tensor, y: torch.Tensor, gcum: torch.Tensor | None,
    aqk: torch.Tensor | None, states: torch.Tensor, scale: float, cfg: ChunkConfig, out_dtype: torch.dtype,
) -> torch.Tensor:
    out = empty((cfg.B, cfg.T, cfg.H, cfg.V), out_dtype, q.device)
    kernel[(cfg.NVO, cfg.NT, cfg.B * cfg.H)](
        q, k, y, gcum if gcum is not None else states, aqk if aqk is not None else states, states, out, scale,
        cfg.T,
        H=cfg.H, K=cfg.K, V=cfg.V, BT=CHUNK, BK=cfg.BK, BV=cfg.BVO, DECAY=cfg.decay, DT=cfg.dot_dtype,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


@triton.jit
def chunk_fwd_o_kernel(
    Q, Kp, Vp, GC, AQK, HS, O, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DECAY: tl.constexpr, DT: tl.constexpr,
):
    """o = scale * (q * exp(b)) h_in + (scale * A) v over one chunk and one value block."""
    _chunk_out(Q, Kp, Vp, GC, AQK, HS, O, scale, T, H, K, V, BT, BK, BV, DECAY, False, DT)


def chunk_fwd_o(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gcum: torch.Tensor | None,
    aqk: torch.Tensor | None, hs: torch.Tensor, scale: float, cfg: ChunkConfig, out_dtype: torch.dtype,
) -> torch.Tensor:
    return _chunk_out_launch(chunk_fwd_o_kernel, q, k, v, gcum, aqk, hs, scale, cfg, out_dtype)


# --------------------------------------------------------------------------------------------------
# inter-chunk state gradient (backward), sequential over chunks in reverse


@triton.jit
def chunk_bwd_dh_kernel(
    Q, Kp, GC, AQK, W, DO, DU, DHT, DH0, DHS, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DECAY: tl.constexpr, DELTA: tl.constexpr, USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr, DT: tl.constexpr,
):
    """dh entering chunk c = exp(b_last) dh_out + scale (q exp(b))^T do [- W^T dU for the delta rule].

    DHS receives, per chunk, the gradient w.r.t. the state *leaving* that chunk. For the delta rule
    the pseudo-value gradient dU = (scale A)^T do + (k exp(b_last - b)) dh_out is formed here because
    the recurrence needs it."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    NT = tl.cdiv(T, BT)
    o_k, m_k, o_v, m_v, m_kv, p_kv = _state_tile(i_v, K, V, BK, BV)
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(DHT + i_bh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    for i_r in range(0, NT):
        i_t = NT - 1 - i_r
        tl.store(DHS + (i_bh.to(tl.int64) * NT + i_t) * K * V + p_kv, b_dh, mask=m_kv)
        base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(Q + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        b_do = tl.load(DO + tok[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        if DELTA:
            b_k = tl.load(Kp + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
            b_a = _intra_attn(b_q, b_k, GC, AQK, i_bh, T, rows, o_bt, m_t, tok, BT, DECAY, DT)
        if DECAY == 0:
            b_qg = b_q
            if DELTA:
                b_kr = b_k
        else:
            last = base + (tl.minimum(T, i_t * BT + BT) - 1) * H
            if DECAY == 1:
                b_g = tl.load(GC + tok, mask=m_t, other=0.0)
                g_last = tl.load(GC + last)
                b_qg = b_q * tl.exp(b_g)[:, None]
                e_last = tl.exp(g_last)
                if DELTA:
                    b_kr = b_k * tl.exp(tl.where(m_t, g_last - b_g, 0.0))[:, None]
            else:
                b_g = tl.load(GC + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
                g_last = tl.load(GC + last * K + o_k, mask=m_k, other=0.0)
                b_qg = b_q * tl.exp(b_g)
                e_last = tl.exp(g_last)[:, None]
                if DELTA:
                    b_kr = b_k * tl.exp(tl.where(m_tk, g_last[None, :] - b_g, 0.0))
        b_dh_next = b_dh
        if DECAY != 0:
            b_dh = b_dh * e_last
        b_dh += scale * _dot(tl.trans(b_qg), b_do, DT)
        if DELTA:
            b_du = scale * _dot(tl.trans(b_a), b_do, DT) + _dot(b_kr, b_dh_next, DT)  # [BT, BV]
            tl.store(DU + tok[:, None] * V + o_v[None, :], b_du, mask=m_tv)
            b_w = tl.load(W + tok[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
            b_dh -= _dot(tl.trans(b_w), b_du, DT)
    if STORE_DH0:
        tl.store(DH0 + i_bh.to(tl.int64) * K * V + p_kv, b_dh.to(DH0.dtype.element_ty), mask=m_kv)


def chunk_bwd_dh(
    q: torch.Tensor, k: torch.Tensor, gcum: torch.Tensor | None, aqk: torch.Tensor | None,
    do: torch.Tensor, dht: torch.Tensor | None, initial_state: torch.Tensor | None, scale: float,
    cfg: ChunkConfig, w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dh leaving each chunk [B*H, NT, K, V] fp32, dh0 or None, dU or None for the delta rule)."""
    delta = w is not None
    dev = q.device
    dhs = empty((cfg.B * cfg.H, cfg.NT, cfg.K, cfg.V), torch.float32, dev)
    dh0 = empty_like(initial_state) if initial_state is not None else None
    du = empty((cfg.B, cfg.T, cfg.H, cfg.V), torch.float32, dev) if delta else None
    dummy = dhs
    chunk_bwd_dh_kernel[(cfg.NV, cfg.B * cfg.H)](
        q, k, gcum if gcum is not None else dummy, aqk if aqk is not None else dummy,
        w if delta else dummy, do, du if delta else dummy, dht if dht is not None else dummy,
        dh0 if dh0 is not None else dummy, dhs, scale, cfg.T,
        H=cfg.H, K=cfg.K, V=cfg.V, BT=CHUNK, BK=cfg.BK, BV=cfg.BV, DECAY=cfg.decay, DELTA=delta,
        USE_DHT=dht is not None, STORE_DH0=dh0 is not None, DT=cfg.dot_dtype,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dhs, dh0, du


# --------------------------------------------------------------------------------------------------
# value gradient of gated linear attention (backward), parallel over chunks


@triton.jit
def chunk_bwd_dv_kernel(
    Q, Kp, DO, GC, AQK, DHS, DV, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DECAY: tl.constexpr, DT: tl.constexpr,
):
    """dv = (scale A)^T do + (k exp(b_last - b)) dh_out over one chunk and one value block."""
    _chunk_out(Q, Kp, DO, GC, AQK, DHS, DV, scale, T, H, K, V, BT, BK, BV, DECAY, True, DT)


def chunk_bwd_dv(
    q: torch.Tensor, k: torch.Tensor, gcum: torch.Tensor | None, aqk: torch.Tensor | None,
    dhs: torch.Tensor, do: torch.Tensor, scale: float, cfg: ChunkConfig, dv_dtype: torch.dtype,
) -> torch.Tensor:
    return _chunk_out_launch(chunk_bwd_dv_kernel, q, k, do, gcum, aqk, dhs, scale, cfg, dv_dtype)


# --------------------------------------------------------------------------------------------------
# query and key gradients outside the WY transform (backward), parallel over key slices x chunks


@triton.jit
def _bwd_dqk(
    Q, Kp, Vp, GC, DU, HS, DHS, DO, DQ, DK, DW, DG, DA, DBP, DLAST, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, NV: tl.constexpr, DECAY: tl.constexpr, DELTA: tl.constexpr, DT: tl.constexpr,
):
    """Body of gla_bwd_kernel and delta_bwd_dqk_kernel: one chunk and one slice of BK key channels.

    dq, dk (and dg) from the inter-chunk states and the intra-chunk attention gradient dA = do v^T
    (recomputed per slice, it does not depend on K). The values Vp are v, or for the delta rule
    (DELTA) the pseudo-values U; then dW = -dU h^T goes to DW as well, and dk to DK is the float32
    partial the WY backward finishes.

    No / per-head decay: dq final; DG gets this slice's share of dg (summed over slices later).
    Per-channel decay: dq, dk and d(cumulative decay) partials go to DQ, DK, DBP as float32,
    scale * dA to DA (slice 0 only) and the last-row decay gradient to DLAST, for chunk_pair_bwd."""
    i_k = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    NT = tl.cdiv(T, BT)
    base, o_bt, rows, m_t, tok = _chunk_rows(i_bh, i_t, T, H, BT)
    o_k, m_k = _block(i_k, BK, K)
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = tok[:, None] * K + o_k[None, :]
    causal = (o_bt[:, None] >= o_bt[None, :]) & m_t[:, None]
    last = base + (tl.minimum(T, i_t * BT + BT) - 1) * H  # token row of the chunk's last token
    b_da = tl.zeros([BT, BT], dtype=tl.float32)  # do v^T
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do h^T
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # v dh_out^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # -dU h^T (delta rule)
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # sum_v h * dh_out (gradient of exp(b_last))
    p_state = (i_bh.to(tl.int64) * NT + i_t) * K * V
    for i_v in range(0, NV):
        o_v, m_v = _block(i_v, BV, V)
        m_tv = m_t[:, None] & m_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        p_tv = tok[:, None] * V + o_v[None, :]
        b_v = tl.load(Vp + p_tv, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
        b_do = tl.load(DO + p_tv, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
        p_kv = p_state + o_k[:, None] * V + o_v[None, :]
        b_h = tl.load(HS + p_kv, mask=m_kv, other=0.0)  # [BK, BV] state entering the chunk
        b_dh = tl.load(DHS + p_kv, mask=m_kv, other=0.0)  # [BK, BV] grad of the state leaving it
        b_da += _dot(b_do, tl.trans(b_v), DT)
        b_dq += _dot(b_do, tl.trans(b_h), DT)
        b_dk += _dot(b_v, tl.trans(b_dh), DT)
        if DELTA:
            b_du = tl.load(DU + p_tv, mask=m_tv, other=0.0)
            b_dw -= _dot(b_du, tl.trans(b_h), DT)
        if DECAY != 0:
            b_hdh += tl.sum(b_h * b_dh, axis=1)
    if DELTA:
        tl.store(DW + p_tk, b_dw, mask=m_tk)
    b_da = tl.where(causal, b_da * scale, 0.0)  # gradient w.r.t. the unscaled pair matrix, times scale
    b_q = tl.load(Q + p_tk, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
    b_k = tl.load(Kp + p_tk, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
    b_dq = b_dq * scale
    if DECAY == 0:
        b_dq += _dot(b_da, b_k, DT)
        b_dk += _dot(tl.trans(b_da), b_q, DT)
        tl.store(DQ + p_tk, b_dq.to(DQ.dtype.element_ty), mask=m_tk)
        tl.store(DK + p_tk, b_dk.to(DK.dtype.element_ty), mask=m_tk)
    elif DECAY == 1:
        b_g = tl.load(GC + tok, mask=m_t, other=0.0)  # [BT]
        g_last = tl.load(GC + last)
        b_dq = b_dq * tl.exp(b_g)[:, None]
        b_dk = b_dk * tl.exp(tl.where(m_t, g_last - b_g, 0.0))[:, None]
        # d(b_last): exp(b_last) <h, dh_out> plus the k side of the state update
        d_last = tl.exp(g_last) * tl.sum(b_hdh, axis=0) + tl.sum(tl.sum(b_k * b_dk, axis=1), axis=0)
        b_da = b_da * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0))
        b_dq += _dot(b_da, b_k, DT)
        b_dk += _dot(tl.trans(b_da), b_q, DT)
        b_db = tl.sum(b_q * b_dq - b_k * b_dk, axis=1)  # [BT]
        b_dg = tl.cumsum(b_db, axis=0, reverse=True) + d_last
        tl.store(DQ + p_tk, b_dq.to(DQ.dtype.element_ty), mask=m_tk)
        tl.store(DK + p_tk, b_dk.to(DK.dtype.element_ty), mask=m_tk)
        tl.store(DG + i_k.to(tl.int64) * (tl.num_programs(2) * T) + tok, b_dg, mask=m_t)
    else:
        b_g = tl.load(GC + p_tk, mask=m_tk, other=0.0)  # [BT, BK]
        g_last = tl.load(GC + last * K + o_k, mask=m_k, other=0.0)  # [BK]
        b_dq = b_dq * tl.exp(b_g)
        b_dk = b_dk * tl.exp(tl.where(m_tk, g_last[None, :] - b_g, 0.0))
        d_last = tl.exp(g_last) * b_hdh + tl.sum(b_k * b_dk, axis=0)  # [BK]
        tl.store(DQ + p_tk, b_dq, mask=m_tk)
        tl.store(DK + p_tk, b_dk, mask=m_tk)
        tl.store(DBP + p_tk, b_q * b_dq - b_k * b_dk, mask=m_tk)
        tl.store(DLAST + (i_bh.to(tl.int64) * NT + i_t) * K + o_k, d_last, mask=m_k)
        if i_k == 0:
            p_mat = (i_bh.to(tl.int64) * T + rows)[:, None] * BT + o_bt[None, :]
            tl.store(DA + p_mat, b_da, mask=m_t[:, None])


def chunk_bwd_dqk(
    kernel: triton.JITFunction, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gcum: torch.Tensor | None,
    hs: torch.Tensor, dhs: torch.Tensor, do: torch.Tensor, du: torch.Tensor | None, scale: float, cfg: ChunkConfig,
) -> tuple[torch.Tensor, ...]:
    """Run `kernel` (gla_bwd_kernel, or delta_bwd_dqk_kernel with v = U and its gradient du):
    (dq, dk, dg, dw, da, dbp, dlast), each a dummy where the configuration has none.

    dq is final unless the decay is per channel; dk is final for gated linear attention with no or
    a per-head decay, else a float32 partial; dg holds one share per key slice (per-head decay)."""
    delta = du is not None
    channel = cfg.decay == DECAY_CHANNEL
    dummy = dhs
    f32 = dict(dtype=torch.float32, device=q.device)
    dq = empty(q.shape, **f32) if channel else empty_like(q)
    dk = empty(k.shape, **f32) if channel or delta else empty_like(k)
    dg = empty((cfg.NK, cfg.B, cfg.T, cfg.H), **f32) if cfg.decay == DECAY_HEAD else dummy
    dw = empty(k.shape, **f32) if delta else dummy
    if channel:
        dbp = empty(k.shape, **f32)
        da = empty((cfg.B * cfg.H, cfg.T, CHUNK), **f32)
        dlast = empty((cfg.B * cfg.H, cfg.NT, cfg.K), **f32)
    else:
        dbp = da = dlast = dummy
    kernel[(cfg.NK, cfg.NT, cfg.B * cfg.H)](
        q, k, v, gcum if gcum is not None else dummy, du if delta else dummy, hs, dhs, do, dq, dk, dw, dg, da,
        dbp, dlast, scale, cfg.T,
        H=cfg.H, K=cfg.K, V=cfg.V, BT=CHUNK, BK=cfg.BKS, BV=cfg.BV, NV=cfg.NV, DECAY=cfg.decay,
        DT=cfg.dot_dtype, num_warps=cfg.split_warps, num_stages=cfg.num_stages,
    )
    return dq, dk, dg, dw, da, dbp, dlast


# --------------------------------------------------------------------------------------------------
# per-channel intra-chunk gradients (backward) and the decay gradient


@triton.jit
def chunk_pair_bwd_kernel(
    Q, Kp, GC, DA, DL, DQP, DKP, DBP, DLAST, DQ, DK, DG, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    DELTA: tl.constexpr, DT: tl.constexpr,
):
    """Adds the intra-chunk gradients of the per-channel pair matrices to the partial dq, dk and
    d(cumulative decay) from the main backward kernel, then turns d(cumulative decay) into dgk by a
    reverse cumulative sum over the chunk plus the gradient of the chunk's last cumulative decay.

    DA = dL/d(A_qk) with the scale folded in (lower triangle incl. diagonal); for the delta rule DL =
    dL/d(L_kk) with beta folded in (strict lower triangle). Pair (x, y, dP) contributes
    dx_i = sum_j dP_ij y_j e^{b_i - b_j}, dy_j = sum_i dP_ij x_i e^{b_i - b_j},
    db_i += x_i dx_i - y_i dy_i."""
    NC: tl.constexpr = BT // BC
    i_k = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    NT = tl.cdiv(T, BT)
    base, o_bt, rows_all, m_all, tok_all = _chunk_rows(i_bh, i_t, T, H, BT)
    mat = i_bh.to(tl.int64) * T  # row of (bh, t=0) in the [B*H, T, BT] matrices
    t0 = i_t * BT
    o_k, m_k = _block(i_k, BK, K)  # this program's slice of the key channels
    o_c = tl.arange(0, BC)
    p_all = tok_all[:, None] * K + o_k[None, :]
    d_last = tl.load(DLAST + (i_bh.to(tl.int64) * NT + i_t) * K + o_k, mask=m_k, other=0.0)  # [BK]
    carry = tl.zeros([BK], dtype=tl.float32)  # sum of db over the later sub-chunks
    for ii in tl.static_range(NC):
        I = NC - 1 - ii  # later sub-chunks first, for the reverse cumulative sum
        c0 = I * BC  # first column of the sub-chunk inside the chunk
        i0 = t0 + c0
        o_i = i0 + o_c
        m_i = o_i < T
        m_ik = m_i[:, None] & m_k[None, :]
        p_i = (base + o_i * H)[:, None] * K + o_k[None, :]
        b_q = tl.load(Q + p_i, mask=m_ik, other=0.0).to(tl.float32)  # [BC, BK]
        b_k = tl.load(Kp + p_i, mask=m_ik, other=0.0).to(tl.float32)
        b_g = tl.load(GC + p_i, mask=m_ik, other=0.0)
        # row role: columns before the sub-chunk, through the decay at row i0
        r = tl.minimum(i0, T - 1)
        g_r = tl.load(GC + (base + r * H) * K + o_k, mask=m_k, other=0.0)
        # chunk-wide tiles are (re)loaded per sub-chunk, masked to the rows needed, to keep them
        # out of registers across the sub-chunk loop
        m_before = ((o_bt < c0) & m_all)[:, None] & m_k[None, :]
        k_all = tl.load(Kp + p_all, mask=m_before, other=0.0).to(tl.float32)  # [BT, BK]
        g_all = tl.load(GC + p_all, mask=m_before, other=0.0)
        b_kb = k_all * tl.exp(tl.where(m_before, g_r[None, :] - g_all, 0.0))
        e_i = tl.exp(tl.where(m_ik, b_g - g_r[None, :], 0.0))
        m_row_before = m_i[:, None] & (o_bt < c0)[None, :]
        p_rows = (mat + o_i)[:, None] * BT + o_bt[None, :]
        b_da = tl.load(DA + p_rows, mask=m_row_before, other=0.0)  # [BC, BT]
        b_dq = _dot(b_da, b_kb, DT) * e_i  # [BC, BK]
        b_dkx = tl.zeros([BC, BK], dtype=tl.float32)
        b_dky = tl.zeros([BC, BK], dtype=tl.float32)
        if DELTA:
            b_dl = tl.load(DL + p_rows, mask=m_row_before, other=0.0)
            b_dkx = _dot(b_dl, b_kb, DT) * e_i
        # column role: rows after the sub-chunk, through the decay at its last row
        r2 = tl.minimum(i0 + BC - 1, T - 1)
        g_r2 = tl.load(GC + (base + r2 * H) * K + o_k, mask=m_k, other=0.0)
        m_after = ((o_bt >= c0 + BC) & m_all)[:, None] & m_k[None, :]
        g_all = tl.load(GC + p_all, mask=m_after, other=0.0)
        e_after = tl.exp(tl.where(m_after, g_all - g_r2[None, :], 0.0))
        b_qa = tl.load(Q + p_all, mask=m_after, other=0.0).to(tl.float32) * e_after  # [BT, BK]
        e_c = tl.exp(tl.where(m_ik, g_r2[None, :] - b_g, 0.0))
        m_col_after = ((o_bt >= c0 + BC) & m_all)[:, None] & (o_c >= 0)[None, :]
        p_cols = (mat + rows_all)[:, None] * BT + (c0 + o_c)[None, :]
        b_dac = tl.load(DA + p_cols, mask=m_col_after, other=0.0)  # [BT, BC]
        b_dka = _dot(tl.trans(b_dac), b_qa, DT) * e_c  # [BC, BK]
        if DELTA:
            b_ka = tl.load(Kp + p_all, mask=m_after, other=0.0).to(tl.float32) * e_after
            b_dlc = tl.load(DL + p_cols, mask=m_col_after, other=0.0)
            b_dky = _dot(tl.trans(b_dlc), b_ka, DT) * e_c
        # diagonal block, one token j of the sub-chunk at a time
        for jj in range(0, BC):
            j = i0 + jj
            # validity of token j as blocks (a block-by-scalar `&` yields int32 under the interpreter)
            vj_k = (o_k * 0 + j) < T  # [BK]
            vj_c = (o_c * 0 + j) < T  # [BC]
            m_row = m_k & vj_k
            p_row = (base + j * H) * K + o_k
            q_j = tl.load(Q + p_row, mask=m_row, other=0.0).to(tl.float32)  # [BK]
            k_j = tl.load(Kp + p_row, mask=m_row, other=0.0).to(tl.float32)
            g_j = tl.load(GC + p_row, mask=m_row, other=0.0)
            # token j as a column: rows i >= j of the sub-chunk
            m_lo = (o_c >= jj)[:, None] & m_ik
            e_lo = tl.exp(tl.where(m_lo, b_g - g_j[None, :], 0.0))  # [BC, BK]
            p_col = (mat + o_i) * BT + c0 + jj
            da_col = tl.load(DA + p_col, mask=m_i & (o_c >= jj), other=0.0)  # [BC]
            b_dq += da_col[:, None] * k_j[None, :] * e_lo
            # token j as a row: columns c <= j of the sub-chunk
            m_up = ((o_c <= jj) & vj_c)[:, None] & m_ik
            e_up = tl.exp(tl.where(m_up, g_j[None, :] - b_g, 0.0))
            p_row_a = (mat + j) * BT + c0 + o_c
            da_row = tl.load(DA + p_row_a, mask=(o_c <= jj) & vj_c, other=0.0)  # [BC]
            b_dka += da_row[:, None] * q_j[None, :] * e_up
            if DELTA:
                dl_col = tl.load(DL + p_col, mask=m_i & (o_c > jj), other=0.0)
                b_dkx += dl_col[:, None] * k_j[None, :] * e_lo
                dl_row = tl.load(DL + p_row_a, mask=(o_c < jj) & vj_c, other=0.0)
                b_dky += dl_row[:, None] * k_j[None, :] * e_up
        b_dq_tot = tl.load(DQP + p_i, mask=m_ik, other=0.0) + b_dq
        b_dk_tot = tl.load(DKP + p_i, mask=m_ik, other=0.0) + b_dka + b_dkx + b_dky
        b_db = tl.load(DBP + p_i, mask=m_ik, other=0.0) + b_q * b_dq - b_k * b_dka + b_k * (b_dkx - b_dky)
        b_dg = tl.cumsum(b_db, axis=0, reverse=True) + (carry + d_last)[None, :]
        carry += tl.sum(b_db, axis=0)
        tl.store(DQ + p_i, b_dq_tot.to(DQ.dtype.element_ty), mask=m_ik)
        tl.store(DK + p_i, b_dk_tot.to(DK.dtype.element_ty), mask=m_ik)
        tl.store(DG + p_i, b_dg.to(DG.dtype.element_ty), mask=m_ik)


def chunk_pair_bwd(
    q: torch.Tensor, k: torch.Tensor, gcum: torch.Tensor, da: torch.Tensor, dl: torch.Tensor | None,
    dqp: torch.Tensor, dkp: torch.Tensor, dbp: torch.Tensor, dlast: torch.Tensor, cfg: ChunkConfig,
    g_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final (dq, dk, dgk) for a per-channel decay."""
    dq = empty_like(q)
    dk = empty_like(k)
    dg = empty(gcum.shape, g_dtype, q.device)
    chunk_pair_bwd_kernel[(cfg.NK, cfg.NT, cfg.B * cfg.H)](
        q, k, gcum, da, dl if dl is not None else da, dqp, dkp, dbp, dlast, dq, dk, dg, cfg.T,
        H=cfg.H, K=cfg.K, BT=CHUNK, BC=SUBCHUNK, BK=cfg.BKS, DELTA=dl is not None, DT=cfg.dot_dtype,
        num_warps=cfg.split_warps, num_stages=cfg.num_stages,
    )
    return dq, dk, dg


# --------------------------------------------------------------------------------------------------
# decode step


@triton.jit
def _step(
    Q, Kp, Vp, BETA, G, S, O, SN, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
    DELTA: tl.constexpr,
):
    """Body of gla_step_kernel and delta_step_kernel: one token for one (value block, batch*head).
    S' = alpha S; S = S' + k w^T, the write w being v, or beta (v - S'^T k) for the delta rule (DELTA);
    o = scale S^T q."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    o_k, m_k = _block(0, BK, K)
    o_v, m_v = _block(i_v, BV, V)
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_bh * K * V + o_k[:, None] * V + o_v[None, :]  # int64 throughout: no per-element widening
    b_s = tl.load(S + p_kv, mask=m_kv, other=0.0).to(tl.float32)  # [BK, BV]
    b_q = tl.load(Q + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_k = tl.load(Kp + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_w = tl.load(Vp + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV] the write
    if DECAY == 1:
        b_s = b_s * tl.exp(tl.load(G + i_bh).to(tl.float32))
    elif DECAY == 2:
        b_s = b_s * tl.exp(tl.load(G + i_bh * K + o_k, mask=m_k, other=0.0).to(tl.float32))[:, None]
    if DELTA:
        b_beta = tl.load(BETA + i_bh).to(tl.float32)
        b_w = b_beta * (b_w - tl.sum(b_s * b_k[:, None], axis=0))
    b_s += b_k[:, None] * b_w[None, :]
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


def decode_step(
    kernel: triton.JITFunction, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor | None,
    state: torch.Tensor, g: torch.Tensor | None, gk: torch.Tensor | None, scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `kernel` (gla_step_kernel, or delta_step_kernel with beta) on one decode token:
    (o [B, H, V] in q's dtype, new state in the state's dtype)."""
    mode, decay = check_step_inputs(q, k, v, state, g, gk, beta)
    B, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else float(scale)
    q, k, v, state = q.contiguous(), k.contiguous(), v.contiguous(), state.contiguous()
    beta = beta.contiguous() if beta is not None else state
    decay = decay.contiguous() if decay is not None else state
    o = empty((B, H, V), q.dtype, q.device)
    new_state = empty_like(state)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, beta, decay, state, o, new_state, scale, K=K, V=V, BK=BK, BV=BV, DECAY=mode, num_warps=4,
    )
    return o, new_state
