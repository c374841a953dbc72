"""Force samples for the GFN2-xTB correction: what one molecule gives, failures, the resumable runner."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.ground_state import forces as gf


@pytest.fixture
def tblite():
    return pytest.importorskip("tblite")


def _minimum(smiles: str) -> Chem.Mol:
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(m, maxIters=2000)
    return m


class _FakeStore:
    """Stands in for a data-set cache: rows 0 … n-1, ``mol(row)``."""

    def __init__(self, mols):
        self.mols = mols

    def positions_of(self, ids):
        return np.asarray(ids, dtype=np.int64), np.asarray([], dtype=np.int64)

    def mol(self, i):
        return Chem.Mol(self.mols[i])


def test_one_molecule_gives_every_kind_with_both_force_fields(tblite):
    mol = _minimum("CC(=O)N")
    row, out = gf.molecule_samples(3, Chem.MolToMolBlock(mol), gf.XtbProtocol())
    assert row == 3 and out["kind"] == [0, 1, 2, 3, 4, 5] and set(out["row"]) == {3}
    n = mol.GetNumAtoms()
    assert all(p.shape == (n, 3) for p in out["pos"]) and all(f.shape == (n, 3) for f in out["f_gfn2"])
    # kind 1 is an MMFF94 minimum: (almost) no MMFF94 force there, plenty of GFN2-xTB force
    assert np.abs(out["f_mmff"][1]).max() < 0.02 and np.abs(out["f_gfn2"][1]).max() > 0.05
    # GFN2-xTB forces are what the calculator gives at that geometry
    e, f = gf.gfn2_energy_forces(mol, out["pos"][2], gf.XtbProtocol())
    assert e == pytest.approx(out["e_gfn2"][2]) and np.allclose(f, out["f_gfn2"][2])
    # noisy kinds really moved, by about the noise
    shift = np.linalg.norm(out["pos"][5] - out["pos"][4], axis=1)
    assert 0.01 < shift.mean() < 0.06


def test_failures_are_reasons_not_exceptions(tblite):
    boron = Chem.AddHs(Chem.MolFromSmiles("CB(C)C"))  # MMFF94 has no boron
    AllChem.EmbedMolecule(boron, randomSeed=0)
    assert gf.molecule_samples(1, Chem.MolToMolBlock(boron), gf.XtbProtocol()) == (1, "no MMFF94 parameters")
    assert gf.molecule_samples(2, "not a molblock", gf.XtbProtocol()) == (2, "molblock not readable")


def test_runner_writes_shards_resumes_and_reports(tblite, tmp_path, monkeypatch):
    from molconf.data import load

    mols = [_minimum(s) for s in ("O", "CO", "CCO")]
    monkeypatch.setattr(load, "load_dataset", lambda name: _FakeStore(mols))
    monkeypatch.setattr(load, "load_dataset_split", lambda name, split: [0, 1, 2])
    monkeypatch.setattr(gf, "SHARD_SIZE", 2)
    summary = gf.build_force_data("fake", "train", tmp_path, workers=1, progress=False)
    assert summary["molecules"] == 3 and summary["samples"] == 18 and summary["failures"] == 0
    shards = sorted(tmp_path.glob("shard_*.npz"))
    assert [p.name for p in shards] == ["shard_00000.npz", "shard_00001.npz"]
    first = shards[0].stat().st_mtime_ns
    shards[1].unlink()  # as if killed before the last shard
    again = gf.build_force_data("fake", "train", tmp_path, workers=1, progress=False)
    assert again["samples"] == 18 and shards[0].stat().st_mtime_ns == first  # done shards are not redone
    data, failures = gf.load_force_data(tmp_path)
    assert failures == [] and sorted(set(data["row"].tolist())) == [0, 1, 2]
    assert len(data["pos"]) == data["num_atoms"].sum()
    # the training items: targets are F(GFN2) − F(MMFF94), per sample
    ds = gf.ForceSampleDataset(data, {r: None for r in range(3)}, rows=np.array([2]))
    assert len(ds) == 6
    _, pos, delta = ds[1]
    k = ds.index[1]
    start = data["num_atoms"][:k].sum()
    assert np.allclose(delta, data["f_gfn2"][start:start + 9] - data["f_mmff"][start:start + 9]) and pos.shape == (9, 3)
    # other settings into the same folder are refused
    monkeypatch.setattr(gf, "NOISE", 0.05)
    with pytest.raises(ValueError, match="other settings"):
        gf.build_force_data("fake", "train", tmp_path, workers=1, progress=False)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no force samples"):
        gf.load_force_data(tmp_path)
