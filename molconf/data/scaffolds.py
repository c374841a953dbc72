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
    parts: dict[str, list[int]] = {p: [] for p in SPLIT_PARTS}
    return _fill(parts, groups, _targets(len(ids), fractions), seed)


def _fill(parts: dict[str, list[int]], groups: dict[str, list[int]], targets: dict[str, int],
          seed: int) -> dict[str, np.ndarray]:
    """Add whole scaffold groups to ``parts``: large groups first, then the rest, each in a
    seeded order; a group goes to train while it fits, else val while it fits, else test."""
    keys = sorted(groups)  # order-independent starting point for the seeded shuffle
    big_limit = max(1, min(targets["val"], targets["test"]) // 2)
    rng = np.random.default_rng(seed)
    big = [keys[k] for k in rng.permutation(len(keys)) if len(groups[keys[k]]) > big_limit]
    small = [keys[k] for k in rng.permutation(len(keys)) if len(groups[keys[k]]) <= big_limit]
    for key in big + small:
        members = groups[key]
        for part in SPLIT_PARTS:
            if part == "test" or len(parts[part]) + len(members) <= targets[part]:
                parts[part].extend(members)
                break
    return {p: np.sort(np.asarray(parts[p], dtype=np.int64)) for p in SPLIT_PARTS}


def extend_scaffold_split(
    ids: Sequence[int],
    smiles: Sequence[str],
    previous: dict[str, Sequence[int]],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split a grown data set so that every molecule of an earlier split keeps its part.

    A data set that grows (a resumed build, merged again) would get a new split from
    :func:`scaffold_split`, moving old test molecules into train and changing every
    benchmark drawn from the old test split. Here the old ids keep their parts, a new
    molecule whose scaffold the old split already placed joins that part (scaffold groups
    stay whole, so no scaffold crosses parts), and the new scaffolds fill the parts towards
    ``fractions`` of the whole set with the rule of :func:`scaffold_split` (large groups
    first, each to train while it fits, else val, else test).

    Parameters
    ----------
    ids, smiles : sequences
        Every molecule of the grown set (old and new).
    previous : dict
        The earlier split, ``{"train": ids, "val": ids, "test": ids}``; each id must be in
        ``ids`` (a molecule cannot leave a data set by growing it).
    fractions, seed
        As in :func:`scaffold_split`.

    Returns
    -------
    dict
        ``{"train": ids, "val": ids, "test": ids}``, int64 arrays; each starts with its part of
        ``previous`` in that order, then its new ids sorted — so a part's first k ids stay its
        first k however the set grows (benchmarks that take a split's first N keep their
        molecules, also when new ids fall between old ones, as a top-up draw's do).

    Examples
    --------
    >>> old = {"train": [0], "val": [1], "test": [2]}
    >>> new = extend_scaffold_split([0, 1, 2, 3, 4], ["c1ccccc1C", "C1CCCCC1C", "c1ccncc1C", "c1ccncc1O", "CCO"],
    ...                             old, (0.6, 0.2, 0.2))
    >>> {p: v.tolist() for p, v in new.items()}  # 3 shares 2's scaffold: test; 4 is new: train
    {'train': [0, 4], 'val': [1], 'test': [2, 3]}
    """
    if len(ids) != len(smiles):
        raise ValueError("ids and smiles must have the same length")
    of_id = {int(i): s for i, s in zip(ids, smiles)}
    old_part: dict[int, str] = {}
    for part in SPLIT_PARTS:
        for i in previous.get(part, ()):
            i = int(i)
            if i in old_part:
                raise ValueError(f"molecule id {i} is in both {old_part[i]!r} and {part!r} of the earlier split")
            old_part[i] = part
    missing = sorted(set(old_part) - set(of_id))
    if missing:
        raise ValueError(f"{len(missing)} molecule id(s) of the earlier split are not in the grown data set "
                         f"(first: {missing[:5]}); a split can only be extended by adding molecules")
    scaffold_part: dict[str, str] = {}
    for i, part in old_part.items():
        scaffold_part.setdefault(murcko_scaffold(of_id[i]), part)
    parts: dict[str, list[int]] = {p: [] for p in SPLIT_PARTS}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, smi in of_id.items():
        if i in old_part:
            parts[old_part[i]].append(i)
            continue
        scaffold = murcko_scaffold(smi)
        if scaffold in scaffold_part:
            parts[scaffold_part[scaffold]].append(i)
        else:
            groups[scaffold].append(i)
    filled = _fill(parts, groups, _targets(len(of_id), fractions), seed)
    out = {}
    for part, part_ids in filled.items():
        old = [int(i) for i in previous.get(part, ())]
        kept = set(old)
        out[part] = np.asarray(old + sorted(int(i) for i in part_ids if int(i) not in kept), dtype=np.int64)
    return out
