"""GEOM-DRUGS: the shipped format fixture, the reader, streaming/resumable caching, training."""

import csv
import io
import json
import pickle
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from rdkit import Chem

from molconf import constants as K
from molconf.data.cache import _ARRAY_NAMES, CacheWriter, GraphStore, write_cache
from molconf.data.dataset import ConformerDataset, collate_dense
from molconf.data.features import ATOM_FEATURE_DIMS, featurize
from molconf.data.geom import (
    GeomEntry,
    boltzmann_weights,
    geom_index,
    load_geom_split,
    read_geom_molecule,
    split_smiles,
)
from molconf.data.geom_prepare import build_geom_cache, default_geom_root, load_geom_drugs, main
from molconf.data.load import load_dataset, load_dataset_split
from molconf.errors import CacheError, MoleculeError
from molconf.lightning import ConformerDataModule, ConformerModule
from molconf.models import ConformerTransformer
from molconf.ops import lj_parameters

SAMPLE = default_geom_root()
N_SAMPLE = 37
BEYOND_QM9 = {5, 15, 16, 17, 35, 53}  # B P S Cl Br I (QM9 has H C N O F only)


def _raw(entry: GeomEntry) -> dict:
    with open(entry.path, "rb") as fh:
        return pickle.load(fh)


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    return load_geom_drugs(cache_dir=tmp_path_factory.mktemp("geom_cache"), workers=1)


# --- the shipped sample ------------------------------------------------------------------
def test_sample_is_in_the_official_layout():
    folder = SAMPLE / "rdkit_folder"
    summary = json.loads((folder / "summary_drugs.json").read_text())
    assert len(summary) == N_SAMPLE == len(list((folder / "drugs").glob("*.pickle")))
    assert (SAMPLE / "README.md").read_text().count("FORMAT FIXTURE") >= 1
    assert sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file()) < 2e6
    for smiles, fields in summary.items():
        assert fields["pickle_path"].startswith("drugs/")
        with open(folder / fields["pickle_path"], "rb") as fh:  # plain pickle + RDKit
            data = pickle.load(fh)
        assert data["smiles"] == smiles and 3 <= len(data["conformers"]) <= 5
        for conf in data["conformers"]:
            mol = conf["rd_mol"]
            assert isinstance(mol, Chem.Mol) and mol.GetNumConformers() == 1
            assert mol.GetNumAtoms() <= 70 and all(a.GetNumImplicitHs() == 0 for a in mol.GetAtoms())
            assert {"totalenergy", "relativeenergy", "boltzmannweight"} <= set(conf)
        rel = [c["relativeenergy"] for c in data["conformers"]]
        e = [c["totalenergy"] for c in data["conformers"]]
        assert min(rel) == 0.0 and np.allclose(np.array(e) - min(e), np.array(rel) / 627.509474)


def test_ground_state_is_lowest_energy_and_ensembles_are_weighted():
    not_first = 0
    for entry in geom_index(SAMPLE):
        raw = _raw(entry)
        mol = read_geom_molecule(entry.path, entry.name, entry.smiles)
        energies = [c["totalenergy"] for c in raw["conformers"]]
        assert mol.ground_index == int(np.argmin(energies))
        not_first += mol.ground_index != 0
        ref = raw["conformers"][mol.ground_index]["rd_mol"].GetConformer().GetPositions()
        assert np.array_equal(mol.ground_state.GetConformer().GetPositions(), ref)
        assert mol.weights.sum() == pytest.approx(1.0) and (mol.weights >= 0).all()
        assert np.allclose(mol.weights, [c["boltzmannweight"] for c in raw["conformers"]])
        # The release's weights are the Boltzmann weights of its energies at 298.15 K.
        assert np.allclose(mol.weights, boltzmann_weights(mol.energies), atol=1e-9)
        n = mol.ground_state.GetNumAtoms()
        assert mol.positions.shape == (len(raw["conformers"]), n, 3)
        assert mol.ensemble_mol().GetNumConformers() == len(raw["conformers"])
    assert not_first >= 10  # the fixture does not store the ground state first


