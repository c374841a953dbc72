#!/usr/bin/env bash
# The diffusion generalisation study (DESIGN §7, molconf.diffusion.generalization), redone with its
# controls: for each N, two replicas of A and of B (every network its own initialisation and noise),
# the same-data and untrained controls, 100 held-out molecules x 4 samples, steps growing with N
# (at least STEPS, at least EPOCHS passes over the data). Both variants: the paper's blind,
# bias-free denoiser with the Kadkhodaie-Simoncelli sampler, and the noise-conditioned one with DDIM.
# Then the Jacobian analysis of every N's A0 network on one held-out QM9 molecule (normal modes at the
# force field's minimum nearest each sample).
# Small results are copied to benchmarks/results/diffusion/<variant>/ (networks stay in $RUNS).
# Resumable: finished N are skipped, trained networks reused.
#   RUNS=$HOME/molconf-runs nohup nice bash benchmarks/diffusion_study.sh > study.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
MOLCONF=${MOLCONF:-.venv/bin/molconf}
RUNS=${RUNS:-runs}
OUT=${OUT:-benchmarks/results/diffusion}
SIZES=${SIZES:-1 10 100 1000 10000}
STEPS=${STEPS:-8000}   # the memorisation probe's budget (benchmarks/results/diffusion/memorisation.md)
LAYERS=${LAYERS:-8}    # 4 layers never memorised one molecule; 8 did (0.04 Å at N = 1)
BATCH=${BATCH:-8}
EPOCHS=${EPOCHS:-20}
MAX_STEPS=${MAX_STEPS:-20000}
VARIANTS=${VARIANTS:-blind conditioned}
JACOBIAN_QM9_ID=${JACOBIAN_QM9_ID:-1133}  # a test-split molecule, C[C@@H](O)C[C@@H](C)O: DFT geometry, unseen
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for variant in $VARIANTS; do
  study="$RUNS/diffusion_study_$variant"
  flag=(); [ "$variant" = conditioned ] && flag=(--conditioned)
  "$MOLCONF" diffusion generalization --sizes $SIZES --steps "$STEPS" --epochs "$EPOCHS" --max-steps "$MAX_STEPS" \
    --replicas 2 --layers "$LAYERS" --batch-size "$BATCH" "${flag[@]}" --n-heldout 100 --n-train-eval 20 --n-samples 4 --threads 1 --out "$study"
  mkdir -p "$OUT/$variant"
  cp "$study"/summary.json "$study"/config.json "$study"/N*.json "$study"/*.png "$OUT/$variant/"
  for n in $SIZES; do  # d_eff against sigma at every N
    "$MOLCONF" diffusion jacobian --model "$study/models/N${n}_A0.pt" --qm9-id "$JACOBIAN_QM9_ID" \
      --sigmas 0.02 0.05 0.1 0.2 0.5 1.0 2.0 --n-draws 2 --threads 1 --out "$OUT/$variant/jacobian_N$n"
  done
done
echo "results in $OUT"
