#!/usr/bin/env bash
# The device check: one run of at most 8 minutes on one GPU (an H100 or H200), three steps:
#   1. the Triton kernel tests on CUDA (every kernel against the float64 naive recurrence, compiled);
#   2. benchmarks/kernels.py in bf16 at B=4 H=16 D=128 for T = 2k, 4k, 8k, 16k, our Triton kernels
#      against flash-linear-attention (fla) beside them: ours/fla forward and forward+backward, for
#      GLA and the gated delta rule;
#   3. a 16-candidate campaign (examples/gpu.yaml) with 4 Ray workers packed on the one GPU
#      (gpus_per_worker 0.25), training in bf16 autocast on the Triton kernels.
# Output goes to $OUT (default ./gpu_check_out): a log per step, the campaign's store and leaderboard.
#
#   benchmarks/gpu_check.sh --prepare   # here, with internet: wheels the device lacks into .whl/
#   benchmarks/gpu_check.sh             # there (carry .whl): install offline, then the three steps
#   benchmarks/gpu_check.sh --cpu       # a rehearsal of the same three steps at toy sizes on a CPU
#
# The device reaches no package registry: what its image lacks (fla, and hybridnas's own
# dependencies: optuna, sqlalchemy, ...) travels as wheels for its Python (3.12, x86-64). Ray's wheel
# alone (about 70 MB) is larger than the 64 MiB a device run may carry, so step 3 packs its four
# workers with Ray only where the image has Ray; elsewhere it says so and runs one worker in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-gpu}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# Packages the device image lacks, each pinned to a version whose wheel exists for cp312 manylinux.
WHEELS=(
  "flash-linear-attention==0.6.0" "fla-core==0.6.0"
  "optuna==5.1.0" "sqlalchemy==2.1.9" "alembic==1.20.1" "colorlog==6.12.0" "mako==1.4.3"
  "greenlet" "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
)

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

case "$MODE" in
--prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for spec in "${WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$spec"
  done
  du -sh .whl
  size=$(du -sm .whl | cut -f1)
  if [ "$size" -gt 60 ]; then
    echo "warning: .whl is ${size} MiB; a device run carries at most 64 MiB in all" >&2
  fi
  exit 0
  ;;
--cpu)
  # The rehearsal: the same steps, the Triton kernels in the interpreter, toy sizes, no fla.
  export TRITON_INTERPRET=1
  step "1. Triton kernel tests (interpreter)"
  "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_kernels_triton.py -k "chunk_matches_naive and T1-" -x 2>&1 | tee "$OUT/1_triton_tests.log" | tail -3
  unset TRITON_INTERPRET
  step "2. kernel timings (CPU, toy sizes)"
  "$PY" benchmarks/kernels.py --device cpu --dtype float32 --B 1 --H 2 --D 16 --T 64 128 --repeats 2 \
    --methods chunk sdpa --threads 1 2>&1 | tee "$OUT/2_kernels.log" | tail -4
  step "3. a packed campaign (CPU, 4 candidates, 2 workers)"
  "$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/3_campaign.log"
import sys, yaml, hybridnas
cfg = yaml.safe_load(open("examples/gpu.yaml"))
cfg.update(name="gpu-rehearsal", task={"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "num_train": 256, "num_test": 64})
cfg["space"].update(d_model=[16], n_layers=[2])
cfg["training"].update(steps=8, lr=[3e-3], eval_every=4, batch_size=16)
cfg["search"]["budget"] = 4
cfg["execution"].update(workers=2, cpus_per_worker=1, gpus_per_worker=0, timeout_s=300)
cfg["hardware"] = {"context_len": 32, "repeats": 1, "decode_tokens": 4}
with hybridnas.run_campaign(cfg, store=f"sqlite:///{sys.argv[1]}/rehearsal.db") as run:
    evs = run.store.evaluations(run.id)
    assert run.summary.evaluated == 4 and all(e.status == "done" for e in evs), [e.error for e in evs]
    print(sorted({e.device for e in evs}))
    print("rehearsal ok:", len(evs), "evaluations")
EOF
  exit 0
  ;;
gpu) ;;
*)
  echo "usage: benchmarks/gpu_check.sh [--prepare | --cpu]" >&2
  exit 2
  ;;
esac

# --- on the device ---------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/0_gpu.txt"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
export PATH="$HOME/.local/bin:$PATH"

step "1. Triton kernel tests on CUDA"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_kernels_triton.py 2>&1 | tee "$OUT/1_triton_tests.log" | tail -5 || true

step "2. kernel timings, bf16, B4 H16 D128, ours against fla"
timeout 150 "$PY" benchmarks/kernels.py --device cuda --dtype bfloat16 --B 4 --H 16 --D 128 --T 2048 4096 8192 16384 \
  --repeats 10 --methods triton fla sdpa --primitives gla delta --decays g gk 2>&1 | tee "$OUT/2_kernels.log" || true

step "3. 16 candidates, 4 workers packed on one GPU"
EXECUTOR=()
if ! "$PY" -c "import ray" 2>/dev/null; then
  echo "ray is not installed here (its wheel is larger than a device run may carry): one in-process worker instead of four packed" | tee "$OUT/3_campaign.log"
  EXECUTOR=(--executor inprocess --workers 1)
fi
timeout 240 hybridnas campaign launch examples/gpu.yaml --store "sqlite:///$OUT/gpu.db" --no-export "${EXECUTOR[@]}" 2>&1 \
  | tee -a "$OUT/3_campaign.log" | tail -25 || true
"$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/3_campaign.log"
import collections, sys
from hybridnas.store import Store
with Store.open(f"sqlite:///{sys.argv[1]}/gpu.db", create=False) as st:
    info = st.get_campaign("gpu")
    evs = st.evaluations(info.id)
    print("statuses:", dict(collections.Counter(e.status for e in evs)))
    print("devices:", dict(collections.Counter(e.device for e in evs)))
    walls = sorted(e.wall_time_s for e in evs if e.wall_time_s)
    if walls:
        print(f"evaluation wall time: median {walls[len(walls) // 2]:.1f}s, sum {sum(walls):.0f}s")
EOF
echo "done; logs in $OUT"