def test_elements_beyond_qm9_flow_through_features_and_lj(sample_store):
    z = np.asarray(sample_store._a["atomic_numbers"]).astype(int)
    assert BEYOND_QM9 <= set(z.tolist())
    feats = np.asarray(sample_store._a["atom_features"])
    assert np.array_equal(feats[:, 0], z - 1)  # atomic-number column: an index of its own, not "misc"
    assert (feats < np.asarray(ATOM_FEATURE_DIMS)).all()
    sigma, eps = lj_parameters(torch.as_tensor(z))
    assert torch.isfinite(sigma).all() and (sigma > 0).all() and (eps > 0).all()


# --- splits and ids -------------------------------------------------------------------------
def test_split_files_index_the_sorted_pickle_list(tmp_path):
    index = geom_index(SAMPLE)
    split = load_geom_split(SAMPLE, num_molecules=len(index))
    assert [len(split[p]) for p in ("train", "val", "test")] == [27, 5, 5]
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(N_SAMPLE))
    same = load_geom_split(SAMPLE / "split.npy")
    assert all(np.array_equal(same[p], split[p]) for p in split)
    names = sorted(p.name for p in (SAMPLE / "rdkit_folder" / "drugs").glob("*.pickle"))
    for i in split["test"]:  # torsional diffusion: sorted(glob("drugs/*.pickle"))[split]
        assert index[i].path.name == names[i] and index[i].mol_id == i
    assert split_smiles(split, index)["test"] == [index[i].smiles for i in split["test"]]
    assert np.array_equal(load_dataset_split("geom_drugs", "val"), split["val"])

    # Per-part files (the datasets/qm9 layout) and bounds checking.
    for p in split:
        np.save(tmp_path / f"split_{p}.npy", split[p])
    assert np.array_equal(load_geom_split(tmp_path)["train"], split["train"])
    with pytest.raises(ValueError, match="outside"):
        load_geom_split(SAMPLE, num_molecules=10)


def test_orderings_differ_where_file_names_and_smiles_sort_differently(tmp_path):
    drugs = tmp_path / "rdkit_folder" / "drugs"
    drugs.mkdir(parents=True)
    summary = {s: {"pickle_path": f"drugs/{s}.pickle"} for s in ("C", "C#N", "CC")}
    for s in summary:
        (drugs / f"{s}.pickle").write_bytes(b"")
    (tmp_path / "rdkit_folder" / "summary_drugs.json").write_text(json.dumps(summary))
    # "#" sorts before ".", so "C#N.pickle" < "C.pickle" although "C" < "C#N".
    assert [e.smiles for e in geom_index(tmp_path)] == ["C#N", "C", "CC"]
    assert [e.smiles for e in geom_index(tmp_path, order="smiles")] == ["C", "C#N", "CC"]


# --- bad pickles -------------------------------------------------------------------------
def _rewrite(path: Path, change) -> None:
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    change(data)
    with open(path, "wb") as fh:
        pickle.dump(data, fh)


def _swap_atoms(mol: Chem.Mol, i: int, j: int) -> Chem.Mol:
    order = list(range(mol.GetNumAtoms()))
    order[i], order[j] = order[j], order[i]
    return Chem.RenumberAtoms(mol, order)


def _move_hydrogen(mol: Chem.Mol) -> Chem.Mol:
    """A 'reacted' conformer: one H bonded to another heavy atom, same atom order."""
    rw = Chem.RWMol(mol)
    h = next(a for a in rw.GetAtoms() if a.GetAtomicNum() == 1)
    old = h.GetNeighbors()[0].GetIdx()
    new = next(a.GetIdx() for a in rw.GetAtoms() if a.GetAtomicNum() > 1 and a.GetIdx() != old)
    rw.RemoveBond(h.GetIdx(), old)
    rw.AddBond(h.GetIdx(), new, Chem.BondType.SINGLE)
    return rw.GetMol()


