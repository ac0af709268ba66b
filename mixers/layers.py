"""Building blocks the mixers share: norms, projections to heads, the short conv, RoPE, inits.

Exports embed this file's source (without its imports), so it may use only torch, the standard
library and the kernel entry points of `hybridnas.kernels`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from hybridnas.kernels import (
    causal_conv1d,
    gated_delta_rule,
    gated_delta_rule_step,
    gated_linear_attention,
    gated_linear_attention_step,
)

INIT_STD = 0.02  # std of every projection and of the embedding at init
NORM_EPS = 1e-6


def head_dims(d_model: int, n_heads: int, expand_k: float = 1.0) -> tuple[int, int]:
    """(state rows per head K = d_model * expand_k / n_heads, value width per head V = d_model / n_heads)."""
    return int(d_model * expand_k / n_heads), d_model // n_heads


def run_gla(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    g: torch.Tensor | None,  # [B, T, H] log decay per head
    gk: torch.Tensor | None,  # [B, T, H, K] log decay per key channel
    state: torch.Tensor | None,  # [B, H, K, V] from the cache
    use_cache: bool,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S = diag(exp g) S + k v^T ; o = scale * S^T q: the step update for one cached token, else the chunked kernel."""
    if state is not None and q.shape[1] == 1:
        o, state = gated_linear_attention_step(
            q[:, 0], k[:, 0], v[:, 0], state, g=None if g is None else g[:, 0], gk=None if gk is None else gk[:, 0], scale=scale
        )
        return o[:, None], state
    return gated_linear_attention(q, k, v, g=g, gk=gk, scale=scale, initial_state=state, output_final_state=use_cache)


