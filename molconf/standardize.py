"""Salts, mixtures and charged molecules as inputs of :func:`molconf.predict`.

The conformer models were trained on neutral, single-fragment molecules (QM9, MOSES: no
charged atom in either training set's drug-like part, formal charge is an atom feature).
A user's molecule is often a salt (``CC(=O)[O-].[Na+]``), a hydrochloride
(``...N(C)C.Cl``) or drawn in its physiological protonation state (``C[NH3+]``,
``[NH3+]CC(=O)[O-]``). :func:`standardize` turns such an input into two molecules:

``mol``
    what is returned to the user: the largest organic fragment
    (``rdMolStandardize.LargestFragmentChooser(preferOrganic=True)``), with its own charges,
    protons and stereo, explicit H;
``model_input``
    what the network predicts: that fragment's neutral form
    (``rdMolStandardize.Uncharger`` on the heavy-atom graph, then explicit H).

:func:`transfer_coordinates` then carries the neutral prediction over to ``mol``:

1. heavy atoms: the fragment's atoms carry their input index through the fragment choice and
   the uncharger (an atom property), so each heavy atom of ``model_input`` is mapped to one of
   ``mol``; the map is checked (a bijection, same elements, every heavy-atom bond kept) and,
   if the property were lost, rebuilt by a substructure match of the heavy-atom graphs;
2. hydrogens of a heavy atom whose H count did not change: copied, one to one;
3. hydrogens of a heavy atom whose H count changed (the protonated N, the deprotonated O):
   all of that atom's H are removed and the user's number re-placed by RDKit from the heavy
   atoms' geometry (``Chem.AddHs(addCoords=True, onlyOnAtoms=...)``: ~1.0 Å, staggered), then
   only those re-placed H are relaxed with MMFF94 (UFF where MMFF has no parameters; every
   other atom fixed), so a new N-H does not point into a neighbouring group.

The heavy-atom geometry is the neutral molecule's (a carboxylate keeps the acid's C=O / C-O
lengths, 1.21 / 1.36 Å, instead of two 1.26 Å bonds: well inside the model's own error).

Charges no proton change removes (quaternary ammonium ``C[N+](C)(C)C``, N-alkyl
pyridinium) are predicted as they are, with a note: the network then sees a formal charge
it met only in net-neutral groups (nitro, N-oxide) of its training data, and an sp3 N with
four carbons is geometrically close to the quaternary carbons it did see. Refusing them
would drop common drugs (quaternary ammonium muscle relaxants, choline esters) for a
geometry that is usually fine; the note says it is outside the training data. Net-neutral
molecules with such charges (betaines, nitro groups) are predicted as before, without note.

Radicals stay refused (:class:`~molconf.errors.MoleculeError`).

Examples
--------
>>> from rdkit import Chem
>>> form = standardize(Chem.MolFromSmiles("CC(=O)[O-].[Na+]"))
>>> Chem.MolToSmiles(Chem.RemoveHs(form.mol)), Chem.MolToSmiles(Chem.RemoveHs(form.model_input))
('CC(=O)[O-]', 'CC(=O)O')
>>> form.stripped, form.changed
(['[Na+]'], True)
>>> for note in form.notes:
...     print(note)
kept the largest organic fragment CC(=O)[O-]; stripped [Na+]
predicted as its neutral form CC(=O)O; returned with its own charges and protons (CC(=O)[O-])
>>> from rdkit.Chem import AllChem
>>> neutral = Chem.Mol(form.model_input)
>>> AllChem.EmbedMolecule(neutral, randomSeed=7)
0
>>> xyz = transfer_coordinates(form, neutral.GetConformer().GetPositions())
>>> xyz.shape == (form.mol.GetNumAtoms(), 3)
True
>>> standardize(Chem.MolFromSmiles("CCO")).changed   # neutral single molecules pass through
False
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.rdBase import BlockLogs

from molconf import _rdkit as _rd
from molconf.bond_guard import polish_atoms
from molconf.errors import MoleculeError
from molconf.metrics import mol_with_coords

SOURCE_PROP = "_molconf_src"  # input index of an atom, carried through fragment choice and uncharger
POLISH_MAX_ITERS = 200  # MMFF/UFF iterations for the re-placed hydrogens only


@dataclass
class Standardized:
    """One input made predictable.

    Attributes
    ----------
    mol : rdkit.Chem.Mol
        The molecule returned to the user: the kept fragment with its own charges, protons and
        stereo, explicit H, no conformer.
    model_input : rdkit.Chem.Mol
        What the network predicts: ``mol``'s neutral form (explicit H), or ``mol`` itself when
        nothing was neutralised.
    heavy_map : numpy.ndarray or None
        ``heavy_map[k] = (u, n)``: heavy atom ``u`` of ``mol`` is atom ``n`` of ``model_input``
        (checked); None when ``model_input is mol``.
    stripped : list of str
        SMILES of the fragments that were removed.
    notes : list of str
        What was done, for the prediction report.
    """

    mol: Chem.Mol
    model_input: Chem.Mol
    heavy_map: np.ndarray | None = None
    stripped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the network predicts another molecule than the one returned."""
        return self.model_input is not self.mol


