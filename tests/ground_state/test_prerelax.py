"""The corrected-MMFF94 pre-relaxation: its objective against finite differences, what it
keeps and refuses, and the shipped correction on real GFN2-xTB minima."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.ground_state.forces import KCAL_TO_EV, mmff_energy_forces, mmff_forcefield
from molconf.ground_state.prerelax import CorrectedMMFF, load_correction, prerelax, save_correction
from molconf.ground_state.correction import Gfn2Correction


REPO = Path(__file__).parents[2]
CORRECTION = REPO / "benchmarks" / "results" / "weights" / "moses_xtb_gfn2_correction.pt"
DIHEDRAL_CORRECTION = REPO / "molconf" / "weights" / "moses_xtb_gfn2_correction_dihedral.pt"  # used by predict


def _mmff_minimum(smiles: str) -> Chem.Mol:
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(m, maxIters=2000)
    return m


def _constant_model(linear: float) -> Gfn2Correction:
    """ΔE = linear · (r − centre) on every pair: a uniform push (linear < 0 stretches)."""
    model = Gfn2Correction(hidden=8, layers=1).double().eval()
    with torch.no_grad():
        model.pair_mlp[-1].bias[0] = linear
    return model


def test_mmff_forces_are_minus_the_gradient_in_ev():
    mol = _mmff_minimum("CC(=O)N")
    ff = mmff_forcefield(mol)
    pos = mol.GetConformer().GetPositions() + np.random.default_rng(0).normal(0, 0.05, (mol.GetNumAtoms(), 3))
    e, f = mmff_energy_forces(ff, pos)
    assert e == pytest.approx(ff.CalcEnergy(pos.reshape(-1).tolist()) * KCAL_TO_EV)
    h = 1e-5
    plus, minus = pos.copy(), pos.copy()
    plus[2, 1] += h
    minus[2, 1] -= h
    fd = (mmff_energy_forces(ff, plus)[0] - mmff_energy_forces(ff, minus)[0]) / (2 * h)
    assert f[2, 1] == pytest.approx(-fd, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("hold_torsions", [0.0, 0.7])
def test_corrected_objective_gradient_matches_finite_differences(hold_torsions):
    mol = _mmff_minimum("c1ccccc1OCC")
    model = _constant_model(-0.3)
    with torch.no_grad():
        torch.nn.init.normal_(model.pair_mlp[-1].weight, std=0.05, generator=torch.Generator().manual_seed(0))
    objective = CorrectedMMFF(mol, model, hold_torsions=hold_torsions)
    x = mol.GetConformer().GetPositions().reshape(-1) + np.random.default_rng(1).normal(0, 0.02, 3 * mol.GetNumAtoms())
    _, grad = objective(x)
    h = 1e-6
    for k in range(0, len(x), 5):
        plus, minus = x.copy(), x.copy()
        plus[k] += h
        minus[k] -= h
        assert grad[k] == pytest.approx((objective(plus)[0] - objective(minus)[0]) / (2 * h), abs=1e-4)


def test_prerelax_moves_bonds_the_way_the_correction_pushes():
    mol = _mmff_minimum("CCOC(=O)C")
    before = mol.GetConformer().GetPositions()
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
    result = prerelax(mol, _constant_model(-0.2))  # a small stretch on every pair
    after = mol.GetConformer().GetPositions()
    length = lambda p: np.linalg.norm(p[bonds[:, 0]] - p[bonds[:, 1]], axis=1)  # noqa: E731
    assert result.applied and result.energy_change_ev < 0 and 0 < result.max_displacement < 0.5
    assert (length(after) - length(before)).mean() > 1e-3
    # with no correction, an MMFF94 minimum is already a minimum: (almost) nothing moves
    mol2 = _mmff_minimum("CCOC(=O)C")
    start = mol2.GetConformer().GetPositions()
    still = prerelax(mol2, Gfn2Correction(hidden=8, layers=1).double().eval())
    assert np.abs(mol2.GetConformer().GetPositions() - start).max() < 5e-3 and still.max_displacement < 5e-3


def test_prerelax_leaves_the_conformer_when_it_would_break_bonds_or_lacks_parameters():
    mol = _mmff_minimum("CCO")
    start = mol.GetConformer().GetPositions()
    result = prerelax(mol, _constant_model(-60.0))  # pulls every pair apart far beyond any bond
    assert not result.applied and "bond graph changed" in result.reason
    assert np.array_equal(mol.GetConformer().GetPositions(), start)
    boron = Chem.AddHs(Chem.MolFromSmiles("CB(C)C"))  # MMFF94 has no boron
    AllChem.EmbedMolecule(boron, randomSeed=0)
    result = prerelax(boron, _constant_model(0.0))
    assert not result.applied and result.reason == "no MMFF94 parameters"


def test_weights_round_trip_and_bad_files_are_named(tmp_path):
    model = _constant_model(0.1).float()
    save_correction(model, tmp_path / "c.pt", {"note": "test"})
    loaded = load_correction(str(tmp_path / "c.pt"))
    assert loaded.config == model.config and loaded.pair_mlp[-1].bias[0].item() == pytest.approx(0.1)
    with pytest.raises(FileNotFoundError, match="nowhere"):  # a missing file is named
        load_correction("nowhere")
    # a correction refuses elements its training data did not have
    save_correction(model, tmp_path / "chno.pt", {"elements": [1, 6, 7, 8]})
    chno = load_correction(str(tmp_path / "chno.pt"))
    result = prerelax(_mmff_minimum("CCS"), chno)
    assert not result.applied and result.reason == "S not in the correction's training data"
    assert prerelax(_mmff_minimum("CCO"), chno).applied
    torch.save({"something": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_correction(str(tmp_path / "bad.pt"))


def _shipped_test_minima(n: int) -> list[Chem.Mol]:
    """GFN2-xTB minima of the first ``n`` test-split molecules of the shipped moses_xtb data."""
    root = REPO / "datasets" / "moses_xtb"
    wanted = set(np.load(root / "split_test.npy")[:n].tolist())  # data-set ids: MOSES source rows
    # records are named by their id (first line): parse only the wanted ones
    records = gzip.decompress((root / "molecules.sdf.gz").read_bytes()).decode().split("$$$$\n")
    out = [Chem.MolFromMolBlock(r, removeHs=False) for r in records if r.split("\n", 1)[0].strip() in
           {str(i) for i in wanted}]
    assert all(int(m.GetProp("_Name")) in wanted for m in out)
    return out


@pytest.mark.parametrize("weights", [CORRECTION, DIHEDRAL_CORRECTION], ids=lambda p: p.stem)
def test_committed_correction_brings_mmff_bonds_and_angles_towards_gfn2(weights):
    mols = _shipped_test_minima(8)
    assert len(mols) == 8
    err_mmff, err_corrected = [], []
    for ref in mols:
        topo = Chem.GetDistanceMatrix(ref)
        i, j = np.where((topo > 0) & (topo <= 2) & (np.arange(len(topo))[:, None] < np.arange(len(topo))))
        dist = lambda m: np.linalg.norm(m.GetConformer().GetPositions()[i] - m.GetConformer().GetPositions()[j], axis=1)  # noqa: E731
        start = Chem.Mol(ref)
        AllChem.MMFFOptimizeMolecule(start, maxIters=2000)
        err_mmff.append(np.abs(dist(start) - dist(ref)).mean())
        assert prerelax(start, str(weights)).applied
        err_corrected.append(np.abs(dist(start) - dist(ref)).mean())
    # mean 0.0164 -> 0.0058 / 0.0055 Å on 40 test molecules (benchmarks/results/xtb_start_probe.txt)
    assert np.mean(err_corrected) < 0.6 * np.mean(err_mmff)


def test_held_torsions_stay_near_their_start_while_bonds_still_move():
    from rdkit.Chem import rdMolTransforms

    from molconf.ground_state.correction import torsion_quadruples

    ref = _shipped_test_minima(8)[-1]
    start = Chem.Mol(ref)
    AllChem.MMFFOptimizeMolecule(start, maxIters=2000)
    quads = torsion_quadruples(start)

    def torsions(m):
        return np.array([rdMolTransforms.GetDihedralDeg(m.GetConformer(), *map(int, q)) for q in quads])

    moved = {}
    for k in (0.0, 0.5):
        m = Chem.Mol(start)
        assert prerelax(m, str(CORRECTION), hold_torsions=k).applied
        moved[k] = np.abs((torsions(m) - torsions(start) + 180) % 360 - 180)
        bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in m.GetBonds()])
        length = lambda x: np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)  # noqa: E731
        assert np.abs(length(m.GetConformer().GetPositions()) - length(start.GetConformer().GetPositions())).max() > 2e-3
    assert moved[0.5].max() < 0.5 * moved[0.0].max() and moved[0.5].mean() < moved[0.0].mean()
