"""Softmax attention with RoPE: the full mixer every hybrid is measured against (Vaswani et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from hybridnas.kernels import softmax_attention
from hybridnas.mixers.layers import INIT_STD, QKV, OutputHead, new_cache, reset_linears, rope
from hybridnas.mixers.registry import LayerOptions, MixerCost, MixerDef, attention_cost


class Attention(nn.Module):
    """Causal softmax attention over every earlier token (or the last `window`), RoPE on q and k,
    an optional short conv on q/k/v and an optional output gate.

    Decode cache: the keys and values seen so far ("k", "v"; a window keeps its last window - 1)
    and the conv states.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 2,
        gate: str = "none",
        short_conv: bool = False,
        conv_size: int = 4,
        window: int | None = None,
    ) -> None:
        super().__init__()
        head = d_model // n_heads
        self.window = window
        self.qkv = QKV(d_model, n_heads, head, head, conv_size if short_conv else 0)
        self.out = OutputHead(d_model, n_heads, head, gate, norm=False)
        self.reset_parameters()

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        reset_linears(self, out_std)

    def forward(
        self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0
    ) -> tuple[torch.Tensor, dict | None]:
        cache, new = new_cache(cache)
        q, k, v = self.qkv(x, cache, new, use_cache)  # [B, T, H, D] each
        q, k = rope(q, offset), rope(k, offset)
        if "k" in cache:  # decoding: the new queries are the last positions of the cached keys
            k = torch.cat([cache["k"], k], dim=1)  # [B, T_past + T, H, D]
            v = torch.cat([cache["v"], v], dim=1)
        o = softmax_attention(q, k, v, window=self.window)  # [B, T, H, D]
        if use_cache:
            keep = 0 if self.window is None else max(0, k.shape[1] - (self.window - 1))  # all the next token sees
            new["k"], new["v"] = k[:, keep:], v[:, keep:]
        return self.out(o, x), (new if use_cache else None)


def _cost(layer: LayerOptions, d_model: int, context_len: int) -> MixerCost:
    return attention_cost(layer, d_model, context_len, window=None)


MIXER = MixerDef(
    name="attention",
    module=Attention,
    kind="full",
    options=("n_heads", "gate", "short_conv", "conv_size"),
    cost=_cost,
    summary="causal softmax attention with RoPE",
    reference="Vaswani et al. 2017; RoPE: Su et al. 2021",
)
