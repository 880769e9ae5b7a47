#!/usr/bin/env bash
# Everything this project measures on one lent GPU, in one command with a fixed time budget:
#   1. train throughput, framework against a bare loop (benchmarks/train_throughput.py): bf16 autocast,
#      channels_last, CIFAR stem, batch 512; eager, then with torch.compile on both sides;
#   2. ResNet-50 at ImageNet scale (benchmarks/model_throughput.py): 224 px, batch 256, synthetic data on the device,
#      bf16 + channels_last, MRL and FF-2048 heads, eager and with torch.compile;
#   3. DDP on one GPU (trainer=ddp, NCCL): a short CIFAR-10 run through scripts/train.py, tested;
#   4. the CIFAR-10 study on the GPU (scripts/cifar10_study_gpu.sh), one trainer and evaluators beside it, until
#      the deadline; every model finished by then lands in $OUT/cifar10_gpu_runs.tar.gz (refreshed as models finish).
#
#   CIFAR10=/path/cifar10-jpeg.tar.gz OUT=/path/out BUDGET_S=560 benchmarks/gpu_session.sh
# PARTS="throughput resnet50 ddp study" picks the parts (a later session that only adds study models: PARTS=study).
# Each part runs on even when an earlier one failed; the exit status is non-zero when any part failed.
# Results: $OUT/session.log, $OUT/throughput_*.json, $OUT/model_throughput_gpu_resnet50.json, $OUT/cifar10_gpu_runs.tar.gz (unpack into results/cifar10_gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${CIFAR10:?set CIFAR10 to the CIFAR-10 archive}"
OUT=${OUT:-logs/gpu_session}
BUDGET_S=${BUDGET_S:-560}          # the whole session, seconds
PY=${PY:-python3}
export WORKERS=${WORKERS:-12}   # loader processes of the trainer
STUDY_MODELS=${STUDY_MODELS:-"mrl ff512 mrle ff8 ff64 ff2 ff32 ff128 ff1 ff4 ff16 ff256"}
EVAL_DRIVERS=${EVAL_DRIVERS:-2}
PARTS=" ${PARTS:-throughput resnet50 ddp study} "
export PY EPOCHS=${EPOCHS:-20} PYTHONUNBUFFERED=1 WANDB_MODE=offline HF_HUB_OFFLINE=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
start=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - start))); }
failed=()
part() {  # part NAME SECONDS COMMAND...: run with a time limit, record a failure, go on
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, $(left)s of the session left)"
  timeout -k 10 "$limit" "$@" || { echo "=== $name FAILED (exit $?)"; failed+=("$name"); }
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"

BENCH=(--root "$CIFAR10" --device cuda --precision bf16 --channels-last --small-input --batch-size 512
       --workers "$WORKERS" --warmup 10 --steps 40)
[[ $PARTS == *" throughput "* ]] && part throughput_eager 90 "$PY" benchmarks/train_throughput.py "${BENCH[@]}" --repeats 3 \
  --json "$OUT/throughput_gpu_bf16.json"
[[ $PARTS == *" throughput "* ]] && part throughput_compile 120 "$PY" benchmarks/train_throughput.py "${BENCH[@]}" --repeats 1 --compile \
  --json "$OUT/throughput_gpu_bf16_compile.json"
[[ $PARTS == *" resnet50 "* ]] && part resnet50_throughput 210 "$PY" benchmarks/model_throughput.py --device cuda \
  --precision bf16 --memory-formats channels_last --compile --heads mrl,ff --batch-size 256 --warmup 10 --steps 30 --repeats 3 \
  --json "$OUT/model_throughput_gpu_resnet50.json"
[[ $PARTS == *" ddp "* ]] && part ddp_one_gpu 90 "$PY" scripts/train.py +experiment=cifar10_resnet18 "data.root=$CIFAR10" data.verify_images=false \
  trainer=ddp trainer.devices=1 model.backbone.small_input=true model.channels_last=true data.batch_size=512 \
  "data.num_workers=$WORKERS" trainer.max_epochs=1 logger=csv hydra.run.dir=logs/ddp_one_gpu

# The study as a pipeline: one trainer has the GPU and the loader workers and trains the models in order; while it
# trains the next model, EVAL_DRIVERS evaluator loops (CPU-bound: 1-NN, the cascades, the SVD baselines) embed,
# evaluate and collect the models already trained (a model's eval lock keeps two off the same one). Whatever is
# collected by the deadline comes back; a trained model not yet evaluated is lost with the machine.
export STUDY_DIR=${STUDY_DIR:-logs/cifar10_study_gpu} RESULTS_DIR=${RESULTS_DIR:-results/cifar10_gpu} MODELS=$STUDY_MODELS
pack() { [[ -d $RESULTS_DIR/runs ]] && tar czf "$OUT/cifar10_gpu_runs.tar.gz.part" -C "$RESULTS_DIR" runs &&
  mv "$OUT/cifar10_gpu_runs.tar.gz.part" "$OUT/cifar10_gpu_runs.tar.gz"; }
if [[ $PARTS != *" study "* ]]; then
  echo "=== done in $(( $(date +%s) - start ))s; failed: ${failed[*]:-none}"; [[ ${#failed[@]} -eq 0 ]]; exit
fi
study_limit=$(( $(left) - 15 ))
echo "=== study: models [$STUDY_MODELS], $EPOCHS epochs, 1 trainer + $EVAL_DRIVERS evaluators, ${study_limit}s"
STAGES=train timeout -k 10 "$study_limit" scripts/cifar10_study_gpu.sh > "$OUT/study_trainer.log" 2>&1 &
trainer=$!
evaluator() {  # passes over the models until one that began after the trainer had finished
  local trainer_done
  while true; do
    kill -0 "$trainer" 2>/dev/null && trainer_done=0 || trainer_done=1
    STAGES="eval collect" WORKERS=2 scripts/cifar10_study_gpu.sh | grep -v "^skip "  # each pass skips most models
    [[ ${PIPESTATUS[0]} == 0 ]] || return 1
    [[ $trainer_done == 1 ]] && return 0
    sleep 5
  done
}
pids=()
for i in $(seq "$EVAL_DRIVERS"); do
  timeout -k 10 "$study_limit" bash -c "$(declare -f evaluator); trainer=$trainer; evaluator" \
    > "$OUT/study_evaluator$i.log" 2>&1 &
  pids+=($!); sleep 2
done
while [[ -n $(jobs -rp) ]]; do sleep 10; pack; done
wait "$trainer"; rc=$?  # 124: stopped at the deadline with models left, which is the plan, not a failure
[[ $rc == 0 || $rc == 124 ]] || { echo "=== study trainer FAILED (exit $rc)"; failed+=(study_trainer); }
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  [[ $rc == 0 || $rc == 124 ]] || { echo "=== study evaluator $((i + 1)) FAILED (exit $rc)"; failed+=("study_evaluator$((i + 1))"); }
done
pack
echo "=== collected: $(ls "$RESULTS_DIR/runs" 2>/dev/null | tr '\n' ' ')"
tail -n 5 "$OUT"/study_*.log
echo "=== done in $(( $(date +%s) - start ))s; failed: ${failed[*]:-none}"
[[ ${#failed[@]} -eq 0 ]]
