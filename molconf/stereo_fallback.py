"""The last resort for a prediction whose stereo the rigid repairs cannot set.

:func:`molconf.stereo.enforce_stereo` repairs a wrongly handed centre by a move that keeps
(nearly) every bond length. At a centre shared by fused rings (the bridgeheads of penicillin
G's bicycle) no such move exists: inverting it drags the neighbouring centres along, and the
network's conformer would be returned with a stereocentre the input does not have. Two
fallbacks, in order, each kept only if every stereo element then matches the input:

1. ``"mmff"``: the prediction minimised with MMFF94, then repaired again. A force field
   relaxes the strained ring around the inverted centre, after which the umbrella inversion
   usually works; the conformation stays the network's, up to the force field's nearest
   minimum.
2. ``"etkdg"``: ``n`` ETKDGv3 embeddings of the input (which embed its tags), each minimised
   with MMFF94; of those whose stereo matches, the one closest to the prediction
   (heavy-atom RMSD after superposition, atoms in the input's order), superposed on it. The
   embedding starts from random coordinates with at most :data:`ETKDG_MAX_ITERATIONS`
   attempts per conformer, three conformers first: a molecule ETKDG cannot embed costs
   ~0.1–0.2 s instead of 2–18 s at RDKit's default. Strained cages whose small chiral
   volumes ETKDG's chirality check rejects are embedded without it, and kept only where the
   stereo check (parities, and CIP where it decides) finds the input's stereo.

On the QM9 test split the rigid repairs leave 30 of 10,831 predictions wrongly handed; the
first fallback sets 20 of them, the second 9, and one cage stays wrong and is reported.

When neither gives the input's stereo the caller still returns the prediction and names
what is wrong (:attr:`molconf.prediction.PredictionReport.stereo`).

Examples
--------
>>> from rdkit import Chem
>>> from rdkit.Chem import AllChem
>>> from molconf.stereo import stereo_spec
>>> mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)O"))
>>> mirror = Chem.Mol(mol)
>>> _ = AllChem.EmbedMolecule(mirror, randomSeed=7)
>>> _ = AllChem.MMFFOptimizeMolecule(mirror)
>>> pos = mirror.GetConformer().GetPositions()
>>> for k, p in enumerate(pos):
...     mirror.GetConformer().SetAtomPosition(k, (-p[0], p[1], p[2]))  # the other enantiomer
>>> found = stereo_fallback(mirror, stereo_spec(mol))
>>> found.source, stereo_spec(mol).mismatches(found.positions)
('mmff', [])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from molconf.metrics import mol_with_coords
from molconf.stereo import StereoSpec, enforce_stereo

#: ETKDGv3 embeddings tried by the second fallback, and their seed (not the moses_xtb
#: reference protocol's 42, not 0: RDKit's identical-conformer trap)
ETKDG_CONFORMERS = 10
ETKDG_SEED = 61
#: ETKDG's attempts per conformer (RDKit's default of 0 means "10 × atoms": seconds per cage)
ETKDG_MAX_ITERATIONS = 20
#: conformers embedded first: where none embeds, the rest are not asked for
ETKDG_PROBE = 3


def _embed(mol: Chem.Mol, n: int, seed: int) -> Chem.Mol:
    """``mol`` with up to ``n`` ETKDGv3 conformers (random starts, one thread, bounded effort).

    :data:`ETKDG_PROBE` conformers are tried first; where none embeds, the rest are not asked
    for (each failure costs as much as the probe's). Where none embeds with ETKDG's chirality
    enforcement (strained cages, whose small chiral volumes it rejects), the conformers are
    embedded without it: their stereo is whatever the rings give, and the caller keeps only
    conformers whose stereo is checked to be the input's."""
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed, params.numThreads = seed, 1
    params.useRandomCoords, params.maxIterations = True, ETKDG_MAX_ITERATIONS
    for enforce in (True, False):
        params.enforceChirality = enforce
        if n <= ETKDG_PROBE or list(AllChem.EmbedMultipleConfs(Chem.Mol(m), ETKDG_PROBE, params)):
            AllChem.EmbedMultipleConfs(m, n, params)
            if m.GetNumConformers():
                break
    return m


def _consistent(pred: Chem.Mol, positions: np.ndarray, spec: StereoSpec) -> bool:
    """Whether ``positions`` hold the input's stereo by the whole check of
    :func:`molconf.stereo.enforce_stereo`: parities, and CIP where a tagged centre without a
    label of its own is off (a cage can keep every parity and still carry other labels)."""
    report = enforce_stereo(mol_with_coords(pred, positions), spec)
    return not report.remaining and not report.fixed_by


@dataclass
class Fallback:
    """A stereo-correct replacement for a prediction."""

    positions: np.ndarray  # (atoms, 3), in the prediction's frame
    source: str  # "mmff" or "etkdg"
    action: str  # what was done, for the molecule's notes


def _heavy_rmsd_aligned(probe: Chem.Mol, ref: Chem.Mol, conf_id: int) -> float:
    """Superpose ``probe``'s conformer ``conf_id`` on ``ref``'s (in place) over heavy atoms,
    same atom order; returns the RMSD (Å)."""
    heavy = [(a.GetIdx(), a.GetIdx()) for a in ref.GetAtoms() if a.GetAtomicNum() > 1]
    if len(heavy) < 3:  # too few to define a superposition: align all atoms
        heavy = [(k, k) for k in range(ref.GetNumAtoms())]
    return rdMolAlign.AlignMol(probe, ref, prbCid=conf_id, atomMap=heavy)


def _by_mmff(pred: Chem.Mol, spec: StereoSpec) -> Fallback | None:
    if not AllChem.MMFFHasAllMoleculeParams(pred):
        return None
    m = Chem.Mol(pred)
    AllChem.MMFFOptimizeMolecule(m, maxIters=2000)
    repaired = enforce_stereo(m, spec, name_remaining=False)
    if repaired.remaining:
        return None
    if repaired.fixed_by:  # a repair moves atoms: let the force field tidy it, then check again
        AllChem.MMFFOptimizeMolecule(m, maxIters=2000)
        if not _consistent(pred, m.GetConformer().GetPositions(), spec):
            return None
    moves = f" ({'; '.join(repaired.fixed_by)})" if repaired.fixed_by else ""
    return Fallback(m.GetConformer().GetPositions(), "mmff",
                    f"minimised the prediction with MMFF94 and repaired it{moves}")


def _by_etkdg(pred: Chem.Mol, spec: StereoSpec, n: int, seed: int) -> Fallback | None:
    from molconf.ground_state.search import mmff_minimise  # only reached for the rare molecule that needs it

    pool = _embed(pred, n, seed)
    if pool.GetNumConformers() == 0:
        return None
    relaxed = mmff_minimise(pool, max_iters=2000) is not None  # None: no MMFF94 parameters, left as embedded
    ids = [c.GetId() for c in pool.GetConformers()]
    good = [c for c in ids if not spec.mismatches(pool.GetConformer(c).GetPositions())]  # parities: cheap
    rmsd = {c: _heavy_rmsd_aligned(pool, pred, c) for c in good}
    for c in sorted(good, key=lambda c: (rmsd[c], c)):  # the closest that passes the whole check
        if _consistent(pred, pool.GetConformer(c).GetPositions(), spec):
            field = "ETKDGv3 + MMFF94" if relaxed else "ETKDGv3 (no MMFF94 parameters)"
            return Fallback(pool.GetConformer(c).GetPositions(), "etkdg",
                            f"replaced by the closest stereo-correct of {len(ids)} {field} conformers "
                            f"(seed {seed}; heavy-atom RMSD {rmsd[c]:.2f} Å to the prediction)")
    return None


def stereo_fallback(pred: Chem.Mol, spec: StereoSpec, n: int = ETKDG_CONFORMERS,
                    seed: int = ETKDG_SEED) -> Fallback | None:
    """A stereo-correct replacement for the conformer of ``pred`` (explicit H, the input's
    graph and tags), or None when neither fallback finds one.

    Parameters
    ----------
    pred : rdkit.Chem.Mol
        The prediction, whose stereo :func:`molconf.stereo.enforce_stereo` left wrong; not
        modified.
    spec : StereoSpec
        :func:`molconf.stereo.stereo_spec` of the input.
    n, seed : int
        ETKDGv3 embeddings for the second fallback and their seed.

    Returns
    -------
    Fallback or None
        ``positions`` (atoms, 3) whose stereo matches ``spec`` exactly, ``source`` (``"mmff"``
        or ``"etkdg"``) and ``action``, a sentence for the molecule's notes.
    """
    return _by_mmff(pred, spec) or _by_etkdg(pred, spec, n, seed)
