"""The genome, search spaces and their operators, and the analytic cost model."""

from __future__ import annotations

from hybridnas.space.cost import CostEstimate, estimate_cost
from hybridnas.space.errors import format_validation_error
from hybridnas.space.space import HybridChoices, LayerChoices, SearchSpace, SpaceFile
from hybridnas.mixers.registry import FEATURE_MAPS, GATES
from hybridnas.space.spec import (
    ALL_LINEAR,
    FULL_MIXERS,
    LINEAR_MIXERS,
    MIXERS,
    MLPS,
    NORMS,
    PLACEMENTS,
    RECURRENT_MIXERS,
    ArchSpec,
    HybridGenes,
    LayerSpec,
    SpecError,
)

__all__ = [
    "ALL_LINEAR",
    "FEATURE_MAPS",
    "FULL_MIXERS",
    "GATES",
    "LINEAR_MIXERS",
    "MIXERS",
    "MLPS",
    "NORMS",
    "PLACEMENTS",
    "RECURRENT_MIXERS",
    "ArchSpec",
    "CostEstimate",
    "HybridChoices",
    "HybridGenes",
    "LayerChoices",
    "LayerSpec",
    "SearchSpace",
    "SpaceFile",
    "SpecError",
    "estimate_cost",
    "format_validation_error",
]
