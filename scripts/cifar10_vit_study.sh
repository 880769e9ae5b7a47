#!/usr/bin/env bash
# The ViT path on CIFAR-10 (results/cifar10_vit), beside the ResNet-18 study: a 6-block ViT-Tiny with 8x8 patches
# (configs/experiment/cifar10_vit.yaml), MRL against FF at the full width (192) and at two small sizes (12, 48),
# seed 42. scripts/study.sh does the work (resumable, committing each model with COMMIT=1; see there).
#   CIFAR10=/path/to/cifar10-jpeg.tar.gz scripts/cifar10_vit_study.sh [extra train overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR10=${CIFAR10:?set CIFAR10 to the CIFAR-10 archive, ImageFolder root or torchvision folder}
export STUDY_DIR=${STUDY_DIR:-logs/cifar10_vit_study} RESULTS_DIR=${RESULTS_DIR:-results/cifar10_vit}
export EXPERIMENT=cifar10_vit DATA=cifar10 DATA_OVERRIDES="data.root=$CIFAR10 data.verify_images=false"
export DIMS="12 24 48 96 192" PLAN="mrl ff192 ff12 ff48"
export TITLE=${TITLE:-CIFAR-10, ViT-Tiny (6 blocks, 8x8 patches), 10 epochs}
exec scripts/study.sh "$@"
