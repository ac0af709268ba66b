"""hybridnas.mixers: every token mixer, one module each, and the registry that makes them known.

A mixer module holds a plain `nn.Module` (usable by itself: `GatedDeltaNet(d_model=64, n_heads=2)`)
and its `MIXER` entry (options, kind, cost, one-line summary). Adding a mixer is one module plus one
line in `REGISTRY` below; the genome, the cost model, codegen, the checks and the docs read it.
"""

from __future__ import annotations

from hybridnas.mixers import (
    attention,
    deltanet,
    gated_deltanet,
    gla,
    hgrn2,
    kda,
    linear_attn,
    mamba,
    mamba2,
    retnet,
    short_conv,
    swa,
)
from hybridnas.mixers.attention import Attention
from hybridnas.mixers.deltanet import DeltaNet
from hybridnas.mixers.gated_deltanet import GatedDeltaNet
from hybridnas.mixers.gla import GLA
from hybridnas.mixers.hgrn2 import HGRN2
from hybridnas.mixers.kda import KDA
from hybridnas.mixers.linear_attn import LinearAttention
from hybridnas.mixers.lm import MLP, Block, HybridLM
from hybridnas.mixers.mamba import Mamba
from hybridnas.mixers.mamba2 import Mamba2
from hybridnas.mixers.registry import FEATURE_MAPS, GATES, OPTIONS, MixerCost, MixerDef, Option, OptionError
from hybridnas.mixers.retnet import RetNet
from hybridnas.mixers.short_conv import ShortConvMixer

#: Every mixer, by gene name: full mixers first, then the linear ones.
REGISTRY: dict[str, MixerDef] = {
    m.name: m
    for m in (
        attention.MIXER,
        swa.MIXER,
        linear_attn.MIXER,
        retnet.MIXER,
        gla.MIXER,
        mamba2.MIXER,
        hgrn2.MIXER,
        deltanet.MIXER,
        gated_deltanet.MIXER,
        kda.MIXER,
        mamba.MIXER,
        short_conv.MIXER,
    )
}


def mixer(name: str) -> MixerDef:
    """The registry entry of `name`; ValueError listing the known mixers otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"mixer: got {name!r}, allowed: {', '.join(REGISTRY)}") from None


__all__ = [
    "FEATURE_MAPS",
    "GATES",
    "GLA",
    "HGRN2",
    "KDA",
    "MLP",
    "OPTIONS",
    "REGISTRY",
    "Attention",
    "Block",
    "DeltaNet",
    "GatedDeltaNet",
    "HybridLM",
    "LinearAttention",
    "Mamba",
    "Mamba2",
    "MixerCost",
    "MixerDef",
    "Option",
    "OptionError",
    "RetNet",
    "ShortConvMixer",
    "mixer",
]
