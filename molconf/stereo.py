"""Keep the input's stereochemistry in a predicted conformer.

A network that sees an (undirected) graph cannot know which of two mirror-image
arrangements a chiral tag asks for, so predictions are checked against what the input
specifies and repaired where a rigid operation can do it. The check is geometric and cheap
(:class:`StereoSpec`: signs of signed volumes at tetrahedral centres, cis/trans of the
reference atoms of double bonds, a few numpy operations per conformer); the CIP labels of
:func:`graph_stereo_labels` / :func:`molconf.metrics.stereo_labels` are its slow reference
(tests) and name what is left wrong. Repairs:

1. a reflection of the whole conformer, when most tetrahedral centres are inverted;
2. per wrong tetrahedral centre, swapping two acyclic substituents (each rotated 180° about
   the bisector of their bonds, which keeps every internal distance of both), or, for a
   ring centre with a single acyclic substituent, an umbrella inversion of the centre and
   that substituent through the plane of the other three neighbours; a centre too flat to
   read (the network put it and its bonds nearly in one plane) is pyramidalised: the centre
   and its smallest acyclic substituent are lifted off the plane of the other three
   neighbours, to the side its tag asks for; a spiro centre (no acyclic substituent) turns
   its smaller ring side 180°, which swaps the two ring atoms bonded to it, or 90° either way
   when the network laid that ring flat into the plane of the other (other angles of a 30°
   grid after that);
3. per wrong double bond outside a ring, turning the smaller side about the bond until the
   reference substituents are exactly cis or trans (a 180° flip, or less for a bond the
   network left twisted out of plane); a reference substituent the network put nearly
   collinear with the double bond (an imine's N–H at 180°, which has no cis or trans) is
   bent, with everything beyond it, to 120° on the side the input asks for;
4. tagged centres that CIP does not label (the exo/endo carbon of a bicycle) but whose
   configuration sets other centres' labels: moved only when CIP says a label is wrong.

What is still wrong afterwards is reported, not hidden; ``predict`` then tries
:mod:`molconf.stereo_fallback` before returning it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler

from molconf import _rdkit as _rd
from molconf.metrics import stereo_labels


_SPECIFIED_CHIRAL = (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
_SPECIFIED_BOND = (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOZ,
                   Chem.BondStereo.STEREOCIS, Chem.BondStereo.STEREOTRANS)
_DIRECTED = (Chem.BondDir.ENDUPRIGHT, Chem.BondDir.ENDDOWNRIGHT)
_DOUBLE_BOND = Chem.MolFromSmarts("*=*")
# A tetrahedral centre all of whose bond triples span less than this (Å³) is too flat to
# have a handedness: RDKit reads no tag from such a conformer. Reference geometries (QM9
# test split, 3,542 specified centres) span at least 1.8 Å³, an ideal sp3 carbon ~2.
MIN_CHIRAL_VOLUME = 0.5
# RDKit reads no handedness from a bond triple spanning this little (Å³): it then tries one
# other triple (StereoSpec.read_tags).
RDKIT_ZERO_VOLUME = 0.1
# A stereo double bond whose reference substituents are twisted more than this (degrees)
# out of the plane reads as neither cis nor trans: RDKit's perception and our parity can
# disagree on it, so it counts as wrong. Of 1,161 stereo double bonds in the QM9 test
# references one is twisted by 55°, the next by 18°.
MAX_DOUBLE_BOND_TWIST = 70.0
_MIN_PLANAR_COS = float(np.cos(np.radians(MAX_DOUBLE_BOND_TWIST)))
# A reference substituent of a stereo double bond at more than this angle (degrees, a-i-j or
# i-j-b) to the bond is too nearly collinear with it to be cis or trans: RDKit may perceive
# no stereo there, and where it does the geometry is wrong anyway, so it counts as wrong.
# Reference geometries stay far below: at most 139.1° over the 1,161 stereo double bonds of
# the QM9 test split, 134.9° on moses_xtb's test split; an sp2 substituent sits near 120°.
MAX_SUBSTITUENT_ANGLE = 160.0
_MIN_SUBSTITUENT_COS = float(np.cos(np.radians(MAX_SUBSTITUENT_ANGLE)))
# The angle a bent substituent is set to (degrees): sp2
BENT_SUBSTITUENT_ANGLE = 120.0
# Turns (degrees) tried at a wrong spiro centre, in order: 180° swaps the two ring atoms
# bonded to it; ±90° stands up a ring laid flat into the other's plane; the rest of a 30°
# grid serves centres the network distorted so that neither does.
SPIRO_TURNS = (180, 90, 270, 120, 240, 60, 300, 150, 210, 30, 330)


def specifies_stereo(mol: Chem.Mol) -> bool:
    """Whether any atom carries a tetrahedral chiral tag or any bond a specified stereo.

    Cheap: lets :func:`graph_stereo_labels` skip CIP labelling, the costliest step of a
    prediction for small molecules, when there is nothing to label.
    """
    tagged, bond_stereo = _stereo_candidates(mol)
    return bool(tagged) or bond_stereo


def _stereo_candidates(mol: Chem.Mol) -> tuple[list[int], bool]:
    """Atoms with a tetrahedral chiral tag, and whether any bond has specified stereo or a
    direction (a Mol built by hand may not have had directions turned into stereo yet)."""
    tagged = [a.GetIdx() for a in _rd.atoms(mol) if a.GetChiralTag() in _SPECIFIED_CHIRAL]
    # stereo and meaningful directions need a double bond: one substructure call spares the
    # per-bond look-ups for the many molecules without one
    bond_stereo = mol.HasSubstructMatch(_DOUBLE_BOND) and any(
        b.GetStereo() in _SPECIFIED_BOND or b.GetBondDir() in _DIRECTED for b in _rd.bonds(mol))
    return tagged, bond_stereo


def graph_stereo_labels(mol: Chem.Mol) -> dict[str, str]:
    """CIP labels the molecular graph specifies (chiral tags, bond stereo), keyed like
    :func:`molconf.metrics.stereo_labels`; unspecified centres have no entry."""
    return _cip_labels(mol) if specifies_stereo(mol) else {}


def _cip_labels(mol: Chem.Mol) -> dict[str, str]:
    return _perceived(mol)[1]


def _perceived(mol: Chem.Mol, labels: bool = True) -> tuple[Chem.Mol, dict[str, str]]:
    """A copy of ``mol`` with legacy stereo perception (tags cleaned, double-bond stereo atoms
    set) and CIP labels (``_CIPCode``), and, with ``labels``, those labels as a dict."""
    m = Chem.Mol(mol)
    Chem.AssignStereochemistry(m, cleanIt=True, force=True)
    try:
        rdCIPLabeler.AssignCIPLabels(m)
    except RuntimeError:
        pass  # keep legacy labels from AssignStereochemistry
    if not labels:
        return m, {}
    labels = {f"atom {a.GetIdx()}": a.GetProp("_CIPCode") for a in _rd.atoms(m) if a.HasProp("_CIPCode")}
    for b in _rd.bonds(m):
        if (label := _bond_label(b)) is not None:
            i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
            labels[f"bond {i}-{j}"] = label
    return m, labels


def _bond_label(bond: Chem.Bond) -> str | None:
    """A perceived bond's stereo label: its CIP code, else legacy E/Z, else None."""
    if bond.HasProp("_CIPCode"):
        return bond.GetProp("_CIPCode")
    stereo = bond.GetStereo()
    if stereo in (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOZ):
        return "E" if stereo == Chem.BondStereo.STEREOE else "Z"
    return None


