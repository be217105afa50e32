#!/usr/bin/env bash
# Make onnxruntime-openvino the only onnxruntime in a venv: both wheels install the same
# `onnxruntime` package folder, so remove both and reinstall the OpenVINO one alone.
# Usage: bash scripts/use-openvino.sh VENV_DIR
set -euo pipefail
VENV=${1:?usage: use-openvino.sh VENV_DIR}
"$VENV/bin/pip" uninstall -q -y onnxruntime onnxruntime-openvino
"$VENV/bin/pip" install -q --no-deps "onnxruntime-openvino==1.24.1"
