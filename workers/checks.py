"""Checks every candidate must pass before it is trained: causality and decode equivalence.

A token model for next-token prediction is only meaningful when the logits at position t depend on
tokens 0..t alone, and it is only deployable when decoding one token at a time through its cache
gives the logits of the full (chunked) forward. Both are properties of the architecture, so they are
checked on a float64 copy of the model on the CPU with fresh random weights of unit gain (every
matrix ~ N(0, 1/fan_in), embeddings ~ N(0, 1)); the caller's model and the global RNG are untouched.
Unit gain keeps every mixer's contribution to the logits of order one, whatever its own init, so a
leak cannot hide behind a small (or zero) initial output projection.

Tolerance. Both checks compare logits that are mathematically equal; in float64 (unit roundoff
1.1e-16) they differ only by the reordering of sums (chunked vs sequential recurrences, batched vs
single rows). Measured over every mixer with its options, 3 seeds, up to 80 tokens (more than one
64-token kernel chunk): at most 5e-14 of the logits' scale. The checks allow `RTOL` = 1e-8 of that
scale (the largest |logit|, at least 1): five orders of magnitude above roundoff. At unit gain a leak
of one part in 10^6 of the next token's input still moves a logit by ~50x the tolerance, and a
decode path that drops its state moves logits by order one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

#: Allowed |difference| between logits, relative to the largest |logit| of the full forward (at least 1).
RTOL = 1e-8


class CheckFailed(Exception):
    """The candidate broke a check; `reason` is the one line recorded with its evaluation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckReport:
    """What was checked and how close the model came to each limit."""

    seq_len: int  # tokens per checked sequence
    batch_size: int  # sequences per check
    cut_points: tuple[int, ...]  # positions t whose later tokens were changed in the causality check
    prefill_len: int  # P: decoded from an empty cache over 0..P-1, and after a P-token prefill over P..T-1
    causal_max_diff: float  # largest change of a logit at a position <= t when tokens after t changed
    decode_max_diff: float  # largest |decoded - full| logit over both decode runs
    tolerance: float  # absolute tolerance both were held to: RTOL * max(1, max |logit|)
    wall_time_s: float  # time the checks took


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tensors this small gain nothing from intra-op threads, and on a busy CPU the fan-out costs
    tenfold; the worker's own setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unit_gain_copy(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """A float64 CPU copy of `model` whose matrices are redrawn at unit gain (1-D parameters kept)."""
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    embeddings = {id(mod.weight) for mod in m.modules() if isinstance(mod, nn.Embedding)}
    with torch.no_grad():
        for p in m.parameters():  # unique: a tied embedding / LM head matrix is drawn once
            if p.ndim < 2:
                continue  # norm scales, biases, decay rates keep their (working-range) values
            std = 1.0 if id(p) in embeddings else 1.0 / math.sqrt(p[0].numel())
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
    return m


def _cached(model: nn.Module, ids: torch.Tensor, cache: dict | None) -> tuple[torch.Tensor, dict]:
    out = model(ids, cache=cache, use_cache=True)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckFailed("decode: the model returned no cache when called with use_cache=True")
    return out


def _decode(model: nn.Module, ids: torch.Tensor, prefill_len: int) -> torch.Tensor:
    """Logits of a prefill of `prefill_len` tokens (0: none), then one token per call. [B, T, V]"""
    outs, cache = [], None
    if prefill_len:
        logits, cache = _cached(model, ids[:, :prefill_len], None)
        outs.append(logits)
    for t in range(prefill_len, ids.shape[1]):
        logits, cache = _cached(model, ids[:, t : t + 1], cache)
        outs.append(logits)
    return torch.cat(outs, dim=1)


def _first_bad_position(diff: torch.Tensor, tol: float) -> int:
    """Smallest position whose largest difference exceeds `tol`. diff [B, T, V]"""
    per_pos = diff.amax(dim=(0, 2))  # [T]
    return int((per_pos > tol).nonzero()[0, 0])


def _finite(logits: torch.Tensor, what: str) -> None:
    if not torch.isfinite(logits).all():
        raise CheckFailed(f"{what}: the logits are not finite (at unit-gain float64 weights)")


