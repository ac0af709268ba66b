"""The public entry points: backend choice, input validation and the error messages."""

from __future__ import annotations

import sys

import pytest
import torch

import hybridnas.kernels as K
from hybridnas.kernels.chunk import chunk_gated_delta_rule, chunk_gated_linear_attention
from hybridnas.kernels.dispatch import resolve_backend
from hybridnas.kernels.naive import naive_gated_delta_rule

CPU = torch.device("cpu")


def test_public_api_is_exported() -> None:
    for name in (
        "gated_linear_attention",
        "gated_delta_rule",
        "gated_linear_attention_step",
        "gated_delta_rule_step",
        "softmax_attention",
        "causal_conv1d",
        "available_backends",
    ):
        assert name in K.__all__ and callable(getattr(K, name))


def test_auto_is_chunk_on_cpu(make_inputs) -> None:
    assert resolve_backend("auto", CPU) == "chunk"
    x = make_inputs("gla", "gk", T=21)
    o, S = K.gated_linear_attention(x["q"], x["k"], x["v"], gk=x["gk"], initial_state=x["initial_state"],
                                    output_final_state=True)
    o_c, S_c = chunk_gated_linear_attention(x["q"], x["k"], x["v"], gk=x["gk"], initial_state=x["initial_state"],
                                            output_final_state=True)
    assert torch.equal(o, o_c) and torch.equal(S, S_c)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_outputs_are_contiguous_in_the_input_dtype(backend: str) -> None:
    q = torch.randn(2, 37, 3, 8, dtype=torch.bfloat16)
    o, S = K.gated_linear_attention(q, q, q, g=-torch.rand(2, 37, 3), output_final_state=True, backend=backend)
    assert o.shape == (2, 37, 3, 8) and o.is_contiguous() and o.dtype == torch.bfloat16
    assert S.shape == (2, 3, 8, 8) and S.dtype == torch.float32
    o, _ = K.gated_delta_rule(q, q, q, torch.rand(2, 37, 3), backend=backend)
    assert o.is_contiguous() and o.dtype == torch.bfloat16


def test_named_backends_are_used(make_inputs) -> None:
    x = make_inputs("delta", "g", T=9)
    args = (x["q"], x["k"], x["v"], x["beta"])
    o_n, _ = K.gated_delta_rule(*args, g=x["g"], backend="naive")
    o_c, _ = K.gated_delta_rule(*args, g=x["g"], backend="chunk")
    assert torch.equal(o_n, naive_gated_delta_rule(*args, g=x["g"])[0])
    assert torch.equal(o_c, chunk_gated_delta_rule(*args, g=x["g"])[0])
    o, S = K.gated_delta_rule(*args, g=x["g"], backend="chunk")
    assert S is None


def test_unknown_backend_names_the_choices(make_inputs) -> None:
    x = make_inputs("gla", "none", T=4)
    with pytest.raises(ValueError, match=r"backend.*'cuda'.*allowed: auto, naive, chunk, triton"):
        K.gated_linear_attention(x["q"], x["k"], x["v"], backend="cuda")


def test_triton_on_cpu_needs_the_interpreter(make_inputs, monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = make_inputs("gla", "none", T=4)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        K.gated_linear_attention(x["q"], x["k"], x["v"], backend="triton")
    assert "triton" not in K.available_backends("cpu")
    assert K.available_backends("cpu") == ("naive", "chunk")


@pytest.mark.parametrize("primitive,module", [("gla", "triton_gla"), ("delta", "triton_delta")])
def test_triton_import_failure_is_explained(primitive: str, module: str, make_inputs, monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, f"hybridnas.kernels.{module}", None)  # makes the import fail
    x = make_inputs(primitive, "none", T=4)
    with pytest.raises(ImportError, match=f"backend='triton' is unavailable.*{module}"):
        if primitive == "gla":
            K.gated_linear_attention(x["q"], x["k"], x["v"], backend="triton")
        else:
            K.gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], backend="triton")
    assert "triton" not in K.available_backends("cpu")


