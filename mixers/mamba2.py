"""Mamba-2's SSD layer in attention form: a data-dependent scalar decay per head (Dao & Gu, 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import INIT_STD, RecurrentMixer, reset_decay, run_gla
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class Mamba2(RecurrentMixer):
    """S = exp(-A_h dt_t) S + k v^T with dt_t = softplus(a_proj(x) + dt_bias) per head (q = C, k = B, v = x).

    Init: A = 1 and the step sizes dt spread over [1e-3, 1e-1] across heads (time scales of 10 to
    1000 tokens), where Mamba-2 draws them at random: with two heads a draw can leave no long memory.
    """

    def extra_parameters(self, d_model: int) -> None:
        self.a_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        super().reset_parameters(out_std)
        reset_decay(self.A_log, self.dt_bias)

    def recurrence(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = -torch.exp(self.A_log) * F.softplus(self.a_proj(x) + self.dt_bias)  # [B, T, H] log decay
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
