"""Data: readers, graph featurisation, on-disk caches, datasets and batching."""

from __future__ import annotations

from rdkit import Chem

from molconf.data.cache import GraphStore, default_cache_dir
from molconf.data.dataset import (
    ConformerDataset,
    SizeAwareBatchSampler,
    collate_dense,
    collate_graphs,
    graph_to_data,
)
from molconf.data.features import featurize
from molconf.data.load import load_dataset
from molconf.data.prepare import load_qm9
from molconf.errors import MoleculeError


def batch_from_mols(mols: list[Chem.Mol], pe_dim: int = 32) -> dict:
    """Dense batch from RDKit ``Mol``s with explicit H (coordinates if they have conformers)."""
    return collate_graphs([featurize(m) for m in mols], pe_dim)


def batch_from_smiles(smiles: list[str], pe_dim: int = 32) -> dict:
    """Dense batch from SMILES (hydrogens added, no coordinates: ``pos`` is zero)."""
    mols = []
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is None:
            raise MoleculeError(s, "invalid SMILES")
        mols.append(Chem.AddHs(m))
    return batch_from_mols(mols, pe_dim)


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
