"""Denoising score matching: the loss falls, and `molconf fit` trains a DenoiserModule."""

from pathlib import Path

import torch

from molconf.data.dataset import collate_dense, graph_to_data
from molconf.diffusion.io import load_denoiser, save_denoiser
from molconf.diffusion.lightning import DenoiserModule
from molconf.diffusion.loss import denoising_loss, sample_sigma
from molconf.diffusion.generalization import train_denoiser
from molconf.lightning import run_lightning_cli

REPO = Path(__file__).resolve().parents[2]


def _fixed_loss(net, batch):
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    with torch.no_grad():
        return float(denoising_loss(net, batch, sigma=sigma, generator=torch.Generator().manual_seed(0))["loss"])


def test_loss_decreases_on_a_few_molecules(qm9_small, make_tiny):
    graphs = [graph_to_data(qm9_small.graph(i), 1) for i in (5, 9, 17, 30)]
    batch = collate_dense(graphs)
    for blind in (False, True):
        net = make_tiny(blind)
        before = _fixed_loss(net, batch)
        losses = train_denoiser(net, graphs, steps=40, batch_size=4, lr=1e-2, seed=0)
        after = _fixed_loss(net.eval(), batch)
        assert len(losses) == 40 and all(map(torch.isfinite, torch.tensor(losses)))
        assert after < 0.85 * before, (blind, before, after)


def test_sigma_is_log_uniform():
    s = sample_sigma(20000, 0.01, 3.0, torch.Generator().manual_seed(0))
    assert 0.01 <= s.min() and s.max() <= 3.0
    # log-uniform: the median is the geometric mean of the range
    assert abs(float(s.median()) - (0.01 * 3.0) ** 0.5) < 0.02


def test_fit_smoke_config_trains_and_checkpoint_loads(tmp_path, qm9_small):
    run_lightning_cli(["fit", "--config", str(REPO / "configs" / "diffusion_smoke.yaml"),
                       "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and any(p.name.startswith("best-") for p in (tmp_path / "checkpoints").iterdir())
    metrics = (next((tmp_path / "csv").glob("version_*")) / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics and "val/rmse_sigma_0.1" in metrics
    net, meta = load_denoiser(ckpt)
    assert not net.blind and meta["global_step"] == 4
    # a weights file round-trips too
    path = save_denoiser(net, tmp_path / "w.pt", {"name": "x"})
    again, meta2 = load_denoiser(path)
    assert meta2["name"] == "x"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    # `molconf fit ... --ckpt_path` resumes (LightningCLI re-parses the checkpoint's hparams)
    run_lightning_cli(["fit", "--config", str(REPO / "configs" / "diffusion_smoke.yaml"),
                       "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                       "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)])
    assert load_denoiser(ckpt)[1]["global_step"] == 8


def test_module_rejects_bad_settings(make_tiny):
    import pytest

    with pytest.raises(ValueError, match="loss_weighting"):
        DenoiserModule(make_tiny(), loss_weighting="l1")
    with pytest.raises(ValueError, match="sigma_min"):
        DenoiserModule(make_tiny(), sigma_min=1.0, sigma_max=0.5)
