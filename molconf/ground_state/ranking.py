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
(the lowest C-RMSD to the reference: the best the pool allows). :func:`among_lowest_by` builds
two-stage rankers (one ranker screens, another ranks the few it keeps).
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


def among_lowest_mmff(k: int, inner: Callable, name: str | None = None) -> Callable[[Pool, Chem.Mol | None], np.ndarray]:
    """``inner``'s scores for the ``k`` lowest MMFF94 minima (deduplicated at 0.05 kcal/mol, as the
    search does); the others rank after them, by MMFF94. The moses_xtb protocol itself relaxed only
    its three lowest MMFF94 minima."""
    return among_lowest_by(k, mmff, inner, name or f"{inner.__name__}_top{k}")


def among_lowest_by(k: int, screen: Callable, inner: Callable, name: str | None = None) -> Callable[[Pool, Chem.Mol | None], np.ndarray]:
    """``inner``'s scores for the ``k`` unique minima (MMFF94 energies deduplicated at 0.05 kcal/mol,
    as the search does) that ``screen`` scores lowest; the others rank after them, by ``screen``.
    What ``SearchSettings(screen=..., rank=..., top=k)`` does. Its ``gfn2_cost`` is ``k`` when
    ``inner`` is :func:`gfn2`."""
    from molconf.ground_state.search import unique_minima

    def rank(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
        e = np.where(pool.stereo_ok, pool.e_mmff, np.inf)
        screened = np.asarray(screen(pool, mol), dtype=float)
        unique = unique_minima(e.tolist(), 0.05)
        top = sorted(unique, key=lambda i: screened[i])[:k]  # stable: MMFF94 order breaks ties
        score = 1e6 + screened  # after every ranked one
        score[top] = inner(pool, mol)[top]
        return score

    rank.__name__ = name or f"{inner.__name__} of the {k} lowest by {screen.__name__}"
    if inner is gfn2:
        rank.gfn2_cost = k
    return rank


def gfn2_top(k: int) -> Callable[[Pool, Chem.Mol | None], np.ndarray]:
    """Single points of the ``k`` lowest MMFF94 minima, what the search's ``"gfn2"`` ranking does."""
    return among_lowest_mmff(k, gfn2)


def correction(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    """MMFF94 + ΔE of the shipped correction; MMFF94 alone where it does not apply."""
    return learned(None)(pool, mol)


def oracle(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
    return pool.rmsd_ref.copy()


RANKERS: dict[str, Callable] = {"first": first, "mmff": mmff, "correction": correction,
                                "gfn2_top2": gfn2_top(2), "gfn2_top3": gfn2_top(3), "gfn2_top4": gfn2_top(4), "gfn2": gfn2,
                                "oracle": oracle}


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
            spent = ok.sum() if fn is gfn2 else getattr(fn, "gfn2_cost", 0)  # GFN2-xTB single points it needs
            cost.append(min(spent, ok.sum()))
        rmsd = np.asarray(rmsd)
        rows.append({"ranker": name, "molecules": len(rmsd), "spearman": float(np.mean(rho)) if rho else float("nan"),
                     "top1": float(np.mean(hit)), "c_rmsd": float(rmsd.mean()), "under_05": float((rmsd < 0.5).mean()),
                     "gfn2_per_mol": float(np.mean(cost))})
    return rows


# --------------------------------------------------------------------------- a learned ranker
TARGETS = ("energy", "ground_state")
RMSD_TEMPERATURE = 0.1  # Å: how sharply the "ground_state" target prefers the conformer nearest the reference
SCORE_TEMPERATURE = 1.0  # kcal/mol: softmax scale of the scores in the "ground_state" loss


def _prepared(pools: Sequence[Pool], mols: dict[int, Chem.Mol], model) -> list[tuple]:
    """Per usable pool: (graph batch, positions (K', N, 3), MMFF94 energies (K',) kcal/mol, GFN2-xTB
    single points (K',) kcal/mol, C-RMSD to the reference (K',)) over its stereo-correct conformers
    with finite energies; molecules outside the model's elements skipped."""
    import torch

    from molconf.ground_state.correction import batch_pair_graphs

    known = getattr(model, "trained_elements", ())
    out = []
    for p in pools:
        mol = mols.get(p.index)
        ok = p.stereo_ok & np.isfinite(p.e_gfn2) & np.isfinite(p.e_mmff)
        if mol is None or ok.sum() < 2 or (known and any(a.GetAtomicNum() not in known for a in mol.GetAtoms())):
            continue
        out.append((batch_pair_graphs([model.graph(mol)]), *(torch.from_numpy(np.asarray(a[ok], np.float64))
                                                              for a in (p.pos, p.e_mmff, p.e_gfn2, p.rmsd_ref))))
    return out


def _loss(model, item, target: str):
    """``"energy"``: MSE (kcal/mol²) of the within-molecule differences of MMFF94 + ΔE against
    GFN2-xTB's (a constant per molecule is free). ``"ground_state"``: cross-entropy of a softmax over
    −(MMFF94 + ΔE) against one over −C-RMSD to the reference ground state (the pool's conformers
    nearest the data set's GFN2-xTB ground state should score lowest)."""
    import torch

    from molconf.ground_state.forces import KCAL_TO_EV

    batch, pos, e_mmff, e_gfn2, rmsd = item  # pos (K', N, 3); the rest (K',)
    coefficients = model.coefficients(batch)
    score = e_mmff + torch.stack([model.energy(x, coefficients, batch)[0] for x in pos]) / KCAL_TO_EV  # (K',) kcal/mol
    if target == "energy":
        d = (score - score.mean()) - (e_gfn2 - e_gfn2.mean())
        return (d**2).mean()
    want = torch.softmax(-rmsd / RMSD_TEMPERATURE, 0)
    return -(want * torch.log_softmax(-(score - score.min().detach()) / SCORE_TEMPERATURE, 0)).sum()


def fit_ranker(train: Sequence[Pool], mols: dict[int, Chem.Mol], base, target: str = "energy", epochs: int = 10,
               lr: float = 1e-4, val_fraction: float = 0.1, seed: int = 0, log=print):
    """The correction ``base`` fine-tuned as a ranker: MMFF94 + ΔE trained on the training pools with
    the loss of ``target`` (:func:`_loss`). Returns ``(model, history)``; the epoch with the lowest loss
    on the held-out ``val_fraction`` of the molecules is kept."""
    import copy

    import torch

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    torch.manual_seed(seed)
    model = copy.deepcopy(base).double()
    items = _prepared(train, mols, model)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_val = max(1, int(len(items) * val_fraction))
    val, fit = [items[i] for i in order[:n_val]], [items[i] for i in order[n_val:]]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(np.mean([float(_loss(model, it, target)) for it in val]))

    best = (val_loss(), copy.deepcopy(model.state_dict()), 0)
    history = [{"epoch": 0, "val": best[0]}]
    log(f"ranker ({target}): {len(fit)} training / {len(val)} validation pools; epoch 0 val loss {best[0]:.4f}")
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for i in rng.permutation(len(fit)):
            opt.zero_grad()
            loss = _loss(model, fit[i], target)
            loss.backward()
            # one molecule per step: a pool with a 30 kcal/mol outlier must not throw the model away
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        v = val_loss()
        history.append({"epoch": epoch, "train": float(np.mean(losses)), "val": v})
        log(f"epoch {epoch}: train {np.mean(losses):.4f}, val {v:.4f}")
        if v < best[0]:
            best = (v, copy.deepcopy(model.state_dict()), epoch)
    model.load_state_dict(best[1])
    model.trained_elements = getattr(base, "trained_elements", ())
    return model.eval(), history + [{"best_epoch": best[2]}]


def learned(model) -> Callable[[Pool, Chem.Mol | None], np.ndarray]:
    """MMFF94 + ΔE of a fitted ranker (:func:`fit_ranker`), as a ranker of pools."""
    from molconf.ground_state.search import corrected_energies

    def rank(pool: Pool, mol: Chem.Mol | None = None) -> np.ndarray:
        m = mol_with_coords(mol, pool.pos[0])
        for x in pool.pos[1:]:
            m.AddConformer(mol_with_coords(mol, x).GetConformer(), assignId=True)
        e = corrected_energies(m, [c.GetId() for c in m.GetConformers()], model)
        return pool.e_mmff.copy() if e is None else np.asarray(e)

    rank.__name__ = "learned" if model is not None else "correction"
    return rank
