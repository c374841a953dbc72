"""Charged and multi-fragment inputs (molconf.standardize): predicted for their neutral form,
returned with their own charges, protons and stereo."""

import warnings

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

import molconf
from molconf.errors import MoleculeError
from molconf.metrics import stereo_labels
from molconf.prediction import parse_input
from molconf.standardize import SOURCE_PROP, heavy_atom_map, neutral_form, standardize, transfer_coordinates
from molconf.stereo import graph_stereo_labels

# input -> (the fragment it keeps, written in the input's atom order; what the notes must name)
CASES = {
    "C[NH3+]": ("C[NH3+]", ["neutral form CN;"]),
    "CC(=O)[O-]": ("CC(=O)[O-]", ["neutral form CC(=O)O;", "returned with its own charges"]),
    "[NH3+]CC(=O)[O-]": ("[NH3+]CC(=O)[O-]", ["neutral form NCC(=O)O;"]),
    "CC(=O)[O-].[Na+]": ("CC(=O)[O-]", ["stripped [Na+]", "neutral form CC(=O)O;"]),
    "CN(C)CCC=C1c2ccccc2CCc2ccccc21.Cl": ("CN(C)CCC=C1c2ccccc2CCc2ccccc21", ["stripped Cl"]),
    "C[C@H]([NH3+])C(=O)[O-]": ("C[C@H]([NH3+])C(=O)[O-]", ["neutral form C[C@H](N)C(=O)O;"]),
    "C/C=C/C[C@@H](C)[NH3+].[Cl-]": ("C/C=C/C[C@@H](C)[NH3+]", ["stripped [Cl-]", "neutral form C/C=C/C[C@@H](C)N;"]),
    "C[C@H](Cc1ccccc1)[NH2+]C.[Cl-]": ("C[C@H](Cc1ccccc1)[NH2+]C", ["stripped [Cl-]", "neutral form"]),
    "C[N+](C)(C)CCO.[Cl-]": ("C[N+](C)(C)CCO", ["stripped [Cl-]", "net charge +1 that no proton change removes"]),
}
BAD = {"[CH2]C": "radical (1 unpaired electrons)", "C[Se]C": "element(s) Se not supported"}


@pytest.fixture(scope="module")
def batch():
    """One call as a user makes it: the charged inputs, a good neutral molecule and two bad inputs."""
    inputs = ["CCO", *CASES, *BAD]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mols, report = molconf.predict(inputs, return_report=True)
    return inputs, mols, report, caught


def _bond_lengths(mol):
    x = mol.GetConformer().GetPositions()
    return {(b.GetBeginAtomIdx(), b.GetEndAtomIdx()): float(np.linalg.norm(x[b.GetBeginAtomIdx()] - x[b.GetEndAtomIdx()]))
            for b in mol.GetBonds()}


@pytest.mark.parametrize("smiles", list(CASES))
def test_charged_input_is_predicted_with_its_own_charges(batch, smiles):
    inputs, mols, report, _ = batch
    i = inputs.index(smiles)
    kept, noted = CASES[smiles]
    mol = mols[i]
    assert mol is not None, report.failures
    expected = Chem.AddHs(Chem.MolFromSmiles(kept))
    assert mol.GetNumConformers() == 1
    # same molecule, charges, explicit H and stereo (the returned tags are read from the conformer)
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == Chem.MolToSmiles(Chem.RemoveHs(expected))
    assert [a.GetFormalCharge() for a in mol.GetAtoms() if a.GetAtomicNum() > 1] == \
        [a.GetFormalCharge() for a in expected.GetAtoms() if a.GetAtomicNum() > 1]
    assert mol.GetNumAtoms() == expected.GetNumAtoms()
    assert sum(a.GetAtomicNum() == 1 for a in mol.GetAtoms()) == sum(a.GetAtomicNum() == 1 for a in expected.GetAtoms())
    assert all(a.GetNumImplicitHs() == 0 for a in mol.GetAtoms())
    # CIP labels from the 3D conformer = those the input asks for (heavy atoms keep the input's order)
    assert stereo_labels(Chem.Mol(mol)) == graph_stereo_labels(expected)
    notes = " | ".join(report.notes[i])
    for text in noted:
        assert text in notes
    lengths = _bond_lengths(mol)
    assert all(0.8 < d < 2.0 for d in lengths.values()), lengths
    for (a, b), d in lengths.items():  # the H re-placed on a protonated atom: ~1.03 Å
        ends = sorted((mol.GetAtomWithIdx(a), mol.GetAtomWithIdx(b)), key=lambda x: x.GetAtomicNum())
        if ends[0].GetAtomicNum() == 1 and ends[1].GetFormalCharge() > 0 and "neutral form" in notes:
            assert 0.95 < d < 1.12, (a, b, d)


