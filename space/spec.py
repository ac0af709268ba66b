"""The genome: `LayerSpec`, `ArchSpec` and the hybrid genes that expand into per-layer specs.

Everything here is immutable and JSON round-trips exactly. The canonical JSON of an `ArchSpec`
(sorted keys, no whitespace, hybrid genes excluded) gives its hash, so two genomes that build
the same network share one hash and are never trained twice at the same fidelity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hybridnas.mixers import OPTIONS, REGISTRY, MixerDef, OptionError
from hybridnas.mixers.registry import GATES

# --- registries --------------------------------------------------------------------------------

#: Full (quadratic) token mixers, then the linear-time ones, from the mixer registry.
FULL_MIXERS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.kind == "full")
LINEAR_MIXERS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.kind == "linear")
MIXERS: tuple[str, ...] = FULL_MIXERS + LINEAR_MIXERS
#: Mixers that carry a recurrent K x V state per head (their cost grows with expand_k, not context).
RECURRENT_MIXERS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.recurrent)
MLPS: tuple[str, ...] = ("swiglu", "gelu", "none")
NORMS: tuple[str, ...] = ("rmsnorm", "layernorm")
PLACEMENTS: tuple[str, ...] = ("interleaved", "first", "last")
#: The linear-to-full ratio gene: r linear layers per full layer; "all_linear" has no full layer.
ALL_LINEAR = "all_linear"


class SpecError(ValueError):
    """A genome value outside its allowed set. `field` names the offending gene."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_choice(field_name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise SpecError(field_name, f"got {value!r}, allowed: {', '.join(map(str, allowed))}")


