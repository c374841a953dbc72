"""One entry point for every data set: ``load_dataset(name, …)`` and its split parts.

The data module and scripts call these, so adding a data set means adding a branch here
rather than in every caller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from molconf.data.cache import GraphStore

DATASETS = ("qm9", "geom_drugs", "moses_xtb")


def _check(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def load_dataset(
    name: str,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    workers: int = 0,
    rebuild: bool = False,
    **options,
) -> GraphStore:
    """A data set as a :class:`GraphStore`, building its cache on first use.

    Parameters
    ----------
    name : str
        ``"qm9"``, ``"geom_drugs"`` or ``"moses_xtb"``.
    root : path, optional
        Where the source is: for QM9 the original XYZ archive (default: the ``qm9pack``
        wheel); for GEOM-DRUGS the release folder holding ``rdkit_folder`` (default: the
        shipped format fixture ``datasets/geom_drugs/sample``); for ``moses_xtb`` the
        ``molecules.sdf.gz`` (default: ``datasets/moses_xtb/molecules.sdf.gz``).
    cache_dir, limit, workers, rebuild
        As in :func:`~molconf.data.prepare.load_qm9` /
        :func:`~molconf.data.geom_prepare.load_geom_drugs`.
    **options
        Passed on to the data set's loader (e.g. GEOM's ``order``, ``shard_size``).
    """
    _check(name)
    if name == "qm9":
        from molconf.data.prepare import load_qm9

        return load_qm9(cache_dir, xyz=root, limit=limit, workers=workers, rebuild=rebuild, **options)
    if name == "moses_xtb":
        from molconf.data.moses_xtb import load_moses_xtb

        return load_moses_xtb(root, cache_dir, limit=limit, workers=workers, rebuild=rebuild, **options)
    from molconf.data.geom_prepare import load_geom_drugs

    return load_geom_drugs(root, cache_dir, limit=limit, workers=workers, rebuild=rebuild, **options)


def load_dataset_split(
    name: str, part: str, split_dir: str | Path | None = None, root: str | Path | None = None
) -> np.ndarray:
    """Molecule ids (as stored in the cache's ``mol_ids``) of one split part.

    QM9: ``datasets/qm9/split_<part>.npy`` (or ``split_dir``). GEOM-DRUGS: ``split_dir`` is a
    split file or a folder (:func:`~molconf.data.geom.load_geom_split`); default: the split
    shipped in the release folder ``root`` (the sample's ``split.npy``). ``moses_xtb``: the
    scaffold split ``split_<part>.npy`` beside the SDF ``root`` if there, else in
    ``datasets/moses_xtb`` (or ``split_dir``).
    """
    _check(name)
    if name == "qm9":
        from molconf.data.splits import load_split

        return load_split("qm9", part, split_dir)
    if name == "moses_xtb":
        from molconf.data.moses_xtb import split_dir_for
        from molconf.data.splits import load_split

        return load_split("moses_xtb", part, split_dir or split_dir_for(root))
    from molconf.data.geom import load_geom_split
    from molconf.data.geom_prepare import default_geom_root, default_geom_split
    from molconf.data.splits import SPLIT_PARTS

    if part not in SPLIT_PARTS:
        raise ValueError(f"split part must be one of {SPLIT_PARTS}, got {part!r}")
    where = split_dir or default_geom_split(root or default_geom_root())
    if where is None:
        raise FileNotFoundError(f"no split file in {root}; pass split_dir (e.g. torsional diffusion's split.npy)")
    return load_geom_split(where)[part]
