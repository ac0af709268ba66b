"""causal_conv1d against an explicit loop, and streaming in pieces against one whole run."""

from __future__ import annotations

import pytest
import torch

from hybridnas.kernels import causal_conv1d


def reference(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    """y[b, t, d] = sum_j weight[d, j] * x[b, t - (W - 1) + j, d], inputs before the start from `state`."""
    B, T, D = x.shape
    W = weight.shape[1]
    past = state if state is not None else x.new_zeros(B, W - 1, D)
    full = torch.cat([past, x], dim=1)  # position t of x is row t + W - 1
    rows = []
    for t in range(T):
        acc = x.new_zeros(B, D)
        for j in range(W):
            acc = acc + weight[:, j] * full[:, t + j]
        rows.append(acc)
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("W", [1, 2, 4])
def test_matches_loop_with_gradients(W: int) -> None:
    gen = torch.Generator().manual_seed(W)
    x = torch.randn(2, 11, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, W, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, W - 1, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y, final = causal_conv1d(x, w, state=s, output_final_state=True)
    y_ref = reference(x, w, s)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(final, torch.cat([s, x], 1)[:, -(W - 1) :] if W > 1 else x[:, :0])
    dy = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad((y * dy).sum(), [x, w, s], allow_unused=True),
                    torch.autograd.grad((y_ref * dy).sum(), [x, w, s], allow_unused=True)):
        if e is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, e)


def test_current_token_uses_last_weight() -> None:
    x = torch.zeros(1, 3, 1)
    x[0, 1, 0] = 1.0  # an impulse at t = 1
    w = torch.tensor([[1.0, 2.0, 3.0]])
    y, _ = causal_conv1d(x, w)
    torch.testing.assert_close(y.view(3), torch.tensor([0.0, 3.0, 2.0]))  # no leak into t = 0


@pytest.mark.parametrize("pieces", [[1] * 9, [4, 5], [2, 1, 6]])
def test_streaming_in_pieces_equals_whole(pieces: list[int]) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 4, generator=gen)
    w = torch.randn(4, 4, generator=gen)
    whole, whole_state = causal_conv1d(x, w, output_final_state=True)
    state, outs, start = None, [], 0
    for n in pieces:
        y, state = causal_conv1d(x[:, start : start + n], w, state=state, output_final_state=True)
        outs.append(y)
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), whole)
    torch.testing.assert_close(state, whole_state)


def test_bad_shapes() -> None:
    x = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="^weight"):
        causal_conv1d(x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="^state"):
        causal_conv1d(x, torch.zeros(4, 3), state=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="^x"):
        causal_conv1d(x[0], torch.zeros(4, 3))
