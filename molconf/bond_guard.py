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
outside ``[(1 − tol) · expected, (1 + tol) · expected]`` with ``tol = 0.25`` (C–H: 0.80–1.34 Å,
C–C: 1.14–1.90 Å, C=O: 0.92–1.53 Å, O–H: 0.73–1.21 Å). In the GFN2-xTB ground states of
moses_xtb every bond is within 0.78–1.06 of ``r_i + r_j`` whatever its order, so these bounds
leave room for strained and unusual bonds; what falls outside them is not a bond.

Repair
------
Most impossible bonds in predictions are a terminal atom (a hydrogen, mostly of a CH₃ or NH₂
whose rotor the network averaged towards its axis) too close to or too far from its anchor.
The free atoms are: for a bad bond to a terminal atom, every terminal atom on the same anchor;
for a bad bond between two non-terminal atoms, both and their terminal neighbours. They are
minimised with MMFF94's bonded terms only (stretch, bend, stretch–bend, out-of-plane; no
torsions, van der Waals or charges, so a rotor stays where the network put it) while every
other atom is held fixed. If a bond is still out of bounds, their bonded neighbours are freed
too; then, as a last resort, the whole molecule is minimised with the full force field (UFF
wherever MMFF94 has no parameters). A terminal atom that no force field can move is put at the
expected length along its bond. What was done is returned as a note.

Making bonds physical costs some distance accuracy: an averaged rotor's hydrogens sit where
the mean distance error is smallest, not where a hydrogen can be
(``benchmarks/results/bond_guard.md`` measures it).

>>> from rdkit import Chem
>>> from rdkit.Chem import AllChem
>>> mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
>>> AllChem.EmbedMolecule(mol, randomSeed=7)
0
>>> conf = mol.GetConformer()
>>> o = conf.GetAtomPosition(1)
>>> conf.SetAtomPosition(5, (o.x + 2.5, o.y, o.z))  # the hydroxyl H 2.5 Å from its O
>>> [str(p) for p in impossible_bonds(mol)]
['O1–H5 2.50 Å (bounds 0.73–1.21)']
>>> note = guard_bonds(mol)
>>> note.startswith("bond guard: 1 impossible bond (O1–H5 2.50 Å (bounds 0.73–1.21)); repaired")
True
>>> impossible_bonds(mol)
[]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

TOLERANCE = 0.25
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
    return _outside(mol, conf_id, bond_bounds(mol, tolerance))


def _outside(mol: Chem.Mol, conf_id: int, bounds: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[BondProblem]:
    pairs, low, high = bounds
    if not len(pairs):
        return []
    pos = mol.GetConformer(conf_id).GetPositions()
    length = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)  # (n_bonds,)
    bad = np.flatnonzero((length < low) | (length > high) | ~np.isfinite(length))
    return [BondProblem(int(pairs[k, 0]), int(pairs[k, 1]), float(length[k]), float(low[k]), float(high[k]),
                        _label(mol, int(pairs[k, 0]), int(pairs[k, 1]))) for k in bad]


def _label(mol: Chem.Mol, i: int, j: int) -> str:
    return f"{mol.GetAtomWithIdx(i).GetSymbol()}{i}–{mol.GetAtomWithIdx(j).GetSymbol()}{j}"


def _force_field(mol: Chem.Mol, conf_id: int, bonded_only: bool):
    """MMFF94 (its bonded terms only, if asked), else UFF, else None; with the field's name."""
    props = AllChem.MMFFGetMoleculeProperties(mol)
    if props is not None:
        if bonded_only:
            props.SetMMFFTorsionTerm(False)
            props.SetMMFFVdWTerm(False)
            props.SetMMFFEleTerm(False)
        name = "MMFF94 bonded-term" if bonded_only else "MMFF94"
        return AllChem.MMFFGetMoleculeForceField(mol, props, confId=conf_id), name
    if AllChem.UFFHasAllMoleculeParams(mol):
        return AllChem.UFFGetMoleculeForceField(mol, confId=conf_id), "UFF"
    return None, "none"


