"""Known results: do hybridnas's scores reproduce the orderings the literature agrees on, at CPU scale?

Each check is a claim from a paper, a grid campaign (or a few, one per task setting) over the designs
that test it, run through the campaign machinery (`hybridnas.run_campaign`: the real controller,
workers, store, the learning-rate sweep on a validation split, the early-stopping target), with three
seeds per design (`search.reevaluate`), and a verdict. Every design is scored by its test accuracy;
a design's figure is the mean, standard deviation, minimum and maximum over its seeds.

  attention_solves_mqar   Zoology (Arora et al. 2023): softmax attention solves multi-query
                          associative recall; two layers suffice. Verdict: every seed >= 0.99.
  gated_delta_ge_delta    Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025): the gated delta rule is at
                          least as good as the plain delta rule. Verdict: mean(gated) >= mean(delta)
                          - (std(gated) + std(delta)).
  state_size_effect       Zoology / DeltaNet (Yang et al. 2024): at a fixed state size, recall falls as
                          the number of key-value pairs grows, and the delta rule falls more slowly
                          than linear attention. The state is made small (8 key rows per head) so
                          that 16 pairs exceed it. At this scale it does not hold at 16 pairs within
                          the step cap: there the delta rule leaves MQAR's plateau later, and given
                          twice the steps the two tie (BENCHMARKS.md). Verdict: the delta rule is at
                          least as accurate as linear attention at every count (within the spread)
                          and above it by more than the spread at the most pairs. (Levels, not drops: within the
                          step cap a mixer near chance at few pairs has nothing left to lose.)
  denser_attention        "A Systematic Analysis of Hybrid Linear Attention" (2025), Jamba, Samba:
                          recall improves as full attention gets denser (linear layers with a small
                          state, so that recall needs attention). Verdict: along pure linear, 3:1,
                          1:1, all attention, no step down beyond the spread, and the densest above
                          the sparsest by more than it. At this scale the means follow the order but
                          the spread is too large for the last part: 4 layers hold more key rows
                          between them than there are pairs (BENCHMARKS.md).
  mad_recall_hybrids      MAD (Poli et al. 2024) and the hybrid studies: on in-context recall a hybrid
                          with one attention layer is at least as good as the pure linear stack of
                          the same mixer. Verdict: for every mixer, hybrid >= pure - spread.

    python benchmarks/known_results.py                       # every check, 3 seeds, Ray with 2 workers
    python benchmarks/known_results.py --checks attention_solves_mqar --executor inprocess
    python benchmarks/known_results.py --fast                # the CI subset: init parity + one check, 1 seed

The store of every campaign is kept (`--store-dir`, default a temp dir), so a run can be inspected
with `hybridnas query leaderboard <check> --store sqlite:///<dir>/<check>.db`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEEDS = 3  # per design: the campaign seed and two more from search.reevaluate
MQAR8 = {"name": "mqar", "vocab_size": 64, "seq_len": 32, "num_kv_pairs": 8, "num_train": 6000, "num_test": 500}
#: The protocol every check trains with: a learning-rate sweep chosen on validation, stop at 0.99.
PROTOCOL = {
    "batch_size": 64,
    "lr": [1e-3, 3e-3, 1e-2],
    "val_fraction": 0.1,
    "target": {"metric": "accuracy", "value": 0.99},
    "eval_every": 50,
}
MODEL = {"d_model": [64], "n_heads": [2], "mlp": ["swiglu"]}
FAST_LR = [3e-3]


@dataclass(frozen=True)
class Figure:
    """One design's test accuracy over its seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def __str__(self) -> str:
        if not self.values:
            return "no result"
        lo, hi = min(self.values), max(self.values)
        return f"{self.mean:.3f} ± {self.std:.3f} [{lo:.3f}–{hi:.3f}] n={len(self.values)}"


#: (campaign tag, design key) -> figure. A design key is "<linear mixer>:<pattern>", e.g. "gla:LLLA".
Results = dict[tuple[str, str], Figure]


@dataclass(frozen=True)
class Verdict:
    agrees: bool
    measured: str  # what was measured, in a line or a few


@dataclass(frozen=True)
class Check:
    key: str
    claim: str  # the published ordering and its source
    expected: str  # what agreement looks like here
    campaigns: tuple[tuple[str, dict[str, Any]], ...]  # (tag, campaign config)
    verdict: Callable[[Results], Verdict]
    fast: bool = False  # part of the CI subset