_CIS = (Chem.BondStereo.STEREOZ, Chem.BondStereo.STEREOCIS)


def _row_cosines(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(D,) cosine of the angle between each row of ``u`` and of ``w`` (D, 3)."""
    return (u * w).sum(1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(w, axis=1), 1e-12)


@dataclass(frozen=True)
class StereoSpec:
    """The stereo a molecular graph specifies, as geometric conditions on a conformer.

    A tetrahedral centre tagged CCW (RDKit's convention: seen from its first neighbour in
    bond order, the other three turn counter-clockwise) needs a positive signed volume
    ``v0 · (v1 × v2)`` of the bonds to its first three neighbours in bond order, CW a
    negative one (or, where that volume is too small to read, the fallback of
    :meth:`read_tags`): the rule RDKit applies when it perceives tags from 3D, so a distorted
    centre is judged as the CIP reference judges it. A centre too flat to read (no triple
    of its bonds spans :data:`MIN_CHIRAL_VOLUME`, or RDKit reads no tag) counts as wrong
    either way. A stereo
    double bond ``i=j`` with reference atoms ``a`` (on ``i``) and ``b`` (on ``j``) needs
    the dihedral a-i-j-b within :data:`MAX_DOUBLE_BOND_TWIST` of 0 (cis/Z) or of 180°
    (trans/E), with neither reference substituent nearly collinear with the bond (angles
    a-i-j and i-j-b at most :data:`MAX_SUBSTITUENT_ANGLE`).

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)/C=C/C"))
    >>> spec = stereo_spec(m)
    >>> spec.keys()
    ['atom 1', 'bond 3-4']
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=0)
    >>> spec.mismatches(m.GetConformer().GetPositions())
    []
    >>> spec.mismatches(m.GetConformer().GetPositions() * [-1, 1, 1])  # the mirror image
    ['atom 1']
    """

    centres: np.ndarray  # (C,) atom indices
    neighbours: np.ndarray  # (C, 3) the first three neighbours in bond order
    signs: np.ndarray  # (C,) required sign of the signed volume, +1 (CCW) / -1 (CW)
    bonds: np.ndarray  # (D, 4) a, i, j, b
    cis: np.ndarray  # (D,) bool
    source: Chem.Mol | None = field(default=None, compare=False, repr=False)  # the graph, for messages
    fourth: np.ndarray | None = None  # (C,) each centre's fourth neighbour, -1 if three-coordinate
    # Tagged centres RDKit keeps but CIP does not label (e.g. the OH carbon of a bicyclic
    # alcohol, exo or endo): no label of their own, yet they can change the labels of
    # others. Checked against CIP only when their parity is wrong (see enforce_stereo).
    unlabelled: "StereoSpec | None" = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.centres) + len(self.bonds)

    def keys(self) -> list[str]:
        """Names of the stereo elements, as in :func:`molconf.metrics.stereo_labels`."""
        return [f"atom {c}" for c in self.centres.tolist()] + \
               [f"bond {min(i, j)}-{max(i, j)}" for _, i, j, _ in self.bonds.tolist()]

    def _volumes(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per centre: the signed volume RDKit reads its handedness from (0 where it reads
        none, see :meth:`read_tags`), and the largest volume any triple of its bonds spans
        (small: the centre is flat)."""
        v = pos[self.neighbours] - pos[self.centres][:, None]  # (C, 3, 3): bonds to three neighbours
        det = np.linalg.det(v)  # (C,) v0 · (v1 × v2)
        span = np.abs(det)  # (C,)
        if self.fourth is not None and (has4 := self.fourth >= 0).any():
            w = pos[self.fourth[has4]] - pos[self.centres[has4]]  # (C4, 3): the fourth bond
            u = np.repeat(v[has4][:, None], 3, axis=1)  # (C4, 3, 3, 3): triple k replaces bond k by it
            u[:, [0, 1, 2], [0, 1, 2]] = w[:, None]
            triples = np.linalg.det(u)  # (C4, 3)
            span[has4] = np.maximum(span[has4], np.abs(triples).max(axis=1))
            # v0, v1, v3 stands in for a too-flat v0, v1, v2; around a tetrahedron its volume
            # has the opposite sign
            fallback = np.zeros_like(det)
            fallback[has4] = -triples[:, 2]
            det = np.where(np.abs(det) > RDKIT_ZERO_VOLUME, det, fallback)
        return np.where(np.abs(det) > RDKIT_ZERO_VOLUME, det, 0.0), span

    def read_tags(self, pos: np.ndarray) -> np.ndarray:
        """(C,) the tag RDKit's ``AssignStereochemistryFrom3D`` reads at each centre from the
        coordinates ``pos`` (N, 3): +1 CCW, -1 CW, 0 none. Its rule, checked against it in
        the tests: the sign of v0 · (v1 × v2) over the bonds to the first three neighbours in
        bond order; where that is within :data:`RDKIT_ZERO_VOLUME` of 0, minus the same with
        the fourth bond for the third; where that is small too (or there is no fourth), none.
        Exact for four-coordinate centres; at a three-coordinate one (a sulfoxide S) RDKit
        sometimes reads no tag from a distorted centre where this reads one, never the other
        tag."""
        if not len(self.centres):
            return np.zeros(0)
        read, _ = self._volumes(np.asarray(pos, dtype=np.float64))
        return np.sign(read)

    def too_flat(self, pos: np.ndarray) -> list[str]:
        """Keys of the centres too flat in ``pos`` (N, 3) to have a handedness (no triple of
        their bonds spans :data:`MIN_CHIRAL_VOLUME`, or RDKit reads no tag from them);
        :meth:`mismatches` counts them wrong."""
        if not len(self.centres):
            return []
        read, span = self._volumes(np.asarray(pos, dtype=np.float64))
        return [f"atom {c}" for c in self.centres[(span < MIN_CHIRAL_VOLUME) | (read == 0)].tolist()]

    def _bond_cosines(self, pos: np.ndarray) -> np.ndarray:
        """(D,) cosine of each stereo bond's dihedral a-i-j-b (1: cis, -1: trans)."""
        q = pos[self.bonds]  # (D, 4, 3): a, i, j, b
        axis = q[:, 2] - q[:, 1]
        axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-12)
        u, w = q[:, 0] - q[:, 1], q[:, 3] - q[:, 2]  # substituent bonds, projected off the axis:
        u -= (u * axis).sum(1, keepdims=True) * axis
        w -= (w * axis).sum(1, keepdims=True) * axis
        return _row_cosines(u, w)

    def _bond_keys(self, flags: np.ndarray) -> list[str]:
        """Keys of the double bonds where ``flags`` (D,) is true."""
        return [k for k, t in zip(self.keys()[len(self.centres):], flags.tolist()) if t]

    def too_twisted(self, pos: np.ndarray) -> list[str]:
        """Keys of the double bonds twisted in ``pos`` (N, 3) more than
        :data:`MAX_DOUBLE_BOND_TWIST` out of plane; :meth:`mismatches` counts them wrong."""
        if not len(self.bonds):
            return []
        return self._bond_keys(np.abs(self._bond_cosines(np.asarray(pos, dtype=np.float64))) <= _MIN_PLANAR_COS)

    def _substituent_cosines(self, pos: np.ndarray) -> np.ndarray:
        """(D, 2) cosines of the angles a-i-j and i-j-b (-1: the substituent is collinear
        with the double bond)."""
        q = pos[self.bonds]  # (D, 4, 3): a, i, j, b
        return np.stack([_row_cosines(q[:, 0] - q[:, 1], q[:, 2] - q[:, 1]),
                         _row_cosines(q[:, 3] - q[:, 2], q[:, 1] - q[:, 2])], axis=1)  # (D, 2)

    def too_linear(self, pos: np.ndarray) -> list[str]:
        """Keys of the double bonds with a reference substituent at more than
        :data:`MAX_SUBSTITUENT_ANGLE` to the bond in ``pos`` (N, 3); :meth:`mismatches`
        counts them wrong."""
        if not len(self.bonds):
            return []
        return self._bond_keys((self._substituent_cosines(np.asarray(pos, dtype=np.float64)) < _MIN_SUBSTITUENT_COS).any(axis=1))

    def satisfied(self, pos: np.ndarray) -> np.ndarray:
        """(len(self),) bool: whether each element holds in the coordinates ``pos`` (N, 3)."""
        ok = []
        if len(self.centres):
            read, span = self._volumes(pos)
            ok.append((read * self.signs > 0) & (span >= MIN_CHIRAL_VOLUME))
        if len(self.bonds):
            cos = self._bond_cosines(pos)  # (D,)
            bent = (self._substituent_cosines(pos) >= _MIN_SUBSTITUENT_COS).all(axis=1)  # (D,)
            ok.append((np.where(self.cis, cos, -cos) > _MIN_PLANAR_COS) & bent)
        return np.concatenate(ok) if ok else np.zeros(0, dtype=bool)

    def mismatches(self, pos: np.ndarray) -> list[str]:
        """Keys of the elements ``pos`` (N, 3) gets wrong."""
        ok = self.satisfied(np.asarray(pos, dtype=np.float64))
        if ok.all():
            return []
        return [k for k, good in zip(self.keys(), ok.tolist()) if not good]


