"""Conformation metrics, computed exactly as GTMGC / ReBind report them (DESIGN.md §3).

- **D-MAE / D-RMSE**: errors of the interatomic distance matrix over *all* atoms (H
  included), the full N×N matrix (diagonal included), **pooled** over the whole set:
  ``D-MAE = Σ_mol Σ_ij |D_ij − D̂_ij| / Σ_mol N²`` and
  ``D-RMSE = sqrt(Σ_mol Σ_ij (D_ij − D̂_ij)² / Σ_mol N²)``. Per-molecule means are
  reported too; they weight small molecules more and so differ from the pooled values.
- **C-RMSD**: mean over molecules of ``rdMolAlign.GetBestRMS`` on heavy atoms
  (``Chem.RemoveHs``), symmetry-aware with optimal rigid alignment.
  :func:`c_rmsd_up_to_mirror` also accepts the mirror image for achiral molecules (a
  secondary number; the papers' C-RMSD allows no reflection).
- **Stereo consistency**: share of molecules whose predicted conformer has the reference
  conformer's CIP label at every stereocentre and stereo double bond.

Predicted molecules must share the reference's atom order (build them with
:func:`mol_with_coords`); distance errors compare atom *i* with atom *i*.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler, rdMolAlign

from molconf import _rdkit as _rd
from molconf.constants import C_RMSD, D_MAE, D_RMSE, STEREO_OK
from molconf.ops.reference import pair_distances

D_MAE_PER_MOL = "d_mae_per_mol"
D_RMSE_PER_MOL = "d_rmse_per_mol"
N_MOLECULES = "n_molecules"
N_FAILED = "n_failed"
# the sums every distance accumulator keeps; each is additive across batches and processes
_SUM_KEYS = ("abs_err_sum", "sq_err_sum", "n_pairs", "mae_mol_sum", "rmse_mol_sum", "n_mol")


# --------------------------------------------------------------------------- distances
def distance_errors(pos_pred: torch.Tensor, pos_true: torch.Tensor, mask: torch.Tensor):
    """Per-molecule sums of distance-matrix errors for a dense padded batch.

    Parameters
    ----------
    pos_pred, pos_true : (B, N, 3) float tensors
    mask : (B, N) bool tensor, True for real atoms

    Returns
    -------
    abs_err_sum, sq_err_sum, n_pairs : (B,) tensors
        ``Σ_ij |D_ij − D̂_ij|``, ``Σ_ij (D_ij − D̂_ij)²`` over real atom pairs (diagonal
        included, padding excluded) and ``n_pairs = N_i²``. Per-molecule D-MAE is
        ``abs_err_sum / n_pairs``. Differentiable (finite gradient at zero distance).

    Examples
    --------
    >>> true = torch.tensor([[[0., 0, 0], [1, 0, 0], [9, 9, 9]]])
    >>> pred = torch.tensor([[[0., 0, 0], [2, 0, 0], [0, 0, 0]]])
    >>> mask = torch.tensor([[True, True, False]])
    >>> abs_sum, sq_sum, n = distance_errors(pred, true, mask)
    >>> abs_sum.tolist(), sq_sum.tolist(), n.tolist(), (abs_sum / n).tolist()
    ([2.0], [2.0], [4.0], [0.5])
    """
    mask = mask.bool()
    pair_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)).to(pos_true.dtype)
    err = (pair_distances(pos_pred) - pair_distances(pos_true)) * pair_mask
    n_atoms = mask.sum(1).to(pos_true.dtype)
    return err.abs().sum((1, 2)), err.square().sum((1, 2)), n_atoms * n_atoms


def distance_errors_numpy(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, int]:
    """Single-molecule version of :func:`distance_errors` on (N, 3) arrays (float64).

    >>> distance_errors_numpy(np.array([[0., 0, 0], [2, 0, 0]]), np.array([[0., 0, 0], [1, 0, 0]]))
    (2.0, 2.0, 4)
    """
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"expected two (N, 3) arrays, got {pred.shape} and {true.shape}")
    dist = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    err = dist(pred) - dist(true)
    return float(np.abs(err).sum()), float(np.square(err).sum()), len(true) ** 2


def _finalize(s: dict) -> dict:
    """Turn additive sums into metrics: pooled and per-molecule-mean D-MAE / D-RMSE."""
    n_pairs, n_mol = float(s["n_pairs"]), float(s["n_mol"])
    nan = float("nan")
    return {
        D_MAE: float(s["abs_err_sum"]) / n_pairs if n_pairs else nan,
        D_RMSE: math.sqrt(float(s["sq_err_sum"]) / n_pairs) if n_pairs else nan,
        D_MAE_PER_MOL: float(s["mae_mol_sum"]) / n_mol if n_mol else nan,
        D_RMSE_PER_MOL: float(s["rmse_mol_sum"]) / n_mol if n_mol else nan,
        N_MOLECULES: int(n_mol),
    }


class DistanceMetricAccumulator:
    """Accumulates pooled D-MAE / D-RMSE over batches; all state is additive sums.

    To combine processes, all-reduce (sum) the values of :meth:`state` or :meth:`merge`
    the states of other accumulators.

    Examples
    --------
    >>> acc = DistanceMetricAccumulator()
    >>> acc.update_numpy(np.array([[0., 0, 0], [2, 0, 0]]), np.array([[0., 0, 0], [1, 0, 0]]))
    >>> acc.update_numpy(np.zeros((3, 3)), np.zeros((3, 3)))
    >>> r = acc.compute()
    >>> round(r["d_mae"], 4), r["d_mae_per_mol"], r["n_molecules"]  # 2/(4+9) vs (0.5+0)/2
    (0.1538, 0.25, 2)
    """

    def __init__(self) -> None:
        self._s = dict.fromkeys(_SUM_KEYS, 0.0)

    def _add(self, abs_sum, sq_sum, n_pairs) -> None:
        abs_sum, sq_sum, n_pairs = (
            np.asarray(x, np.float64).reshape(-1) for x in (abs_sum, sq_sum, n_pairs))
        self._s["abs_err_sum"] += abs_sum.sum()
        self._s["sq_err_sum"] += sq_sum.sum()
        self._s["n_pairs"] += n_pairs.sum()
        self._s["mae_mol_sum"] += (abs_sum / n_pairs).sum()
        self._s["rmse_mol_sum"] += np.sqrt(sq_sum / n_pairs).sum()
        self._s["n_mol"] += len(n_pairs)

    @torch.no_grad()
    def update(self, pos_pred: torch.Tensor, pos_true: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a dense padded batch ((B, N, 3), (B, N, 3), (B, N) bool)."""
        self._add(*(t.detach().double().cpu().numpy() for t in distance_errors(
            pos_pred.double(), pos_true.double(), mask)))

    def update_numpy(self, pred: np.ndarray, true: np.ndarray) -> None:
        """Add one molecule given as (N, 3) arrays."""
        self._add(*distance_errors_numpy(pred, true))

    def state(self) -> dict[str, float]:
        """The additive sums (safe to sum across processes)."""
        return {k: float(v) for k, v in self._s.items()}

    def merge(self, other: "DistanceMetricAccumulator | dict") -> "DistanceMetricAccumulator":
        """Add another accumulator (or a :meth:`state` dict) into this one; returns self."""
        state = other.state() if isinstance(other, DistanceMetricAccumulator) else other
        for k in _SUM_KEYS:
            self._s[k] += float(state[k])
        return self

    def compute(self) -> dict:
        """Pooled ``d_mae``/``d_rmse``, per-molecule means and ``n_molecules``."""
        return _finalize(self._s)


