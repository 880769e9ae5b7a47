# Sourced by the study drivers (scripts/study.sh, align_study.sh, mlm_study.sh).
#
# collect_outputs RUN_DIR OUT_DIR MESSAGE: copy a finished model's small outputs (csv, json, md, yaml, txt, log;
# never checkpoints, W&B folders or .npy embeddings) from RUN_DIR into a fresh OUT_DIR, mark it DONE with the time,
# and, when COMMIT=1, commit exactly OUT_DIR with MESSAGE.
collect_outputs() {
  local dir=$1 out=$2 message=$3
  rm -rf "$out" && mkdir -p "$out" && out=$(realpath "$out")
  (cd "$dir" && find . \( -name checkpoints -o -name wandb -o -name '*.npy' \) -prune -o -type f \
      \( -name '*.csv' -o -name '*.json' -o -name '*.md' -o -name '*.yaml' -o -name '*.txt' -o -name '*.log' \) \
      -print0 | xargs -0 -I{} cp --parents {} "$out/")
  date -u +%Y-%m-%dT%H:%M:%SZ > "$out/DONE"
  commit_path "$out" "$message"
}

# write_plan RUNS_DIR MODEL...: the models the study plans, one per line, in RUNS_DIR/plan.txt (the report lists
# those not in yet under "Missing"), committed with COMMIT=1 when it changed. Written whole and then moved into
# place, since drivers started side by side write it at once.
write_plan() {
  local runs=$1 tmp; shift
  mkdir -p "$runs" && tmp=$(mktemp "$runs/.plan.XXXXXX")
  printf '%s\n' "$@" > "$tmp"
  if cmp -s "$tmp" "$runs/plan.txt"; then rm -f "$tmp"; else mv "$tmp" "$runs/plan.txt"; fi
  commit_path "$runs/plan.txt" "Study $(basename "$(dirname "$(realpath "$runs")")"): plan ($# models)"
}

# commit_path PATH MESSAGE: when COMMIT=1 and PATH (a file or folder) has changes, commit exactly PATH. Retried:
# another git command in the same checkout (a person working there, a second driver) may hold the index lock.
commit_path() {
  local path dir base try
  [[ ${COMMIT:-0} == 1 ]] || return 0
  path=$(realpath "$1") dir=$(dirname "$path") base=$(basename "$path")
  for try in 1 2 3 4 5 6; do
    if [[ -z $(git -C "$dir" status --porcelain -- "$base") ]]; then return 0; fi
    if (cd "$dir" && git add -- "$base" && git commit -q -m "$2" -- "$base"); then echo "committed $path"; return 0; fi
    sleep $((try * 5))
  done
  echo "could not commit $path: commit it by hand" >&2
}
