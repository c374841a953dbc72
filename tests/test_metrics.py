"""Tests for molconf.metrics: pooled distance metrics, C-RMSD and stereo consistency."""

import math

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.constants import C_RMSD, D_MAE, D_RMSE, STEREO_OK
from molconf.metrics import (
    DistanceMetricAccumulator,
    PooledDistanceMetrics,
    c_rmsd,
    c_rmsd_up_to_mirror,
    distance_errors,
    distance_errors_numpy,
    mirror_is_same_molecule,
    mol_with_coords,
    molecule_metrics,
    stereo_consistent,
    stereo_labels,
    stereo_mismatches,
    summarize,
)

# 3-atom example: true distances 3, 4, 5 (a 3-4-5 triangle); predicted 3, 0, 3.
TRI_TRUE = np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])
TRI_PRED = np.array([[0.0, 0, 0], [3, 0, 0], [0, 0, 0]])
# errors per unordered pair: |3-3|=0, |4-0|=4, |5-3|=2; each counted twice in the N×N matrix
TRI_ABS, TRI_SQ = 2 * (0 + 4 + 2), 2 * (0 + 16 + 4)
# 2-atom example: true distance 1, predicted 2
DI_TRUE = np.array([[0.0, 0, 0], [1, 0, 0]])
DI_PRED = np.array([[0.0, 0, 0], [2, 0, 0]])


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def embed(smiles, seed=0):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    return mol


def coords(mol):
    return mol.GetConformer().GetPositions()


def pad_batch(pairs, n_max):
    """Dense padded (pred, true, mask) with garbage in the padding."""
    b = len(pairs)
    pred = torch.full((b, n_max, 3), 123.0, dtype=torch.float64)
    true = torch.full((b, n_max, 3), -77.0, dtype=torch.float64)
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    for i, (p, t) in enumerate(pairs):
        pred[i, : len(p)] = torch.as_tensor(p)
        true[i, : len(t)] = torch.as_tensor(t)
        mask[i, : len(t)] = True
    return pred, true, mask


# ----------------------------------------------------------------------------- distances
def test_hand_computed_three_atoms():
    abs_sum, sq_sum, n = distance_errors_numpy(TRI_PRED, TRI_TRUE)
    assert (abs_sum, sq_sum, n) == (TRI_ABS, TRI_SQ, 9)
    acc = DistanceMetricAccumulator()
    acc.update_numpy(TRI_PRED, TRI_TRUE)
    out = acc.compute()
    assert out[D_MAE] == pytest.approx(12 / 9)  # diagonal included: N² = 9, not 6 or 3
    assert out[D_RMSE] == pytest.approx(math.sqrt(40 / 9))


def test_pooled_differs_from_per_molecule_mean():
    acc = DistanceMetricAccumulator()
    acc.update_numpy(DI_PRED, DI_TRUE)  # abs 2 over 4 pairs, sq 2
    acc.update_numpy(TRI_PRED, TRI_TRUE)  # abs 12 over 9 pairs, sq 40
    out = acc.compute()
    assert out[D_MAE] == pytest.approx(14 / 13)
    assert out[D_RMSE] == pytest.approx(math.sqrt(42 / 13))
    assert out["d_mae_per_mol"] == pytest.approx((2 / 4 + 12 / 9) / 2)
    assert out["d_rmse_per_mol"] == pytest.approx((math.sqrt(2 / 4) + math.sqrt(40 / 9)) / 2)
    assert out["n_molecules"] == 2
    assert out[D_MAE] != pytest.approx(out["d_mae_per_mol"])


