"""Impossible bonds in ``molconf.predict`` output, with and without the bond guard.

For each test split, side by side in one run on the same molecules:

* the reference geometries themselves (the bounds must hold for every one of them);
* ``molconf.predict(..., repair_bonds=False)``: the network's output after stereo repair;
* ``molconf.predict(...)`` (default: the bond guard of :mod:`molconf.bond_guard` on);

each with the molecules holding at least one bond outside the bounds, D-MAE, D-RMSE, C-RMSD,
stereo consistency, failures and throughput (wall clock, 2 threads, one process).

    python benchmarks/bond_guard.py                       # full QM9 and moses_xtb test splits
    python benchmarks/bond_guard.py --limit 200 --out /tmp/bg   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from rdkit import Chem

import molconf
from molconf.bond_guard import TOLERANCE, impossible_bonds
from molconf.data.load import load_dataset, load_dataset_split
from molconf.metrics import aggregate, molecule_metrics

sys.path.insert(0, str(Path(__file__).parent))
from _timing import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def references(dataset: str, limit: int | None) -> list[Chem.Mol]:
    store = load_dataset(dataset)
    rows, _ = store.positions_of(load_dataset_split(dataset, "test"))
    rows = rows[:limit] if limit else rows
    mols = []
    for r in rows.tolist():
        m = store.mol(int(r))
        m.SetIntProp("molconf_id", int(store.mol_ids[r]))
        mols.append(m)
    return mols


def with_bad_bonds(mols) -> int:
    return sum(1 for m in mols if m is not None and impossible_bonds(m))


def row(name: str, refs, preds, seconds: float | None, report=None) -> dict:
    per_mol = [molecule_metrics(ref, pred, ref.GetIntProp("molconf_id")) for ref, pred in zip(refs, preds)]
    out = aggregate(per_mol)
    out.update(method=name, with_impossible_bond=with_bad_bonds(preds),
               ms_per_mol=None if seconds is None else 1000 * seconds / len(refs))
    if report is not None:
        notes = [n for ns in report.notes.values() for n in ns]
        out["repaired"] = sum(1 for n in notes if n.startswith("bond guard") and "repaired" in n)
        out["still_bad_after_repair"] = sum(1 for n in notes if "still out of bounds" in n)
        out["models"] = dict(Counter(report.models.values()))
    return out


def run_dataset(dataset: str, limit: int | None, threads: int, chunk: int = 500) -> list[dict]:
    """Both settings on the same molecules, alternating chunk by chunk (and which goes first), so
    load from other work on the machine falls on both alike."""
    refs = references(dataset, limit)
    inputs = []
    for ref in refs:
        m = Chem.Mol(ref)
        m.RemoveAllConformers()
        inputs.append(m)
    molconf.predict(inputs[:20], num_threads=threads)  # loads the models: not per-molecule cost
    settings = {"molconf.predict(repair_bonds=False)": False, "molconf.predict (default: bond guard)": True}
    preds = {name: [] for name in settings}
    seconds = dict.fromkeys(settings, 0.0)
    reports = {name: molconf.PredictionReport(model="") for name in settings}
    for k, start in enumerate(range(0, len(inputs), chunk)):
        order = list(settings) if k % 2 == 0 else list(settings)[::-1]
        for name in order:
            t = time.perf_counter()
            out, report = molconf.predict(inputs[start : start + chunk], batch_size=100, num_threads=threads,
                                          repair_bonds=settings[name], return_report=True)
            seconds[name] += time.perf_counter() - t
            preds[name] += out
            for i, notes in report.notes.items():
                reports[name].notes[start + i] = notes
            reports[name].models.update({start + i: m for i, m in report.models.items()})
    rows = [row("reference geometry", refs, refs, None)]
    rows += [row(name, refs, preds[name], seconds[name], reports[name]) for name in settings]
    return rows


def markdown(results: dict, command: str) -> str:
    lines = [f"# Impossible bonds in `molconf.predict` output ({results['date']})", "",
             f"Bounds: covalent radii sum × bond-order scale ± {TOLERANCE:.0%} (`molconf/bond_guard.py`). "
             f"CPU: {results['cpu']}, {results['threads']} torch threads, one process; the two `predict` settings "
             "alternate in chunks of 500 molecules (which goes first alternates too), so load from other jobs on "
             "the 2 cores falls on both alike; compare ms/mol within a table.", "",
             f"Command: `{command}`", ""]
    for dataset, rows in results["datasets"].items():
        lines += [f"## {dataset} test split ({rows[0]['n_molecules']} molecules)", "",
                  "| method | molecules with an impossible bond | D-MAE | D-RMSE | C-RMSD | stereo | failed | ms/mol | repaired |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ms = "–" if r["ms_per_mol"] is None else f"{r['ms_per_mol']:.1f}"
            lines.append(f"| {r['method']} | {r['with_impossible_bond']} | {r['d_mae']:.4f} | {r['d_rmse']:.4f} | "
                         f"{r['c_rmsd']:.4f} | {r['stereo_consistency']:.4f} | {r['n_failed']} | {ms} | "
                         f"{r.get('repaired', '–')} |")
        models = rows[-1].get("models")
        lines += ["", f"Models used (default routing): {models}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["qm9", "moses_xtb"])
    p.add_argument("--limit", type=int, help="first N test molecules only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "threads": args.threads, "datasets": {}}
    for dataset in args.datasets:
        results["datasets"][dataset] = run_dataset(dataset, args.limit, args.threads)
        print(json.dumps(results["datasets"][dataset], indent=1), flush=True)
    command = "python benchmarks/bond_guard.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bond_guard.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "bond_guard.md").write_text(markdown(results, command.strip()) + "\n")
    print(markdown(results, command.strip()))


if __name__ == "__main__":
    main()
