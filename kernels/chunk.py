"""Chunk-parallel recurrences in plain PyTorch (the CPU path; autograd through PyTorch).

Self-contained on purpose: this file imports only torch, math and typing, because exported models
embed its source verbatim as their fallback when hybridnas is not installed.

The sequence is cut into chunks of C tokens. Inside a chunk everything is a masked matmul; between
chunks only the [K, V] state is carried. Decays enter as exp(b_t - b_s) with t >= s, where b is the
chunk-local cumulative log decay (non-increasing), so no factor ever exceeds 1 and no decay value,
however large, can overflow. Per-channel decays cannot be split into one query-side and one key-side
factor without a positive exponent, so their intra-chunk scores are built hierarchically: at each
level the second half of a block attends to the first half through a reference point between them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

Tensor = torch.Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    # The state accumulates in float32 for half/bfloat16 inputs.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunks(x: Tensor, C: int, acc: torch.dtype) -> Tensor:
    """[B, T, H, ...] -> [B*H, N, C, ...], zero-padded to N*C tokens, in dtype `acc`."""
    B, T, H = x.shape[:3]
    N = -(-T // C)
    x = x.to(acc)
    if N * C > T:  # zeros are neutral: k = beta = 0 adds nothing, log decay 0 keeps the state
        x = torch.cat([x, x.new_zeros(B, N * C - T, *x.shape[2:])], dim=1)
    x = x.reshape(B, N, C, H, *x.shape[3:]).movedim(3, 1)  # [B, H, N, C, ...]
    return x.reshape(B * H, N, C, *x.shape[4:])


def _scores(x: Tensor, y: Tensor, b: Optional[Tensor]) -> Tensor:
    """A[t, s] = sum_k x[t,k] y[s,k] exp(b[t,k] - b[s,k]) for s <= t, else 0.

    x: [..., C, K] (extra leading dims broadcast against y), y: [..., C, K]; b: None (no decay),
    [..., C, 1] (one decay per head) or [..., C, K] (per channel), the chunk-local cumulative log
    decay. Returns [..., C, C].
    """
    C = x.shape[-2]
    if b is None or b.shape[-1] == 1:  # one [C, C] matrix of ratios, masked before exp
        mask = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
        A = x @ y.transpose(-1, -2)
        if b is None:
            return A.masked_fill(~mask, 0.0)
        ratio = torch.where(mask, b - b.transpose(-1, -2), 0.0).exp()
        return torch.where(mask, A * ratio, 0.0)
    # Per channel, bottom-up: A holds the lower-triangular diagonal blocks of size h; each level
    # joins pairs of them with the block where the second half attends to the first half.
    A = (x * y).sum(-1)[..., None, None]  # [..., C, 1, 1]
    h = 1
    while h < C:
        n = C // (2 * h)
        xb, yb, bb = (z.unflatten(-2, (n, 2, h)) for z in (x, y, b))  # [..., n, 2, h, K]
        ref = bb[..., 0, h - 1 :, :]  # [..., n, 1, K] last token of the first half
        xs = xb[..., 1, :, :] * (bb[..., 1, :, :] - ref).exp()  # [..., n, h, K], factors <= 1
        ys = yb[..., 0, :, :] * (ref - bb[..., 0, :, :]).exp()  # [..., n, h, K], factors <= 1
        low = xs @ ys.transpose(-1, -2)  # [..., n, h, h]
        first, second = A[..., 0::2, :, :], A[..., 1::2, :, :]
        A = torch.cat([torch.cat([first, torch.zeros_like(first)], -1), torch.cat([low, second], -1)], -2)
        h *= 2
    return A.reshape(*A.shape[:-3], C, C)


def _unit_lower_inverse(L: Tensor) -> Tensor:
    """(I + strictly_lower(L))^-1 for L [..., C, C], C a power of two; L's diagonal is ignored.

    Block doubling, [[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]: batched matmuls
    instead of a per-matrix triangular solve, which is slow for many small matrices on CPU.
    """
    C, lead = L.shape[-1], L.shape[:-2]
    X = torch.ones(*lead, C, 1, 1, dtype=L.dtype, device=L.device)  # inverses of the 1x1 diagonal blocks
    h = 1
    while h < C:
        n = C // (2 * h)
        low = L.unflatten(-2, (n, 2, h)).unflatten(-1, (n, 2, h))  # [..., n, 2, h, n, 2, h]
        low = low.diagonal(dim1=-6, dim2=-3)[..., 1, :, 0, :, :].movedim(-1, -3)  # [..., n, h, h]
        first, second = X[..., 0::2, :, :], X[..., 1::2, :, :]  # [..., n, h, h]
        low = -(second @ low @ first) if h > 1 else -low
        X = torch.cat([torch.cat([first, torch.zeros_like(first)], -1), torch.cat([low, second], -1)], -2)
        h *= 2
    return X.reshape(*lead, C, C)


def _prepare(
    q: Tensor, g: Optional[Tensor], gk: Optional[Tensor], T: int, chunk_size: int
) -> tuple[int, torch.dtype, Optional[Tensor]]:
    if g is not None and gk is not None:
        raise ValueError("g and gk: pass at most one decay (per-head g or per-channel gk)")
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: must be a power of two, got {chunk_size}")
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())  # short inputs use one short chunk
    acc = _acc(q.dtype)
    if g is not None:
        b = _chunks(g, C, acc)[..., None].cumsum(-2)  # [BH, N, C, 1]
    elif gk is not None:
        b = _chunks(gk, C, acc).cumsum(-2)  # [BH, N, C, K]
    else:
        b = None
    return C, acc, b


def _unchunk(o: Tensor, B: int, T: int, H: int, dtype: torch.dtype) -> Tensor:
    """[B*H, N, C, V] -> [B, T, H, V]."""
    o = o.reshape(B, H, -1, o.shape[-1])[:, :, :T]
    return o.transpose(1, 2).to(dtype)


def chunk_gated_linear_attention(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    g: Optional[Tensor] = None,  # [B, T, H] log decay per head
    gk: Optional[Tensor] = None,  # [B, T, H, K] log decay per key channel
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,  # [B, H, K, V]
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Optional[Tensor]]:
    """S_t = diag(alpha_t) S_{t-1} + k_t v_t^T ;  o_t = scale * S_t^T q_t, chunk by chunk."""
    B, T, H, K = q.shape
    V, dtype = v.shape[-1], q.dtype
    C, acc, b = _prepare(q, g, gk, T, chunk_size)
    scale = K**-0.5 if scale is None else scale
    q, k, v = (_chunks(x, C, acc) for x in (q, k, v))  # [BH, N, C, *]
    q = q * scale
    A = _scores(q, k, b)  # [BH, N, C, C]
    decay = None
    if b is not None:
        last = b[..., -1:, :]  # [BH, N, 1, K'] log decay over the whole chunk
        q = q * b.exp()  # decay from the chunk start to t
        k = k * (last - b).exp()  # decay from s to the chunk end
        decay = last.transpose(-1, -2).exp()  # [BH, N, K', 1]
    U = k.transpose(-1, -2) @ v  # [BH, N, K, V] what each chunk adds to the state
    S = q.new_zeros(B * H, K, V) if initial_state is None else initial_state.to(acc).reshape(B * H, K, V)
    states = []
    for n, u in enumerate(U.unbind(1)):
        states.append(S)
        S = u + S if decay is None else torch.addcmul(u, decay[:, n], S)
    o = A @ v + q @ torch.stack(states, 1)  # [BH, N, C, V]
    final = S.reshape(B, H, K, V) if output_final_state else None
    return _unchunk(o, B, T, H, dtype), final


def chunk_gated_delta_rule(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    beta: Tensor,  # [B, T, H]
    g: Optional[Tensor] = None,  # [B, T, H]
    gk: Optional[Tensor] = None,  # [B, T, H, K]
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,  # [B, H, K, V]
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Optional[Tensor]]:
    """Gated delta rule via the WY/UT transform, chunk by chunk.

    With the state S0 entering a chunk, S_t = diag(e^{b_t}) S0 + sum_{s<=t} diag(e^{b_t-b_s}) k_s w_s^T,
    where the pseudo-values solve (I + diag(beta) A_kk) W = diag(beta) (V - (k e^b) S0), A_kk being
    the strictly lower decayed k k^T. Splitting W = U - Wk S0 leaves one [K, K] matmul per chunk.
    """
    B, T, H, K = q.shape
    V, dtype = v.shape[-1], q.dtype
    C, acc, b = _prepare(q, g, gk, T, chunk_size)
    scale = K**-0.5 if scale is None else scale
    q, k, v = (_chunks(x, C, acc) for x in (q, k, v))  # [BH, N, C, *]
    beta = _chunks(beta, C, acc)[..., None]  # [BH, N, C, 1]
    q = q * scale
    Aqk, Akk = _scores(torch.stack([q, k * beta]), k, b).unbind(0)  # [BH, N, C, C] each
    Tm = _unit_lower_inverse(Akk)  # (I + diag(beta) strictly_lower(A_kk))^-1
    ke, qe, kd = k, q, k.transpose(-1, -2)
    if b is not None:
        last, eb = b[..., -1:, :], b.exp()  # [BH, N, 1, K'], [BH, N, C, K']
        ke, qe, kd = k * eb, q * eb, (k * (last - b).exp()).transpose(-1, -2)  # kd [BH, N, K, C]
    UW = Tm @ (torch.cat([v, ke], -1) * beta)  # [BH, N, C, V+K]: W = U - Wk S0
    RM = kd @ UW  # [BH, N, K, V+K]
    R, KW = RM[..., :V], RM[..., V:]
    if b is None:
        M = torch.eye(K, dtype=acc, device=q.device) - KW  # [BH, N, K, K]: S_next = M S + R
    else:
        M = torch.diag_embed(last.exp().expand(*last.shape[:-1], K).squeeze(-2)) - KW
    S = q.new_zeros(B * H, K, V) if initial_state is None else initial_state.to(acc).reshape(B * H, K, V)
    states = []
    for m, r in zip(M.unbind(1), R.unbind(1)):
        states.append(S)
        S = torch.baddbmm(r, m, S)
    AUW = Aqk @ UW  # [BH, N, C, V+K]
    o = (qe - AUW[..., V:]) @ torch.stack(states, 1) + AUW[..., :V]  # [BH, N, C, V]
    final = S.reshape(B, H, K, V) if output_final_state else None
    return _unchunk(o, B, T, H, dtype), final