def _campaign(
    name: str, task: dict[str, Any], space: dict[str, Any], steps: int, seeds: int, designs: int, lrs: list[float]
) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "task": task,
        "space": {**MODEL, **space},
        "training": {**PROTOCOL, "lr": lrs, "steps": steps},
        "search": {"strategy": "grid", "budget": designs, **({"reevaluate": {"top_k": designs, "seeds": seeds - 1}} if seeds > 1 else {})},
        "execution": {"executor": "ray", "workers": 2, "timeout_s": 3600},
        "hardware": {"context_len": 64, "repeats": 1, "decode_tokens": 4},
    }


def _ge(a: Figure, b: Figure) -> bool:
    """a is at least b, within the seed spread."""
    return a.mean >= b.mean - (a.std + b.std)


def _gt(a: Figure, b: Figure) -> bool:
    """a beats b by more than the seed spread."""
    return a.mean - b.mean > a.std + b.std


def _lines(results: Results, keys: list[tuple[str, str]]) -> str:
    return "\n".join(f"{tag} {design}: {results.get((tag, design), Figure(()))}" for tag, design in keys)


# --- the checks -----------------------------------------------------------------------------------


def attention_solves_mqar(seeds: int, lrs: list[float]) -> Check:
    space = {"n_layers": [2], "hybrid": {"ratio": [0], "full_short_conv": [False]}}
    key = ("mqar8", "attention:AA")

    def verdict(r: Results) -> Verdict:
        f = r.get(key, Figure(()))
        return Verdict(bool(f.values) and min(f.values) >= 0.99, _lines(r, [key]))

    return Check(
        "attention_solves_mqar",
        "Zoology: two layers of softmax attention solve multi-query associative recall",
        "2-layer attention (no short conv), 8-pair MQAR: test accuracy >= 0.99 on every seed",
        (("mqar8", _campaign("attention_solves_mqar", MQAR8, space, 2000, seeds, 1, lrs)),),
        verdict,
        fast=True,
    )


#: 2 layers, d_model 64, 2 heads; more and more pairs to recall in a fixed state.
PAIRS = (4, 8, 16)
PAIR_MIXERS = ("linear_attn", "deltanet", "gated_deltanet")
#: The small state of the state-size check: 8 key rows per head (expand_k 0.25), fewer than 16 pairs.
SMALL_EXPAND_K = 0.25


def _pairs_campaigns(
    seeds: int, lrs: list[float], expand_k: float = 1.0, mixers: tuple[str, ...] = PAIR_MIXERS
) -> tuple[tuple[str, dict[str, Any]], ...]:
    space = {
        "n_layers": [2],
        "expand_k": [expand_k],
        "hybrid": {"ratio": ["all_linear"], "linear_mixer": list(mixers), "short_conv": [True]},
    }
    tag = "pairs" if expand_k == 1.0 else "small-pairs"
    out = []
    for n in PAIRS:
        task = {"name": "mqar", "vocab_size": 128, "seq_len": 64, "num_kv_pairs": n, "num_train": 6000, "num_test": 500}
        out.append((f"{tag}{n}", _campaign(f"mqar-{tag}{n}", task, space, 600, seeds, len(mixers), lrs)))
    return tuple(out)


def gated_delta_ge_delta(seeds: int, lrs: list[float]) -> Check:
    keys = [(f"pairs{n}", f"{m}:LL") for n in PAIRS for m in ("deltanet", "gated_deltanet")]

    def verdict(r: Results) -> Verdict:
        ok = all(_ge(r[(f"pairs{n}", "gated_deltanet:LL")], r[(f"pairs{n}", "deltanet:LL")]) for n in PAIRS)
        return Verdict(ok, _lines(r, keys))

    return Check(
        "gated_delta_ge_delta",
        "Gated DeltaNet: the gated delta rule is at least as good as the delta rule",
        "2-layer pure stacks with short conv on MQAR with 4, 8, 16 pairs: mean(gated) >= mean(delta) - spread at each",
        _pairs_campaigns(seeds, lrs),
        verdict,
    )


