"""Mamba's selective state-space layer (S6), the recurrent half of Jamba and Samba (Gu & Dao, 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import (
    INIT_STD,
    ShortConv,
    apply_gate,
    inverse_softplus,
    new_cache,
    reset_linears,
    run_gla,
    spread_dt,
)
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef

D_STATE = 16  # state size N per channel, as in Mamba
EXPAND = 2  # inner width = EXPAND * d_model


class Mamba(nn.Module):
    """x -> (u, z); u = silu(conv(u)); h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t per channel;
    y = (C_t h_t + D u_t) * silu(z); out = o_proj(y).

    A channel's state h is [N]: this is gated linear attention with one head per inner channel, K = N,
    V = 1 (q = C, k = B, v = dt * u, per-channel log decay dt * A), so it runs on the same kernels.
    Init as in Mamba: S4D-real A_n = n, dt_proj's bias puts dt in [1e-3, 1e-1] (spread over the
    channels), D = 1. Decode cache: the states [B, inner, N, 1] ("state") and the conv ("conv").
    """

    def __init__(self, d_model: int, gate: str = "none", conv_size: int = 4) -> None:
        super().__init__()
        self.gate = gate
        self.inner = EXPAND * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.inner, bias=False)  # u and z
        self.conv = ShortConv(self.inner, conv_size)
        self.x_proj = nn.Linear(self.inner, self.dt_rank + 2 * D_STATE, bias=False)  # dt (low rank), B, C
        self.dt_proj = nn.Linear(self.dt_rank, self.inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.inner * D_STATE))
        self.D = nn.Parameter(torch.empty(self.inner))
        self.g_proj = nn.Linear(d_model, self.inner, bias=False) if gate != "none" else None
        self.o_proj = nn.Linear(self.inner, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        reset_linears(self, out_std)
        with torch.no_grad():
            bound = self.dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus(spread_dt(self.inner)))
            self.A_log.copy_(torch.arange(1, D_STATE + 1, dtype=torch.float32).log().repeat(self.inner))
            self.D.fill_(1.0)

    def forward(
        self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0
    ) -> tuple[torch.Tensor, dict | None]:
        cache, new = new_cache(cache)
        B, T, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, I] each
        u, new["conv"] = self.conv(u, cache.get("conv"), use_cache)
        dt, b, c = self.x_proj(u).split([self.dt_rank, D_STATE, D_STATE], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # [B, T, I]
        gk = -torch.exp(self.A_log).view(self.inner, D_STATE) * dt[..., None]  # [B, T, I, N] log decay
        k = b[:, :, None, :].expand(B, T, self.inner, D_STATE)  # [B, T, I, N], shared by the channels
        q = c[:, :, None, :].expand(B, T, self.inner, D_STATE)
        o, new["state"] = run_gla(q, k, (dt * u)[..., None], None, gk, cache.get("state"), use_cache, scale=1.0)
        y = (o[..., 0] + self.D * u) * F.silu(z)  # [B, T, I]
        return self.o_proj(apply_gate(y, self.g_proj, x, self.gate)), (new if use_cache else None)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    inner = EXPAND * d_model
    # h update (dt B u) and readout (C h) over I x N, plus the decay; the conv taps count as weights.
    return MixerCost(flops=2.0 * 2 * inner * D_STATE, state=inner * D_STATE + (layer.conv_size - 1) * inner)


MIXER = MixerDef(
    name="mamba",
    module=Mamba,
    kind="linear",
    options=("gate", "conv_size"),
    cost=_cost,
    summary="Mamba (S6): a selective state space per channel, the recurrent half of Jamba and Samba",
    reference="Gu & Dao 2023 (Mamba); in hybrids: Jamba (Lieber et al. 2024), Samba (Ren et al. 2024)",
)
