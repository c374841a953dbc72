"""The cheap "does the graph specify any stereo?" shortcut never hides a label."""

import pytest
from rdkit import Chem

from molconf.stereo import _cip_labels, graph_stereo_labels, specifies_stereo

SMILES = ["CCO", "C[C@H](N)O", "C[C@@H]1CC[C@H](O)CC1", "C/C=C/C", "C/C=C\\Cl", "CC=CC", "FC(Cl)Br",
          "N[C@@H](C)C(=O)O", "C1CC1", "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O", "c1ccccc1"]


@pytest.mark.parametrize("smiles", SMILES)
def test_shortcut_agrees_with_cip_on_smiles(smiles):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert graph_stereo_labels(mol) == _cip_labels(mol)


def test_shortcut_agrees_with_cip_on_qm9(qm9_small):
    specified = 0
    for row in range(len(qm9_small)):
        mol = qm9_small.mol(row)  # stereo tags perceived from the DFT geometry
        mol.RemoveAllConformers()
        assert graph_stereo_labels(mol) == _cip_labels(mol), Chem.MolToSmiles(mol)
        specified += specifies_stereo(mol)
    assert 0 < specified < len(qm9_small)  # both branches exercised


def test_bond_directions_count_as_specified():
    mol = Chem.RWMol(Chem.MolFromSmiles("CC=CC"))
    mol.GetBondWithIdx(0).SetBondDir(Chem.BondDir.ENDUPRIGHT)
    mol.GetBondWithIdx(2).SetBondDir(Chem.BondDir.ENDUPRIGHT)
    assert specifies_stereo(mol)


def _embedded(smiles, seed=11):
    from rdkit.Chem import AllChem

    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(m, randomSeed=seed) == 0
    return m


def test_ring_fusion_centre_is_inverted_locally():
    """cis-decalin geometry, trans-decalin labels: the bridgehead has one acyclic
    substituent (its H), so no swap exists; the umbrella inversion repairs it."""
    import numpy as np

    from molconf.stereo import enforce_stereo

    target = graph_stereo_labels(Chem.AddHs(Chem.MolFromSmiles("[C@@H]12CCCC[C@H]1CCCC2")))
    mol = _embedded("[C@@H]12CCCC[C@@H]1CCCC2")
    assert len(target) == 2 and graph_stereo_labels(mol) != target
    pos0 = mol.GetConformer().GetPositions()
    report = enforce_stereo(mol, target)
    assert report.consistent, report.remaining
    assert any("inverted" in a for a in report.fixed_by)
    pos1 = mol.GetConformer().GetPositions()
    moved = np.where(np.linalg.norm(pos1 - pos0, axis=1) > 1e-6)[0]
    assert len(moved) == 2  # one bridgehead C and its H
    for b in mol.GetBonds():  # every bond length kept
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        assert np.linalg.norm(pos1[i] - pos1[j]) == pytest.approx(np.linalg.norm(pos0[i] - pos0[j]), abs=1e-6)


def test_spiro_like_centre_without_acyclic_substituent_is_reported():
    from molconf.stereo import _invert_centre

    mol = _embedded("C1CC12CC2")  # spiro carbon: four ring bonds
    assert not _invert_centre(mol, 2)
