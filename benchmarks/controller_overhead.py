"""The controller's own cost per evaluation: propose, record, bookkeeping, with training taken away.

A campaign over a per-layer space of 4 layers (10 mixers x 3 gates x 2 short-conv choices per layer:
60^4, about 13 million designs) runs to 1,000 evaluations on a SQLite file store, with an executor
defined here that answers every request at once with synthetic metrics (a fixed function of the
design's hash). What is timed is everything else: the strategy's proposal, the duplicate check,
the store writes (candidate, lineage, evaluation queued, running, finished), the strategy's
observation and the controller's promotion and stop checks. Capacity 1, so the time between two
consecutive results is the cost of one evaluation's round trip through the controller. The target
(under 20 ms) is judged on the wall-clock median of the last 100 evaluations.

    python benchmarks/controller_overhead.py                       # random and evolution
    python benchmarks/controller_overhead.py --strategies tpe --evaluations 300
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hybridnas.search.campaign import parse_campaign
from hybridnas.search.controller import Controller, Event
from hybridnas.search.strategies import STRATEGIES
from hybridnas.space import ArchSpec
from hybridnas.store import Store
from hybridnas.workers import EvalResult
from hybridnas.workers.executor import QueueExecutor
from hybridnas.workers.hardware import cpu_model

TARGET_MS = 20.0  # per-evaluation controller cost the project aims to stay under
TAIL = 100  # the window before the last evaluation whose median is reported

SPACE = {
    "d_model": [64],
    "n_layers": [4],
    "n_heads": [2],
    "layers": {
        "mixer": ["attention", "swa", "linear_attn", "retnet", "gla", "mamba2", "hgrn2", "deltanet",
                  "gated_deltanet", "short_conv"],
        "gate": ["none", "sigmoid", "swish"],
        "short_conv": [False, True],
    },
}


class SyntheticExecutor(QueueExecutor):
    """Answers each request at once: accuracy and costs are fixed functions of the design's hash."""

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self._host = socket.gethostname()

    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        out = []
        while self._queue:
            r = self._queue.popleft()
            h = int(ArchSpec.from_json(r.spec_json).spec_hash[:8], 16)
            metrics = {
                "accuracy": (h % 10_007) / 10_007,
                "loss": 1.0 + (h % 101) / 100,
                "params": float(100_000 + h % 50_000),
                "cost_state_bytes": float(4_096 * (1 + h % 64)),
                "steps": float(r.steps),
            }
            out.append(EvalResult(r.evaluation_id, "done", metrics, None, self._host, "synthetic", 0.0))
        return out


def measure(strategy: str, evaluations: int, workdir: Path) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds between consecutive results of one campaign, in order (evaluations - 1 each).

    CPU time (this process) is the steadier figure on a shared machine: waiting for a core is not in it.
    """
    campaign = parse_campaign({
        "name": f"overhead-{strategy}",
        "seed": 0,
        "task": {"name": "mqar", "vocab_size": 32, "seq_len": 32, "num_kv_pairs": 4},
        "space": SPACE,
        "training": {"steps": 100},
        "search": {"strategy": strategy, "budget": evaluations},
        "execution": {"executor": "inprocess", "workers": 1},
    })
    stamps: list[tuple[float, float]] = []

    def on_event(e: Event) -> None:
        if e.kind in ("done", "failed", "invalid"):
            stamps.append((time.perf_counter(), time.process_time()))

    store = Store.open(f"sqlite:///{workdir / f'{strategy}.db'}")
    try:
        cid = store.create_campaign(campaign.name, campaign.config(), campaign.file.seed)
        summary = Controller(store, campaign, cid, SyntheticExecutor(), on_event).run()
    finally:
        store.close()
    if summary.evaluated != evaluations:
        raise RuntimeError(f"{strategy}: {summary.evaluated} evaluations finished, expected {evaluations}")
    wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="+", default=["random", "evolution"])
    ap.add_argument("--evaluations", type=int, default=1000)
    args = ap.parse_args(argv)
    unknown = [s for s in args.strategies if s not in STRATEGIES or s == "grid"]
    if unknown:
        allowed = ", ".join(s for s in STRATEGIES if s != "grid")
        print(f"--strategies: {unknown[0]!r} is not allowed; allowed: {allowed}", file=sys.stderr)
        return 2

    cpu = cpu_model()
    given = argv if argv is not None else sys.argv[1:]
    print(f"command: python benchmarks/controller_overhead.py {' '.join(given)}".rstrip())
    print(f"machine: {socket.gethostname()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"space: per-layer, 4 layers x 60 choices per layer; store: SQLite file; capacity 1; "
          f"{args.evaluations} evaluations\n")
    last = f"evaluations {args.evaluations - TAIL + 1}–{args.evaluations}"
    print(f"| strategy | median ms, {last} | median ms, all | p90 ms, all | CPU ms, median of {last} | "
          f"campaign s | under {TARGET_MS:.0f} ms |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="hybridnas-overhead-") as tmp:
        for s in args.strategies:
            t0 = time.perf_counter()
            wall, cpu = measure(s, args.evaluations, Path(tmp))
            took = time.perf_counter() - t0
            gaps = [1000 * g for g in wall]
            tail = statistics.median(gaps[-TAIL:])
            every = statistics.median(gaps)
            p90 = statistics.quantiles(gaps, n=10)[-1]
            cpu_tail = statistics.median(1000 * c for c in cpu[-TAIL:])
            ok = "yes" if tail < TARGET_MS else "no"
            print(f"| {s} | {tail:.2f} | {every:.2f} | {p90:.2f} | {cpu_tail:.2f} | {took:.1f} | {ok} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
