"""Proxy training speed on CPU: tokens/s of `hybridnas.workers.trainer.train` for small designs.

    python benchmarks/train_speed.py                       # defaults below; --json results.json to keep them
    python benchmarks/train_speed.py --mixers gla kda --seq-len 64 --repeats 3

Each design is a 4-layer, d_model 64, 2-head SwiGLU model with the short conv on, all of its layers
one mixer (attention: all full layers), on MQAR with vocabulary 64, batch 64. The figure is what the
trainer itself runs: `train()` (forward, loss, backward, clipping, AdamW step, its loss checks) on a
fresh model per repeat. Step times come from a forward pre-hook, so the first --warmup steps of
each run and the setup and validation around the loop are excluded. Each repeat gives the mean step
time over its timed steps, as process CPU time (steady on a shared machine) and as wall time; the
table shows medians over repeats, which run in rounds over the designs so that a slow patch of a
shared machine hits them all alike. --threads 1 (the default) is what a 1-CPU Ray worker uses.
train_loss (the trainer's mean over the last tenth of the steps, first repeat) shows whether a change
to the code moved the numbers beyond roundoff.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import torch

from hybridnas.codegen.render import build_module
from hybridnas.space import ArchSpec, HybridGenes
from hybridnas.workers.hardware import cpu_model
from hybridnas.workers.tasks import make_task
from hybridnas.workers.trainer import TrainConfig, train

MIXERS = ("attention", "gla", "gated_deltanet", "kda", "mamba2", "mamba", "linear_attn")


def make_spec(mixer: str, vocab_size: int) -> ArchSpec:
    full = mixer == "attention"
    genes = HybridGenes(
        ratio=0 if full else "all_linear",
        linear_mixer="gla" if full else mixer,  # unused when every layer is full
        short_conv=True,
        full_short_conv=True,
    )
    return ArchSpec.from_hybrid(genes, d_model=64, n_layers=4, n_heads=2, vocab_size=vocab_size, mlp="swiglu")


class StepClock:
    """Wall and process-CPU time stamps of every training-mode forward of a model (one per optimizer
    step in `train`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.stamps: list[tuple[float, float]] = []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            self.stamps.append((time.perf_counter(), time.process_time()))

    def step_time(self, warmup: int) -> tuple[float, float]:
        """Mean (wall, CPU) seconds per step from the start of step `warmup` to the start of the last step."""
        (w0, c0), (w1, c1) = self.stamps[warmup], self.stamps[-1]
        n = len(self.stamps) - 1 - warmup
        return (w1 - w0) / n, (c1 - c0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=MIXERS)
    p.add_argument("--seq-len", nargs="+", type=int, default=[32, 64])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per run (warm-up included)")
    p.add_argument("--warmup", type=int, default=4, help="steps per run left out of the timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args()
    if args.steps < args.warmup + 2:
        p.error("--steps must exceed --warmup by at least 2")

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=3e-3)
    warm = TrainConfig(steps=args.warmup + 2, batch_size=args.batch_size, lr=3e-3)
    data = {}
    for T in args.seq_len:
        task = make_task({"name": "mqar", "vocab_size": args.vocab_size, "seq_len": T, "num_kv_pairs": 4, "num_train": 2000, "num_test": 100})
        data[T] = task.generate(args.seed)
    modules = {m: build_module(make_spec(m, args.vocab_size)) for m in args.mixers}
    designs = [(m, T) for m in args.mixers for T in args.seq_len]

    wall: dict[tuple[str, int], list[float]] = {d: [] for d in designs}
    cpu: dict[tuple[str, int], list[float]] = {d: [] for d in designs}
    losses: dict[tuple[str, int], float] = {}
    load = os.getloadavg()
    for r in range(args.repeats + 1):  # round 0 (a short run) warms the process: first calls of every op
        for d in designs:
            mixer, T = d
            torch.manual_seed(args.seed)
            model = modules[mixer].Model()
            clock = StepClock(model)
            result = train(model, data[T], warm if r == 0 else cfg, seed=args.seed)
            clock.handle.remove()
            if r > 0:
                w, c = clock.step_time(args.warmup)
                wall[d].append(w)
                cpu[d].append(c)
                losses.setdefault(d, result.train_loss)

    print(
        f"cpu={cpu_model()!r} threads={args.threads} torch={torch.__version__} batch={args.batch_size} "
        f"steps={args.steps} (warm-up {args.warmup}) repeats={args.repeats} load average at the start: {load}"
    )
    print("tokens/s = batch * T / step time, median over repeats; cpu: process time, wall: elapsed time")
    print(f"{'design':<16} {'T':>4} {'ms/step cpu':>12} {'tokens/s cpu':>13} {'tokens/s wall':>14} {'spread':>7}  train_loss")
    rows = []
    for d in designs:
        mixer, T = d
        c, w = statistics.median(cpu[d]), statistics.median(wall[d])
        spread = (max(cpu[d]) - min(cpu[d])) / c
        tok_c, tok_w = args.batch_size * T / c, args.batch_size * T / w
        print(f"{mixer:<16} {T:>4} {c * 1e3:>12.2f} {tok_c:>13.0f} {tok_w:>14.0f} {spread:>6.0%}  {losses[d]:.6f}")
        rows.append(
            {
                "mixer": mixer,
                "seq_len": T,
                "ms_per_step_cpu": c * 1e3,
                "tokens_per_s_cpu": tok_c,
                "tokens_per_s_wall": tok_w,
                "step_cpu_s": cpu[d],
                "step_wall_s": wall[d],
                "train_loss": losses[d],
            }
        )
    if args.json:
        meta = {
            "cpu": cpu_model(),
            "threads": args.threads,
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "args": vars(args),
            "load_average": load,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
