"""`make run`: predict conformers for the shipped example molecules, then compare molconf with
RDKit on shipped reference molecules, in a few minutes on two cores.

1. ``molconf.predict`` on ``datasets/examples/molecules.smi`` (SMILES and name per line):
   the conformers go to ``<out>/predicted.sdf``; each molecule is listed as predicted (with
   the model that predicted it and any note) or failed (with the reason).
2. molconf (``molconf.predict`` at its default settings) vs RDKit ETKDGv3 and ETKDGv3 +
   MMFF94 (:mod:`molconf.baselines`, seed 42) on the shipped reference molecules
   (``datasets/reference/*.sdf``: fixed samples of the QM9 and moses_xtb test splits with
   their DFT / GFN2-xTB ground states, written by ``datasets/reference/make_samples.py``).
   Metrics as :mod:`molconf.metrics` computes them (D-MAE pooled over all atoms with H,
   C-RMSD = mean heavy-atom ``GetBestRMS``, stereo consistency; failures counted and left
   out of the means); molecules/s measured in this run.

The table is printed and written to ``<out>/first_run.md`` and ``<out>/first_run.json``.
Nothing outside ``<out>`` is written. ::

    .venv/bin/python benchmarks/first_run.py [--out runs/example] [--n N] [--input FILE.smi]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from rdkit import Chem

import molconf
from molconf import constants as K
from molconf.baselines import embed, mmff_optimize
from molconf.metrics import aggregate, molecule_metrics
from molconf.predict_cli import read_inputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "datasets" / "examples" / "molecules.smi"
REFERENCE = {  # table label -> shipped reference file
    "QM9 test (DFT)": ROOT / "datasets" / "reference" / "qm9_test_sample.sdf",
    "moses_xtb test (GFN2-xTB)": ROOT / "datasets" / "reference" / "moses_xtb_test_sample.sdf",
}
SEED = 42  # ETKDG's random seed (never 0: RDKit treats it specially, DESIGN §3)
MOLCONF, ETKDG, ETKDG_MMFF = "molconf.predict", "RDKit ETKDG", "RDKit ETKDG + MMFF"
METHODS = (MOLCONF, ETKDG, ETKDG_MMFF)


def load_reference(path: str | Path, n: int | None = None) -> list[Chem.Mol]:
    """The first ``n`` (default all) molecules of a reference SDF: explicit H, one conformer,
    stereo tags from the 3D coordinates (as the data caches assign them)."""
    mols = []
    for k, mol in enumerate(Chem.SDMolSupplier(str(path), removeHs=False)):
        if n is not None and len(mols) == n:
            break
        if mol is None:
            raise ValueError(f"{path}: record {k + 1} is unreadable")
        Chem.AssignStereochemistryFrom3D(mol)
        mols.append(mol)
    return mols


def without_conformer(mol: Chem.Mol) -> Chem.Mol:
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    return out


# --------------------------------------------------------------------------- 1. example file
def _shorten(note: str, width: int = 60) -> str:
    """A note's gist for the listing: up to its first parenthesis after the opening words."""
    cut = note.find(" (", 20)
    if 0 < cut <= width:
        return note[:cut] + " …"
    return note if len(note) <= width else note[: width - 3].rsplit(" ", 1)[0] + " …"


def predict_examples(path: Path, out: Path) -> dict:
    """Predict the example file, write ``predicted.sdf``, print one line per molecule."""
    inputs = read_inputs(str(path))
    items, names = inputs.items, inputs.names
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failures are listed below, one per line
        mols, report = molconf.predict(items, return_report=True)
    seconds = time.perf_counter() - t
    for mol, name in zip(mols, names):
        if mol is not None:
            mol.SetProp("_Name", name)
    sdf = out / "predicted.sdf"
    n_ok = molconf.write_sdf(mols, sdf)
    failures = {f.index: f.reason for f in report.failures}
    width = max(len(n) for n in names)
    print(f"1. molconf.predict on {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({len(items)} molecules)\n")
    listing = []
    for i, (mol, name) in enumerate(zip(mols, names)):
        notes = report.notes.get(i, [])
        listing.append({"name": name, "input": items[i] if isinstance(items[i], str) else name,
                        "predicted": mol is not None, "model": report.models.get(i),
                        "atoms": None if mol is None else mol.GetNumAtoms(), "failure": failures.get(i),
                        "notes": notes})
        if mol is None:
            print(f"  FAILED     {name:<{width}}  {failures.get(i, 'no prediction')}")
        else:
            short = "; ".join(_shorten(n) for n in notes)  # in full in first_run.json
            print((f"  predicted  {name:<{width}}  {mol.GetNumAtoms():3d} atoms  {report.models[i]:<15}"
                   + (f"  note: {short}" if short else "")).rstrip())
    print(f"\n  {n_ok} of {len(items)} predicted in {seconds:.1f} s, {len(failures)} failed; "
          f"conformers written to {sdf}\n")
    return {"input": str(path), "n_molecules": len(items), "n_predicted": n_ok, "seconds": seconds,
            "sdf": str(sdf), "molecules": listing}


