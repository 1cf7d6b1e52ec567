#!/usr/bin/env bash
# Every study of the `gpu` preset on real CIFAR, on a GPU machine with no copy of the data and no network:
# CIFAR comes packed (benchmarks/gpu_data.py pack) in $PACKED/gpu10 and $PACKED/gpu100 (PACKED default ./packed).
#   bash benchmarks/gpu_studies.sh unpack      # unpack CIFAR-10 from $PACKED/gpu10
#   bash benchmarks/gpu_studies.sh [SECONDS]   # unpack CIFAR-100 from $PACKED/gpu100, run every study
# Studies run in order of the claims they test, each given what is left of SECONDS (default 480); then the
# figures and findings, and the results and figures packed into $ARCHIVE_DIR/gpu.tgz (default /tmp).
# GPU_STUDIES_SETS="--set KEY=VALUE ..." goes to every command: the tests rehearse the script on the CPU with
# toy sizes that way (`make rehearse`). PYTHON picks the interpreter (default: .venv's, else python3).
set -uo pipefail
PACKED=${PACKED:-$PWD/packed}
PYTHON=${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
read -r -a sets <<< "${GPU_STUDIES_SETS:-}"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 STUDYLIB_DATA=$PACKED/data STUDYLIB_RUNS=$PACKED/runs
export STUDYLIB_RESULTS=${STUDYLIB_RESULTS:-$PWD/results} STUDYLIB_FIGURES=${STUDYLIB_FIGURES:-$PWD/figures}
if [ "${1:-}" = unpack ]; then
  "$PYTHON" benchmarks/gpu_data.py unpack "$PACKED/gpu10" --to "$STUDYLIB_DATA"; exit
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
"$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
"$PYTHON" benchmarks/gpu_data.py unpack "$PACKED/gpu100" --to "$STUDYLIB_DATA" || exit 1
ls "$STUDYLIB_DATA"
deadline=$((SECONDS + ${1:-480}))
for study in default wsp_epochs transfer model_size explore data_size; do
  left=$((deadline - SECONDS))
  if [ $left -lt 20 ]; then echo "== $study: not run, out of time"; continue; fi
  start=$SECONDS
  timeout $left "$PYTHON" -m studylib study "$study" --preset gpu "${sets[@]}" 2>&1 \
    | grep -v "^\[.*epoch [0-9]*/" | tail -n 30
  echo "== $study: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s"
done
"$PYTHON" -m studylib figures --preset gpu "${sets[@]}"
"$PYTHON" -m studylib findings --preset gpu "${sets[@]}"
archive=${ARCHIVE_DIR:-/tmp}/gpu.tgz  # results/gpu*/ and figures/gpu*/ inside, wherever they were written
tar czf "$archive" --transform "s|^${STUDYLIB_RESULTS#/}|results|;s|^${STUDYLIB_FIGURES#/}|figures|" \
  "$STUDYLIB_RESULTS"/gpu* "$STUDYLIB_FIGURES"/gpu* 2>/dev/null
echo "archive: $archive"
