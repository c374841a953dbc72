"""The fallback for a prediction whose stereo the rigid repairs leave wrong
(:mod:`molconf.stereo_fallback`), alone and inside ``predict``."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

import molconf.prediction as P
import molconf.stereo as S
import molconf.stereo_fallback as F
from molconf.metrics import mol_with_coords, stereo_labels
from molconf.stereo import graph_stereo_labels, stereo_spec

PENICILLIN_G = "CC1(C)S[C@@H]2[C@H](NC(=O)Cc3ccccc3)C(=O)N2[C@H]1C(=O)O"
CHIRAL = ["C[C@H](N)O", "C[C@@H](O)[C@H](N)C(=O)O", PENICILLIN_G, "O[C@H]1CC[C@@H](C)CC1"]


def _mirror(smiles: str, seed: int = 7) -> tuple[Chem.Mol, Chem.Mol]:
    """(input graph with H, a conformer of the mirror image carrying the input's tags)."""
    graph = Chem.AddHs(Chem.MolFromSmiles(smiles))
    m = Chem.Mol(graph)
    assert AllChem.EmbedMolecule(m, randomSeed=seed) == 0
    return graph, mol_with_coords(graph, m.GetConformer().GetPositions() * [-1.0, 1.0, 1.0])


def _epimer(smiles: str, atom: int, seed: int = 7, enforce: bool = True) -> tuple[Chem.Mol, Chem.Mol]:
    """(input graph with H, a conformer with ``atom`` inverted carrying the input's tags)."""
    graph = Chem.AddHs(Chem.MolFromSmiles(smiles))
    m = Chem.Mol(graph)
    m.GetAtomWithIdx(atom).InvertChirality()
    assert AllChem.EmbedMolecule(m, randomSeed=seed, useRandomCoords=True, enforceChirality=enforce) == 0
    return graph, mol_with_coords(graph, m.GetConformer().GetPositions())


def _kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """Slow, obvious reference: RMSD of ``a`` on ``b`` after the optimal rotation (SVD)."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a @ rot - b) ** 2).sum(1).mean()))


@pytest.mark.parametrize("smiles", CHIRAL)
def test_both_fallbacks_return_the_input_stereo_by_cip(smiles):
    graph, mirror = _mirror(smiles)
    spec = stereo_spec(graph)
    assert spec.mismatches(mirror.GetConformer().GetPositions())  # the input is wrong to begin with
    before = mirror.GetConformer().GetPositions()
    for found in (F._by_mmff(mirror, spec), F._by_etkdg(mirror, spec, 10, F.ETKDG_SEED)):
        assert found is not None and not spec.mismatches(found.positions)
        # the slow reference: CIP labels of the returned conformer equal the input's
        assert stereo_labels(mol_with_coords(graph, found.positions)) == graph_stereo_labels(graph)
    assert np.array_equal(mirror.GetConformer().GetPositions(), before)  # the prediction is not modified


@pytest.mark.parametrize("smiles", CHIRAL[1:])
def test_etkdg_fallback_is_the_closest_correct_conformer_superposed(smiles):
    graph, mirror = _mirror(smiles, seed=11)
    spec = stereo_spec(graph)
    found = F._by_etkdg(mirror, spec, 10, F.ETKDG_SEED)
    heavy = [a.GetIdx() for a in graph.GetAtoms() if a.GetAtomicNum() > 1]
    pred = mirror.GetConformer().GetPositions()[heavy]
    # the same pool rebuilt by hand (ETKDGv3, one thread, the seed; MMFF94), scored by SVD
    pool = Chem.Mol(graph)
    params = AllChem.ETKDGv3()
    params.randomSeed, params.numThreads = F.ETKDG_SEED, 1
    params.useRandomCoords, params.maxIterations = True, F.ETKDG_MAX_ITERATIONS
    ids = list(AllChem.EmbedMultipleConfs(pool, 10, params))
    AllChem.MMFFOptimizeMoleculeConfs(pool, numThreads=1, maxIters=2000)
    scores = [_kabsch_rmsd(pool.GetConformer(c).GetPositions()[heavy], pred) for c in ids
              if not spec.mismatches(pool.GetConformer(c).GetPositions())]
    got = found.positions[heavy]
    assert np.sqrt(((got - pred) ** 2).sum(1).mean()) == pytest.approx(min(scores), abs=1e-3)  # superposed
    assert f"heavy-atom RMSD {min(scores):.2f} Å" in found.action


def test_nothing_found_is_none(monkeypatch):
    graph, mirror = _mirror("C[C@H](N)O")
    spec = stereo_spec(graph)
    monkeypatch.setattr(F, "enforce_stereo", lambda mol, spec, name_remaining: S.StereoReport(1, [], ["atom 1"]))
    assert F._by_mmff(mirror, spec) is None  # the repair after MMFF94 fails
    monkeypatch.setattr(F, "_embed", lambda mol, n, seed: _no_conformers(mol))
    assert F.stereo_fallback(mirror, spec) is None  # and ETKDG embeds nothing


def _no_conformers(mol):
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    return m


class _Loaded:
    name = "test"


@pytest.mark.parametrize("relax_with", [None, "mmff"])
def test_predict_finish_uses_the_fallback_and_says_so(monkeypatch, relax_with):
    graph, epimer = _epimer(PENICILLIN_G, 4)  # the bridgehead the shipped model once got wrong
    assert stereo_spec(graph).mismatches(epimer.GetConformer().GetPositions()) == ["atom 4"]
    coords = epimer.GetConformer().GetPositions()
    monkeypatch.setattr(S, "_local_moves", lambda mol, spec, key: iter(()))  # the rigid repairs fail
    report = P.PredictionReport(model="test", precision="float32")
    out = P._finish(graph, coords, 0, _Loaded(), relax_with, True, report)
    assert report.stereo[0].consistent and report.stereo[0].checked == 3
    assert any(n.startswith("stereo fallback: ") for n in report.notes[0])
    assert not any("stereo not matched" in n for n in report.notes[0])
    assert out.GetProp("molconf_stereo_fallback") == "etkdg"  # the MMFF94 route needs a local move too
    assert Chem.MolToSmiles(Chem.RemoveHs(out)) == Chem.MolToSmiles(Chem.MolFromSmiles(PENICILLIN_G))


def test_predict_without_fix_stereo_uses_no_fallback(monkeypatch):
    graph, mirror = _mirror("C[C@@H](O)[C@H](N)C(=O)O")
    called = []
    monkeypatch.setattr(P, "stereo_fallback", lambda *a: called.append(a))
    report = P.PredictionReport(model="test", precision="float32")
    P._finish(graph, mirror.GetConformer().GetPositions(), 0, _Loaded(), None, False, report)
    assert not called and 0 not in report.stereo


def test_penicillin_g_with_the_shipped_model_keeps_its_stereo():
    """The case that showed the gap (a bridgehead of the bicycle came back inverted): twice, and
    beside a bad input and in worker processes, every stereocentre is the input's."""
    smiles = [PENICILLIN_G, "not a smiles", "C[C@H](N)O"]
    for kw in ({}, {}, {"workers": 2}):
        mols, report = P.predict(smiles, return_report=True, **kw)
        assert mols[1] is None and [f.index for f in report.failures] == [1]
        for i in (0, 2):
            assert report.stereo[i].consistent
            assert Chem.MolToSmiles(Chem.RemoveHs(mols[i])) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles[i]))


