"""Gated DeltaNet: the delta rule with a data-dependent scalar decay per head (Yang, Kautz & Hatamizadeh, 2025)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import INIT_STD, RecurrentMixer, reset_decay, run_delta_rule
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class GatedDeltaNet(RecurrentMixer):
    """S' = exp(g_t) S ; S = S' + beta_t k (v - S'^T k)^T with g_t = -A_h softplus(a_proj(x) + dt_bias) per head.

    Init: A = 1 and dt spread over [1e-3, 1e-1] across heads (see Mamba2).
    """

    def extra_parameters(self, d_model: int) -> None:
        self.b_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.a_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        super().reset_parameters(out_std)
        reset_decay(self.A_log, self.dt_bias)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k = F.normalize(q, p=2.0, dim=-1), F.normalize(k, p=2.0, dim=-1)
        beta = torch.sigmoid(self.b_proj(x))  # [B, T, H]
        g = -torch.exp(self.A_log) * F.softplus(self.a_proj(x) + self.dt_bias)  # [B, T, H] log decay
        return run_delta_rule(q, k, v, beta, g, None, state, use_cache)


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
