#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a machine with CUDA (about 8-10 minutes on
# one GPU; nothing here runs in the CPU test suite):
#   1. the CUDA tests (pytest -m gpu): samplers on CUDA, TF32 per stage (tests/test_matmul_precision.py);
#   2. bench_models.py on CUDA at both shapes, eager and compiled, train steps in TF32 (the default,
#      as both trainings run) and then in full fp32 (--no-tf32), so their ratio is train.tf32's gain.
# Usage: bash benchmarks/cuda_checks.sh [--official PATH]   (PATH: a checkout of the official code)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
python -m pytest -q -m gpu -p no:cacheprovider
python benchmarks/bench_models.py --device cuda --shape both --repeats 3 --compile "$@"
python benchmarks/bench_models.py --device cuda --shape both --repeats 3 --no-tf32 "$@"