def _smiles(mol: Chem.Mol) -> str:
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


def radical_problem(mol: Chem.Mol) -> str | None:
    """Why ``mol`` is not closed-shell, or None."""
    radicals = sum(a.GetNumRadicalElectrons() for a in _rd.atoms(mol))  # Descriptors' version: 2.5× slower
    if radicals:
        return f"radical ({radicals} unpaired electrons): the model covers closed-shell molecules"
    return None


def keep_largest_fragment(mol: Chem.Mol) -> tuple[Chem.Mol, list[str]]:
    """The largest organic fragment (``LargestFragmentChooser(preferOrganic=True)``: most atoms
    with H, then heavy atoms, ...) in the input's atom order, and the SMILES of the others.

    >>> frag, stripped = keep_largest_fragment(Chem.MolFromSmiles("[Na+].[O-]C(=O)c1ccccc1.O"))
    >>> Chem.MolToSmiles(frag), stripped
    ('O=C([O-])c1ccccc1', ['[Na+]', 'O'])
    """
    frags = Chem.GetMolFrags(mol, asMols=False, sanitizeFrags=False)
    if len(frags) == 1:
        return mol, []
    tagged = Chem.Mol(mol)
    for atom in tagged.GetAtoms():
        atom.SetIntProp(SOURCE_PROP, atom.GetIdx())
    with BlockLogs():  # RDKit logs every fragment it considers
        chosen = rdMolStandardize.LargestFragmentChooser(preferOrganic=True).choose(tagged)
    kept_atom = chosen.GetAtomWithIdx(0).GetIntProp(SOURCE_PROP)
    k = next(j for j, f in enumerate(frags) if kept_atom in f)
    pieces = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)  # ring info for force fields
    stripped = [Chem.MolFragmentToSmiles(mol, atomsToUse=list(f)) for j, f in enumerate(frags) if j != k]
    return pieces[k], stripped


def _check_heavy_map(mol: Chem.Mol, neutral: Chem.Mol, pairs: np.ndarray) -> bool:
    """Whether ``pairs`` (u in mol, n in neutral) is a bijection of the heavy atoms that keeps
    elements and every heavy-atom bond."""
    heavy_u = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    heavy_n = [a.GetIdx() for a in neutral.GetAtoms() if a.GetAtomicNum() > 1]
    if len(pairs) != len(heavy_u) or len(heavy_u) != len(heavy_n):
        return False
    if sorted(pairs[:, 0].tolist()) != heavy_u or sorted(pairs[:, 1].tolist()) != heavy_n:
        return False
    to_u = {int(n): int(u) for u, n in pairs}
    if any(mol.GetAtomWithIdx(int(u)).GetAtomicNum() != neutral.GetAtomWithIdx(int(n)).GetAtomicNum()
           for u, n in pairs):
        return False

    def heavy_bonds(m, rename=lambda i: i):
        return {frozenset((rename(b.GetBeginAtomIdx()), rename(b.GetEndAtomIdx()))) for b in m.GetBonds()
                if b.GetBeginAtom().GetAtomicNum() > 1 and b.GetEndAtom().GetAtomicNum() > 1}

    return heavy_bonds(mol) == heavy_bonds(neutral, lambda i: to_u[i])