def test_dense_padding_ignored_and_matches_numpy():
    rng = np.random.default_rng(0)
    sizes = [2, 5, 9, 1]
    pairs = [(rng.normal(size=(n, 3)) * 2, rng.normal(size=(n, 3)) * 2) for n in sizes]
    pred, true, mask = pad_batch(pairs, n_max=11)
    abs_sum, sq_sum, n_pairs = distance_errors(pred, true, mask)
    for i, (p, t) in enumerate(pairs):
        ref = distance_errors_numpy(p, t)
        assert abs_sum[i].item() == pytest.approx(ref[0], rel=1e-12, abs=1e-12)
        assert sq_sum[i].item() == pytest.approx(ref[1], rel=1e-12, abs=1e-12)
        assert n_pairs[i].item() == sizes[i] ** 2
    # dense accumulator == numpy accumulator
    dense, np_acc = DistanceMetricAccumulator(), DistanceMetricAccumulator()
    dense.update(pred.float(), true.float(), mask)
    for p, t in pairs:
        np_acc.update_numpy(p, t)
    for k, v in np_acc.compute().items():
        assert dense.compute()[k] == pytest.approx(v, rel=1e-5)


def test_gradient_is_finite():
    # atoms 0 and 1 coincide: sqrt'(0) must not leak into the gradient
    pred = torch.tensor([[[0.0, 0, 0], [0, 0, 0], [1, 0, 0]]], requires_grad=True)
    true = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]])
    abs_sum, _, n = distance_errors(pred, true, torch.ones(1, 3, dtype=torch.bool))
    (abs_sum / n).sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_invariances_and_rmse_at_least_mae():
    rng = np.random.default_rng(1)
    true, pred = rng.normal(size=(7, 3)) * 1.5, rng.normal(size=(7, 3)) * 1.5
    base = distance_errors_numpy(pred, true)
    rot, shift = random_rotation(rng), rng.normal(size=3) * 10
    perm = rng.permutation(7)
    variants = [
        (pred @ rot.T + shift, true),  # rigid motion of the prediction
        (pred, true @ rot.T - shift),  # rigid motion of the reference
        (pred[perm], true[perm]),  # same atom permutation on both
    ]
    for p, t in variants:
        assert distance_errors_numpy(p, t) == pytest.approx(base)
    acc = DistanceMetricAccumulator()
    for _ in range(5):
        n = rng.integers(1, 10)
        acc.update_numpy(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)))
    out = acc.compute()
    assert out[D_RMSE] >= out[D_MAE] and out["d_rmse_per_mol"] >= out["d_mae_per_mol"]


def test_accumulator_merge_equals_single_pass_and_torchmetrics_agrees():
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(4):
        sizes = rng.integers(1, 8, size=3)
        pairs = [(rng.normal(size=(n, 3)), rng.normal(size=(n, 3))) for n in sizes]
        batches.append(pad_batch(pairs, 8))
    single, metric = DistanceMetricAccumulator(), PooledDistanceMetrics()
    parts = [DistanceMetricAccumulator(), DistanceMetricAccumulator()]
    for i, batch in enumerate(batches):
        single.update(*batch)
        parts[i % 2].update(*batch)
        metric.update(*batch)
    merged = DistanceMetricAccumulator().merge(parts[0]).merge(parts[1].state())
    tm = metric.compute()
    for k, v in single.compute().items():
        assert merged.compute()[k] == pytest.approx(v, rel=1e-12)
        assert float(tm[k]) == pytest.approx(v, rel=1e-12)
    assert single.compute()["n_molecules"] == 12


# ----------------------------------------------------------------------------- RDKit helpers
def test_mol_with_coords_copies_and_checks_shape():
    mol = embed("CCO")
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=0)
    new = np.arange(mol.GetNumAtoms() * 3, dtype=float).reshape(-1, 3)
    out = mol_with_coords(mol, new)
    assert out.GetNumConformers() == 1 and mol.GetNumConformers() == 3
    np.testing.assert_allclose(coords(out), new)
    assert out.GetConformer().Is3D()
    with pytest.raises(ValueError):
        mol_with_coords(mol, new[:-1])


def test_c_rmsd_identical_and_rigid_motion():
    rng = np.random.default_rng(3)
    ref = embed("CC(O)CN")
    ref_xyz = coords(ref).copy()
    assert c_rmsd(ref, Chem.Mol(ref)) == pytest.approx(0.0, abs=1e-6)
    pred = mol_with_coords(ref, ref_xyz @ random_rotation(rng).T + [3.0, -2.0, 7.0])
    pred_xyz = coords(pred).copy()
    assert c_rmsd(ref, pred) == pytest.approx(0.0, abs=1e-6)
    # inputs untouched (GetBestRMS aligns its probe in place)
    np.testing.assert_array_equal(coords(ref), ref_xyz)
    np.testing.assert_array_equal(coords(pred), pred_xyz)


