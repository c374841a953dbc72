#!/usr/bin/env bash
# Train (or resume) the CPU-budget models at low priority. Safe to re-run after a kill: each
# run resumes from its last.ckpt; finished runs are skipped.
#   nohup bash benchmarks/train_cpu_models.sh > train_cpu.log 2>&1 &
# RUNS (default: runs) is where run folders go; MODELS picks which configs to train.
# JOBS=N trains N models at a time, each on nproc/N threads (default 1: one after the other on
# all cores). These models use small matrices, so threads scale poorly: on 2 cores the
# moses_xtb ReBind and GTMGC trained side by side (JOBS=2, one thread each) both finished their
# 4,673 steps in 82 min (2026-12-03), where ReBind alone on both threads had taken 70 min
# (2026-11-30): 1.7x the throughput of training them one after the other.
# Each job's output goes to $RUNS/<name>.log when JOBS > 1.
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
RUNS=${RUNS:-runs}
JOBS=${JOBS:-1}

train() {  # one config: resume from last.ckpt if there is one, mark FINISHED when done
  local name=$1 root="$RUNS/$1"
  local last="$root/checkpoints/last.ckpt"
  if [ -f "$root/FINISHED" ]; then echo "$name: finished earlier"; return; fi
  local resume=()
  [ -f "$last" ] && resume=(--ckpt_path "$last")
  nice -n 10 "$MOLCONF" fit --config "configs/$name.yaml" --trainer.default_root_dir "$root" "${resume[@]}"
  mkdir -p "$root" && touch "$root/FINISHED"
}

names=(${MODELS:-rebind_qm9_cpu gtmgc_qm9_cpu rebind_qm9_small_cpu})
if [ "$JOBS" -le 1 ]; then
  for name in "${names[@]}"; do train "$name"; done
  exit 0
fi
threads=$(( $(nproc) / JOBS )); [ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
mkdir -p "$RUNS"
for name in "${names[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "$name: training ($threads threads), log $RUNS/$name.log"
  train "$name" > "$RUNS/$name.log" 2>&1 &
done
wait || true
status=0
for name in "${names[@]}"; do  # a run that stopped early has no FINISHED: say so and fail
  [ -f "$RUNS/$name/FINISHED" ] || { echo "$name: did not finish (see $RUNS/$name.log)"; status=1; }
done
exit $status