def stereo_spec(mol: Chem.Mol) -> StereoSpec:
    """What ``mol``'s graph specifies: the stereo elements its CIP labels name (as
    :func:`graph_stereo_labels`; so a tag on an atom that is no stereocentre asks for
    nothing), with the parity of their chiral tags and double-bond stereo; empty for a graph
    without stereo.

    Only the input's tagged atoms (perception removes tags, never adds them) and, when some
    bond carries stereo, the bonds are inspected: a prediction runs this once per molecule,
    and a Python call per atom and bond is most of its cost. ``tests/test_stereo.py`` checks
    it against the plain reading of :func:`graph_stereo_labels`.
    """
    labelled, unlabelled, bonds, cis = _Centres(), _Centres(), [], []
    tagged, bond_stereo = _stereo_candidates(mol)
    if tagged or bond_stereo:
        m, _ = _perceived(mol, labels=False)
        for c in tagged:
            atom = m.GetAtomWithIdx(c)
            if atom.GetChiralTag() in _SPECIFIED_CHIRAL:
                (labelled if atom.HasProp("_CIPCode") else unlabelled).add(atom)
        for bond in _rd.bonds(m) if bond_stereo else ():
            stereo = bond.GetStereo()
            if stereo not in _SPECIFIED_BOND:
                continue
            ref = list(bond.GetStereoAtoms())
            if _bond_label(bond) is None or len(ref) != 2:
                continue
            bonds.append([ref[0], bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), ref[1]])
            cis.append(stereo in _CIS)
    return StereoSpec(*labelled.arrays(), np.array(bonds, dtype=np.int64).reshape(-1, 4), np.array(cis, dtype=bool),
                      source=mol, fourth=labelled.fourth_array(),
                      unlabelled=unlabelled.spec() if unlabelled.centres else None)


