"""GFN2-xTB ground-state data: one molecule, failures, the resumable runner, merge → cache, split, sources."""

import csv
import gzip
import json
import os
import random

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf import constants as K
from molconf.ground_state import build as xb
from molconf.ground_state import xtb as xt
from molconf.data.load import load_dataset, load_dataset_split
from molconf.data.scaffolds import extend_scaffold_split, murcko_scaffold, scaffold_split
from molconf.data.smiles_source import SmilesSource, moses_data_file, read_smiles_file
from molconf.errors import MoleculeError

TINY = ["O", "CCO", "c1ccccc1", "C=C", "xx"]  # the last is not a SMILES


@pytest.fixture
def tblite():
    return pytest.importorskip("tblite")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished build of TINY (workers=1, shards of 2) and its merged data set."""
    pytest.importorskip("tblite")
    root = tmp_path_factory.mktemp("xtb")
    summary = xb.build_dataset(TINY, root / "build", workers=1, shard_size=2, progress=False)
    report = xb.merge_dataset(root / "build", root / "moses_xtb")
    return root, summary, report


def _embedded(smiles, seed=0):
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=seed)
    return m


# --- protocol ---------------------------------------------------------------------------
def test_protocol_round_trips_and_validates():
    p = xt.XtbProtocol(num_xtb=2, optimizer="BFGS")
    assert xt.XtbProtocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for bad in ({"optimizer": "SD"}, {"forcefield": "gaff"}, {"fmax": 0}, {"num_xtb": 0}, {"method": "GFN1-xTB"}):
        with pytest.raises(ValueError):
            xt.XtbProtocol(**bad)


# --- one molecule -----------------------------------------------------------------------
def test_ground_state_of_ethanol(tblite):
    from ase.units import Hartree

    r = xb.build_ground_state("CCO", index=7)
    assert r.index == 7 and r.smiles == "CCO" and r.mol.GetNumAtoms() == 9 and r.mol.GetNumConformers() == 1
    assert r.converged and r.steps >= 1 and r.seconds > 0 and r.forcefield == "MMFF94"
    assert 1 <= r.candidates <= r.conformers <= 10
    assert r.energy_hartree == pytest.approx(r.energy_ev / Hartree) and -12 < r.energy_hartree < -11
    # the stored geometry is the one the energy belongs to, and a minimum of it
    assert xt.gfn2_energy(r.mol) == pytest.approx(r.energy_ev, abs=1e-6)
    assert xt.bond_changes(r.mol, r.mol.GetConformer().GetPositions()) == []
    start = _embedded("CCO")
    assert xt.gfn2_energy(start) > r.energy_ev
    # SDF properties
    sdf = r.to_sdf_mol()
    assert sdf.GetProp(K.SDF_SOURCE_INDEX) == "7" and sdf.GetProp(K.SDF_SMILES) == "CCO"
    assert float(sdf.GetProp(K.SDF_ENERGY_EH)) == pytest.approx(r.energy_hartree, abs=1e-8)
    assert sdf.GetProp(K.SDF_CONVERGED) == "1" and int(sdf.GetProp(K.SDF_STEPS)) == r.steps
    assert sdf.GetProp(K.SDF_PROTOCOL) == xt.XtbProtocol().key() != xt.XtbProtocol(fmax=0.01).key()


@pytest.mark.parametrize("smiles, reason", [
    ("xx", "invalid SMILES"),
    ("  ", "empty SMILES"),
    ("CC.O", "disconnected fragments"),
    ("[CH3]", "radical"),
    ("[NH4+]", "net charge"),
    ("[Og]", "element not in GFN2-xTB"),
])
def test_input_is_refused_with_its_reason(smiles, reason):
    with pytest.raises(xt.XtbError) as info:
        xb.build_ground_state(smiles, index=3)
    err = info.value
    assert isinstance(err, MoleculeError) and err.stage == xt.STAGE_INPUT
    assert err.molecule.startswith("#3") and err.reason.startswith(reason)
    # picklable with its stage (worker processes return it)
    import pickle

    back = pickle.loads(pickle.dumps(err))
    assert (back.molecule, back.reason, back.stage) == (err.molecule, err.reason, err.stage)


def test_charged_input_built_when_allowed(tblite):
    r = xb.build_ground_state("[NH4+]", xt.XtbProtocol(allow_charged=True, num_conformers=1))
    assert r.converged and r.mol.GetNumAtoms() == 5


def test_embedding_failure(monkeypatch):
    monkeypatch.setattr(xt.AllChem, "EmbedMultipleConfs", lambda *a, **k: [])
    with pytest.raises(xt.XtbError, match="embedding failed") as info:
        xb.build_ground_state("CCO")
    assert info.value.stage == xt.STAGE_EMBED


def test_scf_failure(tblite, monkeypatch):
    from ase.calculators.calculator import CalculationFailed, Calculator

    class Failing(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, *args, **kwargs):
            raise CalculationFailed("SCF did not converge in 250 iterations")

    monkeypatch.setattr(xt, "gfn2_calculator", lambda *a, **k: Failing())
    with pytest.raises(xt.XtbError, match="SCF failure") as info:
        xb.build_ground_state("CCO")
    assert info.value.stage == xt.STAGE_XTB and "250 iterations" in info.value.reason


def test_not_converged_within_max_steps(tblite):
    protocol = xt.XtbProtocol(num_conformers=2, num_xtb=1, max_steps=1, fmax=1e-4)
    with pytest.raises(xt.XtbError, match="not converged") as info:
        xb.build_ground_state("CCO", protocol)
    assert info.value.stage == xt.STAGE_CONVERGE and "1 steps" in info.value.reason


def test_bond_graph_check():
    m = _embedded("CCO")
    pos = m.GetConformer().GetPositions()
    assert xt.bond_changes(m, pos) == []
    far = pos.copy()
    far[2] += 2.0 * (pos[2] - pos[1])  # O pulled off its carbon (its H stays behind)
    assert "broken C1-O2" in xt.bond_changes(m, far)
    close = pos.copy()
    h_on_o = next(a.GetIdx() for a in m.GetAtomWithIdx(2).GetNeighbors() if a.GetAtomicNum() == 1)
    close[h_on_o] = pos[0] + (pos[0] - pos[1]) / np.linalg.norm(pos[0] - pos[1]) * 1.0  # H onto C0
    assert any(c.startswith("formed C0-H") for c in xt.bond_changes(m, close))


def test_connectivity_change_fails_the_molecule(tblite, monkeypatch):
    def broken(numbers, positions, protocol, charge=0):
        pos = np.array(positions)
        pos[2] += 3.0 * (pos[2] - pos[1])
        return xt.Gfn2Optimisation(pos, -300.0, True, 5, 0.01)

    monkeypatch.setattr(xt, "gfn2_optimize", broken)
    with pytest.raises(xt.XtbError, match="connectivity changed") as info:
        xb.build_ground_state("CCO")
    assert info.value.stage == xt.STAGE_CONNECTIVITY and "broken C1-O2" in info.value.reason


def test_stereo_check_sees_a_mirror_image():
    m = _embedded("C[C@H](N)O")
    pos = m.GetConformer().GetPositions()
    assert xt.stereo_changes(m, pos) == []
    assert xt.stereo_changes(m, pos * np.array([-1.0, 1.0, 1.0])) == ["atom 1: R -> S"]


def test_forcefield_fallbacks_and_candidates():
    protocol = xt.XtbProtocol(num_conformers=3)
    boronic = xt.embed_conformers(Chem.AddHs(Chem.MolFromSmiles("OB(O)c1ccccc1")), protocol, "b")
    assert not AllChem.MMFFHasAllMoleculeParams(boronic)
    energies, ff = xt.preoptimize(boronic, protocol)
    assert ff == "UFF" and len(energies) == boronic.GetNumConformers()
    assert xt.preoptimize(boronic, xt.XtbProtocol(forcefield="none")) == (None, "none")
    assert xt.pick_candidates([4, 5, 6], None, 2, 0.01) == [4, 5]
    assert xt.pick_candidates([0, 1, 2, 3], [2.0, float("nan"), 1.0, 1.005], 3, 0.01) == [2, 0, 1]


def test_preoptimize_one_conformer_falls_back_to_uff_then_to_nothing():
    # as predict(relax_with="xtb") uses it on a single predicted conformer
    assert xt.preoptimize(_embedded("CCO", seed=1), xt.XtbProtocol(ff_max_iters=200))[1] == "MMFF94"
    boron = _embedded("CB(C)C", seed=1)  # MMFF94 has no boron parameters, UFF has
    before = boron.GetConformer().GetPositions()
    assert xt.preoptimize(boron, xt.XtbProtocol(ff_max_iters=200))[1] == "UFF"
    assert not np.allclose(before, boron.GetConformer().GetPositions())
    dummy = _embedded("C*", seed=1)  # neither field has parameters for a dummy atom
    before = dummy.GetConformer().GetPositions()
    assert xt.preoptimize(dummy, xt.XtbProtocol()) == (None, "none")
    assert np.array_equal(before, dummy.GetConformer().GetPositions())


# --- the runner ---------------------------------------------------------------------------
def test_build_writes_shards_summary_and_failures(built):
    root, summary, _ = built
    build = root / "build"
    assert summary["complete"] and summary["molecules"] == 5 and summary["succeeded"] == 4
    assert summary["failed_by_stage"] == {"input": 1} and summary["failed_by_reason"] == {"invalid SMILES": 1}
    assert summary["protocol"] == xt.XtbProtocol().to_dict() and summary["protocol_key"] == xt.XtbProtocol().key()
    assert json.loads((build / "build.json").read_text())["protocol"] == summary["protocol"]
    assert summary["versions"]["tblite"] and summary["versions"]["rdkit"]
    assert summary["shards"] == {"done": 3, "total": 3}
    with open(build / "failures.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [["index", "smiles", "stage", "reason"], ["4", "xx", "input", "invalid SMILES"]]
    assert (build / "shards" / "shard_000002.sdf").read_text() == ""  # only the failure
    mols = [m for i in range(2) for m in Chem.SDMolSupplier(str(build / "shards" / f"shard_{i:06d}.sdf"),
                                                              removeHs=False)]
    assert [int(m.GetProp(K.SDF_SOURCE_INDEX)) for m in mols] == [0, 1, 2, 3]
    assert [m.GetNumAtoms() for m in mols] == [3, 9, 12, 6]
    assert all(m.GetProp(K.SDF_CONVERGED) == "1" and float(m.GetProp(K.SDF_ENERGY_EV)) < 0 for m in mols)
    assert {m.GetProp(K.SDF_PROTOCOL) for m in mols} == {summary["protocol_key"]}
    assert not list(build.rglob("*.tmp"))


def test_resume_after_a_kill_redoes_only_the_missing_shard(tblite, tmp_path, monkeypatch):
    smiles = ["O", "CCO", "C=C", "C#C"]
    first = xb.build_dataset(smiles, tmp_path, workers=1, shard_size=2, max_shards=1, progress=False)
    assert not first["complete"] and first["shards"] == {"done": 1, "total": 2} and first["molecules"] == 2
    # the run "died" while writing shard 1: a half-written file is left behind
    (tmp_path / "shards" / "shard_000001.sdf.tmp").write_text("partial")
    done = (tmp_path / "shards" / "shard_000000.sdf").read_bytes()
    calls = []
    real = xb.build_ground_state

    def counting(smi, protocol=None, index=None):
        calls.append(index)
        return real(smi, protocol, index)

    monkeypatch.setattr(xb, "build_ground_state", counting)
    second = xb.build_dataset(smiles, tmp_path, workers=1, shard_size=2, progress=False)
    assert calls == [2, 3] and second["complete"] and second["succeeded"] == 4
    assert (tmp_path / "shards" / "shard_000000.sdf").read_bytes() == done
    assert not list(tmp_path.rglob("*.tmp"))
    calls.clear()
    xb.build_dataset(smiles, tmp_path, workers=1, shard_size=2, progress=False)
    assert calls == []
    with pytest.raises(ValueError, match="another protocol"):
        xb.build_dataset(smiles, tmp_path, xt.XtbProtocol(fmax=0.01), workers=1, shard_size=2, progress=False)


def test_worker_processes_give_the_same_result(tblite, built, tmp_path):
    root, _, _ = built
    summary = xb.build_dataset(TINY[:2], tmp_path, workers=2, shard_size=2, progress=False)
    assert summary["complete"] and summary["succeeded"] == 2
    # same seeds, one thread each: the same molecules, coordinates and energies (up to the last
    # printed digit: a coordinate of ~1e-6 may print as -0.0000 in one run, 0.0000 in another)
    par = list(Chem.SDMolSupplier(str(tmp_path / "shards" / "shard_000000.sdf"), removeHs=False))
    seq = list(Chem.SDMolSupplier(str(root / "build" / "shards" / "shard_000000.sdf"), removeHs=False))
    assert len(par) == len(seq) == 2
    for a, b in zip(par, seq):
        assert Chem.MolToSmiles(a) == Chem.MolToSmiles(b)
        assert np.allclose(a.GetConformer().GetPositions(), b.GetConformer().GetPositions(), atol=2e-4)
        assert float(a.GetProp(K.SDF_ENERGY_EH)) == pytest.approx(float(b.GetProp(K.SDF_ENERGY_EH)), abs=1e-7)


def _crash_on_boom(item):
    """Worker function for the crash test (module level: spawned workers import it)."""
    if item[1] == "boom":
        os._exit(3)  # what a segfault in native code looks like to the parent
    return item[0], item[1].upper()


def test_a_crashing_worker_costs_its_molecule_not_the_build():
    workers = xb._Workers(2, start_method="fork")  # fork: the recovery logic, without spawn's start-up time
    items = [(0, "a"), (1, "boom"), (2, "b"), (3, "c")]
    try:
        results = dict(workers.map_unordered(_crash_on_boom, items))
        assert [results[k] for k in (0, 2, 3)] == ["A", "B", "C"]
        assert isinstance(results[1], xt.XtbError) and "crashed" in results[1].reason
        assert results[1].stage == xt.STAGE_XTB and results[1].molecule == "#1 boom"
    finally:
        workers.close()


# --- merge → cache ----------------------------------------------------------------------
def test_merge_then_prepare_and_load_like_qm9(built, tmp_path):
    root, _, report = built
    dest = root / "moses_xtb"
    sdf = dest / "molecules.sdf.gz"
    assert report["merged"]["molecules"] == 4 and report["protocol"] == xt.XtbProtocol().to_dict()
    assert json.loads((dest / "build_report.json").read_text())["split"]["train"] == 4
    assert (dest / "failures.csv").read_text().count("\n") == 2
    with gzip.open(sdf, "rt") as fh:
        assert fh.read().count("$$$$") == 4
    # identical builds give identical bytes (fixed gzip timestamp)
    again = xb.merge_dataset(root / "build", tmp_path / "again")
    assert (tmp_path / "again" / "molecules.sdf.gz").read_bytes() == sdf.read_bytes()
    assert again["split"] == report["split"]
    ids = np.concatenate([load_dataset_split("moses_xtb", p, root=sdf) for p in ("train", "val", "test")])
    assert sorted(ids.tolist()) == [0, 1, 2, 3]

    from molconf.data.prepare import main as prepare_main

    prepare_main(["moses_xtb", "--sdf", str(sdf), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])
    store = load_dataset("moses_xtb", root=sdf, cache_dir=tmp_path / "cache")
    assert list(store.mol_ids) == [0, 1, 2, 3] and list(store.num_atoms) == [3, 9, 12, 6]
    info = store.manifest["info"]
    assert info["dropped"] == 0 and info["smiles_agreement_exact"] == 1.0
    assert info["build"]["protocol"] == xt.XtbProtocol().to_dict()
    assert store.manifest["fingerprint"]["dataset"] == "moses_xtb"
    ref = next(iter(Chem.ForwardSDMolSupplier(gzip.open(sdf), removeHs=False)))
    assert np.allclose(store.graph(0).pos, ref.GetConformer().GetPositions(), atol=1e-4)
    assert Chem.MolToSmiles(Chem.RemoveHs(store.mol(1))) == "CCO"
    rows, missing = store.positions_of(ids)
    assert len(rows) == 4 and len(missing) == 0
    # the training data module takes it like any other data set
    from molconf.lightning import ConformerDataModule

    dm = ConformerDataModule(dataset="moses_xtb", data_root=str(sdf), cache_dir=str(tmp_path / "cache"), batch_size=2)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 4 and dm.missing == {"train": 0, "val": 0, "test": 0}
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.POS].shape[0] == 2 and set(batch[K.MOL_INDEX].tolist()) <= {0, 1, 2, 3}


def test_merge_refuses_an_unfinished_build(tblite, tmp_path):
    xb.build_dataset(["O", "C"], tmp_path / "b", workers=1, shard_size=1, max_shards=1, progress=False)
    with pytest.raises(ValueError, match="not finished"):
        xb.merge_dataset(tmp_path / "b", tmp_path / "d")


def test_cli_build_merge_and_errors(tblite, tmp_path, capsys):
    (tmp_path / "in.smi").write_text("smiles\nCCO ethanol\n# comment\n\nxx bad\n")
    out = str(tmp_path / "b")
    assert xb.main(["--smiles-file", str(tmp_path / "in.smi"), "--out", out, "--workers", "1",
                    "--no-progress", "--xtb-candidates", "2"]) == 0
    assert "1 of 2 molecules built" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["protocol"]["num_xtb"] == 2
    assert xb.main(["--merge", "--out", out, "--dest", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "split_train.npy").is_file()
    assert xb.main(["--out", out]) == 2  # no source
    assert xb.main(["--smiles-file", str(tmp_path / "in.smi"), "--out", out, "--fmax", "0.1"]) == 2
    assert "another protocol" in capsys.readouterr().err
    from molconf.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["build-xtb", "--help"])
    assert info.value.code == 0 and "--moses" in capsys.readouterr().out


def _counting(monkeypatch):
    calls, real = [], xb.build_ground_state

    def counting(smi, protocol=None, index=None):
        calls.append(index)
        return real(smi, protocol, index)

    monkeypatch.setattr(xb, "build_ground_state", counting)
    return calls


def test_restore_from_the_merged_data_set_recomputes_nothing(built, tmp_path, monkeypatch):
    root, summary, _ = built
    calls = _counting(monkeypatch)
    again = xb.build_dataset(TINY, tmp_path / "b", workers=1, shard_size=2, progress=False,
                             restore_from=root / "moses_xtb")
    assert calls == [] and again["complete"] and again["restored_molecules"] == 4
    assert again["seconds_per_molecule"] is None  # nothing was timed in this folder
    for key in ("molecules", "succeeded", "failed", "failed_by_stage", "failed_by_reason", "forcefield_used",
                "mean_atoms", "max_atoms", "mean_steps", "shards"):
        assert again[key] == summary[key], key
    assert json.loads((tmp_path / "b" / "shards" / "shard_000001.json").read_text())["restored_from"]
    xb.merge_dataset(tmp_path / "b", tmp_path / "d")
    for name in ("molecules.sdf.gz", "failures.csv", "split_train.npy", "split_val.npy", "split_test.npy"):
        assert (tmp_path / "d" / name).read_bytes() == (root / "moses_xtb" / name).read_bytes(), name


def test_restore_from_a_partial_data_set_then_continue(tblite, tmp_path, monkeypatch):
    smiles = ["O", "C", "CC"]
    xb.build_dataset(smiles, tmp_path / "b", workers=1, shard_size=1, max_shards=2, progress=False)
    xb.merge_dataset(tmp_path / "b", tmp_path / "d", partial=True)
    calls = _counting(monkeypatch)
    other = _write_smi(tmp_path, smiles)  # the same SMILES from a file: another source
    assert xb.main(["--smiles-file", other, "--out", str(tmp_path / "fresh"), "--workers", "1",
                    "--shard-size", "1", "--no-progress", "--restore-from", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "fresh").exists()  # refused before the build folder was made
    summary = xb.build_dataset(smiles, tmp_path / "fresh", workers=1, shard_size=1, progress=False,
                               restore_from=tmp_path / "d")
    assert calls == [2] and summary["complete"] and summary["succeeded"] == 3 and summary["restored_molecules"] == 2
    assert summary["seconds_per_molecule"] > 0  # over the one molecule timed here


def _write_smi(tmp_path, smiles):
    path = tmp_path / "in.smi"
    path.write_text("\n".join(smiles) + "\n")
    return str(path)


def test_restore_refuses_another_protocol_layout_source_or_a_gap(built, tmp_path):
    root, _, _ = built
    data = root / "moses_xtb"
    with pytest.raises(ValueError, match="another protocol"):
        xb.build_dataset(TINY, tmp_path / "p", xt.XtbProtocol(fmax=0.01), workers=1, shard_size=2,
                         progress=False, restore_from=data)
    with pytest.raises(ValueError, match="another --shard-size"):
        xb.build_dataset(TINY, tmp_path / "s", workers=1, shard_size=3, progress=False, restore_from=data)
    with pytest.raises(ValueError, match="another source"):
        xb.build_dataset(TINY[:4], tmp_path / "o", workers=1, shard_size=2, progress=False, restore_from=data)
    gap = tmp_path / "gap"
    gap.mkdir()
    for name in ("build_report.json", "molecules.sdf.gz"):
        (gap / name).write_bytes((data / name).read_bytes())
    (gap / "failures.csv").write_text("index,smiles,stage,reason\n")  # the invalid SMILES is unaccounted for
    with pytest.raises(ValueError, match=r"molecule\(s\) \[4\] of shard 2 are in neither"):
        xb.build_dataset(TINY, tmp_path / "g", workers=1, shard_size=2, progress=False, restore_from=gap)
    with pytest.raises(FileNotFoundError, match="build_report.json"):
        xb.build_dataset(TINY, tmp_path / "n", workers=1, shard_size=2, progress=False, restore_from=tmp_path)


# --- split ---------------------------------------------------------------------------------
def _library(n=60, seed=0):
    rings = ["c1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCNCC1", "c1ccoc1", "c1ccsc1", "C1CC1", "c1cnccn1",
             "C1CCOC1", "c1ccc2ccccc2c1", "C1CCC1", "c1cn[nH]c1"]
    tails = ["C", "CC", "CO", "CN", "C(=O)O", "CCl", "OC", "CCC"]
    rng = random.Random(seed)
    return [f"{rng.choice(tails)}{rng.choice(rings)}" if k % 7 else rng.choice(tails) + "CC" for k in range(n)]


def test_scaffold_split_is_disjoint_and_deterministic():
    smiles = _library()
    ids = list(range(1000, 1000 + len(smiles)))
    parts = scaffold_split(ids, smiles, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == ids
    scaffolds = {p: {murcko_scaffold(smiles[i - 1000]) for i in v} for p, v in parts.items()}
    assert not (scaffolds["train"] & scaffolds["val"] or scaffolds["train"] & scaffolds["test"]
                or scaffolds["val"] & scaffolds["test"])
    assert len(parts["train"]) >= 0.6 * len(ids) and len(parts["val"]) and len(parts["test"])
    order = list(range(len(ids)))
    random.Random(1).shuffle(order)
    shuffled = scaffold_split([ids[k] for k in order], [smiles[k] for k in order], seed=0)
    assert all(np.array_equal(parts[p], shuffled[p]) for p in parts)  # input order does not matter
    other = scaffold_split(ids, smiles, seed=1)
    assert sorted(np.concatenate(list(other.values())).tolist()) == ids
    with pytest.raises(ValueError):
        scaffold_split(ids, smiles, fractions=(0.5, 0.5, 0.5))


def test_extended_split_keeps_the_old_parts_and_whole_scaffolds():
    smiles = _library(120, seed=3)
    ids = list(range(len(smiles)))
    old = scaffold_split(ids[:60], smiles[:60], seed=0)
    new = extend_scaffold_split(ids, smiles, old, seed=5)
    assert sorted(np.concatenate(list(new.values())).tolist()) == ids
    assert all(set(old[p].tolist()) <= set(new[p].tolist()) for p in old)
    scaffolds = {p: {murcko_scaffold(smiles[i]) for i in v} for p, v in new.items()}
    assert not (scaffolds["train"] & scaffolds["val"] or scaffolds["train"] & scaffolds["test"]
                or scaffolds["val"] & scaffolds["test"])
    # a fresh split of the grown set would move old molecules between parts; the extension does not
    fresh = scaffold_split(ids, smiles, seed=5)
    assert any(not set(old[p].tolist()) <= set(fresh[p].tolist()) for p in old)
    # each part starts with its old ids in their old order, also when new ids fall between them
    interleaved = extend_scaffold_split(ids, smiles, {p: v[::-1] for p, v in old.items()}, seed=5)
    assert all(interleaved[p][:len(old[p])].tolist() == old[p][::-1].tolist() for p in old)
    assert all(set(interleaved[p].tolist()) == set(new[p].tolist()) for p in old)
    odd = [i for i in ids if i % 2]  # the old set's ids are the odd ones: every new id lies between two old ones
    old_odd = scaffold_split(odd, [smiles[i] for i in odd], seed=0)
    grown = extend_scaffold_split(ids, smiles, old_odd, seed=5)
    for p in old_odd:
        assert grown[p][:len(old_odd[p])].tolist() == old_odd[p].tolist()
        rest = grown[p][len(old_odd[p]):].tolist()
        assert rest == sorted(rest) and not set(rest) & set(odd)
    # extending with nothing new changes nothing
    same = extend_scaffold_split(ids[:60], smiles[:60], old, seed=5)
    assert all(np.array_equal(same[p], old[p]) for p in old)
    with pytest.raises(ValueError, match="not in the grown data set"):
        extend_scaffold_split(ids[1:], smiles[1:], old)
    with pytest.raises(ValueError, match="in both"):
        extend_scaffold_split(ids, smiles, {"train": [0], "val": [0], "test": []})


# --- SMILES sources ---------------------------------------------------------------------
def test_smiles_files_of_every_kind(tmp_path):
    (tmp_path / "a.smi").write_text("SMILES\nCCO ethanol\n# note\n\nc1ccccc1\tbenzene\n")
    (tmp_path / "b.csv").write_text("name,SMILES\nwater,O\nbad,xx\n")
    (tmp_path / "c.csv").write_text("C=C\nC#C\n")  # no header: first column, every row
    with gzip.open(tmp_path / "d.txt.gz", "wt") as fh:
        fh.write("CN\nCS\n")
    assert list(read_smiles_file(tmp_path / "a.smi")) == ["CCO", "c1ccccc1"]
    assert list(read_smiles_file(tmp_path / "b.csv")) == ["O", "xx"]
    assert list(read_smiles_file(tmp_path / "c.csv")) == ["C=C", "C#C"]
    assert list(read_smiles_file(tmp_path / "d.txt.gz")) == ["CN", "CS"]
    assert list(SmilesSource(path=tmp_path / "b.csv")) == [(0, "O"), (1, "xx")]
    assert list(xb.as_source(["C", "N"])) == [(0, "C"), (1, "N")]


def test_moses_reader_on_a_fixture_in_the_wheel_layout(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "moses"
    (pkg / "dataset" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
    smiles = [f"C{'C' * k}O" for k in range(30)]
    with gzip.open(pkg / "dataset" / "data" / "train.csv.gz", "wt") as fh:
        fh.write("SMILES\n" + "\n".join(smiles) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert moses_data_file("train") == pkg / "dataset" / "data" / "train.csv.gz"
    with pytest.raises(FileNotFoundError, match="test.csv.gz"):
        moses_data_file("test")
    with pytest.raises(ValueError):
        moses_data_file("val")
    full = SmilesSource.moses("train")
    assert len(full) == 30 and list(full)[5] == (5, smiles[5])
    sub = SmilesSource.moses("train", n=7, seed=3)
    picked = list(sub)
    assert len(sub) == 7 and [smiles[i] for i, _ in picked] == [s for _, s in picked]
    assert [i for i, _ in picked] == sorted(i for i, _ in picked)
    assert picked == list(SmilesSource.moses("train", n=7, seed=3))  # deterministic
    assert picked != list(SmilesSource.moses("train", n=7, seed=4))
    desc = sub.describe()
    assert desc["name"] == "MOSES train" and desc["total"] == 30 and desc["n"] == 7 and len(desc["sha256"]) == 64


def test_partial_merge_of_an_unfinished_build_is_explicit_and_recorded(tblite, tmp_path):
    xb.build_dataset(["O", "C", "CC"], tmp_path / "b", workers=1, shard_size=1, max_shards=2, progress=False)
    (tmp_path / "b" / xb.SUMMARY_FILE).unlink()  # as after a kill: the summary is recounted from the shards
    report = xb.merge_dataset(tmp_path / "b", tmp_path / "d", partial=True)
    assert report["merged"]["molecules"] == 2 and report["shards"] == {"done": 2, "total": 3}
    assert report["partial_build"]["shards_merged"] == [0, 1]
    saved = json.loads((tmp_path / "d" / "build_report.json").read_text())
    assert saved["partial_build"]["shards_total"] == 3
    assert sum(len(np.load(tmp_path / "d" / f"split_{p}.npy")) for p in ("train", "val", "test")) == 2
    # the build grows (resumed) and is merged again, keeping the first merge's split
    old = {p: np.load(tmp_path / "d" / f"split_{p}.npy") for p in ("train", "val", "test")}
    xb.build_dataset(["O", "C", "CC"], tmp_path / "b", workers=1, shard_size=1, progress=False)
    grown = xb.merge_dataset(tmp_path / "b", tmp_path / "d", extend_split=tmp_path / "d")
    assert grown["merged"]["molecules"] == 3 and grown["split"]["extends"] == {p: len(v) for p, v in old.items()}
    assert all(set(v.tolist()) <= set(np.load(tmp_path / "d" / f"split_{p}.npy").tolist()) for p, v in old.items())
    with pytest.raises(FileNotFoundError, match="no earlier split"):
        xb.merge_dataset(tmp_path / "b", tmp_path / "e", extend_split=tmp_path / "e")


def test_a_top_up_build_of_the_same_source_merges_beside_the_first(tblite, tmp_path):
    smiles = ["O", "C", "CC", "CO", "N", "CN", "OO", "xx"]  # the last is not a SMILES
    first, second = SmilesSource(smiles=smiles, n=4, seed=0), SmilesSource(smiles=smiles, n=4, seed=5)
    ids_a, ids_b = [i for i, _ in first], [i for i, _ in second]
    assert set(ids_a) & set(ids_b) and set(ids_b) - set(ids_a)  # the seeds overlap and differ
    xb.build_dataset(first, tmp_path / "a", workers=1, shard_size=2, progress=False)
    xb.build_dataset(second, tmp_path / "b", workers=1, shard_size=2, progress=False)
    alone = xb.merge_dataset(tmp_path / "a", tmp_path / "alone")
    report = xb.merge_dataset(tmp_path / "a", tmp_path / "d", also=[tmp_path / "b"])
    union = sorted(set(ids_a) | set(ids_b))
    failed = {int(row[0]) for row in list(csv.reader(open(tmp_path / "d" / "failures.csv")))[1:]}
    built = [m.GetIntProp(K.SDF_SOURCE_INDEX) for m in Chem.ForwardSDMolSupplier(
        gzip.open(tmp_path / "d" / xb.MERGED_SDF), removeHs=False)]
    assert built == sorted(built) and sorted(built + sorted(failed)) == union  # every id once: built or failed
    assert report["merged"]["molecules"] == len(built) and report["merged"]["duplicates"] == len(
        (set(ids_a) & set(ids_b)) - failed)
    assert report["also"][0]["source"]["seed"] == 5 and report["source"]["seed"] == 0
    assert sum(len(np.load(tmp_path / "d" / f"split_{p}.npy")) for p in ("train", "val", "test")) == len(built)
    assert alone["merged"]["molecules"] < len(built) and "also" not in alone
    # grown by the top-up with the first merge's split kept: each part starts with its old ids
    xb.merge_dataset(tmp_path / "a", tmp_path / "ext", also=[tmp_path / "b"], extend_split=tmp_path / "alone")
    for part in ("train", "val", "test"):
        before = np.load(tmp_path / "alone" / f"split_{part}.npy").tolist()
        assert np.load(tmp_path / "ext" / f"split_{part}.npy").tolist()[:len(before)] == before
    # the same record in both builds is the same molecule: its SDF record is taken once, unchanged
    records_a = gzip.open(tmp_path / "alone" / xb.MERGED_SDF, "rt").read().split("$$$$\n")
    merged = gzip.open(tmp_path / "d" / xb.MERGED_SDF, "rt").read()
    assert all(r in merged for r in records_a if r.strip())
    # builds of other records or another protocol do not merge
    xb.build_dataset(SmilesSource(smiles=smiles[::-1], n=2, seed=0), tmp_path / "other", workers=1, shard_size=2,
                     progress=False)
    with pytest.raises(ValueError, match="other records"):
        xb.merge_dataset(tmp_path / "a", tmp_path / "e", also=[tmp_path / "other"])
    xb.build_dataset(SmilesSource(smiles=smiles, n=2, seed=1), tmp_path / "proto", xt.XtbProtocol(num_xtb=1),
                     workers=1, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="another protocol"):
        xb.merge_dataset(tmp_path / "a", tmp_path / "e", also=[tmp_path / "proto"])
    assert xb.main(["--merge", "--out", str(tmp_path / "a"), "--also", str(tmp_path / "b"),
                    "--dest", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / xb.MERGED_SDF).read_bytes() == (tmp_path / "d" / xb.MERGED_SDF).read_bytes()
