"""One entry point per primitive: validate the inputs, pick a backend, call it.

Backends: "naive" (ground-truth loop), "chunk" (chunk-parallel PyTorch, the CPU path) and "triton"
(the GPU path; imported lazily so the package works where Triton has no wheels). "auto" picks
triton for CUDA tensors and chunk otherwise.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, Callable

import torch

from hybridnas.kernels.chunk import chunk_gated_delta_rule, chunk_gated_linear_attention
from hybridnas.kernels.naive import naive_gated_delta_rule, naive_gated_linear_attention

#: Values the `backend` argument accepts.
BACKENDS: tuple[str, ...] = ("auto", "naive", "chunk", "triton")

#: primitive -> (module, function) of its Triton implementation, imported on first use.
_TRITON_IMPORTS: dict[str, tuple[str, str]] = {
    "gla": ("hybridnas.kernels.triton_gla", "triton_gated_linear_attention"),
    "delta": ("hybridnas.kernels.triton_delta", "triton_gated_delta_rule"),
}
_warned_auto_fallback = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _load_triton(primitive: str) -> Callable[..., Any]:
    """The Triton implementation of `primitive`; ImportError saying why when it cannot be loaded."""
    module_name, fn_name = _TRITON_IMPORTS[primitive]
    try:
        return getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"backend='triton' is unavailable: cannot import {fn_name} from {module_name} ({err}); "
            "install triton (Linux only) or pass backend='chunk'"
        ) from err


def _triton_importable() -> bool:
    try:
        for primitive in _TRITON_IMPORTS:
            _load_triton(primitive)
    except ImportError:
        return False
    return True


def available_backends(device: torch.device | str) -> tuple[str, ...]:
    """Backends that can run on tensors of `device` here (triton only if it imports and can run)."""
    device = torch.device(device)
    names = ("naive", "chunk")
    if (device.type == "cuda" or _interpreting()) and _triton_importable():
        names += ("triton",)
    return names


#: What the Triton kernels accept (they import these); "auto" sends anything else to the chunk path.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_K = 128
TRITON_MAX_V = 256


def resolve_backend(
    backend: str, device: torch.device, dtype: torch.dtype | None = None, head_dims: tuple[int, int] | None = None
) -> str:
    """The concrete backend ("naive", "chunk" or "triton") that `backend` means for `device`.

    `dtype` and `head_dims` (K, V) let "auto" avoid Triton where its kernels do not apply
    (float64 ground-truth runs, head dims beyond 128/256) instead of failing there.
    """
    global _warned_auto_fallback
    if backend not in BACKENDS:
        raise ValueError(f"backend: got {backend!r}, allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type != "cuda":
            return "chunk"
        if dtype is not None and dtype not in TRITON_DTYPES:
            return "chunk"
        if head_dims is not None and (head_dims[0] > TRITON_MAX_K or head_dims[1] > TRITON_MAX_V):
            return "chunk"
        if _triton_importable():
            return "triton"
        if not _warned_auto_fallback:  # CUDA without Triton (e.g. Windows): the PyTorch path still works
            warnings.warn("backend='auto': Triton kernels cannot be imported, using backend='chunk'", stacklevel=3)
            _warned_auto_fallback = True
        return "chunk"
    if backend == "triton" and device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got device {device.type!r}); set TRITON_INTERPRET=1 "
            "to run the Triton kernels in the interpreter on CPU, or pass backend='chunk'"
        )
    return backend


def _check_shape(name: str, x: torch.Tensor | None, expected: tuple[int, ...], layout: str) -> None:
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {layout}, got {type(x).__name__}")
    if tuple(x.shape) != expected:
        raise ValueError(f"{name}: expected shape {layout} = {list(expected)}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def check_recurrence_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor | None,
    g: torch.Tensor | None,
    gk: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise ValueError/TypeError naming the argument when shapes or dtypes break the contract."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q: expected a 4-d tensor [B, T, H, K], got {getattr(q, 'shape', type(q).__name__)}")
    B, T, H, K = q.shape
    if T < 1:
        raise ValueError("q: sequence length T must be >= 1, got 0")
    _check_shape("q", q, (B, T, H, K), "[B, T, H, K]")
    _check_shape("k", k, (B, T, H, K), "[B, T, H, K]")
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v: expected shape [B, T, H, V] with B, T, H = {B}, {T}, {H}, got {list(v.shape)}")
    V = v.shape[-1]
    _check_shape("v", v, (B, T, H, V), "[B, T, H, V]")
    if g is not None and gk is not None:
        raise ValueError("g and gk: pass at most one decay (per-head g [B, T, H] or per-channel gk [B, T, H, K])")
    _check_shape("g", g, (B, T, H), "[B, T, H]")
    _check_shape("gk", gk, (B, T, H, K), "[B, T, H, K]")
    _check_shape("beta", beta, (B, T, H), "[B, T, H]")
    _check_shape("initial_state", initial_state, (B, H, K, V), "[B, H, K, V]")
    for name, x in (("k", k), ("v", v), ("g", g), ("gk", gk), ("beta", beta), ("initial_state", initial_state)):
        if x is not None and x.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} like q, got {x.device}")


#: primitive -> backend -> its PyTorch implementation (the Triton one comes from `_load_triton`).
_TORCH_IMPLEMENTATIONS: dict[str, dict[str, Callable[..., Any]]] = {
    "gla": {"naive": naive_gated_linear_attention, "chunk": chunk_gated_linear_attention},
    "delta": {"naive": naive_gated_delta_rule, "chunk": chunk_gated_delta_rule},
}


def _implementation(primitive: str, backend: str, q: torch.Tensor, v: torch.Tensor) -> Callable[..., Any]:
    """The function that runs `primitive` on the backend `backend` means for q's device, dtype and head dims."""
    name = resolve_backend(backend, q.device, q.dtype, (q.shape[-1], v.shape[-1]))
    return _load_triton(primitive) if name == "triton" else _TORCH_IMPLEMENTATIONS[primitive][name]


