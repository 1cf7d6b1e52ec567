#!/usr/bin/env bash
# The GPU path, end to end, and its timings: run on a machine with a CUDA GPU from the repo root.
#   bash benchmarks/gpu_check.sh [SECTION ...]     sections: studies default transfer speed (default: all)
# Needs torch, timm, pandas, pyyaml, tqdm, matplotlib and seaborn (no install: the package runs from the
# checkout). Real CIFAR need not be there: the gpu-preset timings use synthetic images of CIFAR's size.
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export STUDYLIB_RUNS=${STUDYLIB_RUNS:-/tmp/studylib-gpu-check/runs} STUDYLIB_RESULTS=${STUDYLIB_RESULTS:-/tmp/studylib-gpu-check/results}
sections=${*:-studies default transfer speed}
cifar_sized=(--set data.pretrain=synthetic --set 'data.probe=[synthetic]' --set data.synthetic_train=50000
             --set data.synthetic_test=10000)
nvidia-smi -L
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
for section in $sections; do
  case $section in
    studies)
      for study in explore default model_size data_size wsp_epochs transfer; do
        echo "== $study study, smoke preset, on cuda (bf16 autocast)"
        /usr/bin/time -f "%e s" python3 -m studylib study $study --preset smoke --set device=cuda | tail -n 4
      done ;;
    default)
      echo "== default study, gpu preset, CIFAR-sized synthetic data, short schedules"
      python3 -m studylib study --preset gpu "${cifar_sized[@]}" --set mae.epochs=3 --set wsp.epochs=2 ;;
    transfer)
      echo "== transfer suite, gpu preset, CIFAR-sized synthetic data, short schedules"
      /usr/bin/time -f "%e s" python3 -m studylib study transfer --preset gpu "${cifar_sized[@]}" --set mae.epochs=3 \
        --set wsp.epochs=2 --set transfer.finetune.epochs=2 --set transfer.zeroshot.epochs=3 \
        --set transfer.robustness.test_per_class=100
      grep -h '"wall_time_s"\|"images_per_s"' "$STUDYLIB_RUNS"/gpu/{finetune,zeroshot}-*/results.json || true ;;
    speed)
      echo "== training-step speed, bf16"
      python3 benchmarks/benchmark.py --preset gpu --models micro tiny small --batch 512 --precisions bf16
      python3 benchmarks/benchmark.py --preset paper --models B/16 --batch 256 --precisions bf16 --compile ;;
    *) echo "unknown section $section; allowed: studies default transfer speed" >&2; exit 2 ;;
  esac
done
