"""RDKit baselines: ETKDG and ETKDG + MMFF on a data-set split, with exact metrics.

Any data set of :mod:`molconf.data.load` (``qm9``, ``moses_xtb``, ``geom_drugs``), loaded with
:func:`~molconf.data.load.load_dataset` and split with
:func:`~molconf.data.load.load_dataset_split`; ``--data-root`` is the data set's source
(QM9: XYZ archive, default the ``qm9pack`` wheel; ``moses_xtb``: its ``molecules.sdf.gz``,
whose split files beside it are used; GEOM-DRUGS: the release folder).

Each molecule is embedded once with default ETKDGv3 settings; if that fails it is embedded
again with random starting coordinates. Four methods come out of this:

- ``etkdg``: the default embedding only (its failures count as failures),
- ``etkdg_retry``: default, else the random-coordinate retry,
- ``etkdg+mmff`` / ``etkdg_retry+mmff``: the same followed by MMFF94 optimisation.

Times are wall-clock seconds per molecule in one process (the retry time includes the
failed default attempt; MMFF time includes the embedding). Command line::

    molconf baselines [--dataset qm9|moses_xtb|geom_drugs] [--data-root PATH] --split test
        --out benchmarks/results [--workers 2] [--limit N]

Output stem ``<dataset>_<split>_rdkit`` (``--name``): ``.md``, ``.csv``, ``.json``,
``_per_molecule.csv.gz`` and ``_failures.csv``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem
from tqdm import tqdm

from molconf.data.cache import GraphStore
from molconf.data.load import DATASETS, load_dataset, load_dataset_split
from molconf.metrics import aggregate, molecule_metrics

METHODS = ("etkdg", "etkdg+mmff", "etkdg_retry", "etkdg_retry+mmff")


def embed(mol: Chem.Mol, seed: int, random_coords: bool) -> tuple[Chem.Mol | None, float, str]:
    """One ETKDGv3 embedding of ``mol`` (explicit H): (conformer mol or None, seconds, why)."""
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.useRandomCoords = random_coords
    t = time.perf_counter()
    cid = AllChem.EmbedMolecule(m, params)
    dt = time.perf_counter() - t
    if cid < 0:
        return None, dt, "embedding failed" + (" (random coords)" if random_coords else "")
    return m, dt, ""


def mmff_optimize(mol: Chem.Mol, max_iters: int = 2000) -> tuple[Chem.Mol | None, float, str]:
    """MMFF94 optimisation of a copy: (optimised mol or None, seconds, why)."""
    m = Chem.Mol(mol)
    t = time.perf_counter()
    if not AllChem.MMFFHasAllMoleculeParams(m):
        return None, time.perf_counter() - t, "no MMFF parameters"
    AllChem.MMFFOptimizeMolecule(m, maxIters=max_iters)
    return m, time.perf_counter() - t, ""


def run_molecule(ref: Chem.Mol, seed: int = 42) -> dict[str, tuple[Chem.Mol | None, float, str]]:
    """All four baseline predictions for one reference molecule."""
    out = {}
    first, t_first, why = embed(ref, seed, random_coords=False)
    out["etkdg"] = (first, t_first, why)
    if first is None:
        retry, t_retry, why_retry = embed(ref, seed, random_coords=True)
        out["etkdg_retry"] = (retry, t_first + t_retry, why_retry)
    else:
        out["etkdg_retry"] = out["etkdg"]
    for base in ("etkdg", "etkdg_retry"):
        m, t, why = out[base]
        if m is None:
            out[base + "+mmff"] = (None, t, why)
        else:
            opt, t_opt, why_opt = mmff_optimize(m)
            out[base + "+mmff"] = (opt, t + t_opt, why_opt)
    return out


_STORE: GraphStore | None = None


def _init_worker(folder: str) -> None:
    global _STORE
    _STORE = GraphStore(folder, verify=False)


def _evaluate_row(row: int) -> list[dict]:
    ref = _STORE.mol(row)
    mol_id = int(_STORE.mol_ids[row])
    results = []
    for method, (pred, seconds, why) in run_molecule(ref).items():
        r = molecule_metrics(ref, pred, index=mol_id)
        r.update(method=method, seconds=seconds, reason=why)
        results.append(r)
    return results


def evaluate(store: GraphStore, rows: np.ndarray, workers: int = 0) -> list[dict]:
    """Per-molecule, per-method rows for the given store rows."""
    workers = workers or os.cpu_count() or 1
    ctx = mp.get_context("fork")
    out: list[dict] = []
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(store.folder),)) as pool:
        for rows_of_mol in tqdm(pool.imap(_evaluate_row, rows.tolist(), chunksize=16),
                                total=len(rows), desc="RDKit baselines", mininterval=5):
            out.extend(rows_of_mol)
    return out


def summary_table(per_mol: list[dict]) -> list[dict]:
    table = []
    for method in METHODS:
        rows = [r for r in per_mol if r["method"] == method]
        s = aggregate(rows)
        s.update(method=method, seconds_per_mol=float(np.mean([r["seconds"] for r in rows])))
        table.append(s)
    return table


def write_results(out: Path, name: str, table: list[dict], per_mol: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cols = ["method", "d_mae", "d_rmse", "c_rmsd", "stereo_consistency", "d_mae_per_mol",
            "d_rmse_per_mol", "n_molecules", "n_failed", "seconds_per_mol"]
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    lines = [
        f"# RDKit baselines: {meta['dataset']} {meta['split']} split",
        "",
        f"Command: `{meta['command']}`  ",
        f"Molecules: {meta['n_molecules']} ({meta['n_missing']} of the split are not in the "
        f"cache: dropped at conversion). RDKit {meta['rdkit']}, {meta['workers']} worker "
        f"processes, {meta['seconds']:.0f} s wall time.",
        "",
        "D-MAE / D-RMSE pooled over all atom pairs (H and diagonal included); C-RMSD = mean "
        "heavy-atom GetBestRMS. Failed molecules are excluded from the error columns and "
        "counted in `failed`; stereo = share of successful predictions whose CIP labels "
        "match the reference.",
        "",
        "| method | D-MAE (Å) | D-RMSE (Å) | C-RMSD (Å) | stereo | failed | s / mol |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['method']} | {r['d_mae']:.4f} | {r['d_rmse']:.4f} | {r['c_rmsd']:.4f} | "
                     f"{r['stereo_consistency']:.4f} | {r['n_failed']} / {r['n_molecules']} | "
                     f"{r['seconds_per_mol'] * 1000:.1f} ms |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "table": table}, indent=1) + "\n")
    # per-molecule values (for error-vs-size and other breakdowns), compressed
    with gzip.open(out / f"{name}_per_molecule.csv.gz", "wt", newline="") as fh:
        keys = ["index", "method", "n_atoms", "failed", "d_mae", "d_rmse", "c_rmsd",
                "stereo_consistency", "abs_err_sum", "sq_err_sum", "n_pairs", "seconds"]
        w = csv.DictWriter(fh, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(per_mol)
    failures = [r for r in per_mol if r["failed"]]
    with open(out / f"{name}_failures.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["mol_id", "method", "reason"])
        for r in failures:
            w.writerow([r["index"], r["method"], r["reason"]])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="molconf baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="qm9", choices=DATASETS)
    p.add_argument("--data-root", default=None,
                   help="the data set's source (qm9: XYZ folder/archive, default the qm9pack wheel; "
                   "moses_xtb: molecules.sdf.gz, default datasets/moses_xtb/molecules.sdf.gz)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--split-dir", default=None,
                   help="folder with split_*.npy (default: datasets/<dataset>; moses_xtb: beside "
                   "--data-root if the split files are there)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N molecules of the split")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default=None, help="file stem (default <dataset>_<split>_rdkit)")
    args = p.parse_args(argv)
    import rdkit

    start = time.time()
    store = load_dataset(args.dataset, root=args.data_root, cache_dir=args.cache_dir)
    ids = load_dataset_split(args.dataset, args.split, args.split_dir, args.data_root)
    rows, missing = store.positions_of(ids)
    if args.limit:
        rows = rows[: args.limit]
    per_mol = evaluate(store, rows, args.workers)
    table = summary_table(per_mol)
    meta = {"dataset": args.dataset, "split": args.split, "n_molecules": len(rows), "n_missing": len(missing),
            "rdkit": rdkit.__version__, "workers": args.workers or os.cpu_count(),
            "seconds": time.time() - start,
            "command": "molconf baselines " + " ".join(sys.argv[1:] if argv is None else argv)}
    name = args.name or f"{args.dataset}_{args.split}_rdkit"
    write_results(Path(args.out), name, table, per_mol, meta)
    print((Path(args.out) / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
