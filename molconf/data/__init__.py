"""Data: readers, graph featurisation, on-disk caches, datasets and batching."""

from __future__ import annotations

import importlib

from rdkit import Chem

from molconf.errors import MoleculeError

# name -> submodule; loaded on first access (PEP 562), so importing one submodule (e.g. the
# featurisation that prediction needs) does not import PyG, the caches and the data builders
_LAZY = {
    "GraphStore": "cache",
    "default_cache_dir": "cache",
    "ConformerDataset": "dataset",
    "SizeAwareBatchSampler": "dataset",
    "collate_dense": "dataset",
    "collate_graphs": "dataset",
    "graph_to_data": "dataset",
    "featurize": "features",
    "load_dataset": "load",
    "load_qm9": "prepare",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"molconf.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'molconf.data' has no attribute {name!r}")


def batch_from_mols(mols: list[Chem.Mol], pe_dim: int = 32, stereo: bool = False) -> dict:
    """Dense batch from RDKit ``Mol``s with explicit H (coordinates if they have conformers);
    ``stereo``: with the specified stereo of each (for ``ConformerTransformer(stereo=True)``)."""
    from molconf.data.dataset import collate_graphs
    from molconf.data.features import featurize

    return collate_graphs([featurize(m, stereo=stereo) for m in mols], pe_dim)


def batch_from_smiles(smiles: list[str], pe_dim: int = 32, stereo: bool = False) -> dict:
    """Dense batch from SMILES (hydrogens added, no coordinates: ``pos`` is zero)."""
    mols = []
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is None:
            raise MoleculeError(s, "invalid SMILES")
        mols.append(Chem.AddHs(m))
    return batch_from_mols(mols, pe_dim, stereo)


__all__ = [
    "ConformerDataset",
    "GraphStore",
    "SizeAwareBatchSampler",
    "batch_from_mols",
    "batch_from_smiles",
    "collate_dense",
    "collate_graphs",
    "default_cache_dir",
    "featurize",
    "graph_to_data",
    "load_dataset",
    "load_qm9",
]
