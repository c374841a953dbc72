"""The conformer search, its pool data and the rankers' scores: against slow, obvious references."""

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf import constants as K
from molconf.ground_state import energies as E
from molconf.ground_state import ranking as R
from molconf.ground_state import search as S
from molconf.data.moses_xtb import iter_sdf_records

REPO = Path(__file__).parents[2]
SAMPLE = REPO / "datasets" / "reference" / "moses_xtb_test_sample.sdf"


@pytest.fixture
def tblite():
    return pytest.importorskip("tblite")


def _unique_minima_by_hand(energies, dedup):
    """Slow reference: walk the energies in sorted order, keep one per group within ``dedup``."""
    finite = sorted((e, i) for i, e in enumerate(energies) if np.isfinite(e))
    kept, last = [], None
    for e, i in finite:
        if last is None or e - last > dedup:
            kept.append(i)
            last = e
    return kept


def test_unique_minima_matches_the_obvious_walk():
    rng = np.random.default_rng(0)
    for _ in range(200):
        e = np.round(rng.normal(0, 1, rng.integers(1, 12)), 2).tolist()
        if rng.random() < 0.3:
            e[0] = float("inf")
        assert S.unique_minima(e, 0.05) == _unique_minima_by_hand(e, 0.05)


def test_settings_refuse_the_identical_conformer_seed_and_unknown_rankers():
    with pytest.raises(ValueError, match="identical"):
        S.SearchSettings(seed=0)
    with pytest.raises(ValueError, match="rank"):
        S.SearchSettings(rank="energy")
    with pytest.raises(ValueError, match="42"):
        E.PoolSettings(seed=42)
    with pytest.raises(ValueError, match="screen"):
        S.SearchSettings(screen="gfn2")


def test_mmff_search_returns_the_lowest_mmff_minimum_with_the_input_stereo():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@@H](O)CC[C@H](N)CC=C"))
    r = S.search(mol, S.SearchSettings(candidates=8, rank="mmff"))
    assert r.mol.GetNumConformers() == 1 and r.mol.GetNumAtoms() == mol.GetNumAtoms()
    assert r.winner.mmff_kcal == min(c.mmff_kcal for c in r.candidates)
    # the same candidates by hand: ETKDG seed 7, MMFF94, the lowest energy
    by_hand = Chem.Mol(mol)
    p = AllChem.ETKDGv3()
    p.randomSeed, p.numThreads = 7, 1
    AllChem.EmbedMultipleConfs(by_hand, 8, p)
    lowest = min(e for _, e in AllChem.MMFFOptimizeMoleculeConfs(by_hand, maxIters=500))
    assert r.winner.mmff_kcal == pytest.approx(lowest, abs=1e-6)
    assert not S.stereo_spec(mol).mismatches(r.mol.GetConformer().GetPositions())
    ff = AllChem.MMFFGetMoleculeForceField(r.mol, AllChem.MMFFGetMoleculeProperties(r.mol))
    assert ff.CalcEnergy() == pytest.approx(r.winner.mmff_kcal, abs=1e-4)


def test_network_candidate_takes_part_and_wrong_stereo_candidates_do_not():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@@H](O)CC"))
    mirror = Chem.Mol(mol)
    AllChem.EmbedMolecule(mirror, randomSeed=3)
    mirror.GetConformer().SetPositions(mirror.GetConformer().GetPositions() * [-1, 1, 1])  # wrong hand
    r = S.search(mol, S.SearchSettings(candidates=3, rank="mmff"), network=mirror)
    assert "network" not in [c.source for c in r.candidates]  # dropped: its stereo is not the input's
    right = Chem.Mol(mol)
    AllChem.EmbedMolecule(right, randomSeed=3)
    r = S.search(mol, S.SearchSettings(candidates=1, rank="mmff"), network=right)
    assert r.winner.source == "network"
    right.SetProp("molconf_stereo_fallback", "etkdg")  # predict replaced the prediction by an ETKDG conformer
    r = S.search(mol, S.SearchSettings(candidates=1, rank="mmff"), network=right)
    assert r.winner.source == "etkdg (stereo fallback)"
    right.SetProp("molconf_stereo_fallback", "mmff")  # still the network's conformation, minimised
    assert S.search(mol, S.SearchSettings(candidates=1, rank="mmff"), network=right).winner.source == "network"


