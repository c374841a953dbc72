"""molconf.library: a library file in, resumable output blocks out, every record accounted for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

import molconf
from molconf.library import LibrarySettings, predict_library, read_library_output

GOOD = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O", "OC1CCCCC1", "CCN(CC)CC",
        "c1ccncc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=C(O)c1ccccc1OC(C)=O", "CN1CCC[C@H]1c1cccnc1"]
BAD = {3: ("not_a_smiles", "invalid SMILES"), 7: ("[U]", "U"), 11: ("C" * 400, "atoms")}


def _library(tmp_path: Path, n: int = 14, suffix: str = ".smi") -> tuple[Path, list[str]]:
    smiles = []
    for k in range(n):
        smiles.append(BAD[k][0] if k in BAD else GOOD[k % len(GOOD)])
    lines = ["SMILES name", *(f"{s} mol{k}" for k, s in enumerate(smiles))]
    path = tmp_path / f"lib{suffix}"
    path.write_text("\n".join(lines[:5] + ["", "# a comment"] + lines[5:]) + "\n")
    return path, smiles


def _coords(molblock: str) -> np.ndarray:
    return Chem.MolFromMolBlock(molblock, removeHs=False).GetConformer().GetPositions()


def test_every_record_is_predicted_or_named_and_matches_predict(tmp_path):
    path, smiles = _library(tmp_path)
    # float32: the reference arithmetic (under bfloat16 a molecule's rounding depends on its batch)
    summary = predict_library(path, tmp_path / "out", LibrarySettings(precision="float32"), block_size=4)
    assert summary["molecules"] == 14 and summary["failed"] == 3 and summary["predicted"] == 11
    assert summary["blocks"] == {"done": 4, "total": 4} and summary["complete"]
    rows = list(read_library_output(tmp_path / "out"))
    assert [r["position"] for r in rows] == list(range(14))
    assert [r["smiles"] for r in rows] == smiles and rows[0]["name"] == "mol0"
    assert rows[5]["where"] == "lib.smi line 9"  # physical line, blank and comment lines counted
    reference, report = molconf.predict(smiles, return_report=True, precision="float32")  # one process, one call
    for k, row in enumerate(rows):
        if k in BAD:
            assert row["molblock"] is None and BAD[k][1] in row["note"]
            assert reference[k] is None
        else:
            assert row["model"] == report.models[k]
            np.testing.assert_allclose(_coords(row["molblock"]), reference[k].GetConformer().GetPositions(), atol=2e-4)
    failures = (tmp_path / "out" / "failures.csv").read_text().splitlines()
    assert len(failures) == 4 and failures[1].startswith("3,lib.smi line 5,mol3,not_a_smiles,")
    # a second run finds everything done and changes nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "blocks").iterdir()}
    again = predict_library(path, tmp_path / "out", LibrarySettings(precision="float32"), block_size=4)
    assert again["predicted"] == 11
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "blocks").iterdir()} == before


def test_other_options_on_the_same_folder_are_refused(tmp_path):
    path, _ = _library(tmp_path, 4)
    predict_library(path, tmp_path / "out", block_size=2, max_blocks=1)
    with pytest.raises(ValueError, match="another run.*block_size"):
        predict_library(path, tmp_path / "out", block_size=3)
    with pytest.raises(ValueError, match="settings"):
        predict_library(path, tmp_path / "out", LibrarySettings(relax_with="mmff"), block_size=2)
    path.write_text("CCO\n")
    with pytest.raises(ValueError, match="input"):
        predict_library(path, tmp_path / "out", block_size=2)
    with pytest.raises(FileNotFoundError):
        predict_library(tmp_path / "missing.smi", tmp_path / "o2")
    with pytest.raises(ValueError, match="fmt"):
        predict_library(path, tmp_path / "o3", fmt="xyz")


def _fail_on_phenol(items, settings):
    if "c1ccccc1O" in items:
        raise RuntimeError("boom")
    from molconf.library import _predict_with

    return _predict_with(items, settings)


def test_an_exception_costs_only_its_molecule(tmp_path):
    path, smiles = _library(tmp_path, 6)
    summary = predict_library(path, tmp_path / "out", block_size=3, predictor=_fail_on_phenol)
    rows = list(read_library_output(tmp_path / "out"))
    assert summary["molecules"] == 6 and summary["failed"] == 2  # the phenol and the bad SMILES
    assert rows[1]["molblock"] is None and "RuntimeError: boom" in rows[1]["note"]
    assert all(rows[k]["molblock"] is not None for k in (0, 2, 4, 5))


def test_each_block_is_one_predict_call(tmp_path):
    path, _ = _library(tmp_path, 10)
    calls = []

    def counting(items, settings):
        calls.append(len(items))
        from molconf.library import _predict_with

        return _predict_with(items, settings)

    predict_library(path, tmp_path / "out", block_size=4, predictor=counting)
    assert calls == [4, 4, 2]


def test_parquet_in_and_out(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    _, smiles = _library(tmp_path, 8)
    pq.write_table(pa.table({"Name": [f"m{k}" for k in range(8)], "SMILES": smiles}), tmp_path / "lib.parquet")
    summary = predict_library(tmp_path / "lib.parquet", tmp_path / "out", block_size=5, fmt="parquet")
    assert summary["molecules"] == 8 and summary["failed"] == 2
    table = pq.read_table(tmp_path / "out" / "blocks" / "block_000000.parquet").to_pylist()
    assert [r["name"] for r in table] == ["m0", "m1", "m2", "m3", "m4"] and table[3]["molblock"] is None
    assert "invalid SMILES" in table[3]["note"] and table[0]["where"] == "lib.parquet row 1"
    rows = list(read_library_output(tmp_path / "out"))
    assert len(rows) == 8 and rows[7]["molblock"] is None
    assert (tmp_path / "out" / "failures.csv").read_text().count("\n") == 3


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "molconf.cli", "predict", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_cli_killed_and_resumed_gives_the_same_output(tmp_path):
    path, _ = _library(tmp_path, 120)
    whole = _cli("-i", str(path), "-o", str(tmp_path / "whole") + "/", "--block-size", "4")
    assert whole.returncode == 0, whole.stderr
    assert "117 of 120 molecules predicted, 3 failed" in whole.stderr
    proc = subprocess.Popen([sys.executable, "-m", "molconf.cli", "predict", "-i", str(path), "-o",
                             str(tmp_path / "killed") + "/", "--block-size", "4"], stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    blocks = tmp_path / "killed" / "blocks"
    deadline = time.time() + 120
    while not (blocks.is_dir() and len(list(blocks.glob("*.json"))) >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(blocks.glob("*.json")))
    assert 2 <= done_before < 30 and not (tmp_path / "killed" / "summary.json").exists()
    resumed = _cli("-i", str(path), "-o", str(tmp_path / "killed") + "/", "--block-size", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert list(read_library_output(tmp_path / "killed")) == list(read_library_output(tmp_path / "whole"))
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["molecules"] == 120


def test_cli_library_mode_errors(tmp_path):
    path, _ = _library(tmp_path, 2)
    stdin = _cli("-i", "-", "-o", str(tmp_path / "o") + "/", input="CCO\n")
    assert stdin.returncode == 2 and "reads one input file" in stdin.stderr
    missing = _cli("-i", str(tmp_path / "nope.smi"), "-o", str(tmp_path / "o") + "/")
    assert missing.returncode == 2 and "not found" in missing.stderr
    part = _cli("-i", str(path), "-o", str(tmp_path / "p") + "/", "--block-size", "1", "--max-blocks", "1")
    assert part.returncode == 0 and "blocks 1 of 2 (unfinished" in part.stderr
    other = _cli("-i", str(path), "-o", str(tmp_path / "p") + "/", "--block-size", "2")
    assert other.returncode == 2 and "holds another run" in other.stderr
