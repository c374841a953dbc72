"""The parts of the benchmark scripts that decide something (not their measurements)."""

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def model_benchmark():
    spec = importlib.util.spec_from_file_location("model_benchmark", BENCHMARKS / "model_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _run(root: Path, name: str, val_d_mae: list[str]) -> None:
    """A training run folder with the CSV logger's metrics (train rows without val values)."""
    folder = root / name / "csv" / "version_0"
    folder.mkdir(parents=True)
    rows = ["epoch,step,train/loss,val/d_mae"]
    for epoch, v in enumerate(val_d_mae):
        rows += [f"{epoch},{10 * epoch + 5},0.9,", f"{epoch},{10 * epoch + 9},,{v}"]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_shipped_drug_model_must_be_the_validation_choice(model_benchmark, tmp_path):
    spec = model_benchmark.SPECS["moses_xtb"]
    runs = {m.run: m for m in spec.models.values()}
    shipped_run = spec.models[spec.shipped].run
    other_run = next(r for r in runs if r != shipped_run)
    # the shipped model ends lower on validation (the other was better earlier: the last value counts)
    _run(tmp_path, shipped_run, ["0.70", "0.60", "0.55"])
    _run(tmp_path, other_run, ["0.65", "0.50", "0.56"])
    assert model_benchmark.final_val_d_mae(tmp_path / other_run) == pytest.approx(0.56)
    model_benchmark.check_shipped_choice(spec, spec.models, tmp_path)  # no complaint
    switched = dataclasses.replace(spec, shipped=next(k for k, m in spec.models.items() if m.run == other_run))
    with pytest.raises(SystemExit, match="validation now picks"):
        model_benchmark.check_shipped_choice(switched, switched.models, tmp_path)


def test_qm9_default_is_chosen_for_speed_not_validation(model_benchmark, tmp_path):
    spec = model_benchmark.SPECS["qm9"]
    assert not spec.shipped_on_validation
    model_benchmark.check_shipped_choice(spec, spec.models, tmp_path)  # reads no run at all


def test_missing_metrics_are_named(model_benchmark, tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        model_benchmark.final_val_d_mae(tmp_path / "never_trained")


def test_train_cpu_models_runs_jobs_side_by_side_and_names_failures(tmp_path):
    """JOBS=2: each run gets nproc/2 threads and its own log; a run that fails gets no
    FINISHED marker, the others do, and the script exits non-zero naming it."""
    import os
    import subprocess

    fake = tmp_path / "fake_molconf"  # stands in for `molconf fit`: logs its threads, fails on "bad"
    fake.write_text('#!/usr/bin/env bash\necho "threads=$OMP_NUM_THREADS $*"\n'
                    '[[ "$*" == *configs/bad.yaml* ]] && exit 3\nexit 0\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_cpu_models.sh"
    runs = tmp_path / "runs"
    env = dict(os.environ, MOLCONF=str(fake), JOBS="2", MODELS="first bad last", RUNS=str(runs))
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "bad: did not finish" in result.stdout and "first: did not finish" not in result.stdout
    assert (runs / "first" / "FINISHED").is_file() and (runs / "last" / "FINISHED").is_file()
    assert not (runs / "bad" / "FINISHED").exists()
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # what nproc counts
    assert f"threads={threads} fit --config configs/first.yaml" in (runs / "first.log").read_text()
    again = subprocess.run(["bash", str(script)], env=dict(env, MODELS="first last"), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "finished earlier" in (runs / "first.log").read_text()


def test_xtb_relax_summary_counts_each_start_against_etkdg_and_the_pairs():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("xtb_relax", BENCHMARKS / "xtb_relax.py")
        xr = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(xr)
    finally:
        sys.path.remove(str(BENCHMARKS))

    def ok(steps, hartree):
        return {"ok": True, "steps": steps, "converged": True, "seconds": 1.0, "energy_hartree": hartree}

    rows = []
    for i, (m, mc, r, rc) in enumerate([(20, 10, 22, 12), (30, 15, 25, 30), (24, 24, 24, 20)]):
        rows.append({"model_mmff": ok(m, -1.0), "model_corrected": ok(mc, -1.0 - 0.001 * i), "rdkit": ok(r, -1.0),
                     "rdkit_corrected": ok(rc, -1.0), "model_mmff_start_seconds": 0.1,
                     "model_corrected_start_seconds": 0.2, "rdkit_start_seconds": 0.1,
                     "rdkit_corrected_start_seconds": 0.2, "reference_energy_hartree": -1.0,
                     "model_corrected_unchanged": "bond graph changed (C1-C2)" if i == 2 else ""})
    rows.append({**rows[0], "rdkit": {"ok": False, "reason": "no starting geometry"}})  # not in comparisons
    s = xr.summarise(rows, tie_kcal=0.1)
    assert s["starts"] == ["model_mmff", "model_corrected", "rdkit", "rdkit_corrected"]
    assert ("model_corrected", "rdkit_corrected") in s["pairs"] and ("model_corrected", "rdkit") in s["pairs"]
    c = s["model_corrected_vs_rdkit"]
    assert (c["both_relaxed"], c["fewer_steps"], c["more_steps"], c["median_step_difference"]) == (3, 2, 0, -10)
    # -1.001 and -1.002 Eh are 0.63 and 1.26 kcal/mol below ETKDG + MMFF's -1.0: lower twice, same once
    assert (c["lower"], c["higher"], c["same_minimum"]) == (2, 0, 1)
    h = s["model_corrected_vs_rdkit_corrected"]
    assert (h["both_relaxed"], h["fewer_steps"], h["more_steps"]) == (4, 3, 1)  # the 4th row has both of these
    assert s["model_corrected"]["median_steps"] == 12.5 and s["rdkit"]["relaxed"] == 3
    s.update(source="test", model_name="m", precision="float32", protocol={"optimizer": "LBFGS", "fmax": 0.05,
             "max_steps": 500}, command="python benchmarks/xtb_relax.py", load_average_after=1.0, tie_kcal=0.1,
             correction="c.pt")
    md = xr.markdown(s, rows)
    assert "correction not applied 1 times (bond graph changed (C1-C2): 1)" in md and "`c.pt`" in md


@pytest.fixture
def anchors():
    spec = importlib.util.spec_from_file_location("ground_state_anchors", BENCHMARKS / "ground_state_anchors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the worker pool pickles run_pair by its module's name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_ground_state_anchors_holdout_draws_only_outside_the_anchors_own_molecules(anchors):
    anchor_ids = [i for i, _ in anchors.test_references(*anchors.ANCHORS)]
    assert len(anchor_ids) == anchors.ANCHORS[0] and anchor_ids == sorted(anchor_ids)
    assert [i for i, _ in anchors.test_references(*anchors.ANCHORS)] == anchor_ids  # the same molecules every run
    held = [i for i, _ in anchors.test_references(100, 1, frozenset(anchor_ids))]
    assert len(held) == 100 and not set(held) & set(anchor_ids)
    plain = {i for i, _ in anchors.test_references(100, 1)}
    assert plain & set(anchor_ids)  # without the exclusion a draw of 100 of 1,000 would overlap them


def test_ground_state_anchors_never_draw_the_reference_builds_candidates(anchors, monkeypatch):
    """The reference build drew ETKDG seed 42 (10 conformers): the anchors' candidates must not be
    that stream, nor RDKit's seed 0 (identical conformers) -- the data-set protocol row included; the
    energy-gap summary counts a lower minimum than the reference's as such."""
    from rdkit import Chem

    from molconf.ground_state import xtb

    assert anchors.CANDIDATE_SEED not in (xtb.XtbProtocol().embed_seed, 0)
    seen = []

    def build(smiles, protocol):
        seen.append(protocol)
        raise xtb.XtbError(smiles, "not run in this test", xtb.STAGE_EMBED)

    monkeypatch.setattr(xtb, "build_ground_state", build)
    pred, cpu = anchors.data_set_protocol(Chem.AddHs(Chem.MolFromSmiles("CCO")))
    assert pred is None and cpu >= 0
    assert seen == [dataclasses.replace(xtb.XtbProtocol(), embed_seed=anchors.CANDIDATE_SEED)]
    row = {"failed": False, "d_abs": 1.0, "d_sq": 1.0, "n_pairs": 4, "c_rmsd": 0.5, "stereo": 1.0, "cpu_s": 0.1}
    results = [{"index": i, "rows": {name: {**row, "gap_kcal": gap} for name in anchors.ROWS}}
               for i, gap in enumerate([-1.0, 0.05, 2.0, None])]
    [first, *_] = anchors.summarise(results)
    assert first["at_or_below_ref"] == 2 / 3 and first["below_ref"] == 1 / 3 and first["no_gap"] == 1
    assert first["d_mae"] == 0.25 and first["failed"] == 0 and first["n"] == 4


def _anchor_record(smiles: str, index: int) -> str:
    """An SDF record as the moses_xtb references carry it (index and GFN2-xTB energy)."""
    import io

    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    mol.SetProp("molconf_index", str(index))
    mol.SetProp("gfn2_energy_eV", "-100.0")
    buf = io.StringIO()
    with Chem.SDWriter(buf) as writer:
        writer.write(mol)
    return buf.getvalue()


def test_ground_state_anchors_resume_per_molecule_and_row(anchors, monkeypatch, tmp_path, capsys):
    """A rerun computes only missing (molecule, row) pairs; a new row adds lines for molecules
    already there (merged on read); a row whose optional modules are missing is skipped."""
    from rdkit import Chem

    records = [(i, _anchor_record(smiles, i)) for i, smiles in ((5, "CCO"), (9, "CC(=O)N"))]
    monkeypatch.setattr(anchors, "test_references", lambda n, seed, exclude=frozenset(): records[:n])
    monkeypatch.setattr(anchors, "_score", lambda ref, pred, e_ref, protocol: {
        "failed": False, "d_abs": 1.0, "d_sq": 1.0, "n_pairs": 4, "c_rmsd": 0.5, "stereo": 1.0, "gap_kcal": 0.0})

    def reversed_atoms(bare):  # a SMILES-built row: its conformer in another atom order
        from rdkit.Chem import AllChem

        mol = Chem.RenumberAtoms(bare, list(range(bare.GetNumAtoms()))[::-1])
        AllChem.EmbedMolecule(mol, randomSeed=1)
        return anchors._in_atom_order(mol, bare), 0.001

    monkeypatch.setattr(anchors, "ROWS", {"a": reversed_atoms})
    monkeypatch.setattr(anchors, "NEEDS", {"c": ["no_such_module_for_anchors"]})
    per_mol = tmp_path / anchors.PER_MOLECULE

    def run(*rows):
        anchors.main(["--n", "2", "--workers", "1", "--out", str(tmp_path), *(["--rows", *rows] if rows else [])])
        return per_mol.read_text().splitlines()

    assert len(run()) == 2
    assert len(run("a")) == 2 and "0 pairs to run" in capsys.readouterr().out
    anchors.ROWS.update({"b": reversed_atoms, "c": reversed_atoms})
    lines = run()
    assert len(lines) == 4 and "skipping 'c'" in capsys.readouterr().out
    merged = anchors.read_results(per_mol)
    assert sorted(merged) == [5, 9] and all(sorted(r["rows"]) == ["a", "b"] for r in merged.values())
    table = json.loads((tmp_path / "ground_state_anchors.json").read_text())["table"]
    assert [r["method"] for r in table] == ["a", "b"]
    anchors.ROWS["d"] = reversed_atoms  # a partial row: the table adds the molecules every row ran on
    assert len(run("d", "--limit", "1")) == 5
    summary = json.loads((tmp_path / "ground_state_anchors.json").read_text())
    assert [r["n"] for r in summary["table"]] == [2, 2, 1]
    assert [r["n"] for r in summary["table_common_molecules"]] == [1, 1, 1]
    # --redo runs a changed row again: its new lines replace the stored ones on read, others stay
    monkeypatch.setattr(anchors, "_score", lambda ref, pred, e_ref, protocol: {
        "failed": False, "d_abs": 1.0, "d_sq": 1.0, "n_pairs": 4, "c_rmsd": 0.25, "stereo": 1.0, "gap_kcal": 0.0})
    assert len(run("a", "--redo")) == 7 and "2 pairs to run" in capsys.readouterr().out
    table = {r["method"]: r for r in json.loads((tmp_path / "ground_state_anchors.json").read_text())["table"]}
    assert table["a"]["c_rmsd"] == 0.25 and table["b"]["c_rmsd"] == 0.5
    with pytest.raises(SystemExit):
        run("a", "--redo", "--rescore")
    bare = Chem.AddHs(Chem.MolFromSmiles("CC(=O)N"))
    pred, _ = reversed_atoms(bare)
    assert [a.GetAtomicNum() for a in pred.GetAtoms()] == [a.GetAtomicNum() for a in bare.GetAtoms()]
    positions = pred.GetConformer().GetPositions()  # coordinates moved with their atoms: bonds stay short
    assert all(np.linalg.norm(positions[b.GetBeginAtomIdx()] - positions[b.GetEndAtomIdx()]) < 1.6
               for b in bare.GetBonds())


def test_ground_state_anchors_score_another_reference_file_molecule_by_molecule(anchors, monkeypatch, tmp_path):
    """``--references`` scores every record of a build-xtb data set (file or folder), by its own ids,
    and says so in the table; a missing file is named."""
    import gzip

    records = [_anchor_record(smiles, i) for i, smiles in ((0, "CCO"), (3, "CC(=O)N"), (7, "c1ccccc1O"))]
    folder = tmp_path / "drugs"
    folder.mkdir()
    with gzip.open(folder / "molecules.sdf.gz", "wt") as fh:
        fh.write("".join(records))
    assert [i for i, _ in anchors.file_references(folder)] == [0, 3, 7]
    assert anchors.file_references(folder / "molecules.sdf.gz") == anchors.file_references(folder)
    monkeypatch.setattr(anchors, "test_references", lambda *a, **k: pytest.fail("drew the moses_xtb test split"))
    monkeypatch.setattr(anchors, "_score", lambda ref, pred, e_ref, protocol: {
        "failed": False, "d_abs": 1.0, "d_sq": 1.0, "n_pairs": 4, "c_rmsd": 0.5, "stereo": 1.0, "gap_kcal": 0.0})
    monkeypatch.setattr(anchors, "ROWS", {"a": lambda bare: (None, 0.0)})
    out = tmp_path / "out"
    anchors.main(["--references", str(folder), "--workers", "1", "--out", str(out)])
    assert sorted(anchors.read_results(out / anchors.PER_MOLECULE)) == [0, 3, 7]
    text = (out / "ground_state_anchors.md").read_text()
    assert f"every molecule of `{folder}`" in text and "3 molecules" in text
    with pytest.raises(SystemExit, match="no such file"):
        anchors.main(["--references", str(tmp_path / "none"), "--workers", "1", "--out", str(out)])


def test_ground_state_anchors_rescore_adds_mirror_rmsd_and_keeps_gaps(anchors, monkeypatch, tmp_path, capsys):
    """--rescore reruns stored pairs that lack the mirror-aware C-RMSD: the stored gap and CPU time
    stay, a deterministic row reproduces its stored C-RMSD (delta 0), a row that returns another
    conformer on the rerun is counted as moved; a second --rescore has nothing to do."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    records = [(i, _anchor_record(smiles, i)) for i, smiles in ((5, "CCCCO"), (9, "CC(=O)NCC"))]
    monkeypatch.setattr(anchors, "test_references", lambda n, seed, exclude=frozenset(): records[:n])
    real_geometry = anchors._geometry

    def old_score(ref, pred, e_ref, protocol):  # what runs before the mirror metric stored
        row = real_geometry(ref, pred)
        return {"failed": False, **{k: v for k, v in row.items() if k not in ("c_rmsd_mirror", "achiral")},
                "gap_kcal": 0.7}

    def seeded(bare):
        mol = Chem.Mol(bare)
        AllChem.EmbedMolecule(mol, randomSeed=3)
        return mol, 0.01

    def another_each_time(bare):
        mol = Chem.Mol(bare)
        AllChem.EmbedMolecule(mol, randomSeed=1 + int.from_bytes(os.urandom(3), "big"))  # fork-proof
        return mol, 0.01

    monkeypatch.setattr(anchors, "ROWS", {"seeded": seeded, "moving": another_each_time})
    monkeypatch.setattr(anchors, "_score", old_score)
    per_mol = tmp_path / anchors.PER_MOLECULE
    args = ["--n", "2", "--workers", "1", "--out", str(tmp_path)]
    anchors.main(args)
    assert all("c_rmsd_mirror" not in e for r in anchors.read_results(per_mol).values() for e in r["rows"].values())
    anchors.main([*args, "--rescore"])
    assert "4 pairs to rescore" in capsys.readouterr().out
    merged = anchors.read_results(per_mol)
    for r in merged.values():
        seeded_row, moving_row = r["rows"]["seeded"], r["rows"]["moving"]
        assert seeded_row["rescore_c_rmsd_delta"] == pytest.approx(0.0, abs=1e-9)
        assert seeded_row["gap_kcal"] == 0.7 and seeded_row["cpu_s"] == pytest.approx(0.01, abs=0.5)
        assert seeded_row["achiral"] and seeded_row["c_rmsd_mirror"] <= seeded_row["c_rmsd"] + 1e-9
        assert abs(moving_row["rescore_c_rmsd_delta"]) > 1e-3
    table = {r["method"]: r for r in json.loads((tmp_path / "ground_state_anchors.json").read_text())["table"]}
    assert table["seeded"]["n_mirror"] == 2 and table["seeded"]["rescored_moved"] == 0
    assert table["moving"]["rescored_moved"] == 2
    assert "C-RMSD up to mirror" in (tmp_path / "ground_state_anchors.md").read_text()
    anchors.main([*args, "--rescore"])
    assert "0 pairs to rescore" in capsys.readouterr().out


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reachability_takes_each_molecules_lowest_minimum_and_skips_unscored_rows(tmp_path):
    reach = _load("ground_state_reachability")
    lines = [{"index": 1, "rows": {"a": {"failed": False, "gap_kcal": 0.0, "c_rmsd": 0.4, "c_rmsd_mirror": 0.1}}},
             {"index": 1, "rows": {"b": {"failed": False, "gap_kcal": -2.0, "c_rmsd": 1.5, "c_rmsd_mirror": 1.2}}},
             {"index": 2, "rows": {"a": {"failed": False, "gap_kcal": 3.0, "c_rmsd": 1.0},
                                   "b": {"failed": True}}},
             {"index": 3, "rows": {"a": {"failed": False, "gap_kcal": None, "c_rmsd": 0.1}}}]
    (tmp_path / "ground_state_anchors_per_molecule.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    per_mol = reach.read(tmp_path / "ground_state_anchors_per_molecule.jsonl")
    best = sorted(reach.lowest_known(per_mol))
    assert [(g, c, name) for g, c, _, name in best] == [(-2.0, 1.5, "b"), (3.0, 1.0, "a")]
    assert best[0][2] == 1.2 and np.isnan(best[1][2])  # the mirror value where stored, NaN where not
    reach.main(["--results", str(tmp_path)])
    text = (tmp_path / "ground_state_reachability.md").read_text()
    assert "| a | 2 | 0.700 | 0% / – | 50% / 0.400 (0.100) | 50% / 1.000 |" in text  # no mirror mean over a gap
    assert "| b | 1 | 1.500 (1.200) | 100% / 1.500 (1.200) | 0% / – | 0% / – |" in text
    # molecule 2's only scored row has no mirror value: the mirror-scored lowest minimum skips it
    assert "| **lowest known minimum among rows scored up to mirror** | 1 | 1.500 (1.200) |" in text
    assert "For 1 of 2 molecules (50%)" in text and "C-RMSD 1.250" in text


def test_seed_study_pairs_relations_by_seed_and_reads_only_finished_runs(tmp_path):
    study = _load("seed_study")
    for name in ("rebind_s0", "rebind_s1", "gtmgc_s0", "gtmgc_s1", "gtmgc_s2", "rebindpe60_s0", "notes"):
        (tmp_path / name).mkdir()
    for name in ("rebind_s0", "rebind_s1", "gtmgc_s0", "gtmgc_s1", "rebindpe60_s0"):
        (tmp_path / name / "FINISHED").touch()
    runs = study.runs_in(tmp_path)
    assert sorted(runs) == [("gtmgc", 0), ("gtmgc", 1), ("rebind", 0), ("rebind", 1),
                            ("rebindpe60", 0)]  # gtmgc_s2 unfinished

    def r(v):
        return {m: v for m in study.METRICS}

    results = {"rebind_s0": {"raw network": r(1.0), "predict": r(1.0)},
               "rebind_s1": {"raw network": r(3.0), "predict": r(3.0)},
               "gtmgc_s0": {"raw network": r(0.5), "predict": r(0.5)},
               "gtmgc_s1": {"raw network": r(0.5), "predict": r(0.5)}}
    text = "\n".join(study.summarise(results))
    assert "| **rebind, mean ± sd of 2 seeds** | 2.0000 ± 1.4142 |" in text
    assert "| **rebind − gtmgc, paired by seed (2)** | 1.5000 ± 1.4142 |" in text
    assert "gtmgcdetached, paired" not in text  # no such runs: no such row


def test_seed_study_script_trains_each_relation_and_seed_once(tmp_path):
    import os
    import subprocess

    fake = tmp_path / "fake_molconf"  # stands in for `molconf fit`: logs its arguments
    fake.write_text('#!/usr/bin/env bash\necho "threads=$OMP_NUM_THREADS $*"\n')
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    env = dict(os.environ, MOLCONF=str(fake), RUNS=str(runs), SEEDS="0 1", STUDIES="qm9 moses_xtb",
               RELATIONS="rebind gtmgc gtmgcdetached")
    script = BENCHMARKS / "seed_study.sh"
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60).returncode == 0
    for relation in ("rebind", "gtmgc", "gtmgcdetached"):
        for seed in (0, 1):
            qm9 = (runs / "qm9" / f"{relation}_s{seed}.log").read_text()
            moses = (runs / "moses_xtb" / f"{relation}_s{seed}.log").read_text()
            assert (runs / "qm9" / f"{relation}_s{seed}" / "FINISHED").is_file()
            assert qm9.startswith("threads=1 fit --config configs/rebind_qm9_small_cpu.yaml")
            assert f"--seed_everything {seed}" in qm9 and "configs/seed_study_qm9.yaml" in qm9
            assert ("configs/gtmgc_qm9_small_cpu.yaml" in qm9) == (relation != "rebind")
            assert ("configs/gtmgc_detached.yaml" in qm9) == ("configs/gtmgc_detached.yaml" in moses) \
                == (relation == "gtmgcdetached")
            base = "rebind" if relation == "rebind" else "gtmgc"
            assert f"--config configs/{base}_moses_xtb_cpu.yaml --config configs/seed_study_moses_xtb.yaml" in moses
            assert f"init_from {runs}/qm9/{relation}_s{seed}/checkpoints/last.ckpt" in moses
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.count("finished earlier") == 12  # nothing trained twice
    bf16 = subprocess.run(["bash", str(script)], env=dict(env, STUDIES="qm9", RELATIONS="rebindbf16", SEEDS="0"),
                          capture_output=True, text=True, timeout=60)
    log = (runs / "qm9" / "rebindbf16_s0.log").read_text()
    assert bf16.returncode == 0 and "--trainer.precision bf16-mixed" in log and "gtmgc" not in log
    pe = subprocess.run(["bash", str(script)], env=dict(env, STUDIES="moses_xtb", RELATIONS="rebindpe60", SEEDS="1"),
                        capture_output=True, text=True, timeout=60)
    log = (runs / "moses_xtb" / "rebindpe60_s1.log").read_text()
    assert pe.returncode == 0 and f"init_from {runs}/qm9/rebind_s1/checkpoints/last.ckpt" in log
    assert "--model.init_args.model.init_args.pe_dim 60 --data.init_args.pe_dim 60" in log
    bad = subprocess.run(["bash", str(script)], env=dict(env, STUDIES="geom"), capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "unknown study geom" in bad.stderr


def test_paired_differences_are_b_minus_a_per_molecule_with_an_interval(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it reads the anchors' file with their reader
    paired = _load("ground_state_paired")
    a, b = paired.PAIRS[0]
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        ra = {"failed": False, "c_rmsd": 1.0 + rng.random(), "c_rmsd_mirror": 0.8, "d_abs": 10.0, "n_pairs": 20,
              "gap_kcal": 0.0, "cpu_s": 0.5}
        rb = {**ra, "c_rmsd": ra["c_rmsd"] - 0.1, "gap_kcal": -1.0 if i % 4 == 0 else 0.0, "cpu_s": 0.4}
        lines.append({"index": i, "rows": {a: ra}})
        lines.append({"index": i, "rows": {b: rb}})
    lines.append({"index": 99, "rows": {a: {"failed": True}, b: {**lines[1]["rows"][b], "c_rmsd": 50.0}}})
    (tmp_path / "ground_state_anchors_per_molecule.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    stats = paired.paired(paired.read_results(tmp_path / "ground_state_anchors_per_molecule.jsonl"), a, b)
    mean, low, high, n = stats["C-RMSD (Å)"]
    assert n == 40 and mean == pytest.approx(-0.1) and low == pytest.approx(-0.1) and high == pytest.approx(-0.1)
    mean, low, high, _ = stats["gap (kcal/mol)"]
    assert mean == pytest.approx(-0.25) and low < mean < high < 0  # 10 of 40 found a 1 kcal/mol lower minimum
    assert stats["≤ ref"][0] == 0 and stats["CPU (ms)"][0] == pytest.approx(-100)
    paired.main(["--results", str(tmp_path)])
    text = (tmp_path / "ground_state_paired.md").read_text()
    assert f"**B** {b}" in text and "(40 molecules)" in text and "| -0.100 [-0.100, -0.100] |" in text


def test_rows_by_size_bin_molecules_of_another_reference_set(tmp_path):
    """``ground_state_by_size.py --references`` counts heavy atoms in the set the rows were scored
    against; results for a molecule the set lacks are refused, not binned by a wrong size."""
    import gzip

    spec = importlib.util.spec_from_file_location("ground_state_by_size", BENCHMARKS / "ground_state_by_size.py")
    by_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(by_size)
    refs = tmp_path / "refs"
    refs.mkdir()
    with gzip.open(refs / "molecules.sdf.gz", "wt") as fh:  # 3 and 7 heavy atoms
        fh.write(_anchor_record("CCO", 0) + _anchor_record("c1ccccc1O", 1))
    entry = {"failed": False, "c_rmsd": 0.5, "gap_kcal": 0.0}
    lines = [{"index": 0, "rows": {"a": entry}}, {"index": 1, "rows": {"a": {**entry, "c_rmsd": 1.5, "gap_kcal": 2.0}}}]
    results = tmp_path / "results"
    results.mkdir()
    (results / "ground_state_anchors_per_molecule.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    by_size.main(["--results", str(results), "--references", str(refs), "--bins", "0", "5", "10"])
    table = (results / "ground_state_by_size.md").read_text()
    assert "| a | 0–4 | 1 | 0.500 | 100% |" in table and "| a | 5–9 | 1 | 1.500 | 0% |" in table
    (results / "ground_state_anchors_per_molecule.jsonl").write_text(json.dumps({"index": 9, "rows": {"a": entry}}))
    with pytest.raises(SystemExit, match="lacks molecules"):
        by_size.main(["--results", str(results), "--references", str(refs)])
