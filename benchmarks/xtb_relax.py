"""GFN2-xTB optimisation started from a molconf prediction vs from RDKit ETKDG + MMFF.

For each test molecule, three starting geometries: the model's prediction (``molconf.predict``,
no relaxation), the prediction after MMFF94, and
ETKDGv3 (seed 42) + MMFF94; with ``--correction`` (the shipped one: what ``relax_with="xtb"``
does), each MMFF94 start also after the learned GFN2-xTB correction of MMFF94
(:mod:`molconf.ground_state.prerelax`); with ``--dataset``, a control as well: the data set's own GFN2-xTB
minimum after MMFF94, i.e. the best conformer any start could find, put through the same force
field (it shows how many steps the MMFF → GFN2-xTB relaxation alone costs).
Each is optimised with GFN2-xTB by ``molconf.ground_state.xtb.xtb_relax`` (the data protocol's optimiser, fmax and step limit).
Reported: optimiser steps and wall time of each start, how often each converges, keeps its
bond graph, and reaches the lower final energy (energies within ``--tie-kcal`` count as the
same minimum), per molecule against ETKDG + MMFF. Time to make the start is reported separately.

    nice python benchmarks/xtb_relax.py --dataset moses_xtb --n 100 --out benchmarks/results \
        --correction molconf/weights/moses_xtb_gfn2_correction_dihedral.pt
    python benchmarks/xtb_relax.py --smiles-file my.smi --model default --n 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from ase.units import Hartree as EV_PER_HARTREE
from rdkit import Chem

import molconf.prediction
from molconf import constants as K
from molconf.baselines import embed, mmff_optimize
from molconf.data.geom import HARTREE_KCAL
from molconf.ground_state.xtb import XtbProtocol, xtb_relax
from molconf.ground_state.prerelax import load_correction, prerelax


def etkdg_mmff(mol: Chem.Mol) -> tuple[Chem.Mol | None, float]:
    """ETKDGv3 (seed 42) + MMFF94 as ``molconf baselines`` makes it: (start or None, seconds);
    a molecule without MMFF parameters starts from its ETKDG geometry."""
    embedded, t_embed, _ = embed(mol, seed=42, random_coords=False)
    if embedded is None:
        return None, t_embed
    relaxed, t_mmff, _ = mmff_optimize(embedded)
    return (relaxed if relaxed is not None else embedded), t_embed + t_mmff


def relax_start(mol: Chem.Mol | None, protocol: XtbProtocol) -> dict:
    if mol is None:
        return {"ok": False, "reason": "no starting geometry"}
    m = Chem.Mol(mol)
    t = time.perf_counter()
    try:
        r = xtb_relax(m, protocol)
    except RuntimeError as err:
        return {"ok": False, "reason": str(err), "seconds": time.perf_counter() - t}
    if r.bond_changes:
        return {"ok": False, "reason": "bond graph changed", "seconds": time.perf_counter() - t}
    return {"ok": True, "steps": r.steps, "converged": r.converged, "seconds": time.perf_counter() - t,
            "energy_hartree": r.energy_ev / EV_PER_HARTREE}


def test_molecules(args) -> tuple[list[Chem.Mol], list[Chem.Mol | None]]:
    """(molecules without conformers, their reference geometries or None per molecule)."""
    if args.smiles_file:
        from molconf.data.smiles_source import as_source

        smiles = [s for _, s in as_source(args.smiles_file)][: args.n]
        return [Chem.AddHs(Chem.MolFromSmiles(s)) for s in smiles], [None] * len(smiles)
    from molconf.data.load import load_dataset, load_dataset_split

    store = load_dataset(args.dataset)
    rows, _ = store.positions_of(load_dataset_split(args.dataset, "test"))
    mols, refs = [], []
    for r in rows[: args.n].tolist():
        ref = store.mol(int(r))  # keeps the record's properties, e.g. its GFN2-xTB energy
        m = Chem.Mol(ref)
        m.RemoveAllConformers()
        mols.append(m)
        refs.append(ref)
    return mols, refs


STARTS = {"model": "molconf prediction", "model_mmff": "molconf prediction + MMFF",
          "model_corrected": "molconf prediction + MMFF + GFN2 correction (= relax_with=\"xtb\")",
          "rdkit": "RDKit ETKDG + MMFF", "rdkit_corrected": "RDKit ETKDG + MMFF + GFN2 correction",
          "reference_mmff": "control: data-set minimum + MMFF",
          "reference_corrected": "control: data-set minimum + MMFF + GFN2 correction"}
PAIRS = (("model_corrected", "rdkit_corrected"),)  # compared head to head besides "each against rdkit"


def mmff_start(mol: Chem.Mol | None) -> tuple[Chem.Mol | None, float]:
    """``mol`` after MMFF94 as ``predict(relax_with="xtb")`` runs it: (start or None, seconds)."""
    t = time.perf_counter()
    if mol is None:
        return None, 0.0
    out = Chem.Mol(mol)
    if molconf.prediction.relax(out, "mmff") is not None:  # no MMFF parameters
        out = None
    return out, time.perf_counter() - t


def corrected_start(mol: Chem.Mol | None, correction) -> tuple[Chem.Mol | None, float, str]:
    """An MMFF94 start after the learned GFN2-xTB correction: (start, seconds, why unchanged)."""
    if mol is None:
        return None, 0.0, ""
    out = Chem.Mol(mol)
    t = time.perf_counter()
    result = prerelax(out, correction)
    return out, time.perf_counter() - t, result.reason


def compare(rows: list[dict], ours: str, theirs: str, tie_kcal: float) -> dict:
    """Molecule by molecule, two starts relaxed from both: steps and final energies."""
    both = [r for r in rows if r[ours]["ok"] and r[theirs]["ok"]]
    diff = [(r[ours]["energy_hartree"] - r[theirs]["energy_hartree"]) * HARTREE_KCAL for r in both]
    return {"both_relaxed": len(both), "lower": sum(d < -tie_kcal for d in diff),
            "higher": sum(d > tie_kcal for d in diff), "same_minimum": sum(abs(d) <= tie_kcal for d in diff),
            "fewer_steps": sum(r[ours]["steps"] < r[theirs]["steps"] for r in both),
            "more_steps": sum(r[ours]["steps"] > r[theirs]["steps"] for r in both),
            "median_step_difference": statistics.median(r[ours]["steps"] - r[theirs]["steps"] for r in both)
            if both else None}


def summarise(rows: list[dict], tie_kcal: float) -> dict:
    out: dict = {"molecules": len(rows), "starts": [k for k in STARTS if any(k in r for r in rows)]}
    for start in out["starts"]:
        ok = [r[start] for r in rows if r[start]["ok"]]
        out[start] = {"relaxed": len(ok), "converged": sum(o["converged"] for o in ok),
                      "median_steps": statistics.median(o["steps"] for o in ok) if ok else None,
                      "mean_steps": statistics.fmean(o["steps"] for o in ok) if ok else None,
                      "median_seconds": statistics.median(o["seconds"] for o in ok) if ok else None,
                      "median_start_seconds": statistics.median(r[f"{start}_start_seconds"] for r in rows),
                      # what a user waits for: making the start, then GFN2-xTB (molecule by molecule)
                      "median_total_seconds": statistics.median(r[f"{start}_start_seconds"] + r[start]["seconds"]
                                                                for r in rows if r[start]["ok"]) if ok else None}
    out["pairs"] = [(k, "rdkit") for k in out["starts"] if k != "rdkit"]  # each start against ETKDG + MMFF
    out["pairs"] += [p for p in PAIRS if p[0] in out["starts"] and p[1] in out["starts"]]
    for ours, theirs in out["pairs"]:
        out[f"{ours}_vs_{theirs}"] = compare(rows, ours, theirs, tie_kcal)
    # against the data set's own ground state (the lowest of its 3 relaxed ETKDG conformers)
    for start in out["starts"]:
        ref = [r for r in rows if r[start]["ok"] and r.get("reference_energy_hartree") is not None]
        gap = [(r[start]["energy_hartree"] - r["reference_energy_hartree"]) * HARTREE_KCAL for r in ref]
        out[start]["with_reference"] = len(ref)
        out[start]["at_or_below_reference"] = sum(g <= tie_kcal for g in gap)
        out[start]["median_kcal_above_reference"] = statistics.median(gap) if gap else None
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="moses_xtb", help="test split of this data set (default moses_xtb)")
    src.add_argument("--smiles-file", help="molecules from a .smi / .csv file instead")
    p.add_argument("--model", default="default", help="molconf model for the predicted start")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--correction", default="none",
                   help="also start from the MMFF94 starts after the learned GFN2-xTB correction of MMFF94 "
                        "(weights file or checkpoint, e.g. benchmarks/results/weights/moses_xtb_gfn2_correction.pt)")
    p.add_argument("--tie-kcal", type=float, default=0.1, help="energies closer than this: the same minimum")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    protocol = XtbProtocol()
    mols, refs = test_molecules(args)
    correction = None if args.correction == "none" else load_correction(args.correction)
    molconf.prediction.predict(mols[:1], model=args.model)  # loads the model and the compiled ops: not per-molecule cost
    t = time.perf_counter()
    preds, report = molconf.prediction.predict(mols, model=args.model, return_report=True)
    predict_seconds = (time.perf_counter() - t) / max(1, len(mols))
    rows = []
    for i, (mol, pred, ref) in enumerate(zip(mols, preds, refs)):
        start_rdkit, rd_seconds = etkdg_mmff(mol)
        pred_mmff, mmff_seconds = mmff_start(pred)
        row = {"index": i, "smiles": Chem.MolToSmiles(Chem.RemoveHs(mol)),
               "model": relax_start(pred, protocol), "model_mmff": relax_start(pred_mmff, protocol),
               "rdkit": relax_start(start_rdkit, protocol),
               "model_start_seconds": predict_seconds, "model_mmff_start_seconds": predict_seconds + mmff_seconds,
               "rdkit_start_seconds": rd_seconds,
               "reference_energy_hartree": (mol.GetDoubleProp(K.SDF_ENERGY_EH)
                                            if mol.HasProp(K.SDF_ENERGY_EH) else None)}
        if ref is not None:
            ref_mmff, ref_seconds = mmff_start(ref)
            row.update(reference_mmff=relax_start(ref_mmff, protocol), reference_mmff_start_seconds=ref_seconds)
        if correction is not None:
            bases = [("model_corrected", pred_mmff, predict_seconds + mmff_seconds),
                     ("rdkit_corrected", start_rdkit, rd_seconds)]
            if ref is not None:
                bases.append(("reference_corrected", ref_mmff, ref_seconds))
            for key, base, seconds in bases:
                start, extra, why = corrected_start(base, correction)
                row.update({key: relax_start(start, protocol), f"{key}_start_seconds": seconds + extra,
                            f"{key}_unchanged": why})
        rows.append(row)
        print(i, *(row[k].get("steps") for k in STARTS if k in row), flush=True)
    summary = summarise(rows, args.tie_kcal)
    summary.update(model_name=report.model, precision=report.precision, protocol=protocol.to_dict(),
                   correction=None if correction is None else args.correction,
                   command="python benchmarks/xtb_relax.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   source=args.smiles_file or f"{args.dataset} test split", tie_kcal=args.tie_kcal,
                   load_average_after=os.getloadavg()[0])
    md = markdown(summary, rows)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "xtb_relax.md").write_text(md)
        (args.out / "xtb_relax.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


def markdown(s: dict, rows: list[dict]) -> str:
    def fmt(v, f):
        if v is None:
            return "–"
        text = format(v, f)
        return text.lstrip("-") if float(text) == 0 else text  # no "-0.00"
    lines = [f"# GFN2-xTB optimisation from a molconf prediction vs from ETKDG + MMFF ({s['molecules']} molecules)",
             "", f"Source: {s['source']}; model `{s['model_name']}` ({s['precision']}); optimiser "
             f"{s['protocol']['optimizer']}, fmax {s['protocol']['fmax']} eV/Å, ≤ {s['protocol']['max_steps']} steps. "
             f"Command: `{s['command'].strip()}`. Load average after the run: {s['load_average_after']:.2f}.", "",
             "| start | relaxed | converged | median steps | mean steps | median xTB s | median start s | "
             "median start + xTB s | at/below data-set minimum | median gap to it (kcal/mol) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in s["starts"]:
        r, name = s[key], STARTS[key]
        lines.append(f"| {name} | {r['relaxed']} | {r['converged']} | {fmt(r['median_steps'], '.0f')} | "
                     f"{fmt(r['mean_steps'], '.1f')} | {fmt(r['median_seconds'], '.2f')} | "
                     f"{fmt(r['median_start_seconds'], '.3f')} | {fmt(r.get('median_total_seconds'), '.2f')} | "
                     f"{r['at_or_below_reference'] if r['with_reference'] else '–'} | "
                     f"{fmt(r['median_kcal_above_reference'], '.2f')} |")
    lines.append("")
    for ours, theirs in s["pairs"]:
        c = s[f"{ours}_vs_{theirs}"]
        lines.append(f"- {STARTS[ours]} vs {STARTS[theirs]}, {c['both_relaxed']} molecules relaxed from both: fewer steps "
                     f"{c['fewer_steps']} times, more {c['more_steps']} (median difference "
                     f"{fmt(c['median_step_difference'], '+.1f')}); lower final energy {c['lower']} times, higher "
                     f"{c['higher']}, the same minimum (within {s['tie_kcal']} kcal/mol) {c['same_minimum']}.")
    failed = {}
    for row in rows:
        for key in s["starts"]:
            if not row[key]["ok"]:
                failed.setdefault(key, []).append(row[key]["reason"])
    for key in s["starts"]:  # the correction leaves a start unchanged rather than make it worse
        kept = [row[f"{key}_unchanged"] for row in rows if row.get(f"{key}_unchanged")]
        if kept:
            counts = ", ".join(f"{why}: {kept.count(why)}" for why in sorted(set(kept)))
            lines.append(f"- {STARTS[key]}: correction not applied {len(kept)} times ({counts}).")
    for key, reasons in failed.items():
        counts = ", ".join(f"{reason}: {reasons.count(reason)}" for reason in sorted(set(reasons)))
        lines.append(f"- {STARTS[key]}: not relaxed {len(reasons)} times ({counts}).")
    lines += ["", "Data-set minimum: the lowest GFN2-xTB minimum that `molconf build-xtb` found by relaxing the "
                  "three lowest-MMFF of ten ETKDG conformers; a single ETKDG + MMFF start is one draw of that "
                  "search, so it reaches that minimum less often by construction."]
    if "reference_mmff" in s["starts"]:
        lines += ["", "Control: the data-set minimum itself, MMFF94-optimised and handed back to GFN2-xTB. It starts "
                      "from the best conformer any method could predict, so the steps it needs are what the "
                      "MMFF → GFN2-xTB relaxation costs by itself; a start that goes through MMFF cannot be expected "
                      "to need fewer."]
    if any(k.endswith("_corrected") for k in s["starts"]):
        lines += ["", "GFN2 correction: the MMFF94 start, then MMFF94 + the learned GFN2-xTB correction "
                      f"(`{s.get('correction')}`, `molconf.ground_state.prerelax.prerelax`) minimised from it; its time is "
                      "included in the median start seconds."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
