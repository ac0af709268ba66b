"""Chunk-parallel recurrences in plain PyTorch (the CPU path; autograd through PyTorch).

Self-contained on purpose: this file imports only torch and typing, because exported models embed
its source as their fallback when hybridnas is not installed.

The sequence is cut into chunks of C tokens. Inside a chunk everything is a masked matmul; between
chunks only the [K, V] state is carried. With b the chunk-local cumulative log decay (b <= 0, non-
increasing), the decay from s to t >= s is exp(b_t - b_s) = exp(b_t) * exp(-b_s). That split is used
only for chunks where |b| <= MAX_SPAN, so exp(-b_s) <= e^MAX_SPAN stays finite and precise; the other
("wide") chunks are recomputed exactly: per-head decays through a [C, C] matrix of ratios masked
before the exp, per-channel decays hierarchically with every factor <= 1. No decay value, however
large, can overflow. Long inputs run in segments (the state carried across) so that intermediates
stay small, which is markedly faster on CPU.

Two shortcuts, for the short sequences of proxy training and for Mamba: a single chunk that starts
from a zero state and whose final state is not asked for is just o = A v (the delta rule's U solved
for v alone), with no state to build or carry; and a value width of 1 (Mamba's per-channel states)
steps the recurrence through T, since the chunk form's [C, C] scores per head then cost far more
than the [K, 1] state they stand in for.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

Tensor = torch.Tensor

#: Largest |cumulative log decay| inside a chunk for which exp(b_t) * exp(-b_s) is used directly.
MAX_SPAN = 30.0
#: Values per [B, H, segment, D] tensor when a long input is run in segments (about 2 MiB in float32).
SEGMENT_ELEMENTS = 1 << 19
#: Fewest state rows (B * H) for which a V = 1 recurrence runs token by token: with fewer, the
#: per-step overhead of T small steps outweighs the chunks' [C, C] scores (measured crossover: 16-32).
SCAN_MIN_ROWS = 32


def no_autocast(x: Tensor) -> torch.autocast:
    """Autocast off on x's device: under bf16 autocast (training on a GPU) the chunk matmuls would
    otherwise be rounded to bf16 while the state is meant to accumulate in float32."""
    return torch.autocast(x.device.type, enabled=False)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state is kept in: float32 for half/bfloat16 inputs, else the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _DenseGrad(torch.autograd.Function):
    """The identity, with a contiguous gradient. The chunk forms' matmuls with transposed operands
    hand back input gradients laid out as [B, H, D, T]; the elementwise backward ops upstream (the
    short conv's SiLU, the projections) run several times slower on that layout than one copy costs."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def _chunks(x: Tensor, C: int, acc: torch.dtype) -> Tensor:
    """[B, T, H, ...] -> [B*H, N, C, ...], zero-padded to N*C tokens, in dtype `acc`."""
    B, T, H = x.shape[:3]
    N = -(-T // C)
    x = (_DenseGrad.apply(x) if x.requires_grad else x).to(acc)
    if N * C > T:  # zeros are neutral: k = beta = 0 adds nothing, log decay 0 keeps the state
        x = torch.cat([x, x.new_zeros(B, N * C - T, *x.shape[2:])], dim=1)
    x = x.reshape(B, N, C, H, *x.shape[3:]).movedim(3, 1)  # [B, H, N, C, ...]
    return x.reshape(B * H, N, C, *x.shape[4:])


def _exact_scores(x: Tensor, y: Tensor, b: Tensor) -> Tensor:
    """A[t, s] = sum_k x[t,k] y[s,k] exp(b[t,k] - b[s,k]) for s <= t, else 0, for any decay.

    x, y: [M, C, K]; b: [M, C, 1] (per head) or [M, C, K] (per channel). Returns [M, C, C].
    """
    C = x.shape[-2]
    mask = torch.ones(C, C, dtype=x.dtype, device=x.device).tril()
    if b.shape[-1] == 1:  # zeroing b_t - b_s above the diagonal keeps the exp finite
        return (x @ y.transpose(-1, -2)) * (((b - b.transpose(-1, -2)) * mask).exp() * mask)
    # Bottom-up: A holds the lower-triangular diagonal blocks of size h; each level joins pairs
    # of them with the block where the second half attends to the first half through the last
    # token of the first half, so both factors are exp of a non-positive number.
    A = (x * y).sum(-1)[..., None, None]  # [M, C, 1, 1]
    h = 1
    while h < C:
        n = C // (2 * h)
        xb, yb, bb = (z.unflatten(-2, (n, 2, h)) for z in (x, y, b))  # [M, n, 2, h, K]
        ref = bb[..., 0, h - 1 :, :]  # [M, n, 1, K]
        xs = xb[..., 1, :, :] * (bb[..., 1, :, :] - ref).exp()  # [M, n, h, K]
        ys = yb[..., 0, :, :] * (ref - bb[..., 0, :, :]).exp()  # [M, n, h, K]
        low = xs @ ys.transpose(-1, -2)  # [M, n, h, h]
        first, second = A[..., 0::2, :, :], A[..., 1::2, :, :]
        A = torch.cat([torch.cat([first, torch.zeros_like(first)], -1), torch.cat([low, second], -1)], -2)
        h *= 2
    return A.reshape(-1, C, C)


def _fix_wide(scores: list[Tensor], xs: list[tuple[Tensor, object]], y: Tensor, b: Tensor) -> list[Tensor]:
    """Recompute exactly the chunks of each score [BH, N, C, C] whose |b| exceeds MAX_SPAN.

    xs: one (x, factor) per score, its queries being x * factor (factor a float or [BH, N, C, 1]).
    """
    bd = b.detach()
    wide = (bd.amax((-2, -1)) > MAX_SPAN) | (bd.amin((-2, -1)) < -MAX_SPAN)  # [BH, N]
    if not bool(wide.any()):
        return scores
    idx = wide.nonzero(as_tuple=True)
    out = []
    for A, (x, f) in zip(scores, xs):
        x = x[idx] * (f[idx] if isinstance(f, Tensor) else f)
        out.append(A.index_put(idx, _exact_scores(x, y[idx], b[idx])))
    return out


def _check(g: Optional[Tensor], gk: Optional[Tensor], chunk_size: int) -> None:
    if g is not None and gk is not None:
        raise ValueError("g and gk: pass at most one decay (per-head g or per-channel gk)")
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: must be a power of two, got {chunk_size}")


def _segments(B: int, H: int, D: int, chunk_size: int) -> int:
    """Tokens per segment: a multiple of the chunk size with about SEGMENT_ELEMENTS values per tensor."""
    return max(chunk_size, SEGMENT_ELEMENTS // (B * H * D) // chunk_size * chunk_size)


def _run(
    core: Callable[..., tuple[Tensor, Tensor]],
    tensors: list[Optional[Tensor]],  # [B, T, ...] each, or None
    S: Optional[Tensor],  # [BH, K, V] state entering the first segment; None: zeros
    extra: tuple[float, int],  # (scale, chunk_size), passed through to core
    segment: int,  # tokens per segment
    dtype: torch.dtype,  # dtype of the returned output
    final: bool,  # whether the caller wants the state after the last token
) -> tuple[Tensor, Optional[Tensor]]:
    """Apply core(*pieces, S, *extra, final) -> (o, S) to consecutive pieces of `tensors` along T.

    `final` tells a piece whether its closing state is needed: always, except by the last piece when
    the caller does not want the final state.
    """
    T = tensors[0].shape[1]
    pieces = [x.split(segment, 1) if x is not None else [None] * (-(-T // segment)) for x in tensors]
    outs = []
    n = len(pieces[0])
    for i, args in enumerate(zip(*pieces)):
        o, S = core(*args, S, *extra, final or i < n - 1)
        outs.append(o)
    o = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    return o.to(dtype=dtype, memory_format=torch.contiguous_format), S


def _decay(g: Optional[Tensor], gk: Optional[Tensor], C: int, acc: torch.dtype) -> Optional[Tensor]:
    """b, the chunk-local cumulative log decay [BH, N, C, 1 or K], or None without decay."""
    if g is not None:
        return _chunks(g, C, acc)[..., None].cumsum(-2)
    if gk is not None:
        return _chunks(gk, C, acc).cumsum(-2)
    return None


def _decay_factors(b: Tensor, to_end: bool = True) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """exp(b) (to the chunk start), exp(-b) clamped at e^MAX_SPAN and exp(b_C - b) (to the chunk end;
    None unless `to_end`: a chunk that passes no state on does not need it).

    In-place ops on fresh intermediates save allocations (autograd only keeps what it needs).
    """
    end = (b[..., -1:, :] - b).exp_() if to_end else None
    return b.exp(), b.clamp(min=-MAX_SPAN).neg_().exp_(), end


def _initial(initial_state: Optional[Tensor], B: int, H: int, K: int, V: int, like: Tensor) -> Optional[Tensor]:
    """[BH, K, V] in the accumulation dtype, or None for a zero state (the cores make it when they need it)."""
    if initial_state is None:
        return None
    return initial_state.to(accumulation_dtype(like.dtype)).reshape(B * H, K, V)


def _chunk_len(T: int, chunk_size: int) -> int:
    return min(chunk_size, 1 << max(T - 1, 0).bit_length())  # short inputs use one short chunk


def _unchunk(o: Tensor, B: int, T: int, H: int) -> Tensor:
    """[B*H, N, C, V] -> [B, T, H, V] (a view)."""
    return o.reshape(B, H, -1, o.shape[-1])[:, :, :T].transpose(1, 2)


def _gla_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    gk: Optional[Tensor],
    S: Optional[Tensor],
    scale: float,
    chunk_size: int,
    final: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """One segment of gated linear attention from state S [BH, K, V] (None: zeros); returns (o view,
    new S, or None when neither `final` nor a later chunk needs it)."""
    B, T, H, K = q.shape
    C, acc = _chunk_len(T, chunk_size), accumulation_dtype(q.dtype)
    alone = S is None and T <= C and not final  # one chunk from a zero state: o = A v
    b = _decay(g, gk, C, acc)
    q, k, v = (_chunks(x, C, acc) for x in (q, k, v))  # [BH, N, C, *]
    mask = torch.ones(C, C, dtype=acc, device=q.device).tril()
    decay = None
    if b is None:
        q = q * scale
        A = (q @ k.transpose(-1, -2)).mul_(mask)  # [BH, N, C, C]
    else:
        start, inv, end = _decay_factors(b, not alone)  # [BH, N, C, K'] each
        qe = (q * start).mul_(scale)  # decayed from the chunk start to t
        A = (qe @ (k * inv).transpose(-1, -2)).mul_(mask)  # exact unless the chunk is wide
        (A,) = _fix_wide([A], [(q, scale)], k, b)
        if not alone:
            q, k = qe, k * end  # k decayed from s to the chunk end
            decay = b[..., -1:, :].transpose(-1, -2).exp()  # [BH, N, K', 1]
    if alone:
        return _unchunk(A @ v, B, T, H), None
    if S is None:
        S = q.new_zeros(B * H, K, v.shape[-1])
    U = k.transpose(-1, -2) @ v  # [BH, N, K, V] what each chunk adds to the state
    states = []
    for n, u in enumerate(U.unbind(1)):
        states.append(S)
        S = u + S if decay is None else torch.addcmul(u, decay[:, n], S)
    o = (q @ torch.stack(states, 1)).add_(A @ v)  # [BH, N, C, V]
    return _unchunk(o, B, T, H), S


def _delta_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Optional[Tensor],
    gk: Optional[Tensor],
    S: Optional[Tensor],
    scale: float,
    chunk_size: int,
    final: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """One segment of the gated delta rule from state S [BH, K, V] (None: zeros); returns (o view,
    new S, or None when neither `final` nor a later chunk needs it)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C, acc = _chunk_len(T, chunk_size), accumulation_dtype(q.dtype)
    alone = S is None and T <= C and not final  # one chunk from a zero state: o = A U, U = W
    b = _decay(g, gk, C, acc)
    q, k, v = (_chunks(x, C, acc) for x in (q, k, v))  # [BH, N, C, *]
    beta = _chunks(beta, C, acc)[..., None]  # [BH, N, C, 1]
    mask = torch.ones(C, C, dtype=acc, device=q.device).tril()
    if b is None:
        qe, kinv, kb = q * scale, k, k * beta
    else:
        start, inv, end = _decay_factors(b, not alone)  # [BH, N, C, K'] each
        qe, kb = (q * start).mul_(scale), k * (start * beta)  # decayed from the chunk start
        kinv = k * inv  # exact unless the chunk is wide
    Aqk = (qe @ kinv.transpose(-1, -2)).mul_(mask)  # [BH, N, C, C]
    Akk = kb @ kinv.transpose(-1, -2)  # only its strictly lower part is read
    if b is not None:
        Aqk, Akk = _fix_wide([Aqk, Akk], [(q, scale), (k, beta)], k, b)
    if alone:  # S0 = 0: W = U, and nothing is carried
        U = torch.linalg.solve_triangular(Akk, v * beta, upper=False, unitriangular=True)
        return _unchunk(Aqk @ U, B, T, H), None
    if S is None:
        S = q.new_zeros(B * H, K, V)
    kd = k if b is None else k * end  # decayed to the chunk end
    # (I + strictly_lower(Akk)) [U | Wk] = diag(beta) [V | k e^b], then W = U - Wk S0.
    UW = torch.linalg.solve_triangular(Akk, torch.cat([v * beta, kb], -1), upper=False, unitriangular=True)
    R, M = (kd.transpose(-1, -2) @ UW).split([V, K], -1)  # [BH, N, K, V], [BH, N, K, K]
    M = M.neg()  # S_next = M S + R with M = diag(chunk decay) - kd^T Wk
    M.diagonal(dim1=-2, dim2=-1).add_(1.0 if b is None else b[..., -1, :].exp())
    states = []
    for m, r in zip(M.unbind(1), R.unbind(1)):
        states.append(S)
        S = torch.baddbmm(r, m, S)
    AU, AW = (Aqk @ UW).split([V, K], -1)  # [BH, N, C, V], [BH, N, C, K]
    o = ((qe - AW) @ torch.stack(states, 1)).add_(AU)  # [BH, N, C, V]
    return _unchunk(o, B, T, H), S


def _gla_scan(
    q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], gk: Optional[Tensor], S: Optional[Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """The recurrence token by token, for a state of one column (V = 1): o [B, T, H, 1], S [BH, K, 1].

    Every factor exp(g) <= 1 multiplies the state directly, so no decay can overflow. The inputs are
    unbound once along T (indexing them per step would make autograd allocate a full gradient per step).
    """
    B, T, H, K = q.shape
    dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    kv = (k * v).unbind(1)  # [B, H, K] per step (V = 1)
    if g is not None:
        alpha = g.to(acc).exp()[..., None].unbind(1)  # [B, H, 1]
    elif gk is not None:
        alpha = gk.to(acc).exp().unbind(1)  # [B, H, K]
    else:
        alpha = (None,) * T
    states = []
    s = q.new_zeros(B, H, K) if S is None else S.reshape(B, H, K)  # zeros: every decay stays in the graph
    for u, a in zip(kv, alpha):
        s = s + u if a is None else torch.addcmul(u, a, s)
        states.append(s)
    o = (torch.stack(states, 1) * q).sum(-1, keepdim=True).mul_(scale)  # [B, T, H, 1]
    return o.to(dtype), s.reshape(B * H, K, 1)


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
    """S_t = diag(alpha_t) S_{t-1} + k_t v_t^T ;  o_t = scale * S_t^T q_t, chunk by chunk.

    Per chunk, o = (q e^b) S0 + A v with A[t, s] = q_t . (k_s e^{b_t - b_s}) for s <= t, and the
    state entering the next chunk is e^{b_C} S0 + (k e^{b_C - b})^T v.
    """
    _check(g, gk, chunk_size)
    B, _, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    with no_autocast(q):
        S = _initial(initial_state, B, H, K, V, q)
        if V == 1 and B * H >= SCAN_MIN_ROWS:
            o, S = _gla_scan(q, k, v, g, gk, S, scale)
        else:
            segment = _segments(B, H, max(K, V), chunk_size)
            o, S = _run(_gla_core, [q, k, v, g, gk], S, (scale, chunk_size), segment, q.dtype, output_final_state)
    return o, (S.reshape(B, H, K, V) if output_final_state else None)


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

    With S0 entering a chunk, S_t = diag(e^{b_t}) S0 + sum_{s<=t} diag(e^{b_t-b_s}) k_s w_s^T, where
    the pseudo-values solve (I + diag(beta) L) W = diag(beta) (V - (k e^b) S0), L being the strictly
    lower decayed k k^T. Splitting W = U - Wk S0 leaves one [K, K] matmul per chunk in the scan.
    """
    _check(g, gk, chunk_size)
    B, _, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    with no_autocast(q):
        S = _initial(initial_state, B, H, K, V, q)
        segment = _segments(B, H, max(K, V), chunk_size)
        o, S = _run(_delta_core, [q, k, v, beta, g, gk], S, (scale, chunk_size), segment, q.dtype, output_final_state)
    return o, (S.reshape(B, H, K, V) if output_final_state else None)
