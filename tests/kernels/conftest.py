"""Shared fixtures for the kernel tests: random recurrence inputs and the step-loop runner."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch

from hybridnas.kernels import gated_delta_rule_step, gated_linear_attention_step

Inputs = dict[str, torch.Tensor | None]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # The test machine is shared: keep each test on one core, and restore afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _make_inputs(
    primitive: str,  # "gla" or "delta"
    mode: str,  # decay: "none", "g" (per head) or "gk" (per key channel)
    B: int = 2,
    T: int = 33,
    H: int = 2,
    K: int = 16,
    V: int = 16,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    decay: float = 1.0,  # log decays are drawn from [-decay, 0)
    initial_state: bool = True,
) -> Inputs:
    """Leaf tensors (requires_grad) in `dtype` for one call of a recurrence primitive."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    k = rand(B, T, H, K)
    if primitive == "delta":  # the delta rule is stable for unit-norm keys (normalizing is the caller's job)
        k = torch.nn.functional.normalize(k, dim=-1)
    x: Inputs = {"q": rand(B, T, H, K), "k": k, "v": rand(B, T, H, V), "g": None, "gk": None}
    if mode == "g":
        x["g"] = -decay * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    elif mode == "gk":
        x["gk"] = -decay * torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)
    if primitive == "delta":
        x["beta"] = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    x["initial_state"] = rand(B, H, K, V) if initial_state else None
    return {n: (t.to(dtype).requires_grad_() if t is not None else None) for n, t in x.items()}


@pytest.fixture
def make_inputs() -> Callable[..., Inputs]:
    return _make_inputs


def _step_loop(primitive: str, inputs: Inputs, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the one-token step function over T; returns (o [B, T, H, V], final state)."""
    q, k, v, g, gk = (inputs[n] for n in ("q", "k", "v", "g", "gk"))
    B, T, H, K = q.shape
    state = inputs["initial_state"]
    if state is None:
        state = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        decay = {"g": None if g is None else g[:, t], "gk": None if gk is None else gk[:, t]}
        if primitive == "gla":
            o, state = gated_linear_attention_step(q[:, t], k[:, t], v[:, t], state, scale=scale, **decay)
        else:
            beta = inputs["beta"][:, t]
            o, state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], beta, state, scale=scale, **decay)
        outs.append(o)
    return torch.stack(outs, dim=1), state


@pytest.fixture
def step_loop() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    return _step_loop
