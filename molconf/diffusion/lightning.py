"""Lightning training of the coordinate denoiser: ``molconf fit --config configs/diffusion_*.yaml``.

Runs under :func:`molconf.lightning.run_lightning_cli` (subclass mode) with
:class:`molconf.lightning.ConformerDataModule` as the data. The CLI's checkpoint callback
monitors ``val/d_mae`` by default, which a denoiser does not log: diffusion configs set
``checkpoint.monitor: val/loss``.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from molconf import constants as K
from molconf.diffusion.loss import WEIGHTINGS, denoising_loss
from molconf.diffusion.model import EquivariantDenoiser
from molconf.lightning import TrainingStateMixin, total_training_steps

DEFAULT_VAL_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0)


class DenoiserModule(TrainingStateMixin, L.LightningModule):
    """Denoising score matching for :class:`EquivariantDenoiser` (see :mod:`.loss`).

    Parameters
    ----------
    model : EquivariantDenoiser
        The network (``class_path``/``init_args`` in YAML); ``model.blind`` selects the
        variant.
    lr, weight_decay : AdamW settings
    warmup_fraction : float
        Linear warm-up over this share of all steps, then cosine decay to ``lr_final_fraction``.
    sigma_min, sigma_max : float
        Training noise levels (Å), drawn log-uniformly per molecule.
    loss_weighting : {"edm", "noise", "none"}
    val_sigmas : list of float
        Fixed noise levels of the validation loss (each molecule at each level, with noise
        from a generator seeded by ``val_seed`` and the batch index, so it is reproducible).
    """

    def __init__(
        self,
        model: EquivariantDenoiser,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.02,
        lr_final_fraction: float = 0.05,
        sigma_min: float = 0.01,
        sigma_max: float = 3.0,
        loss_weighting: str = "edm",
        val_sigmas: tuple[float, ...] = DEFAULT_VAL_SIGMAS,
        val_seed: int = 0,
    ):
        super().__init__()
        if loss_weighting not in WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {WEIGHTINGS}, got {loss_weighting!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self._val = {}

    def forward(self, batch, y, sigma=None):
        return self.model(batch, y, sigma)

    def _check(self, loss, batch, batch_idx):
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite denoising loss ({loss.item()}) at global step {self.global_step}, batch {batch_idx} "
                f"(molecules {batch[K.MOL_INDEX].tolist()[:8]}…); training stopped, last good checkpoint kept")

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        out = denoising_loss(self.model, batch, sigma_min=hp.sigma_min, sigma_max=hp.sigma_max,
                             weighting=hp.loss_weighting)
        self._check(out["loss"], batch, batch_idx)
        bs = batch[K.MASK].shape[0]
        self.log("train/loss", out["loss"], batch_size=bs, prog_bar=True)
        self.log("train/rmse", out["mse"].mean().sqrt(), batch_size=bs)
        return out["loss"]

    def on_validation_epoch_start(self):
        self._val = {s: [0.0, 0.0, 0] for s in self.hparams.val_sigmas}  # σ → [Σ weighted, Σ mse, count]

    def validation_step(self, batch, batch_idx):
        b = batch[K.MASK].shape[0]
        gen = torch.Generator().manual_seed(self.hparams.val_seed * 1_000_003 + batch_idx)
        for s in self.hparams.val_sigmas:
            sigma = torch.full((b,), float(s), device=batch[K.POS].device)
            out = denoising_loss(self.model, batch, sigma=sigma, weighting=self.hparams.loss_weighting, generator=gen)
            acc = self._val[s]
            acc[0] += float(out["loss"]) * b
            acc[1] += float(out["mse"].sum())
            acc[2] += b

    def on_validation_epoch_end(self):
        if not self._val or not next(iter(self._val.values()))[2]:
            return
        values = {f"val/rmse_sigma_{s:g}": math.sqrt(a[1] / a[2]) for s, a in self._val.items()}
        self.log_dict(values, prog_bar=False)
        self.log("val/loss", sum(a[0] / a[2] for a in self._val.values()) / len(self._val), prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(total_training_steps(self.trainer), 1)
        warmup = max(int(hp.warmup_fraction * total), 1)
        floor = hp.lr_final_fraction

        def factor(step: int) -> float:  # linear warm-up, then cosine to `floor`
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(total - warmup, 1))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
