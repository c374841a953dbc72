#!/usr/bin/env bash
# From a MOSES GFN2-xTB build (molconf build-xtb) to the drug-like models and their tables:
#   merge → cache → RDKit baselines → train ReBind and GTMGC (fine-tuned from QM9) → export +
#   test-split table + model card → GFN2-xTB relaxation benchmark.
# Each step is skipped when its output exists for the data set as it is now (training resumes
# from last.ckpt), so rerun after a kill. Long: run in the background at low priority, e.g.
#   PARTIAL=1 BUILD=~/molconf-runs/moses_xtb nohup bash benchmarks/moses_xtb_pipeline.sh > pipeline.log 2>&1 &
# BUILD: the build folder (default build/moses_xtb); MERGE=1 merges it again over the
# committed datasets/moses_xtb (after the build has grown; merged anyway when that is
# missing; the committed split is extended, not redrawn); PARTIAL=1 merges a stopped build's
# finished shards; ALSO: top-up build folders merged beside BUILD (--also); RUNS: training-run folder
# (default runs/moses_xtb_<molecules>, so a grown data set trains new runs instead of
# resuming the finished ones); XTB_N: molecules of the relaxation benchmark (default 40); JOBS:
# models trained at a time (default 2).
# Rerun after a kill without MERGE=1, or the data changes under the half-trained runs. The
# export stops if the runs' final validation D-MAE now picks the model that is not shipped
# (model_benchmark.py: switch the shipped model, or --keep-shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MOLCONF=${MOLCONF:-.venv/bin/molconf}
BUILD=${BUILD:-build/moses_xtb}
RESULTS=benchmarks/results
DATA=datasets/moses_xtb

echo "== $(date -u +%H:%M:%S) merge"
if [ -n "${MERGE:-}" ] || [ ! -f "$DATA/molecules.sdf.gz" ]; then
  merge=(--merge --out "$BUILD")
  [ -n "${PARTIAL:-}" ] && merge+=(--partial)
  for b in ${ALSO:-}; do merge+=(--also "$b"); done
  # a grown build keeps the committed split: its molecules stay in their parts, listed first
  [ -f "$DATA/split_test.npy" ] && merge+=(--extend-split "$DATA")
  "$MOLCONF" build-xtb "${merge[@]}"
fi
MOLECULES=$("$PY" -c "import json; print(json.load(open('$DATA/build_report.json'))['merged']['molecules'])")
RUNS=${RUNS:-runs/moses_xtb_$MOLECULES}
echo "   $MOLECULES molecules; training runs in $RUNS"
echo "== $(date -u +%H:%M:%S) cache"
nice "$PY" -m molconf.data.prepare moses_xtb --workers 2
echo "== $(date -u +%H:%M:%S) RDKit baselines"
# redone when missing or made on another test split (the split changes when the data grows)
if ! "$PY" - "$RESULTS/moses_xtb_test_rdkit_per_molecule.csv.gz" "$DATA/split_test.npy" <<'PYEOF'
import csv, gzip, sys
import numpy as np
try:
    with gzip.open(sys.argv[1], "rt") as fh:
        done = {int(r["index"]) for r in csv.DictReader(fh)}
except FileNotFoundError:
    sys.exit(1)
sys.exit(0 if done == set(np.load(sys.argv[2]).tolist()) else 1)
PYEOF
then
  nice "$MOLCONF" baselines --dataset moses_xtb --split test --workers 2 --out "$RESULTS"
fi
echo "== $(date -u +%H:%M:%S) training"
# side by side, one thread each: 1.7x the throughput of one after the other (train_cpu_models.sh)
JOBS=${JOBS:-2} MODELS="rebind_moses_xtb_cpu gtmgc_moses_xtb_cpu" RUNS="$RUNS" bash benchmarks/train_cpu_models.sh
echo "== $(date -u +%H:%M:%S) export + table"
nice "$PY" benchmarks/model_benchmark.py --dataset moses_xtb --export --runs "$RUNS"
echo "== $(date -u +%H:%M:%S) GFN2-xTB relaxation from the prediction vs from ETKDG + MMFF"
nice "$PY" benchmarks/xtb_relax.py --dataset moses_xtb --n "${XTB_N:-40}" --out "$RESULTS"
echo "== $(date -u +%H:%M:%S) done"
