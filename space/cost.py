"""Analytic cost model: exact parameter count, FLOPs per token and decode state bytes of a spec.

The counts follow the network that `hybridnas.codegen` renders, layer by layer (its tests check
`params` against `sum(p.numel())` of the built module). FLOPs and state bytes are for one
sequence (batch 1) at a given context length.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridnas.space.spec import FULL_MIXERS, RECURRENT_MIXERS, ArchSpec, LayerSpec

__all__ = [
    "GK_RANK",
    "CostEstimate",
    "LayerCost",
    "LayerDims",
    "estimate_cost",
    "layer_cost",
    "layer_dims",
    "mlp_hidden",
]

#: Rank of GLA's low-rank per-channel decay projection (d -> GK_RANK -> H*dk).
GK_RANK = 16
#: Mixers whose recurrence is the delta rule: one more S^T k product per token than the additive ones.
_DELTA_MIXERS = ("deltanet", "gated_deltanet")


@dataclass(frozen=True)
class LayerDims:
    """Widths of one mixer layer, as the renderer builds it."""

    d_model: int  # residual width
    n_heads: int  # heads (1 for the short_conv mixer, which has none)
    head_k: int  # key / state rows per head: d*expand_k/H for recurrent mixers, d/H otherwise
    head_v: int  # value / state columns per head: d/H
    conv_size: int  # width of the q/k/v short conv (or of the short_conv mixer's conv); 0 when absent

    @property
    def key_dim(self) -> int:
        """H * dk: output width of q_proj and k_proj."""
        return self.n_heads * self.head_k

    @property
    def value_dim(self) -> int:
        """H * dv: output width of v_proj, input width of o_proj."""
        return self.n_heads * self.head_v


@dataclass(frozen=True)
class LayerCost:
    """One block's share of the model cost."""

    params: int  # parameters of the block (norms, mixer, MLP)
    matmul_params: int  # weights multiplied once per token (linear layers and conv taps)
    mixer_flops: float  # FLOPs per token beyond the projections (attention scores, state updates)
    state_elements: int  # elements kept between decode steps (KV cache, recurrent state, conv states)


@dataclass(frozen=True)
class CostEstimate:
    """Whole-model cost at one context length."""

    params: int  # exact trainable parameter count, tied embeddings counted once
    flops_per_token: float  # forward FLOPs per token, averaged over the positions of the context
    state_bytes: int  # decode state at the end of the context for one sequence (KV cache + states)
    context_len: int  # the context length the estimate is for


def layer_dims(d_model: int, layer: LayerSpec) -> LayerDims:
    """The widths the renderer uses for `layer` in a model of width `d_model`."""
    if layer.mixer == "short_conv":
        return LayerDims(d_model=d_model, n_heads=1, head_k=d_model, head_v=d_model, conv_size=layer.conv_size)
    heads = layer.n_heads
    head_v = d_model // heads
    head_k = int(d_model * layer.expand_k / heads) if layer.mixer in RECURRENT_MIXERS else head_v
    return LayerDims(
        d_model=d_model,
        n_heads=heads,
        head_k=head_k,
        head_v=head_v,
        conv_size=layer.conv_size if layer.short_conv else 0,
    )


def mlp_hidden(spec: ArchSpec) -> int:
    """MLP hidden width: round(d_model * mlp_ratio), at least 1."""
    return max(1, round(spec.d_model * spec.mlp_ratio))


def _norm_params(spec: ArchSpec) -> int:
    return spec.d_model * (2 if spec.norm == "layernorm" else 1)


