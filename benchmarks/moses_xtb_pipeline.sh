#!/usr/bin/env bash
# From a MOSES GFN2-xTB build (molconf build-xtb) to the drug-like models and their tables:
#   merge → cache → RDKit baselines → train ReBind and GTMGC (fine-tuned from QM9) → export +
#   test-split table + model card → GFN2-xTB relaxation benchmark.
# Each step is skipped when its output exists (training resumes from last.ckpt), so rerun
# after a kill. Long: run in the background at low priority, e.g.
#   PARTIAL=1 BUILD=~/molconf-runs/moses_xtb nohup bash benchmarks/moses_xtb_pipeline.sh > pipeline.log 2>&1 &
# BUILD: the build folder (default build/moses_xtb); PARTIAL=1 merges a stopped build's
# finished shards; RUNS: training-run folder (default runs); XTB_N: molecules of the
# relaxation benchmark (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MOLCONF=${MOLCONF:-.venv/bin/molconf}
BUILD=${BUILD:-build/moses_xtb}
RUNS=${RUNS:-runs}
RESULTS=benchmarks/results

echo "== $(date -u +%H:%M:%S) merge"
[ -f datasets/moses_xtb/molecules.sdf.gz ] || "$MOLCONF" build-xtb --merge ${PARTIAL:+--partial} --out "$BUILD"
echo "== $(date -u +%H:%M:%S) cache"
nice "$PY" -m molconf.data.prepare moses_xtb --workers 2
echo "== $(date -u +%H:%M:%S) RDKit baselines"
[ -f "$RESULTS/moses_xtb_test_rdkit.json" ] || \
  nice "$MOLCONF" baselines --dataset moses_xtb --split test --workers 2 --out "$RESULTS"
echo "== $(date -u +%H:%M:%S) training"
MODELS="rebind_moses_xtb_cpu gtmgc_moses_xtb_cpu" RUNS="$RUNS" bash benchmarks/train_cpu_models.sh
echo "== $(date -u +%H:%M:%S) export + table"
nice "$PY" benchmarks/model_benchmark.py --dataset moses_xtb --export --runs "$RUNS"
echo "== $(date -u +%H:%M:%S) GFN2-xTB relaxation from the prediction vs from ETKDG + MMFF"
nice "$PY" benchmarks/xtb_relax.py --dataset moses_xtb --n "${XTB_N:-40}" --out "$RESULTS"
echo "== $(date -u +%H:%M:%S) done"
