"""The pre-training checks: every generated mixer passes, leaky and inconsistent models are caught."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.codegen import build_model
from hybridnas.space.spec import MIXERS, RECURRENT_MIXERS, ArchSpec, LayerSpec
from hybridnas.workers.checks import RTOL, CheckFailed, check_model, cut_points

VOCAB = 13


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models gain nothing from more threads on a shared machine."""


def _spec(mixer: str) -> ArchSpec:
    """Two layers of `mixer` with its options on (short conv, gate, small window) and one plain."""
    rec = mixer in RECURRENT_MIXERS
    layers = (
        LayerSpec(mixer, n_heads=2, short_conv=True, conv_size=3, gate="swish", window=3, expand_k=2.0 if rec else 1.0),
        LayerSpec(mixer, n_heads=4, gate="sigmoid", window=5, feature_map="relu"),
    )
    return ArchSpec(d_model=16, layers=layers, vocab_size=VOCAB)


def _model(spec: ArchSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


class NextTokenLeak(nn.Module):
    """Wraps a real mixer and adds a little of the next position's input: a look-ahead leak."""

    def __init__(self, inner: nn.Module, amount: float = 0.1) -> None:
        super().__init__()
        self.inner, self.amount = inner, amount

    def forward(self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0):
        h, cache = self.inner(x, cache=cache, use_cache=use_cache, offset=offset)
        ahead = F.pad(x, (0, 0, 0, 1))[:, 1:]  # [B, T, D]: position t + 1 at t (zeros at the end)
        return h + self.amount * ahead, cache


class CenteredConvMixer(nn.Module):
    """A short-conv-like mixer whose depthwise convolution is centered (sees one token ahead)."""

    def __init__(self, d: int, width: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)
        self.weight = nn.Parameter(torch.randn(d, 1, width) / width**0.5)

    def forward(self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0):
        y = F.conv1d(self.proj(x).transpose(1, 2), self.weight, padding=self.weight.shape[-1] // 2, groups=x.shape[-1])
        return y.transpose(1, 2), ({} if use_cache else None)  # [B, T, D]


class ForgetfulDecode(nn.Module):
    """Wraps a real mixer; decoding one token at a time, it drops the cache (a causal model whose
    decode path disagrees with its forward)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0):
        if x.shape[1] == 1:
            cache = None
        return self.inner(x, cache=cache, use_cache=use_cache, offset=offset)


def _fails_check(model: nn.Module, reason: str) -> CheckFailed:
    """The CheckFailed of check_model on `model` (12 tokens, seed 0), its reason matching `reason`."""
    with pytest.raises(CheckFailed, match=reason) as err:
        check_model(model, VOCAB, seq_len=12, seed=0)
    return err.value


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_generated_mixer_passes(mixer: str) -> None:
    model = _model(_spec(mixer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    report = check_model(model, VOCAB, seq_len=12, seed=1)
    assert report.causal_max_diff <= report.tolerance and report.decode_max_diff <= report.tolerance
    assert report.tolerance >= RTOL and report.cut_points == cut_points(12) and report.prefill_len == 6
    # The caller's model (weights, dtype, mode) and the global RNG are untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32 and model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_window_longer_than_the_check_and_a_sequence_past_it() -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("swa", window=8), LayerSpec("gla")), vocab_size=VOCAB)
    assert check_model(_model(spec), VOCAB, seq_len=20, seed=0).decode_max_diff < 1e-10


@pytest.mark.parametrize("layer", [0, 1])
def test_next_token_leak_is_caught(layer: int) -> None:
    model = _model(_spec("gated_deltanet"))
    model.layers[layer].mixer = NextTokenLeak(model.layers[layer].mixer)
    _fails_check(model, r"^not causal: changing token 1 moves the logits at position 0 by ")


def test_small_leak_is_caught() -> None:
    # A leak a thousand times weaker than the mixer's own output is still far above the tolerance.
    model = _model(_spec("mamba2"))
    model.layers[1].mixer = NextTokenLeak(model.layers[1].mixer, amount=1e-4)
    _fails_check(model, r"^not causal")


def test_non_causal_conv_is_caught() -> None:
    model = _model(_spec("short_conv"))
    model.layers[0].mixer = CenteredConvMixer(16)
    err = _fails_check(model, r"^not causal")
    # Reported at a cut point's own position: the first logits that see a later token.
    p = int(re.search(r"at position (\d+)", err.reason).group(1))
    assert p in cut_points(12)


def test_decode_that_disagrees_with_the_forward_is_caught() -> None:
    model = _model(_spec("gla"))
    model.layers[0].mixer = ForgetfulDecode(model.layers[0].mixer)
    reason = r"^decode mismatch: one token at a time from an empty cache, the logits at position 1 "
    _fails_check(model, reason)


def test_prefill_cache_that_disagrees_is_caught() -> None:
    # Only the prefill's cache is wrong (dropped); decoding from an empty cache stays right.
    class ForgetsPrefill(ForgetfulDecode):
        def forward(self, x, cache=None, use_cache=False, offset=0):  # type: ignore[override]
            h, new = self.inner(x, cache=cache, use_cache=use_cache, offset=offset)
            return h, ({} if use_cache and x.shape[1] > 1 else new)

    model = _model(_spec("retnet"))
    model.layers[1].mixer = ForgetsPrefill(model.layers[1].mixer)
    reason = r"^decode mismatch: one token at a time after a prefill of 6 tokens, .* position 6 "
    _fails_check(model, reason)


def test_a_model_without_a_cache_is_reported() -> None:
    class NoCache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 8)

        def forward(self, ids: torch.Tensor, cache: dict | None = None, use_cache: bool = False) -> torch.Tensor:
            return self.emb(ids) @ self.emb.weight.T  # causal (position-wise), but never returns a cache

    with pytest.raises(CheckFailed, match=r"^decode: the model returned no cache"):
        check_model(NoCache(), VOCAB, seq_len=6)


def test_bad_arguments() -> None:
    model = _model(_spec("short_conv"))
    with pytest.raises(ValueError, match=r"^seq_len: got 1"):
        check_model(model, VOCAB, seq_len=1)
    with pytest.raises(ValueError, match=r"^vocab_size: got 1"):
        check_model(model, 1)
    assert cut_points(2) == (0,) and cut_points(12) == (0, 3, 6, 10)


def test_runs_single_threaded_and_restores_the_setting() -> None:
    torch.set_num_threads(2)  # the autouse fixture restores the session's value afterwards
    seen: list[int] = []
    model = _model(_spec("short_conv"))
    model.layers[0].register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    check_model(model, VOCAB, seq_len=6)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
