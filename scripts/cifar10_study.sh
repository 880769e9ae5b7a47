#!/usr/bin/env bash
# The CIFAR-10 reproduction (results/cifar10): train MRL, MRL-E and FF-k for every k of the nesting
# list with one recipe (configs/experiment/cifar10_resnet18_study.yaml). Each model goes to
# $STUDY_DIR/<name>; a model whose metrics_by_dim.csv exists is skipped and one with a last.ckpt
# resumes from it, so a re-run picks up where the last one stopped.
#   CIFAR10=/path/to/cifar10-jpeg.tar.gz scripts/cifar10_study.sh [extra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
STUDY_DIR=${STUDY_DIR:-logs/cifar10_study}
CIFAR10=${CIFAR10:?set CIFAR10 to the CIFAR-10 archive, ImageFolder root or torchvision folder}
DIMS=(1 2 4 8 16 32 64 128 256 512)

run() {  # name, overrides...
  local name=$1; shift
  if [[ -f "$STUDY_DIR/$name/metrics_by_dim.csv" ]]; then echo "skip $name (done)"; return; fi
  local resume=()
  # A run cut short (pre-empted, session ended) continues from its last checkpoint.
  if [[ -f "$STUDY_DIR/$name/checkpoints/last.ckpt" ]]; then resume=("ckpt_path=$STUDY_DIR/$name/checkpoints/last.ckpt"); fi
  echo "train $name ${resume[*]}"
  "$PY" scripts/train.py +experiment=cifar10_resnet18_study "data.root=$CIFAR10" logger=csv \
    callbacks.refresh_rate=50 "hydra.run.dir=$STUDY_DIR/$name" "$@" "${resume[@]}" "${EXTRA[@]}"
}

EXTRA=("$@")
run mrl model.head=mrl
run mrle model.head=mrle
for k in "${DIMS[@]}"; do run "ff$k" model.head=ff "model.nesting_dims=[$k]"; done
