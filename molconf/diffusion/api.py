"""Generation API: SMILES or RDKit ``Mol`` in, ``Mol`` with ``n`` sampled conformers out.

>>> from molconf.diffusion import generate                                 # doctest: +SKIP
>>> mol = generate("CCO", n=10, model="runs/diffusion_qm9/checkpoints/last.ckpt", seed=0)  # doctest: +SKIP
>>> mol.GetNumConformers(), mol.GetNumAtoms()                               # doctest: +SKIP
(10, 9)

No trained denoiser ships with the package yet, so ``model`` must be given (a checkpoint
or weights path, or a network).

Two ways to start a sample:

* ``start="noise"``: from pure Gaussian noise (σ_max ≈ 3 Å), the whole reverse diffusion;
* ``start="etkdg"``: partial diffusion (SDEdit-style) from the molecule's own ETKDGv3
  conformers — each sample starts from one ETKDG conformer, is noised to ``sigma_max``
  (≤ 1 Å) and denoised from there, so the network decides only the last stretch of the way
  onto the geometry of its training data, while ring and torsion families come from ETKDG.

``start="auto"`` takes what the weights file's metadata says (``start``, and ``sigma_start`` /
``steps`` for the sampler), else "noise". The drug-like probe of this design
(``configs/diffusion_moses_xtb.yaml``) did not beat its own ETKDG starts: see docs/diffusion.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from molconf.data.dataset import collate_dense, graph_to_data
from molconf.data.features import featurize
from molconf.diffusion.io import load_denoiser
from molconf.diffusion.model import EquivariantDenoiser
from molconf.diffusion.sampling import LJGuidance, ddim_sample, ks_sample
from molconf.errors import MoleculeError
from molconf.metrics import mol_with_coords
from molconf.prediction import _caller_level, Failure, LoadedModel, _describe, prepare
from molconf.stereo import enforce_stereo, stereo_spec

SAMPLERS = ("auto", "ddim", "ks")
STARTS = ("auto", "noise", "etkdg")
NO_DEFAULT_MODEL = ("no default diffusion model ships with molconf yet: pass model=<checkpoint or weights path, "
                    "or an EquivariantDenoiser> (train one with `molconf fit --config configs/diffusion_qm9.yaml`)")


@dataclass
class LoadedDenoiser(LoadedModel):
    """A denoiser plus what its training data covered: a ``predict.LoadedModel``, so ``prepare``
    checks inputs against it exactly as for the conformer models."""

    network: EquivariantDenoiser
    elements: tuple[int, ...] = tuple(range(1, 119))
    max_atoms: int = 10_000


def resolve_denoiser(model) -> LoadedDenoiser:
    """A path (weights file or ``DenoiserModule`` checkpoint), a network, or a ``DenoiserModule``."""
    if model is None or model == "default":
        raise ValueError(NO_DEFAULT_MODEL)
    if isinstance(model, LoadedDenoiser):
        return model
    if isinstance(model, EquivariantDenoiser):
        return LoadedDenoiser("custom", model.eval())
    inner = getattr(model, "model", None)  # a DenoiserModule
    if isinstance(inner, EquivariantDenoiser):
        return LoadedDenoiser("custom", inner.eval())
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"denoiser {str(model)!r}: no such file. {NO_DEFAULT_MODEL}")
        network, meta = load_denoiser(path)
        return LoadedDenoiser.from_meta(path.stem, network, meta)
    raise TypeError(f"model must be a path or an EquivariantDenoiser, got {type(model).__name__}")


@dataclass
class GenerationReport:
    """What :func:`generate` did besides returning molecules."""

    model: str
    sampler: str
    start: str = "noise"  # "noise", "etkdg" or "given" (start_from)
    failures: list[Failure] = field(default_factory=list)
    notes: dict[int, list[str]] = field(default_factory=dict)

    def note(self, index: int, text: str) -> None:
        self.notes.setdefault(index, []).append(text)


def _start_coords(start_from, mol: Chem.Mol) -> np.ndarray:
    if isinstance(start_from, Chem.Mol):
        if start_from.GetNumConformers() == 0:
            raise ValueError("start_from has no conformer")
        if [a.GetAtomicNum() for a in start_from.GetAtoms()] != [a.GetAtomicNum() for a in mol.GetAtoms()]:
            raise ValueError("start_from must have the input's atoms (explicit H) in the same order")
        coords = start_from.GetConformer().GetPositions()
    else:
        coords = np.asarray(start_from, dtype=np.float64)
    if coords.shape != (mol.GetNumAtoms(), 3):
        raise ValueError(f"start coordinates have shape {coords.shape}, expected ({mol.GetNumAtoms()}, 3)")
    return coords


def sample_molecule(network, mol: Chem.Mol, n: int, sampler: str = "auto", seed: int = 0, batch_size: int = 64,
                    steps: int = 50, sigma_max: float | None = None, sigma_min: float = 0.01,
                    start: np.ndarray | None = None, guidance: LJGuidance | None = None,
                    ks_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw samples (n, atoms, 3) for one prepared molecule (explicit H, model's atom order),
    and a (n,) bool array marking usable ones (finite; KS ascent not diverged).

    ``start``: None (pure noise), one (atoms, 3) conformer every sample starts around, or
    (n, atoms, 3), one start per sample.

    Noise comes from ``torch.Generator().manual_seed(seed)``, consumed batch by batch:
    samples depend on ``seed``, ``n`` and ``batch_size``.
    """
    sampler = ("ks" if network.blind else "ddim") if sampler == "auto" else sampler
    if sampler not in ("ddim", "ks"):
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    gen = torch.Generator().manual_seed(int(seed))
    graph = graph_to_data(featurize(mol), 1)
    dtype = next(network.parameters()).dtype
    out, usable = [], []
    for s in range(0, n, batch_size):
        k = min(batch_size, n - s)
        batch = collate_dense([graph] * k)
        init = None
        if start is not None:
            start_t = torch.as_tensor(start, dtype=dtype)
            init = start_t[s:s + k] if start_t.dim() == 3 else start_t.expand(k, -1, -1)  # (k, atoms, 3)
        if sampler == "ddim":
            smax = sigma_max if sigma_max is not None else (0.5 if start is not None else 3.0)
            pos = ddim_sample(network, batch, n_steps=steps, sigma_max=smax, sigma_min=sigma_min, generator=gen,
                              init=init, guidance=guidance)
            ok = torch.ones(k, dtype=torch.bool)
        else:
            opts = dict(ks_options or {})
            opts.setdefault("sigma_0", sigma_max if sigma_max is not None else (0.5 if start is not None else 1.0))
            opts.setdefault("sigma_L", sigma_min)
            res = ks_sample(network, batch, generator=gen, init=init, guidance=guidance, **opts)
            pos, ok = res.pos, ~res.diverged
        out.append(pos.double().numpy())
        usable.append((ok & torch.isfinite(pos).flatten(1).all(1)).numpy())
    return np.concatenate(out, axis=0), np.concatenate(usable)