def _check_int(field_name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SpecError(field_name, f"got {value!r}, must be an integer {bound}")


def _check_bool(field_name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SpecError(field_name, f"got {value!r}, must be true or false")


# --- layer and model genes ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One block's token mixer and its options (hybridnas.mixers.OPTIONS says what each means and
    allows). A mixer takes only the options its registry entry names; the others keep their defaults
    and stay out of the hash."""

    mixer: str  # one of MIXERS
    n_heads: int = 2  # attention / recurrence heads; d_model must be divisible by it
    gate: str = "none"  # output gate: none | sigmoid | swish (o = o_proj(norm(y) * act(g_proj(x))))
    short_conv: bool = False  # causal depthwise conv + SiLU on q, k, v after projection
    conv_size: int = 4  # width of that short conv (and of the short_conv and mamba mixers' own conv)
    feature_map: str = "identity"  # linear_attn only: map applied to q and k
    window: int = 64  # swa only: tokens each query sees, itself included
    expand_k: float = 1.0  # recurrent mixers: key (state) dim per head = d_model * expand_k / n_heads

    def __post_init__(self) -> None:
        _check_choice("mixer", self.mixer, MIXERS)
        for name, option in OPTIONS.items():
            try:
                # Normalized, so 1 and 1.0 hash alike.
                object.__setattr__(self, name, option.check(getattr(self, name)))
            except OptionError as e:
                raise SpecError(e.field, str(e).split(": ", 1)[1]) from None

    @property
    def definition(self) -> MixerDef:
        """The mixer's registry entry."""
        return REGISTRY[self.mixer]

    @property
    def is_full(self) -> bool:
        return self.definition.kind == "full"

    def canonical(self) -> dict[str, Any]:
        """Only the options that change the network for this mixer, so unused genes never split a hash."""
        options = self.definition.options
        d: dict[str, Any] = {"mixer": self.mixer, "gate": self.gate}
        for name in options:
            if name == "conv_size" and "short_conv" in options and not self.short_conv:
                continue  # the width of a conv that is not there
            d[name] = getattr(self, name)
        return d


@dataclass(frozen=True)
class HybridGenes:
    """Hybrid-level genes: a space may search these instead of choosing each layer's mixer.

    `expand(n_layers)` turns them into per-layer specs; the ArchSpec keeps them for lineage and
    mutation, but they do not enter the hash (the layers they produce do).
    """

    ratio: int | str = 3  # linear layers per full layer: 0 (all full), 1, 3, 6, ... or "all_linear"
    placement: str = "interleaved"  # where full layers sit: interleaved | first | last | a pattern like "LLLA"
    linear_mixer: str = "gated_deltanet"  # mixer of the L layers (one of LINEAR_MIXERS)
    full_mixer: str = "attention"  # mixer of the A layers (one of FULL_MIXERS)
    gate: str = "none"  # output gate on linear layers
    short_conv: bool = False  # short conv on q/k/v of linear layers
    full_short_conv: bool = False  # short conv on q/k/v of full layers (a gene of its own, as fair as on linear ones)

    def __post_init__(self) -> None:
        if self.ratio != ALL_LINEAR:
            _check_int("ratio", self.ratio, 0)
        if self.placement not in PLACEMENTS:
            if not (isinstance(self.placement, str) and self.placement and set(self.placement) <= {"L", "A"}):
                raise SpecError(
                    "placement",
                    f"got {self.placement!r}, allowed: {', '.join(PLACEMENTS)} or a pattern of L and A such as 'LLLA'",
                )
        _check_choice("linear_mixer", self.linear_mixer, LINEAR_MIXERS)
        _check_choice("full_mixer", self.full_mixer, FULL_MIXERS)
        _check_choice("gate", self.gate, GATES)
        _check_bool("short_conv", self.short_conv)
        _check_bool("full_short_conv", self.full_short_conv)

    def pattern(self, n_layers: int) -> str:
        """The layer pattern, e.g. 'LLLA' for ratio 3 interleaved over 4 layers."""
        if self.placement not in PLACEMENTS:
            if len(self.placement) != n_layers:
                raise SpecError("placement", f"pattern {self.placement!r} has {len(self.placement)} layers, the model has {n_layers}")
            return self.placement
        if self.ratio == ALL_LINEAR:
            n_full = 0
        else:
            # ratio r means r linear layers per full one; any finite ratio keeps at least one full layer.
            n_full = max(1, round(n_layers / (int(self.ratio) + 1)))
        n_full = min(n_full, n_layers)
        if self.placement == "first":
            full = set(range(n_full))
        elif self.placement == "last":
            full = set(range(n_layers - n_full, n_layers))
        else:  # interleaved: spread evenly, each full layer closing its group (LLLA LLLA ...)
            full = {((j + 1) * n_layers) // n_full - 1 for j in range(n_full)} if n_full else set()
        return "".join("A" if i in full else "L" for i in range(n_layers))

    def expand(self, n_layers: int, n_heads: int, base: LayerSpec | None = None) -> tuple[LayerSpec, ...]:
        """Per-layer specs; `base` supplies options the hybrid genes do not set (conv size, window, ...)."""
        base = base or LayerSpec(mixer=self.linear_mixer)
        layers = []
        for c in self.pattern(n_layers):
            if c == "A":
                layers.append(
                    replace(base, mixer=self.full_mixer, n_heads=n_heads, gate="none", short_conv=self.full_short_conv)
                )
            else:
                layers.append(replace(base, mixer=self.linear_mixer, n_heads=n_heads, gate=self.gate, short_conv=self.short_conv))
        return tuple(layers)


@dataclass(frozen=True)
class ArchSpec:
    """A whole model: embedding, `layers` blocks (pre-norm mixer + pre-norm MLP), final norm, LM head."""

    d_model: int  # residual width
    layers: tuple[LayerSpec, ...]  # one entry per block, in order
    vocab_size: int  # set from the task
    mlp: str = "swiglu"  # swiglu | gelu | none
    mlp_ratio: float = 2.0  # MLP hidden width = round(d_model * mlp_ratio)
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    tie_embeddings: bool = True  # LM head shares the embedding matrix
    hybrid: HybridGenes | None = field(default=None, compare=False)  # genes the layers came from, if any

    def __post_init__(self) -> None:
        _check_int("d_model", self.d_model, 8, 8192)
        _check_int("vocab_size", self.vocab_size, 2)
        if not isinstance(self.layers, tuple):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise SpecError("layers", "a model needs at least one layer")
        _check_choice("mlp", self.mlp, MLPS)
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or not 0.25 <= self.mlp_ratio <= 16:
            raise SpecError("mlp_ratio", f"got {self.mlp_ratio!r}, must be a number in [0.25, 16]")
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))
        _check_choice("norm", self.norm, NORMS)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerSpec):
                raise SpecError(f"layers[{i}]", f"expected a LayerSpec, got {type(layer).__name__}")
            options = layer.definition.options
            if "n_heads" in options and self.d_model % layer.n_heads:
                raise SpecError(f"layers[{i}].n_heads", f"{layer.n_heads} does not divide d_model={self.d_model}")
            if "expand_k" in options:
                dk = self.d_model * layer.expand_k / layer.n_heads
                if dk != int(dk) or dk < 1:
                    raise SpecError(f"layers[{i}].expand_k", f"d_model*expand_k/n_heads = {dk} must be a positive integer")

    # -- derived -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def pattern(self) -> str:
        """'A' for a full layer, 'L' for a linear one, e.g. 'LLLA'."""
        return "".join("A" if layer.is_full else "L" for layer in self.layers)

    @property
    def n_full(self) -> int:
        return self.pattern.count("A")

    @property
    def mixers(self) -> tuple[str, ...]:
        return tuple(layer.mixer for layer in self.layers)

    def mixer_modules(self) -> tuple[tuple[type, dict[str, Any]], ...]:
        """Each layer's mixer class and its constructor arguments (besides d_model), in order."""
        return tuple((layer.definition.module, layer.definition.kwargs(layer)) for layer in self.layers)

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        d["hybrid"] = asdict(self.hybrid) if self.hybrid is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(sorted(unknown)[0], f"unknown ArchSpec field; allowed: {', '.join(sorted(known))}")
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**layer) for layer in d.get("layers", ()))
        if d.get("hybrid") is not None:
            d["hybrid"] = HybridGenes(**d["hybrid"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> ArchSpec:
        return cls.from_dict(json.loads(s))

    def canonical_dict(self) -> dict[str, Any]:
        """What defines the network: everything but the hybrid genes and unused layer options."""
        return {
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "mlp": self.mlp,
            "mlp_ratio": self.mlp_ratio if self.mlp != "none" else None,
            "norm": self.norm,
            "tie_embeddings": self.tie_embeddings,
            "layers": [layer.canonical() for layer in self.layers],
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        """sha256 of the canonical JSON, first 16 hex digits (64 bits: no collision at any campaign size)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        """Short human label, e.g. 'gated_deltanet×3+attention d64 LLLA gate:swish conv'."""
        counts: dict[str, int] = {}
        for m in self.mixers:
            counts[m] = counts.get(m, 0) + 1
        mix = "+".join(f"{m}×{n}" if n > 1 else m for m, n in counts.items())
        gates = sorted({layer.gate for layer in self.layers} - {"none"})
        extras = [f"gate:{'/'.join(gates)}"] if gates else []
        if any(layer.short_conv for layer in self.layers):
            extras.append("conv")
        return " ".join([mix, f"d{self.d_model}", self.pattern, *extras])

    @classmethod
    def from_hybrid(
        cls,
        genes: HybridGenes,
        *,
        d_model: int,
        n_layers: int,
        n_heads: int,
        vocab_size: int,
        base_layer: LayerSpec | None = None,
        **model_genes: Any,
    ) -> ArchSpec:
        layers = genes.expand(n_layers, n_heads, base_layer)
        return cls(d_model=d_model, layers=layers, vocab_size=vocab_size, hybrid=genes, **model_genes)
