#!/usr/bin/env bash
# Every study of the `gpu` preset on real CIFAR, on a GPU machine with no copy of the data and no network:
# CIFAR comes packed (benchmarks/gpu_data.py pack) in $PACKED/gpu10 and $PACKED/gpu100 (PACKED default ./packed).
#   bash benchmarks/gpu_studies.sh unpack      # unpack CIFAR-10 from $PACKED/gpu10
#   bash benchmarks/gpu_studies.sh [SECONDS]   # unpack CIFAR-100 from $PACKED/gpu100, run every study
# Studies run in order of the claims they test, each given what is left of SECONDS (default 480); then the
# figures and findings, and results/gpu + figures/gpu packed into $ARCHIVE_DIR/gpu.tgz (default /tmp).
set -uo pipefail
PACKED=${PACKED:-$PWD/packed}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 STUDYLIB_DATA=$PACKED/data STUDYLIB_RUNS=$PACKED/runs
if [ "${1:-}" = unpack ]; then
  python3 benchmarks/gpu_data.py unpack "$PACKED/gpu10" --to "$STUDYLIB_DATA"; exit
fi
nvidia-smi -L; python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
python3 benchmarks/gpu_data.py unpack "$PACKED/gpu100" --to "$STUDYLIB_DATA" || exit 1
ls "$STUDYLIB_DATA"
deadline=$((SECONDS + ${1:-480}))
for study in default wsp_epochs transfer model_size explore data_size; do
  left=$((deadline - SECONDS))
  if [ $left -lt 20 ]; then echo "== $study: not run, out of time"; continue; fi
  start=$SECONDS
  timeout $left python3 -m studylib study "$study" --preset gpu 2>&1 | grep -v "^\[.*epoch [0-9]*/" | tail -n 30
  echo "== $study: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s"
done
python3 -m studylib figures --preset gpu
python3 -m studylib findings --preset gpu
tar czf "${ARCHIVE_DIR:-/tmp}/gpu.tgz" results/gpu figures/gpu
