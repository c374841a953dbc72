"""GFN2-xTB for one molecule: the calculator, relaxation, and the data protocol's ground state.

:func:`build_ground_state` (the protocol of the moses_xtb data, one molecule)
    1. SMILES → RDKit ``Mol`` with explicit H. Refused: invalid SMILES, several fragments
       (a salt's lowest-energy arrangement is not one molecule's ground state), radicals
       (the spin state would be a guess), a net charge unless ``allow_charged`` (then it is
       passed to GFN2-xTB), elements GFN2-xTB has no parameters for (beyond Rn).
    2. ETKDGv3 conformer search (``num_conformers``, seeded, one thread); if no conformer
       embeds, once more from random coordinates.
    3. Force-field pre-optimisation of every conformer: MMFF94, UFF where MMFF has no
       parameters, none where UFF has none either (then the ETKDG geometries go to xTB in
       embedding order). Conformers with the same force-field energy (within
       ``dedup_kcal``) count once, since they are almost always the same minimum.
    4. GFN2-xTB optimisation (tblite through its ASE calculator, one thread) of the
       ``num_xtb`` lowest conformers. A candidate is kept only if the optimiser converged
       (``fmax``), its bond graph is unchanged (bonds perceived from the final geometry
       with RDKit's distance criterion) and the stereo the SMILES specifies is unchanged.
    5. The kept candidate of lowest GFN2-xTB energy is the ground state.

Failures raise :class:`XtbError`, a :class:`~molconf.errors.MoleculeError` that also names
the stage (:data:`STAGES`). The sharded, resumable data-set runner is
:mod:`molconf.ground_state.build`; :func:`gfn2_energy` (single point) and :func:`xtb_relax`
(relaxation with the same optimiser) serve prediction, search and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, Descriptors, rdDetermineBonds

from molconf._rdkit import mol_from_smiles_quietly
from molconf import constants as K
from molconf.errors import MoleculeError

# Failure stages, in pipeline order (a molecule that fails at several candidates is counted
# at the furthest stage any of them reached).
STAGE_INPUT = "input"  # invalid SMILES, fragments, radical, charge, element
STAGE_EMBED = "embed"  # ETKDG found no conformer
STAGE_XTB = "xtb"  # GFN2-xTB calculation failed (SCF)
STAGE_CONVERGE = "converge"  # optimiser did not reach fmax within max_steps
STAGE_CONNECTIVITY = "connectivity"  # bond graph changed during the optimisation
STAGE_STEREO = "stereo"  # a stereocentre / double bond the SMILES specifies changed
STAGES = (STAGE_INPUT, STAGE_EMBED, STAGE_XTB, STAGE_CONVERGE, STAGE_CONNECTIVITY, STAGE_STEREO)

OPTIMIZERS = ("LBFGS", "BFGS", "FIRE")
FORCEFIELDS = ("mmff", "uff", "none")
GFN2_MAX_Z = 86  # GFN2-xTB is parametrised for H–Rn


class XtbError(MoleculeError):
    """A molecule failed one stage of the GFN2-xTB build (``stage`` is one of :data:`STAGES`)."""

    def __init__(self, molecule: str, reason: str, stage: str):
        super().__init__(molecule, reason)
        self.stage = stage

    def __reduce__(self):  # picklable with its stage, for worker processes
        return (type(self), (self.molecule, self.reason, self.stage))


@dataclass(frozen=True)
class XtbProtocol:
    """Every setting of the ETKDG → force field → GFN2-xTB pipeline (stored with the data).

    Parameters
    ----------
    num_conformers : int
        ETKDGv3 conformers embedded per molecule.
    embed_seed : int
        ETKDG random seed (with one thread, the conformers are reproducible).
    prune_rms : float
        ETKDG's ``pruneRmsThresh`` (Å, heavy atoms); -1 keeps every conformer.
    forcefield : {"mmff", "uff", "none"}
        Pre-optimisation: MMFF94 (UFF where MMFF lacks parameters), UFF only, or none.
    ff_max_iters : int
        Force-field iterations per conformer.
    num_xtb : int
        Lowest force-field conformers optimised with GFN2-xTB.
    dedup_kcal : float
        Force-field energies closer than this (kcal/mol) count as one minimum.
    optimizer : {"LBFGS", "BFGS", "FIRE"}
        ASE optimiser of the GFN2-xTB geometry optimisation.
    fmax : float
        Convergence threshold on the largest atomic force, eV/Å.
    max_steps : int
        Optimiser steps before a candidate counts as not converged.
    accuracy, electronic_temperature, max_scf_iterations
        tblite's ``accuracy``, ``electronic_temperature`` (K) and ``max_iterations``.
    allow_charged : bool
        Build charged molecules (net charge passed to GFN2-xTB) instead of refusing them.
    bond_factor : float
        Covalent-radius factor of RDKit's connectivity perception for the bond-graph check.
    """

    method: str = "GFN2-xTB"
    num_conformers: int = 10
    embed_seed: int = 42
    prune_rms: float = 0.1
    forcefield: str = "mmff"
    ff_max_iters: int = 2000
    num_xtb: int = 3
    dedup_kcal: float = 0.01
    optimizer: str = "LBFGS"
    fmax: float = 0.05
    max_steps: int = 500
    accuracy: float = 1.0
    electronic_temperature: float = 300.0
    max_scf_iterations: int = 250
    allow_charged: bool = False
    bond_factor: float = 1.3

    def __post_init__(self):
        if self.method != "GFN2-xTB":
            raise ValueError(f"method must be 'GFN2-xTB', got {self.method!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.forcefield not in FORCEFIELDS:
            raise ValueError(f"forcefield must be one of {FORCEFIELDS}, got {self.forcefield!r}")
        if self.num_conformers < 1 or self.num_xtb < 1 or self.max_steps < 1 or self.fmax <= 0:
            raise ValueError("num_conformers, num_xtb, max_steps and fmax must be positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Short stable hash of the settings, stored with every molecule built with them."""
        from molconf.data.cache import fingerprint_key

        return fingerprint_key(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> XtbProtocol:
        return cls(**data)


@dataclass
class XtbResult:
    """The GFN2-xTB ground state of one molecule and how it was found."""

    smiles: str
    mol: Chem.Mol  # explicit H, one conformer: the optimised ground state
    energy_ev: float
    energy_hartree: float
    converged: bool
    steps: int  # optimiser steps of the kept conformer
    seconds: float  # wall time of the whole pipeline for this molecule
    forcefield: str  # "MMFF94", "UFF" or "none"
    conformers: int  # ETKDG conformers embedded
    candidates: int  # conformers optimised with GFN2-xTB
    index: int | None = None  # record position in the source
    protocol_key: str = ""  # XtbProtocol.key() of the settings used

    def to_sdf_mol(self) -> Chem.Mol:
        """The molecule with the SDF properties of :mod:`molconf.constants` set."""
        mol = Chem.Mol(self.mol)
        mol.SetProp("_Name", f"{self.index}" if self.index is not None else self.smiles)
        if self.index is not None:
            mol.SetProp(K.SDF_SOURCE_INDEX, str(self.index))
        mol.SetProp(K.SDF_SMILES, self.smiles)
        # fixed formats: SDWriter's default double formatting drops digits of the energy
        mol.SetProp(K.SDF_ENERGY_EH, f"{self.energy_hartree:.8f}")
        mol.SetProp(K.SDF_ENERGY_EV, f"{self.energy_ev:.6f}")
        mol.SetProp(K.SDF_CONVERGED, str(int(self.converged)))
        mol.SetProp(K.SDF_STEPS, str(self.steps))
        mol.SetProp(K.SDF_PROTOCOL, self.protocol_key)
        return mol


@dataclass
class Gfn2Optimisation:
    """Outcome of one GFN2-xTB geometry optimisation."""

    positions: np.ndarray  # (N, 3) Å, final geometry
    energy_ev: float
    converged: bool
    steps: int
    max_force: float  # eV/Å at the final geometry


# --- tblite ------------------------------------------------------------------------------
def _import_tblite():
    """``tblite.ase.TBLite``, loaded with OpenMP limited to one thread.

    tblite links the system libgomp, which reads ``OMP_NUM_THREADS`` once, when it is
    loaded; setting it only around the first import keeps xTB single-threaded (several
    worker processes share the cores) without changing the environment of anything else.
    """
    loaded = sys.modules.get("tblite.ase")
    if loaded is not None:
        return loaded.TBLite
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise ImportError(
            "GFN2-xTB needs the tblite package: pip install 'molconf[xtb]' (or pip install tblite)"
        ) from err
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return TBLite


def require_tblite() -> None:
    """Raise a clear ``ImportError`` now, rather than per molecule, if tblite is missing."""
    _import_tblite()


def gfn2_calculator(protocol: XtbProtocol, charge: int = 0):
    """A fresh tblite ASE calculator with the protocol's settings (quiet)."""
    TBLite = _import_tblite()
    return TBLite(
        method=protocol.method,
        charge=float(charge),
        accuracy=protocol.accuracy,
        electronic_temperature=protocol.electronic_temperature,
        max_iterations=protocol.max_scf_iterations,
        verbosity=0,
    )


def _atoms(numbers: Sequence[int], positions: np.ndarray, protocol: XtbProtocol, charge: int):
    import ase

    atoms = ase.Atoms(numbers=list(numbers), positions=np.asarray(positions, dtype=np.float64))
    atoms.calc = gfn2_calculator(protocol, charge)
    return atoms


def _calculation_error(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"SCF failure ({text[:200]})"


def gfn2_optimize(numbers: Sequence[int], positions: np.ndarray, protocol: XtbProtocol,
                  charge: int = 0) -> Gfn2Optimisation:
    """Optimise one geometry with GFN2-xTB and the protocol's ASE optimiser.

    Raises ``RuntimeError`` (message starting "SCF failure") if tblite fails at any step.
    """
    from ase import optimize

    atoms = _atoms(numbers, positions, protocol, charge)
    opt = getattr(optimize, protocol.optimizer)(atoms, logfile=None)
    try:
        converged = bool(opt.run(fmax=protocol.fmax, steps=protocol.max_steps))
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()
    except Exception as err:  # tblite: CalculationFailed / TBLiteRuntimeError / InputError
        raise RuntimeError(_calculation_error(err)) from err
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        raise RuntimeError("SCF failure (non-finite energy or forces)")
    return Gfn2Optimisation(atoms.get_positions(), energy, converged, int(opt.nsteps),
                            float(np.linalg.norm(forces, axis=1).max(initial=0.0)))


def gfn2_energy(mol: Chem.Mol, protocol: XtbProtocol | None = None, conf_id: int = -1) -> float:
    """GFN2-xTB single-point energy (eV) of a conformer."""
    protocol = protocol or XtbProtocol()
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    atoms = _atoms(numbers, mol.GetConformer(conf_id).GetPositions(), protocol, Chem.GetFormalCharge(mol))
    try:
        return float(atoms.get_potential_energy())
    except Exception as err:
        raise RuntimeError(_calculation_error(err)) from err


# --- checks ---------------------------------------------------------------------------------
def _bond_set(mol: Chem.Mol) -> set[tuple[int, int]]:
    return {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}


def bond_changes(mol: Chem.Mol, positions: np.ndarray, bond_factor: float = 1.3) -> list[str]:
    """Bonds of ``mol``'s graph broken, and bonds formed, in a geometry.

    Bonds are perceived from ``positions`` with RDKit's connect-the-dots criterion
    (``DetermineConnectivity``: distance below ``bond_factor`` × sum of covalent radii) and
    compared with ``mol``'s bonds, hydrogens included. An empty list means the same graph.

    Examples
    --------
    >>> from rdkit.Chem import AllChem
    >>> m = Chem.AddHs(Chem.MolFromSmiles("CO"))
    >>> _ = AllChem.EmbedMolecule(m, randomSeed=0)
    >>> pos = m.GetConformer().GetPositions()
    >>> bond_changes(m, pos)
    []
    >>> pos[1] += 3 * (pos[1] - pos[0])  # pull the O (and nothing else) away from the C
    >>> bond_changes(m, pos)[0]
    'broken C0-O1'
    """
    probe = Chem.RWMol()
    for atom in mol.GetAtoms():
        probe.AddAtom(Chem.Atom(atom.GetAtomicNum()))
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, xyz in enumerate(np.asarray(positions, dtype=np.float64).tolist()):
        conf.SetAtomPosition(i, xyz)
    probe.AddConformer(conf, assignId=True)
    probe = probe.GetMol()
    rdDetermineBonds.DetermineConnectivity(probe, useHueckel=False, covFactor=bond_factor)
    expected, found = _bond_set(mol), _bond_set(probe)

    def name(i, j):
        return f"{mol.GetAtomWithIdx(i).GetSymbol()}{i}-{mol.GetAtomWithIdx(j).GetSymbol()}{j}"

    return [f"broken {name(i, j)}" for i, j in sorted(expected - found)] + \
           [f"formed {name(i, j)}" for i, j in sorted(found - expected)]


def stereo_changes(mol: Chem.Mol, positions: np.ndarray) -> list[str]:
    """Stereo elements the graph specifies (chiral tags, E/Z) that the geometry does not match."""
    from molconf.stereo import graph_stereo_labels  # imports torch: only when needed

    target = graph_stereo_labels(mol)
    if not target:
        return []
    from molconf.metrics import stereo_labels

    got = stereo_labels(_with_positions(mol, positions))
    return [f"{k}: {v} -> {got.get(k, 'missing')}" for k, v in target.items() if got.get(k) != v]


def _with_positions(mol: Chem.Mol, positions: np.ndarray) -> Chem.Mol:
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, xyz in enumerate(np.asarray(positions, dtype=np.float64).tolist()):
        conf.SetAtomPosition(i, xyz)
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    return out


# --- one molecule -----------------------------------------------------------------------
def _label(smiles: str, index: int | None) -> str:
    short = smiles if len(smiles) <= 80 else smiles[:77] + "..."
    return f"#{index} {short}" if index is not None else short


def parse_smiles(smiles: str, protocol: XtbProtocol, label: str) -> Chem.Mol:
    """SMILES → sanitised ``Mol`` with explicit H, or :class:`XtbError` (stage "input")."""
    if not smiles or not smiles.strip():
        raise XtbError(label, "empty SMILES", STAGE_INPUT)
    mol = mol_from_smiles_quietly(smiles.strip())
    if mol is None or mol.GetNumAtoms() == 0:
        raise XtbError(label, "invalid SMILES", STAGE_INPUT)
    n_frag = len(Chem.GetMolFrags(mol))
    if n_frag > 1:
        raise XtbError(label, f"disconnected fragments ({n_frag}; a salt or mixture?)", STAGE_INPUT)
    radicals = Descriptors.NumRadicalElectrons(mol)
    if radicals:
        raise XtbError(label, f"radical ({radicals} unpaired electrons)", STAGE_INPUT)
    charge = Chem.GetFormalCharge(mol)
    if charge and not protocol.allow_charged:
        raise XtbError(label, f"net charge ({charge:+d}; allow_charged builds it)", STAGE_INPUT)
    beyond = sorted({a.GetSymbol() for a in mol.GetAtoms() if not 1 <= a.GetAtomicNum() <= GFN2_MAX_Z})
    if beyond:
        raise XtbError(label, f"element not in GFN2-xTB ({', '.join(beyond)})", STAGE_INPUT)
    return Chem.AddHs(mol)


def embed_conformers(mol: Chem.Mol, protocol: XtbProtocol, label: str) -> Chem.Mol:
    """Copy of ``mol`` with ETKDGv3 conformers (retried from random coordinates if none embed)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for random_coords in (False, True):
        params = AllChem.ETKDGv3()
        params.randomSeed = protocol.embed_seed
        params.numThreads = 1
        params.pruneRmsThresh = protocol.prune_rms
        params.useRandomCoords = random_coords
        if list(AllChem.EmbedMultipleConfs(out, protocol.num_conformers, params)):
            return out
    raise XtbError(label, "embedding failed (ETKDGv3, also from random coordinates)", STAGE_EMBED)


def preoptimize(mol: Chem.Mol, protocol: XtbProtocol) -> tuple[list[float] | None, str]:
    """Force-field optimise every conformer in place: (energies in kcal/mol or None, field used)."""
    if protocol.forcefield == "mmff" and AllChem.MMFFHasAllMoleculeParams(mol):
        out = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=protocol.ff_max_iters)
        return [e for _, e in out], "MMFF94"
    if protocol.forcefield in ("mmff", "uff") and AllChem.UFFHasAllMoleculeParams(mol):
        out = AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=protocol.ff_max_iters)
        return [e for _, e in out], "UFF"
    return None, "none"


def pick_candidates(conf_ids: Sequence[int], energies: Sequence[float] | None, n: int,
                    dedup_kcal: float) -> list[int]:
    """The ``n`` lowest-energy conformer ids, one per distinct energy (embedding order if none).

    Examples
    --------
    >>> pick_candidates([0, 1, 2, 3], [5.0, 1.0, 1.001, 3.0], 2, 0.01)
    [1, 3]
    """
    if energies is None:
        return list(conf_ids)[:n]
    order = sorted(range(len(conf_ids)), key=lambda k: energies[k] if math.isfinite(energies[k]) else math.inf)
    picked, kept = [], []
    for k in order:
        if any(abs(energies[k] - e) < dedup_kcal for e in kept):
            continue
        picked.append(conf_ids[k])
        kept.append(energies[k])
        if len(picked) == n:
            break
    return picked


def _check_candidate(mol, opt: Gfn2Optimisation, protocol: XtbProtocol) -> tuple[str, str] | None:
    """(stage, reason) why an optimised candidate cannot be kept, or None."""
    if not opt.converged:
        return STAGE_CONVERGE, (f"not converged ({opt.steps} steps, max force {opt.max_force:.3f} eV/Å "
                                f"> fmax {protocol.fmax})")
    changed = bond_changes(mol, opt.positions, protocol.bond_factor)
    if changed:
        return STAGE_CONNECTIVITY, f"connectivity changed ({', '.join(changed[:4])})"
    flipped = stereo_changes(mol, opt.positions)
    if flipped:
        return STAGE_STEREO, f"stereo changed ({'; '.join(flipped[:4])})"
    return None


def build_ground_state(smiles: str, protocol: XtbProtocol | None = None, index: int | None = None) -> XtbResult:
    """The GFN2-xTB ground state of one molecule (see the module docstring for the pipeline).

    Parameters
    ----------
    smiles : str
        The molecule.
    protocol : XtbProtocol, optional
        Settings (default :class:`XtbProtocol()`).
    index : int, optional
        Record position in the source, used in messages and the result.

    Raises
    ------
    XtbError
        Naming the molecule, the stage that failed and why.
    """
    protocol = protocol or XtbProtocol()
    start = time.perf_counter()
    label = _label(smiles, index)
    mol = parse_smiles(smiles, protocol, label)
    confs = embed_conformers(mol, protocol, label)
    energies, ff = preoptimize(confs, protocol)
    conf_ids = [c.GetId() for c in confs.GetConformers()]
    chosen = pick_candidates(conf_ids, energies, protocol.num_xtb, protocol.dedup_kcal)
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    charge = Chem.GetFormalCharge(mol)
    best: Gfn2Optimisation | None = None
    problems: list[tuple[str, str]] = []
    for cid in chosen:
        try:
            opt = gfn2_optimize(numbers, confs.GetConformer(cid).GetPositions(), protocol, charge)
        except RuntimeError as err:
            problems.append((STAGE_XTB, f"conformer {cid}: {err}"))
            continue
        problem = _check_candidate(mol, opt, protocol)
        if problem is not None:
            problems.append((problem[0], f"conformer {cid}: {problem[1]}"))
        elif best is None or opt.energy_ev < best.energy_ev:
            best = opt
    if best is None:
        stage = max((s for s, _ in problems), key=STAGES.index)
        kind = {STAGE_XTB: "SCF failure", STAGE_CONVERGE: "not converged",
                STAGE_CONNECTIVITY: "connectivity changed", STAGE_STEREO: "stereo changed"}[stage]
        raise XtbError(label, f"{kind} (no conformer kept: " + "; ".join(r for _, r in problems) + ")", stage)
    from ase.units import Hartree

    final = _with_positions(mol, best.positions)
    Chem.AssignStereochemistryFrom3D(final)  # tags agree with the geometry (unspecified centres too)
    return XtbResult(
        smiles=smiles, mol=final, energy_ev=best.energy_ev, energy_hartree=best.energy_ev / Hartree,
        converged=best.converged, steps=best.steps, seconds=time.perf_counter() - start,
        forcefield=ff, conformers=len(conf_ids), candidates=len(chosen), index=index,
        protocol_key=protocol.key(),
    )


# --- relaxation of a given conformer (molconf.predict relax_with="xtb") ------------------
@dataclass
class XtbRelaxation:
    """What :func:`xtb_relax` did to a conformer."""

    energy_before_ev: float
    energy_ev: float
    converged: bool
    steps: int
    max_force: float
    bond_changes: list[str] = field(default_factory=list)  # non-empty: geometry was restored


def xtb_relax(mol: Chem.Mol, protocol: XtbProtocol | None = None, conf_id: int = -1) -> XtbRelaxation:
    """Optimise a conformer in place with GFN2-xTB (the protocol's optimiser settings).

    If the bond graph changes, the conformer is restored and the changes are returned. If
    the optimiser does not converge, the last (lower-energy) geometry is kept. Raises
    ``RuntimeError`` ("SCF failure …") if tblite fails; the conformer is then untouched.
    """
    protocol = protocol or XtbProtocol()
    conf = mol.GetConformer(conf_id)
    start = conf.GetPositions()
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    charge = Chem.GetFormalCharge(mol)
    before = _atoms(numbers, start, protocol, charge)
    try:
        e0 = float(before.get_potential_energy())
    except Exception as err:
        raise RuntimeError(_calculation_error(err)) from err
    opt = gfn2_optimize(numbers, start, protocol, charge)
    changed = bond_changes(mol, opt.positions, protocol.bond_factor)
    if not changed:
        for i, xyz in enumerate(opt.positions.tolist()):
            conf.SetAtomPosition(i, xyz)
    return XtbRelaxation(e0, opt.energy_ev, opt.converged, opt.steps, opt.max_force, changed)


def xtb_relax_note(mol: Chem.Mol, protocol: XtbProtocol | None = None, start: str = "the prediction") -> str:
    """:func:`xtb_relax`, summed up in one line for a prediction report; ``start`` names the
    geometry it started from (and that is kept when GFN2-xTB fails)."""
    from ase.units import Hartree

    protocol = protocol or XtbProtocol()
    kept = "conformer left unrelaxed" if start == "the prediction" else f"conformer left at {start}"
    try:
        r = xtb_relax(mol, protocol)
    except RuntimeError as err:  # "SCF failure (…)"
        return f"GFN2-xTB {err}: {kept}"
    if r.bond_changes:
        return f"GFN2-xTB changed the bond graph ({', '.join(r.bond_changes[:4])}): {kept}"
    change = f"E = {r.energy_ev / Hartree:.6f} Eh, {r.energy_ev - r.energy_before_ev:+.3f} eV vs {start}"
    if not r.converged:
        return (f"GFN2-xTB not converged in {r.steps} steps (max force {r.max_force:.3f} eV/Å > "
                f"fmax {protocol.fmax}), last geometry kept: {change}")
    return f"GFN2-xTB: converged in {r.steps} steps, {change}"