def heavy_atom_map(mol: Chem.Mol, neutral: Chem.Mol) -> np.ndarray:
    """Pairs ``(u, n)``: heavy atom ``u`` of ``mol`` is heavy atom ``n`` of ``neutral`` (its
    neutral form, same heavy-atom graph up to charges and H).

    Read from the atoms' :data:`SOURCE_PROP` (set by :func:`standardize`) where ``neutral``
    has it; otherwise (or if that map fails the check) from a substructure match of the
    heavy-atom graphs, elements and bond orders (charges and H counts ignored; bond orders too
    if nothing matches with them). Any match is a valid map: two matches differ by a
    symmetry of the heavy-atom graph, and stereo is checked on the result anyway. Raises
    ``ValueError`` if no map keeps every heavy atom and bond.

    >>> m = Chem.AddHs(Chem.MolFromSmiles("[NH3+]CC(=O)[O-]"))
    >>> n = Chem.AddHs(Chem.MolFromSmiles("OC(=O)CN"))  # another atom order
    >>> heavy_atom_map(m, n).tolist()
    [[0, 4], [1, 3], [2, 1], [3, 2], [4, 0]]
    """
    if all(a.HasProp(SOURCE_PROP) for a in neutral.GetAtoms() if a.GetAtomicNum() > 1):
        pairs = np.array(sorted((a.GetIntProp(SOURCE_PROP), a.GetIdx()) for a in neutral.GetAtoms()
                                if a.GetAtomicNum() > 1), dtype=np.int64).reshape(-1, 2)
        if _check_heavy_map(mol, neutral, pairs):
            return pairs

    def skeleton(m, orders: bool):
        # the heavy-atom graph with elements (and bond orders, if asked) only: no charge, no H.
        # RemoveAllHs keeps the heavy atoms' relative order, so skeleton atom k is heavy atom k
        rw = Chem.RWMol(Chem.RemoveAllHs(m, sanitize=False))
        for a in rw.GetAtoms():
            a.SetFormalCharge(0)
            a.SetIsAromatic(a.GetIsAromatic() and orders)
            a.SetNumExplicitHs(0)
            a.SetNoImplicit(True)
            a.SetIsotope(0)
        for b in rw.GetBonds():
            if not orders:
                b.SetBondType(Chem.BondType.SINGLE)
                b.SetIsAromatic(False)
        rw.UpdatePropertyCache(strict=False)
        return rw.GetMol()

    heavy_u = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    heavy_n = [a.GetIdx() for a in neutral.GetAtoms() if a.GetAtomicNum() > 1]
    for orders in (True, False):  # bond orders first: C=O onto C=O, not onto the C-OH
        target, query = skeleton(mol, orders), skeleton(neutral, orders)
        if target.GetNumAtoms() != query.GetNumAtoms() or target.GetNumBonds() != query.GetNumBonds():
            break
        for match in target.GetSubstructMatches(query, uniquify=False, useChirality=False, maxMatches=64):
            pairs = np.array(sorted((heavy_u[t], heavy_n[q]) for q, t in enumerate(match)),
                             dtype=np.int64).reshape(-1, 2)
            if _check_heavy_map(mol, neutral, pairs):
                return pairs
    raise ValueError(f"cannot map the heavy atoms of {_smiles(mol)} onto {_smiles(neutral)}")


def neutral_form(mol: Chem.Mol) -> Chem.Mol | None:
    """``mol``'s neutral form with explicit H (``Uncharger`` on the heavy-atom graph), its heavy
    atoms tagged with their index in ``mol`` (:data:`SOURCE_PROP`); None when the uncharger
    changes nothing (neutral, or only charges no proton change removes).

    >>> Chem.MolToSmiles(Chem.RemoveHs(neutral_form(Chem.MolFromSmiles("C[NH3+]"))))
    'CN'
    >>> neutral_form(Chem.MolFromSmiles("C[N+](C)(C)C")) is None
    True
    """
    if not any(a.GetFormalCharge() for a in _rd.atoms(mol)):
        return None
    tagged = Chem.Mol(mol)
    for atom in tagged.GetAtoms():
        atom.SetIntProp(SOURCE_PROP, atom.GetIdx())
    # the uncharger leaves an ammonium's charge alone when its H are explicit atoms: work on
    # the heavy-atom graph (RemoveAllHs keeps chiral tags consistent)
    heavy = Chem.RemoveAllHs(tagged)
    with BlockLogs():  # RDKit logs every charge it removes
        uncharged = rdMolStandardize.Uncharger(canonicalOrder=True).uncharge(heavy)
    before = [(a.GetFormalCharge(), a.GetTotalNumHs()) for a in heavy.GetAtoms()]
    after = [(a.GetFormalCharge(), a.GetTotalNumHs()) for a in uncharged.GetAtoms()]
    if before == after:
        return None
    Chem.SanitizeMol(uncharged)
    return Chem.AddHs(uncharged)