def etkdg_starts(mol: Chem.Mol, n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """``n`` ETKDGv3 starting conformers (n, atoms, 3) of a prepared molecule and how many distinct
    ones were embedded.

    :func:`molconf.ground_state.search.etkdg_candidates` (ETKDGv3, one thread, retried from random
    coordinates if nothing embeds) with ``randomSeed = seed + 1`` (RDKit 2026.09 returns n
    *identical* conformers for seed 0). Fewer than ``n`` embedded conformers are reused in turn
    (each sample still gets its own noise). Raises ``ValueError`` if none embeds.

    >>> from rdkit import Chem
    >>> starts, distinct = etkdg_starts(Chem.AddHs(Chem.MolFromSmiles("CCO")), 3, seed=0)
    >>> starts.shape, distinct
    ((3, 9, 3), 3)
    """
    from molconf.ground_state.search import etkdg_candidates  # the search's own candidate embedding

    m = etkdg_candidates(mol, n, int(seed) + 1)
    if not m.GetNumConformers():
        raise ValueError("ETKDG could not embed a starting conformer")
    coords = np.stack([c.GetPositions() for c in m.GetConformers()])  # (distinct, atoms, 3)
    return coords[np.arange(n) % len(coords)], len(coords)


def _as_conformers(mol: Chem.Mol, samples: np.ndarray, usable: np.ndarray, fix_stereo: bool, index: int,
                   report: GenerationReport) -> Chem.Mol:
    target = stereo_spec(mol) if fix_stereo else None
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    unfixed = 0
    if not usable.all():
        report.note(index, f"dropped {int((~usable).sum())} of {len(samples)} samples "
                           "(non-finite coordinates or a diverged KS ascent)")
    for coords in samples[usable]:
        single = mol_with_coords(mol, coords)
        if target:
            # The network is O(3)-equivariant and cannot choose an enantiomer: repair stereo
            # with rigid operations (reflection / substituent swaps), as molconf.predict does.
            unfixed += bool(enforce_stereo(single, target).remaining)
        conf = Chem.Conformer(single.GetConformer())
        out.AddConformer(conf, assignId=True)
    if unfixed:
        report.note(index, f"{unfixed} of {len(samples)} samples keep a stereo mismatch")
    return out


def generate(mols, n: int = 10, model=None, sampler: str = "auto", seed: int = 0, steps: int | None = None,
             sigma_max: float | None = None, sigma_min: float = 0.01, start: str = "auto", start_from=None,
             lj_guidance: bool | LJGuidance = False, fix_stereo: bool = True, batch_size: int = 64,
             ks_options: dict | None = None, return_report: bool = False):
    """Sample ``n`` conformers per molecule with a trained denoiser.

    Parameters
    ----------
    mols : str, rdkit.Chem.Mol, or a sequence of them
        SMILES and/or molecules (hydrogens added if missing); validated like
        :func:`molconf.predict` (one neutral, closed-shell fragment, known elements).
    n : int
        Conformers per molecule.
    model : path or EquivariantDenoiser
        Required: no default diffusion model ships yet.
    sampler : {"auto", "ddim", "ks"}
        "auto": DDIM for noise-conditioned networks, Kadkhodaie–Simoncelli for blind ones.
    seed : int
        Seed of the sampler's ``torch.Generator`` (same seed → same conformers).
    steps : int, optional
        DDIM steps (the KS sampler stops on its own σ estimate); default: the weights' metadata
        ``steps``, else 50.
    sigma_max, sigma_min : float
        Starting and final noise levels (defaults: from ETKDG, the weights' metadata
        ``sigma_start``, else 0.5 Å; from noise, 3 Å for DDIM and σ₀ = 1 Å for KS; 0.5 Å when
        refining ``start_from``; final 0.01 Å).
    start : {"auto", "noise", "etkdg"}
        Where samples start (see the module docstring); "auto": the weights' metadata ``start``,
        else "noise". With "etkdg" the i-th sample starts from the i-th ETKDGv3 conformer of
        :func:`etkdg_starts` (seed ``seed + 1``).
    start_from : Mol or (atoms, 3) array, optional
        Refine around this conformer (e.g. a ReBind prediction) instead of sampling from
        noise. Only for a single input molecule.
    lj_guidance : bool or LJGuidance
        Lennard-Jones clash guidance during sampling.
    fix_stereo : bool
        Repair samples whose stereocentres / double bonds disagree with the input.
    ks_options : dict, optional
        Extra arguments of :func:`~molconf.diffusion.sampling.ks_sample` (h0, beta, max_steps…).

    Returns
    -------
    rdkit.Chem.Mol (single input) or list of Mol/None
        Explicit-H molecule with ``n`` conformers (fewer if some samples were unusable —
        non-finite or from a diverged KS ascent; the report notes it). A single bad input raises
        :class:`~molconf.errors.MoleculeError`; in a list it gives ``None`` and a warning
        naming it (index, input, reason).
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    single = isinstance(mols, (str, Chem.Mol))
    items = [mols] if single else list(mols)
    if start_from is not None and len(items) != 1:
        raise ValueError("start_from needs exactly one input molecule")
    loaded = resolve_denoiser(model)
    network = loaded.network.eval()
    used = ("ks" if network.blind else "ddim") if sampler == "auto" else sampler
    meta = loaded.meta or {}  # sampler settings a weights file may carry
    if start == "auto":
        start = "given" if start_from is not None else meta.get("start", "noise")
    elif start_from is not None:
        raise ValueError("start_from gives the start itself: leave start='auto'")
    if start == "etkdg" and sigma_max is None:
        sigma_max = float(meta.get("sigma_start", 0.5))
    steps = int(meta.get("steps", 50)) if steps is None else int(steps)
    guidance = lj_guidance if isinstance(lj_guidance, LJGuidance) else (LJGuidance() if lj_guidance else None)
    report = GenerationReport(model=loaded.name, sampler=used, start=start)
    results: list[Chem.Mol | None] = [None] * len(items)
    for i, item in enumerate(items):
        try:
            mol = prepare(item, loaded)
        except MoleculeError as err:
            if single:
                raise
            report.failures.append(Failure(i, err.molecule, err.reason))
            continue
        init = None
        if start == "given":
            init = _start_coords(start_from, mol)
        elif start == "etkdg":
            try:
                init, distinct = etkdg_starts(mol, n, seed)
            except ValueError as err:
                if single:
                    raise MoleculeError(_describe(item), str(err)) from None
                report.failures.append(Failure(i, _describe(item), str(err)))
                continue
            if distinct < n:
                report.note(i, f"ETKDG embedded {distinct} distinct starts for {n} samples (reused in turn)")
        samples, usable = sample_molecule(network, mol, n, used, seed, batch_size, steps, sigma_max, sigma_min,
                                          init, guidance, ks_options)
        out = _as_conformers(mol, samples, usable, fix_stereo, i, report)
        if out.GetNumConformers() == 0:
            err = MoleculeError(_describe(item), "no usable sample (non-finite coordinates or diverged sampler)")
            if single:
                raise err
            report.failures.append(Failure(i, err.molecule, err.reason))
            continue
        out.SetProp("molconf_model", loaded.name)
        out.SetProp("molconf_sampler", used)
        out.SetProp("molconf_start", start)
        out.SetIntProp("molconf_seed", int(seed))
        results[i] = out
    if report.failures:
        warnings.warn(f"{len(report.failures)} of {len(items)} inputs not generated:\n"
                      + "\n".join(f"  {f}" for f in report.failures), stacklevel=_caller_level())
    value = results[0] if single else results
    return (value, report) if return_report else value
