"""Graph featurisation: OGB-style categorical atom features, bonds, Laplacian encoding.

Everything a model needs from an RDKit ``Mol`` with explicit hydrogens, as NumPy arrays in
the molecule's own atom order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem

from molconf import _rdkit as _rd

# Vocabulary of each categorical feature; a value outside the list maps to the extra last
# index ("misc"), as OGB does. The order of this tuple is the feature column order.
_CHIRALITY = (
    Chem.ChiralType.CHI_UNSPECIFIED,
    Chem.ChiralType.CHI_TETRAHEDRAL_CW,
    Chem.ChiralType.CHI_TETRAHEDRAL_CCW,
    Chem.ChiralType.CHI_OTHER,
)
_HYBRIDISATION = (
    Chem.HybridizationType.SP,
    Chem.HybridizationType.SP2,
    Chem.HybridizationType.SP3,
    Chem.HybridizationType.SP3D,
    Chem.HybridizationType.SP3D2,
)
ATOM_FEATURE_VOCAB: tuple[tuple[str, tuple], ...] = (
    ("atomic_num", tuple(range(1, 119))),
    ("chirality", _CHIRALITY),
    ("degree", tuple(range(0, 11))),
    ("formal_charge", tuple(range(-5, 6))),
    ("num_hs", tuple(range(0, 9))),
    ("radical_electrons", tuple(range(0, 5))),
    ("hybridisation", _HYBRIDISATION),
    ("is_aromatic", (False, True)),
    ("is_in_ring", (False, True)),
)
# Size of each embedding table: the vocabulary plus "misc".
ATOM_FEATURE_DIMS: tuple[int, ...] = tuple(len(v) + 1 for _, v in ATOM_FEATURE_VOCAB)
NUM_ATOM_FEATURES = len(ATOM_FEATURE_VOCAB)

_LOOKUP = [{value: i for i, value in enumerate(vocab)} for _, vocab in ATOM_FEATURE_VOCAB]


def _atom_values(atom: Chem.Atom) -> tuple:
    return (
        atom.GetAtomicNum(),
        atom.GetChiralTag(),
        atom.GetDegree(),
        atom.GetFormalCharge(),
        # With explicit H the implicit count is 0; count H neighbours too so the feature
        # carries the same information as on an implicit-H graph.
        atom.GetTotalNumHs(includeNeighbors=True),
        atom.GetNumRadicalElectrons(),
        atom.GetHybridization(),
        atom.GetIsAromatic(),
        atom.IsInRing(),
    )


def atom_features(mol: Chem.Mol, atoms: list[Chem.Atom] | None = None) -> np.ndarray:
    """Categorical atom features, shape (N, 9), dtype uint8.

    Examples
    --------
    >>> m = Chem.AddHs(Chem.MolFromSmiles("O"))
    >>> atom_features(m)[0].tolist()  # O: Z=8 -> 7, unspecified, degree 2, charge 0 -> 5, 2 H
    [7, 0, 2, 5, 2, 0, 2, 0, 0]
    """
    rows = []
    for atom in _rd.atoms(mol) if atoms is None else atoms:
        values = _atom_values(atom)
        rows.append([table.get(v, len(table)) for table, v in zip(_LOOKUP, values)])
    return np.asarray(rows, dtype=np.uint8).reshape(-1, NUM_ATOM_FEATURES)


_BOND_CODES = {
    Chem.BondType.SINGLE: 1,
    Chem.BondType.DOUBLE: 2,
    Chem.BondType.TRIPLE: 3,
    Chem.BondType.AROMATIC: 4,
}


def bond_list(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Bonds once each: index pairs (E, 2) int16 and bond-type codes (E,) uint8.

    Codes: 1 single, 2 double, 3 triple, 4 aromatic, 0 anything else.
    """
    pairs, types = [], []
    for bond in _rd.bonds(mol):
        pairs.append((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        types.append(_BOND_CODES.get(bond.GetBondType(), 0))
    return (
        np.asarray(pairs, dtype=np.int16).reshape(-1, 2),
        np.asarray(types, dtype=np.uint8),
    )


def laplacian_eigenvectors(num_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """Eigenvectors of the normalised Laplacian ``I − D^-½ A D^-½``, all N columns.

    Columns are ordered by ascending eigenvalue; shape (N, N), float32. Isolated atoms get
    ``D^-½ = 0`` (their row of the Laplacian is the identity row). Eigenvector signs are
    arbitrary; models flip them at random during training.

    Examples
    --------
    >>> v = laplacian_eigenvectors(3, np.array([[0, 1], [1, 2]]))
    >>> v.shape, bool(np.allclose(v.T @ v, np.eye(3), atol=1e-5))
    ((3, 3), True)
    """
    adj = np.zeros((num_atoms, num_atoms), dtype=np.float64)
    if len(bonds):
        adj[bonds[:, 0], bonds[:, 1]] = 1.0
        adj[bonds[:, 1], bonds[:, 0]] = 1.0
    deg = adj.sum(1)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    lap = np.eye(num_atoms) - inv_sqrt[:, None] * adj * inv_sqrt[None, :]
    _, vecs = np.linalg.eigh(lap)
    return vecs.astype(np.float32)


@dataclass
class StereoTuples:
    """The handedness a molecule's graph specifies, in a form a network can read.

    RDKit's chiral tags (CW / CCW) refer to the order of an atom's bonds in the ``Mol``, which a
    permutation-equivariant network cannot see. Here each tetrahedral stereocentre lists its
    neighbours by descending CIP rank (RDKit's legacy ranks: a function of the graph alone; a
    lone pair counts as the lowest), with ``+1`` where, looking from the first of them towards the
    centre, the others turn counter-clockwise in that order and ``−1`` where they turn clockwise;
    each stereo double bond ``b=c`` lists ``a`` (highest-ranked neighbour of ``b``) and ``d`` (of
    ``c``), with ``+1`` for Z (``a`` and ``d`` on the same side) and ``−1`` for E.
    """

    centres: np.ndarray  # (S, 5) int64: centre, neighbours by descending CIP rank (-1 pads a 3-neighbour centre)
    centre_signs: np.ndarray  # (S,) float32: +1 counter-clockwise, -1 clockwise (module docstring)
    double_bonds: np.ndarray  # (T, 4) int64: a, b, c, d of a stereo double bond b=c
    double_signs: np.ndarray  # (T,) float32: +1 Z (cis), -1 E (trans)


def _parity(order: list[int]) -> int:
    """+1 for an even permutation of ``range(len(order))``, −1 for an odd one."""
    sign = 1
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            if order[i] > order[j]:
                sign = -sign
    return sign


def stereo_tuples(mol: Chem.Mol) -> StereoTuples:
    """:class:`StereoTuples` of a molecule's *specified* stereo (from its tags, not its coordinates).

    The sign is RDKit's tag carried over to the CIP order: CCW / CW relative to the bond order
    (an implicit neighbour, a lone pair, counted last), times the parity of the permutation
    from the bond order to the CIP order.

    Examples
    --------
    >>> a = stereo_tuples(Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)O")))
    >>> b = stereo_tuples(Chem.AddHs(Chem.MolFromSmiles("C[C@@H](N)O")))
    >>> a.centres.tolist() == b.centres.tolist(), a.centre_signs.tolist(), b.centre_signs.tolist()
    (True, [-1.0], [1.0])
    >>> stereo_tuples(Chem.AddHs(Chem.MolFromSmiles("C/C=C/C"))).double_signs.tolist()  # E
    [-1.0]
    """
    mol = Chem.Mol(mol)
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)  # legacy CIP ranks; tags kept on real centres only
    rank = [int(a.GetProp("_CIPRank")) if a.HasProp("_CIPRank") else 0 for a in _rd.atoms(mol)]
    tags = {Chem.ChiralType.CHI_TETRAHEDRAL_CCW: 1, Chem.ChiralType.CHI_TETRAHEDRAL_CW: -1}
    centres, centre_signs = [], []
    for atom in _rd.atoms(mol):
        if atom.GetChiralTag() not in tags or not atom.HasProp("_CIPCode"):
            continue
        bond_order = [b.GetOtherAtomIdx(atom.GetIdx()) for b in atom.GetBonds()]
        if len(bond_order) not in (3, 4):
            continue
        bond_order += [-1] * (4 - len(bond_order))  # the lone pair: last in bond order, lowest rank
        by_rank = sorted(range(4), key=lambda k: -rank[bond_order[k]] if bond_order[k] >= 0 else 1 << 30)
        centres.append([atom.GetIdx(), *(bond_order[k] for k in by_rank)])
        centre_signs.append(float(tags[atom.GetChiralTag()] * _parity(by_rank)))
    bonds, bond_signs = [], []
    for bond in _rd.bonds(mol):
        stereo = bond.GetStereo()
        if bond.GetBondType() != Chem.BondType.DOUBLE or stereo not in (Chem.BondStereo.STEREOE,
                                                                         Chem.BondStereo.STEREOZ):
            continue
        b, c = bond.GetBeginAtom(), bond.GetEndAtom()
        a = max((n.GetIdx() for n in b.GetNeighbors() if n.GetIdx() != c.GetIdx()), key=lambda i: rank[i])
        d = max((n.GetIdx() for n in c.GetNeighbors() if n.GetIdx() != b.GetIdx()), key=lambda i: rank[i])
        bonds.append([a, b.GetIdx(), c.GetIdx(), d])
        bond_signs.append(1.0 if stereo == Chem.BondStereo.STEREOZ else -1.0)
    return StereoTuples(np.asarray(centres, np.int64).reshape(-1, 5), np.asarray(centre_signs, np.float32),
                        np.asarray(bonds, np.int64).reshape(-1, 4), np.asarray(bond_signs, np.float32))


@dataclass
class GraphArrays:
    """One featurised molecule, in the molecule's atom order."""

    atomic_numbers: np.ndarray  # (N,) uint8
    atom_features: np.ndarray  # (N, 9) uint8
    bonds: np.ndarray  # (E, 2) int16
    bond_types: np.ndarray  # (E,) uint8
    lap_pe: np.ndarray  # (N, N) float32
    pos: np.ndarray | None  # (N, 3) float32, None when the molecule has no conformer
    # the specified stereo (featurize fills it; graphs read from a cache leave it to the dataset)
    stereo: StereoTuples | None = None

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)


def featurize(mol: Chem.Mol, conf_id: int = -1, stereo: bool = False) -> GraphArrays:
    """Featurise a sanitised RDKit ``Mol`` with explicit H (coordinates if it has a conformer);
    with ``stereo``, also its :func:`stereo_tuples` (for models that read them)."""
    atoms = _rd.atoms(mol)
    z = np.asarray([a.GetAtomicNum() for a in atoms], dtype=np.uint8)
    bonds, types = bond_list(mol)
    pos = None
    if mol.GetNumConformers():
        pos = mol.GetConformer(conf_id).GetPositions().astype(np.float32)
    return GraphArrays(
        atomic_numbers=z,
        atom_features=atom_features(mol, atoms),
        bonds=bonds,
        bond_types=types,
        lap_pe=laplacian_eigenvectors(len(z), bonds),
        pos=pos,
        stereo=stereo_tuples(mol) if stereo else None,
    )
