"""Prediction API: RDKit ``Mol`` or SMILES in, ``Mol`` with the predicted conformer out.

>>> from molconf import predict                                   # doctest: +SKIP
>>> [mol] = predict("CCO")                                         # doctest: +SKIP
>>> mol.GetNumConformers(), mol.GetNumAtoms()                      # doctest: +SKIP
(1, 9)
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf import _rdkit as _rd
from molconf import constants as K
from molconf.bond_guard import guard_bonds, impossible_bonds
from molconf.data.dataset import collate_graphs
from molconf.data.features import featurize
from molconf.errors import MoleculeError
from molconf.metrics import mol_with_coords
from molconf.models import ConformerTransformer, load_model
from molconf.standardize import Standardized, radical_problem, standardize, transfer_coordinates
from molconf.stereo import StereoReport, cip_mismatches, enforce_stereo, stereo_spec
from molconf.stereo_fallback import stereo_fallback

WEIGHTS_DIR = Path(__file__).parent / "weights"
# model="default" routes each molecule to the first of these (shipped) models whose training
# data covers its elements and size: QM9's small organics first, then drug-like molecules
DEFAULT_MODELS = ("qm9_rebind", "moses_xtb_gtmgc")
RELAX_METHODS = (None, "mmff", "uff", "xtb")
PRECISIONS = ("auto", "float32", "bfloat16")
_PERIODIC = Chem.GetPeriodicTable()


@dataclass
class LoadedModel:
    """A network plus what its model card says it covers."""

    name: str
    network: ConformerTransformer
    elements: tuple[int, ...]  # atomic numbers it was trained on
    max_atoms: int  # largest molecule (with H) in its training data
    meta: dict = field(default_factory=dict)
    # largest heavy-atom count in its training data (None: not recorded). Atoms with H alone
    # would let a 19-heavy-atom molecule with few H pass as "QM9-sized" (≤ 29 atoms)
    max_heavy_atoms: int | None = None

    @property
    def size_limit(self) -> int:
        """Largest molecule accepted: twice the training maximum (beyond that, refused)."""
        return 2 * self.max_atoms

    @property
    def heavy_limit(self) -> int | None:
        """Largest heavy-atom count accepted: twice the training maximum (None: no limit)."""
        return None if self.max_heavy_atoms is None else 2 * self.max_heavy_atoms

    @classmethod
    def from_meta(cls, name: str, network: ConformerTransformer, meta: dict) -> LoadedModel:
        """A model from its weights' metadata (what its card says it covers)."""
        heavy = meta.get("max_heavy_atoms")
        return cls(meta.get("name", name), network, tuple(meta.get("elements", range(1, 119))),
                   int(meta.get("max_atoms", 10_000)), meta, None if heavy is None else int(heavy))


@dataclass
class Failure:
    """One input that got no prediction."""

    index: int
    input: str
    reason: str

    def __str__(self) -> str:
        return f"input #{self.index} ({self.input}): {self.reason}"


@dataclass
class PredictionReport:
    """Everything :func:`predict` did besides returning molecules."""

    model: str  # the model(s) used, "a + b" when molecules went to different models
    precision: str = "float32"  # what the network ran in ("auto" resolved)
    models: dict[int, str] = field(default_factory=dict)  # index -> model that predicted it
    failures: list[Failure] = field(default_factory=list)
    notes: dict[int, list[str]] = field(default_factory=dict)  # index -> remarks (not failures)
    stereo: dict[int, StereoReport] = field(default_factory=dict)
    # index -> the search's outcome (``search=K``): winning source, candidates, relative energies
    search: dict[int, dict] = field(default_factory=dict)

    def note(self, index: int, text: str) -> None:
        self.notes.setdefault(index, []).append(text)


