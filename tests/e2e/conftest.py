"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest


def _tiny_campaign(
    name: str, linear_mixers: Sequence[str] = ("gla", "deltanet", "mamba2"), **sections: Any
) -> dict[str, Any]:
    """A campaign file's content that trains in seconds on a CPU: MQAR with three pairs, two-layer
    hybrids, 12 steps; `sections` add or replace whole sections (search, execution, hardware, ...)."""
    return {
        "name": name,
        "seed": 0,
        "task": {"name": "mqar", "vocab_size": 32, "seq_len": 24, "num_kv_pairs": 3, "num_train": 256, "num_test": 64},
        "space": {
            "d_model": [16, 32],
            "n_layers": [2],
            "n_heads": [2],
            "hybrid": {"ratio": [0, 1, "all_linear"], "linear_mixer": list(linear_mixers), "gate": ["none", "swish"]},
        },
        "training": {"steps": 12, "batch_size": 16, "eval_batch_size": 64},
        **sections,
    }


@pytest.fixture(scope="session")
def tiny_campaign() -> Callable[..., dict[str, Any]]:
    """`tiny_campaign(name, linear_mixers=..., **sections)`: a fresh tiny campaign (a new dict each call)."""
    return _tiny_campaign
