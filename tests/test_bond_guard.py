"""Bond-length bounds and their repair (molconf.bond_guard), alone and through molconf.predict."""

import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms

import molconf
from molconf import bond_guard as G

ROOT = Path(__file__).resolve().parents[1]
SCALE = {"SINGLE": 1.00, "AROMATIC": 0.92, "DOUBLE": 0.86, "TRIPLE": 0.79}
COVALENT = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57, "S": 1.05, "Cl": 1.02, "Br": 1.20}


def slow_impossible(mol, tol=G.TOLERANCE):
    """The obvious version: one bond at a time, RDKit's own bond length, radii from a table."""
    conf = mol.GetConformer()
    out = []
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        expected = SCALE.get(str(b.GetBondType()), 1.0) * (COVALENT[b.GetBeginAtom().GetSymbol()]
                                                          + COVALENT[b.GetEndAtom().GetSymbol()])
        d = rdMolTransforms.GetBondLength(conf, i, j)
        if not (1 - tol) * expected <= d <= (1 + tol) * expected:
            out.append((i, j, round(d, 6)))
    return out


def _fast(mol, tol=G.TOLERANCE):
    return [(p.begin, p.end, round(p.length, 6)) for p in G.impossible_bonds(mol, tolerance=tol)]


def reference_mols(name, n=None):
    path = ROOT / "datasets" / "reference" / f"{name}_test_sample.sdf"
    mols = [m for m in Chem.SDMolSupplier(str(path), removeHs=False)]
    return mols[:n] if n else mols


def moses_mols(n=None):
    with gzip.open(ROOT / "datasets" / "moses_xtb" / "molecules.sdf.gz") as fh:
        mols = [m for m in Chem.ForwardSDMolSupplier(fh, removeHs=False) if m is not None]
    return mols[:n] if n else mols


def test_every_reference_ground_state_is_within_bounds():
    """The bounds hold for every bond of every GFN2-xTB ground state of moses_xtb (9,999 molecules)
    and of the shipped QM9 (B3LYP) reference sample: what they flag is not a real bond length."""
    mols = moses_mols() + reference_mols("qm9")
    assert len(mols) > 10_000
    flagged = [(Chem.MolToSmiles(m), G.impossible_bonds(m)) for m in mols if G.impossible_bonds(m)]
    assert flagged == []


@pytest.mark.parametrize("tol", [0.05, 0.15, G.TOLERANCE])
def test_vectorised_check_matches_the_slow_reference_on_real_and_random_geometries(tol):
    rng = np.random.default_rng(0)
    mols = reference_mols("qm9", 40) + reference_mols("moses_xtb", 40)
    for mol in mols:
        assert _fast(mol, tol) == slow_impossible(mol, tol)
        noisy = Chem.Mol(mol)
        conf = noisy.GetConformer()
        pos = conf.GetPositions() + rng.normal(scale=0.3, size=(mol.GetNumAtoms(), 3))
        for k, p in enumerate(pos):
            conf.SetAtomPosition(k, p.tolist())
        assert _fast(noisy, tol) == slow_impossible(noisy, tol)
    assert sum(bool(slow_impossible(m)) for m in mols) == 0


def _damage(mol, rng):
    """Collapse one methyl/methylene H onto its carbon, stretch another H, squeeze one C–C."""
    out = Chem.Mol(mol)
    conf = out.GetConformer()
    pos = conf.GetPositions()
    hs = [a.GetIdx() for a in out.GetAtoms() if a.GetAtomicNum() == 1]
    h1, h2 = rng.choice(hs, 2, replace=False)
    for h, factor in ((h1, 0.3), (h2, 2.2)):
        anchor = out.GetAtomWithIdx(int(h)).GetNeighbors()[0].GetIdx()
        pos[h] = pos[anchor] + factor * (pos[h] - pos[anchor])
    for k, p in enumerate(pos):
        conf.SetAtomPosition(k, p.tolist())
    return out, {int(h1), int(h2)}