def available_models() -> list[str]:
    """Names of the conformer models shipped inside the package (not the GFN2-xTB correction
    of :mod:`molconf.ground_state.prerelax`, which lives beside them)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt") if "_gfn2_" not in p.stem)  # not the correction / ranker


def resolve_model(model: str | Path | ConformerTransformer | LoadedModel = "default") -> LoadedModel:
    """One model: a shipped one by name (``"default"`` = :data:`DEFAULT_MODELS`' first, the QM9
    model), a weights/checkpoint path, or a network."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, ConformerTransformer):
        return LoadedModel("custom", model.eval(), tuple(range(1, 119)), 10_000)
    name = DEFAULT_MODELS[0] if model == "default" else str(model)
    path = WEIGHTS_DIR / f"{name}.pt" if (WEIGHTS_DIR / f"{name}.pt").is_file() else Path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"model {str(model)!r}: no such file and not a shipped model (shipped: {', '.join(available_models())})"
        )
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, "cpu")


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int, device: str) -> LoadedModel:
    """A model file read once per process: keyed by its resolved path and device, and by its
    modification time and size, so a file rewritten in place (a new checkpoint) is read again.
    The cached network is shared by every call; :func:`predict` only runs it in eval mode under
    ``torch.inference_mode`` and never changes it."""
    network, meta = load_model(path, map_location=device)
    return LoadedModel.from_meta(Path(path).stem, network, meta)


def clear_model_cache() -> None:
    """Forget every model :func:`resolve_model` has read (the next call reads the file again)."""
    _load_cached.cache_clear()


def resolve_models(model="default") -> list[LoadedModel]:
    """The candidate models of a :func:`predict` call, in order of preference.

    ``"default"`` gives every shipped model of :data:`DEFAULT_MODELS`; a list gives its
    members (each as in :func:`resolve_model`); anything else gives one model.
    """
    if isinstance(model, str) and model == "default":
        names = [n for n in DEFAULT_MODELS if (WEIGHTS_DIR / f"{n}.pt").is_file()]
        if not names:
            raise FileNotFoundError(f"no default model in {WEIGHTS_DIR} (expected {DEFAULT_MODELS})")
        return [resolve_model(n) for n in names]
    if isinstance(model, (list, tuple)):
        if not model:
            raise ValueError("model: an empty list of models")
        return [resolve_model(m) for m in model]
    return [resolve_model(model)]


def coverage_problem(mol: Chem.Mol, model: LoadedModel, within_training: bool = False) -> str | None:
    """Why ``model`` cannot predict ``mol`` (explicit H), or None if it can.

    Sizes are checked against the model's refusal limits (twice its training data's largest
    molecule, in atoms with H and in heavy atoms), or, with ``within_training``, against the
    training data's largest molecule itself."""
    unsupported = sorted({a.GetAtomicNum() for a in _rd.atoms(mol)} - set(model.elements))
    if unsupported:
        names = ", ".join(_PERIODIC.GetElementSymbol(z) for z in unsupported)
        known = ", ".join(_PERIODIC.GetElementSymbol(z) for z in model.elements)
        return f"element(s) {names} not supported by model '{model.name}' (supports {known})"
    n = mol.GetNumAtoms()
    if n > (model.max_atoms if within_training else model.size_limit):
        return (f"{n} atoms (with H) is {'beyond' if within_training else 'far beyond'} model "
                f"'{model.name}' (trained on ≤ {model.max_atoms}; refuses > {model.size_limit})")
    if model.max_heavy_atoms is not None:
        heavy = mol.GetNumHeavyAtoms()
        if heavy > (model.max_heavy_atoms if within_training else model.heavy_limit):
            return (f"{heavy} heavy atoms is {'beyond' if within_training else 'far beyond'} model "
                    f"'{model.name}' (trained on ≤ {model.max_heavy_atoms}; refuses > {model.heavy_limit})")
    return None


def choose_model(mol: Chem.Mol, candidates: Sequence[LoadedModel], label: str | Callable[[], str] = "") -> LoadedModel:
    """The model that predicts ``mol`` (explicit H): the first candidate whose training data
    covers its elements and size (atoms with H and, where recorded, heavy atoms); else the
    candidate trained on the largest molecules among those covering its elements, up to its
    refusal limits (``size_limit``, ``heavy_limit``). Raises :class:`MoleculeError` with
    every candidate's reason when none fits, naming the molecule by ``label`` (a string, or a
    function making one, called only then) or else its SMILES."""
    for model in candidates:
        if coverage_problem(mol, model, within_training=True) is None:
            return model
    for model in sorted(candidates, key=lambda m: -m.max_atoms):
        if coverage_problem(mol, model) is None:
            return model
    reasons = [coverage_problem(mol, m) for m in candidates]
    label = label() if callable(label) else label
    raise MoleculeError(label or Chem.MolToSmiles(mol), "; ".join(reasons) if len(reasons) == 1
                        else f"no model covers it: {'; '.join(reasons)}")


