#!/usr/bin/env bash
# Issue #25's seed study: ReBind and GTMGC (d_model 128, configs/rebind_qm9_small_cpu.yaml and
# configs/gtmgc_qm9_small_cpu.yaml) trained with SEEDS on QM9 under the short schedule of
# configs/seed_study_qm9.yaml, two runs side by side with one thread each (1.7x the throughput
# of one run on both threads with these small matrices; see train_cpu_models.sh). Resumable:
# each run restarts from its last.ckpt, finished runs are skipped. Then evaluate:
#   nohup bash benchmarks/seed_study.sh > runs/seed_study.log 2>&1 &
#   python benchmarks/seed_study.py --runs runs/seed_study
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
RUNS=${RUNS:-runs/seed_study}
SEEDS=${SEEDS:-"0 1 2"}
RELATIONS=${RELATIONS:-"rebind gtmgc"}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"

train() {  # relation seed
  local root="$RUNS/$1_s$2" extra=()
  [ "$1" = gtmgc ] && extra=(--config configs/gtmgc_qm9_small_cpu.yaml)
  [ -f "$root/FINISHED" ] && { echo "$root: finished earlier"; return; }
  local resume=() last="$root/checkpoints/last.ckpt"
  [ -f "$last" ] && resume=(--ckpt_path "$last")
  nice -n 10 "$MOLCONF" fit --config configs/rebind_qm9_small_cpu.yaml "${extra[@]}" \
      --config configs/seed_study_qm9.yaml --seed_everything "$2" \
      --trainer.default_root_dir "$root" "${resume[@]}" > "$root.log" 2>&1
  mkdir -p "$root" && touch "$root/FINISHED"
}

for seed in $SEEDS; do
  for relation in $RELATIONS; do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
    echo "$(date -u +%H:%M) $relation seed $seed"
    train "$relation" "$seed" &
  done
done
wait
status=0
for seed in $SEEDS; do for relation in $RELATIONS; do
  [ -f "$RUNS/${relation}_s$seed/FINISHED" ] || { echo "${relation}_s$seed did not finish"; status=1; }
done; done
exit $status
