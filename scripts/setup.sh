#!/usr/bin/env bash
# One-step set-up on a fresh machine with Python >= 3.10 and pip.
# torch is pinned to the CPU build served locally when it is missing, because
# an unpinned torch pulls a multi-GB CUDA build; an existing torch (e.g. a
# CUDA build on a GPU machine) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
