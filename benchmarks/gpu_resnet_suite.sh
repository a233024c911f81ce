#!/usr/bin/env bash
# Issue 17 part 3 on ResNet-18, for a machine with CUDA (on a 2-core CPU the protocol takes many hours):
# benchmarks/regrad_suite.py with the patch transformer's settings (3 models per setting, early stopping, clean
# gradients: the per-layer profile and the layer-alpha sweep) on `resnet18`, MNIST and Fashion-MNIST padded to
# 32x32. Writes benchmarks/results/regrad_suite_resnet18.{md,json}; models and gradient norms are cached under
# $AL_CACHE_DIR (default /tmp), so a run cut short by its time limit continues where it stopped when started again.
# Run from anywhere: bash benchmarks/gpu_resnet_suite.sh [TIME_LIMIT_SECONDS, default 540] [extra regrad_suite.py
# arguments]. Exit codes: 0 written, 1 the suite failed or ran out of time (or the limit is not whole seconds),
# 2 no CUDA on this machine.
set -u
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh
LIMIT="${1:-540}"
shift || true
case "$LIMIT" in
    '' | *[!0-9]*)
        echo "gpu_resnet_suite: the time limit must be whole seconds (e.g. 540), got '$LIMIT'" >&2
        exit 1
        ;;
esac
require_cuda gpu_resnet_suite

limit "$LIMIT" "$PY" benchmarks/regrad_suite.py --model resnet18 --pad 2 --early-stopping --models 3 \
    --sigmas --mean-grad-sigmas --param-sigmas --device cuda --threads "$(nproc)" \
    --out benchmarks/results/regrad_suite_resnet18.md "$@" || {
    echo "gpu_resnet_suite: regrad_suite.py failed or passed ${LIMIT} s; run this script again to continue from the cache" >&2
    exit 1
}
