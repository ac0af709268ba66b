"""Gated linear attention: a data-dependent decay per key channel (Yang et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import RecurrentMixer, run_gla
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost

GATE_RANK = 16  # width of the low-rank projection that produces the decay
GATE_NORMALIZER = 16.0  # log decay = logsigmoid(.) / 16: slow forgetting at init, as in the paper


class GLA(RecurrentMixer):
    """S = diag(alpha_t) S + k v^T with alpha_t = sigmoid(low-rank(x))^(1/16) per key channel."""

    def extra_parameters(self, d_model: int) -> None:
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, GATE_RANK, bias=False), nn.Linear(GATE_RANK, self.n_heads * self.head_k)
        )

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gk = F.logsigmoid(self.gk_proj(x)).view_as(k) / GATE_NORMALIZER  # [B, T, H, K] log decay
        return run_gla(q, k, v, None, gk, state, use_cache)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=2)


MIXER = MixerDef(
    name="gla",
    module=GLA,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="gated linear attention: a data-dependent decay per key channel",
    reference="Yang et al. 2024 (GLA)",
)
