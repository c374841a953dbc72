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
        # the normal modes come from the force field's own minimum near the sample: no negative mode
        assert row["hessian_negative"] == 0 and row["minimum_rmsd_to_estimate"] >= 0
        per_draw = [np.asarray(e) for e in row["eigenvalues_internal_per_draw"]]
        assert len(per_draw) == 2 and np.array_equal(per_draw[0], row["eigenvalues_internal"])
        assert row["share_above_1"] == pytest.approx(np.mean([np.mean(e > 1.05) for e in per_draw]))
        assert row["eig_max"] == max(e.max() for e in per_draw) and row["eig_min"] == min(e.min() for e in per_draw)
    at_reference = jacobian_analysis(make_tiny(True), ethanol, sigmas=[0.05], n_leading=4, hessian_at="reference")
    assert "hessian_negative" not in at_reference["per_sigma"][0] and at_reference["hessian_at"] == "reference"


def test_force_field_minimum_is_a_stationary_point_near_its_start(ethanol):
    from molconf.diffusion.study import force_field_minimum

    x = ethanol.GetConformer().GetPositions()
    rng = np.random.default_rng(0)
    start = x + 0.05 * rng.normal(size=x.shape)
    x_min = force_field_minimum(ethanol, start)
    w, _ = normal_modes(force_field_hessian(ethanol, x_min), x_min)
    assert w.min() > -1e-3 and np.sqrt(np.mean(np.sum((x_min - x) ** 2, 1))) < 0.1


def test_cli_jacobian_writes_json(tiny_model_file, tmp_path):
    code = diffusion_cli(["diffusion", "jacobian", "--model", str(tiny_model_file), "--smiles", "CC=O",
                          "--sigmas", "0.1", "1.0", "--n-leading", "3", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "jacobian.json").read_text())
    assert [r["sigma"] for r in res["per_sigma"]] == [0.1, 1.0] and res["dim"] == 21
    assert (tmp_path / "jacobian.png").stat().st_size > 0


def test_cli_tiny_generalization_run_and_resume(qm9_small, tmp_path, capsys):
    args = ["diffusion", "generalization", "--sizes", "2", "4", "--steps", "10", "--epochs", "10", "--n-heldout", "2",
            "--n-train-eval", "2", "--n-samples", "2", "--ns", "8", "--nv", "2", "--layers", "1", "--batch-size", "2",
            "--ks-h0", "0.3", "--ks-beta", "0.5", "--ks-max-steps", "15", "--source-limit", "300",
            "--out", str(tmp_path)]
    assert diffusion_cli(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sizes"] == [2, 4] and summary["steps"] == [10, 20]  # 10 epochs of 4 molecules in batches of 2
    for key in ("heldout_ab", "heldout_aa", "heldout_untrained_ab", "train_ab", "train_a_ref", "train_b_ref",
                "heldout_a_ref"):
        assert all(np.isfinite(v) and v >= 0 for v in summary[key]), key
    assert "transition_N" in summary and "transition_rule" in summary
    n4 = json.loads((tmp_path / "N4.json").read_text())
    assert len(n4["heldout"]["per_molecule"]) == 2 and len(n4["train"]["per_molecule"]) == 2
    assert len(n4["heldout"]["ab"]["per_replica"]) == 2 and sorted(n4["final_loss"]) == ["A0", "A1", "B0", "B1"]
    assert (tmp_path / "generalization.png").is_file() and (tmp_path / "loss_curves.png").is_file()
    from molconf.diffusion.io import load_denoiser

    meta = {k: load_denoiser(tmp_path / "models" / f"N4_{k}.pt")[1] for k in ("A0", "A1", "B0", "B1")}
    a, b = meta["A0"]["train_mol_ids"], meta["B0"]["train_mol_ids"]
    assert len(a) == len(b) == 4 and not set(a) & set(b)  # disjoint training sets
    assert meta["A1"]["train_mol_ids"] == a and meta["B1"]["train_mol_ids"] == b  # replicas: same data
    seeds = [m["training"]["seed"] for m in meta.values()]
    assert len(set(seeds)) == 4 and not set(seeds) & {s + 1 for s in seeds}  # own init, batches and noise each
    assert len(meta["A0"]["losses"]) == 20
    # resuming skips every finished N
    capsys.readouterr()
    assert diffusion_cli(args) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    # killed after training, before the result was written: the saved networks are reused
    (tmp_path / "N4.json").unlink()
    assert diffusion_cli(args) == 0
    assert capsys.readouterr().out.count("reused") == 4
    again = json.loads((tmp_path / "N4.json").read_text())
    assert again["heldout"] == n4["heldout"] and again["final_loss"] == n4["final_loss"]


def test_networks_differ_in_initialisation_and_untrained_controls_are_rebuilt_exactly():
    from molconf.diffusion.generalization import StudyConfig, _initial, network_seed

    cfg = StudyConfig(ns=8, nv=2, n_layers=1)
    a0, b0 = _initial(cfg, network_seed(0, "A", 0)), _initial(cfg, network_seed(0, "B", 0))
    again = _initial(cfg, network_seed(0, "A", 0))
    pa, pb, pa2 = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a0, b0, again))
    assert not torch.equal(pa, pb) and torch.equal(pa, pa2)


def test_reference_rmsd_forgives_the_mirror_image_and_reports_its_stereo():
    from rdkit.Chem import AllChem

    from molconf.diffusion.generalization import rmsd_to_reference

    ref = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)C(=O)O"))
    AllChem.EmbedMolecule(ref, randomSeed=7)
    pos = ref.GetConformer().GetPositions()
    assert rmsd_to_reference(ref, pos) == (pytest.approx(0.0, abs=1e-6), True)
    mirrored = pos * np.array([1.0, 1.0, -1.0])
    rmsd, same = rmsd_to_reference(ref, mirrored)
    assert rmsd == pytest.approx(0.0, abs=1e-6) and same is False
    achiral = Chem.AddHs(Chem.MolFromSmiles("CCCO"))
    AllChem.EmbedMolecule(achiral, randomSeed=7)
    assert rmsd_to_reference(achiral, achiral.GetConformer().GetPositions())[1] is None


def test_transition_is_the_first_n_within_reach_of_the_same_data_control():
    from molconf.diffusion.generalization import transition

    summary = {"sizes": [1, 10, 100], "heldout_ab": [1.0, 0.5, 0.2], "heldout_aa": [0.1, 0.3, 0.19]}
    assert transition(summary) == 100  # 0.5 > 1.25 x 0.3; 0.2 <= 1.25 x 0.19
    assert transition({**summary, "heldout_aa": [0.1, 0.1, 0.1]}) is None
    assert transition({"sizes": [1], "heldout_ab": [0.2]}) is None  # one replica: no control


def test_cli_generalization_reports_too_large_n(qm9_small, tmp_path, capsys):
    code = diffusion_cli(["diffusion", "generalization", "--sizes", "100000", "--steps", "1", "--source-limit",
                          "300", "--out", str(tmp_path)])
    assert code == 2 and "needs 200000 training molecules" in capsys.readouterr().err


def test_exploded_samples_are_unusable(monkeypatch):
    """A sample with an atom far from the centroid counts as failed, not as a huge RMSD."""
    import molconf.diffusion.generalization as study
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
