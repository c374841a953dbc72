"""Start-up and repeated-call cost of ``molconf.predict``, each in fresh interpreters.

Measured, per fresh Python process (``--repeats`` processes, medians reported):

* ``import molconf`` and ``import molconf.prediction`` (wall clock, after one warm-up process
  so the files are in the page cache);
* the first ``molconf.predict`` call on ``--n`` QM9 reference molecules (reads the model file,
  builds the ops), the second call on the same molecules (model cached in the process), and
  a second call after ``clear_model_cache()`` (what every call cost before models were cached);
* which heavy packages the prediction path imported.

    python benchmarks/predict_startup.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "reference" / "qm9_test_sample.sdf"

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import molconf
t1 = time.perf_counter()
import molconf.prediction as P
t2 = time.perf_counter()
from rdkit import Chem
mols = [m for m in Chem.SDMolSupplier(sys.argv[1], removeHs=False)][: int(sys.argv[2])]
for m in mols:
    m.RemoveAllConformers()
def call():
    t = time.perf_counter()
    molconf.predict(mols, num_threads=int(sys.argv[3]))
    return time.perf_counter() - t
first, second = call(), call()
P.clear_model_cache()
reloaded = call()
heavy = [m for m in ("torch_geometric", "torchmetrics", "lightning", "scipy.signal", "e3nn") if m in sys.modules]
print(json.dumps({"import_molconf": t1 - t0, "import_prediction": t2 - t1, "first_call": first,
                  "second_call": second, "call_after_cache_clear": reloaded, "heavy_imports": heavy}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="molecules per call")
    p.add_argument("--repeats", type=int, default=5, help="fresh processes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for predict_startup.md/.json (default: print only)")
    args = p.parse_args(argv)
    runs = []
    for k in range(args.repeats + 1):
        r = subprocess.run([sys.executable, "-c", CHILD, str(SAMPLE), str(args.n), str(args.threads)],
                           capture_output=True, text=True, check=True)
        if k:  # the first process only warms the page cache
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    keys = ["import_molconf", "import_prediction", "first_call", "second_call", "call_after_cache_clear"]
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    lines = [f"# `molconf.predict` start-up and repeated calls ({time.strftime('%Y-%m-%d')})", "",
             "Command: `" + " ".join(["python benchmarks/predict_startup.py", *(sys.argv[1:] if argv is None else argv)])
             + "`", "",
             f"Median of {len(runs)} fresh processes; each call predicts the first {args.n} molecules of "
             f"`datasets/reference/qm9_test_sample.sdf` ({args.threads} torch threads). Wall clock on a shared "
             "2-core machine.", "",
             "| step | seconds |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {med[k]:.3f} |" for k in keys]
    lines += ["", f"Second call / first call: {med['second_call'] / med['first_call']:.2f}; "
                  f"second call with the model re-read / cached: {med['call_after_cache_clear'] / med['second_call']:.2f}.",
              f"Heavy packages imported by the prediction path: {runs[0]['heavy_imports'] or 'none'}."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "predict_startup.md").write_text(text + "\n")
        (out / "predict_startup.json").write_text(json.dumps({"median": med, "runs": runs, "n": args.n,
                                                              "threads": args.threads}, indent=1) + "\n")


if __name__ == "__main__":
    main()
