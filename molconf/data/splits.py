"""The committed data-set splits (``datasets/<name>/split_<part>.npy``, data-set ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPLIT_PARTS = ("train", "val", "test")


def default_split_dir(dataset: str) -> Path:
    """``datasets/<dataset>`` of this repository (found next to the package, else in cwd)."""
    here = Path(__file__).resolve().parents[2] / "datasets" / dataset
    return here if here.is_dir() else Path("datasets") / dataset


def load_split(dataset: str, part: str, split_dir: str | Path | None = None) -> np.ndarray:
    """Data-set ids of one split part, as int64."""
    if part not in SPLIT_PARTS:
        raise ValueError(f"split part must be one of {SPLIT_PARTS}, got {part!r}")
    path = Path(split_dir or default_split_dir(dataset)) / f"split_{part}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    return np.load(path).astype(np.int64)
