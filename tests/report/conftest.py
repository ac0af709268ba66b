"""Fixtures for the report tests: a small recorded campaign, headless Chromium, and a PNG reader.

The campaign is written through the real Store API, the way the controller records one: candidates
with lineage, several seeds for two of them, a promoted candidate, a failure and an invalid result.
The PNG reader (8-bit RGB/RGBA, not interlaced: what Chromium writes) checks screenshots without a
third-party image library.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hybridnas.space.cost import estimate_cost
from hybridnas.space.spec import ArchSpec, HybridGenes, LayerSpec
from hybridnas.store import Store

CAMPAIGN = "mqar-hybrids"
CONFIG = {
    "name": CAMPAIGN,
    "seed": 7,
    "task": {"name": "mqar", "seq_len": 64, "n_pairs": 8, "vocab_size": 64},
    "search": {"strategy": "evolution", "budget": 8, "population": 4, "tournament": 2, "crossover_prob": 0.2},
    "training": {"steps": 300, "batch_size": 32, "lr": 0.003},
    "execution": {"executor": "inprocess", "workers": 2},
    "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "cost_state_bytes", "direction": "minimize"}],
    "constraints": {"max_params": 2000000, "context_len": 2048},
}
GPU = "cuda:0 (NVIDIA H100 80GB HBM3)"
FAILED_ERROR = "training diverged: loss is nan at step 120 <lr too high?>\n  at trainer.py:88 in train: loss.backward()"
INVALID_ERROR = "causality: output at position 5 changed when only tokens after it were perturbed (max |diff| 0.31)"


def _hybrid(ratio: int | str, mixer: str, placement: str = "interleaved") -> ArchSpec:
    genes = HybridGenes(ratio=ratio, placement=placement, linear_mixer=mixer)
    return ArchSpec.from_hybrid(genes, d_model=32, n_layers=4, n_heads=2, vocab_size=64)


def _layers(*mixers: str) -> ArchSpec:
    return ArchSpec(d_model=32, layers=tuple(LayerSpec(mixer=m) for m in mixers), vocab_size=64)


@dataclass(frozen=True)
class Recorded:
    """What the fixture wrote, for the tests to check the report against."""

    path: Path  # the SQLite file
    name: str  # campaign name
    device: str  # device string the done evaluations recorded
    ids: dict[str, int]  # fixture name -> candidate id
    specs: dict[str, ArchSpec]  # fixture name -> design
    accuracy: dict[str, list[float]]  # fixture name -> accuracy per seed at the scored fidelity
    prefill: dict[str, float]  # fixture name -> prefill tokens/s (one value for every seed)


def record_campaign(path: Path, *, with_hardware: bool = True, name: str = CAMPAIGN, config: dict | None = None) -> Recorded:
    """Write the campaign to a SQLite store at `path`."""
    specs = {
        "gdn3": _hybrid(3, "gated_deltanet"),  # sampled; parent of gla3
        "mamba1": _hybrid(1, "mamba2"),  # sampled; promoted to 600 steps; parent of the winner
        "gla3": _hybrid(3, "gla"),  # mutate_mixer child of gdn3; runner-up with 3 seeds
        "dn1": _hybrid(1, "deltanet", "first"),  # crossover of gla3 and mamba1: the winner, 3 seeds
        "attn": _layers("attention", "attention", "attention", "attention"),  # all full, no hybrid genes
        "conv": _layers("short_conv", "short_conv", "short_conv", "short_conv"),  # all linear: fails
        "ret": _hybrid("all_linear", "retnet"),  # failed the causality check before training: invalid
    }
    accuracy = {
        "gdn3": [0.78],
        "mamba1": [0.84],  # at 600 steps (0.71 at 300 does not count)
        "gla3": [0.90, 0.91, 0.89],
        "dn1": [0.925, 0.935, 0.93],
        "attn": [0.88],
    }
    prefill = {"gdn3": 41000.0, "mamba1": 52000.0, "gla3": 36000.0, "dn1": 30000.0, "attn": 12000.0}
    ids: dict[str, int] = {}
    with Store.open(path) as store:
        cid = store.create_campaign(name, config if config is not None else CONFIG, seed=7)

        def run(key: str, acc: float | None, seed: int, fidelity: int = 300, parents=(), generation: int = 0,
                failed: bool = False, invalid: bool = False) -> None:
            spec = specs[key]
            cand, ev = store.add_candidate(cid, spec, generation=generation, parents=list(parents), task="mqar",
                                           fidelity=fidelity, seed=seed)
            ids[key] = cand
            device = GPU if with_hardware else "cpu"
            store.mark_running(ev, host="worker-1", device=device)
            if failed:
                store.finish_evaluation(ev, status="failed", metrics={}, error=FAILED_ERROR, wall_time_s=3.5)
                return
            if invalid:
                store.finish_evaluation(ev, status="invalid", metrics={}, error=INVALID_ERROR, wall_time_s=0.2)
                return
            cost = estimate_cost(spec)
            metrics = {
                "accuracy": float("nan") if acc is None else acc,
                "loss": 2.0 if acc is None else round(1.2 - acc, 4),
                "train_loss": 1.1,
                "steps": float(fidelity),
                "params": float(cost.params),
                "train_tokens_per_s": 9000.0,
                "cost_params": float(cost.params),
                "cost_flops_per_token": float(cost.flops_per_token),
                "cost_state_bytes": float(cost.state_bytes),
                "cost_context_len": 2048.0,
            }
            if with_hardware and key in prefill:
                metrics["prefill_tokens_per_s"] = prefill[key]
                metrics["decode_tokens_per_s"] = prefill[key] / 40
            store.finish_evaluation(ev, status="done", metrics=metrics, host="worker-1", device=device, wall_time_s=12.0)

        run("gdn3", 0.78, seed=0)
        run("mamba1", 0.71, seed=0)
        run("gla3", 0.90, seed=0, parents=[(ids["gdn3"], "mutate_mixer")], generation=1)
        run("attn", 0.88, seed=0)
        run("conv", None, seed=0, failed=True)
        run("mamba1", 0.84, seed=0, fidelity=600)
        run("dn1", 0.925, seed=0, parents=[(ids["gla3"], "crossover"), (ids["mamba1"], "crossover")], generation=2)
        run("ret", None, seed=0, invalid=True)
        for seed, (a, b) in enumerate(zip(accuracy["gla3"][1:], accuracy["dn1"][1:]), 1):
            run("gla3", a, seed=seed, generation=1)
            run("dn1", b, seed=seed, generation=2)
        store.set_campaign_status(cid, "finished")
    return Recorded(path, name, GPU if with_hardware else "cpu", ids, specs, accuracy, prefill)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The campaign with measured hardware figures, in a module-wide store (written once)."""
    return record_campaign(tmp_path_factory.mktemp("report") / "store.db")


