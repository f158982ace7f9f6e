#!/usr/bin/env bash
# The GPU check of issue 16 on a bare GPU machine (no network): installs the wheels of bench/gpu_wheels.sh (.whl/)
# offline with --no-deps into a PYTHONPATH target, puts the project itself on PYTHONPATH (its pinned torch is not
# there: the machine's own CUDA torch is used), then runs bench/gpu_check.py within 8 minutes.
#   bash bench/gpu_check.sh OUT              (on the GPU machine)
#   bash bench/gpu_check.sh OUT --cpu-smoke  (a tiny CPU version, to test this script anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: gpu_check.sh OUT [--cpu-smoke]}"; shift || true
mkdir -p "$OUT"
TARGET="${GPU_CHECK_TARGET:-$OUT/site}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  ls .whl/*.whl | grep -v carvana_fastai | xargs python -m pip install --quiet --no-index --no-deps --target "$TARGET" \
    --disable-pip-version-check 2>&1 | tail -3 || echo "gpu_check: some wheels did not install" >&2
fi
export PYTHONPATH="$PWD:$TARGET${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore MPLBACKEND=Agg
python -c "import torch, fastai, timm; print('gpu_check: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'fastai', fastai.__version__, 'timm', timm.__version__)"
timeout 480 python bench/gpu_check.py "$OUT" "$@"
