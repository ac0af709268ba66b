"""Kernel timings: naive vs chunk vs triton vs fla vs SDPA causal attention, fwd and fwd+bwd.

    python benchmarks/kernels.py --device cpu --dtype float32 --B 2 --H 4 --D 64 \\
        --T 512 1024 2048 4096 8192 --repeats 5 --threads 2

"fwd" is a training forward (inputs require grad); "fwd+bwd" adds the backward of o.sum() (with
a dense gradient), timed in the same iteration. Each figure is the median of --repeats runs after
one warm-up (--interleave: in rounds over the methods). The ratio tables are computed from the
figures of this run only. On a shared machine, `--threads 1 --clock process` (CPU time of this
process) is the steadier view.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from hybridnas.kernels import available_backends, gated_delta_rule, gated_linear_attention
from hybridnas.kernels.chunk import chunk_gated_delta_rule, chunk_gated_linear_attention
from hybridnas.kernels.naive import naive_gated_delta_rule, naive_gated_linear_attention

Run = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Timing:
    fwd: float  # median forward seconds
    fwd_bwd: float  # median forward + backward seconds


def make_inputs(
    primitive: str, decay: str, B: int, T: int, H: int, D: int, device: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(T)
    x = {
        "q": torch.randn(B, T, H, D, generator=gen),
        "k": F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1),
        "v": torch.randn(B, T, H, D, generator=gen),
    }
    if decay == "g":
        x["g"] = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0)  # alpha around 0.95
    elif decay == "gk":
        x["gk"] = F.logsigmoid(torch.randn(B, T, H, D, generator=gen) + 3.0) / 2.0
    if primitive == "delta":
        x["beta"] = torch.rand(B, T, H, generator=gen)
    return {n: t.to(device=device, dtype=dtype).requires_grad_() for n, t in x.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: The clock: wall time, or this process's CPU time (robust on a shared machine with --threads 1).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def time_once(run: Run, x: dict[str, torch.Tensor], device: str) -> tuple[float, float]:
    """(forward seconds, forward + backward seconds) of one call."""
    for t in x.values():
        t.grad = None
    sync(device)
    t0 = clock()
    o = run(x)
    sync(device)
    t1 = clock()
    o.backward(torch.ones_like(o))
    sync(device)
    return t1 - t0, clock() - t0


def measure(
    runs: dict[str, Run], x: dict[str, torch.Tensor], repeats: dict[str, int], device: str, interleave: bool
) -> dict[str, Timing]:
    """Median timings of every method after one warm-up run (allocator, kernel compilation; the
    naive loop of thousands of tiny steps needs none). By default each method runs its repeats
    back to back (its steady state); with `interleave`, in rounds of one run per method, so that
    load from other processes spreads over all methods alike (but each method then also pays for
    the memory the others just freed)."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    plan = [(name, r) for name in runs for r in range(repeats[name] + (name != "naive"))]
    if interleave:
        plan.sort(key=lambda item: item[1])
    for name, r in plan:
        fwd_bwd = time_once(runs[name], x, device)
        if r >= (name != "naive"):
            samples[name].append(fwd_bwd)
    return {
        name: Timing(statistics.median(f for f, _ in ts), statistics.median(t for _, t in ts))
        for name, ts in samples.items()
    }


def recurrence(fn: Callable, primitive: str, **kw: object) -> Run:
    def run(x: dict[str, torch.Tensor]) -> torch.Tensor:
        args = [x["q"], x["k"], x["v"]] + ([x["beta"]] if primitive == "delta" else [])
        return fn(*args, g=x.get("g"), gk=x.get("gk"), **kw)[0]

    return run


