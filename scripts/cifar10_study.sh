#!/usr/bin/env bash
# The CIFAR-10 reproduction (results/cifar10): MRL, MRL-E and FF-k for every k of the nesting list,
# one recipe (configs/experiment/cifar10_resnet18_study.yaml); then each model's train/test
# embeddings and every evaluator (database = train, queries = test); then the report.
#   CIFAR10=/path/to/cifar10-jpeg.tar.gz scripts/cifar10_study.sh [extra train overrides]
# Each model lives in $STUDY_DIR/<name>. Finished steps are skipped and a cut-short training resumes
# from its last.ckpt, so a re-run (or a later session) picks up where the last one stopped.
# STAGES="train eval report" selects the stages (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
STUDY_DIR=${STUDY_DIR:-logs/cifar10_study}
RESULTS_DIR=${RESULTS_DIR:-results/cifar10}
STAGES=${STAGES:-train eval report}
CIFAR10=${CIFAR10:?set CIFAR10 to the CIFAR-10 archive, ImageFolder root or torchvision folder}
DIMS=(1 2 4 8 16 32 64 128 256 512)
MODELS=(mrl mrle); for k in "${DIMS[@]}"; do MODELS+=("ff$k"); done
EXTRA=("$@")
DATA=(data=cifar10 "data.root=$CIFAR10" data.verify_images=false)

overrides() {  # the head of a model name
  case $1 in
    mrl) echo model.head=mrl ;;
    mrle) echo model.head=mrle ;;
    ff*) echo "model.head=ff model.nesting_dims=[${1#ff}]" ;;
  esac
}

evaluators() {  # what to run on a model, and the SVD/random baselines at every size on FF-512
  local dims; dims=$(IFS=,; echo "${DIMS[*]}")
  case $1 in
    mrl|mrle) echo "evaluators=[classification,adaptive_classification,retrieval,adaptive_retrieval]" ;;
    ff512) echo "evaluators=[classification,retrieval,baselines] baselines.dims=[$dims]" ;;
    ff*) echo "evaluators=[classification,retrieval]" ;;
  esac
}

train_model() {
  local name=$1 dir=$STUDY_DIR/$1
  if [[ -f $dir/metrics_by_dim.csv ]]; then echo "skip training $name (done)"; return; fi
  echo "train $name"
  # A run cut short (pre-empted, session ended) continues exactly from its newest checkpoint (resume=auto).
  # shellcheck disable=SC2046
  "$PY" scripts/train.py +experiment=cifar10_resnet18_study "data.root=$CIFAR10" logger=csv resume=auto \
    callbacks.checkpoint.every_n_train_steps=100 "hydra.run.dir=$dir" $(overrides "$name") "${EXTRA[@]}"
}

evaluate_model() {
  local name=$1 dir=$STUDY_DIR/$1
  if [[ ! -f $dir/metrics_by_dim.csv ]]; then echo "skip evaluating $name (not trained)"; return; fi
  if [[ ! -f $dir/embeddings/test/meta.json ]]; then
    echo "embed $name"
    "$PY" scripts/embed.py "ckpt_path=$dir/checkpoints/last.ckpt" "${DATA[@]}" dtype=float32 \
      "output_dir=$dir/embeddings" "hydra.run.dir=$dir/embeddings/hydra"
  fi
  if [[ ! -f $dir/eval/DONE ]]; then
    echo "evaluate $name"
    # shellcheck disable=SC2046
    "$PY" scripts/eval.py "embeddings_dir=$dir/embeddings" $(evaluators "$name") \
      "output_dir=$dir/eval" "hydra.run.dir=$dir/eval/hydra"
    touch "$dir/eval/DONE"
  fi
}

for name in "${MODELS[@]}"; do
  [[ " $STAGES " == *" train "* ]] && train_model "$name"
  [[ " $STAGES " == *" eval "* ]] && evaluate_model "$name"
done
if [[ " $STAGES " == *" report "* ]]; then
  "$PY" scripts/report.py --study-dir "$STUDY_DIR" --out "$RESULTS_DIR"
fi