@pytest.mark.parametrize("smiles, perm", [
    ("CC(C)C", [2, 1, 0, 3]),  # isobutane: swap two methyl carbons
    ("c1ccccc1", [1, 2, 3, 4, 5, 0]),  # benzene: rotate ring labels by one
])
def test_c_rmsd_symmetry_aware(smiles, perm):
    ref = embed(smiles)
    xyz = coords(ref)
    swapped = xyz.copy()
    swapped[: len(perm)] = xyz[perm]  # heavy atoms come first after AddHs
    pred = mol_with_coords(ref, swapped)
    heavy_plain = np.sqrt(np.mean(np.sum((xyz[: len(perm)] - swapped[: len(perm)]) ** 2, -1)))
    assert heavy_plain > 0.5  # order-preserving RMSD would be large ...
    assert c_rmsd(ref, pred) == pytest.approx(0.0, abs=1e-4)  # ... the symmetric one is ~0


def kabsch_rmsd(p, q):
    p, q = p - p.mean(0), q - q.mean(0)
    u, _, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1, 1, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((p @ rot - q) ** 2, -1))))


def test_c_rmsd_known_distortion_matches_kabsch():
    ref = embed("CC(O)CN")  # no heavy-atom graph symmetry: only the identity mapping
    heavy = [a.GetIdx() for a in ref.GetAtoms() if a.GetAtomicNum() > 1]
    xyz = coords(ref)
    moved = xyz.copy()
    moved[2] += [0.6, -0.4, 0.3]  # displace the oxygen; H positions are irrelevant
    expected = kabsch_rmsd(moved[heavy], xyz[heavy])
    assert expected > 0.1
    assert c_rmsd(ref, mol_with_coords(ref, moved)) == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- stereo
def test_stereo_mirror_image_is_inconsistent():
    mol = embed("C[C@H](N)O")
    mirror = mol_with_coords(mol, coords(mol) * [-1, 1, 1])
    assert stereo_labels(mol) == {"atom 1": "R"}
    assert stereo_labels(mirror) == {"atom 1": "S"}
    assert stereo_consistent(mol, mol_with_coords(mol, coords(mol)))
    assert not stereo_consistent(mol, mirror)
    assert stereo_mismatches(mol, mirror) == ["atom 1: R -> S"]


def test_stereo_missing_label_is_inconsistent():
    mol = embed("C[C@H](N)O")
    flat = coords(mol).copy()
    flat[:, 2] = 0.0  # planar: no perceivable chirality
    assert stereo_mismatches(mol, mol_with_coords(mol, flat)) == ["atom 1: R -> missing"]


def test_stereo_double_bond_e_z():
    e_mol = embed("C/C=C/C")
    z_mol = embed("C/C=C\\C")
    elements = lambda m: [a.GetAtomicNum() for a in m.GetAtoms()]  # noqa: E731
    assert elements(e_mol) == elements(z_mol)  # same atom order
    pred_z = mol_with_coords(e_mol, coords(z_mol))  # E-tagged graph, Z geometry
    assert stereo_labels(e_mol) == {"bond 1-2": "E"}
    assert stereo_labels(pred_z) == {"bond 1-2": "Z"}
    assert stereo_mismatches(e_mol, pred_z) == ["bond 1-2: E -> Z"]
    assert stereo_consistent(e_mol, mol_with_coords(e_mol, coords(e_mol)))


def test_stereo_achiral_always_consistent():
    mol = embed("CCO")
    assert stereo_labels(mol) == {}
    assert stereo_consistent(mol, mol_with_coords(mol, coords(mol) * [-1, 1, 1]))
    with pytest.raises(ValueError):
        stereo_labels(Chem.MolFromSmiles("CCO"))  # no conformer


