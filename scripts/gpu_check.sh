#!/usr/bin/env bash
# The CUDA path in one short run (under 8 minutes on an H100): icm bench experiment=paper and
# experiment=full_ft on CUDA, a few `icm train experiment=paper` steps at 448x576, a 1-GPU
# torchrun (NCCL, SyncBatchNorm, DDP), an encode on the GPU decoded on the CPU. One JSON:
# $OUT/gpu_check.json if OUT is set, else benchmarks/results/gpu_check.json.
#
#   scripts/gpu_check.sh                      # on a CUDA machine
#   scripts/gpu_check.sh --device cpu --tiny  # the dry run: same steps, CPU, tiny preset
#
# Needs the package's dependencies (pip install -e .) and, for joules, nvidia-ml-py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
exec "$PY" scripts/gpu_check.py "$@"
