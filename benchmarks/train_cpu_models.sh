#!/usr/bin/env bash
# Train (or resume) the CPU-budget ReBind and GTMGC models one after the other, at low
# priority. Safe to re-run after a kill: each run resumes from its last.ckpt; finished runs
# are skipped.
#   nohup bash benchmarks/train_cpu_models.sh > train_cpu.log 2>&1 &
# RUNS (default: runs) is where run folders go; MODELS picks which configs to train.
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
RUNS=${RUNS:-runs}
for name in ${MODELS:-rebind_qm9_cpu gtmgc_qm9_cpu rebind_qm9_small_cpu}; do
  root="$RUNS/$name"
  last="$root/checkpoints/last.ckpt"
  if [ -f "$root/FINISHED" ]; then echo "$name: finished earlier"; continue; fi
  resume=()
  [ -f "$last" ] && resume=(--ckpt_path "$last")
  nice -n 10 "$MOLCONF" fit --config "configs/$name.yaml" --trainer.default_root_dir "$root" "${resume[@]}"
  touch "$root/FINISHED"
done
