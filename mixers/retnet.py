"""Retention: linear attention with a fixed decay per head (RetNet, Sun et al., 2023)."""

from __future__ import annotations

import torch

from hybridnas.mixers.layers import RecurrentMixer, run_gla
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class RetNet(RecurrentMixer):
    """S = gamma_h S + k v^T with gamma_h = 1 - 2^(-5 - h): head h remembers about 2^(5 + h) tokens."""

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, H = q.shape[:3]
        heads = torch.arange(H, device=x.device, dtype=x.dtype)
        g = torch.log1p(-torch.pow(2.0, -5.0 - heads)).expand(B, T, H)  # [B, T, H] log gamma
        return run_gla(q, k, v, g, None, state, use_cache)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=2)


MIXER = MixerDef(
    name="retnet",
    module=RetNet,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="retention: a fixed, per-head exponential decay",
    reference="Sun et al. 2023 (RetNet)",
)
