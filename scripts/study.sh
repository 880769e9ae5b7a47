#!/usr/bin/env bash
# A Matryoshka study: MRL, MRL-E and FF-k for every k of the nesting list, one recipe (an experiment preset),
# seed 42, plus extra seeds for MRL and some FF sizes (the noise bars). Each model: train, embed train/test, every
# evaluator (database = train, queries = test); then the report. The studies of results/ are thin wrappers:
# scripts/cifar10_study.sh (ResNet-18 on CIFAR-10), scripts/trec_study.sh (MiniLM on TREC).
#   EXPERIMENT=trec_minilm DATA=trec DATA_OVERRIDES="data.root=..." DIMS="12 24 48 96 192 384" \
#     STUDY_DIR=logs/trec_study RESULTS_DIR=results/trec scripts/study.sh [extra train overrides]
# SEEDS (extra seeds, beside 42) and NOISE_FF (FF sizes with those seeds) set the replicas; TITLE the report's.
#
# Resumable across machines: a finished model's small outputs (metrics, curves, evaluator tables, configs,
# commands; no checkpoints or embeddings) are copied to $RESULTS_DIR/runs/<model>/ and, with COMMIT=1,
# committed, so a later session skips every model whose outputs are committed and continues with the next.
# Inside a machine, a cut-short training resumes exactly from its newest checkpoint (resume=auto).
# STAGES="train eval collect report" selects the stages (default: all); MODELS="mrl ff8" a subset. Drivers
# started side by side split the models between them (per-model locks). PLAN replaces the planned models (default:
# MRL, MRL-E and every FF-k, with the replicas above); it is written to $RESULTS_DIR/runs/plan.txt, so that the
# report lists each planned model not in yet (STAGES=plan writes only that).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/outputs.sh
PY=${PY:-python}
STUDY_DIR=${STUDY_DIR:?set STUDY_DIR to the folder for checkpoints and embeddings}
RESULTS_DIR=${RESULTS_DIR:?set RESULTS_DIR to the results folder (runs/<model>/ and the report)}
STAGES=${STAGES:-train eval collect report}
COMMIT=${COMMIT:-0}
EXPERIMENT=${EXPERIMENT:?set EXPERIMENT to the training preset (configs/experiment/<name>.yaml)}
DATA=${DATA:?set DATA to the data config the embeddings read (configs/data/<name>.yaml)}
read -r -a DATA_OVERRIDES <<< "${DATA_OVERRIDES:-}"   # where the data is, for training and embedding alike
read -r -a DIMS <<< "${DIMS:?set DIMS to the nesting sizes, e.g. 12 24 48 96 192 384}"
read -r -a SEEDS <<< "${SEEDS-43 44}"          # extra seeds, beside 42, for the noise bars
read -r -a NOISE_FF <<< "${NOISE_FF-}"         # FF sizes trained with those seeds too
FULL=${DIMS[-1]}
if [[ -z ${PLAN:-} ]]; then  # the whole study, what the report counts as missing until it is in
  # in the order trained: what the claims are judged on first (MRL, MRL-E, FF at the full width and at the NOISE_FF
  # sizes, then their seed replicas), the rest of the FF sweep last, so that a study cut short still judges
  PLAN="mrl mrle"
  add_ff() { for k in "$@"; do [[ " $PLAN " == *" ff$k "* ]] || PLAN+=" ff$k"; done; }  # each size once
  add_ff "$FULL" "${NOISE_FF[@]}"
  for s in "${SEEDS[@]}"; do PLAN+=" mrl-seed$s"; for k in "${NOISE_FF[@]}"; do PLAN+=" ff$k-seed$s"; done; done
  add_ff "${DIMS[@]}"
fi
MODELS=${MODELS:-$PLAN}  # what this driver works on, in order
EXTRA=("$@")

head_overrides() {  # mrl | mrle | ff<k>, with an optional -seed<s>
  local base=${1%%-seed*} seed=42
  [[ $1 == *-seed* ]] && seed=${1##*-seed}
  case $base in
    mrl) echo "model.head=mrl seed=$seed" ;;
    mrle) echo "model.head=mrle seed=$seed" ;;
    ff*) echo "model.head=ff model.nesting_dims=[${base#ff}] seed=$seed" ;;
  esac
}