# ----------------------------------------------------------------------------- summary
def test_summarize_row_and_per_molecule():
    chiral, butene, ethanol = embed("C[C@H](N)O"), embed("C/C=C/C"), embed("CCO")
    moved = coords(ethanol).copy()
    moved[2] += [0.5, 0.0, 0.0]
    pairs = [
        # mirror image: distance errors 0, stereo inconsistent
        (chiral, mol_with_coords(chiral, coords(chiral) * [-1, 1, 1])),
        (butene, None),  # failure
        (ethanol, mol_with_coords(ethanol, moved)),
    ]
    row, per_mol = summarize(pairs)
    assert row["n_molecules"] == 3 and row["n_failed"] == 1
    acc = DistanceMetricAccumulator()
    acc.update_numpy(coords(pairs[0][1]), coords(chiral))
    acc.update_numpy(moved, coords(ethanol))
    for k, v in acc.compute().items():
        if k != "n_molecules":
            assert row[k] == pytest.approx(v)
    assert per_mol[0][D_MAE] == pytest.approx(0.0, abs=1e-12)  # mirror images share distances
    rmsds = [c_rmsd(chiral, pairs[0][1]), c_rmsd(ethanol, pairs[2][1])]
    assert row[C_RMSD] == pytest.approx(np.mean(rmsds))
    assert row[STEREO_OK] == pytest.approx(0.5)  # over the two successful predictions
    assert row[D_RMSE] >= row[D_MAE]
    assert [r["failed"] for r in per_mol] == [False, True, False]
    assert math.isnan(per_mol[1][D_MAE]) and math.isnan(per_mol[1][C_RMSD])
    assert per_mol[0]["stereo_mismatches"] == "atom 1: R -> S"
    assert per_mol[2][STEREO_OK] == 1.0 and per_mol[2]["n_atoms"] == 9
    with pytest.raises(ValueError):
        summarize([(ethanol, chiral)])


def test_stereo_legacy_fallback(monkeypatch):
    """If the new CIP labeller gives up, legacy labels are used (same answers here)."""
    import molconf.metrics as metrics

    def give_up(mol, *args, **kwargs):
        raise RuntimeError("max iterations exceeded")

    chiral, butene = embed("C[C@H](N)O"), embed("C/C=C/C")
    expected = [stereo_labels(chiral), stereo_labels(butene)]
    monkeypatch.setattr(metrics.rdCIPLabeler, "AssignCIPLabels", give_up)
    assert [stereo_labels(chiral), stereo_labels(butene)] == expected


def test_local_distance_errors_against_bonds_and_angles_by_hand():
    """1-2 pairs are RDKit's bonds, 1-3 pairs the ends of every angle: the errors summed by hand."""
    from molconf.metrics import local_distance_errors, mol_with_coords

    m = Chem.AddHs(Chem.MolFromSmiles("OC1CCN(C(=O)c2ccccc2Cl)CC1"))
    AllChem.EmbedMolecule(m, randomSeed=4)
    rng = np.random.default_rng(0)
    pred = mol_with_coords(m, m.GetConformer().GetPositions() + rng.normal(0, 0.1, (m.GetNumAtoms(), 3)))
    a, b = m.GetConformer().GetPositions(), pred.GetConformer().GetPositions()

    def err(i, j):
        return abs(np.linalg.norm(b[i] - b[j]) - np.linalg.norm(a[i] - a[j]))

    bonds = {tuple(sorted((x.GetBeginAtomIdx(), x.GetEndAtomIdx()))) for x in m.GetBonds()}
    angles = set()
    for atom in m.GetAtoms():
        nb = [n.GetIdx() for n in atom.GetNeighbors()]
        angles |= {tuple(sorted((i, j))) for i in nb for j in nb if i != j}
    angles -= bonds  # a 3-ring's ends are bonded: 1 bond apart
    got = local_distance_errors(m, pred)
    assert got[1][1] == len(bonds) and got[1][0] == pytest.approx(sum(err(*p) for p in bonds))
    assert got[2][1] == len(angles) and got[2][0] == pytest.approx(sum(err(*p) for p in angles))


