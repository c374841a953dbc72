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
