"""Conformer search: candidates from several sources, refined with MMFF94, ranked, lowest kept.

A flexible molecule's ground state is a search problem: a single prediction averages over the
molecule's minima, while a handful of ETKDG conformers, each minimised with MMFF94, nearly
always holds a conformer close to the GFN2-xTB ground state; what decides is the choice among
them (issue #24; ``benchmarks/ground_state_anchors.py``). :func:`search` does, per molecule:

1. **candidates** (``settings.candidates`` = K in all): the network's own prediction (when the
   caller passes it) and ETKDGv3 embeddings (seed ``settings.seed``, one thread) for the rest;
2. **refine**: every candidate minimised with MMFF94 (``mmff_iters``); candidates whose MMFF94
   energies agree within ``dedup_kcal`` count once (they are almost always the same minimum);
3. **screen** (``settings.screen``): the ``top`` minima the ranker sees are the lowest by the
   learned ranker below (``"learned"``, the default: two of them; no quantum chemistry, and it
   orders a pool far more like GFN2-xTB does than MMFF94 — ``benchmarks/results/rankers.md``) or
   by MMFF94 (``"mmff"``: three, as the moses_xtb protocol took its three lowest further; also
   where the learned ranker does not cover the molecule's elements);
4. **rank** (``settings.rank``) the screened minima:

   ``"gfn2"``
       GFN2-xTB single points (tblite), lowest kept;
   ``"learned"``
       MMFF94 + ΔE of the learned ranker (``molconf/weights/moses_xtb_gfn2_ranker.pt``: the
       GFN2-xTB correction fine-tuned on GFN2-xTB energies of conformer pools,
       :func:`~molconf.ground_state.ranking.fit_ranker`): no quantum chemistry at all;
   ``"correction"``
       MMFF94 + ΔE of the shipped GFN2-xTB correction (:mod:`~molconf.ground_state.correction`);
   ``"mmff"``
       the lowest MMFF94 energy.

Stereo: ETKDG embeds the stereo the input specifies, the network's candidate arrives already
checked by ``predict``, and a candidate whose CIP labels differ from the input's after MMFF94
is dropped. The returned :class:`SearchResult` names the winning source and every candidate's
energies relative to the winner.

``molconf.predict(mols, search=K)`` calls this with the network's prediction as one candidate
(``search=True``: :data:`DEFAULT_CANDIDATES`); a molecule whose search fails keeps the single
prediction, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf.stereo import stereo_spec

RANKERS = ("gfn2", "learned", "correction", "mmff")
SCREENS = ("mmff", "learned")
# Minima the ranker sees per screen. On 300 held-out test pools of ten (benchmarks/results/rankers.md),
# GFN2-xTB single points of the 3 lowest MMFF94 minima find GFN2-xTB's lowest of the ten for 88 % of the
# molecules, of the 2 lowest by the learned ranker for 94 %; in the anchors (ground_state_anchors.md) the
# learned screen with 2 ends 0.06 kcal/mol lower on average (95 % CI 0.01-0.11) than the MMFF94 screen
# with 3, at the same C-RMSD and D-MAE, for one single point less (on 100 other test molecules, checked
# after the choice: 0.09 lower, CI 0.01-0.19; benchmarks/results/anchors_holdout/).
DEFAULT_TOP = {"mmff": 3, "learned": 2}
DEFAULT_RANKER = Path(__file__).parents[1] / "weights" / "moses_xtb_gfn2_ranker.pt"
DEFAULT_CANDIDATES = 10
# Not 42, the seed of the moses_xtb build's own ETKDG stream (a search with it would regenerate
# the reference's candidates), and not 0 (RDKit 2026.09 returns K identical conformers for it).
DEFAULT_SEED = 7
EV_TO_KCAL = 23.060548


@dataclass(frozen=True)
class SearchSettings:
    """Every knob of :func:`search` (see the module docstring)."""

    candidates: int = DEFAULT_CANDIDATES  # K, the network's candidate included
    seed: int = DEFAULT_SEED  # ETKDGv3 random seed
    rank: str = "gfn2"  # one of RANKERS
    screen: str = "learned"  # one of SCREENS: which energy picks the `top` minima the ranker sees
    # how many screened minima the ranker sees (not "mmff", which ranks all); None: DEFAULT_TOP of the
    # screen that ran (the learned screen falls back to MMFF94 where its model does not cover the molecule)
    top: int | None = None
    mmff_iters: int = 500
    dedup_kcal: float = 0.05  # MMFF94 energies closer than this: the same minimum

    def __post_init__(self):
        if self.rank not in RANKERS:
            raise ValueError(f"rank must be one of {RANKERS}, not {self.rank!r}")
        if self.screen not in SCREENS:
            raise ValueError(f"screen must be one of {SCREENS}, not {self.screen!r}")
        if self.candidates < 1 or (self.top is not None and self.top < 1):
            raise ValueError("candidates and top must be >= 1")
        if self.seed == 0:
            raise ValueError("seed 0 makes RDKit embed identical conformers; use another seed")


@dataclass
class Candidate:
    """One refined candidate: where it came from and its energies (kcal/mol; None: not computed)."""

    source: str  # "network", "etkdg", or "etkdg (stereo fallback)": predict's replacement of a wrongly handed prediction
    conf_id: int
    mmff_kcal: float
    rank_kcal: float | None = None  # the ranker's energy (GFN2-xTB, MMFF94 + ΔE, or MMFF94)


@dataclass
class SearchResult:
    """The molecule with the winning conformer (its only one) and what the search saw."""

    mol: Chem.Mol
    winner: Candidate
    candidates: list[Candidate] = field(default_factory=list)  # unique minima, lowest MMFF94 first
    ranker: str = "gfn2"
    screen: str = "mmff"  # the screen that ran ("mmff" where the learned one did not cover the molecule)

    def note(self) -> str:
        ranked = sorted(c.rank_kcal - self.winner.rank_kcal for c in self.candidates
                        if c.rank_kcal is not None and c is not self.winner)
        rel = ", ".join(f"{e:+.2f}" for e in ranked[:5])
        n_ranked = sum(c.rank_kcal is not None for c in self.candidates)
        return (f"search: {len(self.candidates)} unique MMFF94 minima, {n_ranked} ranked by {self.ranker}"
                + (f" (screened by {self.screen})" if self.ranker != "mmff" else "") + "; winner from "
                f"{self.winner.source}" + (f"; next lowest {rel} kcal/mol" if rel else ""))


def etkdg_candidates(mol: Chem.Mol, n: int, seed: int) -> Chem.Mol:
    """``mol`` (explicit H) with up to ``n`` ETKDGv3 conformers (one thread), no others."""
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    if n <= 0:
        return m
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    if not list(AllChem.EmbedMultipleConfs(m, n, params)):
        params.useRandomCoords = True
        AllChem.EmbedMultipleConfs(m, n, params)
    return m


def mmff_minimise(mol: Chem.Mol, max_iters: int = 500) -> list[float] | None:
    """MMFF94-minimise every conformer in place: energies (kcal/mol; inf where the minimiser
    failed), or None when MMFF94 has no parameters for the molecule."""
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return None
    res = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=max_iters)
    return [e if not_conv in (0, 1) else float("inf") for not_conv, e in res]


class PoolError(ValueError):
    """No usable conformer pool for a molecule; the message is the reason."""


def mmff_pool(mol: Chem.Mol, n: int, seed: int, max_iters: int = 500) -> tuple[Chem.Mol, list[int], list[float], list[bool]]:
    """``n`` ETKDGv3 conformers of ``mol`` minimised with MMFF94: (pool, conformer ids, MMFF94 energies
    in kcal/mol, whether each keeps ``mol``'s stereo). Raises :class:`PoolError` with the reason when
    ETKDG embeds nothing or MMFF94 has no parameters."""
    pool = etkdg_candidates(mol, n, seed)
    if pool.GetNumConformers() == 0:
        raise PoolError("ETKDG embedded no conformer")
    energies = mmff_minimise(pool, max_iters)
    if energies is None:
        raise PoolError("no MMFF94 parameters")
    ids = [c.GetId() for c in pool.GetConformers()]
    spec = stereo_spec(mol)
    return pool, ids, energies, [not spec.mismatches(pool.GetConformer(c).GetPositions()) for c in ids]


def unique_minima(energies: list[float], dedup_kcal: float) -> list[int]:
    """Positions of the minima kept, lowest energy first: one per group of energies within
    ``dedup_kcal`` of the last kept (infinite energies dropped).

    >>> unique_minima([1.0, 0.0, 0.02, 5.0, float("inf")], 0.05)
    [1, 0, 3]
    """
    order = [i for i in np.argsort(energies, kind="stable").tolist() if np.isfinite(energies[i])]
    kept: list[int] = []
    for i in order:
        if not kept or energies[i] - energies[kept[-1]] > dedup_kcal:
            kept.append(i)
    return kept


def gfn2_single_points(mol: Chem.Mol, conf_ids: list[int]) -> list[float]:
    """GFN2-xTB energies (kcal/mol; inf where the SCF failed) at the given conformers."""
    from molconf.ground_state.xtb import XtbProtocol, gfn2_energy

    protocol = XtbProtocol()
    out = []
    for cid in conf_ids:
        try:
            out.append(gfn2_energy(mol, protocol, conf_id=cid) * EV_TO_KCAL)
        except RuntimeError:
            out.append(float("inf"))
    return out


def corrected_energies(mol: Chem.Mol, conf_ids: list[int], model=None) -> list[float] | None:
    """MMFF94 + ΔE of the learned correction (kcal/mol) at the given conformers; None when the
    correction does not cover the molecule's elements or MMFF94 has no parameters."""
    import torch

    from molconf.ground_state.correction import batch_pair_graphs
    from molconf.ground_state.forces import KCAL_TO_EV, mmff_forcefield
    from molconf.ground_state.prerelax import DEFAULT_CORRECTION, load_correction

    model = load_correction(DEFAULT_CORRECTION) if model is None else model
    known = getattr(model, "trained_elements", ())
    if known and any(a.GetAtomicNum() not in known for a in mol.GetAtoms()):
        return None
    ff = mmff_forcefield(mol, conf_ids[0]) if conf_ids else None
    if ff is None:
        return None
    batch = batch_pair_graphs([model.graph(mol)])
    out = []
    with torch.no_grad():
        coefficients = model.coefficients(batch)
        for cid in conf_ids:
            pos = mol.GetConformer(cid).GetPositions()
            de = float(model.energy(torch.from_numpy(pos), coefficients, batch).sum()) / KCAL_TO_EV
            out.append(ff.CalcEnergy(pos.reshape(-1).tolist()) + de)
    return out


def learned_energies(mol: Chem.Mol, conf_ids: list[int]) -> list[float] | None:
    """MMFF94 + ΔE of the shipped learned ranker (kcal/mol) at the given conformers; None where the
    model does not cover the molecule's elements (or MMFF94 has no parameters)."""
    from molconf.ground_state.prerelax import load_correction

    return corrected_energies(mol, conf_ids, load_correction(DEFAULT_RANKER))


def rank_energies(mol: Chem.Mol, conf_ids: list[int], mmff_kcal: list[float], rank: str,
                  top: int | None = None, screen: str = "mmff") -> tuple[list[float | None], str]:
    """The ranker's energy per conformer (kcal/mol), None where it was not computed, and the screen
    that ran. The ranker sees the ``top`` (None: :data:`DEFAULT_TOP`) minima ``screen`` scores lowest
    (``conf_ids`` come lowest MMFF94 energy first); ``"mmff"`` ranks all. Where the learned ranker does
    not cover the molecule, the learned screen falls back to MMFF94 (and its default ``top``) and the
    learned ranking to MMFF94 energies.

    >>> m = Chem.AddHs(Chem.MolFromSmiles("CCCO"))
    >>> ids = list(AllChem.EmbedMultipleConfs(m, 4, randomSeed=1))
    >>> energies, screen = rank_energies(m, ids, [1.0, 2.0, 3.0, 4.0], "correction", screen="mmff")
    >>> [e is None for e in energies], screen
    ([False, False, False, True], 'mmff')
    """
    if rank == "mmff":
        return list(mmff_kcal), "mmff"
    screen_kcal = learned_energies(mol, conf_ids) if screen == "learned" else None
    if screen_kcal is None:
        screen, screen_kcal = "mmff", list(mmff_kcal)
    k = DEFAULT_TOP[screen] if top is None else top
    chosen = sorted(np.argsort(screen_kcal, kind="stable")[:k].tolist())  # positions in conf_ids
    ids = [conf_ids[i] for i in chosen]
    if rank == "gfn2":
        energies = gfn2_single_points(mol, ids)
    elif rank == "learned" and screen == "learned":
        energies = [screen_kcal[i] for i in chosen]
    else:
        energies = (learned_energies(mol, ids) if rank == "learned" else corrected_energies(mol, ids)) \
            or [mmff_kcal[i] for i in chosen]
    out: list[float | None] = [None] * len(conf_ids)
    for i, e in zip(chosen, energies):
        out[i] = e
    return out, screen


def search(mol: Chem.Mol, settings: SearchSettings = SearchSettings(), network: Chem.Mol | None = None) -> SearchResult:
    """The lowest-ranked of ``settings.candidates`` refined conformers of ``mol`` (explicit H).

    ``network``: the network's prediction for ``mol`` (same atoms; its first conformer is a
    candidate). Raises ``ValueError`` naming the reason when no candidate survives (no MMFF94
    parameters, no embedding, every candidate's stereo wrong); the caller keeps its prediction.

    >>> m = Chem.AddHs(Chem.MolFromSmiles("CCCCO"))
    >>> r = search(m, SearchSettings(candidates=4, rank="mmff"))
    >>> r.mol.GetNumConformers(), r.winner.source
    (1, 'etkdg')
    """
    n_network = 1 if network is not None and network.GetNumConformers() else 0
    pool = etkdg_candidates(mol, settings.candidates - n_network, settings.seed)
    sources = ["etkdg"] * pool.GetNumConformers()
    if n_network:
        conf = Chem.Conformer(network.GetConformer())
        pool.AddConformer(conf, assignId=True)
        # a prediction predict's stereo fallback replaced by an ETKDG conformer is not the network's
        fallback = network.HasProp("molconf_stereo_fallback") and network.GetProp("molconf_stereo_fallback") == "etkdg"
        sources.append("etkdg (stereo fallback)" if fallback else "network")
    if pool.GetNumConformers() == 0:
        raise ValueError("no candidate conformer: ETKDG embedded none")
    energies = mmff_minimise(pool, settings.mmff_iters)
    if energies is None:
        raise ValueError("no MMFF94 parameters for the molecule")
    ids = [c.GetId() for c in pool.GetConformers()]
    spec = stereo_spec(mol)
    for i, cid in enumerate(ids):  # a candidate whose stereo moved is not a conformer of this molecule
        if spec.mismatches(pool.GetConformer(cid).GetPositions()):
            energies[i] = float("inf")
    keep = unique_minima(energies, settings.dedup_kcal)
    if not keep:
        raise ValueError("no candidate kept the input's stereo after MMFF94 minimisation")
    kept_ids = [ids[i] for i in keep]
    ranked, screen = rank_energies(pool, kept_ids, [energies[i] for i in keep], settings.rank, settings.top,
                                   settings.screen)
    cands = [Candidate(sources[i], ids[i], energies[i], r) for i, r in zip(keep, ranked)]
    scored = [c for c in cands if c.rank_kcal is not None and np.isfinite(c.rank_kcal)]
    winner = min(scored, key=lambda c: c.rank_kcal) if scored else cands[0]
    if winner.rank_kcal is None or not np.isfinite(winner.rank_kcal):
        winner.rank_kcal = winner.mmff_kcal
    out = Chem.Mol(pool, confId=winner.conf_id)
    out.GetConformer().SetId(0)
    return SearchResult(out, winner, cands, settings.rank, screen)
