#!/usr/bin/env bash
# The GPU check of docs/maniflow-fidelity.md, as one script: paper-preset training speed (old and new
# step side by side) and placement (the stack's training worker bound to the GPU runs one demo
# cell on CUDA under bf16). Needs a CUDA GPU and the project's environment (`make setup`).
#
#   benchmarks/gpu_check.sh [OUT]      writes OUT/bench_train.json, OUT/placement.json (default gpu-check/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
BIN=.venv/bin
WORK=${WORK:-work-gpu-check}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$BIN/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# 1. Speed: the paper preset at 224 px, batch 64, old and new step in one run.
"$BIN/python" benchmarks/bench_train.py --steps 30 --skip-memory | tee "$OUT/bench_train.json"

# 2. Placement: a small demo dataset, the stack (which finds the GPU and binds a worker to it), one cell.
"$BIN/maniflow" generate --out "$WORK/data" --episodes 6 --seed 0 --workers 4 --tasks click_bell
"$BIN/maniflow" extract --root "$WORK/data" --work "$WORK" --workers 4 --tasks click_bell
"$BIN/maniflow" paths --provider oracle --work "$WORK" --label hamster
"$BIN/maniflow" render --work "$WORK" --label hamster --workers 4
trap 'make down >/dev/null 2>&1 || true' EXIT
make up
eval "$(deployments/stack.sh env)"  # this shell talks to the stack's server
"$BIN/python" deployments/run.py train-run/demo \
  --param "params={\"work\": \"$PWD/$WORK\", \"epochs\": 2}"
"$BIN/python" - "$WORK" "$OUT/placement.json" <<'EOF'
import json, sys
from pathlib import Path
run = next((Path(sys.argv[1]) / "runs").glob("cluttered_overlay_initial_current_click_bell_demo_seed0"))
last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
workers = sorted(p.name for p in Path(".prefect/pids").glob("worker-*.pid"))
result = {"run": str(run), "device": last["device"], "bf16": last["bf16"], "samples_per_s": last["samples_per_s"],
          "workers": workers}
Path(sys.argv[2]).write_text(json.dumps(result, indent=1))
print(json.dumps(result))
sys.exit(0 if last["device"] == "cuda" and last["bf16"] and "worker-gpu0.pid" in workers else 1)
EOF
