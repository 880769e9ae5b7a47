#!/usr/bin/env bash
# The CIFAR-10 image-text study (results/align_cifar10): the cifar10_align_minilm dual encoder (convnet image tower,
# locked MiniLM text tower, d = 128) trained with the Matryoshka loss on every prefix 8..128 (mrl) and, with the same
# recipe, without it: FF at the full width (ff128) and FF-k at two small sizes (ff8, ff32). Each model: train (the
# best checkpoint by held-out zero-shot top-1), embed the test split, evaluate zero_shot and cross_modal_retrieval;
# its small outputs (metrics, tables, configs, commands; no checkpoints or embeddings) are copied to
# $RESULTS_DIR/runs/<model>/ and, with COMMIT=1, committed, so a rerun skips the models already done. Then the
# report (scripts/report.py) builds the tables, plots and findings from those files.
#   COMMIT=1 scripts/align_study.sh [extra train overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/outputs.sh
PY=${PY:-python}
STUDY_DIR=${STUDY_DIR:-logs/align_cifar10} RESULTS_DIR=${RESULTS_DIR:-results/align_cifar10}
PLAN="mrl ff128 ff8 ff32" COMMIT=${COMMIT:-0}
MODELS=${MODELS:-$PLAN}  # a subset to work on; the plan stays whole
DATA_ROOT=${DATA_ROOT:-${MRL_DATA_DIR:-data}/cifar10-jpeg.tar.gz}
read -r -a SUBSET <<< "${SUBSET:-data.max_per_class=1000 data.max_test_per_class=500}"
EXTRA=("$@")
head_overrides() { case $1 in mrl) echo "model.head=mrl" ;; ff*) echo "model.head=ff model.nesting_dims=[${1#ff}]" ;; esac; }
# shellcheck disable=SC2086
write_plan "$RESULTS_DIR/runs" $PLAN
for name in $MODELS; do
  dir=$STUDY_DIR/$name out=$RESULTS_DIR/runs/$name
  if [[ -f $out/DONE ]]; then echo "skip $name (committed)"; continue; fi
  if [[ ! -f $dir/metrics_by_dim.csv ]]; then
    echo "train $name ($(date -u +%H:%M))"
    # shellcheck disable=SC2046
    "$PY" scripts/train.py +experiment=cifar10_align_minilm "data.root=$DATA_ROOT" "${SUBSET[@]}" logger=csv \
      resume=auto "hydra.run.dir=$dir" $(head_overrides "$name") "${EXTRA[@]}"
  fi
  best=$(ls "$dir"/checkpoints/best-*.ckpt | head -1)
  if [[ ! -f $dir/embeddings/test/meta.json ]]; then
    echo "embed $name"
    "$PY" scripts/embed.py "ckpt_path=$best" data=image_text "data.root=$DATA_ROOT" "${SUBSET[@]}" 'splits=[test]' \
      dtype=float32 "output_dir=$dir/embeddings" "hydra.run.dir=$dir/embeddings/hydra"
  fi
  if [[ ! -f $dir/eval/DONE ]]; then
    echo "evaluate $name"
    "$PY" scripts/eval.py "embeddings_dir=$dir/embeddings" 'evaluators=[zero_shot,cross_modal_retrieval]' \
      "output_dir=$dir/eval" "hydra.run.dir=$dir/eval/hydra"
    touch "$dir/eval/DONE"
  fi
  collect_outputs "$dir" "$out" "Study align_cifar10: $name (metrics, evaluator tables, configs, commands)"
done
"$PY" scripts/report.py --dir "$RESULTS_DIR/runs" --out "$RESULTS_DIR" --title "CIFAR-10 image-text, convnet + MiniLM"
