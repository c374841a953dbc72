"""Rankers of a conformer pool, measured as rankers (issue #24, item 3).

A ranker gives every conformer of a molecule's pool (:mod:`~molconf.ground_state.energies`) a
score, lowest = its pick. On held-out pools :func:`score_rankers` reports, per ranker:

* ``spearman``: within-molecule Spearman correlation with the GFN2-xTB single-point energies,
  averaged over molecules with ≥ 3 conformers of distinct energies;
* ``top1``: share of molecules whose pick is GFN2-xTB's lowest conformer (within 0.1 kcal/mol:
  duplicate minima tie);
* ``c_rmsd`` / ``under_05``: heavy-atom C-RMSD of the pick to the data set's reference ground
  state, mean and share < 0.5 Å;
* ``cost``: conformers the ranker had to evaluate with GFN2-xTB per molecule.

Only conformers that keep the input's stereo take part. The rankers (:data:`RANKERS`):
``first`` (the first embedding: no ranking), ``mmff``, ``correction`` (MMFF94 + ΔE of the shipped
learned correction), ``gfn2_top<k>`` (GFN2-xTB single points of the k lowest MMFF94 minima, what
:func:`molconf.ground_state.search.search` does), ``gfn2`` (single points of all) and ``oracle``
(the lowest C-RMSD to the reference: the best the pool allows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rdkit import Chem

from molconf.ground_state.energies import Pool
from molconf.metrics import mol_with_coords


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def first(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    return np.arange(len(pool.e_mmff), dtype=float)


def mmff(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    return pool.e_mmff.copy()


def gfn2(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    return pool.e_gfn2.copy()


def gfn2_top(k: int) -> Callable[[Pool, Chem.Mol | None], np.ndarray]:
    """Single points of the ``k`` lowest MMFF94 minima (deduplicated at 0.05 kcal/mol, as the
    search does); the others rank after them, by MMFF94."""
    from molconf.ground_state.search import unique_minima

    def rank(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
        e = np.where(pool.stereo_ok, pool.e_mmff, np.inf)
        top = unique_minima(e.tolist(), 0.05)[:k]
        score = 1e6 + pool.e_mmff  # after every single point
        score[top] = pool.e_gfn2[top]
        return score

    rank.__name__ = f"gfn2_top{k}"
    return rank


def correction(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    """MMFF94 + ΔE of the shipped correction; MMFF94 alone where it does not apply."""
    from molconf.ground_state.search import corrected_energies

    m = mol_with_coords(mol, pool.pos[0])
    for x in pool.pos[1:]:
        m.AddConformer(mol_with_coords(mol, x).GetConformer(), assignId=True)
    e = corrected_energies(m, [c.GetId() for c in m.GetConformers()])
    return pool.e_mmff.copy() if e is None else np.asarray(e)


def oracle(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    return pool.rmsd_ref.copy()


RANKERS: dict[str, Callable] = {"first": first, "mmff": mmff, "correction": correction,
                                "gfn2_top2": gfn2_top(2), "gfn2_top4": gfn2_top(4), "gfn2": gfn2,
                                "oracle": oracle}
_GFN2_COST = {"gfn2_top2": 2, "gfn2_top4": 4}


def score_rankers(pools: Sequence[Pool], mols: dict[int, Chem.Mol], rankers: dict[str, Callable] = RANKERS) -> list[dict]:
    """One row per ranker (see the module docstring); ``mols``: the reference molecule per index."""
    rows = []
    for name, fn in rankers.items():
        rho, hit, rmsd, cost = [], [], [], []
        for p in pools:
            ok = p.stereo_ok & np.isfinite(p.e_gfn2) & np.isfinite(p.e_mmff)
            if not ok.any():
                continue
            score = np.where(ok, fn(p, mols.get(p.index)), np.inf)
            pick = int(np.argmin(score))
            rmsd.append(p.rmsd_ref[pick])
            hit.append(p.e_gfn2[pick] <= p.e_gfn2[ok].min() + 0.1)
            if ok.sum() >= 3 and np.ptp(p.e_gfn2[ok]) > 0 and np.ptp(score[ok]) > 0:
                rho.append(_spearman(score[ok], p.e_gfn2[ok]))
            cost.append(min(_GFN2_COST.get(name, ok.sum() if name == "gfn2" else 0), ok.sum()))
        rmsd = np.asarray(rmsd)
        rows.append({"ranker": name, "molecules": len(rmsd), "spearman": float(np.mean(rho)) if rho else float("nan"),
                     "top1": float(np.mean(hit)), "c_rmsd": float(rmsd.mean()), "under_05": float((rmsd < 0.5).mean()),
                     "gfn2_per_mol": float(np.mean(cost))})
    return rows