def test_search_names_why_it_failed():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[Se]C"))  # no MMFF94 parameters? then said so
    if AllChem.MMFFHasAllMoleculeParams(mol):
        pytest.skip("MMFF94 covers this molecule in this RDKit")
    with pytest.raises(ValueError, match="MMFF94"):
        S.search(mol, S.SearchSettings(candidates=2, rank="mmff"))


def test_gfn2_ranking_picks_the_lowest_single_point_of_the_lowest_minima(tblite):
    from molconf.ground_state.xtb import XtbProtocol, gfn2_energy

    mol = Chem.AddHs(Chem.MolFromSmiles("OCCCCO"))
    r = S.search(mol, S.SearchSettings(candidates=6, rank="gfn2", top=3))
    ranked = [c for c in r.candidates if c.rank_kcal is not None]
    assert len(ranked) == min(3, len(r.candidates))
    assert r.winner.rank_kcal == min(c.rank_kcal for c in ranked)
    assert r.winner.rank_kcal == pytest.approx(gfn2_energy(r.mol, XtbProtocol()) * S.EV_TO_KCAL, abs=1e-6)


def _read(record):
    supplier = Chem.SDMolSupplier()
    supplier.SetData(record, removeHs=False)
    return supplier[0]


def _small_split(tmp_path, n=3):
    records = list(itertools.islice(iter_sdf_records(SAMPLE), 40))
    mols = [_read(r) for r in records]
    picked = np.argsort([m.GetNumAtoms() for m in mols])[:n]  # the smallest: a quick GFN2-xTB
    sdf = tmp_path / "molecules.sdf"
    sdf.write_text("".join(records[i] for i in picked))
    ids = [int(mols[i].GetProp(K.SDF_SOURCE_INDEX)) for i in picked]
    np.save(tmp_path / "split_test.npy", np.asarray(ids))
    return sdf, ids


def test_pools_resume_and_store_what_a_direct_computation_gives(tblite, tmp_path, monkeypatch):
    from molconf.ground_state.xtb import XtbProtocol, gfn2_energy
    from molconf.metrics import mol_with_coords

    sdf, ids = _small_split(tmp_path)
    settings = E.PoolSettings(conformers=3)
    out = tmp_path / "pools"
    E.build_pools("test", out, settings, sdf=sdf, progress=False)
    pools, failures = E.load_pools(out)
    assert sorted(p.index for p in pools) + [i for i, _ in failures] == sorted(ids) or not failures
    ref = {int(m.GetProp(K.SDF_SOURCE_INDEX)): m for m in Chem.SDMolSupplier(str(sdf), removeHs=False)}
    p = pools[0]
    mol = mol_with_coords(ref[p.index], p.pos[1])
    assert p.e_gfn2[1] == pytest.approx(gfn2_energy(mol, XtbProtocol()) * S.EV_TO_KCAL, abs=1e-3)  # float32 positions
    ff = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    assert p.e_mmff[1] == pytest.approx(ff.CalcEnergy(), abs=1e-2)
    calls = []
    monkeypatch.setattr(E, "molecule_pool", lambda *a: calls.append(a) or (a[0], "should not run"))
    E.build_pools("test", out, settings, sdf=sdf, progress=False)  # every shard exists: nothing recomputed
    assert calls == []
    with pytest.raises(ValueError, match="other settings"):
        E.build_pools("test", out, E.PoolSettings(conformers=4), sdf=sdf, progress=False)
    assert json.loads((out / "summary.json").read_text())["molecules"] == len(pools)


def _pool(index, e_mmff, e_gfn2, rmsd):
    k = len(e_mmff)
    return E.Pool(index, 0.0, np.zeros((k, 2, 3)), np.asarray(e_mmff, float), np.asarray(e_gfn2, float),
                  np.ones(k, bool), np.asarray(rmsd, float))


