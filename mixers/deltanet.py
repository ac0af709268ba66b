"""DeltaNet: linear attention with the delta rule, S += beta k (v - S^T k)^T (Schlag et al., 2021; Yang et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import RecurrentMixer, run_delta_rule
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class DeltaNet(RecurrentMixer):
    """The delta rule with L2-normalized q and k and a write strength beta_t = sigmoid(b_proj(x)) per head."""

    def extra_parameters(self, d_model: int) -> None:
        self.b_proj = nn.Linear(d_model, self.n_heads, bias=False)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k = F.normalize(q, p=2.0, dim=-1), F.normalize(k, p=2.0, dim=-1)
        beta = torch.sigmoid(self.b_proj(x))  # [B, T, H]
        return run_delta_rule(q, k, v, beta, None, None, state, use_cache)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=3)


MIXER = MixerDef(
    name="deltanet",
    module=DeltaNet,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="DeltaNet: the delta rule, overwriting the value stored under a key",
    reference="Schlag et al. 2021; Yang et al. 2024 (parallel DeltaNet)",
)
