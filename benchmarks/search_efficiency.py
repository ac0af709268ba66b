"""How fast each search strategy finds good hybrid designs, replayed on the hybridbench table.

Every campaign is real: the real Controller, a real SQLite store (one file per campaign, in a temp
dir), the strategy by name from STRATEGIES; only training is replaced by `ReplayExecutor`, which
answers each evaluation from benchmarks/hybridbench/hybridbench.json. Capacity 1, so evaluations
happen one after another and "the n-th evaluation" is well defined. Campaign seed s replays the
table's seed s % n_seeds.

Figures, over `--seeds` campaign seeds per strategy (grid is left out: its order is fixed):
  1. evaluations until a top design is first evaluated. The top-1% (top-5%) designs are those whose
     seed-mean accuracy at the top fidelity is among the best ceil(1% (5%) of the designs), ties
     included. Median, IQR, and the ratio of the median to random's (< 1: better than random).
  2. multi-objective, accuracy (max) and cost_state_bytes (min): the 2-D hypervolume of the designs
     evaluated in the first `--mo-budget` evaluations (default 15: the table has 49 designs, so 50
     evaluations would see every one), each scored by its table seed-mean at the top fidelity.
     Axes: accuracy, and 1 - state_bytes / ref where ref = 1.1 x the table's largest state bytes;
     reference point (accuracy 0, state_bytes ref), so a hypervolume is in [0, 1]. Shown also as a
     fraction of the hypervolume of the whole table.
  3. with successive halving (eta 3, 2 rungs: S/3 and S steps), when the campaign file supports it:
     training steps spent until a top design is first evaluated at the top fidelity, against
     random without halving (its evaluations x S).
A single-objective campaign (budget: every design of the table) is stopped as soon as a top-1%
design is evaluated at the top fidelity; a top-5% one comes no later, so both figures come from the
same runs. A campaign that ends without reaching a target counts as never reaching it (infinite
cost), so a median or quartile that lands on one shows as "never".

    python benchmarks/search_efficiency.py                  # 20 seeds, every strategy
    python benchmarks/search_efficiency.py --seeds 3 --strategies random evolution
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridnas.search.campaign import SearchSection, parse_campaign
from hybridnas.search.controller import Controller
from hybridnas.search.strategies import STRATEGIES
from hybridnas.space import ArchSpec
from hybridnas.store import Store
from hybridnas.workers import EvalRequest, EvalResult
from hybridnas.workers.replay import ReplayExecutor, Table
from hybridnas.workers.hardware import cpu_model

DEFAULT_TABLE = Path(__file__).resolve().parent / "hybridbench" / "hybridbench.json"
#: Target levels: the best ceil(fraction x designs) by seed-mean accuracy at the top fidelity (ties included).
TOP_FRACTIONS = {"top-1%": 0.01, "top-5%": 0.05}
HV_REF_SCALE = 1.1  # state-bytes reference point: this times the table's largest state bytes
SH_ETA = 3  # successive halving: promote the best third
SH_STRATEGIES = ("evolution", "tpe")  # the strategies also run with successive halving


@dataclass(frozen=True)
class Evaluated:
    """One finished evaluation of a campaign, in the order it was run."""

    spec_hash: str  # the design
    fidelity: int  # training steps
    status: str  # done | failed | invalid


# --- statistics ------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile that keeps infinities (a censored run) instead of making NaNs."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    frac = pos - lo
    if frac == 0 or xs[lo] == xs[hi]:
        return xs[lo]
    if math.isinf(xs[hi]):
        return math.inf
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by `points` (both coordinates maximized) above the reference point `ref`.

    Sweep by the first coordinate, best first: each point adds the strip between its second
    coordinate and the best second coordinate seen so far.
    """
    pts = sorted(((x, y) for x, y in points if x > ref[0] and y > ref[1]), key=lambda p: (-p[0], -p[1]))
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


# --- campaigns -------------------------------------------------------------------------------------


def campaign_config(table: Table, strategy: str, seed: int, budget: int, *, multi: bool = False,
                    halving: bool = False) -> dict[str, Any]:
    """A campaign file (as a mapping) over the table's space, task and training settings."""
    search: dict[str, Any] = {"strategy": strategy, "budget": budget}
    if halving:
        search["successive_halving"] = {"eta": SH_ETA, "rungs": 2}
    objectives = [{"metric": "accuracy", "direction": "maximize"}]
    if multi:
        objectives.append({"metric": "cost_state_bytes", "direction": "minimize"})
    return {
        "name": f"eff-{strategy}-{seed}{'-mo' if multi else ''}{'-sh' if halving else ''}",
        "seed": seed,
        "task": table.data["task"],
        "space": table.space,
        "training": {**table.train, "steps": max(table.fidelities)},
        "search": search,
        "execution": {"executor": "inprocess", "workers": 1},
        "objectives": objectives,
        "hardware": {"context_len": table.measure["context_len"]},
    }