def test_ranker_scores_on_pools_made_by_hand():
    pools = [_pool(0, [0, 1, 2, 3], [3, 2, 1, 0], [0.9, 0.8, 0.7, 0.1]),
             _pool(1, [0, 1, 2, 3], [0, 1, 2, 3], [0.2, 0.8, 0.9, 1.0])]
    rows = {r["ranker"]: r for r in R.score_rankers(pools, {}, {k: R.RANKERS[k] for k in
                                                                ("mmff", "gfn2", "gfn2_top2", "oracle")})}
    assert rows["gfn2"]["spearman"] == pytest.approx(1.0) and rows["gfn2"]["top1"] == 1.0
    assert rows["mmff"]["spearman"] == pytest.approx(0.0)  # -1 and +1
    assert rows["mmff"]["top1"] == 0.5 and rows["mmff"]["c_rmsd"] == pytest.approx((0.9 + 0.2) / 2)
    assert rows["gfn2_top2"]["c_rmsd"] == pytest.approx((0.8 + 0.2) / 2)  # only the 2 lowest MMFF get a single point
    assert rows["oracle"]["c_rmsd"] == pytest.approx((0.1 + 0.2) / 2) and rows["oracle"]["under_05"] == 1.0
    assert rows["gfn2_top2"]["gfn2_per_mol"] == 2 and rows["gfn2"]["gfn2_per_mol"] == 4


def test_two_stage_ranker_screens_then_ranks_the_few_it_keeps():
    # pool 0: a screen that prefers conformers 3 and 2 lets GFN2-xTB find its lowest (3); MMFF94's two lowest do not
    pools = [_pool(0, [0, 1, 2, 3], [3, 2, 1, 0], [0.9, 0.8, 0.7, 0.1]),
             _pool(1, [0, 0.01, 2, 3], [0, 1, 2, 3], [0.2, 0.8, 0.9, 1.0])]  # conformers 0 and 1: one minimum

    def reversed_mmff(pool, mol=None):
        return -pool.e_mmff

    screened = R.among_lowest_by(2, reversed_mmff, R.gfn2)
    assert screened.gfn2_cost == 2 and "2 lowest by reversed_mmff" in screened.__name__
    assert int(np.argmin(screened(pools[0]))) == 3
    assert int(np.argmin(screened(pools[1]))) == 2  # 3 and 2 kept, 2 lower in GFN2-xTB; 0 was never seen
    rng = np.random.default_rng(1)
    for _ in range(50):  # screening by MMFF94 is the search's default, gfn2_top<k>
        e = rng.normal(0, 2, 6)
        p = _pool(0, e, rng.normal(0, 2, 6), rng.random(6))
        for k in (1, 2, 3):
            assert np.array_equal(R.among_lowest_by(k, R.mmff, R.gfn2)(p), R.gfn2_top(k)(p))
    rows = {r["ranker"]: r for r in R.score_rankers(pools, {}, {"two-stage": screened})}
    assert rows["two-stage"]["gfn2_per_mol"] == 2 and rows["two-stage"]["c_rmsd"] == pytest.approx((0.1 + 0.9) / 2)


