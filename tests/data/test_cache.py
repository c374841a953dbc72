"""The on-disk cache: round trip, and stale or corrupted caches are rebuilt, never used."""

import json
import shutil

import numpy as np
import pytest

from molconf.data import load_qm9
from molconf.data.cache import GraphStore, write_cache
from molconf.data.features import featurize
from molconf.errors import CacheError

N = 40


def test_round_trip(qm9_small, tmp_path):
    rows = range(5)
    graphs = [qm9_small.graph(i) for i in rows]
    mols = [qm9_small.mol(i).ToBinary() for i in rows]
    folder = write_cache(tmp_path / "c", [10, 11, 12, 13, 14], graphs, mols, {"x": 1})
    store = GraphStore(folder, {"x": 1})
    assert len(store) == 5 and store.mol_ids.tolist() == [10, 11, 12, 13, 14]
    for i, g in enumerate(graphs):
        h = store.graph(i)
        for field in ("atomic_numbers", "atom_features", "bonds", "bond_types", "lap_pe", "pos"):
            assert np.array_equal(getattr(g, field), getattr(h, field)), field
        again = featurize(store.mol(i))
        assert np.array_equal(again.atom_features, g.atom_features)
    rows_found, missing = store.positions_of([12, 99, 10])
    assert rows_found.tolist() == [2, 0] and missing.tolist() == [99]
    with pytest.raises(CacheError, match="another source"):
        GraphStore(folder, {"x": 2})


def _small(cache_dir):
    return load_qm9(cache_dir, limit=N, workers=1)


def test_corrupted_array_is_detected_and_rebuilt(tmp_path):
    store = _small(tmp_path)
    folder, pos = store.folder, np.array(store.graph(3).pos)
    path = folder / "pos.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last coordinate
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        GraphStore(folder)
    with pytest.warns(UserWarning, match="rebuilding QM9 cache.*corrupted"):
        again = _small(tmp_path)
    assert np.array_equal(again.graph(3).pos, pos) and len(again) == N


@pytest.mark.parametrize("damage", ["truncate_manifest", "delete_array", "old_version", "garbage_array"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    folder = _small(tmp_path).folder
    manifest = folder / "manifest.json"
    if damage == "truncate_manifest":
        manifest.write_text(manifest.read_text()[:50])
    elif damage == "delete_array":
        (folder / "bonds.npy").unlink()
    elif damage == "old_version":
        m = json.loads(manifest.read_text())
        m["format_version"] = 0
        manifest.write_text(json.dumps(m))
    else:
        (folder / "lap_pe.npy").write_bytes(b"not a numpy file")
    with pytest.raises(CacheError):
        GraphStore(folder)
    with pytest.warns(UserWarning, match="rebuilding"):
        assert len(_small(tmp_path)) == N
    GraphStore(folder)  # valid again


def test_half_written_cache_folder_is_not_used(tmp_path):
    folder = _small(tmp_path).folder
    shutil.rmtree(folder)
    folder.mkdir()  # e.g. a crash before the atomic rename: no manifest
    with pytest.warns(UserWarning, match="no manifest"):
        assert len(_small(tmp_path)) == N
