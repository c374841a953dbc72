"""Jacobian analysis and the generalisation study, through the API and the CLI."""

import json

import numpy as np
import pytest
import torch
from rdkit import Chem

from molconf.diffusion.cli import main as diffusion_cli
from molconf.diffusion.study import (
    denoiser_jacobian,
    force_field_hessian,
    jacobian_analysis,
    normal_modes,
    reference_molecule,
    rigid_basis,
    single_batch,
)


@pytest.fixture(scope="module")
def ethanol():
    return reference_molecule(smiles="CCO", seed=0)


@pytest.mark.parametrize("blind", [True, False])
def test_jacobian_is_full_and_matches_finite_differences(make_tiny, ethanol, blind):
    net = make_tiny(blind)
    x = torch.tensor(ethanol.GetConformer().GetPositions())
    y = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = None if blind else 0.2
    jac = denoiser_jacobian(net, single_batch(ethanol), y, sigma)
    n = ethanol.GetNumAtoms()
    assert jac.shape == (3 * n, 3 * n) and np.isfinite(jac).all()
    # column k = ∂f/∂y_k, checked by central differences in float64
    net64 = net.double()
    s = None if blind else torch.tensor([0.2], dtype=torch.float64)
    f = lambda v: net64(single_batch(ethanol), v.view(1, n, 3), s).detach().reshape(-1).numpy()  # noqa: E731
    for k in (0, 7, 3 * n - 1):
        e = torch.zeros(3 * n, dtype=torch.float64)
        e[k] = 1e-5
        fd = (f(y.reshape(-1) + e) - f(y.reshape(-1) - e)) / 2e-5
        assert np.allclose(jac[:, k], fd, atol=1e-6)
    # outputs are centred, so the all-ones direction of each axis is annihilated on the left
    assert np.allclose(jac.reshape(n, 3, 3 * n).sum(0), 0, atol=1e-8)


def test_force_field_hessian_has_six_rigid_zero_modes(ethanol):
    x = ethanol.GetConformer().GetPositions()
    hess = force_field_hessian(ethanol, x, "mmff")
    n = ethanol.GetNumAtoms()
    assert hess.shape == (3 * n, 3 * n) and np.allclose(hess, hess.T)
    rigid = rigid_basis(x)
    assert rigid.shape == (3 * n, 6)
    assert np.abs(hess @ rigid).max() < 1e-2 * np.abs(hess).max()  # a minimum: rigid motions cost nothing
    w, modes = normal_modes(hess, x)
    assert modes.shape == (3 * n, 3 * n - 6) and w.min() > -1e-3 and np.allclose(modes.T @ modes, np.eye(3 * n - 6))


def test_jacobian_analysis_reports_deff_and_overlaps(make_tiny, ethanol):
    res = jacobian_analysis(make_tiny(True), ethanol, sigmas=[0.05, 1.0], n_leading=4, n_draws=2)
    assert res["dim"] == 27 and len(res["per_sigma"]) == 2
    for row in res["per_sigma"]:
        assert np.isfinite(row["d_eff"]) and 0 <= row["asymmetry"] and len(row["eigenvalues"]) == 27
        assert 0 <= row["subspace_overlap"] <= 1 + 1e-9
        assert np.asarray(row["leading_overlap"]).shape == (4, 21)
        assert row["n_draws"] == 2 and np.isfinite(row["d_eff_std"])


def test_cli_jacobian_writes_json(tiny_model_file, tmp_path):
    code = diffusion_cli(["diffusion", "jacobian", "--model", str(tiny_model_file), "--smiles", "CC=O",
                          "--sigmas", "0.1", "1.0", "--n-leading", "3", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "jacobian.json").read_text())
    assert [r["sigma"] for r in res["per_sigma"]] == [0.1, 1.0] and res["dim"] == 21
    assert (tmp_path / "jacobian.png").stat().st_size > 0


def test_cli_tiny_generalization_run_and_resume(qm9_small, tmp_path, capsys):
    args = ["diffusion", "generalization", "--sizes", "2", "4", "--steps", "10", "--n-heldout", "2",
            "--n-train-eval", "2", "--n-samples", "2", "--ns", "8", "--nv", "2", "--layers", "1",
            "--ks-h0", "0.3", "--ks-beta", "0.5", "--ks-max-steps", "15", "--source-limit", "300",
            "--out", str(tmp_path)]
    assert diffusion_cli(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sizes"] == [2, 4]
    for key in ("heldout_rmsd_ab", "train_rmsd_ab", "train_rmsd_a_train", "heldout_rmsd_gt"):
        assert all(np.isfinite(v) and v >= 0 for v in summary[key]), key
    n4 = json.loads((tmp_path / "N4.json").read_text())
    assert len(n4["heldout"]["per_molecule"]) == 2 and len(n4["train"]["per_molecule"]) == 2
    assert (tmp_path / "generalization.png").is_file() and (tmp_path / "models" / "N4_B.pt").is_file()
    # disjoint training sets
    from molconf.diffusion.io import load_denoiser

    a = load_denoiser(tmp_path / "models" / "N4_A.pt")[1]["train_mol_ids"]
    b = load_denoiser(tmp_path / "models" / "N4_B.pt")[1]["train_mol_ids"]
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    # resuming skips every finished N
    capsys.readouterr()
    assert diffusion_cli(args) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    # killed after training, before the result was written: the saved networks are reused
    (tmp_path / "N4.json").unlink()
    assert diffusion_cli(args) == 0
    assert capsys.readouterr().out.count("reused") == 2
    again = json.loads((tmp_path / "N4.json").read_text())
    assert again["heldout"] == n4["heldout"] and again["final_loss"] == n4["final_loss"]


def test_cli_generalization_reports_too_large_n(qm9_small, tmp_path, capsys):
    code = diffusion_cli(["diffusion", "generalization", "--sizes", "100000", "--steps", "1", "--source-limit",
                          "300", "--out", str(tmp_path)])
    assert code == 2 and "needs 200000 training molecules" in capsys.readouterr().err


def test_exploded_samples_are_unusable(monkeypatch):
    """A sample with an atom far from the centroid counts as failed, not as a huge RMSD."""
    import molconf.diffusion.study as study
    from molconf.data.dataset import graph_to_data
    from molconf.data.features import featurize
    from rdkit import Chem

    graph = graph_to_data(featurize(Chem.AddHs(Chem.MolFromSmiles("CCO"))), 1)

    def fake_ddim(model, batch, *args, **kwargs):
        pos = torch.zeros(batch["pos"].shape)
        pos[1, 0] = 1e6  # second sample: one atom flung away
        return pos

    monkeypatch.setattr(study, "ddim_sample", fake_ddim)

    class Model:
        blind = False

        def eval(self):
            return self

    _, ok = study.sample_graph(Model(), graph, 3, study.SamplerSettings(sampler="ddim"), seed=0)
    assert ok.tolist() == [True, False, True]
