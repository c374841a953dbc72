"""Bemis–Murcko scaffold split: molecules that share a ring system land in the same part.

A random split puts near-copies of a test molecule (same scaffold, another substituent) in
the training set; grouping by scaffold asks the model to generalise to unseen ring systems,
the usual setting for drug-like data sets such as MOSES.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from molconf._rdkit import mol_from_smiles_quietly

from molconf.data.splits import SPLIT_PARTS


def murcko_scaffold(smiles: str) -> str:
    """Canonical Bemis–Murcko scaffold SMILES, without stereo.

    Acyclic molecules (and unreadable SMILES) have the empty scaffold ``""``; they form one
    group, as in the usual scaffold splits.

    Examples
    --------
    >>> murcko_scaffold("Cc1ccccc1CCO"), murcko_scaffold("CCO")
    ('c1ccccc1', '')
    """
    mol = mol_from_smiles_quietly(smiles)
    if mol is None:
        return ""
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def _targets(n: int, fractions: Sequence[float]) -> dict[str, int]:
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def scaffold_split(
    ids: Sequence[int], smiles: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Assign whole scaffold groups to train / val / test, deterministically.

    Groups larger than half the smaller of the val/test targets are placed first (in a
    seeded random order), then the rest (seeded random order); each group goes to train
    while it fits, else to val while it fits, else to test. Placing the big groups first
    keeps them in train, so val and test are made of many small scaffolds and hit their
    sizes closely. The result depends only on the (id, SMILES) pairs and the seed, not on
    their order.

    Parameters
    ----------
    ids : sequence of int
        Molecule ids (what the split files store).
    smiles : sequence of str
        SMILES of each id, from which the scaffold is computed.
    fractions : (float, float, float)
        Target train / val / test fractions of molecules.
    seed : int
        Seed of the group order.

    Returns
    -------
    dict
        ``{"train": ids, "val": ids, "test": ids}``, sorted int64 arrays.
    """
    if len(ids) != len(smiles):
        raise ValueError("ids and smiles must have the same length")
    groups: dict[str, list[int]] = defaultdict(list)
    for mol_id, smi in zip(ids, smiles):
        groups[murcko_scaffold(smi)].append(int(mol_id))
    targets = _targets(len(ids), fractions)
    keys = sorted(groups)  # order-independent starting point for the seeded shuffle
    big_limit = max(1, min(targets["val"], targets["test"]) // 2)
    rng = np.random.default_rng(seed)
    big = [keys[k] for k in rng.permutation(len(keys)) if len(groups[keys[k]]) > big_limit]
    small = [keys[k] for k in rng.permutation(len(keys)) if len(groups[keys[k]]) <= big_limit]
    parts: dict[str, list[int]] = {p: [] for p in SPLIT_PARTS}
    for key in big + small:
        members = groups[key]
        for part in SPLIT_PARTS:
            if part == "test" or len(parts[part]) + len(members) <= targets[part]:
                parts[part].extend(members)
                break
    return {p: np.sort(np.asarray(parts[p], dtype=np.int64)) for p in SPLIT_PARTS}
