"""Evaluation of generated conformer sets.

All RMSDs are heavy-atom, symmetry-aware and optimally aligned, computed like
:func:`molconf.metrics.c_rmsd` (``Chem.RemoveHs`` then ``rdMolAlign.GetBestRMS``).

* against one reference conformer: best-of-n and mean RMSD, diversity (mean pairwise RMSD
  among the samples), stereo consistency (share of samples with the reference's CIP labels);
* against a reference *ensemble* (GEOM protocol): coverage and average minimum RMSD,
  recall (COV-R / AMR-R, over reference conformers) and precision (COV-P / AMR-P, over
  generated conformers); a conformer is covered when its RMSD is below δ (0.5 Å for QM9,
  0.75 Å for GEOM-DRUGS).
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolAlign

from molconf.metrics import stereo_labels

DELTA_QM9 = 0.5
DELTA_DRUGS = 0.75


def _heavy(mol: Chem.Mol) -> Chem.Mol:
    return Chem.RemoveHs(mol)


def _conf_ids(mol: Chem.Mol) -> list[int]:
    return [c.GetId() for c in mol.GetConformers()]


def rmsd_matrix(ref: Chem.Mol, gen: Chem.Mol, max_matches: int = 1_000_000) -> np.ndarray:
    """(n_ref, n_gen) heavy-atom GetBestRMS between every reference and generated conformer.

    ``ref`` and ``gen`` are the same molecule (same atoms); each may hold several conformers.
    """
    r, g = _heavy(ref), _heavy(gen)
    if [a.GetAtomicNum() for a in r.GetAtoms()] != [a.GetAtomicNum() for a in g.GetAtoms()]:
        raise ValueError("reference and generated molecules have different heavy atoms")
    rid, gid = _conf_ids(r), _conf_ids(g)
    out = np.empty((len(rid), len(gid)))
    for a, i in enumerate(rid):
        for b, j in enumerate(gid):
            # GetBestRMS aligns the probe in place: use a copy holding just conformer j
            probe = Chem.Mol(g, confId=j)
            out[a, b] = rdMolAlign.GetBestRMS(probe, r, -1, i, maxMatches=max_matches)
    return out


def pairwise_rmsd(mol: Chem.Mol, max_matches: int = 1_000_000) -> np.ndarray:
    """(n, n) symmetric matrix of heavy-atom GetBestRMS among a molecule's conformers."""
    m = _heavy(mol)
    ids = _conf_ids(m)
    out = np.zeros((len(ids), len(ids)))
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            probe = Chem.Mol(m, confId=ids[b])
            out[a, b] = out[b, a] = rdMolAlign.GetBestRMS(probe, m, -1, ids[a], maxMatches=max_matches)
    return out


def coverage_metrics(rmsd: np.ndarray, delta: float = DELTA_QM9) -> dict[str, float]:
    """COV-R, AMR-R, COV-P, AMR-P from an (n_ref, n_gen) RMSD matrix.

    COV-R = share of reference conformers with some generated one within ``delta``
    (RMSD < δ, as torsional diffusion counts); AMR-R = mean over references of the
    smallest RMSD; -P the same with the roles swapped. COV values are fractions (0–1).

    >>> coverage_metrics(np.array([[0.25, 2.0], [1.0, 0.75]]), delta=0.5)
    {'cov_r': 0.5, 'amr_r': 0.5, 'cov_p': 0.5, 'amr_p': 0.5}
    """
    rmsd = np.asarray(rmsd, dtype=float)
    if rmsd.ndim != 2 or 0 in rmsd.shape:
        raise ValueError(f"need a non-empty (n_ref, n_gen) matrix, got shape {rmsd.shape}")
    best_r, best_p = rmsd.min(1), rmsd.min(0)
    return {"cov_r": float((best_r < delta).mean()), "amr_r": float(best_r.mean()),
            "cov_p": float((best_p < delta).mean()), "amr_p": float(best_p.mean())}


def ensemble_metrics(ref: Chem.Mol, gen: Chem.Mol, delta: float = DELTA_QM9) -> dict[str, float]:
    """:func:`coverage_metrics` of the conformers of ``ref`` (reference ensemble) vs ``gen``."""
    return coverage_metrics(rmsd_matrix(ref, gen), delta)


def sample_metrics(ref: Chem.Mol, gen: Chem.Mol, ref_conf_id: int = -1, stereo: bool = True) -> dict[str, float]:
    """Metrics of ``gen``'s conformers against one reference conformer of ``ref``.

    Returns ``best_rmsd`` (best of n), ``mean_rmsd``, ``diversity`` (mean pairwise RMSD among
    the samples; NaN for n = 1), ``stereo_consistency`` (share of samples with the
    reference conformer's CIP labels at every stereo element) and ``n``.
    """
    one = Chem.Mol(ref, confId=ref.GetConformer(ref_conf_id).GetId())
    rm = rmsd_matrix(one, gen)[0]
    n = len(rm)
    pw = pairwise_rmsd(gen)
    div = float(pw[np.triu_indices(n, 1)].mean()) if n > 1 else float("nan")
    out = {"best_rmsd": float(rm.min()), "mean_rmsd": float(rm.mean()), "diversity": div, "n": n}
    if stereo:
        target = stereo_labels(one)
        ok = [all(stereo_labels(gen, c.GetId()).get(k) == v for k, v in target.items()) for c in gen.GetConformers()]
        out["stereo_consistency"] = float(np.mean(ok))
    return out
