#!/usr/bin/env bash
# The TREC text study (results/trec): all-MiniLM-L6-v2 fine-tuned on TREC's 6 coarse classes with MRL, MRL-E and
# FF-k for k in 12, 24, ..., 384, one recipe (configs/experiment/trec_minilm.yaml, 2 epochs), seed 42: 8 models,
# under an hour on a 2-core CPU. SEEDS="43 44" adds replicas of MRL and of FF at 12, 48 and 384 for noise bars.
# scripts/study.sh does the work (resumable, committing each model with COMMIT=1).
#   TREC=../shared/data/text/trec scripts/trec_study.sh [extra train overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
TREC=${TREC:?set TREC to the folder holding train_5500.label and TREC_10.label}
export STUDY_DIR=${STUDY_DIR:-logs/trec_study} RESULTS_DIR=${RESULTS_DIR:-results/trec}
export EXPERIMENT=trec_minilm DATA=trec DATA_OVERRIDES="data.root=$TREC"
export DIMS="12 24 48 96 192 384" SEEDS=${SEEDS-} NOISE_FF=${NOISE_FF-12 48 384}
export TITLE=${TITLE:-TREC (6 classes), all-MiniLM-L6-v2}
exec scripts/study.sh "$@"