def gated_linear_attention(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    g: torch.Tensor | None = None,  # [B, T, H] log decay per head (<= 0)
    gk: torch.Tensor | None = None,  # [B, T, H, K] log decay per key channel (<= 0)
    scale: float | None = None,  # defaults to K ** -0.5
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S_t = diag(exp(g_t or gk_t)) S_{t-1} + k_t v_t^T ;  o_t = scale * S_t^T q_t.

    Returns o [B, T, H, V] in q's dtype and the final state [B, H, K, V] (float32 for half/bf16
    inputs) when output_final_state, else None.
    """
    check_recurrence_inputs(q, k, v, None, g, gk, initial_state)
    fn = _implementation("gla", backend, q, v)
    return fn(q, k, v, g=g, gk=gk, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def gated_delta_rule(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K] (normalizing k is the caller's job)
    v: torch.Tensor,  # [B, T, H, V]
    beta: torch.Tensor,  # [B, T, H] write strength
    g: torch.Tensor | None = None,  # [B, T, H] log decay per head (<= 0)
    gk: torch.Tensor | None = None,  # [B, T, H, K] log decay per key channel (<= 0)
    scale: float | None = None,  # defaults to K ** -0.5
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S' = diag(alpha_t) S_{t-1} ; S_t = S' + beta_t k_t (v_t - S'^T k_t)^T ; o_t = scale * S_t^T q_t.

    Returns what `gated_linear_attention` returns.
    """
    if beta is None:
        raise ValueError("beta: required, a tensor [B, T, H]")
    check_recurrence_inputs(q, k, v, beta, g, gk, initial_state)
    fn = _implementation("delta", backend, q, v)
    return fn(
        q, k, v, beta, g=g, gk=gk, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )
