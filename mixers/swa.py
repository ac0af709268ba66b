"""Sliding-window attention: softmax attention over the last `window` tokens (as in Samba, Griffin)."""

from __future__ import annotations

from hybridnas.mixers.attention import Attention
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, attention_cost


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return attention_cost(layer, d_model, context_len, window=layer.window)


MIXER = MixerDef(
    name="swa",
    module=Attention,
    kind="full",
    options=("n_heads", "gate", "short_conv", "conv_size", "window"),
    cost=_cost,
    summary="sliding-window softmax attention with RoPE; the KV cache stops growing at the window",
    reference="Beltagy et al. 2020 (Longformer); in hybrids: Samba (Ren et al. 2024), Griffin (De et al. 2024)",
)