# --------------------------------------------------------------------------- RDKit helpers
def mol_with_coords(mol: Chem.Mol, coords) -> Chem.Mol:
    """Copy of ``mol`` with a single 3D conformer set to ``coords`` ((N, 3), mol's atom order).

    >>> m = mol_with_coords(Chem.MolFromSmiles("O"), [[0.0, 0.0, 0.0]])
    >>> m.GetNumConformers(), m.GetConformer().GetPositions().tolist()
    (1, [[0.0, 0.0, 0.0]])
    """
    coords = np.ascontiguousarray(coords, np.float64)
    if coords.shape != (mol.GetNumAtoms(), 3):
        raise ValueError(f"coords shape {coords.shape} != ({mol.GetNumAtoms()}, 3)")
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetNumAtoms())
    conf.SetPositions(coords)  # one call, not one per atom
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    return out


def c_rmsd(ref_mol: Chem.Mol, pred_mol: Chem.Mol, ref_conf_id: int = -1,
           pred_conf_id: int = -1, max_matches: int = 1_000_000) -> float:
    """Heavy-atom, symmetry-aware RMSD after optimal rigid alignment (GTMGC's C-RMSD).

    Both molecules go through ``Chem.RemoveHs`` (which copies them, so the inputs are not
    modified by ``GetBestRMS(prbMol=pred, refMol=ref)`` aligning the probe in place).
    ``max_matches`` caps the symmetry-equivalent atom mappings tried; RDKit's default
    (1e6) reproduces the papers and is harmless for QM9-sized molecules, while a lower
    cap bounds the run time for highly symmetric large molecules at the risk of
    over-estimating the RMSD.

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=1)
    >>> round(c_rmsd(m, mol_with_coords(m, m.GetConformer().GetPositions() + 5.0)), 6)
    0.0
    """
    ref, prb = Chem.RemoveHs(ref_mol), Chem.RemoveHs(pred_mol)
    return float(rdMolAlign.GetBestRMS(prb, ref, pred_conf_id, ref_conf_id, maxMatches=max_matches))


