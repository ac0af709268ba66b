"""Kimi Delta Attention (KDA): the gated delta rule with a decay per key channel (Kimi Linear, 2025)."""

from __future__ import annotations

import torch
from torch import nn

from hybridnas.mixers.layers import DecayRate, DeltaRuleMixer
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class KDA(DeltaRuleMixer):
    """The delta rule after a decay per key channel, gk_t = -A_h softplus(f_proj(x) + dt_bias), f_proj
    a low-rank map d -> V -> H * K.

    Where Gated DeltaNet forgets a whole head at once, KDA forgets each key channel at its own rate
    (GLA's per-channel gate on the delta rule).
    """

    def extra_parameters(self, d_model: int) -> None:
        super().extra_parameters(d_model)
        H, K, V = self.n_heads, self.head_k, self.head_v
        self.f_proj = nn.Sequential(nn.Linear(d_model, V, bias=False), nn.Linear(V, H * K, bias=False))
        self.rate = DecayRate(H, per_head=K)

    def decay(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        B, T = x.shape[:2]
        return None, self.rate(self.f_proj(x)).view(B, T, self.n_heads, self.head_k)  # gk [B, T, H, K]


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
