"""Search spaces: the choices for every gene, and the operators that move through them.

A space is either *hybrid* (the model's layers come from `HybridGenes`: linear-to-full ratio, placement,
which linear and which full mixer, gate, short conv) or *per-layer* (each layer picks its own mixer,
gate and short conv). Model genes (width, depth, heads, MLP, norm) are shared by both.

The user-facing form is `SpaceFile` (pydantic, `extra="forbid"`); `SearchSpace` is its frozen,
validated internal form with `sample`, `mutate` and `crossover`. Every operator returns the name it
applied, so lineage records *how* a child differs from its parent.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hybridnas.mixers.registry import FEATURE_MAPS, GATES
from hybridnas.space.spec import (
    ALL_LINEAR,
    FULL_MIXERS,
    LINEAR_MIXERS,
    MIXERS,
    MLPS,
    NORMS,
    PLACEMENTS,
    ArchSpec,
    HybridGenes,
    LayerSpec,
    SpecError,
)

Choice = Union[int, float, str, bool]
#: Hard bounds on the model genes: far above what a proxy search trains, low enough that validation itself stays cheap.
MAX_D_MODEL = 8192
MAX_N_LAYERS = 256
MAX_N_HEADS = 64
MAX_CHOICES = 256  # choices per gene
MAX_WINDOW = 1 << 20
#: Genes every layer of a per-layer space picks for itself (parameters `layer{i}.mixer`, ...).
LAYER_GENES: tuple[str, ...] = ("mixer", "gate", "short_conv")


def _choices(name: str, values: list[Any], allowed: tuple[Any, ...] | None = None) -> list[Any]:
    if not values:
        raise ValueError("needs at least one choice")
    if len(values) > MAX_CHOICES:
        raise ValueError(f"got {len(values)} choices, at most {MAX_CHOICES} are allowed")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"choices must be unique, got {values}")
    if allowed is not None:
        for v in values:
            if v not in allowed:
                raise ValueError(f"{v!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    return values


# --- the user-facing file form -------------------------------------------------------------------


class _Strict(BaseModel):
    # strict: `true` is not 1 and "3" is not 3; no inf or nan where a number is expected.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class _OptionChoices(_Strict):
    """Genes shared by both kinds of space: the output gate and the short conv on q/k/v."""

    gate: list[str] = Field(default=["none"])
    short_conv: list[bool] = Field(default=[False])

    @field_validator("gate")
    @classmethod
    def _gate(cls, v: list[str]) -> list[str]:
        return _choices("gate", v, GATES)

    @field_validator("short_conv")
    @classmethod
    def _sc(cls, v: list[bool]) -> list[bool]:
        return _choices("short_conv", v)


class HybridChoices(_OptionChoices):
    """Hybrid-level genes: each a list of choices."""

    ratio: list[Union[int, Literal["all_linear"]]] = Field(default=[0, 1, 3, ALL_LINEAR])
    placement: list[str] = Field(default=["interleaved"])
    linear_mixer: list[str] = Field(default=["gated_deltanet"])
    full_mixer: list[str] = Field(default=["attention"])
    full_short_conv: list[bool] = Field(default=[False])  # the short conv on q/k/v of the full layers

    @field_validator("full_short_conv")
    @classmethod
    def _full_sc(cls, v: list[bool]) -> list[bool]:
        return _choices("full_short_conv", v)

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio_items(cls, v: Any) -> Any:
        # Before the union is tried, so a bad item gets one message instead of one per union member.
        for r in v if isinstance(v, list) else ():
            if r != ALL_LINEAR and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
                raise ValueError(f"{r!r} is not allowed; allowed: integers >= 0 or '{ALL_LINEAR}'")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: list[Any]) -> list[Any]:
        for r in v:
            if r != ALL_LINEAR and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
                raise ValueError(f"{r!r} is not allowed; allowed: integers >= 0 or '{ALL_LINEAR}'")
        return _choices("ratio", v)

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: list[str]) -> list[str]:
        for p in v:
            if p not in PLACEMENTS and not (p and set(p) <= {"L", "A"}):
                raise ValueError(f"{p!r} is not allowed; allowed: {', '.join(PLACEMENTS)} or a pattern of L and A such as 'LLLA'")
        return _choices("placement", v)

    @field_validator("linear_mixer")
    @classmethod
    def _linear(cls, v: list[str]) -> list[str]:
        return _choices("linear_mixer", v, LINEAR_MIXERS)

    @field_validator("full_mixer")
    @classmethod
    def _full(cls, v: list[str]) -> list[str]:
        return _choices("full_mixer", v, FULL_MIXERS)



class LayerChoices(_OptionChoices):
    """Per-layer genes: every layer picks independently from these."""

    mixer: list[str] = Field(default=list(MIXERS))

    @field_validator("mixer")
    @classmethod
    def _mixer(cls, v: list[str]) -> list[str]:
        return _choices("mixer", v, MIXERS)



class SpaceFile(_Strict):
    """The `space:` section of a campaign file (or a standalone space file)."""

    d_model: list[int] = Field(default=[64])
    n_layers: list[int] = Field(default=[4])
    n_heads: list[int] = Field(default=[2])
    mlp: list[str] = Field(default=["swiglu"])
    mlp_ratio: list[float] = Field(default=[2.0])
    norm: list[str] = Field(default=["rmsnorm"])
    expand_k: list[float] = Field(default=[1.0])
    conv_size: int = 4
    window: int = Field(default=64, ge=1, le=MAX_WINDOW)
    feature_map: str = "identity"
    hybrid: HybridChoices | None = None
    layers: LayerChoices | None = None

    @field_validator("d_model", "n_layers", "n_heads")
    @classmethod
    def _positive_ints(cls, v: list[int], info: Any) -> list[int]:
        hi = {"d_model": MAX_D_MODEL, "n_layers": MAX_N_LAYERS, "n_heads": MAX_N_HEADS}[info.field_name]
        for x in v:
            if not 1 <= x <= hi:
                raise ValueError(f"{x} is not allowed; must be in [1, {hi}]")
        return _choices(info.field_name, v)

    @field_validator("mlp")
    @classmethod
    def _mlp(cls, v: list[str]) -> list[str]:
        return _choices("mlp", v, MLPS)

    @field_validator("norm")
    @classmethod
    def _norm(cls, v: list[str]) -> list[str]:
        return _choices("norm", v, NORMS)

    @field_validator("mlp_ratio", "expand_k")
    @classmethod
    def _floats(cls, v: list[float], info: Any) -> list[float]:
        return _choices(info.field_name, v)

    @field_validator("feature_map")
    @classmethod
    def _fm(cls, v: str) -> str:
        if v not in FEATURE_MAPS:
            raise ValueError(f"{v!r} is not allowed; allowed: {', '.join(FEATURE_MAPS)}")
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> SpaceFile:
        if self.hybrid is not None and self.layers is not None:
            raise ValueError("give either `hybrid` (hybrid-level genes) or `layers` (per-layer genes), not both")
        for d in self.d_model:
            for h in self.n_heads:
                if d % h:
                    raise ValueError(f"n_heads: {h} does not divide d_model {d}; every combination must divide")
        if self.hybrid is not None:
            for pattern in self.hybrid.placement:
                if pattern not in PLACEMENTS:
                    for n in self.n_layers:
                        if len(pattern) != n:
                            raise ValueError(f"hybrid.placement: pattern {pattern!r} has {len(pattern)} layers but n_layers allows {n}")
        return self

    def build(self, vocab_size: int) -> SearchSpace:
        mode: Literal["hybrid", "layers"] = "layers" if self.layers is not None else "hybrid"
        hybrid = self.hybrid or HybridChoices()
        layers = self.layers or LayerChoices()
        genes: dict[str, tuple[Any, ...]] = {
            "d_model": tuple(self.d_model),
            "n_layers": tuple(self.n_layers),
            "n_heads": tuple(self.n_heads),
            "mlp": tuple(self.mlp),
            "mlp_ratio": tuple(self.mlp_ratio),
            "norm": tuple(self.norm),
            "expand_k": tuple(self.expand_k),
        }
        if mode == "hybrid":
            genes |= {f"hybrid.{k}": tuple(getattr(hybrid, k)) for k in HybridChoices.model_fields}
        else:
            genes |= {f"layer.{k}": tuple(getattr(layers, k)) for k in LayerChoices.model_fields}
        space = SearchSpace(
            mode=mode,
            genes=tuple(genes.items()),
            vocab_size=vocab_size,
            base_layer=LayerSpec(
                mixer=LINEAR_MIXERS[0], conv_size=self.conv_size, window=self.window, feature_map=self.feature_map
            ),
        )
        space.check()  # fail now, not mid-campaign, if some combination of choices is invalid
        return space


def _match(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """The choice equal to `value` (True is not 1 here), or ValueError naming the gene and its choices."""
    for c in choices:
        if c == value and isinstance(c, bool) == isinstance(value, bool):
            return c
    raise ValueError(f"{name}: {value!r} is not allowed; allowed: {', '.join(map(repr, choices))}")


# --- the internal form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """Validated choices per gene. `genes` maps a gene name to its choices (a tuple of pairs, to stay hashable)."""

    mode: Literal["hybrid", "layers"]  # hybrid-level genes or per-layer genes
    genes: tuple[tuple[str, tuple[Any, ...]], ...]  # gene name -> choices
    vocab_size: int  # from the task
    base_layer: LayerSpec  # options no gene sets (conv width, window, feature map)

    def choices(self, gene: str) -> tuple[Any, ...]:
        return dict(self.genes)[gene]

    def check(self, max_combinations: int = 20_000) -> None:
        """Build one model per combination of model genes and mixer choice; ValueError naming the first invalid one."""
        names = ("d_model", "n_layers", "n_heads", "mlp", "mlp_ratio", "norm", "expand_k")
        if self.mode == "hybrid":
            mixers = self.choices("hybrid.linear_mixer") + self.choices("hybrid.full_mixer")
        else:
            mixers = self.choices("layer.mixer")
        for values in itertools.islice(itertools.product(*(self.choices(n) for n in names)), max_combinations):
            v = dict(zip(names, values))
            for mixer in mixers:
                try:
                    layer = replace(self.base_layer, mixer=mixer, n_heads=v["n_heads"], expand_k=v["expand_k"])
                    ArchSpec(
                        d_model=v["d_model"],
                        layers=(layer,) * v["n_layers"],
                        vocab_size=self.vocab_size,
                        mlp=v["mlp"],
                        mlp_ratio=v["mlp_ratio"],
                        norm=v["norm"],
                    )
                except SpecError as e:
                    combo = ", ".join(f"{k}={v[k]}" for k in ("d_model", "n_heads", "expand_k", "mlp_ratio"))
                    raise ValueError(f"{e} (for mixer {mixer} with {combo})") from None

    @property
    def mutable_genes(self) -> tuple[str, ...]:
        """Genes with more than one choice: the only ones an operator can change."""
        return tuple(name for name, values in self.genes if len(values) > 1)

    # -- genes <-> spec ------------------------------------------------------------------------
    def _build(self, values: dict[str, Any], layer_genes: list[dict[str, Any]] | None = None) -> ArchSpec:
        model = dict(
            d_model=values["d_model"],
            vocab_size=self.vocab_size,
            mlp=values["mlp"],
            mlp_ratio=values["mlp_ratio"],
            norm=values["norm"],
        )
        base = replace(self.base_layer, expand_k=values["expand_k"])
        if self.mode == "hybrid":
            genes = HybridGenes(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("hybrid.")})
            return ArchSpec.from_hybrid(
                genes, n_layers=values["n_layers"], n_heads=values["n_heads"], base_layer=base, **model
            )
        assert layer_genes is not None
        layers = tuple(replace(base, n_heads=values["n_heads"], **lg) for lg in layer_genes)
        return ArchSpec(layers=layers, **model)

    def _values(self, spec: ArchSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The gene values that produced `spec` (inverse of `_build`)."""
        first = spec.layers[0]
        values: dict[str, Any] = {
            "d_model": spec.d_model,
            "n_layers": spec.n_layers,
            "n_heads": first.n_heads,
            "mlp": spec.mlp,
            "mlp_ratio": spec.mlp_ratio,
            "norm": spec.norm,
            "expand_k": first.expand_k,
        }
        layer_genes = [{k: getattr(l, k) for k in LAYER_GENES} for l in spec.layers]
        if self.mode == "hybrid":
            if spec.hybrid is None:
                raise ValueError("spec has no hybrid genes but the space is hybrid")
            values |= {f"hybrid.{k}": getattr(spec.hybrid, k) for k in HybridChoices.model_fields}
        return values, layer_genes

    # -- genes as flat parameters (define-by-run samplers such as Optuna) -----------------------
    def _model_params(self) -> list[tuple[str, tuple[Choice, ...]]]:
        return [(name, choices) for name, choices in self.genes if not name.startswith("layer.")]

    def _layer_params(self, i: int) -> list[tuple[str, tuple[Choice, ...]]]:
        return [(f"layer{i}.{k}", self.choices(f"layer.{k}")) for k in LAYER_GENES]

    def param_choices(self, n_layers: int | None = None) -> list[tuple[str, tuple[Choice, ...]]]:
        """Every parameter of a design with `n_layers` layers and its choices, in the order `suggest` asks.

        Model genes come first, named as in `genes` (`d_model`, ..., `hybrid.ratio`, ...); a per-layer
        space then has `layer{i}.mixer`, `layer{i}.gate`, `layer{i}.short_conv` for i < n_layers, so
        those exist only for depths that reach them. n_layers None means the deepest allowed depth.
        Every choice is an int, float, str or bool (what Optuna's categorical distribution takes).
        """
        out = self._model_params()
        if self.mode == "layers":
            depth = max(self.choices("n_layers")) if n_layers is None else n_layers
            for i in range(depth):
                out += self._layer_params(i)
        return out

    def suggest(self, pick: Callable[[str, tuple[Choice, ...]], Choice]) -> ArchSpec:
        """Build a design from `pick(name, choices)`, called once per parameter in `param_choices` order.

        Define-by-run: the per-layer parameters asked depend on the `n_layers` picked. With Optuna,
        `space.suggest(trial.suggest_categorical)`. ValueError when a pick is not one of its choices.
        """
        values = {name: _match(name, pick(name, choices), choices) for name, choices in self._model_params()}
        layer_genes = None
        if self.mode == "layers":
            layer_genes = []
            for i in range(values["n_layers"]):
                picked = [_match(name, pick(name, choices), choices) for name, choices in self._layer_params(i)]
                layer_genes.append(dict(zip(LAYER_GENES, picked)))
        return self._build(values, layer_genes)

    def params_of(self, spec: ArchSpec) -> dict[str, Choice]:
        """The parameters that build `spec` (inverse of `from_params`); ValueError if it is not in the space."""
        if spec.vocab_size != self.vocab_size:
            raise ValueError(f"vocab_size: {spec.vocab_size} is not the space's {self.vocab_size}")
        values, layer_genes = self._values(spec)
        params = {name: _match(name, values[name], choices) for name, choices in self._model_params()}
        if self.mode == "layers":
            for i, lg in enumerate(layer_genes):
                for (name, choices), k in zip(self._layer_params(i), LAYER_GENES):
                    params[name] = _match(name, lg[k], choices)
        return params

    def from_params(self, params: Mapping[str, Choice]) -> ArchSpec:
        """The design the parameters describe; ValueError naming a missing, unknown or disallowed one."""
        depth = params.get("n_layers")
        allowed = {name for name, _ in self.param_choices(depth if depth in self.choices("n_layers") else 0)}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown parameter; allowed: {', '.join(sorted(allowed))}")

        def pick(name: str, choices: tuple[Choice, ...]) -> Choice:
            if name not in params:
                raise ValueError(f"{name}: missing; allowed: {', '.join(map(repr, choices))}")
            return params[name]

        return self.suggest(pick)

    def contains(self, spec: ArchSpec) -> bool:
        try:
            values, layer_genes = self._values(spec)
        except ValueError:
            return False
        if spec.vocab_size != self.vocab_size:
            return False
        if any(values[g] not in self.choices(g) for g in values):
            return False
        if self.mode == "layers":
            return all(lg[k] in self.choices(f"layer.{k}") for lg in layer_genes for k in lg)
        return True

    # -- operators -----------------------------------------------------------------------------
    def _random_layer(self, rng: random.Random) -> dict[str, Any]:
        return {k: rng.choice(self.choices(f"layer.{k}")) for k in LAYER_GENES}

    def sample(self, rng: random.Random) -> ArchSpec:
        values = {name: rng.choice(choices) for name, choices in self.genes if not name.startswith("layer.")}
        layer_genes = [self._random_layer(rng) for _ in range(values["n_layers"])] if self.mode == "layers" else None
        return self._build(values, layer_genes)

    def mutate(self, spec: ArchSpec, rng: random.Random, max_tries: int = 32) -> tuple[ArchSpec, str]:
        """One random change that alters the network; returns (child, operator name)."""
        values, layer_genes = self._values(spec)
        ops: list[str] = [g for g in self.mutable_genes if not g.startswith("layer.")]
        if self.mode == "layers":
            ops += [f"layer_{k}" for k in LAYER_GENES if len(self.choices(f"layer.{k}")) > 1]
            if len(set(map(str, layer_genes))) > 1:
                ops.append("swap_layers")
        if not ops:
            raise ValueError("space has a single design: nothing to mutate")
        for _ in range(max_tries):
            op = rng.choice(ops)
            v, lg = dict(values), [dict(x) for x in layer_genes]
            if op == "swap_layers":
                i, j = rng.sample(range(len(lg)), 2)
                lg[i], lg[j] = lg[j], lg[i]
                name = "swap_layers"
            elif op.startswith("layer_"):
                key = op[len("layer_"):]
                i = rng.randrange(len(lg))
                lg[i][key] = rng.choice([c for c in self.choices(f"layer.{key}") if c != lg[i][key]] or [lg[i][key]])
                name = f"mutate_layer_{key}"
            else:
                v[op] = rng.choice([c for c in self.choices(op) if c != v[op]])
                if op == "n_layers" and self.mode == "layers":
                    # Depth change: drop the last layers, or grow by copying random existing ones.
                    while len(lg) > v["n_layers"]:
                        lg.pop()
                    while len(lg) < v["n_layers"]:
                        lg.append(dict(rng.choice(lg)))
                name = f"mutate_{op.replace('hybrid.', '')}"
            try:
                child = self._build(v, lg)
            except ValueError:
                continue
            if child.spec_hash != spec.spec_hash:
                return child, name
        raise ValueError(f"no mutation of {spec.describe()} changes the network after {max_tries} tries")

    def crossover(self, a: ArchSpec, b: ArchSpec, rng: random.Random) -> tuple[ArchSpec, str]:
        """Uniform crossover: each gene from either parent (per layer when depths match)."""
        va, la = self._values(a)
        vb, lb = self._values(b)
        v = {k: (va[k] if rng.random() < 0.5 else vb[k]) for k in va}
        lg: list[dict[str, Any]] | None = None
        if self.mode == "layers":
            src = la if len(la) == v["n_layers"] else lb
            if len(la) == len(lb):
                lg = [dict(x if rng.random() < 0.5 else y) for x, y in zip(la, lb)]
            else:
                lg = [dict(x) for x in src]
        try:
            return self._build(v, lg), "crossover"
        except ValueError:
            return a, "crossover"

    def designs(self, limit: int = 100_000) -> list[ArchSpec]:
        """Every distinct network in the space, in a fixed order (gene order, then choice order).

        Gene combinations that build the same network (e.g. placements of an all-linear stack) count
        once. ValueError when the space has more than `limit` combinations.
        """
        if self.size() > limit:
            raise ValueError(f"space has {self.size()} gene combinations, more than limit={limit}")
        model = [(name, choices) for name, choices in self.genes if not name.startswith("layer.")]
        per_layer = (
            [dict(zip(LAYER_GENES, combo)) for combo in itertools.product(*(self.choices(f"layer.{k}") for k in LAYER_GENES))]
            if self.mode == "layers"
            else []
        )
        seen: set[str] = set()
        out: list[ArchSpec] = []
        for combo in itertools.product(*(choices for _, choices in model)):
            values = dict(zip((name for name, _ in model), combo))
            stacks = (
                [list(s) for s in itertools.product(per_layer, repeat=values["n_layers"])]
                if self.mode == "layers"
                else [None]
            )
            for lg in stacks:
                try:
                    spec = self._build(values, lg)
                except ValueError:
                    continue
                if spec.spec_hash not in seen:
                    seen.add(spec.spec_hash)
                    out.append(spec)
        return out

    def size(self) -> int:
        """Number of gene combinations (an upper bound on distinct networks)."""
        n = 1
        for name, choices in self.genes:
            if not name.startswith("layer."):
                n *= len(choices)
        if self.mode == "layers":
            per_layer = 1
            for k in LAYER_GENES:
                per_layer *= len(self.choices(f"layer.{k}"))
            n *= per_layer ** max(self.choices("n_layers"))
        return n