_REFLECT = np.array([-1.0, 1.0, 1.0])  # x -> -x: a mirror image


def mirror_is_same_molecule(mol: Chem.Mol, conf_id: int = -1) -> bool:
    """True if the mirror image of ``mol``'s conformer is the same stereoisomer (the molecule is
    achiral as drawn in 3D), so that the mirrored conformer is an equally valid conformer of it.

    Compared by canonical isomeric SMILES with stereo perceived from the conformer and from its
    reflection. Meso compounds count as achiral; tetrahedral stereocentres of a chiral molecule
    invert under reflection, stereo double bonds (E/Z) do not.

    >>> from rdkit.Chem import AllChem
    >>> meso, chiral = (Chem.AddHs(Chem.MolFromSmiles(s)) for s in ("C[C@H](O)[C@@H](C)O", "C[C@H](O)[C@H](C)O"))
    >>> [AllChem.EmbedMolecule(m, randomSeed=3) for m in (meso, chiral)]
    [0, 0]
    >>> mirror_is_same_molecule(meso), mirror_is_same_molecule(chiral)
    (True, False)
    """
    xyz = mol.GetConformer(conf_id).GetPositions()  # (N, 3)

    def canonical(coords) -> str:
        m = mol_with_coords(mol, coords)
        Chem.AssignStereochemistryFrom3D(m, replaceExistingTags=True)
        return Chem.MolToSmiles(Chem.RemoveHs(m))

    return canonical(xyz) == canonical(xyz * _REFLECT)


def c_rmsd_up_to_mirror(ref_mol: Chem.Mol, pred_mol: Chem.Mol, max_matches: int = 1_000_000) -> float:
    """:func:`c_rmsd`, except that for an achiral molecule (:func:`mirror_is_same_molecule` of the
    reference) the prediction's mirror image is scored too and the lower RMSD counts.

    A flexible achiral molecule's lowest-energy conformer is usually chiral itself (C1), and its
    mirror image has exactly the same energy: the two are the same ground state, yet the plain
    C-RMSD (no reflection, as GTMGC and ReBind score) can put them more than 1 Å apart. Chiral
    molecules are scored exactly as by :func:`c_rmsd` (their mirror image is the enantiomer).

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("OCCCCCCCN"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=5)
    >>> mirror = mol_with_coords(m, m.GetConformer().GetPositions() * [-1.0, 1.0, 1.0])
    >>> c_rmsd(m, mirror) > 0.1, round(c_rmsd_up_to_mirror(m, mirror), 6)
    (True, 0.0)
    """
    return _up_to_mirror(ref_mol, pred_mol, c_rmsd(ref_mol, pred_mol, max_matches=max_matches), max_matches)[0]


def _up_to_mirror(ref_mol: Chem.Mol, pred_mol: Chem.Mol, plain: float, max_matches: int) -> tuple[float, bool]:
    """(C-RMSD up to mirror, whether the molecule is achiral), from the plain C-RMSD already computed."""
    if not mirror_is_same_molecule(ref_mol):
        return plain, False
    mirrored = mol_with_coords(pred_mol, pred_mol.GetConformer().GetPositions() * _REFLECT)
    return min(plain, c_rmsd(ref_mol, mirrored, max_matches=max_matches)), True