def _describe(item) -> str:
    if isinstance(item, str):
        return repr(item if len(item) <= 60 else item[:57] + "...")
    if isinstance(item, Chem.Mol):
        name = item.GetProp("_Name") if item.HasProp("_Name") else ""
        return f"Mol {name!r}" if name else f"Mol {Chem.MolToSmiles(item)}"
    return type(item).__name__


def _refusal(item) -> Callable[[str], MoleculeError]:
    def refuse(reason: str) -> MoleculeError:
        # the label is made only for a refusal: for a Mol without a name it is a SMILES,
        # which would cost a tenth of a millisecond on every good molecule
        return MoleculeError(_describe(item), reason)

    return refuse


def standardize_input(item) -> Standardized:
    """Read one input for :func:`predict`: a salt or mixture keeps its largest organic
    fragment, a charged molecule is predicted as its neutral form and returned with its own
    charges (:func:`molconf.standardize.standardize`; ``notes`` say what was done).

    Raises :class:`MoleculeError` naming the input and the reason (unreadable, radical).
    """
    refuse = _refusal(item)
    mol = _read_input(item, refuse)
    try:
        return standardize(mol)
    except ValueError as err:  # MoleculeError (a radical) included
        raise refuse(getattr(err, "reason", str(err))) from None


def parse_input(item) -> Chem.Mol:
    """Validate one input strictly and return it as a sanitised ``Mol`` with explicit H and no
    conformer: one neutral closed-shell molecule (what :func:`molconf.generate` takes;
    :func:`predict` reads its inputs with :func:`standardize_input` instead).

    Raises :class:`MoleculeError` naming the input and the reason.
    """
    refuse = _refusal(item)
    mol = _read_input(item, refuse)
    n_frag = len(Chem.GetMolFrags(mol))
    if n_frag > 1:
        raise refuse(f"{n_frag} disconnected fragments (a salt or mixture?): predict one molecule at a time, "
                     "e.g. keep the largest fragment (molconf.predict does)")
    problem = radical_problem(mol)
    if problem:
        raise refuse(problem)
    charge = Chem.GetFormalCharge(mol)
    if charge:
        raise refuse(f"net charge {charge:+d}: the model was trained on neutral molecules "
                     "(molconf.predict predicts a charged molecule as its neutral form)")
    mol = Chem.AddHs(mol, addCoords=False)
    mol.RemoveAllConformers()
    return mol


def _read_input(item, refuse: Callable[[str], MoleculeError]) -> Chem.Mol:
    """One input as a sanitised ``Mol`` with at least one atom, as given (H, fragments, charges)."""
    if item is None:
        raise refuse("no molecule (None)")
    if isinstance(item, str):
        if not item.strip():
            raise refuse("empty input")
        mol = _rd.mol_from_smiles_quietly(item.strip())
        if mol is None:
            raise refuse("invalid SMILES")
    elif isinstance(item, Chem.Mol):
        mol = Chem.Mol(item)
        try:
            Chem.SanitizeMol(mol)
        except Exception as err:
            raise refuse(f"RDKit cannot sanitise it ({err})") from None
    else:
        raise refuse("expected a SMILES string or an RDKit Mol")
    if mol.GetNumAtoms() == 0:
        raise refuse("no atoms")
    return mol


