#!/usr/bin/env bash
# GPU readiness check (about 7 minutes on one CUDA GPU, never more than 8): batch 1 latency and
# batch 64 throughput of v5lite-e / v5lite-s vs yolov8n (torch eager fp32/fp16, CUDA graph, ONNX
# Runtime CUDA where installed) and a short CUDA training run with images/s.
#   scripts/gpu_check.sh OUT_DIR [--weights v5lite-s=v5lite-s.safetensors ...]
# Writes OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.json. Downloads nothing. Without a CUDA GPU it
# says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: scripts/gpu_check.sh OUT_DIR [--budget SECONDS] [--weights NAME=PATH ...]" >&2
    exit 2
fi
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU found (nvidia-smi lists none); nothing to check"
    exit 0
fi
exec timeout 480 "$PYTHON" scripts/gpu_check.py "$@"
