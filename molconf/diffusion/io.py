"""Saving and loading denoisers (weights files and Lightning checkpoints of DenoiserModule)."""

from __future__ import annotations

from pathlib import Path

import torch

from molconf.diffusion.model import EquivariantDenoiser

FILE_KIND = "molconf.diffusion.EquivariantDenoiser"


def save_denoiser(model: EquivariantDenoiser, path: str | Path, meta: dict | None = None) -> Path:
    """Write configuration + weights (+ metadata, e.g. elements and max_atoms of the training data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": FILE_KIND, "config": model.config, "state_dict": model.state_dict(), "meta": meta or {}}, path)
    return path


def load_denoiser(path: str | Path, map_location: str = "cpu") -> tuple[EquivariantDenoiser, dict]:
    """Rebuild a denoiser from :func:`save_denoiser` output or a ``DenoiserModule`` checkpoint.

    Returns the model in eval mode and the file's metadata. Raises ``ValueError`` naming the
    file if it holds no denoiser (e.g. a checkpoint of the conformer regressors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"denoiser file {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated / corrupted / not a torch file
        raise ValueError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a molconf denoiser file")
    if "hyper_parameters" in ckpt:  # Lightning checkpoint
        config = ckpt["hyper_parameters"].get("model_config")
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        meta = {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
                "train_seconds": ckpt.get("molconf_train_seconds")}
    else:
        config, state, meta = ckpt.get("config"), ckpt.get("state_dict"), ckpt.get("meta", {})
    if config is None or state is None or "blind" not in config:
        raise ValueError(f"{path}: no denoiser configuration or weights in the file "
                         "(a conformer-regressor checkpoint? use molconf predict for those)")
    model = EquivariantDenoiser(**config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the stored configuration ({err})") from None
    return model.eval(), meta
