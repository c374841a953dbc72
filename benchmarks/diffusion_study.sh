#!/usr/bin/env bash
# The diffusion generalisation study at CPU-feasible size (DESIGN §7), then the Jacobian
# analysis of the smallest- and largest-N models on one held-out QM9 molecule; small results
# are copied to benchmarks/results/diffusion/ (the trained networks stay in $RUNS).
# Resumable: finished N are skipped. About an hour on 2 cores.
#   RUNS=$HOME/molconf-runs nohup nice bash benchmarks/diffusion_study.sh > study.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
RUNS=${RUNS:-runs}
STUDY="$RUNS/diffusion_study"
OUT=benchmarks/results/diffusion
SIZES=${SIZES:-10 100 1000 10000}
JACOBIAN_QM9_ID=${JACOBIAN_QM9_ID:-1133}  # a test-split molecule, C[C@@H](O)C[C@@H](C)O: DFT geometry, unseen
export OMP_NUM_THREADS=1
"$MOLCONF" diffusion generalization --sizes $SIZES --steps 3000 --conditioned \
  --n-heldout 20 --n-train-eval 20 --n-samples 4 --threads 1 --out "$STUDY"
mkdir -p "$OUT/generalization"
cp "$STUDY"/summary.json "$STUDY"/config.json "$STUDY"/N*.json "$STUDY"/generalization.png "$OUT/generalization/"
set -- $SIZES
for n in "$1" "${@: -1}"; do
  "$MOLCONF" diffusion jacobian --model "$STUDY/models/N${n}_A.pt" --qm9-id "$JACOBIAN_QM9_ID" \
    --sigmas 0.02 0.05 0.1 0.2 0.5 1.0 2.0 --n-draws 2 --threads 1 --out "$OUT/jacobian_N$n"
done
echo "results in $OUT"