def sdpa(x: dict[str, torch.Tensor]) -> torch.Tensor:
    q, k, v = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def fla_run(primitive: str, decay: str) -> Run | None:
    """flash-linear-attention's chunk kernel for this primitive and decay, when fla imports."""
    try:
        if primitive == "gla" and decay == "gk":
            from fla.ops.gla import chunk_gla as fn  # type: ignore[import-not-found]
        elif primitive == "gla":
            from fla.ops.simple_gla import chunk_simple_gla as fn  # type: ignore[import-not-found]
        elif decay != "gk":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fn  # type: ignore[import-not-found]
        else:
            return None
    except ImportError:
        return None

    def run(x: dict[str, torch.Tensor]) -> torch.Tensor:
        q, k, v = x["q"], x["k"], x["v"]
        if primitive == "gla":
            g = x.get("gk") if decay == "gk" else x.get("g")
            g = torch.zeros(q.shape[:3], device=q.device, dtype=q.dtype) if g is None else g
            return fn(q, k, v, g)[0]
        g = x.get("g", torch.zeros(q.shape[:3], device=q.device, dtype=q.dtype))
        return fn(q, k, v, g, x["beta"])[0]

    return run


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64, help="head size, K = V = D")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--naive-max-T", type=int, default=2048, help="longest T to run the naive loop at")
    p.add_argument("--naive-repeats", type=int, default=3, help="repeats for the (slow) naive loop")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for CPU runs")
    p.add_argument("--interleave", action="store_true", help="time the methods in rounds (see measure)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS), help="process: CPU time, use with --threads 1")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--primitives", nargs="+", default=["gla", "delta"], choices=["gla", "delta"])
    p.add_argument("--decays", nargs="+", default=["g", "gk"], choices=["none", "g", "gk"])
    p.add_argument(
        "--methods", nargs="+", default=["naive", "chunk", "triton", "fla", "sdpa"],
        choices=["naive", "chunk", "triton", "fla", "sdpa"], help="which implementations to time (others show as -)",
    )
    args = p.parse_args()
    global clock
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    triton_ok = "triton" in available_backends(args.device)
    print(
        f"device={args.device} dtype={args.dtype} B={args.B} H={args.H} D={args.D} "
        f"threads={args.threads} clock={args.clock} "
        f"repeats={args.repeats} (naive {args.naive_repeats}) chunk_size={args.chunk_size} torch={torch.__version__} "
        f"load average at the start: {os.getloadavg()}"
    )
    for primitive in args.primitives:
        for decay in args.decays:
            naive_fn = naive_gated_linear_attention if primitive == "gla" else naive_gated_delta_rule
            chunk_fn = chunk_gated_linear_attention if primitive == "gla" else chunk_gated_delta_rule
            public = gated_linear_attention if primitive == "gla" else gated_delta_rule
            methods: dict[str, Run | None] = {
                "naive": recurrence(naive_fn, primitive),
                "chunk": recurrence(chunk_fn, primitive, chunk_size=args.chunk_size),
                "triton": recurrence(public, primitive, backend="triton") if triton_ok else None,
                "fla": fla_run(primitive, decay) if args.device.startswith("cuda") else None,
                "sdpa": sdpa,
            }
            methods = {n: (r if n in args.methods else None) for n, r in methods.items()}
            rows: dict[int, dict[str, Timing | None]] = {}
            for T in args.T:
                x = make_inputs(primitive, decay, args.B, T, args.H, args.D, args.device, dtype)
                runs = {n: r for n, r in methods.items() if r is not None and (n != "naive" or T <= args.naive_max_T)}
                repeats = {n: args.naive_repeats if n == "naive" else args.repeats for n in runs}
                timings = measure(runs, x, repeats, args.device, args.interleave)
                rows[T] = {n: timings.get(n) for n in methods}
            report(primitive, decay, rows)
    print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}; took {time.perf_counter() - started:.0f} s")


def report(primitive: str, decay: str, rows: dict[int, dict[str, Timing | None]]) -> None:
    names = list(next(iter(rows.values())).keys())
    print(f"\n== {primitive}, decay={decay}: median ms (fwd | fwd+bwd)")
    print(f"{'T':>6} " + " ".join(f"{n + ' fwd':>11} {n + ' f+b':>11}" for n in names))
    for T, row in rows.items():
        cells = [f"{fmt(t.fwd if t else None):>11} {fmt(t.fwd_bwd if t else None):>11}" for t in row.values()]
        print(f"{T:>6} " + " ".join(cells))
    first_T = next(iter(rows))
    if all(row.get("triton") and row.get("fla") for row in rows.values()):
        print("ratios: triton/fla (< 1: ours faster), fwd and fwd+bwd")
        for T, row in rows.items():
            ours, fla = row["triton"], row["fla"]
            print(f"{T:>6} triton/fla {ours.fwd / fla.fwd:5.2f} {ours.fwd_bwd / fla.fwd_bwd:5.2f}")  # type: ignore[union-attr]
    base = rows[first_T]["chunk"]
    if base is None:
        return
    print(f"ratios: naive/chunk f+b, sdpa/chunk fwd and f+b (> 1: chunk faster), chunk f+b time(T)/time({first_T})")
    for T, row in rows.items():
        chunk, naive, sd = row["chunk"], row["naive"], row["sdpa"]
        speedup = f"{naive.fwd_bwd / chunk.fwd_bwd:7.1f}x" if naive else "      -"
        vs_sdpa = f"{sd.fwd / chunk.fwd:5.2f} {sd.fwd_bwd / chunk.fwd_bwd:5.2f}" if sd else "    -     -"
        print(f"{T:>6} naive/chunk {speedup}  sdpa/chunk {vs_sdpa}  scaling {chunk.fwd_bwd / base.fwd_bwd:5.2f}")  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
