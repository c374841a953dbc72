"""Saving and loading denoisers (weights files and Lightning checkpoints of DenoiserModule)."""

from __future__ import annotations

from pathlib import Path

import torch

from molconf.diffusion.model import EquivariantDenoiser
from molconf.models.io import build_from_file, is_shipped, read_model_file, write_card_sha256

FILE_KIND = "molconf.diffusion.EquivariantDenoiser"


def save_denoiser(model: EquivariantDenoiser, path: str | Path, meta: dict | None = None) -> Path:
    """Write configuration + weights (+ metadata, e.g. elements and max_atoms of the training data,
    and the sampler settings ``generate`` reads: ``start``, ``sigma_start``, ``steps``). A card
    beside the file, if there is one (always, in the package's weights folder), records its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": FILE_KIND, "config": model.config, "state_dict": model.state_dict(), "meta": meta or {}}, path)
    write_card_sha256(path, create=is_shipped(path))  # a card beside it records the new hash
    return path


def load_denoiser(path: str | Path, map_location: str = "cpu") -> tuple[EquivariantDenoiser, dict]:
    """Rebuild a denoiser from :func:`save_denoiser` output or a ``DenoiserModule`` checkpoint.

    Returns the model in eval mode and the file's metadata. Raises ``ValueError`` naming the
    file if it holds no denoiser (e.g. a checkpoint of the conformer regressors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"denoiser file {path} not found")
    config, state, meta = read_model_file(path, map_location)
    if config is None or state is None or "blind" not in config:
        raise ValueError(f"{path}: no denoiser configuration or weights in the file "
                         "(a conformer-regressor checkpoint? use molconf predict for those)")
    return build_from_file(EquivariantDenoiser, path, config, state), meta
