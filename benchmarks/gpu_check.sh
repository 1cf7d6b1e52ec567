#!/usr/bin/env bash
# The GPU path, end to end, and its timings: run on a machine with a CUDA GPU from the repo root.
# Needs torch, timm, pandas, pyyaml and tqdm (no install: the package runs from the checkout).
# Real CIFAR need not be there: the gpu-preset timing uses synthetic images of CIFAR's size.
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export STUDYLIB_RUNS=${STUDYLIB_RUNS:-/tmp/studylib-gpu-check/runs} STUDYLIB_RESULTS=${STUDYLIB_RESULTS:-/tmp/studylib-gpu-check/results}
nvidia-smi -L
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
echo "== smoke study on cuda (bf16 autocast)"
python3 -m studylib study --preset smoke --set device=cuda
echo "== gpu preset, CIFAR-sized synthetic data, short schedules"
python3 -m studylib study --preset gpu --set data.pretrain=synthetic --set 'data.probe=[synthetic]' \
  --set data.synthetic_train=50000 --set data.synthetic_test=10000 --set mae.epochs=3 --set wsp.epochs=2 \
  --set probe.epochs=5
echo "== training-step speed, bf16"
python3 benchmarks/benchmark.py --models micro tiny small --batch 512 --precisions bf16
python3 benchmarks/benchmark.py --models B/16 --batch 128 --precisions bf16
