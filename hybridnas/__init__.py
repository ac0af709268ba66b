"""hybridnas: automated architecture search for hybrid sequence models.

The public API, one name per stage; heavy stages (torch, Ray, SQLAlchemy) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ArchSpec": "hybridnas.space",
    "LayerSpec": "hybridnas.space",
    "HybridGenes": "hybridnas.space",
    "SearchSpace": "hybridnas.space",
    "estimate_cost": "hybridnas.space",
    "render": "hybridnas.codegen",
    "build_model": "hybridnas.codegen",
    "export": "hybridnas.codegen",
    "HybridLM": "hybridnas.mixers",
    "gated_linear_attention": "hybridnas.kernels",
    "gated_delta_rule": "hybridnas.kernels",
    "Store": "hybridnas.store",
    "load_campaign": "hybridnas.search",
    "run_campaign": "hybridnas.search",
    "open_campaign": "hybridnas.search.api",
    "CampaignRun": "hybridnas.search",
    "Controller": "hybridnas.search",
    "Strategy": "hybridnas.search",
    "Scheduler": "hybridnas.search",
    "make_executor": "hybridnas.workers",
    "REGISTRY": "hybridnas.mixers",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybridnas' has no attribute {name!r}")
