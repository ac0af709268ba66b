"""A gated short convolution: the cheapest token mixer, recall only within its width (H3/Hyena-style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import INIT_STD, ShortConv, apply_gate, new_cache, reset_linears
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef


class ShortConvMixer(nn.Module):
    """y = conv(value) * silu(gate), value and gate from one projection of x; then the output gate and o_proj.

    Decode cache: the last conv_size - 1 values ("conv").
    """

    def __init__(self, d_model: int, gate: str = "none", conv_size: int = 4) -> None:
        super().__init__()
        self.gate = gate
        self.in_proj = nn.Linear(d_model, 2 * d_model, bias=False)  # value and gate
        self.conv = ShortConv(d_model, conv_size, activation=False)
        self.g_proj = nn.Linear(d_model, d_model, bias=False) if gate != "none" else None
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        reset_linears(self, out_std)

    def forward(
        self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0
    ) -> tuple[torch.Tensor, dict | None]:
        cache, new = new_cache(cache)
        value, gate = self.in_proj(x).chunk(2, dim=-1)  # [B, T, D] each
        y, new["conv"] = self.conv(value, cache.get("conv"), use_cache)
        y = apply_gate(y * F.silu(gate), self.g_proj, x, self.gate)
        return self.o_proj(y), (new if use_cache else None)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    # The conv taps are weights multiplied once per token: counted with the parameters.
    return MixerCost(flops=0.0, state=(layer.conv_size - 1) * d_model)


MIXER = MixerDef(
    name="short_conv",
    module=ShortConvMixer,
    kind="linear",
    options=("gate", "conv_size"),
    cost=_cost,
    summary="a gated causal convolution over the last conv_size tokens",
    reference="Fu et al. 2023 (H3); Poli et al. 2023 (Hyena)",
)