def stereo_labels(mol: Chem.Mol, conf_id: int = -1) -> dict[str, str]:
    """CIP labels perceived from a 3D conformer.

    Keys are ``"atom <i>"`` for tetrahedral stereocentres and ``"bond <i>-<j>"`` (i < j)
    for stereo double bonds; values are CIP codes (R/S/r/s, E/Z/seqCis/seqTrans).
    Chiral tags from the input (e.g. SMILES) are replaced by those of the conformer.
    Uses the new CIP labeller, falling back to RDKit's legacy labels if it gives up.

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)O"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=0)
    >>> stereo_labels(m)
    {'atom 1': 'R'}
    """
    if mol.GetNumConformers() == 0:
        raise ValueError("stereo_labels needs a molecule with a conformer")
    m = Chem.Mol(mol, confId=mol.GetConformer(conf_id).GetId())
    Chem.AssignStereochemistryFrom3D(m, confId=conf_id, replaceExistingTags=True)
    try:
        rdCIPLabeler.AssignCIPLabels(m)
        bond_codes = {b: b.GetProp("_CIPCode") for b in _rd.bonds(m) if b.HasProp("_CIPCode")}
    except RuntimeError:  # labeller hit its iteration limit: legacy (approximate) CIP
        Chem.AssignStereochemistry(m, cleanIt=True, force=True)
        legacy = {Chem.BondStereo.STEREOE: "E", Chem.BondStereo.STEREOZ: "Z"}
        bond_codes = {b: legacy[b.GetStereo()] for b in _rd.bonds(m) if b.GetStereo() in legacy}
    labels = {f"atom {a.GetIdx()}": a.GetProp("_CIPCode")
              for a in _rd.atoms(m) if a.HasProp("_CIPCode")}
    for bond, code in bond_codes.items():
        i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        labels[f"bond {i}-{j}"] = code
    return labels


def stereo_mismatches(ref_mol: Chem.Mol, pred_mol: Chem.Mol) -> list[str]:
    """Reference stereo elements whose label is missing or different in the prediction.

    Returns strings like ``"atom 1: R -> S"`` or ``"bond 1-2: E -> missing"``; labels the
    prediction has but the reference lacks are ignored.
    """
    ref, pred = stereo_labels(ref_mol), stereo_labels(pred_mol)
    return [f"{k}: {v} -> {pred.get(k, 'missing')}" for k, v in ref.items() if pred.get(k) != v]


def stereo_consistent(ref_mol: Chem.Mol, pred_mol: Chem.Mol) -> bool:
    """True if every reference stereocentre / stereo double bond keeps its CIP label."""
    return not stereo_mismatches(ref_mol, pred_mol)


def local_distance_errors(ref: Chem.Mol, pred: Chem.Mol, hops: Sequence[int] = (1, 2),
                          beyond: int | None = None) -> dict[int | str, tuple[float, int]]:
    """Absolute distance errors of atom pairs grouped by how many bonds apart they are (by
    default 1 and 2: bond lengths, and the 1-3 distances that set bond angles): ``{hops: (error
    sum, pairs)}``, Å. ``beyond=k`` adds the key ``f">{k}"``: every pair more than ``k`` bonds
    apart (non-bonded contacts, where ReBind's rewiring should matter). Pairs in different
    fragments count as infinitely far apart.

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=1)
    >>> bigger = mol_with_coords(m, m.GetConformer().GetPositions() * 1.1)
    >>> e = local_distance_errors(m, bigger)
    >>> e[1][1], e[2][1]  # 8 bonds, 13 angle pairs
    (8, 13)
    >>> local_distance_errors(m, bigger, hops=(), beyond=3)[">3"][1]  # H-C-C-O-H: 3 methyl H to the hydroxyl H
    3
    """
    topo = Chem.GetDistanceMatrix(ref)  # (N, N) bonds apart; 1e8 between fragments
    a, b = ref.GetConformer().GetPositions(), pred.GetConformer().GetPositions()
    d_ref = np.linalg.norm(a[:, None] - a[None], axis=-1)  # (N, N)
    d_pred = np.linalg.norm(b[:, None] - b[None], axis=-1)
    groups: dict[int | str, np.ndarray] = {k: np.triu(topo == k, 1) for k in hops}
    if beyond is not None:
        groups[f">{beyond}"] = np.triu(topo > beyond, 1)
    out = {}
    for key, mask in groups.items():
        i, j = np.where(mask)
        out[key] = (float(np.abs(d_pred[i, j] - d_ref[i, j]).sum()), int(len(i)))
    return out


def pooled_local_errors(pairs, hops: Sequence[int] = (1, 2),
                        beyond: int | None = None) -> dict[int | str, tuple[float, int]]:
    """:func:`local_distance_errors` summed over ``(ref, pred)`` pairs (``pred`` None: skipped):
    ``{group: (error sum, pairs)}``, every group present even with no pairs.

    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=1)
    >>> pooled_local_errors([(m, m), (m, None), (m, m)])[1]
    (0.0, 16)
    """
    sums: dict[int | str, list] = {k: [0.0, 0] for k in hops}
    if beyond is not None:
        sums[f">{beyond}"] = [0.0, 0]
    for ref, pred in pairs:
        if pred is None:
            continue
        for key, (err, n) in local_distance_errors(ref, pred, hops, beyond).items():
            sums[key][0] += err
            sums[key][1] += n
    return {k: (e, n) for k, (e, n) in sums.items()}