def standardize(mol: Chem.Mol) -> Standardized:
    """Keep the largest organic fragment and predict it as its neutral form.

    Parameters
    ----------
    mol : rdkit.Chem.Mol
        A sanitised molecule (implicit or explicit H), possibly several fragments and charged.

    Returns
    -------
    Standardized
        ``mol``: the kept fragment with explicit H and no conformer; ``model_input``: its
        neutral form (``mol`` itself if already neutral); ``notes`` for the report.

    Raises
    ------
    MoleculeError
        For a radical (the molecule is named by its SMILES; callers re-label it).
    """
    frag, stripped = keep_largest_fragment(mol)
    problem = radical_problem(frag)
    if problem:
        raise MoleculeError(_smiles(frag), problem)
    notes = []
    if stripped:
        notes.append(f"kept the largest organic fragment {_smiles(frag)}; stripped {', '.join(stripped)}")
    out = Chem.AddHs(frag, addCoords=False)
    out.RemoveAllConformers()
    neutral = neutral_form(out)
    charge = Chem.GetFormalCharge(out if neutral is None else neutral)
    if neutral is None:
        if charge:
            notes.append(f"net charge {charge:+d} that no proton change removes ({_smiles(out)}): predicted as "
                         "charged, outside the models' neutral training data; expect a rougher geometry")
        return Standardized(out, out, None, stripped, notes)
    pairs = heavy_atom_map(out, neutral)
    notes.append(f"predicted as its neutral form {_smiles(neutral)}; returned with its own charges and protons "
                 f"({_smiles(out)})")
    if charge:
        notes.append(f"its neutral form keeps a net charge {charge:+d} no proton change removes: outside the "
                     "models' neutral training data; expect a rougher geometry")
    return Standardized(out, neutral, pairs, stripped, notes)


def transfer_coordinates(form: Standardized, coords: np.ndarray, polish: bool = True) -> np.ndarray:
    """Coordinates for ``form.mol`` (N_mol, 3) from a conformer of ``form.model_input``.

    Heavy atoms and the H of heavy atoms whose H count is unchanged are copied through the
    checked map; the H of the others are re-placed from the heavy-atom geometry and (with
    ``polish``) relaxed alone with a force field (see the module docstring).

    Parameters
    ----------
    form : Standardized
    coords : (N_model_input, 3) array
    polish : bool
        Relax the re-placed hydrogens (every other atom fixed).
    """
    coords = np.asarray(coords, dtype=np.float64)
    if not form.changed:
        return coords.copy()
    mol, neutral = form.mol, form.model_input
    if coords.shape != (neutral.GetNumAtoms(), 3):
        raise ValueError(f"coords have shape {coords.shape}, expected ({neutral.GetNumAtoms()}, 3)")
    out = np.full((mol.GetNumAtoms(), 3), np.nan)
    redo: list[int] = []  # heavy atoms of mol whose H are re-placed
    for u, n in form.heavy_map.tolist():
        out[u] = coords[n]
        hu = sorted(a.GetIdx() for a in mol.GetAtomWithIdx(u).GetNeighbors() if a.GetAtomicNum() == 1)
        hn = sorted(a.GetIdx() for a in neutral.GetAtomWithIdx(n).GetNeighbors() if a.GetAtomicNum() == 1)
        if len(hu) == len(hn):
            out[hu] = coords[hn]
        else:
            redo.append(u)
    if not redo:
        return out
    # mol without the H of the redo atoms, those atoms' H counts held as explicit counts
    work = Chem.RWMol(mol)
    drop = sorted((a.GetIdx() for u in redo for a in mol.GetAtomWithIdx(u).GetNeighbors() if a.GetAtomicNum() == 1),
                  reverse=True)
    keep = [i for i in range(mol.GetNumAtoms()) if i not in set(drop)]
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i in range(mol.GetNumAtoms()):
        conf.SetAtomPosition(i, np.nan_to_num(out[i]).tolist())
    work.AddConformer(conf, assignId=True)
    for u in redo:
        atom = work.GetAtomWithIdx(u)
        atom.SetNumExplicitHs(sum(a.GetAtomicNum() == 1 for a in mol.GetAtomWithIdx(u).GetNeighbors()))
        atom.SetNoImplicit(True)
    for i in drop:
        work.RemoveAtom(i)
    work.UpdatePropertyCache(strict=False)
    new_of_old = {old: new for new, old in enumerate(keep)}
    redo_new = [new_of_old[u] for u in redo]
    placed = Chem.AddHs(work.GetMol(), addCoords=True, onlyOnAtoms=redo_new)
    pos = placed.GetConformer().GetPositions()
    added = list(range(work.GetNumAtoms(), placed.GetNumAtoms()))
    for u, w in zip(redo, redo_new):
        hu = sorted(a.GetIdx() for a in mol.GetAtomWithIdx(u).GetNeighbors() if a.GetAtomicNum() == 1)
        hw = [j for j in added if placed.GetBondBetweenAtoms(w, j) is not None]
        out[hu] = pos[hw]
    if polish:
        moved = [a.GetIdx() for u in redo for a in mol.GetAtomWithIdx(u).GetNeighbors() if a.GetAtomicNum() == 1]
        if moved:
            polished = mol_with_coords(mol, out)
            polish_atoms(polished, moved, max_iters=POLISH_MAX_ITERS)  # the re-placed H alone
            out[moved] = polished.GetConformer().GetPositions()[moved]
    return out