def test_repair_moves_only_what_it_must_and_names_it():
    rng = np.random.default_rng(1)
    for mol in reference_mols("moses_xtb", 30):
        damaged, touched = _damage(mol, rng)
        bad = G.impossible_bonds(damaged)
        assert {a for p in bad for a in (p.begin, p.end)} >= touched
        before = damaged.GetConformer().GetPositions()
        note = G.guard_bonds(damaged)
        assert G.impossible_bonds(damaged) == []
        assert note.startswith(f"bond guard: {len(bad)} impossible bond") and "repaired" in note
        moved = np.flatnonzero(np.linalg.norm(damaged.GetConformer().GetPositions() - before, axis=1) > 1e-6)
        if "the rest held" in note:  # local repair: only terminal atoms on the damaged anchors moved
            anchors = {damaged.GetAtomWithIdx(h).GetNeighbors()[0].GetIdx() for h in touched}
            allowed = {n.GetIdx() for a in anchors for n in damaged.GetAtomWithIdx(a).GetNeighbors()
                       if n.GetDegree() == 1}
            assert set(moved.tolist()) <= allowed
    assert G.guard_bonds(reference_mols("qm9", 1)[0]) is None  # nothing to do: nothing moves


def test_heavy_atom_bond_and_a_molecule_without_force_field():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCOC(=O)c1ccccc1"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    conf = mol.GetConformer()
    pos = conf.GetPositions()
    shift = -0.45 * (pos[0] - pos[1])  # the whole methyl moved: C–C squeezed to ~0.84 Å, its C–H intact
    for k in [0] + [n.GetIdx() for n in mol.GetAtomWithIdx(0).GetNeighbors() if n.GetAtomicNum() == 1]:
        conf.SetAtomPosition(k, (pos[k] + shift).tolist())
    assert [(p.begin, p.end) for p in G.impossible_bonds(mol)] == [(0, 1)]
    note = G.guard_bonds(mol)
    assert G.impossible_bonds(mol) == [] and "repaired" in note

    # no force field can move it: terminal atoms go to the expected length along their bond
    mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    conf = mol.GetConformer()
    o = np.array(conf.GetAtomPosition(1))
    conf.SetAtomPosition(5, (o + [0.0, 0.0, 3.0]).tolist())
    original_ff = G._force_field
    try:
        G._force_field = lambda *a: (None, "none")
        note = G.guard_bonds(mol)
    finally:
        G._force_field = original_ff
    assert "placing 1 terminal atom" in note and G.impossible_bonds(mol) == []
    d = rdMolTransforms.GetBondLength(mol.GetConformer(), 1, 5)
    assert math.isclose(d, 0.97 * 1.0, abs_tol=0.02)  # (0.31 + 0.66) · single


def test_predict_never_returns_an_impossible_bond(tmp_path):
    """An untrained network's output is full of impossible bonds; predict repairs every one by
    default and notes it, and returns them untouched with repair_bonds=False."""
    import torch

    from molconf.models import ConformerTransformer, save_model

    torch.manual_seed(0)
    net = ConformerTransformer("gtmgc", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                               n_decoder_layers=1, pe_dim=16)
    path = save_model(net, tmp_path / "untrained.pt", {"name": "untrained"})
    smiles = [Chem.MolToSmiles(Chem.RemoveHs(m)) for m in reference_mols("moses_xtb", 12)]
    smiles += ["CCO", "C[NH3+]", "CC(=O)[O-].[Na+]", "C[C@H](N)C(=O)O", "not a smiles"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw, raw_report = molconf.predict(smiles, model=path, repair_bonds=False, return_report=True)
        mols, report = molconf.predict(smiles, model=path, return_report=True)
    assert raw[-1] is None and mols[-1] is None and [f.index for f in report.failures] == [len(smiles) - 1]
    assert sum(bool(G.impossible_bonds(m)) for m in raw[:-1]) >= 10
    assert not any("bond guard" in n for ns in raw_report.notes.values() for n in ns)
    for i, m in enumerate(mols[:-1]):
        assert G.impossible_bonds(m) == [], (smiles[i], report.notes.get(i))
        if G.impossible_bonds(raw[i]):
            assert any(n.startswith("bond guard:") and "repaired" in n for n in report.notes[i]), report.notes.get(i)


def test_shipped_models_predictions_are_physical():
    smiles = ["CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "OCC1OC(O)C(O)C(O)C1O",
              "CC(=O)Nc1ccc(O)cc1", "C#CCN(C)C", "FC(F)(F)c1ccc(Cl)cc1"]
    for _ in range(2):
        mols = molconf.predict(smiles)
        assert all(m is not None and G.impossible_bonds(m) == [] for m in mols)
