"""molconf.cluster on a private local Ray (2 CPUs, loopback): the same results as one process,
resumable, and a crashing molecule never takes its block with it."""

from __future__ import annotations

import os
import sys

import pytest

from molconf.library import LibrarySettings, _predict_with, predict_library, read_library_output

pytest.importorskip("ray")
import ray.cloudpickle  # noqa: E402

# the predictors below run inside Ray's workers, which cannot import this test module
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "not_a_smiles", "OC1CCCCC1", "CCN(CC)CC", "c1ccncc1",
          "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "[U]", "O=C(O)c1ccccc1OC(C)=O", "CN1CCC[C@H]1c1cccnc1", "CCCCO"]
F32 = LibrarySettings(precision="float32")


@pytest.fixture()
def library(tmp_path):
    path = tmp_path / "lib.smi"
    path.write_text("".join(f"{s} m{k}\n" for k, s in enumerate(SMILES)))
    return path


def test_ray_gives_the_single_process_output_and_loads_each_model_once_per_worker(ray_local, library, tmp_path):
    local = predict_library(library, tmp_path / "local", F32, block_size=2)
    on_ray = predict_library(library, tmp_path / "ray", F32, block_size=2, engine="ray")
    assert on_ray["engine_this_run"] == "ray" and on_ray["blocks"] == {"done": 6, "total": 6}
    assert list(read_library_output(tmp_path / "ray")) == list(read_library_output(tmp_path / "local"))
    assert (tmp_path / "ray" / "failures.csv").read_text() == (tmp_path / "local" / "failures.csv").read_text()
    loads = on_ray["model_loads_by_process"]
    assert 1 <= len(loads) <= 2 and all(n <= 2 for n in loads.values())  # two default models, once per worker
    assert str(os.getpid()) not in loads and local["predicted"] == on_ray["predicted"] == 10


def test_killed_and_resumed_on_ray_gives_the_same_output(ray_local, library, tmp_path):
    first = predict_library(library, tmp_path / "a", F32, block_size=3, engine="ray", max_blocks=2)
    assert first["blocks"] == {"done": 2, "total": 4} and not first["complete"]
    rest = predict_library(library, tmp_path / "a", F32, block_size=3, engine="ray")
    assert rest["complete"] and rest["molecules"] == 12
    predict_library(library, tmp_path / "b", F32, block_size=3, engine="ray")
    assert list(read_library_output(tmp_path / "a")) == list(read_library_output(tmp_path / "b"))


def _raise_on_phenol(items, settings):
    if "c1ccccc1O" in items:
        raise RuntimeError("boom in a worker")
    return _predict_with(items, settings)


def _die_on_phenol(items, settings):
    if "c1ccccc1O" in items:
        os._exit(3)  # as a segfault in native code: the worker process is gone
    return _predict_with(items, settings)


@pytest.mark.parametrize("predictor, reason", [(_raise_on_phenol, "RuntimeError: boom in a worker"),
                                                (_die_on_phenol, "worker process died")])
def test_a_crashing_molecule_does_not_lose_its_block(ray_local, library, tmp_path, predictor, reason):
    summary = predict_library(library, tmp_path / "out", F32, block_size=4, engine="ray", predictor=predictor)
    rows = list(read_library_output(tmp_path / "out"))
    assert summary["molecules"] == 12 and len(rows) == 12
    assert rows[1]["molblock"] is None and reason in rows[1]["note"]
    assert [k for k, r in enumerate(rows) if r["molblock"] is None] == [1, 3, 8]  # + the two bad inputs
    assert rows[0]["molblock"] is not None and rows[2]["molblock"] is not None  # the phenol's block-mates


def test_build_xtb_shards_on_ray_equal_the_local_build(ray_local, tmp_path):
    pytest.importorskip("tblite")
    from molconf.ground_state import build as xb

    molecules = ["O", "C", "CC", "xx", "N", "CO"]
    xb.build_dataset(molecules, tmp_path / "local", workers=1, shard_size=2, progress=False)
    (tmp_path / "in.smi").write_text("\n".join(molecules) + "\n")
    assert xb.main(["--smiles-file", str(tmp_path / "in.smi"), "--out", str(tmp_path / "ray"), "--workers", "2",
                    "--shard-size", "2", "--no-progress", "--ray"]) == 0  # the command line, on Ray
    for i in range(3):
        for kind in ("sdf", "failures.csv"):
            ours, theirs = (tmp_path / d / "shards" / f"shard_{i:06d}.{kind}" for d in ("ray", "local"))
            assert ours.read_text() == theirs.read_text()
    assert (tmp_path / "ray" / "failures.csv").read_text() == (tmp_path / "local" / "failures.csv").read_text()


def test_cli_on_ray_killed_and_resumed(library, tmp_path):
    """``molconf predict -o out/ --ray``: its own private Ray; the whole job killed (SIGKILL to its
    process group, as a scheduler does), rerun, equals an uninterrupted local run."""
    import signal
    import subprocess
    import time

    big = tmp_path / "big.smi"
    big.write_text(library.read_text() * 10)  # 120 records, 12 blocks of 10
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "molconf.cli", "predict", "-i", str(big), "--block-size", "10", "--workers", "2"]
    proc = subprocess.Popen([*cmd, "-o", str(tmp_path / "ray") + "/", "--ray"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blocks = tmp_path / "ray" / "blocks"
    deadline = time.time() + 180
    while not (blocks.is_dir() and len(list(blocks.glob("*.json"))) >= 2) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(list(blocks.glob("*.json"))) < 12 and not (tmp_path / "ray" / "summary.json").exists()
    resumed = subprocess.run([*cmd, "-o", str(tmp_path / "ray") + "/", "--ray"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "100 of 120 molecules predicted, 20 failed" in resumed.stderr
    local = subprocess.run([*cmd, "-o", str(tmp_path / "local") + "/"], env=env, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr[-2000:]
    assert list(read_library_output(tmp_path / "ray")) == list(read_library_output(tmp_path / "local"))
