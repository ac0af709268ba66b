"""Mamba-2's SSD layer in attention form: a data-dependent scalar decay per head (Dao & Gu, 2024)."""

from __future__ import annotations

import torch
from torch import nn

from hybridnas.mixers.layers import DecayRate, RecurrentMixer, run_gla
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class Mamba2(RecurrentMixer):
    """S = exp(-A_h dt_t) S + k v^T with dt_t = softplus(a_proj(x) + dt_bias) per head (q = C, k = B,
    v = x): SSD's scalar decay per head, in attention form."""

    def extra_parameters(self, d_model: int) -> None:
        self.a_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.rate = DecayRate(self.n_heads)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = self.rate(self.a_proj(x))  # [B, T, H] log decay
        return run_gla(q, k, v, g, None, state, use_cache)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=2)


MIXER = MixerDef(
    name="mamba2",
    module=Mamba2,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="Mamba-2 (SSD): a data-dependent scalar decay per head",
    reference="Dao & Gu 2024 (Mamba-2)",
)
