#!/usr/bin/env bash
# The Python environment that runs the original StableAnimator code on a CPU, for the benchmark's
# baseline (python -m tools.bench original; docs/benchmarks.md). The original imports diffusers and
# transformers internals of the versions below; transformers 4.35 needs huggingface_hub < 1, which
# gradio (our web extra) refuses, so the original gets a virtual environment of its own.
#
#   bash tools/install_original.sh [VENV]          # default .venv-original
set -euo pipefail
venv="${1:-.venv-original}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 diffusers==0.31.0 transformers==4.35.2 accelerate==0.25.0 \
    safetensors einops opencv-python-headless==4.10.0.84 "numpy<2" pillow
echo "$venv/bin/python"
