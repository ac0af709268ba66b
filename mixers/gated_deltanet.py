"""Gated DeltaNet: the delta rule with a data-dependent scalar decay per head (Yang, Kautz & Hatamizadeh, 2025)."""

from __future__ import annotations

import torch
from torch import nn

from hybridnas.mixers.layers import DecayRate, DeltaRuleMixer
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class GatedDeltaNet(DeltaRuleMixer):
    """The delta rule after a decay per head, g_t = -A_h softplus(a_proj(x) + dt_bias): forget a
    head's whole state at a learned, input-dependent rate, then write."""

    def extra_parameters(self, d_model: int) -> None:
        super().extra_parameters(d_model)
        self.a_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.rate = DecayRate(self.n_heads)

    def decay(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.rate(self.a_proj(x)), None  # g [B, T, H]


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=3)


MIXER = MixerDef(
    name="gated_deltanet",
    module=GatedDeltaNet,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="Gated DeltaNet: the delta rule with a data-dependent decay per head",
    reference="Yang, Kautz & Hatamizadeh 2025 (Gated Delta Networks)",
)