# ----------------------------------------------------------------------------- C-RMSD up to mirror
def _rmsd_any_orthogonal(ref, pred, reflect):
    """Slow obvious reference: heavy-atom RMSD minimised over every symmetry mapping of the
    heavy-atom graph and over rotations (and, with ``reflect``, also improper rotations)."""
    ref_h, pred_h = Chem.RemoveHs(ref), Chem.RemoveHs(pred)
    x, y = coords(pred_h), coords(ref_h)
    best = np.inf
    graph = Chem.RWMol(ref_h)  # bond orders dropped: RDKit's GetBestRMS also swaps the O of C(=O)O and the like
    for bond in graph.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
    for atom in graph.GetAtoms():
        atom.SetIsAromatic(False)
    for match in graph.GetSubstructMatches(graph, uniquify=False, useChirality=False, maxMatches=100000):
        a = x[list(match)] - x[list(match)].mean(0)  # pred atom match[i] plays ref atom i
        b = y - y.mean(0)
        u, _, vt = np.linalg.svd(a.T @ b)
        signs = (1.0, -1.0) if reflect else (1.0,)
        for sign in signs:  # sign: det of the orthogonal map wanted
            d = np.diag([1.0, 1.0, sign * np.sign(np.linalg.det(u @ vt))])
            r = u @ d @ vt
            best = min(best, float(np.sqrt(((a @ r - b) ** 2).sum(1).mean())))
    return best


@pytest.mark.parametrize("smiles", ["OCCCCCCCN", "CC(=O)Nc1ccc(OCCN(C)C)cc1", "C[C@H](N)CCCC(=O)O",
                                    "C[C@H](O)[C@@H](C)O", "O=C(O)CCc1ccccc1"])
def test_c_rmsd_up_to_mirror_matches_brute_force(smiles):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, 4, randomSeed=11))
    ref = Chem.Mol(mol, confId=ids[0])
    achiral = mirror_is_same_molecule(ref)
    assert achiral == (smiles != "C[C@H](N)CCCC(=O)O")
    for cid in ids[1:]:
        pred = Chem.Mol(mol, confId=cid)
        for probe in (pred, mol_with_coords(pred, coords(pred) * [1.0, -1.0, 1.0])):
            got = c_rmsd_up_to_mirror(ref, probe)
            assert got == pytest.approx(_rmsd_any_orthogonal(ref, probe, reflect=achiral), abs=1e-4)
            assert got <= c_rmsd(ref, probe) + 1e-9


def test_mirror_image_of_achiral_conformer_is_the_same_ground_state():
    ref = embed("OCCCCCCCN", seed=5)
    mirror = mol_with_coords(ref, coords(ref) * [-1.0, 1.0, 1.0])
    assert c_rmsd(ref, mirror) > 0.1  # the papers' C-RMSD counts it as an error
    assert c_rmsd_up_to_mirror(ref, mirror) == pytest.approx(0.0, abs=1e-6)


def test_mirror_image_of_a_chiral_molecule_is_never_credited():
    ref = embed("C[C@H](N)CCCC(=O)O", seed=2)
    mirror = mol_with_coords(ref, coords(ref) * [-1.0, 1.0, 1.0])  # the enantiomer
    assert not mirror_is_same_molecule(ref)
    assert c_rmsd_up_to_mirror(ref, mirror) == pytest.approx(c_rmsd(ref, mirror)) and c_rmsd(ref, mirror) > 0.1


def test_molecule_metrics_mirror_reuses_its_c_rmsd_and_matches_the_public_function():
    for smiles in ("OCCCCCCCN", "C[C@H](N)CCCC(=O)O"):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        ids = list(AllChem.EmbedMultipleConfs(mol, 2, randomSeed=4))
        ref, pred = Chem.Mol(mol, confId=ids[0]), Chem.Mol(mol, confId=ids[1])
        row = molecule_metrics(ref, pred, mirror=True)
        assert row["c_rmsd_mirror"] == pytest.approx(c_rmsd_up_to_mirror(ref, pred), abs=1e-12)
        assert row["achiral"] == mirror_is_same_molecule(ref) == (smiles == "OCCCCCCCN")
        assert "c_rmsd_mirror" not in molecule_metrics(ref, pred)  # opt-in