def cut_points(seq_len: int) -> tuple[int, ...]:
    """Positions t checked for causality: the first, a quarter, the middle and the last but one."""
    return tuple(sorted({t for t in (0, seq_len // 4, seq_len // 2, seq_len - 2) if 0 <= t <= seq_len - 2}))


def check_model(
    model: nn.Module, vocab_size: int, seq_len: int = 24, seed: int = 0, batch_size: int = 2
) -> CheckReport:
    """Check that `model` (ids [B, T] -> logits [B, T, V]; `use_cache=True` returns (logits, cache))
    is causal and that its step-by-step decode matches its full forward. Raises CheckFailed(reason).

    Causality: for several cut points t, the tokens after t are changed (only t + 1, and all of
    them), all variants in one batch; the logits at positions <= t must not move. Equivalence: the
    full forward, position by position, against one token at a time from an empty cache over the
    first half, and against a prefill of the first half followed by one token at a time.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len: got {seq_len!r}, must be >= 2")
    if vocab_size < 2:
        raise ValueError(f"vocab_size: got {vocab_size!r}, must be >= 2 (a token must be changeable)")
    t0 = time.perf_counter()
    with torch.no_grad(), _one_thread():
        causal_max, decode_max, tol = _check(model, vocab_size, seq_len, seed, batch_size)
    return CheckReport(
        seq_len=seq_len,
        batch_size=batch_size,
        cut_points=cut_points(seq_len),
        prefill_len=seq_len // 2,
        causal_max_diff=causal_max,
        decode_max_diff=decode_max,
        tolerance=tol,
        wall_time_s=time.perf_counter() - t0,
    )


def _check(model: nn.Module, vocab_size: int, seq_len: int, seed: int, batch_size: int) -> tuple[float, float, float]:
    """(causal max diff, decode max diff, tolerance); raises CheckFailed at the first violation."""
    gen = torch.Generator().manual_seed(seed)
    m = _unit_gain_copy(model, gen)
    ids = torch.randint(vocab_size, (batch_size, seq_len), generator=gen)  # [B, T]

    full = m(ids)  # [B, T, V]
    if isinstance(full, tuple):
        raise CheckFailed("forward: without use_cache the model must return logits, not a tuple")
    _finite(full, "forward")
    tol = RTOL * max(1.0, float(full.abs().max()))

    # Causality: variants [ids, (t + 1 changed) per cut, (everything after t changed) per cut].
    cuts = cut_points(seq_len)
    variants = [ids]
    for t in cuts:
        one = ids.clone()
        one[:, t + 1] = (one[:, t + 1] + torch.randint(1, vocab_size, (batch_size,), generator=gen)) % vocab_size
        rest = ids.clone()
        shift = torch.randint(1, vocab_size, (batch_size, seq_len - t - 1), generator=gen)
        rest[:, t + 1 :] = (rest[:, t + 1 :] + shift) % vocab_size
        variants += [one, rest]
    out = m(torch.cat(variants)).view(len(variants), batch_size, seq_len, -1)  # [n, B, T, V]
    _finite(out, "forward")
    causal_max = 0.0
    for i, t in enumerate(cuts):
        for changed, what in ((out[1 + 2 * i], f"token {t + 1}"), (out[2 + 2 * i], f"tokens {t + 1}..{seq_len - 1}")):
            diff = (changed[:, : t + 1] - out[0, :, : t + 1]).abs()  # [B, t + 1, V]
            causal_max = max(causal_max, float(diff.max()))
            if causal_max > tol:
                p = _first_bad_position(diff, tol)
                raise CheckFailed(
                    f"not causal: changing {what} moves the logits at position {p} by {float(diff[:, p].max()):.3g} "
                    f"(tolerance {tol:.3g})"
                )

    # Equivalence: decode through the cache, from nothing and after a prefill.
    # The first run covers positions 0..P-1, the second P..T-1 on top of a P-token prefill.
    prefill_len = seq_len // 2
    decode_max = 0.0
    for start, stop in ((0, prefill_len), (prefill_len, seq_len)):
        decoded = _decode(m, ids[:, :stop], start)[:, start:]  # [B, stop - start, V]
        _finite(decoded, "decode")
        expected = full[:, start:stop]
        if decoded.shape != expected.shape:
            shapes = f"{tuple(decoded.shape)}, the forward gives {tuple(expected.shape)}"
            raise CheckFailed(f"decode: logits of shape {shapes}")
        diff = (decoded - expected).abs()
        decode_max = max(decode_max, float(diff.max()))
        if decode_max > tol:
            p = start + _first_bad_position(diff, tol)
            how = "from an empty cache" if start == 0 else f"after a prefill of {start} tokens"
            raise CheckFailed(
                f"decode mismatch: one token at a time {how}, the logits at position {p} differ from the full "
                f"forward by {float(diff[:, p - start].max()):.3g} (tolerance {tol:.3g})"
            )
    return causal_max, decode_max, tol


#: The most a block may write into the residual stream at init, as a multiple of the embedding's RMS.
MAX_INIT_WRITE = 1.0


def residual_writes(model: nn.Module, vocab_size: int, seq_len: int = 24, seed: int = 0, batch_size: int = 4) -> list[float]:
    """RMS of what each block adds to the residual stream at the model's current weights, divided by the
    RMS of the embedding output, on random tokens. [one ratio per block]

    A block that starts out writing more than the embedding carries drowns the token identities
    before training begins; one that writes far less is merely quiet. Mixers must start on equal
    footing, or a ranking measures their initializations.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(vocab_size, (batch_size, seq_len), generator=gen).to(device)  # [B, T]
    writes: list[float] = []

    def hook(_module: nn.Module, inputs: tuple, output: tuple) -> None:
        x_in, x_out = inputs[0], output[0]
        writes.append(float((x_out - x_in).float().pow(2).mean().sqrt()))

    handles = [block.register_forward_hook(hook) for block in model.layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            embedded = float(model.embed(ids).float().pow(2).mean().sqrt())
            model(ids)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [w / max(embedded, 1e-30) for w in writes]


def check_init(model: nn.Module, vocab_size: int, seq_len: int = 24, seed: int = 0) -> float:
    """The largest block write at init relative to the embedding (see `residual_writes`); CheckFailed
    when it exceeds MAX_INIT_WRITE."""
    ratios = residual_writes(model, vocab_size, seq_len, seed)
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    if ratios[worst] > MAX_INIT_WRITE:
        raise CheckFailed(
            f"init parity: block {worst} writes {ratios[worst]:.3g}x the embedding's RMS into the residual stream "
            f"at init (at most {MAX_INIT_WRITE:g}); its mixer starts louder than the tokens it reads"
        )
    return ratios[worst]


__all__ = [
    "MAX_INIT_WRITE",
    "RTOL",
    "CheckFailed",
    "CheckReport",
    "check_init",
    "check_model",
    "cut_points",
    "residual_writes",
]