class StopAtTarget(ReplayExecutor):
    """The replay executor, asking the controller to stop once a target design is done at `fidelity`.

    Finding the target is all the efficiency figures need; stopping there also spares the slow end
    of a campaign that must find the last few unseen designs of the space by proposing.
    """

    def __init__(self, table_path: Path, targets: set[str], fidelity: int) -> None:
        super().__init__(table_path, capacity=1)
        self.targets = targets
        self.fidelity = fidelity
        self.controller: Controller | None = None

    def answer(self, request: EvalRequest) -> EvalResult:
        result = super().answer(request)
        hit = request.steps == self.fidelity and result.ok and self.controller is not None
        if hit and ArchSpec.from_json(request.spec_json).spec_hash in self.targets:
            self.controller.request_stop()  # the loop records this result, then stops
        return result


def run_campaign(table_path: Path, config: dict[str, Any], workdir: Path,
                 stop_at: tuple[set[str], int] | None = None) -> list[Evaluated]:
    """Run one campaign on the replay executor, to its end or until `stop_at` = (targets, fidelity)
    is reached; its finished evaluations in run order."""
    campaign = parse_campaign(config)
    db = workdir / f"{campaign.name}.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        cid = store.create_campaign(campaign.name, campaign.config(), campaign.file.seed)
        if stop_at is None:
            executor: ReplayExecutor = ReplayExecutor(table_path, capacity=1)
        else:
            executor = StopAtTarget(table_path, *stop_at)
        try:
            controller = Controller(store, campaign, cid, executor)
            if isinstance(executor, StopAtTarget):
                executor.controller = controller
            controller.run()
        finally:
            executor.close()
        if executor.refused:
            raise RuntimeError(f"{campaign.name}: {executor.refused} requests the table could not answer")
        evaluations = store.evaluations(cid)
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return [Evaluated(e.spec_hash, e.fidelity, e.status) for e in evaluations if e.status not in ("queued", "running")]


def top_designs(truth: dict[str, float], fraction: float) -> set[str]:
    """Designs whose score is among the best ceil(fraction x n) (ties included, at least one)."""
    k = max(1, math.ceil(fraction * len(truth)))
    cutoff = sorted(truth.values(), reverse=True)[k - 1]
    return {h for h, v in truth.items() if v >= cutoff}


def evals_to_target(run: list[Evaluated], targets: set[str], fidelity: int) -> float:
    """1-based index of the first evaluation of a target design at `fidelity`; inf when none."""
    for i, e in enumerate(run, 1):
        if e.spec_hash in targets and e.fidelity == fidelity:
            return float(i)
    return math.inf


def steps_to_target(run: list[Evaluated], targets: set[str], fidelity: int) -> float:
    """Training steps spent up to and including the first evaluation of a target at `fidelity`."""
    spent = 0
    for e in run:
        spent += e.fidelity
        if e.spec_hash in targets and e.fidelity == fidelity:
            return float(spent)
    return math.inf


# --- the report ------------------------------------------------------------------------------------


def fmt(x: float, digits: int = 0) -> str:
    return "never" if math.isinf(x) else f"{x:.{digits}f}"


def summary(values: list[float], digits: int = 0) -> tuple[float, str, str]:
    """(median, "median", "q1–q3")."""
    med = quantile(values, 0.5)
    return med, fmt(med, digits), f"{fmt(quantile(values, 0.25), digits)}–{fmt(quantile(values, 0.75), digits)}"


