#!/usr/bin/env bash
# The MLM study (results/mlm), the paper's BERT experiment at CPU scale: all-MiniLM-L6-v2 continued with masked
# language modelling on the shared local sentences (configs/experiment/minilm_mlm_mrl.yaml, 300 steps), as MRL-E
# (every size 12..384 through the tied, sliced MLM head) and as the FF-style baseline at single sizes (FF_DIMS), one
# seed; every model scored on the same held-out masked tokens. Then scripts/mlm_report.py writes the per-size table
# and plot beside the paper's BERT-Base numbers.
#   DATA_DIR=../shared/data scripts/mlm_study.sh [extra train overrides]
# FF_DIMS ("12 24 48 96 192 384": FF at every size), SEED (42), MODELS (a subset, e.g. "mrle ff12"),
# STAGES ("train collect report"), STUDY_DIR (checkpoints and logs), RESULTS_DIR (results/mlm), PAPER (the paper's
# CSV), PY.
#
# Resumable as scripts/study.sh: a finished model's small outputs (metrics, logs, composed config, command; no
# checkpoints) go to $RESULTS_DIR/runs/<model>/ and, with COMMIT=1, are committed alone, so a later start skips it;
# a cut-short training resumes from its newest checkpoint (resume=auto).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/outputs.sh
PY=${PY:-python}
DATA_DIR=${DATA_DIR:?set DATA_DIR to the folder holding text/sst2, text/ag_news and text/snli (../shared/data)}
STUDY_DIR=${STUDY_DIR:-logs/mlm_study}
RESULTS_DIR=${RESULTS_DIR:-results/mlm}
PAPER=${PAPER:-../shared/paper/bert_base_mlm_accuracy.csv}
STAGES=${STAGES:-train collect report}
COMMIT=${COMMIT:-0}
SEED=${SEED:-42}
read -r -a FF_DIMS <<< "${FF_DIMS:-12 24 48 96 192 384}"
if [[ -z ${MODELS:-} ]]; then MODELS="mrle"; for k in "${FF_DIMS[@]}"; do MODELS+=" ff$k"; done; fi
# One thread per run: on the shared 2-core machine two threads made a step 2 to 5 times slower (oversubscribed).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EXTRA=("$@")

head_overrides() {  # mrle | ff<k>
  case $1 in
    mrle) echo "model.head=mrle" ;;
    ff*) echo "model.head=ff model.nesting_dims=[${1#ff}]" ;;
    *) echo "unknown model $1 (mrle or ff<k>)" >&2; exit 2 ;;
  esac
}

committed() { [[ -f $RESULTS_DIR/runs/$1/DONE ]]; }

train_command() {
  # shellcheck disable=SC2046
  printf '%q ' "$PY" scripts/train.py +experiment=minilm_mlm_mrl "paths.data_dir=$DATA_DIR" logger=csv \
    callbacks.progress_bar=none resume=auto callbacks.checkpoint.every_n_train_steps=50 "hydra.run.dir=$STUDY_DIR/$1" \
    "seed=$SEED" $(head_overrides "$1") "${EXTRA[@]}"
}

train_model() {
  local name=$1 dir=$STUDY_DIR/$1
  if committed "$name" || [[ -f $dir/metrics_by_dim.json ]]; then echo "skip training $name (done)"; return; fi
  echo "train $name ($(date -u +%H:%M))"
  mkdir -p "$dir"
  train_command "$name" > "$dir/command.txt"
  eval "$(cat "$dir/command.txt")"
}

collect_model() {  # the small outputs of a finished model into results, committed with COMMIT=1
  local name=$1 dir=$STUDY_DIR/$1 out=$RESULTS_DIR/runs/$1
  if committed "$name" || [[ ! -f $dir/metrics_by_dim.json ]]; then return; fi
  collect_outputs "$dir" "$out" "Study mlm: $name (metrics, logs, config, command)"
}

for name in $MODELS; do
  [[ " $STAGES " == *" train "* ]] && train_model "$name"
  [[ " $STAGES " == *" collect "* ]] && collect_model "$name"
done
if [[ " $STAGES " == *" report "* ]]; then
  "$PY" scripts/mlm_report.py --runs "$RESULTS_DIR/runs" --out "$RESULTS_DIR" --paper "$PAPER"
fi
