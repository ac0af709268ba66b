"""DeltaNet: linear attention with the delta rule, S += beta k (v - S^T k)^T (Schlag et al., 2021; Yang et al., 2024)."""

from __future__ import annotations

from hybridnas.mixers.layers import DeltaRuleMixer
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, recurrent_cost


class DeltaNet(DeltaRuleMixer):
    """The delta rule with L2-normalized q and k and a write strength beta_t = sigmoid(b_proj(x)) per
    head: writing v under k first removes what k held. No decay."""


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
