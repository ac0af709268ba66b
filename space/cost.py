"""Analytic cost model: exact parameter count, FLOPs per token and decode state bytes of a spec.

Parameters are counted from the network itself: the mixers' modules are instantiated on PyTorch's
meta device (no memory, no compute), so the count is exact for any mixer without a formula to keep
in step. FLOPs and state come from each mixer's registered cost function. FLOPs and state bytes are
for one sequence (batch 1) at a given context length.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass

import torch

from hybridnas.mixers import MLP, Block, HybridLM
from hybridnas.space.spec import ArchSpec, LayerSpec

__all__ = ["CostEstimate", "LayerCost", "build_lm", "estimate_cost", "layer_cost", "mlp_hidden"]


@dataclass(frozen=True)
class LayerCost:
    """One block's share of the model cost."""

    params: int  # parameters of the block (norms, mixer, MLP)
    matmul_params: int  # weights multiplied once per token (matrices and conv taps)
    mixer_flops: float  # FLOPs per token beyond the projections (attention scores, state updates)
    state_elements: int  # elements kept between decode steps (KV cache, recurrent state, conv states)


@dataclass(frozen=True)
class CostEstimate:
    """Whole-model cost at one context length."""

    params: int  # exact trainable parameter count, tied embeddings counted once
    flops_per_token: float  # forward FLOPs per token, averaged over the positions of the context
    state_bytes: int  # decode state at the end of the context for one sequence (KV cache + states)
    context_len: int  # the context length the estimate is for


def mlp_hidden(spec: ArchSpec) -> int:
    """MLP hidden width: round(d_model * mlp_ratio), at least 1."""
    return max(1, round(spec.d_model * spec.mlp_ratio))


def build_lm(spec: ArchSpec, device: torch.device | str | None = None) -> HybridLM:
    """The network of `spec` as a plain HybridLM (what codegen renders, without the generated file)."""
    with contextlib.nullcontext() if device is None else torch.device(device):
        return HybridLM(
            spec.vocab_size,
            spec.d_model,
            spec.mixer_modules(),
            mlp=spec.mlp,
            mlp_hidden=mlp_hidden(spec),
            norm=spec.norm,
            tie_embeddings=spec.tie_embeddings,
        )


@functools.lru_cache(maxsize=4096)
def _block_params(d_model: int, layer_json: str, mlp: str, hidden: int, norm: str) -> tuple[int, int]:
    """(all parameters, matmul parameters) of one block, counted on the meta device."""
    layer = LayerSpec(**json.loads(layer_json))
    with torch.device("meta"):
        block = Block(d_model, layer.definition.build(d_model, layer), MLP(d_model, hidden, mlp) if mlp != "none" else None, norm)
    params = list(block.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.ndim >= 2)


def _norm_params(spec: ArchSpec) -> int:
    return spec.d_model * (2 if spec.norm == "layernorm" else 1)


def layer_cost(spec: ArchSpec, index: int, context_len: int = 2048) -> LayerCost:
    """Cost of block `index` of `spec` (pre-norm mixer, then pre-norm MLP when the spec has one)."""
    layer = spec.layers[index]
    layer_json = json.dumps({k: getattr(layer, k) for k in LayerSpec.__dataclass_fields__}, sort_keys=True)
    params, matmul = _block_params(spec.d_model, layer_json, spec.mlp, mlp_hidden(spec), spec.norm)
    mixer = layer.definition.cost(layer, spec.d_model, context_len)
    return LayerCost(params=params, matmul_params=matmul, mixer_flops=mixer.flops, state_elements=mixer.state)


def estimate_cost(spec: ArchSpec, context_len: int = 2048, bytes_per_element: int = 2) -> CostEstimate:
    """Parameters, forward FLOPs per token and decode state bytes of `spec` at `context_len` tokens.

    flops_per_token = 2 * (weights multiplied per token, LM head included) + each mixer's own FLOPs
    (attention: 2*(H*dk + H*dv) per key attended, averaged over the positions of the context, at
    most `window` keys; a recurrence: a few state-sized products per token). state_bytes counts the
    KV cache of attention layers (window-truncated for swa), recurrent states and short-conv states,
    at `bytes_per_element` bytes each.
    """
    if not isinstance(context_len, int) or isinstance(context_len, bool) or context_len < 1:
        raise ValueError(f"context_len: got {context_len!r}, must be an integer >= 1")
    if not isinstance(bytes_per_element, int) or isinstance(bytes_per_element, bool) or bytes_per_element < 1:
        raise ValueError(f"bytes_per_element: got {bytes_per_element!r}, must be an integer >= 1")
    d, V = spec.d_model, spec.vocab_size
    params = V * d + _norm_params(spec)  # embedding, final norm
    if not spec.tie_embeddings:
        params += V * d  # separate LM head
    matmul = V * d  # the LM head multiplies every token, tied or not
    mixer_flops = 0.0
    state = 0
    for i in range(spec.n_layers):
        c = layer_cost(spec, i, context_len)
        params += c.params
        matmul += c.matmul_params
        mixer_flops += c.mixer_flops
        state += c.state_elements
    return CostEstimate(
        params=params,
        flops_per_token=2.0 * matmul + mixer_flops,
        state_bytes=state * bytes_per_element,
        context_len=context_len,
    )
