"""The language model around the mixers: embedding, pre-norm blocks (mixer, then MLP), final norm, LM head.

Exports embed this file's source (without its imports), like the mixers' and layers.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.mixers.layers import INIT_STD, NORM_EPS, RMSNorm


class MLP(nn.Module):
    """SwiGLU, w2(silu(w1 x) * w3 x), or GELU, w2(gelu(w1 x))."""

    def __init__(self, d_model: int, hidden: int, kind: str = "swiglu") -> None:
        super().__init__()
        self.kind = kind
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False) if kind == "swiglu" else None
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def reset_parameters(self, out_std: float = INIT_STD) -> None:
        for w in (self.w1, self.w3):
            if w is not None:
                nn.init.normal_(w.weight, 0.0, INIT_STD)
        nn.init.normal_(self.w2.weight, 0.0, out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


def make_norm(d_model: int, kind: str) -> nn.Module:
    """RMSNorm or LayerNorm over the last dimension."""
    return RMSNorm(d_model) if kind == "rmsnorm" else nn.LayerNorm(d_model, eps=NORM_EPS)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm1(x)), then x + mlp(norm2(x)) when there is an MLP."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp: MLP | None, norm: str) -> None:
        super().__init__()
        self.norm1 = make_norm(d_model, norm)
        self.mixer = mixer
        self.norm2 = make_norm(d_model, norm) if mlp is not None else None
        self.mlp = mlp

    def forward(self, x: torch.Tensor, cache: dict | None, use_cache: bool, offset: int) -> tuple[torch.Tensor, dict | None]:
        h, cache = self.mixer(self.norm1(x), cache=cache, use_cache=use_cache, offset=offset)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, cache


class HybridLM(nn.Module):
    """Embedding -> one Block per (mixer class, its keyword arguments) -> final norm -> LM head.

    forward(input_ids [B, T], cache=None, use_cache=False) returns logits [B, T, vocab], or
    (logits, cache) when use_cache. The cache is {"seen": tokens consumed, "layers": one dict per
    block (recurrent and conv states, or the attention KV cache)}; pass it back with the next tokens.

    Init: embedding and projections N(0, 0.02); the projections that write into the residual stream
    (each mixer's o_proj, the MLP's w2) N(0, 0.02 / sqrt(2 * n_layers)), as in GPT-2.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        layers: Sequence[tuple[type[nn.Module], dict[str, Any]]],
        mlp: str = "swiglu",
        mlp_hidden: int = 128,
        norm: str = "rmsnorm",
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, cls(d_model, **kwargs), MLP(d_model, mlp_hidden, mlp) if mlp != "none" else None, norm)
            for cls, kwargs in layers
        )
        self.norm_f = make_norm(d_model, norm)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        out_std = INIT_STD / math.sqrt(2 * len(self.layers))
        nn.init.normal_(self.embed.weight, 0.0, INIT_STD)
        if self.lm_head.weight is not self.embed.weight:
            nn.init.normal_(self.lm_head.weight, 0.0, INIT_STD)
        for block in self.layers:
            for norm in (block.norm1, block.norm2, self.norm_f):
                if norm is not None:
                    norm.reset_parameters()
            block.mixer.reset_parameters(out_std)
            if block.mlp is not None:
                block.mlp.reset_parameters(out_std)

    def forward(
        self, input_ids: torch.Tensor, cache: dict | None = None, use_cache: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        offset = 0 if cache is None else cache["seen"]
        x = self.embed(input_ids)  # [B, T, D]
        layer_caches = []
        for i, block in enumerate(self.layers):
            x, c = block(x, None if cache is None else cache["layers"][i], use_cache, offset)
            layer_caches.append(c)
        logits = self.lm_head(self.norm_f(x))  # [B, T, vocab]
        if use_cache:
            return logits, {"seen": offset + input_ids.shape[1], "layers": layer_caches}
        return logits
