"""Move an MMFF94 geometry towards GFN2-xTB's minimum with the learned correction, cheaply.

``predict(relax_with="xtb")`` runs MMFF94, then this pre-relaxation, then GFN2-xTB: it
minimises E(MMFF94) + ΔE(:class:`~molconf.models.gfn2_correction.Gfn2Correction`) with
SciPy's L-BFGS-B, a few milliseconds per molecule, so that GFN2-xTB starts with bond lengths
and angles near its own (``benchmarks/xtb_relax.py`` measures the steps this saves).

If the pre-relaxation changes the bond graph, fails, or raises the energy, the conformer is
left where it was and the returned :class:`PrerelaxResult` says why.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from molconf.data.gfn2_forces import KCAL_TO_EV, mmff_forcefield
from molconf.models.gfn2_correction import Gfn2Correction, batch_pair_graphs, pair_graph

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_CORRECTION = "moses_xtb_gfn2_correction"


@dataclass
class PrerelaxResult:
    """What :func:`prerelax` did to a conformer."""

    applied: bool  # False: conformer left unchanged (``reason`` says why)
    iterations: int = 0
    energy_change_ev: float = 0.0  # of MMFF94 + ΔE
    max_displacement: float = 0.0  # Å
    reason: str = ""


def save_correction(model: Gfn2Correction, path: str | Path, meta: dict | None = None) -> None:
    """Weights file: the network's config, float32 weights and ``meta`` (training provenance)."""
    torch.save({"config": model.config, "state_dict": model.state_dict(), "meta": meta or {}}, path)


@functools.lru_cache(maxsize=4)
def load_correction(name_or_path: str = DEFAULT_CORRECTION) -> Gfn2Correction:
    """A shipped correction by name (``molconf/weights/<name>.pt``), a weights file or a Lightning
    checkpoint; returned in float64 and eval mode (shared: do not modify)."""
    path = Path(name_or_path)
    if not path.exists():
        path = WEIGHTS_DIR / f"{name_or_path}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no GFN2-xTB correction {name_or_path!r} (looked for {path})")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" in blob and "config" in blob:
        config, state = blob["config"], blob["state_dict"]
    elif "molconf_model_config" in blob:  # a Lightning checkpoint of Gfn2CorrectionModule
        config = blob["molconf_model_config"]
        state = {k.removeprefix("model."): v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    else:
        raise ValueError(f"{path}: neither a correction weights file nor a Gfn2CorrectionModule checkpoint")
    model = Gfn2Correction(**config)
    model.load_state_dict(state)
    return model.double().eval()


class CorrectedMMFF:
    """E(MMFF94) + ΔE and its gradient for one conformer, in eV and eV/Å, for an optimiser."""

    def __init__(self, mol: Chem.Mol, model: Gfn2Correction, conf_id: int = -1):
        self.ff = mmff_forcefield(mol, conf_id)
        if self.ff is None:
            raise ValueError("no MMFF94 parameters")
        self.model = model
        self.batch = batch_pair_graphs([pair_graph(mol, model.max_hops)])
        with torch.no_grad():
            self.coefficients = model.coefficients(self.batch)  # (P, K), computed once: graph only

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        flat = x.tolist()
        e = self.ff.CalcEnergy(flat) * KCAL_TO_EV
        g = np.asarray(self.ff.CalcGrad(flat)) * KCAL_TO_EV
        pos = torch.tensor(x.reshape(-1, 3), dtype=torch.float64, requires_grad=True)
        de = self.model.energy(pos, self.coefficients, self.batch).sum()
        (dg,) = torch.autograd.grad(de, pos)
        return e + float(de.detach()), g + dg.numpy().reshape(-1)


def prerelax(mol: Chem.Mol, model: Gfn2Correction | str = DEFAULT_CORRECTION, conf_id: int = -1,
             gtol: float = 1e-3, max_iters: int = 2000, bond_factor: float = 1.3) -> PrerelaxResult:
    """Minimise MMFF94 + ΔE from the conformer, in place (see the module docstring).

    ``gtol``: stop when no gradient component exceeds this (eV/Å); GFN2-xTB's own threshold is
    50 times larger, so the result is a converged minimum of the corrected force field.
    """
    from scipy.optimize import minimize

    from molconf.data.xtb_build import bond_changes

    if isinstance(model, str):
        model = load_correction(model)
    try:
        objective = CorrectedMMFF(mol, model, conf_id)
    except ValueError as err:
        return PrerelaxResult(False, reason=str(err))
    conf = mol.GetConformer(conf_id)
    start = conf.GetPositions().reshape(-1)
    e0, _ = objective(start)
    res = minimize(objective, start, jac=True, method="L-BFGS-B",
                   options={"gtol": gtol, "maxiter": max_iters, "maxcor": 30})
    pos = res.x.reshape(-1, 3)
    if not (np.isfinite(res.fun) and np.isfinite(pos).all()) or res.fun > e0:
        return PrerelaxResult(False, int(res.nit), reason="corrected force field did not lower the energy")
    changed = bond_changes(mol, pos, bond_factor)
    if changed:
        return PrerelaxResult(False, int(res.nit), reason=f"bond graph changed ({', '.join(changed[:3])})")
    for i, xyz in enumerate(pos.tolist()):
        conf.SetAtomPosition(i, xyz)
    shift = float(np.linalg.norm(pos - start.reshape(-1, 3), axis=1).max())
    return PrerelaxResult(True, int(res.nit), float(res.fun - e0), shift)


def export_checkpoint(checkpoint: str | Path, out: str | Path, meta: dict | None = None) -> None:
    """Weights file (float32) of a trained Gfn2CorrectionModule checkpoint."""
    model = copy.deepcopy(load_correction.__wrapped__(str(checkpoint))).float()
    save_correction(model, out, meta)
