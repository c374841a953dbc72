"""GFN2-xTB conformer ensembles: dedup against a slow reference, the build on real molecules."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from molconf import constants as K
from molconf.data.moses_xtb import iter_sdf_records, read_reference
from molconf.ground_state import ensembles as En

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "moses_xtb" / "molecules.sdf.gz"


def _unique_by_hand(mol, energies, threshold):
    """Slow reference: every pair's RMSD first, then the greedy walk lowest first."""
    heavy = Chem.RemoveHs(mol)
    n = heavy.GetNumConformers()
    rmsd = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        rmsd[i, j] = rmsd[j, i] = rdMolAlign.GetBestRMS(Chem.Mol(heavy, confId=j), heavy, -1, i)
    kept = []
    for k in sorted((k for k in range(n) if np.isfinite(energies[k])), key=lambda k: (energies[k], k)):
        if all(rmsd[k, q] >= threshold for q in kept):
            kept.append(k)
    return kept


@pytest.mark.parametrize("smiles,seed", [("CCCCCO", 5), ("CC(=O)Nc1ccc(O)cc1", 9), ("OCC(N)C(=O)OC", 3)])
def test_unique_by_rmsd_matches_the_slow_reference(smiles, seed):
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMultipleConfs(m, 8, randomSeed=seed)
    AllChem.MMFFOptimizeMoleculeConfs(m, maxIters=2000)
    m.AddConformer(Chem.Conformer(m.GetConformer(2)), assignId=True)  # an exact duplicate
    rng = np.random.default_rng(seed)
    energies = rng.normal(size=m.GetNumConformers()).tolist()
    energies[3] = float("inf")  # a failed minimisation is never kept
    ids = [c.GetId() for c in m.GetConformers()]
    for threshold in (0.125, 0.5, 1.0):
        got = En.unique_by_rmsd(Chem.RemoveHs(m), ids, energies, threshold)
        assert got == _unique_by_hand(m, energies, threshold)
        assert 3 not in got and not {2, 8} <= set(got)


def test_settings_refuse_the_reference_builds_seed_and_the_identical_conformer_seed():
    for seed in (0, 42):
        with pytest.raises(ValueError, match="choose another"):
            En.EnsembleSettings(seed=seed)


@pytest.fixture
def small_split(tmp_path):
    records = list(itertools.islice(iter_sdf_records(SAMPLE), 40))
    mols = [read_reference(r) for r in records]
    picked = np.argsort([m.GetNumAtoms() for m in mols])[:2]  # the smallest: quick GFN2-xTB
    sdf = tmp_path / "molecules.sdf"
    sdf.write_text(records[picked[0]] + records[picked[1]])
    ids = [int(mols[i].GetProp(K.SDF_SOURCE_INDEX)) for i in picked]
    np.save(tmp_path / "split_test.npy", np.asarray(ids))
    return sdf, ids, {int(mols[i].GetProp(K.SDF_SOURCE_INDEX)): mols[i] for i in picked}


def test_build_is_resumable_and_its_ensembles_are_gfn2_minima_within_the_window(small_split, tmp_path, monkeypatch):
    pytest.importorskip("tblite")
    from molconf.ground_state.xtb import XtbProtocol, gfn2_energy
    from molconf.stereo import stereo_spec

    sdf, ids, refs = small_split
    settings = En.EnsembleSettings(conformers=4, window_kcal=3.0)
    out = tmp_path / "ens"
    summary = En.build_ensembles("test", out, None, settings, sdf=sdf, shard_size=1, progress=False)
    ens = En.read_ensembles(out)
    assert sorted(ens) == sorted(ids) and summary["molecules"] == 2 and summary["failures"] == []
    for index, m in ens.items():
        rel = [float(x) for x in m.GetProp("rel_kcal").split()]
        origin = m.GetProp("origin").split()
        assert rel == sorted(rel) and rel[0] == 0.0 and rel[-1] <= 3.0 and len(origin) == m.GetNumConformers()
        assert set(origin) <= {"etkdg", "reference"}
        energies = [gfn2_energy(m, XtbProtocol(), conf_id=c.GetId()) for c in m.GetConformers()]
        assert (np.array(energies) - energies[0]) * En.EV_TO_KCAL == pytest.approx(rel, abs=0.01)
        if "reference" in origin:  # the data set's ground state is kept as it is
            ref = refs[index]
            pos = m.GetConformer(origin.index("reference")).GetPositions()
            assert np.allclose(pos, ref.GetConformer().GetPositions(), atol=1e-3)
        spec = stereo_spec(refs[index])
        assert all(not spec.mismatches(c.GetPositions()) for c in m.GetConformers())
        heavy = Chem.RemoveHs(m)
        cids = [c.GetId() for c in heavy.GetConformers()]
        assert all(En.heavy_rmsd(heavy, a, b) >= settings.rmsd_dedup for a, b in itertools.combinations(cids, 2))
    calls = []
    monkeypatch.setattr(En, "molecule_ensemble", lambda *a: calls.append(a) or (a[0], "failed: should not run"))
    En.build_ensembles("test", out, None, settings, sdf=sdf, shard_size=1, progress=False)
    assert calls == []  # every unit exists: nothing recomputed
    with pytest.raises(ValueError, match="other settings"):
        En.build_ensembles("test", out, None, En.EnsembleSettings(conformers=5), sdf=sdf, shard_size=1, progress=False)
    assert json.loads((out / "summary.json").read_text())["molecules"] == 2


