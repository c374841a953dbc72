"""Write the GEOM-DRUGS format fixture in ``datasets/geom_drugs/sample`` (see its README).

37 real drugs (S, Cl, Br, F, I, P and B among them), each with 3–5 conformers from RDKit
ETKDGv3 + MMFF94 (UFF where MMFF has no parameters: bortezomib's boron), written in exactly
the layout of the official GEOM ``rdkit_folder`` release, plus a split file in the
torsional-diffusion layout. These are NOT GEOM geometries (GFN2-xTB/CREST): the sample
tests the format and the pipeline, never a model's accuracy. Deterministic (fixed seeds,
one thread). Run from the repository root::

    python datasets/geom_drugs/make_sample.py
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdForceFieldHelpers

OUT = Path(__file__).parent / "sample"
SEED = 20240606
N_EMBED = 12  # ETKDG attempts per molecule, before de-duplication
MAX_CONFS, MIN_CONFS = 5, 3
HARTREE_KCAL = 627.509474  # kcal/mol per Hartree
R_KCAL = 1.987204259e-3  # kcal/(mol·K)
TEMPERATURE = 298.15  # K, as GEOM
SPLIT_SIZES = {"train": 27, "val": 5, "test": 5}

DRUGS = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "nicotine": "CN1CCC[C@H]1c1cccnc1",
    "chloroquine": "CCN(CC)CCCC(C)Nc1ccnc2cc(Cl)ccc12",
    "diazepam": "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc21",
    "sildenafil": "CCCc1nn(C)c2c(=O)[nH]c(-c3cc(S(=O)(=O)N4CCN(C)CC4)ccc3OCC)nc12",
    "fluoxetine": "CNCCC(Oc1ccc(cc1)C(F)(F)F)c1ccccc1",
    "bromhexine": "CN(Cc1cc(Br)cc(Br)c1N)C1CCCCC1",
    "cyclophosphamide": "ClCCN(CCCl)P1(=O)NCCCO1",
    "levothyroxine": "N[C@@H](Cc1cc(I)c(Oc2cc(I)c(O)c(I)c2)c(I)c1)C(=O)O",
    "bortezomib": "CC(C)C[C@H](NC(=O)[C@H](Cc1ccccc1)NC(=O)c1cnccn1)B(O)O",
    "omeprazole": "COc1ccc2[nH]c(S(=O)Cc3ncc(C)c(OC)c3C)nc2c1",
    "metformin": "CN(C)C(=N)NC(=N)N",
    "naproxen": "COc1ccc2cc([C@H](C)C(=O)O)ccc2c1",
    "lidocaine": "CCN(CC)CC(=O)Nc1c(C)cccc1C",
    "propranolol": "CC(C)NCC(O)COc1cccc2ccccc12",
    "haloperidol": "O=C(CCCN1CCC(O)(c2ccc(Cl)cc2)CC1)c1ccc(F)cc1",
    "ciprofloxacin": "OC(=O)c1cn(C2CC2)c2cc(N3CCNCC3)c(F)cc2c1=O",
    "hydrochlorothiazide": "NS(=O)(=O)c1cc2c(cc1Cl)NCNS2(=O)=O",
    "furosemide": "NS(=O)(=O)c1cc(C(=O)O)c(NCc2ccco2)cc1Cl",
    "celecoxib": "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1",
    "fluconazole": "OC(Cn1cncn1)(Cn1cncn1)c1ccc(F)cc1F",
    "clopidogrel": "COC(=O)[C@H](c1ccccc1Cl)N1CCc2sccc2C1",
    "metoprolol": "COCCc1ccc(OCC(O)CNC(C)C)cc1",
    "diphenhydramine": "CN(C)CCOC(c1ccccc1)c1ccccc1",
    "ketamine": "CNC1(CCCCC1=O)c1ccccc1Cl",
    "sertraline": "CN[C@H]1CC[C@@H](c2ccc(Cl)c(Cl)c2)c2ccccc21",
    "chlorpromazine": "CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc21",
    "tramadol": "COc1cccc(c1)[C@]1(O)CCCC[C@@H]1CN(C)C",
    "venlafaxine": "COc1ccc(cc1)C(CN(C)C)C1(O)CCCCC1",
    "warfarin": "CC(=O)CC(c1ccccc1)c1c(O)c2ccccc2oc1=O",
    "salbutamol": "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1",
    "dopamine": "NCCc1ccc(O)c(O)c1",
    "fosfomycin": "C[C@@H]1O[C@@H]1P(=O)(O)O",
    "amiodarone": "CCCCc1oc2ccccc2c1C(=O)c1cc(I)c(OCCN(CC)CC)c(I)c1",
}


def _single_conformer(mol: Chem.Mol, conf_id: int) -> Chem.Mol:
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetConformer(conf_id))
    conf.SetId(0)
    out.AddConformer(conf, assignId=False)
    return out


def make_conformers(smiles: str, seed: int) -> tuple[Chem.Mol, list[int], list[float], str]:
    """Embed, optimise, de-duplicate; returns (mol, kept conformer ids in embedding order,
    their energies in kcal/mol, force field)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    ids = list(AllChem.EmbedMultipleConfs(mol, N_EMBED, params))
    if not ids:
        raise RuntimeError(f"embedding failed for {smiles}")
    if rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
        ff, results = "MMFF94", AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=5000)
    else:
        ff, results = "UFF", AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=5000)
    energy = {cid: e for cid, (_, e) in zip(ids, results)}
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    kept: list[int] = []
    for cid in sorted(ids, key=lambda c: (energy[c], c)):
        duplicate = any(
            abs(energy[cid] - energy[k]) < 0.01
            or AllChem.GetConformerRMS(mol, k, cid, atomIds=heavy, prealigned=False) < 0.05
            for k in kept
        )
        if not duplicate:
            kept.append(cid)
        if len(kept) == MAX_CONFS:
            break
    for cid in sorted(ids, key=lambda c: (energy[c], c)):  # rigid molecules: top up to 3
        if len(kept) >= MIN_CONFS:
            break
        if cid not in kept:
            kept.append(cid)
    # Stored in embedding order, not by energy: the lowest-energy conformer is often not the
    # first one, so readers cannot get away with taking conformers[0].
    kept.sort()
    return mol, kept, [energy[c] for c in kept], ff


