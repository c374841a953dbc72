"""generate() and `molconf generate`: conformer counts, atoms, determinism, input errors."""

import warnings

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.cli import main as molconf_main
from molconf.diffusion import generate
from molconf.errors import MoleculeError


def _positions(mol):
    return np.stack([c.GetPositions() for c in mol.GetConformers()])


def test_generate_returns_n_conformers_with_the_inputs_atoms(tiny_model_file):
    mol = generate("C[C@H](N)C(=O)O", n=3, model=tiny_model_file, seed=0, steps=4)
    expected = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)C(=O)O"))
    assert mol.GetNumConformers() == 3
    assert [a.GetAtomicNum() for a in mol.GetAtoms()] == [a.GetAtomicNum() for a in expected.GetAtoms()]
    assert mol.GetProp("molconf_sampler") == "ddim" and mol.GetProp("molconf_model") == "tiny"
    pos = _positions(mol)
    assert np.isfinite(pos).all() and not np.allclose(pos[0], pos[1])
    assert np.allclose(_positions(generate("C[C@H](N)C(=O)O", n=3, model=tiny_model_file, seed=0, steps=4)), pos)


def test_generate_with_ks_refinement_and_guidance(tiny_blind):
    ref = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(ref, randomSeed=0)
    mol, report = generate(ref, n=2, model=tiny_blind, start_from=ref, lj_guidance=True, seed=1,
                           ks_options=dict(h0=0.3, beta=0.5, max_steps=10), return_report=True)
    assert report.sampler == "ks" and mol.GetNumConformers() == 2 and not report.failures
    with pytest.raises(ValueError, match="atoms"):
        generate("CCN", n=1, model=tiny_blind, start_from=ref)


def test_bad_inputs_are_reported(tiny_model_file):
    with pytest.raises(MoleculeError, match="invalid SMILES"):
        generate("C1CC", n=2, model=tiny_model_file)
    with pytest.raises(MoleculeError, match="not supported"):
        generate("CCS", n=2, model=tiny_model_file)  # the model card lists H C N O F
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mols, report = generate(["CCO", "xyz", "[NH4+]"], n=2, model=tiny_model_file, steps=3, return_report=True)
    assert mols[0].GetNumConformers() == 2 and mols[1] is None and mols[2] is None
    assert [f.index for f in report.failures] == [1, 2]
    assert "net charge" in report.failures[1].reason
    assert any("2 of 3 inputs" in str(w.message) for w in caught)


def test_a_model_is_required():
    with pytest.raises(ValueError, match="no default diffusion model"):
        generate("CCO", n=2)
    with pytest.raises(FileNotFoundError, match="no default diffusion model"):
        generate("CCO", n=2, model="/nonexistent/denoiser.ckpt")
    with pytest.raises(ValueError, match="start must be one of"):
        generate("CCO", n=2, model="/nonexistent/denoiser.ckpt", start="etkgd")


def test_etkdg_starts_are_rdkits_own_conformers():
    from molconf.diffusion.api import etkdg_starts

    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))
    starts, distinct = etkdg_starts(mol, 5, seed=3)
    ref = Chem.Mol(mol)  # the obvious way: ETKDGv3, randomSeed = seed + 1, one thread
    params = AllChem.ETKDGv3()
    params.randomSeed, params.numThreads = 4, 1
    AllChem.EmbedMultipleConfs(ref, 5, params)
    assert distinct == 5 and np.allclose(starts, _positions(ref))
    assert not np.allclose(starts[0], starts[1])  # seed + 1: never RDKit's seed-0 trap of identical conformers
    few, distinct = etkdg_starts(Chem.AddHs(Chem.MolFromSmiles("C")), 4, seed=0)
    assert few.shape == (4, 5, 3) and 1 <= distinct <= 4


def test_samples_start_from_their_own_etkdg_conformer(tiny_model_file):
    from molconf.diffusion.api import etkdg_starts
    from molconf.metrics import mol_with_coords

    smi = "OC(=O)[C@@H]1CCCN1C(=O)c1ccccc1"
    # at σ = 2e-3 Å the EDM skip term (σ_data² / (σ² + σ_data²) ≈ 1) leaves each start in place
    mol, report = generate(smi, n=4, model=tiny_model_file, start="etkdg", sigma_max=2e-3, sigma_min=1e-3,
                           steps=2, seed=5, return_report=True)
    assert report.start == "etkdg" and mol.GetProp("molconf_start") == "etkdg"
    starts, _ = etkdg_starts(Chem.AddHs(Chem.MolFromSmiles(smi)), 4, seed=5)
    for k, conf in enumerate(mol.GetConformers()):
        sample = mol_with_coords(mol, conf.GetPositions())
        start = mol_with_coords(mol, starts[k])
        assert Chem.rdMolAlign.AlignMol(Chem.Mol(sample), start) < 0.05
    with pytest.raises(ValueError, match="start_from gives the start"):
        generate(smi, n=1, model=tiny_model_file, start="etkdg", start_from=mol)


def test_cli_generate_writes_sdf(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "out.sdf"
    with pytest.raises(SystemExit) as ex:
        molconf_main(["generate", "CCO", "CC#N", "-n", "3", "--model", str(tiny_model_file), "-o", str(out),
                      "--steps", "3"])
    assert ex.value.code == 0
    records = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    assert len(records) == 6 and records[0].GetNumAtoms() == 9 and records[3].GetNumAtoms() == 6
    with pytest.raises(SystemExit) as ex:
        molconf_main(["generate", "CCO", "-n", "2"])
    assert ex.value.code == 2
    assert "--model PATH is required: no default diffusion model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        molconf_main(["generate", "CCO", "-n", "2", "--model", str(tmp_path / "missing.pt")])
    assert ex.value.code == 2
    assert "missing.pt" in capsys.readouterr().err


def test_a_molecule_etkdg_cannot_embed_is_named_and_the_rest_kept(tiny_model_file, monkeypatch):
    from rdkit.Chem import AllChem as chem

    real = chem.EmbedMultipleConfs

    def refuse_rings(mol, *args, **kwargs):  # as if ETKDG failed on every ring system
        return [] if mol.GetRingInfo().NumRings() else real(mol, *args, **kwargs)

    monkeypatch.setattr(chem, "EmbedMultipleConfs", refuse_rings)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        mols, report = generate(["CCO", "c1ccccc1O", "CCN"], n=2, model=tiny_model_file, start="etkdg",
                                steps=2, return_report=True)
    assert mols[0].GetNumConformers() == 2 and mols[1] is None and mols[2].GetNumConformers() == 2
    assert [f.index for f in report.failures] == [1]
    assert "c1ccccc1O" in report.failures[0].input and "could not embed" in report.failures[0].reason
    with pytest.raises(MoleculeError, match="could not embed"):
        generate("c1ccccc1O", n=2, model=tiny_model_file, start="etkdg", steps=2)


def test_cli_names_a_bad_input_once_and_keeps_the_good_one(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "out.sdf"
    with warnings.catch_warnings():
        # the command prints failures; it must not also warn them
        warnings.filterwarnings("error", message=".*inputs not generated")
        with pytest.raises(SystemExit) as ex:
            molconf_main(["generate", "CCO", "xyz", "-n", "2", "--model", str(tiny_model_file), "-o", str(out),
                          "--steps", "2", "--start", "etkdg", "--sigma-max", "0.2"])
    assert ex.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.count("xyz") == 1 and "invalid SMILES" in captured.err
    assert "start etkdg" in captured.out
    assert len([m for m in Chem.SDMolSupplier(str(out), removeHs=False)]) == 2