def test_etkdg_effort_is_bounded_and_a_cage_is_embedded_without_chirality_enforcement(monkeypatch):
    """A QM9 cage whose small chiral volumes ETKDG rejects costs one probe with enforcement, then
    is embedded without it; a molecule ETKDG embeds gets all ``n`` at once (the probe runs on a
    copy: the pool is the one a direct call gives); where nothing embeds, two probes are all."""
    calls = []
    embed = AllChem.EmbedMultipleConfs

    def counted(mol, n, params):
        calls.append((n, params.enforceChirality))
        return embed(mol, n, params)

    monkeypatch.setattr(F.AllChem, "EmbedMultipleConfs", counted)
    cage = Chem.AddHs(Chem.MolFromSmiles("C[C@H]1C2[C@@H](C)C1[C@H]2C"))  # a QM9 test molecule
    assert F._embed(cage, 10, F.ETKDG_SEED).GetNumConformers() == 10
    assert calls == [(F.ETKDG_PROBE, True), (F.ETKDG_PROBE, False), (10, False)]
    calls.clear()
    ok = Chem.AddHs(Chem.MolFromSmiles(PENICILLIN_G))
    assert F._embed(ok, 10, F.ETKDG_SEED).GetNumConformers() == 10
    assert calls == [(F.ETKDG_PROBE, True), (10, True)]
    calls.clear()
    monkeypatch.setattr(F.AllChem, "EmbedMultipleConfs", lambda mol, n, params: calls.append(n) or [])
    assert F._embed(ok, 10, F.ETKDG_SEED).GetNumConformers() == 0 and calls == [F.ETKDG_PROBE] * 2


@pytest.mark.parametrize("smiles", ["C[C@]12CN1C(=O)[C@@]21CN1", "C[C@H]1O[C@]23CO[C@H](C2)[C@@H]13"])  # QM9 test molecules
def test_cages_etkdg_cannot_embed_with_enforcement_get_their_stereo_by_cip(smiles):
    graph, epimer = _epimer(smiles, [a.GetIdx() for a in Chem.MolFromSmiles(smiles).GetAtoms()
                                     if a.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED][0], enforce=False)
    found = F._by_etkdg(epimer, stereo_spec(graph), 10, F.ETKDG_SEED)
    assert found is not None
    assert stereo_labels(mol_with_coords(graph, found.positions)) == graph_stereo_labels(graph)


def test_without_mmff_parameters_the_etkdg_conformer_is_returned_unminimised():
    graph, mirror = _mirror("C[C@H](N)B(O)O")  # MMFF94 has no boron
    assert not AllChem.MMFFHasAllMoleculeParams(graph)
    spec = stereo_spec(graph)
    assert F._by_mmff(mirror, spec) is None
    found = F.stereo_fallback(mirror, spec)
    assert found.source == "etkdg" and "ETKDGv3 (no MMFF94 parameters)" in found.action
    assert stereo_labels(mol_with_coords(graph, found.positions)) == graph_stereo_labels(graph)
