"""Fixtures of the workers tests: a tiny causal model for the trainer, the seeding check of a task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    """Embedding, a previous-token mix, one causal attention layer, LM head: enough for easy MQAR."""

    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 2) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.emb = nn.Embedding(vocab_size, d_model)
        self.prev = nn.Linear(2 * d_model, d_model)  # lets a value token carry its key
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)  # [B, T, D]
        prev = F.pad(h, (0, 0, 1, 0))[:, :-1]  # [B, T, D], token t-1 at t
        h = h + self.prev(torch.cat([h, prev], dim=-1))
        b, t, d = h.shape
        q, k, v = self.qkv(self.norm(h)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, D/H]
        return self.head(h + self.out(o.transpose(1, 2).reshape(b, t, d)))  # [B, T, V]


@pytest.fixture
def tiny_lm() -> Callable[..., nn.Module]:
    """Factory: `tiny_lm(vocab_size, seed=0)` builds a TinyLM with weights drawn from `seed`."""

    def make(vocab_size: int, seed: int = 0, **kwargs: int) -> nn.Module:
        torch.manual_seed(seed)
        return TinyLM(vocab_size, **kwargs)

    return make


def _check_seeding(task: Any, seed: int) -> None:
    a, b, c = task.generate(seed), task.generate(seed), task.generate(seed + 1)
    for name in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_inputs, c.train_inputs)
    assert not torch.equal(a.test_inputs, c.test_inputs)


@pytest.fixture
def check_seeding() -> Callable[..., None]:
    """`check_seeding(task, seed)`: the same seed gives identical tensors, the next seed other train
    and test sets."""
    return _check_seeding
