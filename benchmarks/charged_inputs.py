"""Charged inputs cost nothing: ``molconf.predict`` on protonated / deprotonated molecules vs
the same molecules neutral, scored against the neutral GFN2-xTB references.

Molecules: the moses_xtb test split (``datasets/moses_xtb/molecules.sdf.gz`` rows listed in
``split_test.npy``) that have an ionisable site (RDKit SMARTS on the heavy-atom graph):

1. strong sites, every one of the molecule at once: a basic aliphatic amine (sp3 N with no
   aromatic, carbonyl/imine-carbon, vinyl or heteroatom neighbour) is protonated (+1), a
   carboxylic acid or a phenol is deprotonated (-1);
2. else its single most basic weak-base site is protonated (+1), the first class that matches:
   amidine / guanidine (the imine N; not N-acyl, N-sulfonyl, N-cyano, N-hetero), imidazole-type
   N (an [nX2] in a 5-ring whose 1,3-partner is an [nX3], the other two ring atoms carbons:
   imidazoles, benzimidazoles, imidazo-fused rings; not pyrazoles, triazoles, oxa-/thiazoles),
   pyridine-type N (an [nX2] in a 6-ring; the one with the fewest other ring heteroatoms and
   ring C=O), aniline N ([NX3;H2,H1]-c of a carbon ring position with no aromatic heteroatom
   neighbour, not an amide/sulfonamide; N-alkyl before diaryl);
3. else its single most acidic weak-acid site is deprotonated (-1), the first class that
   matches: tetrazole N-H, acyl-sulfonamide N-H, sulfonamide N-H ([NX3;H1,H2]-S(=O)=O; N-aryl
   first), imide N-H (N-H between two C=O, aromatic ones included: uracil-type).

Within a class, ties go to the lowest atom index. The charged molecule is the reference's own
atoms (explicit H) with one H added to / removed from each site, so its heavy atoms are the
reference's, in the reference's order; every charged form is checked to sanitise, round-trip
through SMILES, keep the heavy atoms in order and carry the intended net charge (a form that
fails is counted as rejected and not used). Of the molecules with a site, ``--n`` are drawn with
``numpy.random.default_rng(--seed)`` (all of them if fewer).

Scores (DESIGN.md §3, restricted to heavy atoms because the charged and neutral molecules
have different H): D-MAE over heavy atoms, pooled (Σ|D − D̂| / Σ N_heavy²); C-RMSD as
``GetBestRMS`` after ``RemoveHs`` (the predicted heavy-atom coordinates are put on the neutral
reference graph first, so the symmetry-aware match sees the same graph). "same SMILES": the
returned molecule's canonical isomeric SMILES (no H) equals the input's (charges and stereo
kept). Times: wall time of the whole call per molecule, in this run.

    python benchmarks/charged_inputs.py [--n 200] [--seed 0] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdMolAlign

ROOT = Path(__file__).resolve().parents[1]
SDF = ROOT / "datasets/moses_xtb/molecules.sdf.gz"
SPLIT = ROOT / "datasets/moses_xtb/split_test.npy"
BASIC_AMINE = Chem.MolFromSmarts("[NX3;!$(N~[!#6;!#1]);!$(N-a);!$(N-[#6]=[#7,#8,#16]);!$(N-C=[C,N]);!$(N-[#6]#*)]")
ACID_OH = Chem.MolFromSmarts("[OX2H1]-[CX3]=O")
PHENOL_OH = Chem.MolFromSmarts("[OX2H1]-c")
# weak sites, charged only where a molecule has no strong one, one site per molecule:
# (name, SMARTS, first atom = the site), classes in order of decreasing basicity / acidity
WEAK_BASES = [
    ("amidine/guanidine N", "[NX2;!a;!$(N~[!#6;!#1]);!$(N-[#6]=[#8,#16]);!$(N-C#N)]"
                            "=[CX3;!a;!$(C-[#8,#16,#9,#17,#35,#53])]-[NX3;!$(N-[#6]=[#8,#16]);!$(N-[!#6;!#1])]"),
    ("imidazole-type N", "[nX2;r5;$(n1:c:[nX3]:c:c:1)]"),
    ("pyridine-type N", "[nX2;r6]"),
    ("aniline N", "[NX3;H2,H1;!$(N~[!#6;!#1]);!$(N-[#6]=[#7,#8,#16])]-[c;!$(c:[!#6])]"),
]
WEAK_ACIDS = [
    ("tetrazole NH", "[nH;$([nH]1:n:n:n:c:1),$([nH]1:n:n:c:n:1)]"),
    ("acylsulfonamide NH", "[NX3H1](-[#6]=O)-S(=O)=O"),
    ("sulfonamide NH", "[NX3;H1,H2]-S(=O)=O"),
    ("imide NH", "[#7;H1;$([#7](-,:[#6]=O)-,:[#6]=O)]"),
]
WEAK_BASES = [(name, Chem.MolFromSmarts(sma)) for name, sma in WEAK_BASES]
WEAK_ACIDS = [(name, Chem.MolFromSmarts(sma)) for name, sma in WEAK_ACIDS]
SITE_TYPES = ["amine", "acid", "phenol"] + [name for name, _ in WEAK_BASES + WEAK_ACIDS]
ETKDG_SEED = 42  # not 0: see DESIGN.md §3 (RDKit's seed-0 trap)


def test_references() -> list[Chem.Mol]:
    from molconf.data.moses_xtb import RELEASE_9999, split_records

    # the test molecules of the 9,999-molecule release: a grown moses_xtb lists them first
    return [mol for _, _, mol in split_records(np.load(SPLIT)[:RELEASE_9999["test"]], SDF)]


def _rank(heavy: Chem.Mol, kind: str, idx: int) -> tuple:
    """Sort key among the sites of one weak class (smaller = more basic / acidic)."""
    atom = heavy.GetAtomWithIdx(idx)
    if kind == "pyridine-type N":  # pyridine before diazines / azinones
        ring = min((r for r in heavy.GetRingInfo().AtomRings() if idx in r and len(r) == 6), key=len)
        hetero = sum(heavy.GetAtomWithIdx(j).GetAtomicNum() != 6 for j in ring if j != idx)
        oxo = sum(b.GetBondType() == Chem.BondType.DOUBLE and b.GetOtherAtom(heavy.GetAtomWithIdx(j)).GetAtomicNum() in (8, 16)
                  for j in ring for b in heavy.GetAtomWithIdx(j).GetBonds())
        return hetero, oxo, idx
    if kind == "aniline N":  # N-alkyl / NH2 anilines before diarylamines
        return sum(n.GetIsAromatic() for n in atom.GetNeighbors()), idx
    if kind == "sulfonamide NH":  # N-aryl sulfonamides are the more acidic
        return not any(n.GetIsAromatic() for n in atom.GetNeighbors()), idx
    return (idx,)


def ionisable_sites(heavy: Chem.Mol) -> list[tuple[str, int, int]]:
    """(site type, heavy-atom index, charge) of the sites ``charged_form`` charges: every strong
    site, else the best weak base, else the best weak acid; [] if none."""
    sites = [("amine", m[0], 1) for m in heavy.GetSubstructMatches(BASIC_AMINE)]
    sites += [("acid", m[0], -1) for m in heavy.GetSubstructMatches(ACID_OH)]
    sites += [("phenol", m[0], -1) for m in heavy.GetSubstructMatches(PHENOL_OH)]
    if sites:
        return sites
    for classes, charge in ((WEAK_BASES, 1), (WEAK_ACIDS, -1)):
        for kind, pattern in classes:
            hits = sorted({m[0] for m in heavy.GetSubstructMatches(pattern)}, key=lambda i: _rank(heavy, kind, i))
            if hits:
                return [(kind, hits[0], charge)]
    return []


class RejectedForm(ValueError):
    pass


def charged_form(ref: Chem.Mol) -> tuple[Chem.Mol, list[str]] | None:
    """The reference (explicit H, no conformer) with its ionisable sites charged (module
    docstring): (molecule, site types); None if it has no site. Raises ``RejectedForm`` if
    the charged molecule fails a check."""
    heavy = Chem.RemoveHs(ref)
    # RemoveHs keeps the heavy atoms' relative order; map heavy index -> ref index
    ref_heavy = [a.GetIdx() for a in ref.GetAtoms() if a.GetAtomicNum() > 1]
    sites = ionisable_sites(heavy)
    if not sites:
        return None
    rw = Chem.RWMol(ref)
    rw.RemoveAllConformers()
    drop = []
    for kind, i, charge in sites:
        atom = rw.GetAtomWithIdx(ref_heavy[i])
        atom.SetFormalCharge(atom.GetFormalCharge() + charge)
        if charge < 0:
            hs = [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() == 1]
            if not hs:
                raise RejectedForm(f"{kind} site {i} has no H to remove")
            drop.append(hs[0])
        else:
            h = rw.AddAtom(Chem.Atom(1))
            rw.AddBond(ref_heavy[i], h, Chem.BondType.SINGLE)
    for h in sorted(drop, reverse=True):
        rw.RemoveAtom(h)
    mol = rw.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # noqa: BLE001 - any sanitisation error rejects the form
        raise RejectedForm(f"does not sanitise: {exc}") from exc
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    want = Chem.GetFormalCharge(ref) + sum(charge for _, _, charge in sites)
    if Chem.GetFormalCharge(mol) != want:
        raise RejectedForm(f"net charge {Chem.GetFormalCharge(mol)}, wanted {want}")
    if [a.GetAtomicNum() for a in mol.GetAtoms() if a.GetAtomicNum() > 1] != [a.GetAtomicNum() for a in heavy.GetAtoms()]:
        raise RejectedForm("heavy atoms not in the reference's order")
    if Chem.MolFromSmiles(Chem.MolToSmiles(mol)) is None:
        raise RejectedForm("SMILES does not round-trip")
    return mol, [kind for kind, _, _ in sites]


def heavy_positions(mol: Chem.Mol) -> np.ndarray:
    x = mol.GetConformer().GetPositions()
    return x[[a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]]


def _as_specified(pred: Chem.Mol, inp: Chem.Mol) -> str:
    """``pred``'s SMILES (no H) with the stereo read from its conformer kept only where the input
    specifies some: predict tags every centre from 3D, also those the input left open (e.g. the N
    of a protonated tertiary amine). Atom order is the input's (Mol inputs come back in order)."""
    out = Chem.Mol(pred)
    for a, b in zip(out.GetAtoms(), inp.GetAtoms()):
        if b.GetChiralTag() == Chem.ChiralType.CHI_UNSPECIFIED:
            a.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    for bond in out.GetBonds():
        ref = inp.GetBondBetweenAtoms(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
        if ref is not None and ref.GetStereo() == Chem.BondStereo.STEREONONE:
            bond.SetStereo(Chem.BondStereo.STEREONONE)
    return Chem.MolToSmiles(Chem.RemoveHs(out))


def score(refs: list[Chem.Mol], preds: list[Chem.Mol | None], inputs: list[Chem.Mol], seconds: float) -> dict:
    abs_sum = n_pairs = 0.0
    rmsd, same = [], 0
    for ref, pred, inp in zip(refs, preds, inputs):
        if pred is None:
            continue
        x_ref, x_pred = heavy_positions(ref), heavy_positions(pred)
        d_ref = np.linalg.norm(x_ref[:, None] - x_ref[None], axis=-1)
        d_pred = np.linalg.norm(x_pred[:, None] - x_pred[None], axis=-1)
        abs_sum += np.abs(d_ref - d_pred).sum()
        n_pairs += len(x_ref) ** 2
        ref_heavy = Chem.RemoveHs(ref)
        on_ref_graph = Chem.Mol(ref_heavy)
        conf = on_ref_graph.GetConformer()
        for i, p in enumerate(x_pred):
            conf.SetAtomPosition(i, p.tolist())
        rmsd.append(rdMolAlign.GetBestRMS(ref_heavy, on_ref_graph))
        same += _as_specified(pred, inp) == Chem.MolToSmiles(Chem.RemoveHs(inp))
    n_ok = sum(p is not None for p in preds)
    return {"molecules": len(refs), "failures": len(refs) - n_ok, "d_mae_heavy": abs_sum / max(n_pairs, 1),
            "c_rmsd": float(np.mean(rmsd)) if rmsd else float("nan"), "same_smiles": same / max(n_ok, 1),
            "ms_per_mol": 1000 * seconds / len(refs)}


def run_predict(inputs: list[Chem.Mol]) -> tuple[list, float, object]:
    import molconf

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mols, report = molconf.predict(inputs, return_report=True)
    return mols, time.perf_counter() - t, report


def run_etkdg_mmff(inputs: list[Chem.Mol]) -> tuple[list, float, None]:
    """molconf.baselines' ETKDGv3 embedding then MMFF94 (the embedding kept where MMFF94 has no
    parameters); None where embedding fails."""
    from molconf.baselines import embed, mmff_optimize

    out = []
    t = time.perf_counter()
    for inp in inputs:
        mol, _, _ = embed(inp, ETKDG_SEED, random_coords=False)
        if mol is not None:
            mol = mmff_optimize(mol)[0] or mol
        out.append(mol)
    return out, time.perf_counter() - t, None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="molecules (seeded sample; all if fewer have a site)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (interleaved; fastest kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)
    RDLogger.DisableLog("rdApp.*")
    refs = test_references()
    candidates, rejected = [], []
    for ref in refs:
        try:
            cf = charged_form(ref)
        except RejectedForm as exc:
            rejected.append({"smiles": Chem.MolToSmiles(Chem.RemoveHs(ref)), "why": str(exc)})
            continue
        if cf is not None:
            candidates.append((ref, *cf))
    pool = {k: sum(k in c[2] for c in candidates) for k in SITE_TYPES}  # molecules with a site of each type
    n_with_site = len(candidates)
    rng = np.random.default_rng(args.seed)
    if len(candidates) > args.n:
        candidates = [candidates[i] for i in sorted(rng.choice(len(candidates), args.n, replace=False))]
    picked = [c[0] for c in candidates]
    charged = [c[1] for c in candidates]
    kinds = [k for c in candidates for k in c[2]]
    neutral = []
    for ref in picked:
        m = Chem.Mol(ref)
        m.RemoveAllConformers()
        neutral.append(m)
    # warm up (model files read, first-call costs) outside the timed calls
    run_predict(neutral[:2])
    runs = {
        "molconf.predict, charged inputs": (run_predict, charged),
        "molconf.predict, neutral inputs (same molecules)": (run_predict, neutral),
        f"RDKit ETKDGv3 (seed {ETKDG_SEED}) + MMFF94, charged inputs": (run_etkdg_mmff, charged),
        f"RDKit ETKDGv3 (seed {ETKDG_SEED}) + MMFF94, neutral inputs": (run_etkdg_mmff, neutral),
    }
    # every method runs args.repeats times, interleaved, on the same cores; its time is the
    # fastest run (the others lost time to whatever else ran); results are identical each time
    outputs, seconds = {}, {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (fn, inputs) in runs.items():
            outputs[name] = fn(inputs)
            seconds[name].append(outputs[name][1])
    rows = {}
    for name, (fn, inputs) in runs.items():
        rows[name] = score(picked, outputs[name][0], inputs, min(seconds[name]))
        rows[name]["ms_per_mol_all_runs"] = [round(1000 * t / len(picked), 1) for t in seconds[name]]
        rows[name]["failed"] = [Chem.MolToSmiles(Chem.RemoveHs(inp)) for inp, out in zip(inputs, outputs[name][0])
                                if out is None]
    # the same scores per site class (a molecule's class: its weak site's type, or "amine/acid/phenol")
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(c[2][0] if c[2][0] not in ("amine", "acid", "phenol") else "amine/acid/phenol", []).append(i)
    by_class = {}
    for group in sorted(groups, key=lambda g: -len(groups[g])):
        idx = groups[group]
        by_class[group] = {name: score([picked[i] for i in idx], [outputs[name][0][i] for i in idx],
                                       [inputs[i] for i in idx], 0.0)
                           for name, (fn, inputs) in runs.items()}
    report_c = outputs["molconf.predict, charged inputs"][2]
    # where the charged-input prediction's heavy atoms differ from the neutral-input one's
    differ = []
    for i, (a, b) in enumerate(zip(outputs["molconf.predict, charged inputs"][0],
                                   outputs["molconf.predict, neutral inputs (same molecules)"][0])):
        if a is not None and b is not None:
            xa, xb = heavy_positions(a), heavy_positions(b)
            dev = float(np.abs(np.linalg.norm(xa[:, None] - xa[None], axis=-1)
                               - np.linalg.norm(xb[:, None] - xb[None], axis=-1)).max())
            if dev > 1e-3:
                differ.append({"smiles": Chem.MolToSmiles(Chem.RemoveHs(charged[i])), "max_abs_dD": round(dev, 4)})
    noted = sum(any("neutral form" in t for t in report_c.notes.get(i, [])) for i in range(len(charged)))
    result = {
        "command": "python benchmarks/charged_inputs.py" + (f" --n {args.n}" if args.n != 200 else "")
                   + (f" --seed {args.seed}" if args.seed else "") + (f" --repeats {args.repeats}" if args.repeats != 3 else ""),
        "invocation": _invocation(),
        "n": args.n,
        "seed": args.seed,
        "test_split_molecules": len(refs),
        "with_a_site": n_with_site,
        "rejected_forms": rejected,
        "molecules_with_site_type": {"all with a site": {k: v for k, v in pool.items() if v},
                                     "picked": {k: v for k in SITE_TYPES if (v := sum(k in c[2] for c in candidates))}},
        "picked": len(picked),
        "sites": {k: kinds.count(k) for k in SITE_TYPES if k in kinds},
        "net_charges": {str(q): sum(Chem.GetFormalCharge(m) == q for m in charged)
                        for q in sorted({Chem.GetFormalCharge(m) for m in charged})},
        "noted_as_neutralised": noted,
        "rows": rows,
        "by_site_class": by_class,
        "code": _code_state(),
        "charged_differs_from_neutral": differ,
        "bond_guard_repaired": sum(any("bond guard" in t for t in report_c.notes.get(i, [])) for i in range(len(charged))),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "charged_inputs.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "charged_inputs.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _invocation() -> str:
    """How this process was started: ``[nice ]<python> <argv>``, paths relative to the repository root."""
    import os
    import sys

    python = Path(sys.executable)
    try:
        python = python.relative_to(ROOT)
    except ValueError:
        python = Path(python.name)
    argv = [str(Path(a).resolve().relative_to(ROOT)) if i == 0 and Path(a).resolve().is_relative_to(ROOT) else a
            for i, a in enumerate(sys.argv)]
    return ("nice " if os.nice(0) > 0 else "") + " ".join([str(python), *argv])


def _code_state() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "molconf"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted edits in molconf/' if dirty else ''}"


def markdown(r: dict) -> str:
    lines = [
        "# Charged inputs: protonated / deprotonated moses_xtb test molecules",
        "",
        f"Command: `{r['command']}` from the repository root (i.e. `--n {r['n']} --seed {r['seed']} --repeats "
        f"{len(next(iter(r['rows'].values()))['ms_per_mol_all_runs'])}`; this run: "
        f"`{r['invocation']}`), written by `benchmarks/charged_inputs.py`.",
        "",
        "Site rules (RDKit SMARTS, module docstring): (1) every basic aliphatic amine → ammonium, every "
        "carboxylic acid → carboxylate, every phenol → phenolate (pKa ~10, included to exercise anions; MOSES "
        "keeps no carboxylic acid in this split); (2) a molecule with none of these: its single most basic weak "
        "base protonated, first class that matches: amidine/guanidine imine N, imidazole-type N (imidazole, "
        "benzimidazole, imidazo-fused; not pyrazole/triazole/oxa-/thiazole), pyridine-type N (fewest other ring "
        "heteroatoms / ring C=O first: pyridine before diazines and azinones), aniline N (NH2/NH on a carbon "
        "ring position with no aromatic heteroatom beside it, not an amide; N-alkyl before diaryl); (3) else its "
        "single most acidic weak acid deprotonated: tetrazole N-H, acyl-sulfonamide N-H, sulfonamide N-H "
        "(N-aryl first), imide N-H. Each charged form is the reference's atoms with one H added / removed per "
        "site (heavy atoms in the reference's order) and is checked to sanitise, round-trip through SMILES and "
        f"carry the intended net charge: {len(r['rejected_forms'])} rejected.",
        "",
        f"Molecules: of the {r['test_split_molecules']} moses_xtb test-split molecules, {r['with_a_site']} have a "
        "site; "
        + (f"only {r['picked']}, fewer than the {r['n']} asked for: all are used."
           if r["with_a_site"] <= r["n"] else
           f"{r['picked']} of them drawn with `numpy.random.default_rng({r['seed']}).choice(..., replace=False)` "
           "(kept in test-split order)."),
        "",
        "| site type | molecules with a site of this type, all | picked | sites charged in the picked molecules |",
        "|---|---:|---:|---:|",
    ]
    for k, v in r["molecules_with_site_type"]["all with a site"].items():
        lines.append(f"| {k} | {v} | {r['molecules_with_site_type']['picked'].get(k, 0)} | {r['sites'].get(k, 0)} |")
    lines += [
        "",
        "Net charges of the picked charged inputs: " + ", ".join(f"{int(q):+d}: {n}" for q, n in r["net_charges"].items())
        + f". {r['noted_as_neutralised']} of {r['picked']} charged inputs carry the report note "
        "\"predicted as its neutral form ...\".",
        "",
        "Reference: the neutral GFN2-xTB geometry. D-MAE over **heavy atoms only** (the charged and neutral "
        "molecules differ in H), pooled Σ|D − D̂| / Σ N_heavy²; C-RMSD = mean `GetBestRMS` after `RemoveHs` "
        "(predicted heavy atoms placed on the neutral reference graph). \"same SMILES\": returned molecule's "
        "canonical isomeric SMILES (no H) = the input's (charges, stereo at the centres the input specifies; "
        "predict also tags centres the input leaves open, e.g. a protonated tertiary amine N, from the "
        "conformer). ms/mol: wall time of the whole call, the fastest of "
        f"{len(next(iter(r['rows'].values()))['ms_per_mol_all_runs'])} interleaved runs per method (all runs "
        f"in the .json), this run, same machine ({r['machine']['cpu']}, torch threads {r['machine']['torch_threads']}, "
        "2 cores shared with other work: compare rows, not absolute times).",
        "",
        "| method | molecules | failures | D-MAE heavy (Å) | C-RMSD (Å) | same SMILES | ms/mol |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['molecules']} | {row['failures']} | {row['d_mae_heavy']:.4f} | "
                     f"{row['c_rmsd']:.4f} | {row['same_smiles']:.3f} | {row['ms_per_mol']:.1f} |")
    names = list(r["rows"])
    lines += ["", "Per site class (molconf rows / ETKDG+MMFF rows; D-MAE heavy in Å, same SMILES of the charged-input "
              "row):", "",
              "| site class | molecules | molconf charged | molconf neutral | ETKDG+MMFF charged | ETKDG+MMFF neutral "
              "| same SMILES, molconf charged | same SMILES, ETKDG+MMFF charged | failures (molconf c/n, ETKDG c/n) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for group, g in r["by_site_class"].items():
        lines.append(f"| {group} | {g[names[0]]['molecules']} | " + " | ".join(f"{g[n]['d_mae_heavy']:.4f}" for n in names)
                     + f" | {g[names[0]]['same_smiles']:.3f} | {g[names[2]]['same_smiles']:.3f} | "
                     + "/".join(str(g[n]["failures"]) for n in names) + " |")
    for name in names:
        if r["rows"][name]["failed"]:
            lines += ["", f"Failed, {name}: " + ", ".join(f"`{s}`" for s in r["rows"][name]["failed"])]
    lines += ["", f"Code: {r.get('code', 'unknown')}; default model routing (these molecules all go to "
              "`moses_xtb_gtmgc`). The prediction.py bond guard repaired a bond in "
              f"{r.get('bond_guard_repaired', '?')} of {r['picked']} charged-input predictions (the same network "
              "output as the neutral inputs': the guard acts on the network's heavy-atom bonds). "
              f"{len(r['charged_differs_from_neutral'])} of {r['picked']} charged-input predictions differ from the "
              "neutral-input ones in heavy-atom geometry (max |ΔD| > 0.001 Å; largest "
              f"{max([d['max_abs_dD'] for d in r['charged_differs_from_neutral']], default=0):.3f} Å; list in the "
              ".json): the network sees the same neutral form, but the bond guard then runs on the charged molecule "
              "(its own H and MMFF94 atom types), so it flags / polishes a slightly different set of atoms."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