def molecule_record(smiles: str, index: int) -> tuple[dict, dict]:
    """(pickle content, summary entry) for one molecule, with GEOM's keys and units."""
    mol, kept, e_kcal, ff = make_conformers(smiles, SEED + index)
    e_kcal = np.asarray(e_kcal)
    rel = e_kcal - e_kcal.min()
    w = np.exp(-rel / (R_KCAL * TEMPERATURE))
    w = w / w.sum()
    conformers = []
    for k, (cid, e, r, wk) in enumerate(zip(kept, e_kcal, rel, w)):
        conformers.append({
            "geom_id": 1_000_000 + 100 * index + k,
            "degeneracy": 1,
            "conformerweights": [float(wk)],
            "totalenergy": float(e / HARTREE_KCAL),  # Hartree, as GEOM's (there GFN2-xTB)
            "relativeenergy": float(r),  # kcal/mol above the lowest conformer
            "boltzmannweight": float(wk),
            "rd_mol": _single_conformer(mol, cid),
        })
    entropy = -R_KCAL * 1000.0 * float(np.sum(w * np.log(w)))  # cal/(mol·K)
    fields = {
        "charge": Chem.GetFormalCharge(mol),
        "ensembleenergy": float(np.sum(w * rel)),  # kcal/mol, Boltzmann-mean relative energy
        "ensembleentropy": entropy,
        "ensemblefreeenergy": -TEMPERATURE * entropy / 1000.0,  # kcal/mol
        "lowestenergy": float(e_kcal.min() / HARTREE_KCAL),  # Hartree
        "poplowestpct": float(100.0 * w.max()),
        "temperature": TEMPERATURE,
        "totalconfs": len(kept),
        "uniqueconfs": len(kept),
        "sample_force_field": ff,  # not in GEOM: says where these geometries come from
    }
    return {"smiles": smiles, **fields, "conformers": conformers}, fields


def pickle_name(smiles: str) -> str:
    # GEOM names each pickle after its SMILES; "/" (double-bond stereo) cannot be in a name.
    return smiles.replace("/", "_") + ".pickle"


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT / "rdkit_folder", ignore_errors=True)
    drugs_dir = OUT / "rdkit_folder" / "drugs"
    drugs_dir.mkdir(parents=True)
    summary = {}
    for index, (drug, raw) in enumerate(DRUGS.items()):
        smiles = Chem.MolToSmiles(Chem.MolFromSmiles(raw))
        record, fields = molecule_record(smiles, index)
        name = pickle_name(smiles)
        with open(drugs_dir / name, "wb") as fh:
            pickle.dump(record, fh, protocol=4)
        summary[smiles] = {**fields, "pickle_path": f"drugs/{name}"}
        n_atoms = record["conformers"][0]["rd_mol"].GetNumAtoms()
        print(f"{drug:20s} {n_atoms:3d} atoms  {len(record['conformers'])} conformers  {fields['sample_force_field']}")
    (OUT / "rdkit_folder" / "summary_drugs.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")

    # Split over ids = positions in the sorted pickle file names (torsional diffusion's
    # order); saved as one object array [train, val, test], their split.npy layout.
    names = sorted(p.name for p in drugs_dir.glob("*.pickle"))
    perm = np.random.default_rng(SEED).permutation(len(names))
    n_tr, n_va = SPLIT_SIZES["train"], SPLIT_SIZES["val"]
    assert len(names) == sum(SPLIT_SIZES.values()), len(names)
    split = np.empty(3, dtype=object)
    split[0], split[1], split[2] = (np.sort(perm[:n_tr]), np.sort(perm[n_tr:n_tr + n_va]),
                                    np.sort(perm[n_tr + n_va:]))
    np.save(OUT / "split.npy", split, allow_pickle=True)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{len(names)} molecules, {size / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