def _hydrogens_on_different_atoms(mol: Chem.Mol) -> tuple[int, int]:
    hs = [a for a in mol.GetAtoms() if a.GetAtomicNum() == 1]
    first = hs[0]
    other = next(a for a in hs if a.GetNeighbors()[0].GetIdx() != first.GetNeighbors()[0].GetIdx())
    return first.GetIdx(), other.GetIdx()


@pytest.fixture()
def damaged_release(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(SAMPLE, root)
    index = geom_index(root)
    bad = {}

    def damage(k, reason, change):
        bad[index[k].name] = reason
        if change is not None:
            _rewrite(index[k].path, change)

    index[0].path.write_bytes(index[0].path.read_bytes()[:120])  # truncated download
    bad[index[0].name] = "unreadable pickle"
    damage(1, "no conformers", lambda d: d.update(conformers=[]))
    # Heavy atoms 0 and 1 of different elements swapped in conformer 1.
    def swap_heavy(d):
        m = d["conformers"][0]["rd_mol"]
        i = next(a.GetIdx() for a in m.GetAtoms() if a.GetAtomicNum() != m.GetAtomWithIdx(0).GetAtomicNum())
        d["conformers"][1]["rd_mol"] = _swap_atoms(d["conformers"][1]["rd_mol"], 0, i)
    damage(2, "atoms differ from conformer 0", swap_heavy)
    damage(3, "same graph, different atom numbering",
           lambda d: d["conformers"][2].update(rd_mol=_swap_atoms(
               d["conformers"][2]["rd_mol"], *_hydrogens_on_different_atoms(d["conformers"][2]["rd_mol"]))))

    def nan(d):
        d["conformers"][1]["rd_mol"].GetConformer().SetAtomPosition(3, [float("nan"), 0.0, 0.0])
    damage(4, "non-finite coordinates", nan)
    damage(5, "totalenergy missing or not finite", lambda d: d["conformers"][0].pop("totalenergy"))
    # A reacted conformer is left out of the ensemble, not a reason to drop the molecule.
    _rewrite(index[6].path, lambda d: d["conformers"][-1].update(rd_mol=_move_hydrogen(d["conformers"][-1]["rd_mol"])))
    return root, index, bad


def test_bad_pickles_are_reported_with_reasons_and_the_rest_converted(damaged_release, tmp_path):
    root, index, bad = damaged_release
    for entry in index[:6]:
        with pytest.raises(MoleculeError) as err:
            read_geom_molecule(entry.path, entry.name, entry.smiles)
        assert err.value.molecule == entry.name and bad[entry.name] in err.value.reason
    reacted = read_geom_molecule(index[6].path, index[6].name)
    assert reacted.skipped_conformers == 1 and len(reacted.conformers) == len(_raw(index[6])["conformers"]) - 1
    with pytest.raises(MoleculeError, match="reacted"):
        read_geom_molecule(index[6].path, index[6].name, skip_reacted=False)

    store = load_geom_drugs(root, tmp_path / "cache", workers=1, shard_size=4, report_dir=tmp_path / "rep")
    assert len(store) == N_SAMPLE - len(bad)
    assert sorted(store.mol_ids.tolist()) == list(range(len(bad), N_SAMPLE))
    info = store.manifest["info"]
    assert info["dropped"] == len(bad) and info["reacted_conformers_skipped"] == 1
    for folder in (store.folder, tmp_path / "rep"):
        with open(folder / "dropped.csv") as fh:
            rows = {r["molecule"]: r["reason"] for r in csv.DictReader(fh)}
        assert rows.keys() == bad.keys()
        assert all(bad[m] in reason for m, reason in rows.items())
    report = json.loads((tmp_path / "rep" / "conversion_report.json").read_text())
    assert report["dropped_by_reason"]["no conformers"] == 1
    assert report["split"]["train"]["converted"] + report["split"]["val"]["converted"] + \
        report["split"]["test"]["converted"] == N_SAMPLE - len(bad)


# --- streaming and resuming ------------------------------------------------------------------
class _Killed(Exception):
    pass


def _arrays(folder: Path) -> dict[str, bytes]:
    return {n: (folder / f"{n}.npy").read_bytes() for n in _ARRAY_NAMES}


def test_killed_build_resumes_and_matches_an_uninterrupted_one(tmp_path):
    full = build_geom_cache(tmp_path / "a" / "geom", SAMPLE, workers=1, shard_size=8)
    assert full.manifest["info"]["shards"] == 5 and len(full) == N_SAMPLE
    assert not (tmp_path / "a" / "geom.partial").exists()

    folder = tmp_path / "b" / "geom"

    def kill_after_first(i):
        raise _Killed(i)

    with pytest.raises(_Killed):
        build_geom_cache(folder, SAMPLE, workers=1, shard_size=8, on_shard=kill_after_first)
    partial = folder.with_name("geom.partial")
    assert not folder.exists() and json.loads((partial / "state.json").read_text())["finished"] == [0]
    assert build_geom_cache(folder, SAMPLE, workers=1, shard_size=8, max_shards=1) is None  # one more
    # A kill inside shard 2 leaves its temporary folder; shard 1 is damaged on disk since.
    (partial / "shard_000002.tmp-x1y2").mkdir()
    (partial / "shard_000001" / "bonds.npy").write_bytes(b"garbage")
    done = []
    resumed = build_geom_cache(folder, SAMPLE, workers=1, shard_size=8, on_shard=done.append)
    assert done == [1, 2, 3, 4]  # only unfinished (or damaged) shards were converted
    assert _arrays(resumed.folder) == _arrays(full.folder)
    assert resumed.manifest["sha256"] == full.manifest["sha256"]
    assert resumed.mol_ids.tolist() == list(range(N_SAMPLE)) and not partial.exists()


def test_partial_build_for_another_source_is_discarded(tmp_path):
    folder = tmp_path / "geom"
    build_geom_cache(folder, SAMPLE, workers=1, shard_size=8, max_shards=2)
    state = folder.with_name("geom.partial") / "state.json"
    s = json.loads(state.read_text())
    s["fingerprint"]["pickles"]["count"] += 1  # as if the release had changed since
    state.write_text(json.dumps(s))
    done = []
    build_geom_cache(folder, SAMPLE, workers=1, shard_size=8, on_shard=done.append)
    assert done == [0, 1, 2, 3, 4]


def test_cache_writer_streams_into_the_unchanged_format(sample_store, tmp_path):
    graphs = [sample_store.graph(i) for i in range(6)]
    binaries = [sample_store.mol(i).ToBinary() for i in range(6)]
    ids = sample_store.mol_ids[:6].tolist()
    folder = write_cache(tmp_path / "w", ids, graphs, binaries, {"x": 1})
    for name in _ARRAY_NAMES:  # byte-for-byte what np.save writes
        buf = io.BytesIO()
        np.save(buf, np.load(folder / f"{name}.npy"))
        assert buf.getvalue() == (folder / f"{name}.npy").read_bytes(), name
    with CacheWriter(tmp_path / "two") as w:  # appending whole caches = adding one by one
        w.add_store(GraphStore(folder))
        for i in range(3):
            w.add(ids[i] + 100, graphs[i], binaries[i])
        w.finish({"x": 1})
    two = GraphStore(tmp_path / "two")
    assert two.mol_ids.tolist() == ids + [i + 100 for i in ids[:3]]
    for row, src in ((7, 1), (2, 2)):
        assert np.array_equal(two.graph(row).lap_pe, graphs[src].lap_pe)
        assert Chem.MolToSmiles(two.mol(row)) == Chem.MolToSmiles(Chem.Mol(binaries[src]))
    # An aborted writer leaves no temporary folder and does not touch the existing cache.
    with pytest.raises(RuntimeError, match="boom"), CacheWriter(folder) as w:
        w.add(1, graphs[0], binaries[0])
        raise RuntimeError("boom")
    assert len(GraphStore(folder)) == 6 and sorted(p.name for p in tmp_path.iterdir()) == ["two", "w"]


def test_stale_or_corrupted_cache_is_rebuilt(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(SAMPLE, root)
    store = load_geom_drugs(root, tmp_path / "c", workers=1)
    pos = np.array(store.graph(5).pos)
    path = store.folder / "pos.npy"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        GraphStore(store.folder)
    with pytest.warns(UserWarning, match="rebuilding GEOM-DRUGS cache.*corrupted"):
        again = load_geom_drugs(root, tmp_path / "c", workers=1)
    assert np.array_equal(again.graph(5).pos, pos)
    # A changed source (a pickle rewritten) gives another fingerprint, hence a fresh cache.
    entry = geom_index(root)[5]
    _rewrite(entry.path, lambda d: d["conformers"].reverse())
    changed = load_geom_drugs(root, tmp_path / "c", workers=1)
    assert changed.folder != again.folder and changed.manifest["fingerprint"] != again.manifest["fingerprint"]
    assert np.array_equal(changed.graph(5).pos, pos)  # same ground state, whatever the order


def test_prepare_command(tmp_path, capsys):
    from molconf.data.prepare import main as prepare_main

    prepare_main(["geom_drugs", "--cache-dir", str(tmp_path), "--workers", "1", "--shard-size", "10",
                  "--report-dir", str(tmp_path / "rep"), "--limit", "12"])
    assert "12 molecules" in capsys.readouterr().out
    assert json.loads((tmp_path / "rep" / "conversion_report.json").read_text())["shards"] == 2
    main(["--cache-dir", str(tmp_path), "--workers", "1", "--limit", "12"])  # cached: loads
    assert "12 molecules" in capsys.readouterr().out


# --- the whole path: cache -> dataset -> batch -> model -> Lightning --------------------------
def _tiny(pe_dim=64):
    return ConformerTransformer("rebind", d_model=64, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                                n_decoder_layers=1, pe_dim=pe_dim)


def test_load_dataset_batch_and_forward(sample_store):
    store = load_dataset("geom_drugs", workers=1)
    assert len(store) == N_SAMPLE and store.max_atoms == 63
    ds = ConformerDataset(store, np.arange(8), pe_dim=64)
    batch = collate_dense([ds[i] for i in range(8)])
    n = int(store.num_atoms[:8].max())
    assert batch[K.LAP_PE].shape == (8, n, 64) and batch[K.POS].shape == (8, n, 3)
    for b in range(8):
        g = store.graph(b)
        assert np.allclose(batch[K.POS][b, : g.num_atoms].numpy(), g.pos)
        assert np.array_equal(featurize(store.mol(b)).atom_features, g.atom_features)
    torch.manual_seed(0)
    out = _tiny().eval()(batch)
    assert out[K.POS_PRED].shape == (8, n, 3) and torch.isfinite(out[K.POS_PRED]).all()


def test_a_few_training_steps_with_lightning(tmp_path, sample_store):
    L.seed_everything(0)
    dm = ConformerDataModule(dataset="geom_drugs", max_atoms=400, pe_dim=64)
    module = ConformerModule(_tiny(), lr=1e-3)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False,
                        num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=4,
                        default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert trainer.global_step == 4
    assert dm.missing == {"train": 0, "val": 0, "test": 0} and len(dm.rows["train"]) == 27
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(trainer.callback_metrics[f"val/{K.D_MAE}"])
    with pytest.raises(ValueError, match="unknown dataset"):
        ConformerDataModule(dataset="drugs")
