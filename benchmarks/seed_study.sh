#!/usr/bin/env bash
# Issue #25's seed study: ReBind and GTMGC (d_model 128) trained with several seeds, two runs side
# by side with one thread each (1.7x the throughput of one run on both threads with these small
# matrices; see train_cpu_models.sh). Resumable: each run restarts from its last.ckpt, finished
# runs are skipped. Runs go to $RUNS/<study>/<relation>_s<seed>.
#   qm9       configs/rebind_qm9_small_cpu.yaml (+ gtmgc_qm9_small_cpu.yaml) under the short
#             schedule of configs/seed_study_qm9.yaml
#   moses_xtb configs/{rebind,gtmgc}_moses_xtb_cpu.yaml + seed_study_moses_xtb.yaml, fine-tuned from
#             the same relation and seed's qm9 run (train qm9 first)
# Relations: rebind, gtmgc (gradient through the cache conformer, as GTMGC's reference),
# gtmgcdetached (configs/gtmgc_detached.yaml, the ablation) and rebindbf16 (ReBind trained in bf16
# autocast, --trainer.precision bf16-mixed: does the faster step train as well?); on moses_xtb also
# rebindpe60 (all 60 Laplacian eigenvectors of the largest molecule instead of 32, fine-tuned from
# the same seed's QM9 rebind run: what the truncation costs). Then score them:
#   nohup bash benchmarks/seed_study.sh > runs/seed_study.log 2>&1 &
#   STUDIES=moses_xtb RELATIONS="rebind gtmgc" nohup bash benchmarks/seed_study.sh >> runs/seed_study.log 2>&1 &
#   python benchmarks/seed_study.py --runs runs/seed_study/qm9 --dataset qm9
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
RUNS=${RUNS:-runs/seed_study}
STUDIES=${STUDIES:-qm9}
SEEDS=${SEEDS:-"0 1 2"}
RELATIONS=${RELATIONS:-"rebind gtmgc"}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

configs() {  # study relation seed: the --config / init_from arguments of one run
  local base=gtmgc
  [[ "$2" == rebind* ]] && base=rebind
  case "$1" in
    qm9) echo "--config configs/rebind_qm9_small_cpu.yaml"
         [ "$base" = gtmgc ] && echo "--config configs/gtmgc_qm9_small_cpu.yaml"
         echo "--config configs/seed_study_qm9.yaml" ;;
    moses_xtb) local from=$2
               [[ "$2" == rebindpe* ]] && from=rebind  # the same QM9 network, more eigenvectors
               echo "--config configs/${base}_moses_xtb_cpu.yaml --config configs/seed_study_moses_xtb.yaml"
               echo "--model.init_args.init_from $RUNS/qm9/${from}_s$3/checkpoints/last.ckpt" ;;
    *) echo "unknown study $1" >&2; return 1 ;;
  esac
  [ "$2" = gtmgcdetached ] && echo "--config configs/gtmgc_detached.yaml"
  [ "$2" = rebindbf16 ] && echo "--trainer.precision bf16-mixed"
  if [[ "$2" == rebindpe* ]]; then  # rebindpe60: a Laplacian encoding of 60 eigenvectors
    echo "--model.init_args.model.init_args.pe_dim ${2#rebindpe} --data.init_args.pe_dim ${2#rebindpe}"
  fi
  return 0
}

train() {  # study relation seed
  local root="$RUNS/$1/$2_s$3" args
  args=$(configs "$1" "$2" "$3") || return 1
  [ -f "$root/FINISHED" ] && { echo "$root: finished earlier"; return; }
  local resume=() last="$root/checkpoints/last.ckpt"
  [ -f "$last" ] && resume=(--ckpt_path "$last")
  # shellcheck disable=SC2086  # args: word-split on purpose
  nice -n 10 "$MOLCONF" fit $args --seed_everything "$3" --trainer.default_root_dir "$root" "${resume[@]}" \
      > "$root.log" 2>&1
  mkdir -p "$root" && touch "$root/FINISHED"
}

for study in $STUDIES; do mkdir -p "$RUNS/$study"; done
for study in $STUDIES; do
  for seed in $SEEDS; do
    for relation in $RELATIONS; do
      while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
      echo "$(date -u +%H:%M) $study $relation seed $seed"
      train "$study" "$relation" "$seed" &
    done
  done
done
wait
status=0
for study in $STUDIES; do for seed in $SEEDS; do for relation in $RELATIONS; do
  [ -f "$RUNS/$study/${relation}_s$seed/FINISHED" ] || { echo "$study ${relation}_s$seed did not finish"; status=1; }
done; done; done
exit $status