def test_predict_search_from_a_fresh_interpreter_keeps_good_molecules_beside_bad():
    code = textwrap.dedent("""
        import warnings, molconf
        for attempt in range(2):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                mols, rep = molconf.predict(["CC(=O)Nc1ccc(O)cc1", "C1=CC=CN1(", "OCC[C@@H](N)CCCC"],
                                            search=4, return_report=True)
            # (DeprecationWarnings from third-party imports, e.g. PyG's under torch 2.13, are not ours)
            ours = [str(x.message) for x in w if not issubclass(x.category, DeprecationWarning)]
            assert mols[1] is None and len(ours) == 1 and "C1=CC=CN1(" in ours[0]
            for i in (0, 2):
                m = mols[i]
                assert m.GetNumConformers() == 1 and m.GetProp("molconf_search_source") in ("network", "etkdg")
                assert rep.search[i]["candidates"] >= 1 and min(x for x in rep.search[i]["relative_kcal"] if x is not None) == 0
                assert rep.search[i]["screen"] == "learned" and rep.search[i]["ranker"] == "gfn2"
            assert not rep.stereo[2].remaining
        try:
            molconf.predict("CCO", search=-3)
        except ValueError as err:
            assert "search" in str(err)
        else:
            raise AssertionError("search=-3 accepted")
        print("ok")
    """)
    pytest.importorskip("tblite")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_fit_ranker_learns_a_known_energy_ordering():
    """Pools whose 'GFN2-xTB' energies are MMFF94 plus a known function of one distance: the fitted
    ranker must order them better than MMFF94 alone, and the ground-state target must run."""
    from molconf.ground_state.correction import Gfn2Correction

    mol = Chem.AddHs(Chem.MolFromSmiles("OCCCCO"))
    pools, mols = [], {}
    for index, seed in enumerate((1, 2, 3, 4)):
        m = Chem.Mol(mol)
        p = AllChem.ETKDGv3()
        p.randomSeed = seed
        AllChem.EmbedMultipleConfs(m, 8, p)
        e_mmff = np.array([e for _, e in AllChem.MMFFOptimizeMoleculeConfs(m, maxIters=500)])
        pos = np.stack([c.GetPositions() for c in m.GetConformers()])
        r_oo = np.linalg.norm(pos[:, 0] - pos[:, 5], axis=1)  # the two O atoms
        e_gfn2 = e_mmff + 3.0 * r_oo  # favours the O···O contact
        pools.append(E.Pool(index, 0.0, pos, e_mmff, e_gfn2, np.ones(len(pos), bool), r_oo - r_oo.min()))
        mols[index] = mol
    base = Gfn2Correction(hidden=16, layers=1, max_hops=3)
    before = R.score_rankers(pools, mols, {"mmff": R.mmff})[0]["spearman"]
    model, history = R.fit_ranker(pools, mols, base, target="energy", epochs=30, lr=3e-3, val_fraction=0.25,
                                  log=lambda *_: None)
    after = R.score_rankers(pools, mols, {"learned": R.learned(model)})[0]["spearman"]
    assert history[-1]["best_epoch"] > 0 and after > before
    model, _ = R.fit_ranker(pools, mols, base, target="ground_state", epochs=2, log=lambda *_: None)
    with pytest.raises(ValueError, match="target"):
        R.fit_ranker(pools, mols, base, target="rmsd")


def test_no_candidate_stream_regenerates_the_reference_builds():
    """The moses_xtb references were picked from build-xtb's own ETKDG stream: the search and the
    pool data must draw theirs with another seed (issue #24, item 5)."""
    from molconf.ground_state.xtb import XtbProtocol

    build_seed = XtbProtocol().embed_seed
    assert E.BUILD_SEED == build_seed
    assert S.SearchSettings().seed != build_seed and E.PoolSettings().seed != build_seed


def test_shipped_ranker_scores_are_mmff_plus_its_correction():
    """The learned ranker's energies against CorrectedMMFF (prerelax's objective, no torsion hold)."""
    from molconf.ground_state.forces import KCAL_TO_EV
    from molconf.ground_state.prerelax import CorrectedMMFF, load_correction

    model = load_correction(S.DEFAULT_RANKER)  # sha256-checked against its card
    mol = Chem.AddHs(Chem.MolFromSmiles("Clc1ccc(cc1)C(=O)NCCO"))
    p = AllChem.ETKDGv3()
    p.randomSeed = 11
    ids = list(AllChem.EmbedMultipleConfs(mol, 3, p))
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=500)
    fast = S.corrected_energies(mol, ids, model)
    slow = [CorrectedMMFF(mol, model, cid)(mol.GetConformer(cid).GetPositions().reshape(-1))[0] / KCAL_TO_EV for cid in ids]
    assert fast == pytest.approx(slow, abs=1e-6)
    r = S.search(mol, S.SearchSettings(candidates=4, rank="learned"))
    assert r.ranker == "learned" and sum(c.rank_kcal is not None for c in r.candidates) <= 3