# --------------------------------------------------------------------------- summary
def molecule_metrics(ref: Chem.Mol, pred: Chem.Mol | None, index: int = 0,
                     max_matches: int = 1_000_000, mirror: bool = False) -> dict:
    """Every metric of one ``(ref, pred)`` pair (pred None = failed prediction).

    Returns a dict with ``index``, ``n_atoms``, ``failed``, the four metric keys (NaN for
    failures), ``stereo_mismatches`` ("; "-joined) and the additive distance sums
    (``abs_err_sum``, ``sq_err_sum``, ``n_pairs``) that :func:`aggregate` pools. With
    ``mirror``, also ``c_rmsd_mirror`` (:func:`c_rmsd_up_to_mirror`) and ``achiral``
    (:func:`mirror_is_same_molecule` of the reference), reusing the C-RMSD computed here.
    """
    row = {"index": index, "n_atoms": ref.GetNumAtoms(), "failed": pred is None,
           D_MAE: math.nan, D_RMSE: math.nan, C_RMSD: math.nan, STEREO_OK: math.nan,
           "stereo_mismatches": "", "abs_err_sum": 0.0, "sq_err_sum": 0.0, "n_pairs": 0}
    if pred is None:
        return row
    z_ref = [a.GetAtomicNum() for a in ref.GetAtoms()]
    if z_ref != [a.GetAtomicNum() for a in pred.GetAtoms()]:
        raise ValueError(f"pair {index}: prediction's atoms differ from the reference's")
    abs_sum, sq_sum, n = distance_errors_numpy(
        pred.GetConformer().GetPositions(), ref.GetConformer().GetPositions())
    mismatches = stereo_mismatches(ref, pred)
    row.update({D_MAE: abs_sum / n, D_RMSE: math.sqrt(sq_sum / n),
                C_RMSD: c_rmsd(ref, pred, max_matches=max_matches),
                STEREO_OK: float(not mismatches), "stereo_mismatches": "; ".join(mismatches),
                "abs_err_sum": abs_sum, "sq_err_sum": sq_sum, "n_pairs": n})
    if mirror:
        row["c_rmsd_mirror"], row["achiral"] = _up_to_mirror(ref, pred, row[C_RMSD], max_matches)
    return row


def aggregate(rows: Sequence[dict]) -> dict:
    """Pool per-molecule rows of :func:`molecule_metrics` into one summary row.

    Failures are counted in ``n_failed`` and excluded from every mean, including the
    stereo consistency share (taken over successful predictions).
    """
    acc = DistanceMetricAccumulator()
    ok = [r for r in rows if not r["failed"]]
    for r in ok:
        acc._add(r["abs_err_sum"], r["sq_err_sum"], r["n_pairs"])
    summary = acc.compute()
    summary.update({C_RMSD: float(np.mean([r[C_RMSD] for r in ok])) if ok else math.nan,
                    STEREO_OK: float(np.mean([r[STEREO_OK] for r in ok])) if ok else math.nan,
                    N_MOLECULES: len(rows), N_FAILED: len(rows) - len(ok)})
    return summary


def summarize(pairs: Sequence[tuple[Chem.Mol, Chem.Mol | None]],
              max_matches: int = 1_000_000) -> tuple[dict, list[dict]]:
    """Full metric row for ``(ref_mol, pred_mol or None)`` pairs (None = failed prediction).

    Both molecules of a pair must have the same atoms in the same order (H included).

    Returns
    -------
    row : dict
        ``d_mae``, ``d_rmse`` (pooled), ``c_rmsd`` (mean), ``stereo_consistency`` (share),
        ``d_mae_per_mol``, ``d_rmse_per_mol``, ``n_molecules`` (all pairs), ``n_failed``.
    per_molecule : list of dict
        One :func:`molecule_metrics` dict per pair.
    """
    per_mol = [molecule_metrics(ref, pred, i, max_matches) for i, (ref, pred) in enumerate(pairs)]
    return aggregate(per_mol), per_mol


def __getattr__(name: str):
    # torchmetrics (and through it scipy) loads only for the Lightning metric, never on the
    # prediction path
    if name == "PooledDistanceMetrics":
        from molconf.pooled_metrics import PooledDistanceMetrics

        return PooledDistanceMetrics
    raise AttributeError(f"module 'molconf.metrics' has no attribute {name!r}")