def test_added_hydrogens_sit_on_their_atom_and_clash_with_nothing(batch):
    inputs, mols, _, _ = batch
    for smiles in ("C[NH3+]", "[NH3+]CC(=O)[O-]", "C[C@H](Cc1ccccc1)[NH2+]C.[Cl-]"):
        mol = mols[inputs.index(smiles)]
        n = next(a for a in mol.GetAtoms() if a.GetSymbol() == "N")
        x = mol.GetConformer().GetPositions()
        hs = [a.GetIdx() for a in n.GetNeighbors() if a.GetAtomicNum() == 1]
        assert len(hs) == n.GetTotalNumHs(includeNeighbors=True) == (3 if "NH3" in smiles else 2)
        for h in hs:
            assert 0.95 < np.linalg.norm(x[h] - x[n.GetIdx()]) < 1.12
            others = [j for j in range(mol.GetNumAtoms()) if j not in (h, n.GetIdx())]
            assert np.linalg.norm(x[others] - x[h], axis=1).min() > 1.3  # H–N–X is ~1.6 Å or more


def test_bad_inputs_fail_clearly_and_good_ones_survive(batch):
    inputs, mols, report, caught = batch
    assert mols[0] is not None
    failed = {f.index: f.reason for f in report.failures}
    assert set(failed) == {inputs.index(s) for s in BAD}
    for smiles, reason in BAD.items():
        assert reason in failed[inputs.index(smiles)]
    assert all(m is not None for s, m in zip(inputs, mols) if s not in BAD)
    assert any(f"{len(BAD)} of {len(inputs)} inputs not predicted" in str(w.message) for w in caught)


def test_forked_workers_give_the_same_charged_results():
    inputs = ["C[NH3+]", "[NH3+]CC(=O)[O-]", "CC(=O)[O-].[Na+]", "CCO"]
    one = molconf.predict(inputs, batch_size=1)
    two = molconf.predict(inputs, batch_size=1, workers=2)
    for a, b in zip(one, two):
        assert Chem.MolToSmiles(a) == Chem.MolToSmiles(b)
        assert np.allclose(a.GetConformer().GetPositions(), b.GetConformer().GetPositions(), atol=1e-3)


