"""softmax_attention against an explicit masked softmax in float64, with and without a window."""

from __future__ import annotations

import pytest
import torch

from hybridnas.kernels import softmax_attention


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None) -> torch.Tensor:
    """Written out by position: query i (absolute position Tk - T + i) sees keys j in (p - window, p]."""
    B, T, H, D = q.shape
    Tk = k.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    p = torch.arange(Tk - T, Tk)[:, None]
    j = torch.arange(Tk)[None, :]
    visible = (j <= p) & ((j > p - window) if window is not None else True)
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


def inputs(T: int, Tk: int, D: int = 8, Dv: int = 6, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, T, 3, D), (2, Tk, 3, D), (2, Tk, 3, Dv)]
    return [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("window", [None, 1, 4, 17, 100])
@pytest.mark.parametrize("T,Tk", [(17, 17), (5, 12)])
def test_matches_masked_softmax(window: int | None, T: int, Tk: int) -> None:
    q, k, v = inputs(T, Tk)
    scale = 0.3
    o = softmax_attention(q, k, v, scale=scale, window=window)
    o_ref = reference(q, k, v, scale, window)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), [q, k, v])
    grads_ref = torch.autograd.grad((o_ref * do).sum(), [q, k, v])
    for a, e in zip(grads, grads_ref):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_window_one_returns_v_and_default_scale() -> None:
    q, k, v = inputs(9, 9)
    torch.testing.assert_close(softmax_attention(q, k, v, window=1), v)
    o = softmax_attention(q, k, v)
    torch.testing.assert_close(o, reference(q, k, v, 8**-0.5, None), rtol=1e-10, atol=1e-10)


def test_float32_and_layout() -> None:
    q, k, v = (t.detach().float() for t in inputs(10, 10))
    o = softmax_attention(q, k, v, window=3)
    assert o.shape == (2, 10, 3, 6) and o.dtype == torch.float32
    o_ref = reference(q.double(), k.double(), v.double(), 8**-0.5, 3)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [0, -2, 2.5, True])
def test_bad_window(window: object) -> None:
    q, k, v = inputs(4, 4)
    with pytest.raises(ValueError, match="^window"):
        softmax_attention(q, k, v, window=window)


def test_bad_shapes() -> None:
    q, k, v = inputs(6, 4)
    with pytest.raises(ValueError, match="^k: needs at least"):
        softmax_attention(q, k, v)
    with pytest.raises(ValueError, match="^q: expected a 4-d"):
        softmax_attention(q[0], k, v)
    with pytest.raises(ValueError, match="^v: expected"):
        softmax_attention(q, q, v)
