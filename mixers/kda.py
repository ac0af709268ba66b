"""Kimi Delta Attention (KDA): the gated delta rule with a decay per key channel (Kimi Linear, 2025)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import INIT_STD, RecurrentMixer, reset_decay, run_delta_rule
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class KDA(RecurrentMixer):
    """S' = diag(exp gk_t) S ; S = S' + beta_t k (v - S'^T k)^T, with the decay per key channel
    gk_t = -A_h softplus(f_proj(x) + dt_bias), f_proj a low-rank map d -> V -> H * K.

    Where Gated DeltaNet forgets a whole head at once, KDA forgets each key channel at its own rate
    (the per-channel gate of GLA on the delta rule). Init: A = 1, dt spread over [1e-3, 1e-1]
    across every key channel.
    """

    def extra_parameters(self, d_model: int) -> None:
        H, K = self.n_heads, self.head_k
        self.b_proj = nn.Linear(d_model, H, bias=False)
        self.f_proj = nn.Sequential(nn.Linear(d_model, self.head_v, bias=False), nn.Linear(self.head_v, H * K, bias=False))
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H * K))

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        super().reset_parameters(out_std)
        reset_decay(self.A_log, self.dt_bias)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k = F.normalize(q, p=2.0, dim=-1), F.normalize(k, p=2.0, dim=-1)
        beta = torch.sigmoid(self.b_proj(x))  # [B, T, H]
        rate = F.softplus(self.f_proj(x) + self.dt_bias).view_as(k)  # [B, T, H, K]
        gk = -torch.exp(self.A_log)[:, None] * rate  # [B, T, H, K] log decay
        return run_delta_rule(q, k, v, beta, None, gk, state, use_cache)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=3)


MIXER = MixerDef(
    name="kda",
    module=KDA,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="Kimi Delta Attention: the delta rule with a data-dependent decay per key channel",
    reference="Kimi Team 2025 (Kimi Linear)",
)
