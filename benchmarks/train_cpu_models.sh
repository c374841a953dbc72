#!/usr/bin/env bash
# Train (or resume) the CPU-budget ReBind and GTMGC models one after the other, at low
# priority. Safe to re-run after a kill: each run resumes from its last.ckpt.
#   nohup bash benchmarks/train_cpu_models.sh > runs/train_cpu.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
for name in ${MODELS:-rebind_qm9_cpu gtmgc_qm9_cpu}; do
  last="runs/$name/checkpoints/last.ckpt"
  done_flag="runs/$name/FINISHED"
  if [ -f "$done_flag" ]; then echo "$name: finished earlier"; continue; fi
  resume=()
  [ -f "$last" ] && resume=(--ckpt_path "$last")
  nice -n 10 "$MOLCONF" fit --config "configs/$name.yaml" "${resume[@]}"
  touch "$done_flag"
done