def state_size_effect(seeds: int, lrs: list[float]) -> Check:
    keys = [(f"small-pairs{n}", f"{m}:LL") for m in ("linear_attn", "deltanet") for n in PAIRS]

    def verdict(r: Results) -> Verdict:
        lin = [r[(f"small-pairs{n}", "linear_attn:LL")] for n in PAIRS]
        delta = [r[(f"small-pairs{n}", "deltanet:LL")] for n in PAIRS]
        # Compared by level, not by drop: within the step cap a mixer already near chance at few pairs
        # has nothing left to lose, so the smaller drop could be the worse mixer's.
        ok = all(_ge(d, a) for d, a in zip(delta, lin)) and _gt(delta[-1], lin[-1])
        drops = (
            f"drop from {PAIRS[0]} to {PAIRS[-1]} pairs: linear attention {lin[0].mean - lin[-1].mean:.3f}, "
            f"delta rule {delta[0].mean - delta[-1].mean:.3f}"
        )
        return Verdict(ok, _lines(r, keys) + "\n" + drops)

    return Check(
        "state_size_effect",
        "Zoology, DeltaNet: at a fixed state size recall falls as pairs grow, the delta rule more slowly than linear attention",
        f"2-layer stacks whose state holds 8 key rows per head (expand_k {SMALL_EXPAND_K}), 4 to 16 pairs: the delta rule "
        "at least as accurate as linear attention at every count, and above it by more than the spread at 16",
        _pairs_campaigns(seeds, lrs, SMALL_EXPAND_K, ("linear_attn", "deltanet")),  # the two the verdict compares
        verdict,
    )


#: Sparsest to densest attention in a 4-layer stack (linear mixer: linear attention).
DENSITY = (("all_linear", "LLLL"), (3, "LLLA"), (1, "LALA"), (0, "AAAA"))


def denser_attention(seeds: int, lrs: list[float]) -> Check:
    space = {
        "n_layers": [4],
        "expand_k": [0.125],  # 4 key rows per head: 8 pairs do not fit a linear layer's state
        "hybrid": {"ratio": [r for r, _ in DENSITY], "linear_mixer": ["linear_attn"], "short_conv": [True], "full_short_conv": [True]},
    }
    keys = [("mqar8", f"{'linear_attn' if 'L' in p else 'attention'}:{p}") for _, p in DENSITY]

    def verdict(r: Results) -> Verdict:
        figs = [r[k] for k in keys]
        no_step_down = all(_ge(b, a) for a, b in zip(figs, figs[1:]))
        return Verdict(no_step_down and _gt(figs[-1], figs[0]), _lines(r, keys))

    return Check(
        "denser_attention",
        "Hybrid-ratio studies (Systematic Analysis of Hybrid Linear Attention; Jamba; Samba): denser attention recalls better",
        "4 layers, linear attention with a small state (expand_k 0.125) + softmax attention, 8-pair MQAR: pure linear "
        "<= 3:1 <= 1:1 <= all attention (within the spread), all attention above pure linear",
        (("mqar8", _campaign("denser-attention", MQAR8, space, 600, seeds, len(DENSITY), lrs)),),
        verdict,
    )


MAD_MIXERS = ("linear_attn", "mamba2")


def mad_recall_hybrids(seeds: int, lrs: list[float]) -> Check:
    space = {
        "n_layers": [4],
        "hybrid": {"ratio": ["all_linear", 3], "linear_mixer": list(MAD_MIXERS), "short_conv": [True], "full_short_conv": [True]},
    }
    keys = [("icr", f"{m}:{p}") for m in MAD_MIXERS for p in ("LLLL", "LLLA")]

    def verdict(r: Results) -> Verdict:
        return Verdict(all(_ge(r[("icr", f"{m}:LLLA")], r[("icr", f"{m}:LLLL")]) for m in MAD_MIXERS), _lines(r, keys))

    return Check(
        "mad_recall_hybrids",
        "MAD and the hybrid studies: on in-context recall a hybrid is at least as good as the pure linear stack",
        "MAD in-context recall, 4 layers: for linear attention and Mamba-2, LLLA >= LLLL within the spread",
        (("icr", _campaign("mad-icr", {"name": "in_context_recall"}, space, 600, seeds, 2 * len(MAD_MIXERS), lrs)),),
        verdict,
    )


CHECKS: dict[str, Callable[[int, list[float]], Check]] = {
    "attention_solves_mqar": attention_solves_mqar,
    "gated_delta_ge_delta": gated_delta_ge_delta,
    "state_size_effect": state_size_effect,
    "denser_attention": denser_attention,
    "mad_recall_hybrids": mad_recall_hybrids,
}


# --- running ----------------------------------------------------------------------------------------


def _design_key(spec: Any) -> str:
    genes = spec.hybrid
    linear = genes.linear_mixer if genes is not None and "L" in spec.pattern else spec.mixers[0]
    return f"{linear}:{spec.pattern}"