def test_rankers_benchmark_scores_pools_into_its_table(tblite, tmp_path):
    import importlib.util

    sdf, ids = _small_split(tmp_path, n=2)
    E.build_pools("test", tmp_path / "pools", E.PoolSettings(conformers=3), sdf=sdf, progress=False)
    spec = importlib.util.spec_from_file_location("rankers_bench", REPO / "benchmarks" / "rankers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--pools", str(tmp_path / "pools"), "--out", str(tmp_path / "out"), "--rankers", "mmff", "gfn2", "oracle"])
    rows = {r["ranker"]: r for r in json.loads((tmp_path / "out" / "rankers.json").read_text())["rows"]}
    assert set(rows) >= {"mmff", "gfn2", "oracle"} and rows["gfn2"]["top1"] == 1.0
    assert rows["oracle"]["c_rmsd"] <= rows["mmff"]["c_rmsd"] and rows["mmff"]["molecules"] == 2
    assert "| gfn2 | 2 |" in (tmp_path / "out" / "rankers.md").read_text()


def test_learned_screen_hands_the_ranker_the_lowest_minima_by_the_learned_energy(tblite):
    """Slow reference: the learned ranker's energy of every unique minimum, computed one conformer at a
    time; the ranker must see exactly the ``top`` lowest of them, whatever their MMFF94 order."""
    from molconf.ground_state.xtb import XtbProtocol, gfn2_energy

    mol = Chem.AddHs(Chem.MolFromSmiles("OC(=O)CCc1ccc(O)cc1"))
    for top in (1, 2, 3):
        r = S.search(mol, S.SearchSettings(candidates=8, rank="gfn2", top=top, screen="learned", seed=3))
        pool = S.etkdg_candidates(mol, 8, 3)
        S.mmff_minimise(pool, 500)
        by_id = {c.conf_id: c for c in r.candidates}
        learned = {cid: S.learned_energies(pool, [cid])[0] for cid in by_id}
        expect = sorted(by_id, key=lambda cid: learned[cid])[:top]
        assert sorted(c.conf_id for c in r.candidates if c.rank_kcal is not None) == sorted(expect)
        assert r.screen == "learned" and "screened by learned" in r.note()
        assert r.winner.conf_id in expect
        assert r.winner.rank_kcal == pytest.approx(gfn2_energy(r.mol, XtbProtocol()) * S.EV_TO_KCAL, abs=1e-6)
        if top == 1:
            assert r.winner.conf_id == min(learned, key=learned.get)


def test_learned_screen_with_the_learned_ranker_ranks_every_unique_minimum():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCOC(=O)CCN1CCCC1"))
    r = S.search(mol, S.SearchSettings(candidates=6, rank="learned", top=100, screen="learned"))
    assert all(c.rank_kcal is not None for c in r.candidates)
    assert r.winner.rank_kcal == min(c.rank_kcal for c in r.candidates)
    once = S.search(mol, S.SearchSettings(candidates=6, rank="learned", top=1, screen="learned"))
    assert once.winner.conf_id == r.winner.conf_id  # screening by the ranker's own energy keeps its pick


def test_default_search_screens_two_by_the_learned_ranker_and_falls_back_to_three_by_mmff(tblite):
    settings = S.SearchSettings()
    assert (settings.screen, settings.top, S.DEFAULT_TOP) == ("learned", None, {"mmff": 3, "learned": 2})
    covered = S.search(Chem.AddHs(Chem.MolFromSmiles("OCCCCCCO")), S.SearchSettings(candidates=8))
    assert covered.screen == "learned" and sum(c.rank_kcal is not None for c in covered.candidates) == 2
    # iodine: outside the learned ranker's elements (H C N O F S Cl Br), MMFF94 has parameters for it
    uncovered = S.search(Chem.AddHs(Chem.MolFromSmiles("ICCCCCCO")), S.SearchSettings(candidates=8))
    ranked = [c for c in uncovered.candidates if c.rank_kcal is not None]
    assert uncovered.screen == "mmff" and len(ranked) == min(3, len(uncovered.candidates))
    lowest_mmff = sorted(uncovered.candidates, key=lambda c: c.mmff_kcal)[:3]
    assert {c.conf_id for c in ranked} == {c.conf_id for c in lowest_mmff}
