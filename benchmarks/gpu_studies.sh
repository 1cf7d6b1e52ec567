#!/usr/bin/env bash
# Every study of the `gpu` preset on real CIFAR, on a GPU machine with no copy of the data and no network:
# the data travels packed (benchmarks/gpu_data.py) in .carry/gpu10 and .carry/gpu100, one per transfer.
#   bash benchmarks/gpu_studies.sh unpack       # after the transfer of .carry/gpu10: unpack CIFAR-10
#   bash benchmarks/gpu_studies.sh [BUDGET_S]   # after .carry/gpu100: unpack CIFAR-100, run every study
# Studies run in order of the claims they test, each given what is left of BUDGET_S (default 480 s); then the
# figures and findings, and results/gpu + figures/gpu + the log packed into $OUT/gpu.tgz.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 STUDYLIB_DATA=$PWD/.carry/data STUDYLIB_RUNS=$PWD/.carry/runs
if [ "${1:-}" = unpack ]; then
  python3 benchmarks/gpu_data.py unpack .carry/gpu10 --to "$STUDYLIB_DATA"; exit
fi
nvidia-smi -L; python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
python3 benchmarks/gpu_data.py unpack .carry/gpu100 --to "$STUDYLIB_DATA" || exit 1
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
tar czf "${OUT:-/tmp}/gpu.tgz" results/gpu figures/gpu