class _Centres:
    """Tetrahedral centres gathered for a :class:`StereoSpec`."""

    def __init__(self) -> None:
        self.centres, self.neighbours, self.fourth, self.signs = [], [], [], []

    def add(self, atom: Chem.Atom) -> None:
        c = atom.GetIdx()
        nbrs = [b.GetOtherAtomIdx(c) for b in atom.GetBonds()]
        if len(nbrs) not in (3, 4):
            return
        self.centres.append(c)
        self.neighbours.append(nbrs[:3])
        self.fourth.append(nbrs[3] if len(nbrs) == 4 else -1)
        self.signs.append(1.0 if atom.GetChiralTag() == Chem.ChiralType.CHI_TETRAHEDRAL_CCW else -1.0)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.array(self.centres, dtype=np.int64), np.array(self.neighbours, dtype=np.int64).reshape(-1, 3),
                np.array(self.signs))

    def fourth_array(self) -> np.ndarray:
        return np.array(self.fourth, dtype=np.int64)

    def spec(self) -> StereoSpec:
        return StereoSpec(*self.arrays(), np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=bool),
                          fourth=self.fourth_array())


@dataclass
class StereoReport:
    """What the stereo check found and did for one molecule."""

    checked: int = 0  # stereo elements the input specifies
    fixed_by: list[str] = field(default_factory=list)  # actions that were applied
    remaining: list[str] = field(default_factory=list)  # mismatches left, e.g. "atom 3: R -> S"
    named_by_cip: bool = False  # remaining holds CIP mismatches (else the parity check's keys)

    @property
    def consistent(self) -> bool:
        return not self.remaining


