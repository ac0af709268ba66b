"""One design on MQAR outside a campaign: the probe behind the explanations in BENCHMARKS.md.

Trains a hybrid stack with the campaign trainer (`workers.trainer.fit`: the learning-rate sweep
chosen on a validation split, the 0.99 target, test scoring of the kept run) and prints every rate's
validation accuracy and training loss, so a disagreement with the literature can be traced to the
budget, the rate or the architecture.

    python benchmarks/mqar_probe.py --mixer deltanet --pairs 16 --expand-k 0.25 --steps 1200 --lr 0.001 --seed 1
    python benchmarks/mqar_probe.py --mixer gla --ratio 1 --layers 4 --vocab 64 --seq-len 32 --pairs 8 --lr 0.003 0.01
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixer", default="deltanet", help="the linear mixer [deltanet]")
    ap.add_argument("--ratio", default="all_linear", help="linear layers per attention layer, or all_linear [all_linear]")
    ap.add_argument("--placement", default="interleaved", help="where the attention layers sit [interleaved]")
    ap.add_argument("--layers", type=int, default=2, help="[2]")
    ap.add_argument("--d-model", type=int, default=64, help="[64]")
    ap.add_argument("--heads", type=int, default=2, help="[2]")
    ap.add_argument("--expand-k", type=float, default=1.0, help="key (state) rows per head = d_model * expand_k / heads [1.0]")
    ap.add_argument("--vocab", type=int, default=128, help="[128]")
    ap.add_argument("--seq-len", type=int, default=64, help="[64]")
    ap.add_argument("--pairs", type=int, default=16, help="key-value pairs per sequence [16]")
    ap.add_argument("--num-train", type=int, default=6000, help="[6000]")
    ap.add_argument("--steps", type=int, default=600, help="the cap [600]")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3], help="one or more peak rates [0.001]")
    ap.add_argument("--seed", type=int, default=0, help="data, init and batch order [0]")
    args = ap.parse_args(argv)

    import torch

    from hybridnas.codegen import build_module
    from hybridnas.space.spec import ArchSpec, HybridGenes, LayerSpec
    from hybridnas.workers.tasks import make_task
    from hybridnas.workers.trainer import Target, TrainConfig, fit

    torch.set_num_threads(1)  # as a 1-CPU worker trains
    ratio = args.ratio if args.ratio == "all_linear" else int(args.ratio)
    genes = HybridGenes(ratio=ratio, placement=args.placement, linear_mixer=args.mixer, short_conv=True, full_short_conv=True)
    spec = ArchSpec.from_hybrid(
        genes, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, vocab_size=args.vocab,
        base_layer=LayerSpec(mixer=args.mixer, expand_k=args.expand_k),
    )
    task = make_task({"name": "mqar", "vocab_size": args.vocab, "seq_len": args.seq_len, "num_kv_pairs": args.pairs,
                      "num_train": args.num_train, "num_test": 500})
    data = task.generate(args.seed)
    cfg = TrainConfig(steps=args.steps, batch_size=64, lr=tuple(args.lr), target=Target("accuracy", 0.99), eval_every=50)
    module = build_module(spec)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return module.Model()

    t0 = time.perf_counter()
    _, result = fit(fresh, data, cfg, args.seed)
    runs = "  ".join(
        f"lr {r.lr:g}: val {r.val_accuracy:.3f}, train loss {r.train_loss:.2f}, {r.steps} steps" for r in result.runs
    )
    print(f"{spec.describe()} | {args.pairs} pairs, seed {args.seed}: test {result.accuracy:.3f} (lr {result.kept.lr:g}) | {runs} | {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