@pytest.fixture(name="record_campaign")
def record_campaign_fixture() -> Callable[..., Recorded]:
    """record_campaign(path, with_hardware=..., name=..., config=...) for tests that need a variant."""
    return record_campaign


# --- the browser -----------------------------------------------------------------------------------

SKIP_ENV = "HYBRIDNAS_SKIP_BROWSER"
REQUIRE_ENV = "HYBRIDNAS_REQUIRE_BROWSER"  # set by .ci/run: there, a missing browser is a failure
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL = "apt-get update && apt-get install -y chromium"


def _find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _why_no_browser() -> str | None:
    """Why the browser checks are skipped here; None when they run (or must, and fail)."""
    if os.environ.get(SKIP_ENV) == "1":
        return f"{SKIP_ENV}=1: headless-browser checks of the report skipped"
    if _find_chromium() is not None or os.environ.get(REQUIRE_ENV) == "1":
        return None
    return (
        f"no Chromium (looked for {', '.join(BROWSERS)}): headless-browser checks of the report skipped; "
        f"scripts/test installs it with apt-get as root or with passwordless sudo, or run `{INSTALL}`"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A skip marker rather than a skip inside the fixture: the summary folds marked skips of one
    # file into one line instead of one per test.
    why = _why_no_browser()
    if why is None:
        return
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and {"browser", "dom"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason=why))


def chromium() -> str:
    """Path of a headless-capable Chromium. Without one the test is skipped (see `_why_no_browser`),
    or fails where HYBRIDNAS_REQUIRE_BROWSER=1 (CI); HYBRIDNAS_SKIP_BROWSER=1 skips it regardless."""
    why = _why_no_browser()
    if why is not None:
        pytest.skip(why)
    path = _find_chromium()
    if path is None:
        pytest.fail(
            f"no Chromium (looked for {', '.join(BROWSERS)}) and {REQUIRE_ENV}=1: the report's browser checks are "
            f"required; scripts/test installs it with apt-get as root or with passwordless sudo, or run `{INSTALL}`",
            pytrace=False,
        )
    return path


def run_chromium(page: Path, profile: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local file with the network resolver disabled: the page must stand alone."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        *args,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def browser() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_chromium(page, profile, *args); skips without Chromium (fails with HYBRIDNAS_REQUIRE_BROWSER=1)."""
    chromium()
    return run_chromium


# --- screenshots -----------------------------------------------------------------------------------

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type -> samples per pixel (RGB, RGBA)


def _paeth_row(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    # Sequential (each byte depends on the decoded one bpp to its left): plain ints are faster than numpy here.
    r, b = raw.tolist(), prev.tolist()
    out = [0] * len(r)
    for i in range(len(r)):
        if i >= bpp:
            a, c = out[i - bpp], b[i - bpp]
        else:
            a = c = 0
        up = b[i]
        pa, pb, pc = abs(up - c), abs(a - c), abs(a + up - 2 * c)
        pred = a if pa <= pb and pa <= pc else (up if pb <= pc else c)
        out[i] = (r[i] + pred) & 0xFF
    return np.array(out, dtype=np.uint8)


def _average_row(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    r, b = raw.tolist(), prev.tolist()
    out = [0] * len(r)
    for i in range(len(r)):
        left = out[i - bpp] if i >= bpp else 0
        out[i] = (r[i] + ((left + b[i]) >> 1)) & 0xFF
    return np.array(out, dtype=np.uint8)


def read_png(path: Path) -> np.ndarray:
    """Pixels as a uint8 array [H, W, C]."""
    data = Path(path).read_bytes()
    if not data.startswith(SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = len(SIGNATURE), [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError(f"{path}: bit depth {depth}, colour type {colour}, interlace {interlace} not supported")
    bpp = CHANNELS[colour]
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    if raw.size != height * (stride + 1):
        raise ValueError(f"{path}: {raw.size} bytes of pixel data, expected {height * (stride + 1)}")
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        f, line = rows[y, 0], rows[y, 1:]
        if f == 0:  # None
            cur = line.copy()
        elif f == 1:  # Sub: running sum per channel, mod 256
            cur = (np.cumsum(line.reshape(width, bpp).astype(np.uint32), axis=0) & 0xFF).astype(np.uint8).reshape(stride)
        elif f == 2:  # Up
            cur = line + prev
        elif f == 3:  # Average
            cur = _average_row(line, prev, bpp)
        elif f == 4:  # Paeth
            cur = _paeth_row(line, prev, bpp)
        else:
            raise ValueError(f"{path}: row {y} has unknown filter type {f}")
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)


@pytest.fixture(name="read_png")
def read_png_fixture() -> Callable[[Path], np.ndarray]:
    return read_png
