#!/usr/bin/env bash
# The GPU path, end to end, and its timings: run on a machine with a CUDA GPU from the repo root.
#   bash benchmarks/gpu_check.sh [SECTION ...]     sections: studies default transfer speed stream (default: all)
# Needs torch, timm, pandas, pyyaml, tqdm, matplotlib and seaborn (no install: the package runs from the
# checkout; PYTHON picks the interpreter, default .venv's, else python3). Real CIFAR need not be there: the
# gpu-preset timings use synthetic images of CIFAR's size. GPU_CHECK_DEVICE=cpu runs every section's commands at
# toy sizes, to check the script without a GPU (`make rehearse` does).
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export STUDYLIB_RUNS=${STUDYLIB_RUNS:-/tmp/studylib-gpu-check/runs} STUDYLIB_RESULTS=${STUDYLIB_RESULTS:-/tmp/studylib-gpu-check/results}
export STUDYLIB_FIGURES=${STUDYLIB_FIGURES:-/tmp/studylib-gpu-check/figures}
PYTHON=${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
sections=${*:-studies default transfer speed stream}
device=${GPU_CHECK_DEVICE:-cuda}
if [ "$device" = cuda ]; then
  nvidia-smi -L
  images=(--set data.synthetic_train=50000 --set data.synthetic_test=10000)
  smoke=() gpu=() speed=(--models micro tiny small --batch 512) paper=(--batch 256 --compile) n=20000
  stream=(--set model=B/16) robust=(--set transfer.robustness.test_images=1000)
else  # toy sizes: the same commands and keys, seconds of work
  images=(--set data.synthetic_train=64 --set data.synthetic_test=32)
  smoke=(--set model=nano --set data.synthetic_train=64 --set data.synthetic_test=32 --set mae.epochs=1
         --set wsp.epochs=1)
  gpu=(--set model=pico --set studies.seeds=[3] --set mae.batch_size=16 --set wsp.batch_size=16
       --set transfer.finetune.batch_size=16 --set transfer.finetune.min_steps=0
       --set transfer.zeroshot.batch_size=16 --set 'transfer.lowshot.shots=[1]')
  speed=(--models pico --batch 4 --seconds 0.01 --rounds 1) paper=(--batch 2 --seconds 0.01 --rounds 1) n=64
  stream=(--set model=pico --set mae.batch_size=16 --set wsp.batch_size=16)
  robust=(--set transfer.robustness.test_images=16)
fi
cifar_sized=(--set data.pretrain=synthetic --set 'data.probe=[synthetic]' "${images[@]}" "${gpu[@]}")
"$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
for section in $sections; do
  case $section in
    studies)
      for study in explore default model_size data_size wsp_epochs transfer; do
        echo "== $study study, smoke preset, on $device"
        /usr/bin/time -f "%e s" "$PYTHON" -m studylib study $study --preset smoke --set device="$device" \
          "${smoke[@]}" | tail -n 4
      done ;;
    default)
      echo "== default study, gpu preset, CIFAR-sized synthetic data, short schedules"
      "$PYTHON" -m studylib study --preset gpu "${cifar_sized[@]}" --set device="$device" --set mae.epochs=3 \
        --set wsp.epochs=2 ;;
    transfer)
      echo "== transfer suite, gpu preset, CIFAR-sized synthetic data, short schedules"
      /usr/bin/time -f "%e s" "$PYTHON" -m studylib study transfer --preset gpu "${cifar_sized[@]}" \
        --set device="$device" --set mae.epochs=3 \
        --set wsp.epochs=2 --set transfer.finetune.epochs=2 --set transfer.zeroshot.epochs=3 "${robust[@]}"
      grep -h '"wall_time_s"\|"images_per_s"' "$STUDYLIB_RUNS"/gpu/{finetune,zeroshot}-*/results.json || true ;;
    speed)
      echo "== training-step speed, bf16"
      "$PYTHON" benchmarks/benchmark.py --preset gpu --device "$device" "${speed[@]}" --precisions bf16
      "$PYTHON" benchmarks/benchmark.py --preset paper --device "$device" --models B/16 "${paper[@]}" \
        --precisions bf16 ;;
    stream)
      echo "== MAE and WSP on 256 px JPEGs: streamed from shards (decoded on the device) against in memory"
      pool=$STUDYLIB_RUNS/../pool256
      "$PYTHON" - "$pool" "$n" <<'PY'  # an image folder of n photo-like 341 x 256 JPEGs, 10 classes
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
      "$PYTHON" -m studylib shards --preset gpu --set data.pretrain="$pool" --out "$pool-shards"
      for form in "$pool" "$pool-shards"; do
        for arm in mae wsp; do
          "$PYTHON" -m studylib submit "$arm" --preset gpu "${stream[@]}" --set device="$device" \
            --set launch.executor=local \
            --set data.pretrain="$form" --set data.pretrain_fraction=1 --set mae.epochs=1 \
            --set wsp.epochs=1 | tail -n 2
        done
      done
      grep -H '"images_per_s"' "$STUDYLIB_RUNS"/gpu/{mae,wsp}-*/results.json ;;
    *) echo "unknown section $section; allowed: studies default transfer speed stream" >&2; exit 2 ;;
  esac
done