evaluators() {  # what to run on a model; the SVD/random baselines at every size on FF at the full width
  local dims; dims=$(IFS=,; echo "${DIMS[*]}")
  case ${1%%-seed*} in
    mrl|mrle) echo "evaluators=[classification,adaptive_classification,retrieval,adaptive_retrieval]" ;;
    "ff$FULL") echo "evaluators=[classification,retrieval,baselines] baselines.dims=[$dims]" ;;
    ff*) echo "evaluators=[classification,retrieval]" ;;
  esac
}

committed() { [[ -f $RESULTS_DIR/runs/$1/DONE ]]; }

train_model() {
  local name=$1 dir=$STUDY_DIR/$1
  if committed "$name" || [[ -f $dir/metrics_by_dim.csv ]]; then echo "skip training $name (done)"; return; fi
  echo "train $name ($(date -u +%H:%M))"
  # shellcheck disable=SC2046
  "$PY" scripts/train.py "+experiment=$EXPERIMENT" "${DATA_OVERRIDES[@]}" logger=csv \
    resume=auto callbacks.checkpoint.every_n_train_steps=100 "hydra.run.dir=$dir" $(head_overrides "$name") \
    "${EXTRA[@]}"  # the trainer inherits the lock (see locked): it stays held while it runs, even if this driver is killed
}

evaluate_model() {
  local name=$1 dir=$STUDY_DIR/$1 seed
  if committed "$name"; then echo "skip evaluating $name (committed)"; return; fi
  if [[ ! -f $dir/metrics_by_dim.csv ]]; then echo "skip evaluating $name (not trained)"; return; fi
  seed=$(head_overrides "$name"); seed=${seed##*seed=}
  if [[ ! -f $dir/embeddings/test/meta.json ]]; then
    echo "embed $name"
    "$PY" scripts/embed.py "ckpt_path=$dir/checkpoints/last.ckpt" "data=$DATA" "${DATA_OVERRIDES[@]}" \
      "seed=$seed" dtype=float32 "output_dir=$dir/embeddings" "hydra.run.dir=$dir/embeddings/hydra"
  fi
  if [[ ! -f $dir/eval/DONE ]]; then
    echo "evaluate $name"
    # shellcheck disable=SC2046
    "$PY" scripts/eval.py "embeddings_dir=$dir/embeddings" $(evaluators "$name") \
      "output_dir=$dir/eval" "hydra.run.dir=$dir/eval/hydra"
    touch "$dir/eval/DONE"
  fi
}

collect_model() {  # the small outputs of a finished model into results, committed with COMMIT=1
  local name=$1 dir=$STUDY_DIR/$1 out=$RESULTS_DIR/runs/$1
  if committed "$name" || [[ ! -f $dir/eval/DONE ]]; then return; fi
  collect_outputs "$dir" "$out" "Study $(basename "$RESULTS_DIR"): $name (metrics, curves, evaluator tables, configs, commands)"
}

locked() {  # locked NAME PART COMMAND...: COMMAND NAME while holding NAME's PART lock (train | eval), or skip it
  # One process per model and part: drivers running side by side (a trainer and evaluators on a GPU, or a stray
  # driver from an earlier start) split the models between them. The lock stays held by the processes started.
  local name=$1 part=$2; shift 2
  mkdir -p "$STUDY_DIR"
  exec 9>"$STUDY_DIR/.$name.$part.lock"
  if flock -n 9; then "$@" "$name"; else echo "skip $part $name (another process holds it)"; fi
  exec 9>&-
}

evaluate_and_collect() {  # under one lock, so that no driver collects a model another is still evaluating
  [[ " $STAGES " == *" eval "* ]] && evaluate_model "$1"
  [[ " $STAGES " == *" collect "* ]] && collect_model "$1"
  return 0
}

# shellcheck disable=SC2086
write_plan "$RESULTS_DIR/runs" $PLAN
for name in $MODELS; do
  [[ " $STAGES " == *" train "* ]] && locked "$name" train train_model
  [[ " $STAGES " == *" eval "* || " $STAGES " == *" collect "* ]] && locked "$name" eval evaluate_and_collect
done
if [[ " $STAGES " == *" report "* ]]; then
  "$PY" scripts/report.py --dir "$RESULTS_DIR/runs" --out "$RESULTS_DIR" ${TITLE:+--title "$TITLE"}
fi
