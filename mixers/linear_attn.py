"""Linear attention: S = S + k v^T with no decay (Katharopoulos et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridnas.mixers.layers import RecurrentMixer, run_gla
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class LinearAttention(RecurrentMixer):
    """o_t = (sum_{s<=t} phi(k_s) v_s^T)^T phi(q_t) / sqrt(K) per head, phi the feature map."""

    def __init__(
        self,
        d_model: int,
        n_heads: int = 2,
        expand_k: float = 1.0,
        gate: str = "none",
        short_conv: bool = False,
        conv_size: int = 4,
        feature_map: str = "identity",
    ) -> None:
        super().__init__(d_model, n_heads, expand_k, gate, short_conv, conv_size)
        self.feature_map = feature_map

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.feature_map == "elu":
            q, k = F.elu(q) + 1.0, F.elu(k) + 1.0  # positive features
        elif self.feature_map == "relu":
            q, k = F.relu(q), F.relu(k)
        return run_gla(q, k, v, None, None, state, use_cache)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=2)


MIXER = MixerDef(
    name="linear_attn",
    module=LinearAttention,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size", "feature_map"),
    cost=_cost,
    summary="linear attention: an additive K x V state, no forgetting",
    reference="Katharopoulos et al. 2020",
)
