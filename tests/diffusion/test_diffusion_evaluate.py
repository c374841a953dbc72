"""Ensemble metrics on hand-made conformer sets."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.diffusion.evaluate import coverage_metrics, ensemble_metrics, pairwise_rmsd, rmsd_matrix, sample_metrics


@pytest.fixture(scope="module")
def ensemble():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCC(O)CC"))
    AllChem.EmbedMultipleConfs(mol, numConfs=4, randomSeed=7)
    return mol


def _moved(mol, seed=0):
    """Same conformers, each rotated and translated at random (RMSD must not change)."""
    out = Chem.Mol(mol)
    rng = np.random.default_rng(seed)
    for conf in out.GetConformers():
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        pos = conf.GetPositions() @ q.T + rng.normal(size=3) * 5
        for i, p in enumerate(pos):
            conf.SetAtomPosition(i, p.tolist())
    return out


def test_identical_ensembles_cover_fully(ensemble):
    m = ensemble_metrics(ensemble, _moved(ensemble), delta=0.5)
    assert m["cov_r"] == 1.0 and m["cov_p"] == 1.0
    assert m["amr_r"] < 1e-4 and m["amr_p"] < 1e-4


def test_known_rmsd_matrices():
    r = np.array([[0.2, 1.0, 3.0],
                  [0.9, 0.8, 0.6]])
    m = coverage_metrics(r, delta=0.75)  # row minima 0.2, 0.6; column minima 0.2, 0.8, 0.6
    assert m["cov_r"] == 1.0 and m["amr_r"] == pytest.approx(0.4)
    assert m["cov_p"] == pytest.approx(2 / 3) and m["amr_p"] == pytest.approx(1.6 / 3)
    m = coverage_metrics(r, delta=0.5)
    assert m["cov_r"] == 0.5 and m["cov_p"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        coverage_metrics(np.zeros((0, 3)))


def test_rmsd_matrix_of_an_ensemble_and_its_subset(ensemble):
    full = rmsd_matrix(ensemble, _moved(ensemble, 3))
    assert full.shape == (4, 4) and np.allclose(np.diag(full), 0, atol=1e-4)
    pw = pairwise_rmsd(ensemble)
    assert np.allclose(pw, pw.T) and np.allclose(full, pw, atol=1e-4)
    subset = Chem.Mol(ensemble)
    subset.RemoveConformer(3)
    m = ensemble_metrics(ensemble, subset, delta=0.5)
    # three of four references are reproduced exactly; the fourth is as close as its nearest sibling
    assert m["cov_p"] == 1.0 and m["amr_p"] < 1e-4
    assert m["amr_r"] == pytest.approx(pw[3, :3].min() / 4, abs=1e-4)
    assert m["cov_r"] == (0.75 if pw[3, :3].min() >= 0.5 else 1.0)


def test_sample_metrics_best_mean_diversity_stereo():
    ref = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)CCO"))
    AllChem.EmbedMultipleConfs(ref, numConfs=3, randomSeed=1)
    one = Chem.Mol(ref, confId=0)
    m = sample_metrics(one, ref)
    assert m["n"] == 3 and m["best_rmsd"] < 1e-4 and m["mean_rmsd"] >= m["best_rmsd"]
    assert m["diversity"] > 0 and m["stereo_consistency"] == 1.0
    mirrored = Chem.Mol(ref)
    for conf in mirrored.GetConformers():
        for i, p in enumerate(conf.GetPositions()):
            conf.SetAtomPosition(i, (p * np.array([-1.0, 1.0, 1.0])).tolist())
    assert sample_metrics(one, mirrored)["stereo_consistency"] == 0.0