def test_a_failed_molecule_is_named_and_its_unit_mates_kept(small_split, tmp_path, monkeypatch):
    sdf, ids, _ = small_split

    def fake(index, record, settings):  # the first molecule fails, the other gets a 1-conformer ensemble
        if index == ids[0]:
            return index, "failed: RuntimeError: SCF failure"
        m = read_reference(record)
        m.SetIntProp(En.INDEX_PROP, index)
        for key, value in (("origin", "reference"), ("rel_kcal", 0.0)):
            (m.SetProp if isinstance(value, str) else m.SetDoubleProp)(key, value)
        return index, Chem.MolToMolBlock(m) + "".join(f">  <{p}>  ({1})\n{m.GetProp(p)}\n\n" for p in
                                                      (En.INDEX_PROP, "origin", "rel_kcal")) + "$$$$\n"

    monkeypatch.setattr(En, "molecule_ensemble", fake)
    En.build_ensembles("test", tmp_path / "e", None, sdf=sdf, shard_size=2, progress=False)
    assert sorted(En.read_ensembles(tmp_path / "e")) == [ids[1]]
    assert En.read_failures(tmp_path / "e") == [(ids[0], "RuntimeError: SCF failure")]
    # the committed form: one .sdf.gz with the settings and the failure named beside it
    record = En.export_ensembles(tmp_path / "e", tmp_path / "data" / "test.sdf.gz")
    meta = json.loads((tmp_path / "data" / "test.meta.json").read_text())
    assert meta == record and En.ensemble_settings(tmp_path / "data" / "test.sdf.gz")["split"] == "test"
    assert meta["molecules"] == 1 and meta["failures"] == [{"index": ids[0], "reason": "RuntimeError: SCF failure"}]
    exported, built = En.read_ensembles(tmp_path / "data" / "test.sdf.gz"), En.read_ensembles(tmp_path / "e")
    assert sorted(exported) == [ids[1]]
    assert np.allclose(exported[ids[1]].GetConformer().GetPositions(), built[ids[1]].GetConformer().GetPositions())
    assert exported[ids[1]].GetProp("origin") == built[ids[1]].GetProp("origin") == "reference"
    (tmp_path / "bad.sdf.gz").write_bytes(__import__("gzip").compress(b"not an sdf record\n$$$$\n"))
    with pytest.raises(ValueError, match="bad.sdf.gz: an unreadable record"):
        En.read_ensembles(tmp_path / "bad.sdf.gz")
    with pytest.raises(FileNotFoundError, match="no such ensembles"):
        En.read_ensembles(tmp_path / "missing.sdf.gz")


def test_cli_names_bad_settings_and_missing_files(tmp_path, capsys):
    from molconf.cli import main

    for args, message in ((["--seed", "42"], "seed 42"), (["--sdf", str(tmp_path / "none.sdf")], "no such molecules file"),
                          (["--export", str(tmp_path / "x.sdf.gz")], "not an ensembles build folder")):
        with pytest.raises(SystemExit) as exit_:
            main(["conformer-ensembles", "--out", str(tmp_path / "e"), *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def _grown_split(tmp_path):
    """A release's test split and a grown one: the grown file lists the earlier ids first, then new
    ids that interleave with them in the SDF's (id) order, as ``build-xtb --merge --extend-split``
    writes them."""
    records = list(itertools.islice(iter_sdf_records(SAMPLE), 12))
    ids = [int(read_reference(r).GetProp(K.SDF_SOURCE_INDEX)) for r in records]
    assert ids == sorted(ids)
    sdf = tmp_path / "molecules.sdf"
    sdf.write_text("".join(records))
    old, new = ids[1::2], ids[0::2]  # every new id sits between two old ones in file order
    np.save(tmp_path / "old.npy", np.asarray(old))
    np.save(tmp_path / "grown.npy", np.asarray(old + new))
    return sdf, old


def test_a_draw_among_an_earlier_releases_molecules_survives_the_split_growing(tmp_path):
    sdf, old = _grown_split(tmp_path)
    for seed in range(5):
        before = En.draw("test", 3, seed, sdf, tmp_path / "old.npy")
        after = En.draw("test", 3, seed, sdf, tmp_path / "grown.npy", among_first=len(old))
        assert after == before and {i for i, _ in after} <= set(old)
    whole = [En.draw("test", 3, seed, sdf, tmp_path / "grown.npy") for seed in range(5)]
    assert any(not {i for i, _ in d} <= set(old) for d in whole)  # the whole grown split draws new molecules
    for bad in (0, 13):
        with pytest.raises(ValueError, match="lists 12 molecules"):
            En.draw("test", 3, 0, sdf, tmp_path / "grown.npy", among_first=bad)


def test_pools_limit_takes_the_split_as_listed_so_a_grown_split_keeps_them(tmp_path, monkeypatch):
    from molconf.ground_state import energies as E

    sdf, old = _grown_split(tmp_path)
    seen = {}
    for name in ("old", "grown"):
        calls = []
        monkeypatch.setattr(E, "molecule_pool", lambda index, *a: calls.append(index) or (index, "failed: not run"))
        E.build_pools("test", tmp_path / f"pools_{name}", E.PoolSettings(conformers=2), limit=4, sdf=sdf,
                      split_file=tmp_path / f"{name}.npy", progress=False)
        seen[name] = calls
    assert seen["grown"] == seen["old"] == old[:4]
