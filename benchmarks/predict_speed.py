"""molconf.predict vs RDKit ETKDG and ETKDG + MMFF: throughput and accuracy, side by side.

On the same QM9 test molecules (a seeded sample, or the whole split with ``--all``), in one
run on this machine:

* ``molconf.predict`` with the default model (RDKit ``Mol`` in, ``Mol`` out: validation,
  featurisation, network, stereo check and repair), batches of 100: with ``workers=2`` (two
  forked processes, one torch thread each) at the default precision (bf16 matrix products
  where the CPU has them) and in float32, and as a default call (one process, 2 threads);
* RDKit ETKDGv3 (one ``EmbedMolecule`` per molecule, seed 42) and ETKDGv3 + MMFF94, each
  timed twice: in one process (how most scripts call it) and in two worker processes (the
  whole machine, as predict uses it);

with D-MAE, D-RMSE and C-RMSD of each against the DFT geometry (failures counted, metrics
over successes). Throughput = molecules / wall-clock second of the whole call, failures
included.

    nice python benchmarks/predict_speed.py --out benchmarks/results [--all] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

import molconf.prediction
from molconf.baselines import embed, mmff_optimize
from molconf.data import load_qm9
from molconf.data.splits import load_split
from molconf import constants as K
from molconf.metrics import aggregate, molecule_metrics

from _timing import cpu_name  # benchmarks/_timing.py, beside this script

SEED = 42
TARGET_SPEEDUP = 20.0


def _rdkit_one(args: tuple[bytes, bool]) -> bytes | None:
    """ETKDG (+ MMFF) of one molecule; a pickled Mol or None (top level: picklable for the pool)."""
    binary, with_mmff = args
    mol, _, _ = embed(Chem.Mol(binary), SEED, random_coords=False)
    if mol is not None and with_mmff:
        mol, _, _ = mmff_optimize(mol)
    return None if mol is None else mol.ToBinary()


def run_rdkit(inputs: list[Chem.Mol], with_mmff: bool, workers: int) -> tuple[list, float]:
    jobs = [(m.ToBinary(), with_mmff) for m in inputs]
    t = time.perf_counter()
    if workers == 1:
        out = [_rdkit_one(j) for j in jobs]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            out = pool.map(_rdkit_one, jobs, chunksize=16)
    seconds = time.perf_counter() - t
    return [None if b is None else Chem.Mol(b) for b in out], seconds


def score(name: str, refs, preds, ids, seconds: float) -> dict:
    per_mol = [molecule_metrics(ref, pred, index=i) for ref, pred, i in zip(refs, preds, ids)]
    row = aggregate(per_mol)
    row.update(method=name, seconds=seconds, mol_per_s=len(refs) / seconds)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="seeded sample of the test split (default 2000)")
    p.add_argument("--all", action="store_true", help="the whole test split")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the one-process run")
    p.add_argument("--workers", type=int, default=2, help="worker processes of predict(workers=...) (default 2)")
    p.add_argument("--model", default="default",
                   help="a shipped model's name or a weights file (default: the default QM9 model)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    store = load_qm9()
    rows, _ = store.positions_of(load_split("qm9", "test"))
    if not args.all:
        rows = np.sort(np.random.default_rng(SEED).choice(rows, size=min(args.n, len(rows)), replace=False))
    refs = [store.mol(int(r)) for r in rows.tolist()]
    ids = [int(store.mol_ids[r]) for r in rows.tolist()]
    inputs = []
    for ref in refs:
        m = Chem.Mol(ref)
        m.RemoveAllConformers()
        inputs.append(m)

    table = []
    model = molconf.prediction.resolve_model(args.model)  # loaded once, outside the timing
    runs = [  # (precision, workers, label); the first is the headline: the ratios refer to it
        ("auto", args.workers, f"{args.workers} worker processes"),
        ("auto", 1, f"1 process, {args.threads} threads: the default call"),
        ("float32", args.workers, f"{args.workers} worker processes, reference arithmetic"),
    ]
    if molconf.prediction.resolve_precision("auto") == "float32":  # no native bf16: "auto" already is float32
        runs.pop()
    for precision, workers, label in runs:
        molconf.prediction.predict(inputs[:10], model=model, num_threads=args.threads, precision=precision)  # warm-up
        t = time.perf_counter()
        preds, report = molconf.prediction.predict(inputs, model=model, batch_size=100, num_threads=args.threads,
                                                precision=precision, return_report=True, workers=workers)
        seconds = time.perf_counter() - t
        table.append(score(f"molconf.predict ({model.name}, {report.precision}, {label})", refs, preds, ids,
                           seconds))
        print(table[-1], flush=True)
    for with_mmff in (False, True):
        for workers in (1, 2):
            preds, seconds = run_rdkit(inputs, with_mmff, workers)
            name = "RDKit ETKDG" + (" + MMFF" if with_mmff else "") + f" ({workers} process{'es' * (workers > 1)})"
            table.append(score(name, refs, preds, ids, seconds))
            print(table[-1], flush=True)

    ours = table[0]["mol_per_s"]
    lines = [
        f"# molconf.predict vs RDKit on {len(refs)} QM9 test molecules (one run)", "",
        f"Command: `nice python benchmarks/predict_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"({'whole test split' if args.all else f'seeded sample, seed {SEED}'}); torch {torch.__version__}; "
        f"load average after the run {os.getloadavg()[0]:.2f} (2 cores); CPU: {cpu_name()}, "
        f"{'native' if molconf.prediction.native_bf16() else 'no native'} bfloat16. Throughput = molecules / wall-clock "
        "second of the whole call, failures included; errors over successful molecules.", "",
        "| method | mol/s | × vs ours | D-MAE (Å) | D-RMSE (Å) | C-RMSD (Å) | stereo | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['method']} | {r['mol_per_s']:.0f} | {ours / r['mol_per_s']:.1f} | {r[K.D_MAE]:.4f} | "
                     f"{r[K.D_RMSE]:.4f} | {r[K.C_RMSD]:.4f} | {r[K.STEREO_OK]:.4f} | {r['n_failed']} |")
    one = next(r for r in table if r["method"] == "RDKit ETKDG (1 process)")
    two = next(r for r in table if r["method"] == "RDKit ETKDG (2 processes)")
    mmff = next(r for r in table if r["method"] == "RDKit ETKDG + MMFF (1 process)")
    lines += ["", f"Goal: ≥ {TARGET_SPEEDUP:.0f}× ETKDG's throughput with lower D-MAE than ETKDG + MMFF. "
                  f"Measured: {ours / one['mol_per_s']:.1f}× ETKDG in one process, {ours / two['mol_per_s']:.1f}× "
                  f"ETKDG on both cores; D-MAE {table[0][K.D_MAE]:.4f} vs {mmff[K.D_MAE]:.4f}."]
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "predict_speed.md").write_text(md)
        (args.out / "predict_speed.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