def test_both_decays_is_an_error(make_inputs) -> None:
    x = make_inputs("gla", "gk", T=4)
    g = torch.zeros(x["q"].shape[:3], dtype=torch.float64)
    with pytest.raises(ValueError, match="g and gk"):
        K.gated_linear_attention(x["q"], x["k"], x["v"], g=g, gk=x["gk"])
    with pytest.raises(ValueError, match="g and gk"):
        chunk_gated_linear_attention(x["q"], x["k"], x["v"], g=g, gk=x["gk"])
    with pytest.raises(ValueError, match="g and gk"):
        K.gated_linear_attention_step(x["q"][:, 0], x["k"][:, 0], x["v"][:, 0], x["initial_state"], g=g[:, 0],
                                      gk=x["gk"][:, 0])


@pytest.mark.parametrize(
    "field,shape",
    [("k", (2, 5, 2, 8)), ("v", (2, 4, 2, 16)), ("g", (2, 5, 1)), ("gk", (2, 5, 2, 15)), ("beta", (2, 5)),
     ("initial_state", (2, 2, 16, 8))],
)
def test_bad_shapes_name_the_argument(field: str, shape: tuple, make_inputs) -> None:
    x = make_inputs("delta", "none", T=5)
    x = {n: (t.detach() if t is not None else None) for n, t in x.items()}
    x[field] = torch.zeros(shape, dtype=torch.float64)
    if field in ("g", "gk"):
        x["g" if field == "gk" else "gk"] = None
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        K.gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], g=x["g"], gk=x["gk"], initial_state=x["initial_state"])


def test_bad_q_and_empty_sequence() -> None:
    with pytest.raises(ValueError, match="^q: expected a 4-d"):
        K.gated_linear_attention(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    z = torch.zeros(1, 0, 1, 4)
    with pytest.raises(ValueError, match="^q: sequence length"):
        K.gated_linear_attention(z, z, z)
    with pytest.raises(ValueError, match="^beta: required"):
        K.gated_delta_rule(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), None)


def test_integer_inputs_are_rejected() -> None:
    q = torch.zeros(1, 2, 1, 4)
    with pytest.raises(TypeError, match="^v: expected a floating-point"):
        K.gated_linear_attention(q, q, torch.zeros(1, 2, 1, 4, dtype=torch.long))


def test_step_shapes_are_checked() -> None:
    q = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"^state: expected shape \[B, H, K, V\]"):
        K.gated_linear_attention_step(q, q, torch.zeros(2, 3, 5), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"^beta: expected shape \[B, H\]"):
        K.gated_delta_rule_step(q, q, q, torch.zeros(2), torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize("primitive", ["gla", "delta"])
def test_step_does_not_mutate_the_state(primitive: str, make_inputs) -> None:
    x = make_inputs(primitive, "none", T=1)
    state = x["initial_state"].detach().clone()
    before = state.clone()
    args = (x["q"][:, 0], x["k"][:, 0], x["v"][:, 0])
    with torch.no_grad():
        if primitive == "gla":
            _, new = K.gated_linear_attention_step(*args, state)
        else:
            _, new = K.gated_delta_rule_step(*args, x["beta"][:, 0], state)
    assert torch.equal(state, before)
    assert not torch.equal(new, before)


def test_auto_on_cuda_keeps_triton_to_what_it_supports(monkeypatch) -> None:
    """float64 and head dims beyond Triton's limits go to the chunk path; the rest to Triton."""
    import hybridnas.kernels.dispatch as D

    monkeypatch.setattr(D, "_triton_importable", lambda: True)
    cuda = torch.device("cuda")
    assert resolve_backend("auto", cuda, torch.bfloat16, (128, 128)) == "triton"
    assert resolve_backend("auto", cuda, torch.float64, (64, 64)) == "chunk"
    assert resolve_backend("auto", cuda, torch.float32, (256, 64)) == "chunk"
    assert resolve_backend("auto", cuda, torch.float32, (64, 512)) == "chunk"
