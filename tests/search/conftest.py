"""Fixtures shared by the search tests."""

from __future__ import annotations

import pytest

from hybridnas.space import HybridChoices, SearchSpace, SpaceFile


@pytest.fixture(scope="session")
def hybrid_space() -> SearchSpace:
    """A hybrid space over ratio, placement, linear mixer, gate and width (vocabulary 32)."""
    return SpaceFile(
        d_model=[32, 64],
        hybrid=HybridChoices(
            ratio=[0, 1, 3, "all_linear"],
            placement=["interleaved", "first", "last"],
            linear_mixer=["gla", "deltanet", "gated_deltanet", "mamba2"],
            gate=["none", "swish"],
        ),
    ).build(vocab_size=32)
