"""Physically possible bond lengths in a predicted conformer: the check and a cheap repair.

A network trained on a distance loss can put a hydrogen 0.4 Å from its carbon or 2.4 Å from
its oxygen while the molecule's other distances are good. :func:`guard_bonds` finds such
bonds and repairs them with a force-field polish of the offending atoms only, so the rest of
the prediction is kept.

Bounds
------
A bond between atoms *i* and *j* of order *o* has the expected length
``s(o) · (r_i + r_j)``: ``r`` are the covalent radii of RDKit's periodic table (Cordero et
al. 2008: H 0.31, C 0.76, N 0.71, O 0.66 Å, ...) and ``s`` shortens multiple bonds (single
1.00, aromatic 0.92, double 0.86, triple 0.79, the ratios of the median lengths in the
GFN2-xTB ground states of ``datasets/moses_xtb``). A bond is **impossible** when its length is
outside ``[(1 − tol) · expected, (1 + tol) · expected]`` with ``tol = 0.15`` (C–H: 0.91–1.23 Å,
C–C: 1.29–1.75 Å, C=O: 1.06–1.44 Å). Every bond of every reference geometry of QM9's and
moses_xtb's test splits lies inside them (``tests/test_bond_guard.py``).

Repair
------
The atoms of the impossible bonds and the hydrogens bonded to them are minimised with MMFF94
(UFF where MMFF94 has no parameters) while every other atom is held fixed; if a bond is still
out of bounds, the shell of their bonded neighbours is freed too; then, as a last resort, the
whole molecule. A terminal atom that no force field can move is put at the expected length
along its bond. What was done is returned as a note.

>>> from rdkit import Chem
>>> from rdkit.Chem import AllChem
>>> mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
>>> AllChem.EmbedMolecule(mol, randomSeed=7)
0
>>> conf = mol.GetConformer()
>>> o = conf.GetAtomPosition(1)
>>> conf.SetAtomPosition(5, (o.x + 2.5, o.y, o.z))  # the hydroxyl H 2.5 Å from its O
>>> [str(p) for p in impossible_bonds(mol)]
['O1–H5 2.50 Å (bounds 0.82–1.12)']
>>> note = guard_bonds(mol)
>>> note.startswith("bond guard: 1 impossible bond (O1–H5 2.50 Å (bounds 0.82–1.12)); repaired")
True
>>> impossible_bonds(mol)
[]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

TOLERANCE = 0.15
ORDER_SCALE = {
    Chem.BondType.SINGLE: 1.00,
    Chem.BondType.AROMATIC: 0.92,
    Chem.BondType.DOUBLE: 0.86,
    Chem.BondType.TRIPLE: 0.79,
}
_PT = Chem.GetPeriodicTable()


@dataclass(frozen=True)
class BondProblem:
    """One bond whose length is outside its bounds."""

    begin: int
    end: int
    length: float
    low: float
    high: float
    label: str  # e.g. "C1–H5"

    def __str__(self) -> str:
        return f"{self.label} {self.length:.2f} Å (bounds {self.low:.2f}–{self.high:.2f})"


def bond_bounds(mol: Chem.Mol, tolerance: float = TOLERANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, low, high)``: every bond's atom pair ``(n_bonds, 2)`` and its length bounds (Å).

    Bond types outside single/aromatic/double/triple (dative, ...) are bounded as single.
    """
    n = mol.GetNumBonds()
    pairs = np.empty((n, 2), dtype=np.int64)
    expected = np.empty(n)
    for k, bond in enumerate(mol.GetBonds()):
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        pairs[k] = a.GetIdx(), b.GetIdx()
        radii = _PT.GetRcovalent(a.GetAtomicNum()) + _PT.GetRcovalent(b.GetAtomicNum())
        expected[k] = ORDER_SCALE.get(bond.GetBondType(), 1.0) * radii
    return pairs, (1 - tolerance) * expected, (1 + tolerance) * expected


def impossible_bonds(mol: Chem.Mol, conf_id: int = -1, tolerance: float = TOLERANCE) -> list[BondProblem]:
    """The bonds of ``mol``'s conformer whose lengths are outside :func:`bond_bounds`."""
    pairs, low, high = bond_bounds(mol, tolerance)
    if not len(pairs):
        return []
    pos = mol.GetConformer(conf_id).GetPositions()
    length = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)  # (n_bonds,)
    bad = np.flatnonzero((length < low) | (length > high) | ~np.isfinite(length))
    return [BondProblem(int(pairs[k, 0]), int(pairs[k, 1]), float(length[k]), float(low[k]), float(high[k]),
                        _label(mol, int(pairs[k, 0]), int(pairs[k, 1]))) for k in bad]