def machine() -> str:
    return f"{socket.gethostname()}, {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--seeds", type=int, default=20, help="campaign seeds per strategy (0, 1, ...)")
    ap.add_argument("--strategies", nargs="+", default=None, help="default: every strategy in STRATEGIES but grid")
    ap.add_argument("--mo-budget", type=int, default=15, help="evaluations before the hypervolume is taken")
    args = ap.parse_args(argv)

    table = Table.load(args.table)
    top = max(table.fidelities)
    strategies = args.strategies or [s for s in STRATEGIES if s != "grid"]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        print(f"--strategies: {unknown[0]!r} is not allowed; allowed: {', '.join(STRATEGIES)}", file=sys.stderr)
        return 2
    n_designs = len(table.designs)
    truth = table.mean("accuracy", top)
    levels = {name: top_designs(truth, frac) for name, frac in TOP_FRACTIONS.items()}
    targets = levels["top-1%"]  # a single-objective campaign stops once one of these is evaluated at `top`
    state = table.mean("cost_state_bytes", top)
    ref_bytes = HV_REF_SCALE * max(state.values())
    point = {h: (truth[h], 1.0 - state[h] / ref_bytes) for h in truth}
    hv_all = hypervolume_2d(list(point.values()))
    seeds = list(range(args.seeds))

    given = argv if argv is not None else sys.argv[1:]
    print(f"command: python benchmarks/search_efficiency.py {' '.join(given)}".rstrip())
    print(f"machine: {machine()}")
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"table: {args.table.name}: {n_designs} designs, fidelities {table.fidelities}, seeds {table.seeds}")
    for name, hs in levels.items():
        print(f"{name}: {len(hs)} design(s), seed-mean accuracy >= {min(truth[h] for h in hs):.3f} at {top} steps")
    print(f"campaign seeds: {seeds[0]}..{seeds[-1]}; single-objective budget {n_designs} (every design), "
          f"multi-objective budget {args.mo_budget}; capacity 1\n")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hybridnas-eff-") as tmp:
        work = Path(tmp)
        so: dict[str, list[list[Evaluated]]] = {}
        hv: dict[str, list[float]] = {}
        for s in strategies:
            so[s] = [run_campaign(args.table, campaign_config(table, s, seed, n_designs), work, (targets, top))
                     for seed in seeds]
            hv[s] = []
            for seed in seeds:
                run = run_campaign(args.table, campaign_config(table, s, seed, args.mo_budget, multi=True), work)
                found = {e.spec_hash for e in run if e.status == "done"}
                hv[s].append(hypervolume_2d([point[h] for h in found]))
            print(f"  {s}: done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)

        def row(name: str, per_level: dict[str, list[float]], base: dict[str, float]) -> str:
            cells = []
            for level, values in per_level.items():
                med, m, iqr = summary(values)
                found = sum(not math.isinf(v) for v in values)
                cells.append(f"{m} | {iqr} | {found}/{len(values)} | {med / base[level]:.2f}")
            return f"| {name} | " + " | ".join(cells) + " |"

        head = " | ".join(f"{lv}: median | IQR | found | / random" for lv in levels)
        print(f"### Evaluations until a top design is first evaluated ({args.seeds} seeds)\n")
        print(f"| strategy | {head} |")
        print("|---|" + "---|" * 4 * len(levels))
        evals = {s: {lv: [evals_to_target(r, hs, top) for r in so[s]] for lv, hs in levels.items()}
                 for s in strategies}
        base = {lv: quantile(evals["random"][lv], 0.5) if "random" in evals else math.nan for lv in levels}
        for s in strategies:
            print(row(s, evals[s], base))
        expected = ", ".join(f"{lv} {(n_designs + 1) / (len(hs) + 1):.1f}" for lv, hs in levels.items())
        print(f"\nRandom sampling without repeats needs on average: {expected} evaluations.\n")

        print(f"### Hypervolume after {args.mo_budget} evaluations: accuracy (max), cost_state_bytes (min)\n")
        print(f"Reference point: accuracy 0, state bytes {ref_bytes:.0f} (1.1 x the largest); "
              f"whole-table hypervolume {hv_all:.4f}.\n")
        print("| strategy | median HV | IQR | median / whole table |")
        print("|---|---|---|---|")
        for s in strategies:
            med, m, iqr = summary(hv[s], 4)
            print(f"| {s} | {m} | {iqr} | {med / hv_all:.3f} |")

        print(f"\n### Successive halving (eta {SH_ETA}, rungs {table.fidelities}): training steps until a "
              f"top design is first evaluated at {top} steps ({args.seeds} seeds)\n")
        if "successive_halving" not in SearchSection.model_fields:
            print("skipped: the campaign file has no search.successive_halving option")
        elif "random" not in strategies:
            print("skipped: needs random (without halving) as the baseline")
        else:
            steps = {f"{s} (no halving)": {lv: [v * top for v in evals[s][lv]] for lv in levels}
                     for s in strategies if s == "random" or s in SH_STRATEGIES}
            for s in SH_STRATEGIES:
                if s not in strategies:
                    continue
                runs = [run_campaign(args.table, campaign_config(table, s, seed, n_designs, halving=True), work,
                                     (targets, top)) for seed in seeds]
                steps[f"{s} + halving"] = {lv: [steps_to_target(r, hs, top) for r in runs] for lv, hs in levels.items()}
            base_steps = {lv: quantile(steps["random (no halving)"][lv], 0.5) for lv in levels}
            print(f"| strategy | {head} |")
            print("|---|" + "---|" * 4 * len(levels))
            for name, per_level in steps.items():
                print(row(name, per_level, base_steps))
    print(f"\nwall time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