def test_a_mol_input_keeps_its_atom_order_and_hydrogens():
    """A charged Mol with explicit H (as read from an SDF) comes back atom for atom."""
    mol = Chem.AddHs(Chem.MolFromSmiles("OC(=O)[C@@H]([NH3+])CC(=O)[O-]"))
    [out] = molconf.predict([mol])
    assert [a.GetAtomicNum() for a in out.GetAtoms()] == [a.GetAtomicNum() for a in mol.GetAtoms()]
    assert [a.GetFormalCharge() for a in out.GetAtoms()] == [a.GetFormalCharge() for a in mol.GetAtoms()]
    assert {(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in out.GetBonds()} == \
        {(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()}
    assert Chem.MolToSmiles(Chem.RemoveHs(out)) == Chem.MolToSmiles(Chem.RemoveHs(mol))


def test_strict_parse_for_generate_still_refuses_and_points_to_predict():
    with pytest.raises(MoleculeError, match=r"net charge \+1.*molconf.predict"):
        parse_input("C[NH3+]")
    with pytest.raises(MoleculeError, match="2 disconnected fragments.*molconf.predict"):
        parse_input("CC(=O)[O-].[Na+]")


def test_standardize_passes_neutral_molecules_through_untouched():
    form = standardize(Chem.MolFromSmiles("c1ccccc1[N+](=O)[O-]"))  # nitro: charged atoms, neutral overall
    assert not form.changed and not form.notes and form.heavy_map is None
    form = standardize(Chem.MolFromSmiles("C[N+](C)(C)CC(=O)[O-]"))  # betaine: nothing to neutralise
    assert not form.changed and not form.notes
    with pytest.raises(MoleculeError, match="radical"):
        standardize(Chem.MolFromSmiles("[CH2]C.[Na+]"))


# ---------------------------------------------------------------- the coordinate transfer on its own
REAL = ["C[NH3+]", "[NH3+]CC(=O)[O-]", "OC(=O)CC[NH3+]", "[O-]C(=O)CC(=O)[O-]", "NC(=[NH2+])N", "c1cc[nH+]cc1",
        "C[C@H]([NH3+])C(=O)[O-]", "[NH3+]CCCC[C@H]([NH3+])C(=O)[O-]", "C[NH+]1CCC(c2ccccc2)CC1",
        "CC(C)[NH2+]C[C@H](O)COc1cccc2ccccc12", "[O-]c1ccccc1C(=O)[O-]", "C[N-]S(C)(=O)=O",
        "CC(=O)Oc1ccccc1C(=O)[O-]", "[NH3+]C1CC1C(=O)[O-]", "C[N+](C)(C)CC[NH3+]"]


def _truth_pairs(mol, neutral, perm):
    """The map (u, n) known by construction: neutral atom k was atom perm[k] of the unrenumbered neutral,
    whose heavy atoms carry their index in mol."""
    return sorted((neutral.GetAtomWithIdx(k).GetIntProp("_truth"), k) for k in range(neutral.GetNumAtoms())
                  if neutral.GetAtomWithIdx(k).GetAtomicNum() > 1)


@pytest.mark.parametrize("smiles", REAL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_atom_map_finds_the_true_map_after_a_random_renumbering(smiles, seed):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    neutral = neutral_form(mol)
    if neutral is None:
        pytest.skip("nothing to neutralise")
    for a in neutral.GetAtoms():
        if a.HasProp(SOURCE_PROP):
            a.SetIntProp("_truth", a.GetIntProp(SOURCE_PROP))
            a.ClearProp(SOURCE_PROP)  # force the substructure match
    perm = np.random.default_rng(seed).permutation(neutral.GetNumAtoms()).tolist()
    shuffled = Chem.RenumberAtoms(neutral, perm)
    pairs = heavy_atom_map(mol, shuffled).tolist()
    truth = _truth_pairs(mol, shuffled, perm)
    if pairs != [list(p) for p in truth]:
        # only a symmetry of the neutral heavy-atom graph may differ from the truth: it keeps bond orders
        to_n = {u: n for u, n in pairs}
        for b in mol.GetBonds():
            u, v = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            if u in to_n and v in to_n:
                nb = shuffled.GetBondBetweenAtoms(to_n[u], to_n[v])
                assert nb is not None and nb.GetBondType() == b.GetBondType()
        ranks = list(Chem.CanonicalRankAtoms(Chem.RemoveAllHs(neutral), breakTies=False))
        assert len(set(ranks)) < len(ranks), "an asymmetric molecule has exactly one map"
    # the map read from the atom properties (the normal path) is the truth
    assert heavy_atom_map(mol, neutral_form(mol)).tolist() == sorted(
        [u, n] for u, n in ((a.GetIntProp(SOURCE_PROP), a.GetIdx()) for a in neutral_form(mol).GetAtoms()
                            if a.GetAtomicNum() > 1))


@pytest.mark.parametrize("smiles", REAL)
def test_transfer_copies_shared_atoms_and_places_new_hydrogens(smiles):
    form = standardize(Chem.MolFromSmiles(smiles))
    if not form.changed:
        pytest.skip("nothing to neutralise")
    neutral = Chem.Mol(form.model_input)
    assert AllChem.EmbedMolecule(neutral, randomSeed=11) == 0
    src = neutral.GetConformer().GetPositions()
    out = transfer_coordinates(form, src)
    assert out.shape == (form.mol.GetNumAtoms(), 3) and np.isfinite(out).all()
    to_n = dict(form.heavy_map.tolist())
    for u, n in to_n.items():
        assert np.allclose(out[u], src[n])  # heavy atoms: copied exactly
        hu = [a.GetIdx() for a in form.mol.GetAtomWithIdx(u).GetNeighbors() if a.GetAtomicNum() == 1]
        hn = [a.GetIdx() for a in neutral.GetAtomWithIdx(n).GetNeighbors() if a.GetAtomicNum() == 1]
        if len(hu) == len(hn):  # unchanged H count: the neutral prediction's own H
            assert sorted(map(tuple, out[hu].round(6))) == sorted(map(tuple, src[hn].round(6)))
        else:  # re-placed from the heavy-atom geometry
            for h in hu:
                assert 0.95 < np.linalg.norm(out[h] - out[u]) < 1.12
    d = np.linalg.norm(out[:, None] - out[None], axis=-1) + 9 * np.eye(len(out))
    assert d.min() > 0.9  # no two atoms on top of each other