def run_delta_rule(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    beta: torch.Tensor,  # [B, T, H]
    g: torch.Tensor | None,  # [B, T, H]
    gk: torch.Tensor | None,  # [B, T, H, K]
    state: torch.Tensor | None,  # [B, H, K, V] from the cache
    use_cache: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (gated) delta rule: the step update for one cached token, else the chunked kernel."""
    if state is not None and q.shape[1] == 1:
        o, state = gated_delta_rule_step(
            q[:, 0], k[:, 0], v[:, 0], beta[:, 0], state, g=None if g is None else g[:, 0], gk=None if gk is None else gk[:, 0]
        )
        return o[:, None], state
    return gated_delta_rule(q, k, v, beta, g=g, gk=gk, initial_state=state, output_final_state=use_cache)


class RMSNorm(nn.Module):
    """RMS normalization over the last dimension with a learned gain, `init` at the start."""

    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return _RMSNormCPU.apply(x, self.weight, NORM_EPS)
        return F.rms_norm(x, (x.shape[-1],), self.weight, NORM_EPS)


class _RMSNormCPU(torch.autograd.Function):
    """F.rms_norm with its backward written out: on CPU torch composes it from pow, mean and
    rsqrt kernels, forward and backward, which takes about a third more time at proxy sizes.
    The forward is the same ops in the same order; half-precision inputs are normalized in float32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        r = torch.rsqrt((xf * xf).mean(-1, keepdim=True).add_(eps))  # [..., 1]
        xhat = xf * r
        ctx.save_for_backward(xhat, r, weight)
        return (xhat * weight).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        xhat, r, weight = ctx.saved_tensors
        g = grad.to(xhat.dtype)
        grad_weight = (g * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        gx = g * weight  # d loss / d xhat
        grad_x = (gx - xhat * (gx * xhat).mean(-1, keepdim=True)).mul_(r)
        return grad_x.to(grad.dtype), grad_weight.to(weight.dtype), None


class ShortConv(nn.Module):
    """Causal depthwise convolution over time (weight [D, W]), optionally followed by SiLU."""

    def __init__(self, dim: int, width: int, activation: bool = True) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(dim, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])  # nn.Conv1d's default for a depthwise kernel
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, state = causal_conv1d(x, self.weight, state=state, output_final_state=use_cache)  # [B, T, D]
        return (F.silu(y) if self.activation else y), state


class HeadProjection(nn.Module):
    """x [B, T, d] -> [B, T, H, D]: a linear map, then (when conv_size > 0) a causal short conv + SiLU.

    The conv's decode state is the last conv_size - 1 projected inputs.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, conv_size: int = 0) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.conv = ShortConv(n_heads * head_dim, conv_size) if conv_size else None

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        y = self.proj(x)  # [B, T, H * D]
        if self.conv is not None:
            y, state = self.conv(y, state, use_cache)
        return y.reshape(B, T, self.n_heads, self.head_dim), state  # [B, T, H, D]


class QKV(nn.Module):
    """x [B, T, d] -> q, k [B, T, H, K] and v [B, T, H, V], each its own projection (and short conv)."""

    def __init__(self, d_model: int, n_heads: int, head_k: int, head_v: int, conv_size: int = 0) -> None:
        super().__init__()
        self.q = HeadProjection(d_model, n_heads, head_k, conv_size)
        self.k = HeadProjection(d_model, n_heads, head_k, conv_size)
        self.v = HeadProjection(d_model, n_heads, head_v, conv_size)

    def forward(
        self, x: torch.Tensor, cache: dict[str, Any], new: dict[str, Any], use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reads the conv states from `cache`, writes the next ones into `new`."""
        q, new["q_conv"] = self.q(x, cache.get("q_conv"), use_cache)
        k, new["k_conv"] = self.k(x, cache.get("k_conv"), use_cache)
        v, new["v_conv"] = self.v(x, cache.get("v_conv"), use_cache)
        return q, k, v


class OutputHead(nn.Module):
    """o [B, T, H, V] -> [B, T, d]: per-head RMSNorm (optional), output gate from x (optional), o_proj.

    The norm's gain starts at 1 / sqrt(H * V): the normalized heads then carry as much as one
    unit-variance feature in all, so at init the layer writes about o_proj's std per residual channel,
    whatever the width; a gain of 1 would write sqrt(H * V) times that, more than the embedding.
    """

    def __init__(self, d_model: int, n_heads: int, head_v: int, gate: str = "none", norm: bool = True) -> None:
        super().__init__()
        value_dim = n_heads * head_v
        self.gate = gate
        self.norm = RMSNorm(head_v, init=value_dim**-0.5) if norm else None
        self.g_proj = nn.Linear(d_model, value_dim, bias=False) if gate != "none" else None
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, T = o.shape[:2]
        if self.norm is not None:
            o = self.norm(o)
        o = o.reshape(B, T, -1)  # [B, T, H * V]
        return self.o_proj(apply_gate(o, self.g_proj, x, self.gate))


class RecurrentMixer(nn.Module):
    """The shape every recurrent mixer shares: q/k/v projections (each with its short conv when
    `short_conv`), a recurrence over a K x V state per head, a per-head RMSNorm, the output gate, o_proj.

    A mixer subclasses it: `extra_parameters` adds its own parameters (decay, write strength),
    `reset_parameters` initializes them after the projections, and `recurrence` maps q, k, v (and x)
    to o [B, T, H, V] and the next state. K = d_model * expand_k / n_heads, V = d_model / n_heads.
    Decode cache: the state [B, H, K, V] ("state") and the conv states ("q_conv", "k_conv", "v_conv").
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 2,
        expand_k: float = 1.0,
        gate: str = "none",
        short_conv: bool = False,
        conv_size: int = 4,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_k, self.head_v = head_dims(d_model, n_heads, expand_k)
        self.qkv = QKV(d_model, n_heads, self.head_k, self.head_v, conv_size if short_conv else 0)
        self.extra_parameters(d_model)
        self.out = OutputHead(d_model, n_heads, self.head_v, gate)
        self.reset_parameters()

    def extra_parameters(self, d_model: int) -> None:
        """Create the mixer's own parameters (called once, from __init__)."""

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        reset_linears(self, out_std)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0
    ) -> tuple[torch.Tensor, dict | None]:
        cache, new = new_cache(cache)
        q, k, v = self.qkv(x, cache, new, use_cache)  # [B, T, H, K], [B, T, H, K], [B, T, H, V]
        o, new["state"] = self.recurrence(x, q, k, v, cache.get("state"), use_cache)  # [B, T, H, V]
        return self.out(o, x), (new if use_cache else None)


