#!/usr/bin/env bash
# The device check for a machine with CUDA, in one go (about 3-4 minutes on one H200):
#   1. pytest -q tests/test_device.py (its CUDA cases run only where CUDA is);
#   2. benchmarks/gpu_check.py: REGrad, MC-dropout BALD and one training round (cnn, resnet18) timed on the GPU
#      against the CPU, written to benchmarks/results/gpu.md.
# Run from anywhere: bash benchmarks/gpu_check.sh [arguments for gpu_check.py]. Uses .venv/bin/python when there,
# else python3. Exit codes: 0 all passed, 1 the tests or the timings failed, 2 no CUDA on this machine.
set -u
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh
require_cuda gpu_check

# Each stage has its own time limit, so that a hang in one still leaves the run within 6 minutes.
status=0
echo "== tests/test_device.py"
limit 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py || { echo "gpu_check: tests/test_device.py failed" >&2; status=1; }
echo "== timings"
limit 220 "$PY" benchmarks/gpu_check.py "$@" || { echo "gpu_check: benchmarks/gpu_check.py failed" >&2; status=1; }
exit $status
