"""Move an MMFF94 geometry towards GFN2-xTB's minimum with a learned correction.

:func:`prerelax` minimises E(MMFF94) + ΔE(:class:`~molconf.ground_state.correction.Gfn2Correction`)
with SciPy's L-BFGS-B, every proper torsion held near its start by a restraint: the correction
fixes bond lengths, angles and out-of-plane geometry, while the conformer stays the one the
caller chose. ``predict(relax_with="xtb")`` runs it between MMFF94 and GFN2-xTB with the shipped
correction (:data:`DEFAULT_CORRECTION`, fitted on the moses_xtb training split): GFN2-xTB then
needs fewer optimisation steps (``benchmarks/xtb_relax.py --correction …``; README,
"GFN2-xTB from a prediction").

If the pre-relaxation changes the bond graph, fails, raises the energy, or meets an element
outside the correction's training data, the conformer is left where it was and the returned
:class:`PrerelaxResult` says why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from molconf.ground_state.forces import KCAL_TO_EV, mmff_forcefield
from molconf.ground_state.correction import Gfn2Correction, batch_pair_graphs, torsion_cos_sin
from molconf.models.io import is_shipped, load_torch_file, read_model_file, write_card_sha256


# Shipped with the package and used by predict(relax_with="xtb"): fitted to the moses_xtb training
# split's force data (configs/gfn2_correction_dihedral_moses_xtb.yaml; card beside it).
DEFAULT_CORRECTION = Path(__file__).parents[1] / "weights" / "moses_xtb_gfn2_correction_dihedral.pt"


@dataclass
class PrerelaxResult:
    """What :func:`prerelax` did to a conformer."""

    applied: bool  # False: conformer left unchanged (``reason`` says why)
    iterations: int = 0
    energy_change_ev: float = 0.0  # of MMFF94 + ΔE
    max_displacement: float = 0.0  # Å
    reason: str = ""


def save_correction(model: Gfn2Correction, path: str | Path, meta: dict | None = None) -> None:
    """Weights file: the network's config, float32 weights and ``meta`` (training provenance,
    plain data only: the file is read back with ``weights_only=True``). A card beside it
    (``<stem>.md``; always for the package's own weights folder) gets the file's sha256 line."""
    torch.save({"config": model.config, "state_dict": model.state_dict(), "meta": meta or {}}, path)
    write_card_sha256(path, create=is_shipped(path))


def load_correction(path: str | Path) -> Gfn2Correction:
    """A correction weights file or Lightning checkpoint, in float64 and eval mode (cached per
    file version, i.e. path, modification time and size, and shared: do not modify).

    Read with ``weights_only=True`` (a file cannot run code) and, for shipped weights, checked
    against the sha256 in their card (:mod:`molconf.models.io`); ``ValueError`` naming the
    file if it is damaged, not a torch file, or not a correction.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no GFN2-xTB correction file {str(path)!r}")
    st = Path(path).stat()
    return _load_correction_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load_correction_cached(path: str, mtime_ns: int, size: int) -> Gfn2Correction:
    return read_correction(path)


def read_correction(path: str | Path) -> Gfn2Correction:
    """:func:`load_correction` without its cache: a fresh copy."""
    config, state, meta = read_model_file(path)
    if config is None or state is None or "max_hops" not in config:
        raise ValueError(f"{path}: neither a correction weights file nor a Gfn2CorrectionModule checkpoint")
    try:
        model = Gfn2Correction(**config)
        model.load_state_dict(state)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: weights do not fit the stored correction configuration ({err})") from None
    # elements of its training molecules (weights files record them): others are refused
    model.trained_elements = tuple((meta or {}).get("elements", ()))
    return model.double().eval()


class CorrectedMMFF:
    """E(MMFF94) + ΔE (+ the torsion restraint) and its gradient for one conformer, in eV and
    eV/Å, for an optimiser.

    ``hold_torsions``: k (eV) of a restraint k · (1 − cos(φ − φ₀)) on every proper torsion φ,
    φ₀ its value in the conformer given; 0 for none.
    """

    def __init__(self, mol: Chem.Mol, model: Gfn2Correction, conf_id: int = -1, hold_torsions: float = 0.0):
        self.ff = mmff_forcefield(mol, conf_id)
        if self.ff is None:
            raise ValueError("no MMFF94 parameters")
        self.model = model
        graph = model.graph(mol)
        self.batch = batch_pair_graphs([graph])
        with torch.no_grad():
            self.coefficients = model.coefficients(self.batch)  # computed once: they depend on the graph only
        self.hold_torsions = hold_torsions
        self.torsions = torch.from_numpy(graph.torsions)  # (T, 4)
        start = torch.tensor(mol.GetConformer(conf_id).GetPositions(), dtype=torch.float64)
        self.start_cos_sin = torsion_cos_sin(start[self.torsions])  # cos φ₀, sin φ₀: (T,) each

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        flat = x.tolist()
        e = self.ff.CalcEnergy(flat) * KCAL_TO_EV
        g = np.asarray(self.ff.CalcGrad(flat)) * KCAL_TO_EV
        pos = torch.tensor(x.reshape(-1, 3), dtype=torch.float64, requires_grad=True)
        de = self.model.energy(pos, self.coefficients, self.batch).sum()
        if self.hold_torsions and len(self.torsions):
            (c, s), (c0, s0) = torsion_cos_sin(pos[self.torsions]), self.start_cos_sin
            de = de + self.hold_torsions * (1 - c * c0 - s * s0).sum()  # cos(φ − φ₀) = cos φ cos φ₀ + sin φ sin φ₀
        (dg,) = torch.autograd.grad(de, pos)
        return e + float(de.detach()), g + dg.numpy().reshape(-1)


def prerelax(mol: Chem.Mol, model: Gfn2Correction | str = str(DEFAULT_CORRECTION), conf_id: int = -1,
             hold_torsions: float = 0.5, gtol: float = 0.03, max_iters: int = 2000,
             bond_factor: float = 1.3) -> PrerelaxResult:
    """Minimise MMFF94 + ΔE from the conformer, in place (see the module docstring).

    ``hold_torsions``: k (eV) of a restraint k · (1 − cos(φ − φ₀)) that keeps every proper
    torsion near its start; 0 lets them go. The correction's errors are largest, relative to
    the stiffness, along torsions: unrestrained, it can turn phenyl rings 10–20° the wrong way
    and GFN2-xTB then needs many more steps to turn them back (``benchmarks/xtb_start_probe.py``
    compares the two: held, fewer GFN2-xTB steps than from MMFF94 in 31 of 40 molecules, free 24).
    ``gtol``: stop when no gradient component exceeds this (eV/Å), just under GFN2-xTB's own
    threshold (0.05): polishing further buys nothing, the correction's own force error being
    ~0.06 eV/Å (on 20 test molecules, 0.03 took a median 0.06 s against 0.22 s for 1e-3, with
    the same GFN2-xTB steps).
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    from molconf.ground_state.xtb import bond_changes

    if isinstance(model, (str, Path)):
        model = load_correction(model)
    known = getattr(model, "trained_elements", ())
    unseen = sorted({a.GetSymbol() for a in mol.GetAtoms() if known and a.GetAtomicNum() not in known})
    if unseen:
        return PrerelaxResult(False, reason=f"{', '.join(unseen)} not in the correction's training data")
    try:
        objective = CorrectedMMFF(mol, model, conf_id, hold_torsions)
    except ValueError as err:
        return PrerelaxResult(False, reason=str(err))
    conf = mol.GetConformer(conf_id)
    start = conf.GetPositions().reshape(-1)
    e0, _ = objective(start)
    # L-BFGS-B's vector operations are tiny: with OpenBLAS's thread pool they took ~5x longer
    # (0.4 vs 2 s per molecule, measured on 5 test molecules)
    with threadpool_limits(1, user_api="blas"):
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


def export_checkpoint(checkpoint: str | Path, out: str | Path, data_dir: str | Path) -> dict:
    """Weights file (float32) of a trained Gfn2CorrectionModule checkpoint, with a card: the
    elements of its training molecules (:func:`prerelax` refuses others), the force data's
    summary and the checkpoint's validation force error."""
    import json

    from molconf.ground_state.forces import load_force_data
    from molconf.data.load import load_dataset

    blob = load_torch_file(checkpoint, what="checkpoint")  # first: a bad checkpoint fails before the data is read
    model = read_correction(checkpoint).float()  # uncached: a fresh copy to convert
    data_dir = Path(data_dir)
    info = json.loads((data_dir / "meta.json").read_text())
    data, _ = load_force_data(data_dir)
    store = load_dataset(info["dataset"])
    elements = sorted({a.GetAtomicNum() for r in np.unique(data["row"]).tolist() for a in store.mol(int(r)).GetAtoms()})
    scores = {k: v.get("best_model_score") for k, v in blob.get("callbacks", {}).items() if "ModelCheckpoint" in k}
    best = next((float(v) for v in scores.values() if v is not None), None)
    meta = {"elements": elements, "dataset": info["dataset"], "split": info["split"],
            "force_data": json.loads((data_dir / "summary.json").read_text()),
            "epochs": blob.get("epoch"), "global_step": blob.get("global_step"),
            "best_val_force_mae_ev_per_a": best, "train_seconds": blob.get("molconf_train_seconds")}
    save_correction(model, out, meta)  # (and its card's sha256 line)
    return meta


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m molconf.ground_state.prerelax",
                                description="Export a trained GFN2-xTB correction checkpoint as a weights file.")
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", required=True, help="the force data it was trained on (molconf gfn2-forces --out)")
    p.add_argument("--out", required=True, help="e.g. benchmarks/results/weights/moses_xtb_gfn2_correction.pt")
    args = p.parse_args(argv)
    try:
        meta = export_checkpoint(args.checkpoint, args.out, args.data_dir)
    except (FileNotFoundError, ValueError) as err:  # e.g. a damaged or unsafe checkpoint, named
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