def _wrong(spec: StereoSpec, mol: Chem.Mol) -> list[str]:
    return spec.mismatches(mol.GetConformer().GetPositions())


def cip_mismatches(spec: StereoSpec, mol: Chem.Mol) -> list[str]:
    """The slow reference: stereo elements of the graph ``spec`` came from whose CIP label
    ``mol``'s conformer does not reproduce, as ``"atom 3: R -> S"``. Run only when
    :meth:`StereoSpec.mismatches` finds something, so what is reported is what CIP says: the
    parity check is stricter at pseudo-asymmetric centres (r/s), whose labels can survive a
    change of their own parity (a reflection) or change with another centre's."""
    if spec.source is None:  # a hand-made spec: no graph to label, so no CIP to defer to
        return [f"{k}: not as specified" for k in spec.mismatches(mol.GetConformer().GetPositions())]
    want, got = graph_stereo_labels(spec.source), stereo_labels(mol)
    return [f"{k}: {v} -> {got.get(k, 'missing')}" for k, v in want.items() if got.get(k) != v]


def _reachable(mol: Chem.Mol, start: int, avoiding: int) -> set[int]:
    """Atoms connected to ``start`` by paths that do not pass through ``avoiding``."""
    seen, stack = {start}, [start]
    while stack:
        for nb in mol.GetAtomWithIdx(stack.pop()).GetNeighbors():
            j = nb.GetIdx()
            if j != avoiding and j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


def _subtree(mol: Chem.Mol, centre: int, neighbour: int) -> set[int] | None:
    """Atoms on ``neighbour``'s side of the bond centre–neighbour, or None if in a ring."""
    if mol.GetBondBetweenAtoms(centre, neighbour).IsInRing():
        return None
    return _reachable(mol, neighbour, centre)


def _rotate(pos: np.ndarray, atoms: set[int], origin: np.ndarray, axis: np.ndarray, angle: float) -> None:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # Rodrigues
    idx = sorted(atoms)
    pos[idx] = (pos[idx] - origin) @ rot.T + origin


def _set_positions(mol: Chem.Mol, pos: np.ndarray) -> None:
    mol.GetConformer().SetPositions(np.ascontiguousarray(pos, dtype=np.float64))


def _swap_substituents(mol: Chem.Mol, centre: int) -> bool:
    pos = mol.GetConformer().GetPositions()
    subs = []
    for nb in mol.GetAtomWithIdx(centre).GetNeighbors():
        tree = _subtree(mol, centre, nb.GetIdx())
        if tree is not None:
            subs.append((len(tree), nb.GetIdx(), tree))
    if len(subs) < 2:
        return False
    subs.sort()
    (_, a, tree_a), (_, b, tree_b) = subs[:2]
    c = pos[centre]
    ua, ub = pos[a] - c, pos[b] - c
    ua, ub = ua / np.linalg.norm(ua), ub / np.linalg.norm(ub)
    axis = ua + ub
    if np.linalg.norm(axis) < 1e-6:  # opposite bonds: any perpendicular axis works
        axis = np.cross(ua, [1.0, 0, 0]) if abs(ua[0]) < 0.9 else np.cross(ua, [0, 1.0, 0])
    _rotate(pos, tree_a | tree_b, c, axis, np.pi)
    _set_positions(mol, pos)
    return True


def _sides(mol: Chem.Mol, centre: int) -> list[tuple[set[int], list[int]]]:
    """The molecule without ``centre``, split into connected parts: each part's atoms and the
    centre's neighbours in it (a spiro centre has two parts with two neighbours each)."""
    nbrs = [nb.GetIdx() for nb in mol.GetAtomWithIdx(centre).GetNeighbors()]
    sides, placed = [], set()
    for start in nbrs:
        if start not in placed:
            atoms = _reachable(mol, start, centre)
            placed |= atoms
            sides.append((atoms, [j for j in nbrs if j in atoms]))
    return sides


