#!/usr/bin/env bash
# Sets up everything NeuroSeg Lite needs in ./.venv on a fresh machine with Python 3.11 and pip (no conda, no GPU).
# Idempotent: a second run only checks what is there.
#
# PyTorch: if the venv has no torch yet, a CPU build is installed first, because on Linux a plain
# `pip install torch` takes a CUDA build of several GB. Set TORCH_INDEX_URL to a CPU wheel index to choose
# where that build comes from; set NEUROSEG_TORCH_SPEC to pin another version. On Colab nothing of this runs:
# the notebooks' install cell installs the package next to Colab's own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${NEUROSEG_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    "${PIP[@]}" install -q "$TORCH_SPEC"
  fi
fi
# The installed torch satisfies the package's torch>=2.1, so this step never replaces it.
"${PIP[@]}" install -q -e ".[test,book]"
.venv/bin/python -c "import torch, neuroseg_lite; print('neuroseg_lite', neuroseg_lite.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
