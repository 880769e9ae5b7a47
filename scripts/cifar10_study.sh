#!/usr/bin/env bash
# The CIFAR-10 reproduction (results/cifar10_24ep): ResNet-18, MRL, MRL-E and FF-k for k in 1, 2, 4, ..., 512,
# one recipe (configs/experiment/cifar10_resnet18_study.yaml, 24 epochs), seed 42; seeds 43 and 44 too for MRL and
# for FF at 2, 8, 64 and 512. scripts/study.sh does the work (resumable, committing each model with COMMIT=1).
#   CIFAR10=/path/to/cifar10-jpeg.tar.gz scripts/cifar10_study.sh [extra train overrides]
# The 12-epoch study of results/cifar10 is this with trainer.max_epochs=12, STUDY_DIR=logs/cifar10_study and
# RESULTS_DIR=results/cifar10.
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR10=${CIFAR10:?set CIFAR10 to the CIFAR-10 archive, ImageFolder root or torchvision folder}
export STUDY_DIR=${STUDY_DIR:-logs/cifar10_24ep} RESULTS_DIR=${RESULTS_DIR:-results/cifar10_24ep}
export EXPERIMENT=cifar10_resnet18_study DATA=cifar10 DATA_OVERRIDES="data.root=$CIFAR10 data.verify_images=false"
export DIMS="1 2 4 8 16 32 64 128 256 512" SEEDS=${SEEDS-43 44} NOISE_FF=${NOISE_FF-2 8 64 512}
export TITLE=${TITLE:-CIFAR-10, ResNet-18, 24 epochs}
exec scripts/study.sh "$@"