def _spiro_ring(mol: Chem.Mol, centre: int) -> tuple[set[int], int, int] | None:
    """For a spiro centre (removing it leaves two parts holding two of its neighbours each):
    the smaller part's atoms and its two neighbours of the centre; else None."""
    sides = _sides(mol, centre)
    if len(sides) != 2 or any(len(nbrs) != 2 for _, nbrs in sides):
        return None  # not spiro: a centre with an acyclic substituent has gentler moves
    atoms, (a, b) = min(sides, key=lambda side: (len(side[0]), side[1]))
    return atoms, a, b


def _turn_ring_side(mol: Chem.Mol, centre: int, ring: tuple[set[int], int, int], angle: float = np.pi) -> bool:
    """Invert a spiro centre (no acyclic substituent to move) by turning its smaller ring side
    (``ring``, from :func:`_spiro_ring`) by ``angle`` about the bisector of the centre's two
    bonds into it: 180° swaps those two neighbours, ±90° stands up a ring the network laid
    flat into the plane of the other. A rotation, not a reflection: the turned side keeps its
    own geometry and handedness, and every bond length stays."""
    atoms, a, b = ring
    pos = mol.GetConformer().GetPositions()
    ua, ub = pos[a] - pos[centre], pos[b] - pos[centre]
    axis = ua / np.linalg.norm(ua) + ub / np.linalg.norm(ub)
    if np.linalg.norm(axis) < 1e-6:
        return False
    _rotate(pos, atoms, pos[centre], axis, angle)
    _set_positions(mol, pos)
    return True


def _turn_double_bond(mol: Chem.Mol, i: int, j: int, angle: float) -> bool:
    """Rotate one side of the acyclic bond i=j about it, changing the dihedral of any
    substituent of ``i`` and any of ``j`` by ``angle`` (radians, right-handed about i→j). The
    smaller side turns (by -angle if it is ``i``'s), so the bigger part stays where it was."""
    bond = mol.GetBondBetweenAtoms(i, j)
    if bond is None or bond.IsInRing():
        return False
    side_i, side_j = _subtree(mol, j, i), _subtree(mol, i, j)
    side, anchor, sign = (side_j - {j}, j, 1.0) if len(side_j) <= len(side_i) else (side_i - {i}, i, -1.0)
    pos = mol.GetConformer().GetPositions()
    _rotate(pos, side, pos[anchor], pos[j] - pos[i], sign * angle)
    _set_positions(mol, pos)
    return True


def _set_double_bond(mol: Chem.Mol, spec: StereoSpec, key: str) -> bool:
    """Turn one side of the stereo double bond ``key`` of ``spec`` so that its reference
    substituents are exactly cis (dihedral 0) or trans (180°) as asked: a 180° flip for a
    bond on the wrong side, a smaller turn for one the network left twisted."""
    row = spec.keys().index(key) - len(spec.centres)
    a, i, j, b = spec.bonds[row].tolist()
    pos = mol.GetConformer().GetPositions()
    axis = pos[j] - pos[i]
    axis /= np.linalg.norm(axis)
    u, w = pos[a] - pos[i], pos[b] - pos[j]
    dihedral = np.arctan2(axis @ np.cross(u, w), u @ w - (u @ axis) * (w @ axis))  # angle u → w about i→j
    target = 0.0 if spec.cis[row] else np.pi
    return _turn_double_bond(mol, i, j, target - dihedral)


def _perpendicular(v: np.ndarray, axis: np.ndarray) -> np.ndarray | None:
    """Unit component of ``v`` perpendicular to the unit ``axis``; None where ``v`` lies
    (nearly) along it."""
    v = v - (v @ axis) * axis
    n = np.linalg.norm(v)
    return v / n if n > 0.1 else None


def _bend_substituent(mol: Chem.Mol, spec: StereoSpec, key: str) -> bool:
    """Bend each reference substituent of the stereo double bond ``key`` that is nearly
    collinear with it (:data:`MAX_SUBSTITUENT_ANGLE`) to :data:`BENT_SUBSTITUENT_ANGLE`,
    cis or trans to the other reference substituent as ``spec`` asks: a rotation about its
    double-bond atom of the substituent and all atoms beyond it, which keeps their bond
    lengths. False if none is collinear, or one sits in a ring."""
    row = spec.keys().index(key) - len(spec.centres)
    a, i, j, b = spec.bonds[row].tolist()
    pos = mol.GetConformer().GetPositions()
    # which of a-i-j and i-j-b are collinear; bending one moves neither the other nor its angle
    collinear = spec._substituent_cosines(pos)[row] < _MIN_SUBSTITUENT_COS  # (2,)
    bent = False
    for (sub, at, other, far), straight in zip(((a, i, j, b), (b, j, i, a)), collinear.tolist()):
        if not straight:
            continue
        e = pos[other] - pos[at]
        e /= np.linalg.norm(e)
        u = pos[sub] - pos[at]
        atoms = _subtree(mol, at, sub)
        if atoms is None:
            return False
        side = _perpendicular(pos[far] - pos[other], e)  # where the other reference substituent points
        if side is None:  # both collinear: any side for this one, the other follows it
            side = _perpendicular(np.eye(3)[np.argmin(np.abs(e))], e)
        elif not spec.cis[row]:
            side = -side
        angle = np.radians(BENT_SUBSTITUENT_ANGLE)
        target = np.cos(angle) * e + np.sin(angle) * side  # unit: the bent bond's direction
        u /= np.linalg.norm(u)
        turn = np.cross(u, target)
        if np.linalg.norm(turn) < 1e-9:  # exactly opposite: any axis perpendicular to the bond
            turn = np.cross(e, side)
        _rotate(pos, atoms, pos[at], turn, float(np.arccos(np.clip(u @ target, -1.0, 1.0))))
        bent = True
    if bent:
        _set_positions(mol, pos)
    return bent


