"""Everything Lightning: the data module, the training module and the CLI class.

Models stay plain ``nn.Module``s (:mod:`molconf.models`); this module adds data loading,
optimisation, metrics, checkpoint state and the ``molconf fit/validate/test/predict``
commands (LightningCLI, configured by YAML files under ``configs/``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from molconf import constants as K
from molconf.data.cache import GraphStore
from molconf.data.dataset import ConformerDataset, SizeAwareBatchSampler, collate_dense
from molconf.data.load import DATASETS, load_dataset, load_dataset_split
from molconf.data.splits import SPLIT_PARTS
from molconf.metrics import PooledDistanceMetrics, c_rmsd, mol_with_coords
from molconf.models import ConformerTransformer, conformer_loss
from molconf.models.io import read_model_file


# Lightning warns that a mid-epoch resume "can cause unreliable results" unless the loader
# implements its state_dict protocol; ResumableDataLoader resumes exactly by another route
# (tests/test_lightning.py::test_resume_from_last_checkpoint_is_exact), so the warning misleads.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`SizeAwareBatchSampler` that follows the trainer's progress.

    Each new iteration asks ``progress()`` for ``(epoch, batches already done in it)``: the
    epoch seeds the batch order (Lightning only sets epochs on ``batch_sampler.sampler``,
    which a batch sampler of its own does not have) and, after a resume from a mid-epoch
    checkpoint, the batches the interrupted run had done are skipped, so the resumed run
    sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, *args, progress=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._progress = progress

    def __iter__(self):
        if self._progress is not None:
            epoch, done = self._progress()
            self.batch_sampler.set_epoch(epoch)
            self.batch_sampler.skip_next = done
        return super().__iter__()


def epoch_to_train(trainer: L.Trainer, batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches already done in it)`` of the training epoch a new iterator serves.

    Read from the fit loop's progress counters, which a resume restores from the checkpoint.
    Lightning creates the first training iterator (and prefetches a batch) *before* it
    reconciles counters restored from an end-of-epoch checkpoint, so ``trainer.current_epoch``
    is not the epoch about to run there: a checkpoint written when validation ends has
    ``processed = e + 1`` but ``completed = e``, one written on the epoch's last batch has
    every batch processed but the epoch not yet. The counters mean:

    - ``epoch_progress.current.processed``: epochs whose batches all ran (the next epoch's
      index, except while an epoch is running);
    - ``epoch_progress.current.started > processed``: an epoch is running (or was, when the
      checkpoint was written) and ``batch_progress.current.processed`` of its batches ran
      ("processed", not "completed": a checkpoint written in on_train_batch_end has
      processed the batch but not yet marked it completed).
    """
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started <= epochs.processed:  # between epochs
        return epochs.processed, 0
    batches = trainer.fit_loop.epoch_loop.batch_progress
    done = batches.current.processed
    if done >= batches_per_epoch or (done and batches.is_last_batch):  # (is_last_batch: limit_train_batches)
        return epochs.processed + 1, 0  # that epoch's batches all ran: the next one starts at its first
    return epochs.processed, done


