# Sourced (from the repository root) by the scripts for a CUDA machine, gpu_check.sh and gpu_resnet_suite.sh:
# PY (.venv/bin/python when there, else python3), AL_DATA_DIR (default ../shared/data), and two helpers.

if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export AL_DATA_DIR="${AL_DATA_DIR:-../shared/data}"

# require_cuda NAME: exit 2 with one line on stderr unless torch sees a CUDA device.
require_cuda() {
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "$1: no CUDA device ($PY: torch.cuda.is_available() is False, or torch is missing); run it on a machine with an NVIDIA GPU" >&2
        exit 2
    fi
}

# limit SECONDS COMMAND...: the command under timeout(1) where it exists, else as it is.
limit() { if command -v timeout >/dev/null; then timeout "$@"; else shift; "$@"; fi; }