def _umbrella(mol: Chem.Mol, centre: int):
    """What an umbrella move at ``centre`` works with: (positions, the three neighbours whose
    plane it uses, the substituent's atoms moving with the centre, that substituent's atom
    bonded to the centre or None, the plane's unit normal), or None if there is no such move.

    A four-coordinate centre moves with its smallest acyclic substituent (usually an H); a
    three-coordinate one moves alone; a centre whose four bonds are all in rings (spiro) has
    no local move."""
    pos = mol.GetConformer().GetPositions()
    nbrs = [nb.GetIdx() for nb in mol.GetAtomWithIdx(centre).GetNeighbors()]
    if len(nbrs) == 4:
        acyclic = [(len(tree), j, tree) for j in nbrs if (tree := _subtree(mol, centre, j)) is not None]
        if not acyclic:
            return None
        _, root, tree = min(acyclic, key=lambda t: (t[0], t[1]))
        plane, tree = [j for j in nbrs if j != root], set(tree)
    elif len(nbrs) == 3:
        plane, root, tree = nbrs, None, set()
    else:
        return None
    p = pos[plane]
    normal = np.cross(p[1] - p[0], p[2] - p[0])
    if np.linalg.norm(normal) < 1e-8:
        return None
    return pos, plane, tree, root, normal / np.linalg.norm(normal)


def _invert_centre(mol: Chem.Mol, centre: int) -> bool:
    """Umbrella inversion of a tetrahedral centre that has at most one acyclic substituent.

    The centre and its smallest acyclic substituent (usually an H) are reflected through the
    plane of the other three neighbours: their bonds to those neighbours keep their lengths
    and the substituent keeps its internal geometry; only the local ring pucker changes. A
    three-coordinate centre is reflected alone through the plane of its neighbours.
    """
    if (move := _umbrella(mol, centre)) is None:
        return False
    pos, plane, tree, _, normal = move
    idx = sorted({centre} | tree)
    pos[idx] -= 2.0 * ((pos[idx] - pos[plane[0]]) @ normal)[:, None] * normal  # mirror through the plane
    _set_positions(mol, pos)
    return True


def _pyramidalise_centre(mol: Chem.Mol, centre: int, side: float) -> bool:
    """Lift a (nearly) flat centre to an sp3 height above the plane of three neighbours.

    The centre moves along the plane's normal to ``side`` (+1 or -1) × a third of its mean
    bond length to those neighbours (an ideal tetrahedron's height: cos 109.5° = -1/3); its
    smallest acyclic substituent is translated, unchanged inside, to sit on the same side
    along the normal at its old bond length. Tried after the gentler moves (which keep every
    bond length): it is what repairs a centre the network put flat, whose geometry has no
    handedness to keep.
    """
    if (move := _umbrella(mol, centre)) is None:
        return False
    pos, plane, tree, root, normal = move
    height = np.linalg.norm(pos[plane] - pos[centre], axis=1).mean() / 3.0
    lifted = pos[centre] + (side * height - (pos[centre] - pos[plane[0]]) @ normal) * normal
    if root is not None:
        bond = np.linalg.norm(pos[root] - pos[centre])
        shift = lifted + side * bond * normal - pos[root]
        idx = sorted(tree)
        pos[idx] += shift
    pos[centre] = lifted
    _set_positions(mol, pos)
    return True


