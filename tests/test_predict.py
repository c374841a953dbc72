"""The prediction API and the `molconf predict` command."""

import os
import subprocess
import sys
import warnings

import ase.io
import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.models import ConformerTransformer, load_model, save_model
from molconf.prediction import choose_model, coverage_problem, predict, resolve_model, resolve_models, to_ase, write_sdf, write_xyz
from molconf.stereo import (StereoSpec, _turn_double_bond, _swap_substituents, enforce_stereo, graph_stereo_labels,
                            stereo_spec)


def _save_tiny(folder, name: str, relation: str, seed: int, elements: list[int], max_atoms: int,
               max_heavy_atoms: int | None = None):
    """An untrained one-layer network saved with a model card's coverage (elements, size)."""
    torch.manual_seed(seed)
    net = ConformerTransformer(relation, d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                               n_decoder_layers=1, pe_dim=16)
    meta = {"name": name, "elements": elements, "max_atoms": max_atoms}
    if max_heavy_atoms is not None:
        meta["max_heavy_atoms"] = max_heavy_atoms
    return save_model(net, folder / f"{name}.pt", meta)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Stands in for the QM9 model: ≤ 29 atoms with H, ≤ 9 heavy atoms."""
    return _save_tiny(tmp_path_factory.mktemp("model"), "tiny", "rebind", 0, [1, 6, 7, 8, 9], 29, 9)


def _quiet_predict(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict(*args, **kw)


def test_predicts_mols_with_h_in_input_order(tiny_model):
    inputs = ["CCO", Chem.MolFromSmiles("c1ccccc1O"), "C#N", "CC(=O)N"]
    mols = predict(inputs, model=tiny_model)
    assert len(mols) == 4
    for inp, mol in zip(inputs, mols):
        ref = Chem.AddHs(Chem.MolFromSmiles(inp) if isinstance(inp, str) else inp)
        assert mol.GetNumConformers() == 1 and mol.GetNumAtoms() == ref.GetNumAtoms()
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == Chem.MolToSmiles(Chem.RemoveHs(ref))
        assert np.isfinite(mol.GetConformer().GetPositions()).all()
    [single] = predict("CCO", model=tiny_model)
    assert np.allclose(single.GetConformer().GetPositions(), mols[0].GetConformer().GetPositions())


def test_deterministic_and_independent_of_batching(tiny_model):
    smiles = ["CCO", "CCCCO", "c1ccncc1", "OCC(N)C=O", "C"]
    a = predict(smiles, model=tiny_model, batch_size=2)
    b = predict(list(reversed(smiles)), model=tiny_model, batch_size=64)[::-1]
    for x, y in zip(a, b):
        assert np.allclose(x.GetConformer().GetPositions(), y.GetConformer().GetPositions(), atol=1e-5)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("C1CC", "invalid SMILES"),
        ("", "empty input"),
        ("CCCl", "element(s) Cl not supported"),
        ("[CH2]C", "radical"),
        ("[CH2]C.[Na+]", "radical"),  # charged inputs and salts are predicted (tests/test_standardize.py)
        ("C" * 30, "far beyond"),
        (None, "no molecule"),
        (42, "expected a SMILES string or an RDKit Mol"),
    ],
)
def test_bad_input_is_named_and_good_molecules_survive(tiny_model, bad, reason):
    with pytest.warns(UserWarning, match=r"1 of 3 inputs not predicted:\n  input #1 .*" + reason.replace("(", r"\(").replace(")", r"\)")):
        mols, report = predict(["CCO", bad, "CCN"], model=tiny_model, return_report=True)
    assert mols[0] is not None and mols[1] is None and mols[2] is not None
    [failure] = report.failures
    assert failure.index == 1 and reason in failure.reason


def test_zwitterion_and_duplicates(tiny_model):
    mols, report = _quiet_predict(["NCC(=O)O", "C[NH3+].[O-]C=O", "CCO", "OCC"], model=tiny_model,
                                  return_report=True)
    assert mols[0] is not None and not report.failures
    # a salt keeps its largest fragment, with its own charge (tests/test_standardize.py)
    assert Chem.MolToSmiles(Chem.RemoveHs(mols[1])) == "C[NH3+]" and "stripped O=C[O-]" in report.notes[1][0]
    assert mols[3] is not None and "duplicate of input #2" in report.notes[3][0]
    assert np.allclose(mols[2].GetConformer().GetPositions()[[0, 1, 2]],
                       mols[2].GetConformer().GetPositions()[[0, 1, 2]])


def test_corrupted_or_missing_checkpoint(tmp_path, tiny_model):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_model.read_bytes()[:200])
    with pytest.raises(ValueError, match="broken.pt.*not a readable model file"):
        predict("CCO", model=broken)
    with pytest.raises(FileNotFoundError, match="not a shipped model"):
        predict("CCO", model=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"something": 1}, junk)
    with pytest.raises(ValueError, match="no model configuration"):
        predict("CCO", model=junk)


def test_empty_input_list(tiny_model):
    assert predict([], model=tiny_model) == []


def _embedded(smiles, seed=7):
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(m, randomSeed=seed) == 0
    return m


def test_stereo_repair_reflection_swap_and_double_bond():
    smiles = "C[C@H](N)[C@@H](O)C/C=C/C"
    target = stereo_spec(Chem.AddHs(Chem.MolFromSmiles(smiles)))
    assert target.keys() == ["atom 1", "atom 3", "bond 6-7"]
    assert graph_stereo_labels(Chem.AddHs(Chem.MolFromSmiles(smiles))) == {"atom 1": "S", "atom 3": "S", "bond 6-7": "E"}
    mirror = _embedded(smiles)
    pos = mirror.GetConformer().GetPositions() * [-1, 1, 1]
    for i, p in enumerate(pos):
        mirror.GetConformer().SetAtomPosition(i, p.tolist())
    report = enforce_stereo(mirror, target)
    assert report.consistent and report.fixed_by == ["reflection"]
    mixed = _embedded(smiles)
    d_before = np.linalg.norm(mixed.GetConformer().GetPositions()[6] - mixed.GetConformer().GetPositions()[7])
    _swap_substituents(mixed, 1)
    _turn_double_bond(mixed, 6, 7, np.pi)
    assert target.mismatches(mixed.GetConformer().GetPositions()) == ["atom 1", "bond 6-7"]
    report = enforce_stereo(mixed, target)
    assert report.consistent and len(report.fixed_by) == 2
    d_after = np.linalg.norm(mixed.GetConformer().GetPositions()[6] - mixed.GetConformer().GetPositions()[7])
    assert d_after == pytest.approx(d_before)  # rigid moves keep bond lengths


def test_stereo_left_unfixable_is_reported():
    # the spiro carbon (atom 6) has four ring bonds: no swap and no umbrella move exist; atom 1
    # is right, so the mirror image (which would invert it) is not tried either
    m = _embedded("FC(Cl)(Br)C1CC12CC2")
    pos = m.GetConformer().GetPositions()

    def current(c):
        nbrs = [b.GetOtherAtomIdx(c) for b in m.GetAtomWithIdx(c).GetBonds()]
        v = pos[nbrs[:3]] - pos[c]
        return nbrs, np.sign(np.dot(v[0], np.cross(v[1], v[2])))

    (n1, s1), (n6, s6) = current(1), current(6)
    spec = StereoSpec(np.array([1, 6]), np.array([n1[:3], n6[:3]]), np.array([s1, -s6]), np.zeros((0, 4), int),
                      np.zeros(0, bool))
    report = enforce_stereo(m, spec)
    assert not report.consistent and report.remaining == ["atom 6: not as specified"] and report.named_by_cip
    assert np.allclose(m.GetConformer().GetPositions(), pos)  # failed moves were undone
    deferred = enforce_stereo(m, spec, name_remaining=False)  # predict names it after relaxing
    assert deferred.remaining == ["atom 6"] and not deferred.named_by_cip



def test_stereo_left_after_relaxing_is_named_by_cip(monkeypatch):
    """With relaxation the leftover is named once, after the last move, and as without it
    (CIP labels, not the parity check's bare keys)."""
    import molconf.prediction as P
    import molconf.stereo as S

    smiles = "C[C@H](O)[C@@H](N)[C@H](F)CC"
    graph = Chem.AddHs(Chem.MolFromSmiles(smiles))
    m = _embedded(smiles)
    assert _swap_substituents(m, 5)  # one of three centres inverted: no reflection is tried
    coords = m.GetConformer().GetPositions()
    monkeypatch.setattr(S, "_local_moves", lambda mol, spec, key: iter(()))  # and nothing repairs it
    monkeypatch.setattr(P, "relax", lambda mol, method, max_iters=2000: None)  # relaxing moves nothing
    monkeypatch.setattr(P, "stereo_fallback", lambda mol, spec: None)  # and no fallback finds one
    loaded = type("Loaded", (), {"name": "test"})()
    named = {}
    for relax_with in (None, "mmff"):
        report = P.PredictionReport(model="test", precision="float32")
        P._finish(graph, coords, 0, loaded, relax_with, True, report)
        named[relax_with] = report.stereo[0].remaining
        assert any("stereo not matched" in n for n in report.notes[0])
    assert named[None] == named["mmff"] == S.cip_mismatches(stereo_spec(graph), m)
    assert len(named[None]) == 1 and named[None][0].startswith("atom 5: ")

def test_predict_repairs_stereo_of_chiral_input(tiny_model):
    mols, report = predict(["C[C@H](N)O", "C[C@@H](N)O"], model=tiny_model, return_report=True)
    # the report says, per molecule, whether the input's stereo is matched
    for i in (0, 1):
        assert report.stereo[i].checked == 1
        if not report.stereo[i].consistent:
            assert any("stereo not matched" in n for n in report.notes[i])


def test_relax_changes_geometry_and_keeps_atoms(tiny_model):
    plain = predict("CCO", model=tiny_model)[0]
    for method in ("mmff", "uff"):
        relaxed = predict("CCO", model=tiny_model, relax_with=method)[0]
        d = relaxed.GetConformer().GetPositions()
        assert relaxed.GetNumAtoms() == plain.GetNumAtoms()
        assert not np.allclose(d, plain.GetConformer().GetPositions())
        # C–O bond length of ethanol after a force field is ~1.42 Å
        assert 1.35 < np.linalg.norm(d[1] - d[2]) < 1.48
    with pytest.raises(ValueError, match="relax_with"):
        predict("CCO", model=tiny_model, relax_with="xtb-maybe")


def test_threads_are_restored(tiny_model):
    before = torch.get_num_threads()
    predict("CCO", model=tiny_model, num_threads=1)
    assert torch.get_num_threads() == before


def test_writers_round_trip(tmp_path, tiny_model):
    mols = _quiet_predict(["CCO", "bad", "c1ccccc1"], model=tiny_model)
    assert write_sdf(mols, tmp_path / "o.sdf") == 2
    back = [m for m in Chem.SDMolSupplier(str(tmp_path / "o.sdf"), removeHs=False)]
    assert [m.GetNumAtoms() for m in back] == [9, 12]
    assert np.allclose(back[0].GetConformer().GetPositions(), mols[0].GetConformer().GetPositions(), atol=1e-4)
    assert write_xyz(mols, tmp_path / "o.xyz") == 2
    frames = ase.io.read(tmp_path / "o.xyz", index=":")
    assert [len(f) for f in frames] == [9, 12] and frames[1].info["smiles"] == "c1ccccc1"
    atoms = to_ase(mols[0])
    assert atoms.get_chemical_formula() == "C2H6O"


def test_load_model_from_lightning_checkpoint(tmp_path, qm9_small):
    import lightning as L

    from molconf.lightning import ConformerDataModule, ConformerModule

    net = ConformerTransformer("gtmgc", d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1,
                               n_decoder_layers=1, pe_dim=16)
    module = ConformerModule(net, lr=1e-3)
    t = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp_path,
                  num_sanity_val_steps=0, limit_val_batches=0)
    t.fit(module, ConformerDataModule(batch_size=16, pe_dim=16, source_limit=300))
    t.save_checkpoint(tmp_path / "m.ckpt")
    loaded, meta = load_model(tmp_path / "m.ckpt")
    assert meta["global_step"] == 2 and loaded.config == net.config
    a = predict("CCO", model=net.eval())[0].GetConformer().GetPositions()
    b = predict("CCO", model=tmp_path / "m.ckpt")[0].GetConformer().GetPositions()
    assert np.allclose(a, b, atol=1e-5)


