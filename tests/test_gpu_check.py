"""benchmarks/gpu_check.sh, dry run on the CPU: the GPU check's plumbing, as the GPU machine runs it.

The GPU machine has no RDKit, so the dry run forces the stand-in ``rdkit`` module
(``MOLCONF_GPU_CHECK_NO_RDKIT=1``) and reads molecules featurised beforehand, as it will there.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
STAGES = ("build", "op_tests", "ops", "train", "predict", "direct")
FILES = [f"gpu_{s}.md" for s in ("summary", *STAGES)] + ["gpu_check.json"]


@pytest.fixture(scope="module")
def gpu_inputs():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu_inputs")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def inputs(gpu_inputs, tmp_path_factory):
    """40 molecules of each reference sample, featurised here, with the CPU predictions."""
    return gpu_inputs.build(tmp_path_factory.mktemp("gpu_inputs") / "inputs.pt", n=40, batch_size=20)


def _dry_run(inputs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, MOLCONF_GPU_CHECK_NO_RDKIT="1", OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    cmd = ["bash", str(BENCHMARKS / "gpu_check.sh"), "--device", "cpu", "--dry-run", "--threads", "1",
           "--out", str(out), "--inputs", str(inputs), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_inputs_round_trip(gpu_inputs, inputs):
    data = gpu_inputs.load(inputs)
    assert set(data) == {"qm9", "moses_xtb"}
    for name, entry in data.items():
        assert sum(int(b["mask"].shape[0]) for b in entry["batches"]) == 40
        for b in entry["batches"]:
            assert b["atom_features"].dtype == torch.int64 and b["bond_adj"].dtype == torch.bool
            assert b[gpu_inputs.PRED_CPU].shape == b["pos"].shape
    assert max(int(b["mask"].shape[1]) for b in data["moses_xtb"]["batches"]) > 29  # drug-sized, beyond QM9
    assert inputs.stat().st_size < 2**20  # 40 + 40 molecules; the default 200 + 200 is ~3 MB


def test_dry_run_writes_every_result_without_rdkit(inputs, tmp_path):
    out = tmp_path / "out"
    proc = _dry_run(inputs, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # ≤ 8 files: what the device tool returns
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["rdkit_stub"] is True
    assert {k: v["status"] for k, v in report["stages"].items()} == dict.fromkeys(STAGES, "ok")
    summary = (out / "gpu_summary.md").read_text()
    assert "RDKit absent" in summary and all(f"| {s} | ok |" in summary for s in STAGES)
    # each stage measured what it says
    assert "passed" in report["stages"]["op_tests"]["data"]["summary"]
    assert "failed" not in report["stages"]["op_tests"]["data"]["summary"]
    assert len(report["stages"]["ops"]["data"]["rows"]) == 4  # 2 shapes x 2 ops
    train = report["stages"]["train"]["data"]["rows"]
    assert {(r["relation"], r["data"]) for r in train} == {(m, d) for m in ("rebind", "gtmgc")
                                                          for d in ("qm9", "moses_xtb")}
    assert all(r["finite"] and r["mol_per_s"] > 0 for r in train)
    predict = report["stages"]["predict"]["data"]["rows"]
    assert [r["max_abs_diff_vs_cpu"] for r in predict if r["precision"] == "fp32"] == [0.0, 0.0]  # same CPU
    direct = report["stages"]["direct"]["data"]["results"]
    assert [r["relation"] for r in direct] == ["rebind", "gtmgc"]
    assert "| direct (fp32), random batches |" in (out / "gpu_direct.md").read_text()


def test_a_failing_stage_is_reported_and_fails_the_run(gpu_inputs, inputs, tmp_path):
    """CPU predictions that are not the model's (scaled by 1.1): the predict stage must fail,
    the other stages still run, and the summary names it."""
    data = torch.load(inputs, weights_only=True)
    for entry in data["sets"].values():
        for b in entry["batches"]:
            b[gpu_inputs.PRED_CPU] = b[gpu_inputs.PRED_CPU] * 1.1
    wrong = tmp_path / "wrong.pt"
    torch.save(data, wrong)
    out = tmp_path / "out"
    proc = _dry_run(wrong, out, "--stages", "build", "predict")
    assert proc.returncode == 1
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["stages"]["build"]["status"] == "ok"
    assert report["stages"]["predict"]["status"] == "FAILED"
    assert "D-MAE" in report["stages"]["predict"]["why"]
    assert "| predict | FAILED |" in (out / "gpu_summary.md").read_text()
