# Sourced by the study drivers (scripts/study.sh, align_study.sh, mlm_study.sh); defines one function.
#
# collect_outputs RUN_DIR OUT_DIR MESSAGE: copy a finished model's small outputs (csv, json, md, yaml, txt, log;
# never checkpoints, W&B folders or .npy embeddings) from RUN_DIR into a fresh OUT_DIR, mark it DONE with the time,
# and, when COMMIT=1, commit exactly OUT_DIR with MESSAGE. The commit is retried: another git command in the same
# checkout (a person working there, a second driver) may hold the index lock for a moment.
collect_outputs() {
  local dir=$1 out=$2 message=$3 try
  rm -rf "$out" && mkdir -p "$out" && out=$(realpath "$out")
  (cd "$dir" && find . \( -name checkpoints -o -name wandb -o -name '*.npy' \) -prune -o -type f \
      \( -name '*.csv' -o -name '*.json' -o -name '*.md' -o -name '*.yaml' -o -name '*.txt' -o -name '*.log' \) \
      -print0 | xargs -0 -I{} cp --parents {} "$out/")
  date -u +%Y-%m-%dT%H:%M:%SZ > "$out/DONE"
  [[ ${COMMIT:-0} == 1 ]] || return 0
  for try in 1 2 3 4 5 6; do
    if (cd "$out" && git add . && git commit -q -m "$message" -- .); then echo "committed $out"; return 0; fi
    sleep $((try * 5))
  done
  echo "could not commit $out: commit it by hand" >&2
}
