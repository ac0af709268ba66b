"""Shared fixtures of the codegen tests: tiny specs, one per mixer."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from hybridnas.space.spec import RECURRENT_MIXERS, ArchSpec, LayerSpec


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The test machine is shared: tiny models gain nothing from more threads.
    torch.set_num_threads(1)


def _two_layer_spec(mixer: str, **model_genes: object) -> ArchSpec:
    """Two layers of `mixer`: one with short conv, swish gate and expanded state, one plain with more heads."""
    recurrent = mixer in RECURRENT_MIXERS
    layers = (
        LayerSpec(
            mixer,
            n_heads=2,
            short_conv=True,
            conv_size=3,
            gate="swish",
            window=3,
            feature_map="elu",
            expand_k=2.0 if recurrent else 1.0,
        ),
        LayerSpec(mixer, n_heads=4, gate="sigmoid", window=5, feature_map="relu", conv_size=4),
    )
    genes: dict[str, object] = {"d_model": 16, "vocab_size": 13}
    genes.update(model_genes)
    return ArchSpec(layers=layers, **genes)  # type: ignore[arg-type]


@pytest.fixture
def mixer_spec() -> Callable[..., ArchSpec]:
    """mixer_spec(mixer, **model_genes) -> a tiny two-layer ArchSpec exercising that mixer's options."""
    return _two_layer_spec