class DeltaRuleMixer(RecurrentMixer):
    """The delta rule family: L2-normalized q and k, a write strength beta_t = sigmoid(b_proj(x)) per
    head, and the decay `decay(x)` gives (none here: DeltaNet; per head: Gated DeltaNet; per key
    channel: KDA). S' = diag(alpha_t) S ; S = S' + beta_t k (v - S'^T k)^T ; o = S^T q / sqrt(K)."""

    def extra_parameters(self, d_model: int) -> None:
        self.b_proj = nn.Linear(d_model, self.n_heads, bias=False)

    def decay(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(g [B, T, H], gk [B, T, H, K]) log decays, at most one of them; neither for the plain rule."""
        return None, None

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k = F.normalize(q, p=2.0, dim=-1), F.normalize(k, p=2.0, dim=-1)
        beta = torch.sigmoid(self.b_proj(x))  # [B, T, H]
        g, gk = self.decay(x)
        return run_delta_rule(q, k, v, beta, g, gk, state, use_cache)


class DecayRate(nn.Module):
    """A data-dependent log decay, -A softplus(z + dt_bias), from logits z [..., H * C]: A = exp(A_log)
    per head, dt_bias per head (C = 1, Mamba-2, Gated DeltaNet) or per key channel (C = K, KDA).

    Init: A = 1 and the step sizes dt spread over [1e-3, 1e-1] (time scales of 10 to 1000 tokens),
    where Mamba-2 draws them at random: with the two heads of a proxy model a draw can leave no long
    memory at all, and which one a seed gets would be ranked instead of the architecture.
    """

    def __init__(self, n_heads: int, per_head: int = 1) -> None:
        super().__init__()
        self.per_head = per_head
        self.A_log = nn.Parameter(torch.empty(n_heads))
        self.dt_bias = nn.Parameter(torch.empty(n_heads * per_head))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.A_log.zero_()
            self.dt_bias.copy_(inverse_softplus(spread_dt(self.dt_bias.numel())))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        A = torch.exp(self.A_log).repeat_interleave(self.per_head)  # [H * C]
        return -A * F.softplus(z + self.dt_bias)  # [..., H * C]


def apply_gate(y: torch.Tensor, g_proj: nn.Module | None, x: torch.Tensor, gate: str) -> torch.Tensor:
    """y * act(g_proj(x)) for the sigmoid or swish gate; y itself without one."""
    if g_proj is None or gate == "none":
        return y
    g = g_proj(x)
    return y * (torch.sigmoid(g) if gate == "sigmoid" else F.silu(g))


def rope(x: torch.Tensor, offset: int) -> torch.Tensor:
    """Rotary position embedding (base 10000) of x [B, T, H, D] at positions offset..offset+T-1.

    The pairs (x1, x2) of the two halves become (x1 cos - x2 sin, x2 cos + x1 sin), computed as
    x * cos + swap(x) * sin with sin negated on the first half: the same products and sums, bit for
    bit, in fewer whole-row ops, with tables [T, H, D] that broadcast over the batch only (cheaper
    on CPU than broadcasting over heads too).
    """
    T, H, D = x.shape[1], x.shape[2], x.shape[-1]
    half = D // 2  # an odd last channel is left as it is
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=dtype) * 2 / (2 * half))  # [half]
    pos = torch.arange(offset, offset + T, device=x.device, dtype=dtype)
    angle = pos[:, None] * inv_freq[None, :]  # [T, half]
    cos, sin = angle.cos(), angle.sin()
    cos = torch.cat([cos, cos], -1)[:, None, :].to(x.dtype).expand(T, H, 2 * half).contiguous()  # [T, H, 2 half]
    sin = torch.cat([-sin, sin], -1)[:, None, :].to(x.dtype).expand(T, H, 2 * half).contiguous()
    pairs = x[..., : 2 * half]
    swapped = pairs.unflatten(-1, (2, half)).flip(-2).flatten(-2)  # (x2, x1)
    out = pairs * cos + swapped * sin
    return out if 2 * half == D else torch.cat([out, x[..., 2 * half :]], dim=-1)


def spread_dt(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """n step sizes at evenly spaced quantiles of log-uniform(dt_min, dt_max). [n]

    Mamba-2 draws them at random; with the few heads of a proxy model that is a lottery (two heads
    may both forget within a few tokens), so the time scales 1/dt are spread deterministically.
    """
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return torch.exp(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y with softplus(y) = x, for x > 0."""
    return x + torch.log(-torch.expm1(-x))


def reset_linears(module: nn.Module, out_std: float) -> None:
    """N(0, INIT_STD) for every nn.Linear weight under `module`, N(0, out_std) for the ones named
    o_proj (they write into the residual stream), zero biases; other submodules reset themselves."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, out_std if name.rsplit(".", 1)[-1] == "o_proj" else INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def new_cache(cache: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the cache passed in, or an empty one; the dict the layer fills for the next call)."""
    return cache or {}, {}