def _cli(args, stdin=None, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "molconf.cli", "predict", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_cli_inputs_outputs_and_exit_codes(tmp_path, tiny_model):
    m = str(tiny_model)
    r = _cli(["CCO", "nonsense(", "--model", m])
    assert r.returncode == 0 and r.stdout.count("$$$$") == 1
    assert "failed: argument 2 (nonsense(): invalid SMILES" in r.stderr and "1 of 2 molecules predicted" in r.stderr
    (tmp_path / "in.smi").write_text("CCO ethanol\n# comment\n\nc1ccccc1 benzene\nxx\n")
    r = _cli(["-i", str(tmp_path / "in.smi"), "-o", str(tmp_path / "o.xyz"), "--model", m])
    assert r.returncode == 0 and len(ase.io.read(tmp_path / "o.xyz", index=":")) == 2
    assert "failed: in.smi line 5: invalid SMILES" in r.stderr  # physical line: comment and blank counted
    (tmp_path / "in.csv").write_text("name,smiles\nwater,O\n\nbad,xx\n")
    r = _cli(["-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.sdf"), "--model", m])
    assert r.returncode == 0 and "failed: in.csv line 4 (bad): invalid SMILES" in r.stderr
    [water] = list(Chem.SDMolSupplier(str(tmp_path / "o.sdf"), removeHs=False))
    assert water.GetProp("_Name") == "water"
    r = _cli(["-i", str(tmp_path / "o.sdf"), "--model", m])  # SDF in
    assert r.returncode == 0 and r.stdout.count("$$$$") == 1
    r = _cli(["-i", "-", "--model", m], stdin="CCN\nCCC\n")
    assert r.returncode == 0 and r.stdout.count("$$$$") == 2
    r = _cli(["xx", "--model", m])
    assert r.returncode == 1 and "0 of 1 molecules predicted" in r.stderr
    (tmp_path / "empty.smi").write_text("")
    r = _cli(["-i", str(tmp_path / "empty.smi"), "--model", m])
    assert r.returncode == 2 and "no input molecules" in r.stderr


