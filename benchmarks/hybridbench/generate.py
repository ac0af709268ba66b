"""Generate hybridbench: every design of a small hybrid space, trained for real on MQAR.

Each distinct design (`SearchSpace.designs()`) is evaluated with `hybridnas.workers.evaluate` at two
fidelities, S/3 and S training steps (so successive halving with eta 3 can be replayed), for each
seed. Results are written after every evaluation (atomically), and a run that finds the output file
already there skips what it holds, so an interrupted generation resumes where it stopped.

    nice -n 10 python benchmarks/hybridbench/generate.py            # the committed table
    python benchmarks/hybridbench/generate.py --limit 2 --out /tmp/t.json   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hybridnas.space import SpaceFile
from hybridnas.workers.evaluate import EvalRequest, evaluate
from hybridnas.workers.hardware import MeasureConfig, cpu_model
from hybridnas.workers.replay import (
    TABLE_FORMAT,
    TABLE_VERSION,
    normalize_task,
    normalize_train,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "hybridbench.json"
COMMAND = "nice -n 10 python benchmarks/hybridbench/generate.py"

#: 4 layers, d_model 64, 2 heads; 4 linear mixers x ratio x placement x gate, attention as the full
#: mixer and the short conv on q/k/v always on. 96 gene combinations, 49 distinct networks (ratio 0
#: is all attention whatever the other genes; all_linear ignores placement; ratio 3 'interleaved'
#: is the same stack as 'last').
SPACE: dict[str, Any] = {
    "d_model": [64],
    "n_layers": [4],
    "n_heads": [2],
    "mlp": ["swiglu"],
    "hybrid": {
        "ratio": [0, 1, 3, "all_linear"],
        "placement": ["interleaved", "first", "last"],
        "linear_mixer": ["linear_attn", "gla", "mamba2", "gated_deltanet"],
        "full_mixer": ["attention"],
        "gate": ["none", "swish"],
        "short_conv": [True],
    },
}
#: MQAR with 4 pairs in 32 tokens: at 150 steps of batch 64 some designs solve it and most sit on a
#: plateau near 0.28 (the nearest query only), so the accuracies spread.
TASK: dict[str, Any] = {
    "name": "mqar",
    "vocab_size": 32,
    "seq_len": 32,
    "num_kv_pairs": 4,
    "num_train": 4000,
    "num_test": 500,
}
TRAIN: dict[str, Any] = {"batch_size": 64, "lr": 0.005}  # the rest: TrainConfig defaults
FIDELITY = 150  # S: the top fidelity in training steps; the low one is S // 3
SEEDS = (0, 1)  # every design at every fidelity for each seed


def machine() -> dict[str, Any]:
    """Where the table was made: host, CPU model, torch, threads."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def fresh_table(fidelities: tuple[int, ...], seeds: tuple[int, ...]) -> dict[str, Any]:
    space = SpaceFile.model_validate(SPACE).build(vocab_size=TASK["vocab_size"])
    designs = space.designs()
    return {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "description": "Every design of a 4-layer hybrid space trained on MQAR at two fidelities and several seeds.",
        "command": COMMAND,
        "space": SPACE,
        "task": normalize_task(TASK),
        "train": {**TRAIN},
        "train_normalized": normalize_train(TRAIN),
        "measure": dataclasses.asdict(MeasureConfig()),  # replay compares its context_len
        "fidelities": list(fidelities),
        "seeds": list(seeds),
        "machine": machine(),
        "started": now(),
        "finished": None,
        "complete": False,
        "cpu_time_s": 0.0,
        "designs": {d.spec_hash: {"label": d.describe(), "spec_json": d.to_json()} for d in designs},
        "records": [],
    }


