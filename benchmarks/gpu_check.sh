#!/usr/bin/env bash
# The GPU path, end to end, and its timings: run on a machine with a CUDA GPU from the repo root.
#   bash benchmarks/gpu_check.sh [SECTION ...]     sections: studies default transfer speed stream (default: all)
# Needs torch, timm, pandas, pyyaml, tqdm, matplotlib and seaborn (no install: the package runs from the
# checkout). Real CIFAR need not be there: the gpu-preset timings use synthetic images of CIFAR's size.
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export STUDYLIB_RUNS=${STUDYLIB_RUNS:-/tmp/studylib-gpu-check/runs} STUDYLIB_RESULTS=${STUDYLIB_RESULTS:-/tmp/studylib-gpu-check/results}
sections=${*:-studies default transfer speed stream}
device=${GPU_CHECK_DEVICE:-cuda}  # cpu: the same commands at toy sizes, to check the script here
cifar_sized=(--set data.pretrain=synthetic --set 'data.probe=[synthetic]' --set data.synthetic_train=50000
             --set data.synthetic_test=10000)
if [ "$device" = cuda ]; then nvidia-smi -L; fi
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
        --set transfer.robustness.test_images=1000
      grep -h '"wall_time_s"\|"images_per_s"' "$STUDYLIB_RUNS"/gpu/{finetune,zeroshot}-*/results.json || true ;;
    speed)
      echo "== training-step speed, bf16"
      python3 benchmarks/benchmark.py --preset gpu --models micro tiny small --batch 512 --precisions bf16
      python3 benchmarks/benchmark.py --preset paper --models B/16 --batch 256 --precisions bf16 --compile ;;
    stream)
      echo "== MAE and WSP on 256 px JPEGs: streamed from shards (decoded on the device) against in memory"
      pool=$STUDYLIB_RUNS/../pool256
      if [ "$device" = cuda ]; then n=20000 sets=(--set model=B/16); else n=64 sets=(--set model=pico); fi
      python3 - "$pool" "$n" <<'PY'  # an image folder of n photo-like 341 x 256 JPEGs, 10 classes
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from studylib.data import synthetic
root, n = Path(sys.argv[1]), int(sys.argv[2])
data, rng = synthetic(n, 1, size=32), np.random.default_rng(0)
for i, (image, label) in enumerate(zip(data.train_images, data.train_labels)):
    big = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((341, 256)), np.int16)
    noisy = np.clip(big + rng.integers(-12, 13, big.shape), 0, 255).astype(np.uint8)
    (root / "train" / f"c{int(label)}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy).save(root / "train" / f"c{int(label)}" / f"{i:06d}.jpg", quality=90)
PY
      python3 -m studylib shards --preset gpu --set data.pretrain="$pool" --out "$pool-shards"
      for form in "$pool" "$pool-shards"; do
        for arm in mae wsp; do
          python3 -m studylib submit "$arm" --preset gpu "${sets[@]}" --set device="$device" \
            --set launch.executor=local \
            --set data.pretrain="$form" --set data.pretrain_fraction=1 --set mae.epochs=1 \
            --set wsp.epochs=1 | tail -n 2
        done
      done
      grep -H '"images_per_s"' "$STUDYLIB_RUNS"/gpu/{mae,wsp}-*/results.json ;;
    *) echo "unknown section $section; allowed: studies default transfer speed stream" >&2; exit 2 ;;
  esac
done
