"""HGRN2: a gated linear RNN with state expansion, forget gate f and input gate 1 - f (Qin et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridnas.mixers.layers import RecurrentMixer, run_gla
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class HGRN2(RecurrentMixer):
    """S = diag(f_t) S + (1 - f_t) v^T with f_t = sigmoid(f) per key channel, f the "k" projection; o = S^T q."""

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gk = F.logsigmoid(k)  # [B, T, H, K] log forget gate
        return run_gla(q, torch.sigmoid(-k), v, None, gk, state, use_cache)  # input gate 1 - sigmoid(f)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return recurrent_cost(layer, d_model, products=2)


MIXER = MixerDef(
    name="hgrn2",
    module=HGRN2,
    kind="linear",
    options=("n_heads", "expand_k", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="HGRN2: forget gate per key channel tied to the input gate",
    reference="Qin et al. 2024 (HGRN2)",
)