def prepare(item, model: LoadedModel) -> Chem.Mol:
    """:func:`parse_input`, then refuse what ``model`` does not cover (elements, size)."""
    mol = parse_input(item)
    problem = coverage_problem(mol, model)
    if problem:
        raise MoleculeError(_describe(item), problem)
    return mol


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX, read from
    /proc/cpuinfo; False where that cannot be read). Without it bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """``"auto"`` → ``"bfloat16"`` where the CPU has native bf16, else ``"float32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return precision


def _autocast(precision: str):
    # bf16 autocast runs the matrix products in bf16 and keeps norms, softmax, the
    # Lennard-Jones rewiring and the coordinate output layer in float32; per-element
    # rounding only, so a molecule's result does not depend on its batch
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


@contextlib.contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def relax(mol: Chem.Mol, method: str, max_iters: int = 2000) -> str | None:
    """Optimise the conformer in place with MMFF94, UFF or GFN2-xTB; returns a note if it could not.

    ``"xtb"`` (needs tblite) first optimises with MMFF94 (UFF where MMFF has no parameters),
    as the GFN2-xTB data protocol does, then after MMFF94 minimises MMFF94 + the shipped learned
    GFN2-xTB correction with torsions held (:func:`molconf.ground_state.prerelax.prerelax`), then
    optimises with GFN2-xTB at the data's optimiser settings
    (:class:`molconf.ground_state.xtb.XtbProtocol`), and always returns a note: the start,
    steps and energy, or why the conformer was left at the start geometry / not converged.
    """
    if method == "mmff":
        if not AllChem.MMFFHasAllMoleculeParams(mol):
            return "no MMFF parameters: conformer left unrelaxed"
        AllChem.MMFFOptimizeMolecule(mol, maxIters=max_iters)
    elif method == "uff":
        if not AllChem.UFFHasAllMoleculeParams(mol):
            return "no UFF parameters: conformer left unrelaxed"
        AllChem.UFFOptimizeMolecule(mol, maxIters=max_iters)
    elif method == "xtb":
        from molconf.ground_state.xtb import XtbProtocol, preoptimize, xtb_relax_note  # tblite loads only when asked for

        # A raw prediction is a poor GFN2-xTB start: on 100 moses_xtb test molecules it took a
        # median 108 optimiser steps against 24 after MMFF94, and GFN2-xTB changed the bond
        # graph of 20 of them against none (benchmarks/results/xtb_relax.md). A force field
        # fixes bond lengths and angles for a few ms, so it goes first.
        # (the data protocol's own pre-optimisation: MMFF94, else UFF, else none)
        _, field = preoptimize(mol, XtbProtocol(ff_max_iters=max_iters))
        start = "the prediction" if field == "none" else f"the {field} geometry"
        if field == "MMFF94":
            from molconf.ground_state.prerelax import prerelax

            # bond lengths and angles towards GFN2-xTB's: on 100 moses_xtb test molecules a median
            # 18 GFN2-xTB steps instead of 24 (benchmarks/results/xtb_relax.md)
            corrected = prerelax(mol)
            start = ("the MMFF94 + GFN2-correction geometry" if corrected.applied
                     else f"the MMFF94 geometry (GFN2 correction not applied: {corrected.reason})")
        return xtb_relax_note(mol, start=start)
    else:
        raise ValueError(f"relax must be one of {RELAX_METHODS}, got {method!r}")
    return None


def predict(
    mols,
    model="default",
    batch_size: int = 64,
    relax_with: str | None = None,
    num_threads: int | None = None,
    fix_stereo: bool = True,
    repair_bonds: bool = True,
    return_report: bool = False,
    progress: bool = False,
    precision: str = "auto",
    workers: int = 1,
    search=False,
):
    """Predict one ground-state conformer per molecule.

    Parameters
    ----------
    mols : str, rdkit.Chem.Mol, or a sequence of them
        SMILES strings and/or RDKit molecules (hydrogens are added if missing).
    model : str, path, ConformerTransformer, or a list of them
        ``"default"``: each molecule goes to the first shipped model of
        :data:`DEFAULT_MODELS` that covers its elements and size (QM9's model for small
        H/C/N/O/F molecules, the drug-like MOSES/GFN2-xTB model for the rest); the report's
        ``models`` and each result's ``molconf_model`` property say which. Otherwise a shipped
        model's name, a weights or Lightning checkpoint file, a network, or a list of these to
        choose from in the same way.
    batch_size : int
        Molecules per forward pass (in float32 results do not depend on it; under bfloat16 a
        molecule's rounding depends on the molecules it is batched with).
    relax_with : {None, "mmff", "uff", "xtb"}
        Optional optimisation of each prediction: a force field, or GFN2-xTB after MMFF94
        (needs ``pip install 'molconf[xtb]'``; its steps and energy are noted in the report).
    num_threads : int, optional
        torch threads to use (restored afterwards).
    fix_stereo : bool
        Repair predictions whose stereocentres / double bonds disagree with the input
        (see :mod:`molconf.stereo`); where no rigid move works, fall back to the prediction
        minimised with MMFF94 and repaired, else the closest stereo-correct ETKDG conformer
        (:mod:`molconf.stereo_fallback`; noted, and the Mol's ``molconf_stereo_fallback``
        property says which); what neither can repair is reported.
    repair_bonds : bool
        Check every bond length against physical bounds (:mod:`molconf.bond_guard`: covalent
        radii scaled by bond order, ±25%) and repair the offending atoms with a local MMFF94
        polish (the rest of the prediction held fixed); the report notes each repair. With
        ``False`` the network's output is returned as it is (impossible bonds included).
    return_report : bool
        Also return a :class:`PredictionReport`.
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the network's matrix products. ``"auto"`` (default) uses bfloat16
        where the CPU multiplies it in hardware (AVX512-BF16 / AMX: ~2.3× faster; on the QM9
        test split D-MAE changes by < 0.5%, see ``benchmarks/results/predict_speed.md``)
        and float32 elsewhere; ``"float32"`` for the reference arithmetic. The report says
        which ran.
    workers : int
        Processes to spread the batches over (forked, one torch thread each; where fork is
        not available, 1). ``workers=2`` on two cores also runs the per-molecule Python work
        (featurisation, stereo check, relaxation) in parallel; results are the same up to
        float rounding of one vs several torch threads.
    search : bool, int or molconf.ground_state.search.SearchSettings
        ``K`` (or ``True`` for :data:`~molconf.ground_state.search.DEFAULT_CANDIDATES`): a
        conformer search per molecule (:mod:`molconf.ground_state.search`): the prediction and
        K − 1 ETKDG conformers, each minimised with MMFF94, the two a learned ranker scores lowest
        ranked by GFN2-xTB single points (needs tblite), the lowest returned (then relaxed with
        ``relax_with`` if given). The report's ``search`` names each molecule's winning source and the
        candidates' relative energies; a molecule whose search fails keeps the single
        prediction, with a note. ``False`` (default): the prediction alone. A ``SearchSettings``
        sets every knob (the screen, the ranker, the seed, how many minima are ranked).

    Returns
    -------
    list of rdkit.Chem.Mol or None
        In input order; ``None`` where the input could not be predicted. Each failure is
        named (index, input, reason) in one warning and in the report.
    """
    single = isinstance(mols, (str, Chem.Mol))
    items = [mols] if single else list(mols)
    if relax_with not in RELAX_METHODS:
        raise ValueError(f"relax_with must be one of {RELAX_METHODS}, got {relax_with!r}")
    settings = _search_settings(search)
    if relax_with == "xtb" or (settings is not None and settings.rank == "gfn2"):
        from molconf.ground_state.xtb import require_tblite  # a missing tblite: one clear error, not one per molecule

        require_tblite()
    candidates = resolve_models(model)
    report = PredictionReport(model=" / ".join(m.name for m in candidates), precision=resolve_precision(precision))
    prepared: dict[int, Chem.Mol] = {}
    forms: dict[int, Standardized] = {}  # inputs whose returned molecule is not the one predicted
    chosen: dict[int, LoadedModel] = {}
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            form = standardize_input(item)
            mol = form.model_input
            chosen[i] = choose_model(mol, candidates, functools.partial(_describe, item))
        except MoleculeError as err:
            report.failures.append(Failure(i, err.molecule, err.reason))
            continue
        for text in form.notes:
            report.note(i, text)
        if form.changed:
            forms[i] = form
        if (beyond := coverage_problem(mol, chosen[i], within_training=True)) is not None:
            report.note(i, f"{beyond}: expect a rougher geometry")
        key = Chem.MolToSmiles(form.mol)  # what is returned (C[NH3+] and CN differ)
        if key in first_seen:
            report.note(i, f"duplicate of input #{first_seen[key]} (same prediction)")
        first_seen.setdefault(key, i)
        prepared[i] = mol
    report.models = {i: chosen[i].name for i in prepared}
    used = [m for m in candidates if any(c is m for c in chosen.values())]
    if used:
        report.model = " + ".join(m.name for m in used)
    results: list[Chem.Mol | None] = [None] * len(items)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prepared), desc="predicting", unit="mol")
    jobs = []  # (model index, molecule indices) per batch, sorted by size so batches pad little
    for m, loaded in enumerate(candidates):
        order = sorted((i for i in prepared if chosen[i] is loaded), key=lambda i: prepared[i].GetNumAtoms())
        jobs += [(m, order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
    state = _BatchState(prepared, candidates, relax_with, fix_stereo, report.precision, items, repair_bonds,
                        forms=forms, search=settings)
    workers = _usable_workers(workers, len(jobs))
    if workers == 1:
        with _threads(num_threads):
            outcomes = map(state.run, jobs)
            _collect(outcomes, results, report, bar)
    else:
        # fork: the children inherit the parsed molecules and the loaded networks; each runs
        # whole batches (featurisation, network with one torch thread, stereo, relaxation), so
        # the Python work runs on every core, not only the network
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_batch_worker, initargs=(state,)) as pool:
            _collect(pool.imap_unordered(_run_in_worker, jobs), results, report, bar)
    if bar is not None:
        bar.close()
    report.failures.sort(key=lambda f: f.index)
    if report.failures:
        warnings.warn(
            f"{len(report.failures)} of {len(items)} inputs not predicted:\n"
            + "\n".join(f"  {f}" for f in report.failures),
            stacklevel=_caller_level(),
        )
    return (results, report) if return_report else results


def _search_settings(search):
    """``predict``'s ``search`` argument as search settings (None: no search)."""
    if search is None or search is False or (not isinstance(search, bool) and search == 0):
        return None
    from molconf.ground_state.search import DEFAULT_CANDIDATES, SearchSettings

    if isinstance(search, SearchSettings):
        return search
    if search is True:
        return SearchSettings(candidates=DEFAULT_CANDIDATES)
    if isinstance(search, bool) or not isinstance(search, (int, np.integer)) or search < 1:
        raise ValueError(f"search must be True, False, a number of candidates >= 1 or SearchSettings, got {search!r}")
    return SearchSettings(candidates=int(search))


def _search_from(prediction: Chem.Mol, mol: Chem.Mol, i: int, settings, relax_with, report) -> Chem.Mol:
    """The search's winner for ``mol`` with ``prediction`` as one candidate, relaxed with
    ``relax_with``; the prediction itself (noted) if the search fails."""
    from molconf.ground_state.search import search

    try:
        result = search(mol, settings, network=prediction)
    except Exception as err:  # RDKit / tblite errors too: the molecule keeps its prediction
        report.note(i, f"search failed ({' '.join(str(err).split())[:200]}): the single prediction is returned")
        out = prediction
    else:
        out = result.mol
        report.note(i, result.note())
        report.search[i] = {"source": result.winner.source, "ranker": result.ranker, "screen": result.screen,
                            "candidates": len(result.candidates),
                            "relative_kcal": [None if c.rank_kcal is None else c.rank_kcal - result.winner.rank_kcal
                                              for c in result.candidates],
                            "sources": [c.source for c in result.candidates]}
    if relax_with is not None:
        note = relax(out, relax_with)
        if note:
            report.note(i, note)
    target = stereo_spec(mol)
    if target:
        report.stereo[i] = enforce_stereo(out, target)
        if report.stereo[i].remaining:
            report.note(i, "stereo not matched: " + "; ".join(report.stereo[i].remaining))
    Chem.AssignStereochemistryFrom3D(out)
    for name in prediction.GetPropNames():
        out.SetProp(name, prediction.GetProp(name))
    if i in report.search:
        out.SetProp("molconf_search_source", report.search[i]["source"])
    return out


def _caller_level() -> int:
    """``stacklevel`` that points a warning at the user's line, also through the ``molconf.predict``
    / ``molconf.generate`` wrappers of the package (called from a public function: 2 frames up is
    its caller, or the wrapper)."""
    return 3 if sys._getframe(2).f_globals.get("__name__") == "molconf" else 2


def _finish(mol, coords, i, loaded, relax_with, fix_stereo, report, repair_bonds=True) -> Chem.Mol:
    out = mol_with_coords(mol, coords)
    if repair_bonds:
        # first: a stereo check reads signed volumes, meaningless around a 0.4 Å C–H; the polish
        # may set a centre either way, which the stereo repair below then puts right
        note = guard_bonds(out)
        if note:
            report.note(i, note)
    target = stereo_spec(mol) if fix_stereo else None
    if target:
        # repair before relaxing: one relaxation then both tidies what the repair moved and
        # refines the geometry (relaxing first would need a second one after every repair);
        # what is left is named by CIP only once the conformer stops moving
        report.stereo[i] = enforce_stereo(out, target, name_remaining=relax_with is None)
    if relax_with is not None:
        note = relax(out, relax_with)
        if note:
            report.note(i, note)
        if target:
            # an optimiser can move a centre through planarity
            after = enforce_stereo(out, target, name_remaining=False)
            if after.fixed_by:
                note = relax(out, relax_with)
                if note:
                    report.note(i, "after stereo repair: " + note)
                remaining = enforce_stereo(out, target).remaining
            elif after.remaining and not after.named_by_cip:  # nothing moved since the check: name it by CIP
                remaining = cip_mismatches(target, out)
            else:
                remaining = after.remaining
            report.stereo[i] = StereoReport(len(target), report.stereo[i].fixed_by + after.fixed_by, remaining,
                                         named_by_cip=True)
    # a stereo move (pyramidalisation) can stretch a bond; the check alone when all is well
    if repair_bonds and (note := guard_bonds(out)):
        report.note(i, "after stereo repair: " + note)
        if target:
            report.stereo[i] = enforce_stereo(out, target)
        if left := impossible_bonds(out):
            report.notes.pop(i, None)
            raise MoleculeError("", "physically impossible bond lengths the bond guard could not repair: "
                                + "; ".join(map(str, left[:3])))
    if target and report.stereo[i].remaining:
        _stereo_fallback(out, target, i, relax_with, report)
    if target and report.stereo[i].remaining:
        report.note(i, "stereo not matched: " + "; ".join(report.stereo[i].remaining))
    # perceive the conformer's own stereo so the returned Mol's tags agree with its geometry
    Chem.AssignStereochemistryFrom3D(out)
    out.SetProp("molconf_model", loaded.name)
    return out


def _stereo_fallback(out: Chem.Mol, target, i: int, relax_with: str | None, report: PredictionReport) -> None:
    """Replace ``out``'s conformer (in place; it still carries the input's tags) by
    :func:`molconf.stereo_fallback.stereo_fallback`'s when the repairs left its stereo wrong,
    relax it as asked and update the molecule's stereo report and notes; leaves it as it is
    when no fallback matches the input's stereo."""
    wrong = report.stereo[i].remaining
    found = stereo_fallback(out, target)
    if found is None:
        return
    out.GetConformer().SetPositions(np.ascontiguousarray(found.positions, dtype=np.float64))
    if relax_with is not None and (note := relax(out, relax_with)):
        report.note(i, note)
    remaining = enforce_stereo(out, target).remaining if relax_with is not None else []
    report.stereo[i] = StereoReport(len(target), report.stereo[i].fixed_by + [found.action], remaining,
                                    named_by_cip=True)
    report.note(i, f"stereo fallback: {'; '.join(wrong)} not repairable in the prediction; {found.action}")
    out.SetProp("molconf_stereo_fallback", found.source)


# --------------------------------------------------------------------------- batches
@dataclass
class _BatchOutcome:
    """What one batch produced: molecules (as binaries when they cross a process), notes,
    stereo reports and failures, keyed by input index."""

    mols: dict[int, Chem.Mol | bytes]
    report: PredictionReport


@dataclass
class _BatchState:
    """Everything a batch needs besides its indices (inherited by forked workers)."""

    prepared: dict[int, Chem.Mol]
    models: list[LoadedModel]
    relax_with: str | None
    fix_stereo: bool
    precision: str
    items: list
    repair_bonds: bool = True
    forms: dict[int, Standardized] = field(default_factory=dict)  # charged / salt inputs (index -> form)
    search: object = None  # SearchSettings, or None for the prediction alone

    def run(self, job: tuple[int, list[int]], as_binary: bool = False) -> _BatchOutcome:
        m, idx = job
        loaded = self.models[m]
        network = loaded.network.eval()
        report = PredictionReport(model=loaded.name, precision=self.precision)
        with threadpool_limits(1, user_api="blas"):
            # one BLAS thread for the per-molecule Laplacian eigh: threaded OpenBLAS on these
            # tiny matrices took 9 ms instead of 0.6 ms per molecule on a loaded machine
            graphs = [featurize(self.prepared[i], stereo=getattr(network, "stereo", False)) for i in idx]
        with torch.inference_mode(), _autocast(self.precision):
            batch = collate_graphs(graphs, network.pe_dim)
            pos = network(batch)[K.POS_PRED].double().numpy()  # (B, N, 3), float32 output layer
        mols: dict[int, Chem.Mol | bytes] = {}
        for b, i in enumerate(idx):
            coords = pos[b, : self.prepared[i].GetNumAtoms()]
            if not np.isfinite(coords).all():
                report.failures.append(Failure(i, _describe(self.items[i]), "model produced non-finite coordinates"))
                continue
            mol = self.prepared[i]
            if i in self.forms:  # its neutral form was predicted: carry it over to the input's own form
                mol, coords = self.forms[i].mol, transfer_coordinates(self.forms[i], coords)
            try:
                out = _finish(mol, coords, i, loaded, None if self.search else self.relax_with, self.fix_stereo,
                              report, self.repair_bonds)
                if self.search is not None:
                    out = _search_from(out, mol, i, self.search, self.relax_with, report)
            except MoleculeError as err:  # a geometry the bond guard could not make physical
                report.failures.append(Failure(i, _describe(self.items[i]), err.reason))
                continue
            mols[i] = out.ToBinary(Chem.PropertyPickleOptions.AllProps) if as_binary else out
        return _BatchOutcome(mols, report)


_WORKER_STATE: _BatchState | None = None  # set once in each forked worker, never in the caller


def _init_batch_worker(state: _BatchState) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state
    torch.set_num_threads(1)  # one process per core: threads would only contend


def _run_in_worker(job) -> _BatchOutcome:
    return _WORKER_STATE.run(job, as_binary=True)


def _usable_workers(workers: int, n_batches: int) -> int:
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if workers == 1 or n_batches < 2 or "fork" not in mp.get_all_start_methods():
        return 1  # one batch: nothing to share; no fork (Windows, …): run here
    return min(workers, n_batches)


def _collect(outcomes, results: list, report: PredictionReport, bar) -> None:
    for outcome in outcomes:
        for i, mol in outcome.mols.items():
            results[i] = Chem.Mol(mol) if isinstance(mol, bytes) else mol
        report.failures += outcome.report.failures
        for i, notes in outcome.report.notes.items():
            report.notes.setdefault(i, []).extend(notes)
        report.stereo.update(outcome.report.stereo)
        report.search.update(outcome.report.search)
        if bar is not None:
            bar.update(len(outcome.mols) + len(outcome.report.failures))


# --------------------------------------------------------------------------- output
def to_ase(mol: Chem.Mol, conf_id: int = -1):
    """The conformer as ``ase.Atoms``."""
    import ase

    conf = mol.GetConformer(conf_id)
    return ase.Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=conf.GetPositions())


def write_sdf(mols: Iterable[Chem.Mol | None], path: str | Path) -> int:
    """Write the molecules that have a conformer to an SDF file; returns how many."""
    n = 0
    with Chem.SDWriter(str(path)) as writer:
        for mol in mols:
            if mol is not None:
                writer.write(mol)
                n += 1
    return n


def write_xyz(mols: Sequence[Chem.Mol | None], path: str | Path, extended: bool = True) -> int:
    """Write the molecules to one (ext)XYZ file through ASE; returns how many."""
    import ase.io

    frames = []
    for mol in mols:
        if mol is None:
            continue
        atoms = to_ase(mol)
        atoms.info["smiles"] = Chem.MolToSmiles(Chem.RemoveHs(mol))
        frames.append(atoms)
    ase.io.write(str(path), frames, format="extxyz" if extended else "xyz")
    return len(frames)