def _local_moves(mol: Chem.Mol, spec: StereoSpec, key: str):
    """(description, move) pairs that may repair one stereo element of ``spec``, gentlest first."""
    if key.startswith("atom"):
        c = int(key.split()[1])
        yield f"swapped two substituents at {key}", lambda: _swap_substituents(mol, c)
        yield f"inverted {key} through the plane of its neighbours", lambda: _invert_centre(mol, c)
        if (ring := _spiro_ring(mol, c)) is not None:  # reached only when the moves above failed
            for deg in SPIRO_TURNS:
                yield f"turned a ring side of {key} by {deg}° (spiro)", \
                    lambda deg=deg: _turn_ring_side(mol, c, ring, np.radians(deg))
        for side in (1.0, -1.0):  # a flat centre: one of the two sides has the tag's handedness
            yield f"pyramidalised {key} (too flat to read)", lambda side=side: _pyramidalise_centre(mol, c, side)
    else:
        yield f"rotated one side of {key}", lambda: _set_double_bond(mol, spec, key)
        yield f"bent a substituent of {key} (collinear with the bond)", lambda: _bend_substituent(mol, spec, key)


def enforce_stereo(mol: Chem.Mol, spec: StereoSpec, name_remaining: bool = True) -> StereoReport:
    """Repair ``mol``'s conformer (in place) towards what ``spec`` (:func:`stereo_spec` of the
    input graph) asks for; ``remaining`` names what is still wrong by CIP labels, or, with
    ``name_remaining=False`` (for a caller that will move the conformer and check again), by
    the parity check's keys without the slower CIP labelling, unless the repair of centres
    without a label of their own had to label the conformer anyway (``named_by_cip`` says
    which)."""
    report = StereoReport(checked=len(spec))
    wrong = _wrong(spec, mol)
    if wrong:
        wrong = _repair_labelled(mol, spec, wrong, report)
    leftover = _repair_unlabelled(mol, spec, wrong, report)
    if leftover:  # CIP mismatches of the conformer as it now is: no need to label it again
        report.remaining, report.named_by_cip = leftover, True
    elif wrong:
        report.remaining = cip_mismatches(spec, mol) if name_remaining else wrong
        report.named_by_cip = name_remaining
    return report


def _repair_labelled(mol: Chem.Mol, spec: StereoSpec, wrong: list[str], report: StereoReport) -> list[str]:
    """Mirror the conformer if most centres are inverted, then try the local moves on each
    wrong element; returns what the parity check still finds wrong."""
    centres = len(spec.centres)
    wrong_centres = [w for w in wrong if w.startswith("atom")]
    if centres and 2 * len(wrong_centres) > centres:  # most centres inverted: try the mirror image
        before = mol.GetConformer().GetPositions()
        _set_positions(mol, before * np.array([-1.0, 1.0, 1.0]))
        now = _wrong(spec, mol)
        if len(now) < len(wrong):
            report.fixed_by.append("reflection")
            wrong = now
        else:
            _set_positions(mol, before)
    for key in list(wrong):
        for action, move in _local_moves(mol, spec, key):
            before = mol.GetConformer().GetPositions()
            if not move():
                continue
            now = _wrong(spec, mol)
            if key not in now and len(now) <= len(wrong) - 1:
                report.fixed_by.append(action)
                wrong = now
                break
            _set_positions(mol, before)  # the move did not help: undo it
    return wrong


def _repair_unlabelled(mol: Chem.Mol, spec: StereoSpec, wrong: list[str], report: StereoReport) -> list[str]:
    """Repair CIP labels that are wrong because of a tagged centre without a label of its own
    (:attr:`StereoSpec.unlabelled`, e.g. an OH exo instead of endo on a bicycle, which turns
    the bridgehead labels although their parities hold); returns the CIP mismatches left.

    The slow CIP reference judges here, not parity: such a centre's parity is only worth
    repairing when a label depends on it (in a cage such as bicyclo[1.1.1]pentane a tag can
    survive perception while every parity is the same molecule). It runs only when an
    unlabelled centre's parity differs from its tag (under 1 % of QM9 molecules have such
    centres at all). Only the moves that keep every bond length are tried, and one is kept
    only if it leaves fewer CIP mismatches and breaks no labelled element."""
    unlabelled = spec.unlabelled
    if unlabelled is None or spec.source is None:
        return []
    off = unlabelled.mismatches(mol.GetConformer().GetPositions())
    named = cip_mismatches(spec, mol) if off else []
    for key in off:
        if not named:
            break
        c = int(key.split()[1])
        ring = _spiro_ring(mol, c)
        for action, move in ((f"swapped two substituents at {key} (no CIP label of its own; others' follow it)",
                              lambda: _swap_substituents(mol, c)),
                             (f"inverted {key} through the plane of its neighbours (no CIP label of its own; others' follow it)",
                              lambda: _invert_centre(mol, c)),
                             (f"turned a ring side of {key} (spiro; no CIP label of its own; others' follow it)",
                              lambda: ring is not None and _turn_ring_side(mol, c, ring))):
            before = mol.GetConformer().GetPositions()
            if not move():
                continue
            now = cip_mismatches(spec, mol)
            if len(now) < len(named) and set(_wrong(spec, mol)) <= set(wrong):
                report.fixed_by.append(action)
                named = now
                break
            _set_positions(mol, before)
    return named