def test_cli_unusable_calls_are_one_line_with_exit_code_2(tmp_path, tiny_model):
    """A missing file, an unknown or damaged model, an unknown output suffix, a CSV without a
    smiles header: one line on stderr, no traceback, exit code 2, nothing written."""
    m = str(tiny_model)
    (tmp_path / "junk.pt").write_bytes(os.urandom(2000))
    (tmp_path / "noheader.csv").write_text("CCO,ethanol\nCCC,propane\n")
    calls = {
        "input file": ["-i", str(tmp_path / "missing.smi"), "--model", m],
        "not a shipped model": ["CCO", "--model", "no_such_model"],
        "not a readable model file": ["CCO", "--model", str(tmp_path / "junk.pt")],
        "unknown format '.pdb'": ["CCO", "--model", m, "-o", str(tmp_path / "out.pdb")],
        "'smiles' column": ["-i", str(tmp_path / "noheader.csv"), "--model", m],
        "unknown format '.mol2'": ["-i", str(tmp_path / "in.mol2"), "--model", m],
    }
    (tmp_path / "in.mol2").write_text("")
    for expected, argv in calls.items():
        r = _cli(argv)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (argv, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("molconf predict: error: ") and expected in lines[0], r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out.pdb").exists()
    r = _cli(["CCO", "--model", m, "-o", str(tmp_path / "out.pdb"), "--format", "sdf"])  # an explicit format is obeyed
    assert r.returncode == 0 and "$$$$" in (tmp_path / "out.pdb").read_text()


def test_default_model_ships_and_predicts_offline():
    from molconf.prediction import available_models

    assert "qm9_rebind" in available_models()
    mols, report = predict(["CCO", "c1ccccc1"], return_report=True)
    assert report.model == "qm9_rebind" and all(m is not None for m in mols)
    r = subprocess.run([sys.executable, "-m", "molconf.cli", "predict", "CCO"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert r.returncode == 0 and "$$$$" in r.stdout


def _distances(mol):
    pos = mol.GetConformer().GetPositions()
    return np.linalg.norm(pos[:, None] - pos[None], axis=-1)


def test_bfloat16_matches_float32_on_real_molecules(qm9_small):
    """The bf16 fast path against the float32 reference, default model, 120 QM9 molecules."""
    from molconf.metrics import summarize

    refs = [qm9_small.mol(i) for i in range(0, 300, 5)] + [qm9_small.mol(i) for i in range(1, 300, 5)]
    inputs = [Chem.Mol(m) for m in refs]
    for m in inputs:
        m.RemoveAllConformers()
    # the network's arithmetic only: no stereo or bond-length repair, whose thresholds can act on
    # one output and not the other
    fp32, r32 = predict(inputs, precision="float32", return_report=True, fix_stereo=False, repair_bonds=False)
    bf16, r16 = predict(inputs, precision="bfloat16", return_report=True, fix_stereo=False, repair_bonds=False)
    assert (r32.precision, r16.precision) == ("float32", "bfloat16")
    gaps = [np.abs(_distances(a) - _distances(b)).mean() for a, b in zip(fp32, bf16)]
    assert np.median(gaps) < 0.02 and max(gaps) < 0.1  # Å, mean |ΔD| per molecule
    d32 = summarize(list(zip(refs, fp32)))[0]["d_mae"]
    d16 = summarize(list(zip(refs, bf16)))[0]["d_mae"]
    assert abs(d16 - d32) < 0.01 * d32


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_results_are_independent_of_batching(precision):
    from molconf.prediction import native_bf16

    smiles = ["CCO", "CCCCO", "c1ccncc1", "OCC(N)C=O", "C", "CC(=O)Nc1ccc(O)cc1"]
    a = predict(smiles, precision=precision, batch_size=64)
    b = [predict(s, precision=precision)[0] for s in smiles]
    # native bf16 kernels round per element, so a molecule's result does not depend on its
    # batch; where bf16 is emulated (never chosen by "auto") the kernels differ with the
    # batch shape and results move by up to ~0.01 Å
    atol = 1e-4 if precision == "float32" or native_bf16() else 0.05
    for x, y in zip(a, b):
        assert np.allclose(x.GetConformer().GetPositions(), y.GetConformer().GetPositions(), atol=atol)


def test_precision_auto_follows_the_cpu_and_bad_values_are_refused(tiny_model):
    from molconf.prediction import native_bf16

    _, report = predict("CCO", model=tiny_model, return_report=True)
    assert report.precision == ("bfloat16" if native_bf16() else "float32")
    with pytest.raises(ValueError, match="precision"):
        predict("CCO", model=tiny_model, precision="int8")


def test_relax_xtb_lowers_the_gfn2_energy_and_notes_steps(tmp_path, tiny_model):
    pytest.importorskip("tblite")
    from molconf.ground_state.xtb import gfn2_energy

    [raw] = predict("CCO")
    [relaxed], report = predict("CCO", relax_with="xtb", return_report=True)
    assert relaxed.GetNumAtoms() == raw.GetNumAtoms() == 9
    [mmff] = predict("CCO", relax_with="mmff")
    assert gfn2_energy(relaxed) < min(gfn2_energy(raw), gfn2_energy(mmff)) - 1e-3
    [note] = report.notes[0]
    assert note.startswith("GFN2-xTB: converged in ") and " steps, E = " in note
    assert note.endswith("eV vs the MMFF94 + GFN2-correction geometry")
    assert int(note.split("converged in ")[1].split()[0]) >= 1
    # the command line accepts it too (whatever the tiny model's geometry, a note and an SDF come back)
    from molconf.predict_cli import main as predict_main

    assert predict_main(["CCO", "--model", str(tiny_model), "--relax", "xtb", "-o", str(tmp_path / "o.sdf")]) == 0
    assert (tmp_path / "o.sdf").read_text().count("$$$$") == 1


def test_relax_xtb_notes_a_correction_it_could_not_apply(monkeypatch):
    pytest.importorskip("tblite")
    import molconf.ground_state.prerelax as gp

    monkeypatch.setattr(gp, "prerelax", lambda mol: gp.PrerelaxResult(False, reason="Si not in the correction's "
                                                                                   "training data"))
    [mol], report = predict("CCO", relax_with="xtb", return_report=True)
    [note] = report.notes[0]
    assert note.startswith("GFN2-xTB: converged in ")
    assert note.endswith("vs the MMFF94 geometry (GFN2 correction not applied: Si not in the correction's "
                         "training data)")


def test_relax_xtb_reports_scf_failure_and_missing_tblite(monkeypatch):
    pytest.importorskip("tblite")
    from ase.calculators.calculator import CalculationFailed, Calculator

    from molconf.ground_state import xtb as xtb_module

    class Failing(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, *args, **kwargs):
            raise CalculationFailed("SCF not converged")

    from molconf.ground_state.prerelax import prerelax

    [start] = predict("CCO", relax_with="mmff")
    assert prerelax(start).applied  # the start relax_with="xtb" hands to GFN2-xTB
    with monkeypatch.context() as m:
        m.setattr(xtb_module, "gfn2_calculator", lambda *a, **k: Failing())
        [mol], report = predict("CCO", relax_with="xtb", return_report=True)
    assert report.notes[0] == ["GFN2-xTB SCF failure (SCF not converged): conformer left at the MMFF94 + "
                               "GFN2-correction geometry"]
    assert np.allclose(mol.GetConformer().GetPositions(), start.GetConformer().GetPositions(), atol=1e-6)
    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # as if tblite were not installed
    with pytest.raises(ImportError, match=r"molconf\[xtb\]"):
        predict("CCO", relax_with="xtb")


@pytest.fixture(scope="module")
def drug_like_model(tmp_path_factory):
    """A second tiny model standing in for the drug-like one: more elements, larger molecules."""
    return _save_tiny(tmp_path_factory.mktemp("model"), "drugs", "gtmgc", 1, [1, 6, 7, 8, 9, 16, 17, 35], 80)


def test_each_molecule_goes_to_the_model_covering_it(tiny_model, drug_like_model):
    small, drugs = resolve_models([tiny_model, drug_like_model])
    inputs = ["CCO", "CCS", "C" * 12, "C" * 30, "C[Si](C)(C)C", "CCCl", "CCO"]
    mols, report = _quiet_predict(inputs, model=[tiny_model, drug_like_model], return_report=True)
    # elements and training size of the first model -> it; S, Cl, or > 29 atoms -> the second
    assert [report.models.get(i) for i in range(7)] == ["tiny", "drugs", "drugs", "drugs", None, "drugs", "tiny"]
    assert report.model == "tiny + drugs"
    assert [m.GetProp("molconf_model") for m in mols if m is not None] == ["tiny", "drugs", "drugs", "drugs", "drugs", "tiny"]
    [failure] = report.failures
    assert failure.index == 4 and "no model covers it" in failure.reason and "Si not supported by model 'tiny'" in failure.reason
    # the same molecule through one model alone gets the same coordinates as when routed
    [alone] = predict("CCS", model=drug_like_model)
    assert np.allclose(alone.GetConformer().GetPositions(), mols[1].GetConformer().GetPositions(), atol=1e-5)
    # beyond every model's training size but within a size limit: the widest model, with a note
    big = Chem.AddHs(Chem.MolFromSmiles("C" * 40))  # 122 atoms: > 80, ≤ 160
    assert choose_model(big, [small, drugs]).name == "drugs"
    mols, report = _quiet_predict(["C" * 40], model=[tiny_model, drug_like_model], return_report=True)
    assert mols[0] is not None
    assert report.notes[0][0] == ("122 atoms (with H) is beyond model 'drugs' (trained on ≤ 80; refuses > 160): "
                                  "expect a rougher geometry")


def test_routing_counts_heavy_atoms_too(tiny_model, drug_like_model):
    """Few H can make a large molecule QM9-sized in atoms with H: naphthalene has 18 atoms
    (≤ 29) but 10 heavy atoms (> 9), so it goes to the model trained on larger molecules."""
    small, drugs = resolve_models([tiny_model, drug_like_model])
    assert (small.max_heavy_atoms, small.heavy_limit) == (9, 18)
    assert drugs.max_heavy_atoms is None and drugs.heavy_limit is None  # not recorded: not checked
    naphthalene = Chem.AddHs(Chem.MolFromSmiles("c1ccc2ccccc2c1"))
    assert naphthalene.GetNumAtoms() <= small.max_atoms
    assert choose_model(naphthalene, [small, drugs]).name == "drugs"
    assert coverage_problem(naphthalene, small, within_training=True) == (
        "10 heavy atoms is beyond model 'tiny' (trained on ≤ 9; refuses > 18)")
    assert coverage_problem(naphthalene, small) is None  # within the refusal limit
    # the small model alone: 14 heavy atoms (24 with H) is predicted with a note, 22 (36) is refused
    anthracene, pentacene = "c1ccc2cc3ccccc3cc2c1", "c1ccc2cc3cc4cc5ccccc5cc4cc3cc2c1"
    mols, report = _quiet_predict([anthracene, pentacene], model=tiny_model, return_report=True)
    assert mols[0] is not None and report.notes[0][0] == (
        "14 heavy atoms is beyond model 'tiny' (trained on ≤ 9; refuses > 18): expect a rougher geometry")
    assert all(n.startswith("bond guard:") for n in report.notes[0][1:])  # the untrained net's bonds, repaired
    assert mols[1] is None
    assert report.failures[0].reason == "22 heavy atoms is far beyond model 'tiny' (trained on ≤ 9; refuses > 18)"


def test_shipped_models_record_heavy_atom_coverage():
    """The shipped weights carry both size counts, so a drug-sized molecule with few H (benzanilide:
    26 atoms with H, 15 heavy) goes to the drug-like model, not to the QM9 one (≤ 9 heavy atoms)."""
    qm9, drugs = resolve_models("default")
    assert (qm9.name, qm9.max_atoms, qm9.max_heavy_atoms) == ("qm9_rebind", 29, 9)
    assert drugs.name == "moses_xtb_gtmgc" and drugs.max_heavy_atoms >= 20
    _, report = predict(["O=C(Nc1ccccc1)c1ccccc1", "CC(=O)NC"], return_report=True)
    assert report.models == {0: "moses_xtb_gtmgc", 1: "qm9_rebind"}


def test_default_routes_by_shipped_models(monkeypatch, tmp_path, tiny_model, drug_like_model):
    import shutil

    import molconf.prediction as P

    shutil.copy(tiny_model, tmp_path / "small.pt")
    shutil.copy(drug_like_model, tmp_path / "big.pt")
    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(P, "DEFAULT_MODELS", ("small", "missing", "big"))
    assert [m.name for m in resolve_models("default")] == ["tiny", "drugs"]
    _, report = predict(["CCO", "CCCl"], return_report=True)
    assert report.models == {0: "tiny", 1: "drugs"}
    monkeypatch.setattr(P, "DEFAULT_MODELS", ("missing",))
    with pytest.raises(FileNotFoundError, match="no default model"):
        resolve_models("default")


def test_geometric_stereo_check_agrees_with_cip_on_model_predictions(qm9_small):
    """The default model's raw predictions (no repair) on QM9 molecules: the cheap parity check
    flags exactly the centres whose CIP labels the prediction gets wrong, apart from r/s centres
    and centres too flat or double bonds too twisted to trust (flagged even where RDKit still
    reads a label)."""
    from molconf.metrics import stereo_labels

    graphs = []
    for row in range(0, min(len(qm9_small), 300)):
        m = qm9_small.mol(row)
        m.RemoveAllConformers()
        graphs.append(m)
    preds = predict(graphs, fix_stereo=False)
    checked = flagged = flat_flagged = linear_flagged = 0
    for graph, pred in zip(graphs, preds):
        spec = stereo_spec(graph)
        if not spec:
            continue
        labels, got = graph_stereo_labels(graph), stereo_labels(pred)
        pos = pred.GetConformer().GetPositions()
        fast, flat = set(spec.mismatches(pos)), set(spec.too_flat(pos)) | set(spec.too_twisted(pos))
        linear = set(spec.too_linear(pos))  # collinear substituents: RDKit may still read a label
        excused = flat | linear
        slow = {k for k, v in labels.items() if got.get(k) != v}
        assert {k for k in fast - excused if labels[k] not in "rs"} == {k for k in slow - excused if labels[k] not in "rs"}
        assert excused <= fast and bool(fast) >= bool(slow)
        checked += 1
        flagged += bool(fast)
        flat_flagged += bool(flat)
        linear_flagged += bool(linear)
    assert checked > 50 and 0 < flagged < checked and flat_flagged < checked / 10 and linear_flagged < checked / 10


def test_worker_processes_give_the_same_molecules_notes_and_failures(tiny_model):
    smiles = ["CCO", "xx", "c1ccncc1", "OCC(N)C=O", "C[C@H](N)O", "CCO", "C" * 12, "CCCl", "C#N", "CC(=O)N"] * 3
    one, r1 = _quiet_predict(smiles, model=tiny_model, batch_size=4, return_report=True)
    two, r2 = _quiet_predict(smiles, model=tiny_model, batch_size=4, return_report=True, workers=2)
    assert [m is None for m in one] == [m is None for m in two]
    for a, b in zip(one, two):
        if a is not None:
            assert Chem.MolToSmiles(a) == Chem.MolToSmiles(b) and a.GetProp("molconf_model") == b.GetProp("molconf_model")
            assert np.allclose(a.GetConformer().GetPositions(), b.GetConformer().GetPositions(), atol=1e-4)
    assert [(f.index, f.reason) for f in r1.failures] == [(f.index, f.reason) for f in r2.failures]
    assert r1.notes == r2.notes and r1.models == r2.models
    assert {i: s.checked for i, s in r1.stereo.items()} == {i: s.checked for i, s in r2.stereo.items()}
    with pytest.raises(ValueError, match="workers must be"):
        predict("CCO", model=tiny_model, workers=0)