def write(table: dict[str, Any], path: Path) -> None:
    """Atomic write: a kill mid-write leaves the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=None, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two paired lists (Pearson correlation of their ranks)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def summarize(path: Path, top_n: int = 10) -> str:
    """A markdown summary of a table: run facts, spread, best designs, fidelity agreement, seed noise."""
    from hybridnas.workers.replay import Table

    t = Table.load(path)
    lo, hi = t.fidelities
    labels = {h: d["label"] for h, d in t.data["designs"].items()}
    mean_hi, mean_lo = t.mean("accuracy", hi), t.mean("accuracy", lo)
    state = t.mean("cost_state_bytes", hi)
    recs = list(t.records.values())
    failed = sum(r.status != "done" for r in recs)
    m = t.data["machine"]
    wall = sum(r.wall_time_s for r in recs)
    lines = [
        f"- {len(t.designs)} designs x fidelities {lo} and {hi} steps x seeds {list(t.seeds)}: "
        f"{len(recs)} evaluations, {failed} not done; complete: {t.data['complete']}",
        f"- generation: {t.data['cpu_time_s'] / 60:.1f} min of CPU time in one process with one torch thread "
        f"({wall / 60:.1f} min of evaluation wall time on a shared machine); "
        f"{t.data['started']} to {t.data['finished']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}",
    ]
    for f, means in ((lo, mean_lo), (hi, mean_hi)):
        q = statistics.quantiles(sorted(means.values()), n=4)
        lines.append(f"- seed-mean accuracy at {f} steps: min {min(means.values()):.3f}, quartiles "
                     f"{q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}, max {max(means.values()):.3f}")
    both = sorted(set(mean_hi) & set(mean_lo))
    rho = spearman([mean_lo[h] for h in both], [mean_hi[h] for h in both])
    lines.append(f"- rank agreement of {lo}-step and {hi}-step means (Spearman): {rho:.2f}")
    gaps = []
    for h in t.designs:
        vals = [t.records[(h, hi, s)].metrics["accuracy"] for s in t.seeds
                if (h, hi, s) in t.records and t.records[(h, hi, s)].status == "done"]
        if len(vals) >= 2:
            gaps.append(max(vals) - min(vals))
    if gaps:
        lines.append(f"- seed noise at {hi} steps: median spread across seeds {statistics.median(gaps):.3f}, "
                     f"largest {max(gaps):.3f}")
    lines += ["", f"Best {top_n} designs by seed-mean accuracy at {hi} steps:", "",
              f"| # | design | acc @{hi} (per seed) | acc @{lo} | state bytes @{t.measure['context_len']} |",
              "|---|---|---|---|---|"]
    best = sorted(mean_hi, key=lambda h: -mean_hi[h])[:top_n]
    for i, h in enumerate(best, 1):
        per = " / ".join(f"{t.records[(h, hi, s)].metrics.get('accuracy', float('nan')):.3f}"
                         for s in t.seeds if (h, hi, s) in t.records)
        lines.append(f"| {i} | {labels[h]} | {mean_hi[h]:.3f} ({per}) | {mean_lo.get(h, float('nan')):.3f} | "
                     f"{state.get(h, float('nan')):.0f} |")
    lines += ["", f"Seed-mean accuracy at {hi} steps by gene (mean over the designs with that value / best):", ""]
    genes: dict[str, dict[str, list[float]]] = {}
    for h, acc in mean_hi.items():
        hyb = json.loads(t.designs[h]).get("hybrid") or {}
        pattern = "".join("A" if layer["mixer"] in ("attention", "swa") else "L"
                          for layer in json.loads(t.designs[h])["layers"])
        for gene, value in (("linear mixer", hyb.get("linear_mixer")), ("pattern", pattern),
                            ("gate", hyb.get("gate"))):
            if gene != "pattern" and pattern == "AAAA":
                continue  # all attention: linear mixer and gate do not exist in the network
            genes.setdefault(gene, {}).setdefault(str(value), []).append(acc)
    for gene, by in genes.items():
        cells = ", ".join(f"{v} {statistics.fmean(a):.3f} / {max(a):.3f}" for v, a in sorted(by.items()))
        lines.append(f"- {gene}: {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="table file (resumed when it exists)")
    ap.add_argument("--steps", type=int, default=FIDELITY, help="top fidelity S; the low one is S // 3")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--limit", type=int, default=None, help="stop after this many new evaluations")
    ap.add_argument("--summary", action="store_true", help="print a markdown summary of --out and exit")
    args = ap.parse_args(argv)
    if args.summary:
        print(summarize(args.out))
        return 0

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    fidelities = (args.steps // 3, args.steps)
    seeds = tuple(args.seeds)
    if args.out.exists():
        table = json.loads(args.out.read_text())
        for key, want in (("fidelities", list(fidelities)), ("seeds", list(seeds)), ("space", SPACE),
                          ("task", normalize_task(TASK)), ("train", TRAIN)):
            if table.get(key) != want:
                print(f"{args.out}: {key} differs from this run's ({table.get(key)!r} vs {want!r}); "
                      "use another --out", file=sys.stderr)
                return 2
        print(f"resuming {args.out}: {len(table['records'])} evaluations recorded", flush=True)
    else:
        table = fresh_table(fidelities, seeds)
    done = {(r["spec_hash"], r["fidelity"], r["seed"]) for r in table["records"]}
    jobs = [(h, f, s) for s in seeds for f in fidelities for h in table["designs"] if (h, f, s) not in done]
    total = len(table["designs"]) * len(fidelities) * len(seeds)
    print(f"{len(table['designs'])} designs x {len(fidelities)} fidelities {fidelities} x {len(seeds)} seeds "
          f"= {total} evaluations, {len(jobs)} to run", flush=True)

    for i, (h, fidelity, seed) in enumerate(jobs[: args.limit]):
        design = table["designs"][h]
        request = EvalRequest(
            evaluation_id=len(table["records"]),
            spec_json=design["spec_json"],
            task=TASK,
            train=TRAIN,
            steps=fidelity,
            seed=seed,
        )
        c0 = time.process_time()
        result = evaluate(request, "cpu")
        cpu = time.process_time() - c0
        table["records"].append({
            "spec_hash": h,
            "fidelity": fidelity,
            "seed": seed,
            "status": result.status,
            "metrics": result.metrics,
            "error": result.error,
            "wall_time_s": round(result.wall_time_s, 3),
            "cpu_time_s": round(cpu, 3),
            "device": result.device,
        })
        table["cpu_time_s"] = round(table["cpu_time_s"] + cpu, 3)
        table["complete"] = len(table["records"]) == total
        if table["complete"]:
            table["finished"] = now()
        write(table, args.out)
        acc = result.metrics.get("accuracy")
        shown = f"acc={acc:.3f}" if acc is not None else f"{result.status}: {result.error}"
        print(f"[{len(table['records'])}/{total}] steps={fidelity} seed={seed} {design['label']:<40} {shown} "
              f"cpu={cpu:.1f}s total_cpu={table['cpu_time_s'] / 60:.1f}min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