class ConformerDataModule(L.LightningDataModule):
    """QM9 or GEOM-DRUGS (cached) with a fixed split and size-aware batching.

    Parameters
    ----------
    dataset : str
        ``"qm9"`` or ``"geom_drugs"``.
    data_root : str, optional
        Source of the data: QM9's original XYZ archive (default: the ``qm9pack`` wheel), or
        the GEOM release folder holding ``rdkit_folder`` (default: the shipped format
        fixture ``datasets/geom_drugs/sample``, not ground truth).
    split_dir : str, optional
        QM9: folder of ``split_<part>.npy`` (default ``datasets/qm9``). GEOM-DRUGS: split
        file or folder, e.g. torsional diffusion's ``split.npy`` (default: the one in
        ``data_root``).
    batch_size : int, optional
        Molecules per batch (or give ``max_atoms`` for a padded-atom budget instead).
    max_atoms : int, optional
        Padded atoms per batch (``count × largest``), for drug-sized data.
    pe_dim : int
        Laplacian encoding width (must equal the model's).
    source_limit : int, optional
        Build the cache from only the first N molecules of the source (tests, smoke runs).
    train_limit, val_limit, test_limit : int, optional
        Use only the first N molecules of a split part.
    stereo : bool
        Batches also carry each molecule's specified stereo (for ``model.stereo`` or a
        ``stereo_weight`` loss; ~0.2 ms of RDKit per molecule).
    """

    def __init__(
        self,
        dataset: str = "qm9",
        batch_size: int | None = 100,
        max_atoms: int | None = None,
        pe_dim: int = 32,
        cache_dir: str | None = None,
        split_dir: str | None = None,
        source_limit: int | None = None,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        data_root: str | None = None,
        stereo: bool = False,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
        if batch_size is not None and max_atoms is not None:
            batch_size = None  # an atom budget overrides the default molecule count
        self.save_hyperparameters()
        self.store: GraphStore | None = None
        self.rows: dict[str, np.ndarray] = {}
        self.missing: dict[str, int] = {}

    def prepare_data(self) -> None:
        # Build the cache once (rank 0); other ranks then load it in setup().
        hp = self.hparams
        load_dataset(hp.dataset, hp.data_root, hp.cache_dir, limit=hp.source_limit)

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        hp = self.hparams
        self.store = load_dataset(hp.dataset, hp.data_root, hp.cache_dir, limit=hp.source_limit)
        limits = {"train": hp.train_limit, "val": hp.val_limit, "test": hp.test_limit}
        for part in SPLIT_PARTS:
            ids = load_dataset_split(hp.dataset, part, hp.split_dir, hp.data_root)
            rows, missing = self.store.positions_of(ids)
            self.rows[part] = rows[: limits[part]] if limits[part] else rows
            self.missing[part] = len(missing)

    def dataset(self, part: str) -> ConformerDataset:
        return ConformerDataset(self.store, self.rows[part], self.hparams.pe_dim, self.hparams.get("stereo", False))

    def _sampler(self, part: str, shuffle: bool, world: int, rank: int) -> SizeAwareBatchSampler:
        return SizeAwareBatchSampler(
            self.store.num_atoms[self.rows[part]], self.hparams.batch_size, self.hparams.max_atoms,
            shuffle=shuffle, seed=self.hparams.seed, num_replicas=world, rank=rank,
        )

    def padding_report(self) -> dict[str, float]:
        """Share of padded atom slots per split with this batching (0 = no waste)."""
        self.setup("fit")
        return {part: self._sampler(part, part == "train", 1, 0).padding_fraction() for part in SPLIT_PARTS}

    def train_batches_per_epoch(self, world: int = 1, rank: int = 0) -> int:
        self.setup("fit")
        return len(self._sampler("train", True, world, rank))

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(part)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = self._sampler(part, shuffle, world, rank)
        def training_progress():
            return epoch_to_train(trainer, len(sampler))

        progress = training_progress if shuffle and trainer is not None else None

        return ResumableDataLoader(
            ds, batch_sampler=sampler, collate_fn=collate_dense, num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0, progress=progress,
            # Each new iterator draws a base seed from this generator; with the default
            # (global) RNG that draw would shift the training RNG stream after a resume.
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def total_training_steps(trainer: L.Trainer) -> int:
    """Optimiser steps of the whole run, for learning-rate schedules.

    Counted from the data module's batch sampler when it has one rather than with
    ``trainer.estimated_stepping_batches``: that property builds the training iterator
    before a checkpoint's loop state is restored, which would defeat mid-epoch resume.
    """
    t = trainer
    dm = getattr(t, "datamodule", None)
    if not hasattr(dm, "train_batches_per_epoch"):
        return int(t.estimated_stepping_batches)
    per_epoch = dm.train_batches_per_epoch(t.world_size, t.global_rank)
    if isinstance(t.limit_train_batches, int):
        per_epoch = min(per_epoch, t.limit_train_batches)
    elif t.limit_train_batches is not None:
        per_epoch = int(per_epoch * t.limit_train_batches)
    per_epoch = math.ceil(per_epoch / t.accumulate_grad_batches)
    total = per_epoch * t.max_epochs if t.max_epochs not in (None, -1) else math.inf
    if t.max_steps not in (None, -1):
        total = min(total, t.max_steps)
    if total == math.inf:
        raise ValueError("set trainer.max_epochs or trainer.max_steps: the schedule needs a length")
    return int(total)


class TrainingStateMixin:
    """Checkpoint state every molconf LightningModule keeps, for exact resume and reports.

    - torch's global RNG (eigenvector sign flips, dropout, diffusion noise): saved and
      restored, so a resumed run draws what an uninterrupted one would (batch order comes
      from the batch sampler's own (seed, epoch) generator);
    - wall-clock seconds spent in ``fit`` across resumes (:attr:`train_seconds`);
    - the configuration of ``self.model`` (which must have a ``config`` dict).
    """

    _train_seconds_before: float = 0.0  # wall time of earlier (resumed-from) sessions
    _fit_started: float | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The network's own config (kept out of hparams: LightningCLI re-parses a
        # checkpoint's hparams as init args) lets molconf.models.io rebuild it alone.
        checkpoint["molconf_model_config"] = self.model.config
        checkpoint["molconf_torch_rng"] = torch.get_rng_state()
        checkpoint["molconf_train_seconds"] = self.train_seconds

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "molconf_torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["molconf_torch_rng"])
        self._train_seconds_before = float(checkpoint.get("molconf_train_seconds", 0.0))

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds spent in ``fit`` (validation included), across resumes."""
        running = time.monotonic() - self._fit_started if self._fit_started is not None else 0.0
        return self._train_seconds_before + running


def load_initial_weights(model: nn.Module, path: str | Path) -> None:
    """Copy the network weights of a weights file / checkpoint into ``model`` (same config).

    Two differences are allowed. A ``stereo=True`` model may start from the same network
    without it: its extra relation weights (β of the stereo channels) start at 0, so the
    fine-tuning starts from exactly the old network's predictions. And ``pe_dim`` may differ:
    the Laplacian encoding has no weights (it is added to the first ``pe_dim`` channels), so a
    model for larger molecules can start from one trained with fewer eigenvectors.
    """
    config, state, _ = read_model_file(path)
    if config is None or state is None:
        raise ValueError(f"init_from={path}: no model configuration or weights in the file")
    adding_stereo = model.config.get("stereo", False) and not config.get("stereo", False)
    differ = sorted(k for k in set(config) | set(model.config) if config.get(k) != model.config.get(k)
                    and not (k == "stereo" and adding_stereo) and k != "pe_dim")
    if differ:
        raise ValueError(f"init_from={path}: its network differs from the configured one in {differ}")
    if adding_stereo:
        own = model.state_dict()
        for name, value in state.items():
            if name.endswith("attn.beta") and value.shape[0] < own[name].shape[0]:
                padded = torch.zeros_like(own[name])  # (R + 5, H)
                padded[: value.shape[0]] = value
                state[name] = padded
    model.load_state_dict(state)  # float16-stored weights are cast to the parameters' float32


def adamw_warmup_linear(module: L.LightningModule, betas: tuple[float, float] = (0.9, 0.999)) -> dict:
    """AdamW (``hparams.lr``, ``hparams.weight_decay``) with a linear warm-up over
    ``hparams.warmup_fraction`` of all steps, then linear decay to 0."""
    hp = module.hparams
    opt = torch.optim.AdamW(module.parameters(), lr=hp.lr, betas=betas, weight_decay=hp.weight_decay)
    total = max(total_training_steps(module.trainer), 1)
    warmup = max(int(hp.warmup_fraction * total), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ConformerModule(TrainingStateMixin, L.LightningModule):
    """Trains a :class:`ConformerTransformer` on the distance loss of DESIGN §4–5.

    Parameters
    ----------
    model : ConformerTransformer
        The network (``class_path``/``init_args`` in YAML).
    lr, betas, weight_decay : optimiser (AdamW)
    warmup_fraction : float
        Linear warm-up over this share of all steps, then linear decay to 0.
    c_rmsd_on_val : bool
        Also compute C-RMSD during validation (needs RDKit per molecule, slower).
    init_from : str, optional
        Weights file or checkpoint of a network with the same configuration whose weights
        start the training (fine-tuning, e.g. a drug-like model from the QM9 one). A resumed
        run's checkpoint replaces them, as it should.
    local_weight, stereo_weight : float
        Weights of the optional bonded/angle and handedness loss terms
        (:func:`~molconf.models.loss.conformer_loss`; 0: the published objective).
    stereo_on : {"both", "decoder"}
        Which conformers the handedness term applies to.
    """

    def __init__(
        self,
        model: ConformerTransformer,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.1,
        c_rmsd_on_val: bool = False,
        init_from: str | None = None,
        local_weight: float = 0.0,
        stereo_weight: float = 0.0,
        stereo_on: str = "both",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        if init_from is not None:
            load_initial_weights(model, init_from)
        self.val_metrics = PooledDistanceMetrics()
        self.test_metrics = PooledDistanceMetrics()
        self.val_c_rmsd = torchmetrics.MeanMetric()
        self.test_c_rmsd = torchmetrics.MeanMetric()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        pe_dim = getattr(getattr(dm, "hparams", None), "pe_dim", None)
        if pe_dim is not None and pe_dim != self.model.pe_dim:
            raise ValueError(f"data.pe_dim={pe_dim} differs from the model's pe_dim={self.model.pe_dim}: "
                             "the Laplacian encoding width must match")
        needs_stereo = getattr(self.model, "stereo", False) or self.hparams.stereo_weight > 0
        if dm is not None and needs_stereo and not getattr(getattr(dm, "hparams", None), "stereo", False):
            raise ValueError("the model reads stereo or the loss has a stereo term: set data.stereo: true, "
                             "so that batches carry the stereo tuples")

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        losses = conformer_loss(self.model(batch), batch, hp.local_weight, hp.stereo_weight, hp.get("stereo_on", "both"))
        if not torch.isfinite(losses["loss"]):
            # Stop before an optimiser step or checkpoint can store NaN weights.
            raise FloatingPointError(
                f"non-finite training loss ({losses['loss'].item()}) at global step "
                f"{self.global_step}, batch {batch_idx} (molecules {batch[K.MOL_INDEX].tolist()[:8]}…); "
                "training stopped, last good checkpoint kept"
            )
        bs = batch[K.MASK].shape[0]
        self.log("train/loss", losses["loss"], batch_size=bs, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=bs)
        return losses["loss"]

    def _eval_step(self, batch, metrics: PooledDistanceMetrics, rmsd: torchmetrics.MeanMetric, with_rmsd: bool):
        out = self.model(batch)
        metrics.update(out[K.POS_PRED], batch[K.POS], batch[K.MASK])
        if with_rmsd:
            store = self.trainer.datamodule.store
            rows, _ = store.positions_of(batch[K.MOL_INDEX].tolist())
            pred = out[K.POS_PRED].detach().double().cpu().numpy()
            for b, row in enumerate(rows):
                n = int(batch[K.NUM_ATOMS][b])
                ref = store.mol(int(row))
                rmsd.update(c_rmsd(ref, mol_with_coords(ref, pred[b, :n])))

    def _log_eval(self, prefix: str, metrics, rmsd, with_rmsd: bool):
        values = {f"{prefix}/{k}": v for k, v in metrics.compute().items()}
        if with_rmsd:
            values[f"{prefix}/{K.C_RMSD}"] = rmsd.compute()
            rmsd.reset()
        # torchmetrics already synced the sums across processes; only headline numbers on the bar
        headline = {k: v for k, v in values.items() if k.split("/")[1] in (K.D_MAE, K.D_RMSE, K.C_RMSD)}
        self.log_dict(headline, prog_bar=True, sync_dist=False)
        self.log_dict({k: v for k, v in values.items() if k not in headline}, sync_dist=False)
        metrics.reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics, self.val_c_rmsd, self.hparams.c_rmsd_on_val)

    def on_validation_epoch_end(self):
        self._log_eval("val", self.val_metrics, self.val_c_rmsd, self.hparams.c_rmsd_on_val)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, self.test_c_rmsd, True)

    def on_test_epoch_end(self):
        self._log_eval("test", self.test_metrics, self.test_c_rmsd, True)

    def predict_step(self, batch, batch_idx):
        out = self.model(batch)
        return {K.MOL_INDEX: batch[K.MOL_INDEX], K.POS_PRED: out[K.POS_PRED], K.MASK: batch[K.MASK]}

    def configure_optimizers(self):
        return adamw_warmup_linear(self, betas=tuple(self.hparams.betas))


class ForceDataModule(L.LightningDataModule):
    """Force samples of :mod:`molconf.ground_state.forces` for :class:`Gfn2CorrectionModule`.

    Parameters
    ----------
    data_dir : str
        Output folder of ``molconf gfn2-forces``.
    val_every : int
        Molecules whose data-set row is a multiple of this are held out for validation
        (every sample of a molecule on the same side).
    max_hops : the pairs each graph lists (:func:`~molconf.ground_state.correction.pair_graph`);
        must match the model's (checked when fitting starts).
    batch_size, num_workers, seed : loader settings (shuffled with ``seed``).
    """

    def __init__(self, data_dir: str, val_every: int = 20, max_hops: int = 3, batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        import json

        from molconf.ground_state.forces import ForceSampleDataset, load_force_data
        from molconf.ground_state.correction import pair_graph

        meta = json.loads((Path(self.hparams.data_dir) / "meta.json").read_text())
        data, _ = load_force_data(self.hparams.data_dir)
        store = load_dataset(meta["dataset"])
        rows = np.unique(data["row"])
        graphs = {int(r): pair_graph(store.mol(int(r)), self.hparams.max_hops) for r in rows}
        val_rows = rows[rows % self.hparams.val_every == 0]
        self.train_set = ForceSampleDataset(data, graphs, rows[rows % self.hparams.val_every != 0])
        self.val_set = ForceSampleDataset(data, graphs, val_rows)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        from molconf.ground_state.forces import collate_force_samples

        gen = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=collate_force_samples, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)


class Gfn2CorrectionModule(TrainingStateMixin, L.LightningModule):
    """Fits :class:`~molconf.ground_state.correction.Gfn2Correction` to F(GFN2-xTB) − F(MMFF94).

    Loss: mean squared error of the correction's forces (eV/Å)². Logged: ``val/force_mae``
    and ``val/force_mae_uncorrected`` (MMFF94's own error, the correction's baseline).
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, warmup_fraction: float = 0.05):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.val_mae = torchmetrics.MeanMetric()
        self.val_mae_uncorrected = torchmetrics.MeanMetric()

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data.hparams, "max_hops"):
            return
        if data.hparams.max_hops != self.model.max_hops:
            raise ValueError(f"the force data module lists pairs up to max_hops = {data.hparams.max_hops}, "
                             f"the model needs {self.model.max_hops}: set them alike in the config")

    def training_step(self, batch, batch_idx):
        graph, pos, target = batch
        _, forces = self.model(pos, graph)  # (N, 3)
        loss = ((forces - target) ** 2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite force loss at global step {self.global_step}, batch {batch_idx}")
        self.log("train/loss", loss, prog_bar=True, batch_size=int(graph["num_molecules"]))
        return loss

    def validation_step(self, batch, batch_idx):
        graph, pos, target = batch
        with torch.enable_grad():  # forces are gradients
            _, forces = self.model.energy_and_forces(pos, self.model.coefficients(graph), graph)
        err = (forces - target).abs()
        self.val_mae.update(err.mean(), weight=err.numel())
        self.val_mae_uncorrected.update(target.abs().mean(), weight=err.numel())

    def on_validation_epoch_end(self):
        self.log("val/force_mae", self.val_mae.compute(), prog_bar=True)
        self.log("val/force_mae_uncorrected", self.val_mae_uncorrected.compute())
        self.val_mae.reset()
        self.val_mae_uncorrected.reset()

    def configure_optimizers(self):
        return adamw_warmup_linear(self)


# Shared trainer defaults; experiment configs under configs/ override what they change.
TRAINER_DEFAULTS = {
    "gradient_clip_val": 1.0,
    "use_distributed_sampler": False,  # the size-aware batch sampler shards by rank itself
    "log_every_n_steps": 20,
    "default_root_dir": "runs/default",
}


def _checkpoint_dir(root: str | None) -> str:
    return str(Path(root or TRAINER_DEFAULTS["default_root_dir"]) / "checkpoints")


class LastCheckpointAtEnd(L.Callback):
    """Write every ``save_last`` checkpoint callback's ``last.ckpt`` when fit ends, too.

    With ``every_n_train_steps`` a :class:`ModelCheckpoint` saves only on those steps, so a
    schedule of 2,310 steps would end with ``last.ckpt`` at step 2,200 and the end-of-schedule
    weights (what the benchmarks compare) would be lost.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "save_last", False) and callback.dirpath:
                name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
                trainer.save_checkpoint(os.path.join(callback.dirpath, name))


class ConformerCLI(LightningCLI):
    """``molconf fit|validate|test|predict --config configs/<name>.yaml``.

    Adds to every run: checkpoints (best by ``val/d_mae`` and ``last.ckpt``, also written when
    fit ends; options under ``checkpoint.*``), a learning-rate monitor, and CSV + TensorBoard logs under
    ``trainer.default_root_dir`` unless the config sets ``trainer.logger``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": f"val/{K.D_MAE}",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:02d}-{step}",
        })
        # Checkpoints live at a fixed place per run folder, so `--ckpt_path last` finds them.
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        cfg = self._get(self.config_init, "trainer", default={})
        if cfg.get("logger") in (None, True):
            root = cfg.get("default_root_dir") or TRAINER_DEFAULTS["default_root_dir"]
            kwargs["logger"] = [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tensorboard")]
        callbacks = list(kwargs.pop("callbacks", None) or []) + [LearningRateMonitor("step"), LastCheckpointAtEnd()]
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def run_lightning_cli(args: list[str]) -> None:
    # Subclass mode: a config names its module and data classes (``class_path``), so other
    # LightningModules (e.g. the diffusion denoiser) train under the same command.
    ConformerCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
    )
