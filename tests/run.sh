#!/usr/bin/env bash
# The test command: library in sync with the notebooks, notebooks clean, the notebooks' own tests, then pytest (last, for its summary line).
# Extra arguments go to pytest, e.g. `bash tests/run.sh --runslow` or `bash tests/run.sh -k rle`.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg PYTHONWARNINGS="ignore::FutureWarning"
echo "== nbdev_export: is carvana_fastai/ in sync with nbs/?"
before=$(mktemp -d); cp -r carvana_fastai "$before/"
nbdev_export
if ! diff -r -x __pycache__ "$before/carvana_fastai" carvana_fastai; then
  echo "FAIL: carvana_fastai/ was out of sync with nbs/ (nbdev_export changed the files above): commit the exported library with its notebooks"
  exit 1
fi
echo "in sync"
echo "== nbdev_clean: are the notebooks committed clean (no metadata, no execution counts; outputs kept: settings.ini clear_all = False)?"
cp -r nbs "$before/nbs"
nbdev_clean --fname "$before/nbs"
if ! diff -r -q nbs "$before/nbs"; then
  echo "FAIL: run nbdev_clean and commit the notebooks it changed"
  exit 1
fi
echo "clean"
echo "== nbdev_test"
nbdev_test --n_workers 2 --timing
echo "== pytest"
python -m pytest tests/ "$@"