def polish_atoms(mol: Chem.Mol, free: set[int] | list[int], conf_id: int = -1, max_iters: int = 200,
                 bonded_only: bool = False, jitter: float = 0.0) -> str:
    """Minimise MMFF94 (UFF where MMFF94 has no parameters) over the ``free`` atoms of ``mol``'s
    conformer, in place, every other atom held fixed; returns the field's name (``"none"``: no
    field has parameters, nothing moved).

    ``bonded_only`` drops MMFF94's torsion, van der Waals and charge terms. ``jitter`` (Å) first
    displaces the free atoms by seeded noise: atoms on top of each other give the minimiser no
    direction. A minimiser that fails leaves the conformer as it was."""
    free = set(free)
    conf = mol.GetConformer(conf_id)
    start = conf.GetPositions()
    if jitter:
        noise = np.random.default_rng(0).normal(scale=jitter, size=start.shape)
        for k in free:
            conf.SetAtomPosition(k, (start[k] + noise[k]).tolist())
    ff, name = _force_field(mol, conf_id, bonded_only)
    if ff is None:
        return name
    for k in range(mol.GetNumAtoms()):
        if k not in free:
            ff.AddFixedPoint(k)
    try:
        ff.Initialize()
        ff.Minimize(maxIts=max_iters)
        pos = np.asarray(ff.Positions()).reshape(-1, 3)
    except RuntimeError:  # RDKit's "bad direction in linearSearch" on a degenerate geometry
        pos = start
    if not np.isfinite(pos).all():
        pos = start
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


def _free_atoms(mol: Chem.Mol, problems: list[BondProblem]) -> set[int]:
    """The atoms a repair moves first: for a bad bond to a terminal atom, every terminal atom on
    the same anchor (a CH₃'s three H); otherwise both atoms and their terminal neighbours."""
    free: set[int] = set()
    for p in problems:
        a, b = mol.GetAtomWithIdx(p.begin), mol.GetAtomWithIdx(p.end)
        if b.GetDegree() == 1 and a.GetDegree() != 1:
            a, b = b, a
        if a.GetDegree() == 1:  # a terminal atom on anchor b
            free |= {n.GetIdx() for n in b.GetNeighbors() if n.GetDegree() == 1}
        else:
            free |= {a.GetIdx(), b.GetIdx()}
            free |= {n.GetIdx() for x in (a, b) for n in x.GetNeighbors() if n.GetDegree() == 1}
    return free


def guard_bonds(mol: Chem.Mol, conf_id: int = -1, tolerance: float = TOLERANCE, max_iters: int = 200) -> str | None:
    """Repair impossible bond lengths of ``mol``'s conformer in place.

    Returns None when every bond is within bounds (nothing moved), else a note saying which
    bonds were out of bounds, how they were repaired, and any left out of bounds.
    """
    bounds = bond_bounds(mol, tolerance)  # the graph does not change: computed once
    problems = _outside(mol, conf_id, bounds)
    if not problems:
        return None
    found = "; ".join(map(str, problems[:3])) + (f"; … {len(problems) - 3} more" if len(problems) > 3 else "")
    head = f"bond guard: {len(problems)} impossible bond{'s' if len(problems) > 1 else ''} ({found})"
    free = _free_atoms(mol, problems)
    shell = free | {n.GetIdx() for a in free for n in mol.GetAtomWithIdx(a).GetNeighbors()}
    shell |= {n.GetIdx() for a in shell for n in mol.GetAtomWithIdx(a).GetNeighbors() if n.GetDegree() == 1}
    everything = set(range(mol.GetNumAtoms()))
    attempts = ((free, True, 0.0, max_iters), (shell, True, 0.0, max_iters),
                (everything, False, 0.0, 10 * max_iters), (everything, False, 0.05, 10 * max_iters))
    for atoms, bonded_only, jitter, iters in attempts:
        field = polish_atoms(mol, atoms, conf_id, iters, bonded_only, jitter)
        if field == "none":
            break
        if not _outside(mol, conf_id, bounds):
            if atoms == everything:
                return f"{head}; repaired by a whole-molecule {field} minimisation"
            return f"{head}; repaired by a {field} polish of {len(atoms)} atom{'s' if len(atoms) > 1 else ''} (the rest held)"
    moved = _place_terminal(mol, _outside(mol, conf_id, bounds), conf_id)
    left = _outside(mol, conf_id, bounds)
    if not left:
        return f"{head}; repaired by placing {moved} terminal atom(s) at the expected bond length"
    return f"{head}; still out of bounds after repair: " + "; ".join(map(str, left))