def _label(mol: Chem.Mol, i: int, j: int) -> str:
    return f"{mol.GetAtomWithIdx(i).GetSymbol()}{i}–{mol.GetAtomWithIdx(j).GetSymbol()}{j}"


def _force_field(mol: Chem.Mol, conf_id: int):
    """MMFF94, else UFF, else None; with the name of the one used."""
    props = AllChem.MMFFGetMoleculeProperties(mol)
    if props is not None:
        return AllChem.MMFFGetMoleculeForceField(mol, props, confId=conf_id), "MMFF94"
    if AllChem.UFFHasAllMoleculeParams(mol):
        return AllChem.UFFGetMoleculeForceField(mol, confId=conf_id), "UFF"
    return None, "none"


def _polish(mol: Chem.Mol, free: set[int], conf_id: int, max_iters: int) -> str:
    """Minimise the force field over ``free`` atoms, all others fixed; returns the field's name."""
    ff, name = _force_field(mol, conf_id)
    if ff is None:
        return name
    for k in range(mol.GetNumAtoms()):
        if k not in free:
            ff.AddFixedPoint(k)
    ff.Initialize()
    ff.Minimize(maxIts=max_iters)
    pos = np.asarray(ff.Positions()).reshape(-1, 3)
    if np.isfinite(pos).all():
        conf = mol.GetConformer(conf_id)
        for k in free:
            conf.SetAtomPosition(k, pos[k].tolist())
    return name


def _place_terminal(mol: Chem.Mol, problems: list[BondProblem], conf_id: int) -> int:
    """Put the terminal atom of each bad bond at the bond's expected length; returns how many."""
    conf = mol.GetConformer(conf_id)
    pos = conf.GetPositions()
    moved = 0
    for p in problems:
        for anchor, tip in ((p.begin, p.end), (p.end, p.begin)):
            if mol.GetAtomWithIdx(tip).GetDegree() == 1:
                v = pos[tip] - pos[anchor]
                norm = np.linalg.norm(v)
                v = v / norm if np.isfinite(norm) and norm > 1e-6 else np.array([1.0, 0.0, 0.0])
                pos[tip] = pos[anchor] + v * (p.low + p.high) / 2
                conf.SetAtomPosition(tip, pos[tip].tolist())
                moved += 1
                break
    return moved


def guard_bonds(mol: Chem.Mol, conf_id: int = -1, tolerance: float = TOLERANCE, max_iters: int = 200) -> str | None:
    """Repair impossible bond lengths of ``mol``'s conformer in place.

    Returns None when every bond is within bounds (nothing moved), else a note saying which
    bonds were out of bounds, how they were repaired, and any left out of bounds.
    """
    problems = impossible_bonds(mol, conf_id, tolerance)
    if not problems:
        return None
    found = "; ".join(map(str, problems[:3])) + (f"; … {len(problems) - 3} more" if len(problems) > 3 else "")
    head = f"bond guard: {len(problems)} impossible bond{'s' if len(problems) > 1 else ''} ({found})"
    bad_atoms = {a for p in problems for a in (p.begin, p.end)}
    hydrogens = {n.GetIdx() for a in bad_atoms for n in mol.GetAtomWithIdx(a).GetNeighbors() if n.GetAtomicNum() == 1}
    shell = {n.GetIdx() for a in bad_atoms for n in mol.GetAtomWithIdx(a).GetNeighbors()}
    shell |= {n.GetIdx() for a in shell for n in mol.GetAtomWithIdx(a).GetNeighbors() if n.GetAtomicNum() == 1}
    attempts = [(bad_atoms | hydrogens, "local"), (bad_atoms | hydrogens | shell, "local"),
                (set(range(mol.GetNumAtoms())), "whole-molecule")]
    for free, scope in attempts:
        field = _polish(mol, free, conf_id, max_iters)
        if field == "none":
            break
        left = impossible_bonds(mol, conf_id, tolerance)
        if not left:
            what = f"{len(free)} atoms" if scope == "local" else "all atoms"
            return f"{head}; repaired by a {scope} {field} polish ({what} moved, the rest held)"
    moved = _place_terminal(mol, impossible_bonds(mol, conf_id, tolerance), conf_id)
    left = impossible_bonds(mol, conf_id, tolerance)
    if not left:
        return f"{head}; repaired by placing {moved} terminal atom(s) at the expected bond length"
    return f"{head}; still out of bounds after repair: " + "; ".join(map(str, left))
