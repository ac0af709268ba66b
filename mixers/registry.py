"""What the rest of hybridnas knows about a mixer: its options, its kind, its cost, its module.

A mixer is one module in this folder: a plain `nn.Module` (usable and testable by itself) plus one
`MixerDef` describing it. `hybridnas.mixers.REGISTRY` lists them; the genome's validation, sampling,
the cost model, codegen, the pre-training checks and the docs read it, and nothing else branches on a
mixer's name.

Options are the per-layer genes of `LayerSpec`. Every option has one definition here (its default,
its allowed values, one line of doc); a mixer declares which of them its constructor takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

#: Output gates: o = o_proj(norm(y) * act(g_proj(x))).
GATES: tuple[str, ...] = ("none", "sigmoid", "swish")
#: Feature maps of linear attention, applied to q and k.
FEATURE_MAPS: tuple[str, ...] = ("identity", "elu", "relu")
#: The two kinds of mixer: "full" attends over the whole context (a KV cache that grows with it),
#: "linear" keeps a constant-size state (a recurrence or a short convolution).
KINDS: tuple[str, ...] = ("full", "linear")


class OptionError(ValueError):
    """An option value outside its allowed set; `field` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Option:
    """One per-layer gene: its default, the values it may take, and what it means."""

    name: str
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None  # allowed values; None: a number in [lo, hi]
    lo: float | None = None
    hi: float | None = None
    integer: bool = False  # numbers only: must be an int (bools refused)

    def check(self, value: Any) -> Any:
        """The value, normalized (floats stay floats, 1 and 1.0 alike); OptionError naming the option."""
        if self.choices is not None:
            if type(value) is not type(self.default) or value not in self.choices:
                raise OptionError(self.name, f"got {value!r}, allowed: {', '.join(map(str, self.choices))}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            kind = "an integer" if self.integer else "a number"
            raise OptionError(self.name, f"got {value!r}, must be {kind} in {self._range()}")
        if not math.isfinite(value) or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            kind = "an integer" if self.integer else "a number"
            raise OptionError(self.name, f"got {value!r}, must be {kind} in {self._range()}")
        return int(value) if self.integer else float(value)

    def _range(self) -> str:
        return f"[{self.lo:g}, {self.hi:g}]" if self.hi is not None else f"[{self.lo:g}, inf)"


#: Every per-layer option, in LayerSpec field order.
OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("n_heads", 2, "attention / recurrence heads; must divide d_model", lo=1, hi=64, integer=True),
        Option("gate", "none", "output gate: none | sigmoid | swish", choices=GATES),
        Option("short_conv", False, "causal depthwise conv + SiLU on q, k, v after projection", choices=(False, True)),
        Option("conv_size", 4, "width of that short conv (or of the mixer's own conv)", lo=2, hi=16, integer=True),
        Option("feature_map", "identity", "linear attention's map on q and k", choices=FEATURE_MAPS),
        Option("window", 64, "sliding-window attention: tokens each query sees, itself included", lo=1, integer=True),
        Option("expand_k", 1.0, "recurrent state rows per head = d_model * expand_k / n_heads", lo=0.125, hi=4.0),
    )
}


@dataclass(frozen=True)
class MixerCost:
    """A mixer's share of the cost beyond its parameters (which are counted from the module itself)."""

    flops: float  # forward FLOPs per token outside the weight matmuls (scores, state updates), at the context
    state: int  # elements kept between decode steps at the end of the context (KV cache, states, conv states)


class LayerOptions(Protocol):
    """What a cost function reads: a LayerSpec (the genome imports this module, not the reverse)."""

    mixer: str
    n_heads: int
    gate: str
    short_conv: bool
    conv_size: int
    feature_map: str
    window: int
    expand_k: float


@dataclass(frozen=True)
class MixerDef:
    """One registry entry."""

    name: str  # the gene value, e.g. "gated_deltanet"
    module: type[nn.Module]  # constructor: module(d_model, **{option: value for option in options})
    kind: str  # "full" or "linear" (KINDS)
    options: tuple[str, ...]  # the LayerSpec options the constructor takes
    cost: Callable[[LayerOptions, int, int], MixerCost]  # (layer, d_model, context_len) -> cost
    summary: str  # one line for the docs and `hybridnas space mixers`
    reference: str  # where it comes from

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r}, allowed: {', '.join(KINDS)}")
        unknown = [o for o in self.options if o not in OPTIONS]
        if unknown:
            raise ValueError(f"{self.name}: unknown options {unknown}; known: {', '.join(OPTIONS)}")

    @property
    def recurrent(self) -> bool:
        """It keeps a K x V state per head whose rows `expand_k` scales."""
        return "expand_k" in self.options

    def kwargs(self, layer: LayerOptions) -> dict[str, Any]:
        """The constructor arguments (besides d_model) for `layer`."""
        return {o: getattr(layer, o) for o in self.options}

    def build(self, d_model: int, layer: LayerOptions, **extra: Any) -> nn.Module:
        """The module for `layer` in a model of width `d_model`."""
        return self.module(d_model, **self.kwargs(layer), **extra)




# --- cost helpers the mixers share --------------------------------------------------------------


def conv_state(layer: LayerOptions, widths: int) -> int:
    """Decode-state elements of the q/k/v short convs: the last conv_size - 1 inputs of each channel."""
    return (layer.conv_size - 1) * widths if layer.short_conv else 0


def recurrent_cost(layer: LayerOptions, d_model: int, products: int) -> MixerCost:
    """A K x V state per head: `products` state-sized multiply-adds per token (k v^T in, S^T q out,
    and S^T k for the delta rule), plus the short-conv states."""
    from hybridnas.mixers.layers import head_dims

    K, V = head_dims(d_model, layer.n_heads, layer.expand_k)
    H = layer.n_heads
    return MixerCost(flops=2.0 * products * H * K * V, state=H * K * V + conv_state(layer, H * (2 * K + V)))


def mean_span(context_len: int, window: int | None) -> float:
    """Average number of keys a causal query attends to over positions 1..context_len."""
    L = context_len
    if window is None or window >= L:
        return (L + 1) / 2
    # Positions 1..w see themselves and all before; the remaining L - w see exactly w keys.
    return (window * (window + 1) / 2 + (L - window) * window) / L


def attention_cost(layer: LayerOptions, d_model: int, context_len: int, window: int | None) -> MixerCost:
    """Scores q.k and the weighted sum of values, 2 FLOPs per multiply-add over the keys seen; the KV
    cache holds every past token (a window: the last window - 1, all the next token needs)."""
    width = (d_model // layer.n_heads) * layer.n_heads  # H * D, for keys and for values
    kv_len = context_len if window is None else min(context_len, window - 1)
    return MixerCost(
        flops=2.0 * 2 * width * mean_span(context_len, window),
        state=kv_len * 2 * width + conv_state(layer, 3 * width),
    )


__all__ = [
    "FEATURE_MAPS",
    "GATES",
    "KINDS",
    "OPTIONS",
    "LayerOptions",
    "MixerCost",
    "MixerDef",
    "Option",
    "OptionError",
    "attention_cost",
    "conv_state",
    "mean_span",
    "recurrent_cost",
]
