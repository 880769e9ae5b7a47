#!/usr/bin/env bash
# The CIFAR-10 study of scripts/cifar10_study.sh on one GPU, in one command: the CIFAR stem (3x3 conv, no
# max-pool), bf16 autocast, channels_last, batch 512 (LR scaled linearly from 0.1 per 128 images), 60 epochs.
# Same models, seeds, evaluators and output layout, into results/cifar10_gpu/ (labelled apart from the CPU runs).
#   CIFAR10=/path/to/cifar10-jpeg.tar.gz scripts/cifar10_study_gpu.sh [extra train overrides]
# EPOCHS, BATCH and WORKERS (loader processes) change the recipe's length, batch and loading; MODELS a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
export STUDY_DIR=${STUDY_DIR:-logs/cifar10_study_gpu}
export RESULTS_DIR=${RESULTS_DIR:-results/cifar10_gpu}
export TITLE=${TITLE:-CIFAR-10, ResNet-18 (CIFAR stem, bf16, one GPU), ${EPOCHS:-60} epochs}
exec scripts/cifar10_study.sh trainer=gpu model.backbone.small_input=true model.channels_last=true \
  trainer.precision=bf16-mixed "data.batch_size=${BATCH:-512}" "data.num_workers=${WORKERS:-8}" \
  "trainer.max_epochs=${EPOCHS:-60}" "$@"
