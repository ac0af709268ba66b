"""Kernel timings: naive vs chunk vs triton vs fla vs SDPA causal attention, fwd and fwd+bwd.

    python benchmarks/kernels.py --device cpu --dtype float32 --B 2 --H 4 --D 64 \\
        --T 512 1024 2048 4096 8192 --repeats 5 --threads 2

"fwd" is a training forward (inputs require grad); "fwd+bwd" adds the backward of a random
projection of the output, timed in the same iteration. Each figure is the median of --repeats runs
after one warm-up. The ratio tables are computed from the figures of this run only.
"""

from __future__ import annotations

import argparse
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


def measure(run: Run, x: dict[str, torch.Tensor], repeats: int, device: str) -> Timing:
    fwd, total = [], []
    for i in range(repeats + 1):  # the first run warms up (allocator, kernel compilation)
        for t in x.values():
            t.grad = None
        sync(device)
        t0 = time.perf_counter()
        o = run(x)
        sync(device)
        t1 = time.perf_counter()
        o.backward(torch.ones_like(o))
        sync(device)
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    return Timing(statistics.median(fwd), statistics.median(total))


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
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--primitives", nargs="+", default=["gla", "delta"], choices=["gla", "delta"])
    p.add_argument("--decays", nargs="+", default=["g", "gk"], choices=["none", "g", "gk"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    triton_ok = "triton" in available_backends(args.device)
    print(
        f"device={args.device} dtype={args.dtype} B={args.B} H={args.H} D={args.D} threads={args.threads} "
        f"repeats={args.repeats} (naive {args.naive_repeats}) chunk_size={args.chunk_size} torch={torch.__version__}"
    )
    sdpa_times = {T: measure(sdpa, make_inputs("gla", "none", args.B, T, args.H, args.D, args.device, dtype),
                             args.repeats, args.device) for T in args.T}
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
            }
            rows: dict[int, dict[str, Timing | None]] = {}
            for T in args.T:
                x = make_inputs(primitive, decay, args.B, T, args.H, args.D, args.device, dtype)
                row: dict[str, Timing | None] = {}
                for name, run in methods.items():
                    if run is None or (name == "naive" and T > args.naive_max_T):
                        row[name] = None
                        continue
                    repeats = args.naive_repeats if name == "naive" else args.repeats
                    row[name] = measure(run, x, repeats, args.device)
                row["sdpa"] = sdpa_times[T]
                rows[T] = row
            report(primitive, decay, rows)


def report(primitive: str, decay: str, rows: dict[int, dict[str, Timing | None]]) -> None:
    names = list(next(iter(rows.values())).keys())
    print(f"\n== {primitive}, decay={decay}: median ms (fwd | fwd+bwd)")
    print(f"{'T':>6} " + " ".join(f"{n + ' fwd':>11} {n + ' f+b':>11}" for n in names))
    for T, row in rows.items():
        cells = [f"{fmt(t.fwd if t else None):>11} {fmt(t.fwd_bwd if t else None):>11}" for t in row.values()]
        print(f"{T:>6} " + " ".join(cells))
    first_T = next(iter(rows))
    base = rows[first_T]["chunk"]
    print(f"ratios: naive/chunk f+b, sdpa/chunk fwd and f+b (> 1: chunk faster), chunk f+b time(T)/time({first_T})")
    for T, row in rows.items():
        chunk, naive, sd = row["chunk"], row["naive"], row["sdpa"]
        speedup = f"{naive.fwd_bwd / chunk.fwd_bwd:7.1f}x" if naive else "      -"
        print(
            f"{T:>6} naive/chunk {speedup}  sdpa/chunk {sd.fwd / chunk.fwd:5.2f} {sd.fwd_bwd / chunk.fwd_bwd:5.2f}"
            f"  scaling {chunk.fwd_bwd / base.fwd_bwd:5.2f}"
        )


if __name__ == "__main__":
    main()
