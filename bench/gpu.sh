#!/usr/bin/env bash
# The --device cuda suite on a lent GPU machine, in one command, within 8 minutes:
#   bash bench/gpu.sh            (from anywhere; writes into $OUT, or a temporary folder without it)
# OPT-2.7B's shape in bf16 with random weights: no network, no download. The GPU image has torch,
# transformers, peft, accelerate, rich and safetensors but not prompt_toolkit or datasets, and
# lorachat is not installed there: `python -m bench` from the repository root imports the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
# the tiny model (recall, startup) is built here, outside $OUT, so it does not travel back
export LORACHAT_CACHE=${LORACHAT_CACHE:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
log="$OUT/bench-cuda.log"
{
  echo "# bench/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  echo "nproc $(nproc); $PYTHON $("$PYTHON" --version 2>&1)"
} | tee "$log"
# 450 s: the suite takes about 3-4 minutes on an H100; the rest is margin under the 8-minute budget
timeout 450 "$PYTHON" -m bench --device cuda --json "$OUT/bench-cuda.json" 2>&1 | tee -a "$log"
echo "wrote $OUT/bench-cuda.json and $log"