def run_check(check: Check, store_dir: Path, executor: str | None) -> tuple[Results, float]:
    """Run the check's campaigns (one already run, by this check or another, is read back); (its
    results, wall seconds)."""
    import hybridnas

    results: Results = {}
    t0 = time.perf_counter()
    for tag, config in check.campaigns:
        name = config["name"]
        url = f"sqlite:///{store_dir / (name + '.db')}"
        with hybridnas.run_campaign(config, store=url, executor=executor, resume=True) as run:
            per_design: dict[str, dict[int, float]] = {}
            for e in run.store.evaluations(run.id):
                if e.status == "done" and e.fidelity == config["training"]["steps"]:
                    per_design.setdefault(_design_key(e.spec), {})[e.seed] = float(e.metrics["accuracy"])
        for design, by_seed in per_design.items():
            results[(tag, design)] = Figure(tuple(by_seed[s] for s in sorted(by_seed)))
    return results, time.perf_counter() - t0


def init_parity() -> Verdict:
    """Every mixer, with every gate and conv choice, starts writing no more than the embedding carries."""
    import itertools

    import torch

    from hybridnas.mixers import REGISTRY
    from hybridnas.space import ArchSpec, LayerSpec
    from hybridnas.space.cost import build_lm
    from hybridnas.workers.checks import MAX_INIT_WRITE, residual_writes

    torch.set_num_threads(1)
    worst: dict[str, float] = {}
    for name, entry in REGISTRY.items():
        convs = (False, True) if "short_conv" in entry.options else (False,)
        for gate, conv in itertools.product(("none", "sigmoid", "swish"), convs):
            spec = ArchSpec(d_model=64, layers=(LayerSpec(name, n_heads=2, gate=gate, short_conv=conv),) * 4, vocab_size=64)
            torch.manual_seed(0)
            worst[name] = max(worst.get(name, 0.0), *residual_writes(build_lm(spec), 64, seq_len=32))
    line = ", ".join(f"{k} {v:.2f}" for k, v in worst.items())
    return Verdict(max(worst.values()) <= MAX_INIT_WRITE, f"largest block write / embedding RMS: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", nargs="+", choices=list(CHECKS), default=None, help="default: all")
    ap.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per design [{SEEDS}]")
    ap.add_argument("--executor", choices=("ray", "inprocess"), default=None, help="default: ray with 2 workers")
    ap.add_argument("--store-dir", type=Path, default=None, help="keep the campaigns' stores here [a temp dir]")
    ap.add_argument("--fast", action="store_true", help="init parity and the fast checks, one seed, one learning rate")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    seeds = 1 if args.fast else args.seeds
    # The fast subset trains at the one rate the full sweep keeps for it, to stay near a minute.
    lrs = FAST_LR if args.fast else PROTOCOL["lr"]
    names = [k for k, make in CHECKS.items() if make(1, lrs).fast] if args.fast else (args.checks or list(CHECKS))
    store_dir = args.store_dir or Path(tempfile.mkdtemp(prefix="known-results-"))
    store_dir.mkdir(parents=True, exist_ok=True)
    import torch

    from hybridnas.workers.hardware import cpu_model

    print(f"# known results — {dt.date.today()} — {cpu_model()}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"# seeds per design: {seeds}; stores in {store_dir}")
    report: list[dict[str, Any]] = []
    parity = init_parity()
    print(f"\n## init_parity\nexpected: every mixer's block writes at most the embedding's RMS at init\n{parity.measured}")
    print(f"verdict: {'agrees' if parity.agrees else 'DISAGREES'}")
    report.append({"check": "init_parity", "agrees": parity.agrees, "measured": parity.measured})
    for name in names:
        check = CHECKS[name](seeds, lrs)
        results, seconds = run_check(check, store_dir, args.executor)
        v = check.verdict(results)
        print(f"\n## {check.key}\nclaim: {check.claim}\nexpected: {check.expected}\n{v.measured}")
        print(f"verdict: {'agrees' if v.agrees else 'DISAGREES'} ({seconds / 60:.1f} min)")
        report.append({"check": check.key, "claim": check.claim, "agrees": v.agrees, "measured": v.measured, "minutes": seconds / 60})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    disagreeing = [r["check"] for r in report if not r["agrees"]]
    print(f"\n{len(report) - len(disagreeing)} of {len(report)} agree" + (f"; disagreeing: {', '.join(disagreeing)}" if disagreeing else ""))
    return 0 if not disagreeing else 1


if __name__ == "__main__":
    sys.exit(main())