def _mixer_params(layer: LayerSpec, dims: LayerDims) -> tuple[int, int]:
    """(all parameters, matmul parameters) of the token mixer alone."""
    d, H, W = dims.d_model, dims.n_heads, dims.conv_size
    kd, vd = dims.key_dim, dims.value_dim
    if layer.mixer == "short_conv":
        matmul = d * 2 * d + d * d + d * layer.conv_size  # in_proj, o_proj, depthwise conv taps
        if layer.gate != "none":
            matmul += d * d  # g_proj
        return matmul, matmul
    # q and k (hgrn2: q and f) d -> H*dk, v d -> H*dv, o H*dv -> d.
    matmul = 2 * d * kd + d * vd + vd * d
    extra = 0
    if layer.mixer == "gla":
        matmul += d * GK_RANK + GK_RANK * kd
        extra += kd  # bias of the second low-rank projection
    elif layer.mixer == "mamba2":
        matmul += d * H  # a_proj
        extra += 2 * H  # A_log, dt_bias
    elif layer.mixer == "deltanet":
        matmul += d * H  # b_proj
    elif layer.mixer == "gated_deltanet":
        matmul += 2 * d * H  # b_proj, a_proj
        extra += 2 * H  # A_log, dt_bias
    if W:
        matmul += (2 * kd + vd) * W  # short conv taps on q, k (or f), v
    if layer.gate != "none":
        matmul += d * vd  # g_proj
    if layer.mixer in RECURRENT_MIXERS:
        extra += dims.head_v  # per-head output RMSNorm, shared across heads
    return matmul + extra, matmul


def _mean_span(context_len: int, window: int | None) -> float:
    """Average number of keys a causal query attends to over positions 1..context_len."""
    L = context_len
    if window is None or window >= L:
        return (L + 1) / 2
    # Positions 1..w see themselves and all before; the remaining L - w see exactly w keys.
    return (window * (window + 1) / 2 + (L - window) * window) / L


def layer_cost(spec: ArchSpec, index: int, context_len: int = 2048) -> LayerCost:
    """Cost of block `index` of `spec` (pre-norm mixer, then pre-norm MLP when the spec has one)."""
    layer = spec.layers[index]
    dims = layer_dims(spec.d_model, layer)
    mixer_all, matmul = _mixer_params(layer, dims)
    params = mixer_all + _norm_params(spec)
    if spec.mlp != "none":
        h = mlp_hidden(spec)
        mlp = (3 if spec.mlp == "swiglu" else 2) * spec.d_model * h
        params += mlp + _norm_params(spec)
        matmul += mlp

    conv_state = (dims.conv_size - 1) * (2 * dims.key_dim + dims.value_dim) if dims.conv_size else 0
    if layer.mixer in FULL_MIXERS:
        window = layer.window if layer.mixer == "swa" else None
        # Scores q.k and the weighted sum of values: 2 FLOPs per multiply-add over the keys seen.
        mixer_flops = 2.0 * (dims.key_dim + dims.value_dim) * _mean_span(context_len, window)
        kv_len = context_len if window is None else min(context_len, window)
        state = kv_len * (dims.key_dim + dims.value_dim) + conv_state
    elif layer.mixer == "short_conv":
        mixer_flops = 0.0  # its conv taps are counted with the matmul parameters
        state = (layer.conv_size - 1) * spec.d_model
    else:
        # Additive recurrence: k v^T into the state and S^T q out; the delta rule also reads S^T k.
        products = 3 if layer.mixer in _DELTA_MIXERS else 2
        mixer_flops = 2.0 * products * dims.n_heads * dims.head_k * dims.head_v
        state = dims.n_heads * dims.head_k * dims.head_v + conv_state
    return LayerCost(params=params, matmul_params=matmul, mixer_flops=mixer_flops, state_elements=state)


def estimate_cost(spec: ArchSpec, context_len: int = 2048, bytes_per_element: int = 2) -> CostEstimate:
    """Parameters, forward FLOPs per token and decode state bytes of `spec` at `context_len` tokens.

    flops_per_token = 2 * (weights multiplied per token, LM head included) + mixer terms, where
    attention costs 2*(H*dk + H*dv) FLOPs per key attended, averaged over the positions of the
    context (sliding window: at most `window` keys), and a recurrent mixer 4*H*dk*dv (6 for the
    delta rule). state_bytes counts the KV cache of attention layers (window-truncated for swa),
    recurrent states and short-conv states, at `bytes_per_element` bytes each.
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
