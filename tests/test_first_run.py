"""`make run` (benchmarks/first_run.py): its shipped inputs, and the job itself end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from molconf import constants as K
from molconf.data.moses_xtb import convert_record
from molconf.data.qm9 import parse_qm9pack_row
from molconf.data.splits import load_split
from molconf.predict_cli import read_inputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "datasets" / "examples" / "molecules.smi"
ELEMENTS = {"H", "C", "N", "O", "F", "S", "Cl", "Br"}
MAKE_RUN_LIMIT_S = 300


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def samples():
    module = _load("make_samples", ROOT / "datasets" / "reference" / "make_samples.py")
    yield module
    del sys.modules["make_samples"]


@pytest.fixture(scope="module")
def first_run():
    module = _load("first_run", ROOT / "benchmarks" / "first_run.py")
    yield module
    del sys.modules["first_run"]


# --------------------------------------------------------------------------- example input
def test_example_file_is_about_fifty_named_valid_molecules():
    inputs = read_inputs(str(EXAMPLES))  # the reader `molconf predict -i` uses
    items, names = inputs.items, inputs.names
    assert 45 <= len(items) <= 65
    lines = [ln for ln in EXAMPLES.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == len(items)
    assert all(len(ln.split(maxsplit=1)) == 2 for ln in lines), "every line: SMILES then a name"
    assert len(set(names)) == len(names)
    mols = {}
    for smiles, name in zip(items, names):
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, f"{name}: invalid SMILES {smiles!r}"
        assert len(Chem.GetMolFrags(mol)) == 1, name
        assert {a.GetSymbol() for a in Chem.AddHs(mol).GetAtoms()} <= ELEMENTS, name
        assert mol.GetNumHeavyAtoms() <= 60, name
        mols[name] = mol
    for drug in ("aspirin", "caffeine", "paracetamol", "testosterone"):
        assert drug in mols
    assert any("ibuprofen" in n for n in mols)
    assert any(Chem.GetFormalCharge(m) != 0 for m in mols.values()), "at least one charged molecule"
    n_centres = {n: len(Chem.FindMolChiralCenters(m, useLegacyImplementation=False)) for n, m in mols.items()}
    assert max(n_centres.values()) >= 8, "a stereo-rich molecule"
    assert any(b.GetStereo() != Chem.BondStereo.STEREONONE for m in mols.values() for b in m.GetBonds()), \
        "an E/Z double bond"


# --------------------------------------------------------------------------- reference samples
@pytest.mark.parametrize("dataset", ["qm9", "moses_xtb"])
def test_reference_sample_is_a_seeded_sample_of_the_test_split(dataset, samples, first_run):
    refs = first_run.load_reference(samples.FILES[dataset])
    ids = [int(m.GetProp(K.SDF_SOURCE_INDEX)) for m in refs]
    assert 100 <= len(ids) <= 200
    assert ids == sorted(set(ids)), "sorted by id, no duplicates"
    assert set(ids) <= set(load_split(dataset, "test").tolist())
    # drawn in the seeded order (which ones exactly: test_make_samples_reproduces_the_shipped_files)
    assert set(ids) <= set(samples.candidate_ids(dataset, len(ids) + samples.SPARE))
    for mol in refs:
        assert mol.GetNumConformers() == 1 and mol.GetConformer().Is3D()
        assert not any(a.GetNumImplicitHs() for a in mol.GetAtoms()), "every H explicit"


def test_qm9_reference_coordinates_are_the_dft_ones(samples, first_run):
    refs = first_run.load_reference(samples.FILES["qm9"])
    few = {int(m.GetProp(K.SDF_SOURCE_INDEX)): m for m in refs[:3] + refs[-2:]}
    rows = samples.qm9_rows(few)
    assert set(rows) == set(few)
    for mol_id, mol in few.items():
        raw = parse_qm9pack_row(rows[mol_id])  # straight from the qm9pack CSV
        assert [a.GetSymbol() for a in mol.GetAtoms()] == raw.elements
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), raw.coords, atol=6e-5)  # SDF: 4 decimals


def test_moses_xtb_reference_molecules_are_the_cache_s(samples, first_run):
    refs = first_run.load_reference(samples.FILES["moses_xtb"])
    few = {int(m.GetProp(K.SDF_SOURCE_INDEX)): m for m in refs[:3] + refs[-2:]}
    records = samples.moses_records(few)
    for mol_id, mol in few.items():
        converted = convert_record((0, records[mol_id]))  # as the moses_xtb cache reads it
        source = Chem.Mol(converted.mol_binary)
        # (a pickled Mol keeps float32 coordinates)
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), source.GetConformer().GetPositions(), atol=1e-6)
        Chem.AssignStereochemistryFrom3D(source)
        assert Chem.MolToSmiles(mol) == Chem.MolToSmiles(source)


def test_make_samples_reproduces_the_shipped_files(samples, tmp_path):
    for dataset, make in (("qm9", samples.make_qm9), ("moses_xtb", samples.make_moses_xtb)):
        shipped = samples.FILES[dataset]
        n = sum(1 for line in shipped.read_text().splitlines() if line.startswith("$$$$"))
        out = tmp_path / shipped.name
        make(n, out)
        assert out.read_bytes() == shipped.read_bytes(), dataset


# --------------------------------------------------------------------------- the job
def _run_script(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "first_run.py"), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_first_run_end_to_end_on_a_few_reference_molecules(first_run, tmp_path):
    proc = _run_script(tmp_path, "--n", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    names = read_inputs(str(EXAMPLES)).names
    for name in names:  # every example molecule is listed, predicted or failed
        assert f"  {name} " in out
    assert "predicted  aspirin" in out
    # the table: both reference sets, the three methods each, five molecules
    table = [ln for ln in out.splitlines() if ln.startswith("| ") and "/ 5 |" in ln]
    assert len(table) == 6
    for label in first_run.REFERENCE:
        assert {m for m in first_run.METHODS if any(f"| {label} | {m}" in ln for ln in table)} == set(first_run.METHODS)
    result = json.loads((tmp_path / "first_run.json").read_text())
    assert [r["n_molecules"] for r in result["table"]] == [5] * 6
    assert all(r["mol_per_s"] > 0 for r in result["table"])
    predicted = [m for m in Chem.SDMolSupplier(str(tmp_path / "predicted.sdf"), removeHs=False)]
    assert len(predicted) == result["examples"]["n_predicted"] >= len(names) - 3
    assert all(m is not None and m.GetNumConformers() == 1 for m in predicted)
    assert "aspirin" in {m.GetProp("_Name") for m in predicted}
    assert (tmp_path / "first_run.md").read_text().count("| RDKit ETKDG + MMFF |") == 2


def test_first_run_table_uses_molconf_metrics(first_run):
    from molconf.metrics import summarize

    refs = first_run.load_reference(first_run.REFERENCE["QM9 test (DFT)"], 4)
    mols, _ = first_run.run_rdkit(refs)[first_run.ETKDG_MMFF]
    row = first_run.score(refs, mols, 1.0)
    expected, _ = summarize(list(zip(refs, mols)))
    for key in (K.D_MAE, K.C_RMSD, K.STEREO_OK, "n_failed"):
        assert row[key] == pytest.approx(expected[key], nan_ok=True)
    assert row["mol_per_s"] == 4.0


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_make_run_is_quick_and_leaves_the_tree_unchanged():
    """The whole `make run` (install already done) in ≤ 5 minutes, writing nothing git sees."""
    installed = ROOT / ".venv" / ".installed"
    if not installed.is_file() or installed.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        pytest.skip("needs a current `make install` (the timing is of the job, not the install)")
    before = _git_status()
    start = time.perf_counter()
    proc = subprocess.run(["make", "run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=2 * MAKE_RUN_LIMIT_S, env={**os.environ, "MAKEFLAGS": ""})
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RDKit ETKDG + MMFF" in proc.stdout and "predicted.sdf" in proc.stdout
    assert seconds <= MAKE_RUN_LIMIT_S, f"make run took {seconds:.0f} s (load average {os.getloadavg()})"
    after = _git_status()
    # (in a working tree others edit at the same time, their edits during the run show up here too)
    assert after == before, f"git status changed: {sorted(set(after.splitlines()) ^ set(before.splitlines()))}"