# --------------------------------------------------------------------------- 2. reference table
def run_molconf(inputs: list[Chem.Mol]) -> tuple[list, float, str]:
    """``molconf.predict`` at its default settings; the models are loaded (and kept by predict's
    per-process cache) by an untimed warm-up call on two molecules."""
    molconf.predict(inputs[:2])
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are counted in the table
        preds, report = molconf.predict(inputs, return_report=True)
    return preds, time.perf_counter() - t, report.model


def run_rdkit(refs: list[Chem.Mol], seed: int = SEED) -> dict[str, tuple[list, float]]:
    """ETKDG and ETKDG + MMFF (the same embedding, then MMFF94), one process; seconds summed
    over molecules (ETKDG + MMFF's include the embedding)."""
    etkdg, mmff, t_etkdg, t_mmff = [], [], 0.0, 0.0
    for ref in refs:
        mol, dt, _ = embed(ref, seed, random_coords=False)
        t_etkdg += dt
        etkdg.append(mol)
        if mol is not None:
            mol, dt, _ = mmff_optimize(mol)
            t_mmff += dt
        mmff.append(mol)
    return {ETKDG: (etkdg, t_etkdg), ETKDG_MMFF: (mmff, t_etkdg + t_mmff)}


def score(refs: list[Chem.Mol], preds: list, seconds: float) -> dict:
    row = aggregate([molecule_metrics(ref, pred, index=i) for i, (ref, pred) in enumerate(zip(refs, preds))])
    row.update(seconds=seconds, mol_per_s=len(refs) / seconds if seconds > 0 else float("nan"))
    return row


def reference_table(n: int | None) -> list[dict]:
    table = []
    for label, path in REFERENCE.items():
        refs = load_reference(path, n)
        print(f"  {label}: {len(refs)} molecules from {path.relative_to(ROOT)} ...", flush=True)
        preds, seconds, used = run_molconf([without_conformer(r) for r in refs])
        rows = {MOLCONF: score(refs, preds, seconds)}
        rows[MOLCONF]["model"] = used
        for method, (mols, secs) in run_rdkit(refs).items():
            rows[method] = score(refs, mols, secs)
        for method in METHODS:
            table.append({"data": label, "method": method, **rows[method]})
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| reference molecules | method | D-MAE (Å) | C-RMSD (Å) | stereo | failed | mol/s |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        method = r["method"] + (f" ({r['model']})" if r.get("model") else "")
        lines.append(f"| {r['data']} | {method} | {r[K.D_MAE]:.3f} | {r[K.C_RMSD]:.3f} | "
                     f"{r[K.STEREO_OK]:.3f} | {r['n_failed']} / {r['n_molecules']} | {r['mol_per_s']:.0f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["",
              "D-MAE: distance-matrix error pooled over all atom pairs (H included); C-RMSD: mean heavy-atom "
              "GetBestRMS (symmetry-aware, rigid alignment); stereo: share of predictions keeping every CIP label "
              "of the reference. Failed molecules are counted and left out of the means. mol/s: molecules per "
              "second measured in this run: molconf.predict = wall clock of one default call (one process, "
              f"{torch.get_num_threads()} torch threads, model loaded beforehand); RDKit = its "
              f"own time per molecule in one process (ETKDGv3 seed {SEED}; MMFF94 from the same embedding). "
              f"{os.cpu_count()} CPUs, load average {load:.1f} after the run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "example", help="output folder (default runs/example)")
    p.add_argument("--n", type=int, default=None,
                   help="reference molecules per data set: the first N of each shipped sample (default: all)")
    p.add_argument("--input", type=Path, default=EXAMPLES, help="molecules to predict (default: the example file)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    examples = predict_examples(args.input.resolve(), args.out)
    print("2. molconf vs RDKit on the shipped reference molecules (errors against the reference "
          "ground states)\n", flush=True)
    table = reference_table(args.n)
    md = markdown(table)
    print("\n" + md)
    (args.out / "first_run.md").write_text(
        f"# molconf first run\n\nCommand: `{' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}`\n\n"
        f"{examples['n_predicted']} of {examples['n_molecules']} example molecules predicted "
        f"(`{examples['sdf']}`).\n\n" + md)
    (args.out / "first_run.json").write_text(json.dumps({"examples": examples, "table": table}, indent=1) + "\n")
    print(f"Written: {args.out / 'predicted.sdf'}, {args.out / 'first_run.md'}, {args.out / 'first_run.json'} "
          f"({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
