"""The reference itself: the naive recurrences against examples worked out by hand."""

from __future__ import annotations

import math

import torch

from hybridnas.kernels.naive import naive_gated_delta_rule, naive_gated_linear_attention


def t64(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_gla_no_decay_orientation_by_hand() -> None:
    # K = V = 2 so that swapping K and V in S = k v^T would change o.
    q = t64([[1, 0], [0, 1]]).view(1, 2, 1, 2)
    k = t64([[1, 2], [0, 1]]).view(1, 2, 1, 2)
    v = t64([[1, -1], [2, 3]]).view(1, 2, 1, 2)
    o, S = naive_gated_linear_attention(q, k, v, scale=1.0, output_final_state=True)
    # S1 = k1 v1^T = [[1, -1], [2, -2]] ; o1 = S1^T q1 = [1, -1]
    # S2 = S1 + k2 v2^T = [[1, -1], [4, 1]] ; o2 = S2^T q2 = [4, 1]
    torch.testing.assert_close(o.view(2, 2), t64([[1, -1], [4, 1]]))
    torch.testing.assert_close(S.view(2, 2), t64([[1, -1], [4, 1]]))


def test_gla_scalar_decay_by_hand() -> None:
    q = t64([[1, 0], [1, 2]]).view(1, 2, 1, 2)
    k = t64([[1, 2], [3, 1]]).view(1, 2, 1, 2)
    v = t64([[2], [1]]).view(1, 2, 1, 1)
    g = t64([math.log(0.5), math.log(0.25)]).view(1, 2, 1)
    s0 = t64([[1], [0]]).view(1, 1, 2, 1)
    o, S = naive_gated_linear_attention(q, k, v, g=g, scale=1.0, initial_state=s0, output_final_state=True)
    # S1 = 0.5 S0 + k1 v1 = [2.5, 4] ; o1 = 2.5
    # S2 = 0.25 S1 + k2 v2 = [0.625 + 3, 1 + 1] = [3.625, 2] ; o2 = 3.625 + 2 * 2 = 7.625
    torch.testing.assert_close(o.view(2), t64([2.5, 7.625]))
    torch.testing.assert_close(S.view(2), t64([3.625, 2.0]))


def test_gla_channel_decay_by_hand() -> None:
    q = t64([[1, 0], [1, 2]]).view(1, 2, 1, 2)
    k = t64([[1, 2], [3, 1]]).view(1, 2, 1, 2)
    v = t64([[2], [1]]).view(1, 2, 1, 1)
    gk = t64([[math.log(0.5), 0], [0, math.log(0.5)]]).view(1, 2, 1, 2)
    s0 = t64([[1], [0]]).view(1, 1, 2, 1)
    o, S = naive_gated_linear_attention(q, k, v, gk=gk, scale=1.0, initial_state=s0, output_final_state=True)
    # S1 = diag(0.5, 1) S0 + k1 v1 = [2.5, 4] ; o1 = 2.5
    # S2 = diag(1, 0.5) S1 + k2 v2 = [5.5, 3] ; o2 = 5.5 + 2 * 3 = 11.5
    torch.testing.assert_close(o.view(2), t64([2.5, 11.5]))
    torch.testing.assert_close(S.view(2), t64([5.5, 3.0]))


def test_delta_rule_by_hand() -> None:
    q = t64([[2, 0], [1, 1]]).view(1, 2, 1, 2)
    k = t64([[1, 0], [0.6, 0.8]]).view(1, 2, 1, 2)
    v = t64([[3], [1]]).view(1, 2, 1, 1)
    beta = t64([0.5, 1.0]).view(1, 2, 1)
    g = t64([math.log(0.5), 0.0]).view(1, 2, 1)
    s0 = t64([[1], [2]]).view(1, 1, 2, 1)
    o, S = naive_gated_delta_rule(q, k, v, beta, g=g, scale=0.5, initial_state=s0, output_final_state=True)
    # t=1: S' = 0.5 S0 = [0.5, 1] ; S'^T k1 = 0.5 ; delta = 0.5 (3 - 0.5) = 1.25
    #      S1 = [1.75, 1] ; o1 = 0.5 * (2 * 1.75) = 1.75
    # t=2: S' = S1 ; S'^T k2 = 0.6 * 1.75 + 0.8 = 1.85 ; delta = 1 - 1.85 = -0.85
    #      S2 = [1.75 - 0.51, 1 - 0.68] = [1.24, 0.32] ; o2 = 0.5 * (1.24 + 0.32) = 0.78
    torch.testing.assert_close(o.view(2), t64([1.75, 0.78]))
    torch.testing.assert_close(S.view(2), t64([1.24, 0.32]))


def test_default_scale_is_inverse_sqrt_k() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 1, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    o_default, _ = naive_gated_linear_attention(q, k, v)
    o_explicit, _ = naive_gated_linear_attention(q, k, v, scale=0.5)  # 4 ** -0.5
    o_one, _ = naive_gated_linear_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(o_default, o_explicit)
    torch.testing.assert_close(o_default, 0.5 * o_one)


def test_half_inputs_keep_a_float32_state() -> None:
    q = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    o, S = naive_gated_delta_rule(q, q, q, torch.rand(1, 4, 2).bfloat16(), output_final_state=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
