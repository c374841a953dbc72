"""The Jacobian analysis of DESIGN §7 (Kadkhodaie et al. 2024); the generalisation study is
:mod:`molconf.diffusion.generalization`.

Jacobian (:func:`jacobian_analysis`)
    ``J = ∂f/∂y`` (3n × 3n) of the denoised estimate at ``y = x_ref + σ z`` (z a centred
    Gaussian draw), computed whole with ``torch.func.jacrev`` in float64, model in eval mode.
    Reported per σ: eigenvalues of the symmetrised ``J_s = (J + Jᵀ)/2`` (shrinkage factors),
    ``d_eff = tr J``, the asymmetry ``‖J − Jᵀ‖_F / ‖J‖_F``, the weight of the leading
    eigenvectors in the rigid-body (translation + rotation) subspace, and the overlap of
    the leading eigenvectors of ``J_s`` restricted to the internal subspace with the
    softest normal modes of a force-field Hessian.

    The Hessian is the MMFF94 (or UFF) energy's at **the force field's own minimum nearest the
    sample**: for each draw, the force field is minimised from the denoised estimate ``f(y)``
    (rigid motions do not move under a minimiser, so the minimum stays in ``y``'s frame) and
    the Hessian taken there, by central finite differences of RDKit's analytic gradients
    (kcal mol⁻¹ Å⁻²), symmetrised, not mass-weighted (the denoiser works in plain Cartesian
    coordinates, so the comparison is in that metric); translations and rotations about the
    centroid are projected out, and the normal modes are the eigenvectors of the Hessian in the
    internal subspace, softest first. The count of negative Hessian eigenvalues (0 at a true
    minimum) and the minimum's RMSD to ``f(y)`` are reported. ``hessian_at="reference"`` takes
    one Hessian at the reference geometry instead (not a force-field stationary point for a
    DFT structure: it has negative modes).

    Shrinkage: for the ideal (MMSE) denoiser Tweedie's formula gives ``J = Cov[x | y] / σ²``,
    symmetric and positive semi-definite; its eigenvalues lie in [0, 1] when the posterior is
    locally Gaussian with covariance below σ² (Kadkhodaie et al.'s shrinkage picture), but can
    exceed 1 where the posterior spreads over several minima (large σ, soft torsions). Reported
    per σ: the share of eigenvalues of ``J_s`` (internal subspace) below −0.05 and above 1.05,
    and the extremes, beside the asymmetry (0 for the ideal denoiser).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Geometry import Point3D

from molconf.data.dataset import collate_dense, graph_to_data
from molconf.data.features import featurize
from molconf.diffusion.model import EquivariantDenoiser




# =========================================================================== Jacobian
def rigid_basis(coords: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3n, r) of infinitesimal translations and rotations about the centroid.

    r = 6, or 5 for linear molecules (rank determined numerically), fewer for n < 3.
    """
    x = np.asarray(coords, float) - np.mean(coords, axis=0)
    n = len(x)
    vecs = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        vecs.append(t.ravel())
    for k in range(3):
        axis = np.zeros(3)
        axis[k] = 1.0
        vecs.append(np.cross(axis, x).ravel())
    u, s, _ = np.linalg.svd(np.stack(vecs, 1), full_matrices=False)
    return u[:, s > 1e-6 * s.max()]


def internal_basis(coords: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3n, 3n − r) of the complement of :func:`rigid_basis`."""
    r = rigid_basis(coords)
    u, _, _ = np.linalg.svd(np.eye(len(r)) - r @ r.T)
    return u[:, : len(r) - r.shape[1]]


def force_field_hessian(mol: Chem.Mol, coords: np.ndarray | None = None, ff: str = "mmff",
                        step: float = 1e-3) -> np.ndarray:
    """(3n, 3n) Cartesian Hessian of the MMFF94 / UFF energy by central differences of gradients."""
    m = Chem.Mol(mol)
    if ff == "mmff":
        props = AllChem.MMFFGetMoleculeProperties(m)
        if props is None:
            raise ValueError("no MMFF parameters for this molecule (try ff='uff')")
        field_ = AllChem.MMFFGetMoleculeForceField(m, props)
    elif ff == "uff":
        if not AllChem.UFFHasAllMoleculeParams(m):
            raise ValueError("no UFF parameters for this molecule")
        field_ = AllChem.UFFGetMoleculeForceField(m)
    else:
        raise ValueError(f"ff must be 'mmff' or 'uff', got {ff!r}")
    conf = m.GetConformer()
    x0 = (conf.GetPositions() if coords is None else np.asarray(coords, float)).ravel()

    def grad(x: np.ndarray) -> np.ndarray:
        # The force field reads the conformer's coordinates; passing positions to CalcGrad
        # instead gave gradients inconsistent with CalcEnergy on repeated calls (RDKit
        # 2026.09), so positions are set on the conformer and the field re-initialised.
        for i, p in enumerate(x.reshape(-1, 3).tolist()):
            conf.SetAtomPosition(i, Point3D(*p))
        field_.Initialize()
        return np.asarray(field_.CalcGrad())

    h = np.empty((x0.size, x0.size))
    for k in range(x0.size):
        xp, xm = x0.copy(), x0.copy()
        xp[k] += step
        xm[k] -= step
        h[:, k] = (grad(xp) - grad(xm)) / (2 * step)
    return 0.5 * (h + h.T)


def normal_modes(hessian: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (softest first) and modes (3n, 3n − r) of the Hessian in the internal subspace."""
    q = internal_basis(coords)
    w, v = np.linalg.eigh(q.T @ hessian @ q)
    return w, q @ v


def single_batch(mol: Chem.Mol) -> dict:
    return collate_dense([graph_to_data(featurize(mol), 1)])


def denoiser_jacobian(model: EquivariantDenoiser, batch: dict, y: torch.Tensor, sigma: float | None = None,
                      dtype=torch.float64) -> np.ndarray:
    """Full Jacobian ∂f/∂y (3n × 3n) of one molecule's denoised estimate at ``y`` (n, 3).

    The model is copied to ``dtype`` and evaluation mode; ``torch.func.jacrev`` computes
    all 3n vector-Jacobian products in one vectorised backward (falls back to
    ``torch.autograd.functional.jacobian`` if the functorch transform fails).
    """
    import copy

    net = copy.deepcopy(model).to(dtype).eval()
    n = y.shape[0]
    s = None if net.blind else torch.tensor([float(sigma)], dtype=dtype)
    if s is None and not net.blind:
        raise ValueError("a noise-conditioned model needs sigma")

    def f(v):
        return net(batch, v.view(1, n, 3), s).reshape(-1)

    v0 = torch.as_tensor(y, dtype=dtype).reshape(-1)
    with torch.no_grad():
        try:
            jac = torch.func.jacrev(f)(v0)
        except Exception:  # pragma: no cover - depends on functorch coverage of e3nn ops
            with torch.enable_grad():
                jac = torch.autograd.functional.jacobian(f, v0)
    return jac.detach().numpy()


def _jacobian_stats(jac: np.ndarray, q: np.ndarray, rigid: np.ndarray, modes: np.ndarray, k: int) -> dict:
    """Statistics of one Jacobian (see the module docstring)."""
    js = 0.5 * (jac + jac.T)
    evals, evecs = np.linalg.eigh(js)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    e_int, v_int = np.linalg.eigh(q.T @ js @ q)  # restricted to the internal subspace
    o = np.argsort(e_int)[::-1]
    e_int, u_int = e_int[o], q @ v_int[:, o]
    overlap = (u_int[:, :k].T @ modes) ** 2  # (k, 3n − r): squared cosines
    return {
        "d_eff": float(np.trace(jac)),
        "d_eff_internal": float(np.sum(e_int)),
        "asymmetry": float(np.linalg.norm(jac - jac.T) / max(np.linalg.norm(jac), 1e-300)),
        "eigenvalues": evals.tolist(),
        "eigenvalues_internal": e_int.tolist(),
        "leading_rigid_weight": np.sum((rigid.T @ evecs[:, :k]) ** 2, axis=0).tolist(),
        "subspace_overlap": float(np.sum(overlap[:, :k]) / k),  # top-k of J vs k softest modes; 1 = same subspace
        "leading_overlap": overlap.tolist(),
    }


def force_field_minimum(mol: Chem.Mol, coords: np.ndarray, ff: str = "mmff", max_iters: int = 2000) -> np.ndarray:
    """(n, 3) the MMFF94 / UFF minimum reached from ``coords`` (RDKit's minimiser)."""
    m = Chem.Mol(mol)
    conf = m.GetConformer()
    for i, p in enumerate(np.asarray(coords, float).tolist()):
        conf.SetAtomPosition(i, Point3D(*p))
    if ff == "mmff":
        props = AllChem.MMFFGetMoleculeProperties(m)
        if props is None:
            raise ValueError("no MMFF parameters for this molecule (try ff='uff')")
        field_ = AllChem.MMFFGetMoleculeForceField(m, props)
    else:
        field_ = AllChem.UFFGetMoleculeForceField(m)
    field_.Minimize(maxIts=max_iters)
    return np.asarray(field_.Positions()).reshape(-1, 3)


def _shrinkage_stats(e_int: np.ndarray) -> dict:
    """How far the internal eigenvalues of J_s stray from [0, 1] (tolerance 0.05)."""
    return {"eig_min": float(e_int.min()), "eig_max": float(e_int.max()),
            "share_below_0": float(np.mean(e_int < -0.05)), "share_above_1": float(np.mean(e_int > 1.05))}


def jacobian_analysis(model: EquivariantDenoiser, mol: Chem.Mol, sigmas, seed: int = 0, n_leading: int = 10,
                      ff: str = "mmff", n_draws: int = 1, hessian_at: str = "minimum") -> dict:
    """Jacobian statistics of one molecule (explicit H, with its reference conformer) at each σ.

    ``hessian_at``: ``"minimum"`` (default) compares with the normal modes at the force field's
    minimum nearest each sample, ``"reference"`` with those at the reference geometry. With
    ``n_draws > 1`` the Jacobian is taken at several noise draws per σ: the scalar statistics
    are averaged (``*_std`` gives their spread); eigenvalues and overlaps are those of the
    first draw.
    """
    if mol.GetNumConformers() == 0:
        raise ValueError("the molecule needs a reference conformer")
    if hessian_at not in ("minimum", "reference"):
        raise ValueError(f"hessian_at must be 'minimum' or 'reference', got {hessian_at!r}")
    x = mol.GetConformer().GetPositions()
    x = x - x.mean(0)
    n = len(x)
    batch = single_batch(mol)
    rigid, q = rigid_basis(x), internal_basis(x)
    ref_freq2, ref_modes = normal_modes(force_field_hessian(mol, x, ff), x)  # softest first
    k = min(n_leading, ref_modes.shape[1])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        draws = []
        for _ in range(max(1, n_draws)):
            z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
            y = torch.as_tensor(x) + float(sigma) * (z - z.mean(0))
            jac = denoiser_jacobian(model, batch, y, sigma)
            extra, modes = {}, ref_modes
            if hessian_at == "minimum":
                with torch.no_grad():  # the denoised estimate f(y), where the minimiser starts
                    fy = model.eval()(batch, y.view(1, n, 3).float(),
                                      None if model.blind else torch.tensor([float(sigma)]))[0].double().numpy()
                x_min = force_field_minimum(mol, fy, ff)  # (n, 3)
                freq2, modes = normal_modes(force_field_hessian(mol, x_min, ff), x_min)
                extra = {"hessian_negative": int(np.sum(freq2 < -1e-6)),
                         "minimum_rmsd_to_estimate": float(np.sqrt(np.mean(np.sum((x_min - fy) ** 2, 1))))}
                q_draw, rigid_draw = internal_basis(x_min), rigid_basis(x_min)
            else:
                q_draw, rigid_draw = q, rigid
            stats = _jacobian_stats(jac, q_draw, rigid_draw, modes, k)
            draws.append({**stats, **extra, **_shrinkage_stats(np.asarray(stats["eigenvalues_internal"]))})
        row = {"sigma": float(sigma), **draws[0], "overlap_random_baseline": k / ref_modes.shape[1],
               "n_draws": len(draws)}
        for key in ("d_eff", "d_eff_internal", "asymmetry", "subspace_overlap", "share_above_1", "share_below_0",
                    *(("hessian_negative", "minimum_rmsd_to_estimate") if hessian_at == "minimum" else ())):
            values = [d[key] for d in draws]
            row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        # eigenvalues_internal is the first draw's; the extremes and shares cover every draw
        row["eigenvalues_internal_per_draw"] = [d["eigenvalues_internal"] for d in draws]
        row["eig_min"], row["eig_max"] = min(d["eig_min"] for d in draws), max(d["eig_max"] for d in draws)
        rows.append(row)
    return {"n_atoms": n, "dim": 3 * n, "n_rigid": int(rigid.shape[1]), "force_field": ff, "n_leading": k,
            "hessian_at": hessian_at, "reference_hessian_eigenvalues": ref_freq2.tolist(),
            "reference_hessian_negative": int(np.sum(ref_freq2 < -1e-6)),
            "smiles": Chem.MolToSmiles(Chem.RemoveHs(mol)), "per_sigma": rows}


def plot_jacobian(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["per_sigma"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    s = [r["sigma"] for r in rows]
    axes[0].errorbar(s, [r["d_eff"] for r in rows], yerr=[r.get("d_eff_std", 0.0) for r in rows], fmt="o-",
                     label="tr J")
    axes[0].axhline(result["dim"] - 3, color="grey", ls=":", label="3n − 3")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("σ (Å)")
    axes[0].set_ylabel("d_eff")
    axes[0].legend(fontsize=7)
    for r in rows:
        axes[1].plot(r["eigenvalues"], label=f"σ={r['sigma']:g}")
    axes[1].set_xlabel("index")
    axes[1].set_ylabel("eigenvalue of (J+Jᵀ)/2")
    axes[1].legend(fontsize=7)
    im = axes[2].imshow(np.asarray(rows[0]["leading_overlap"]), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[2].set_xlabel("normal mode (softest first)")
    axes[2].set_ylabel(f"J eigenvector (σ={rows[0]['sigma']:g})")
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_jacobian(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "jacobian.json").write_text(json.dumps(result) + "\n")
    try:
        plot_jacobian(result, out / "jacobian.png")
    except ImportError:  # matplotlib is an optional extra
        pass
    return out / "jacobian.json"


def reference_molecule(smiles: str | None = None, qm9_id: int | None = None, sdf: str | None = None,
                       source_limit: int | None = None, seed: int = 0) -> Chem.Mol:
    """A molecule with a reference conformer: a QM9 molecule (DFT geometry), the first
    record of an SDF, or a SMILES embedded with ETKDG and optimised with MMFF."""
    if sum(x is not None for x in (smiles, qm9_id, sdf)) != 1:
        raise ValueError("give exactly one of smiles, qm9_id, sdf")
    if qm9_id is not None:
        from molconf.data.prepare import load_qm9

        store = load_qm9(limit=source_limit)
        rows, missing = store.positions_of([qm9_id])
        if len(missing):
            raise ValueError(f"QM9 molecule {qm9_id} is not in the cache")
        return store.mol(int(rows[0]))
    if sdf is not None:
        mol = next((m for m in Chem.SDMolSupplier(str(sdf), removeHs=False) if m is not None), None)
        if mol is None or mol.GetNumConformers() == 0:
            raise ValueError(f"{sdf}: no readable molecule with coordinates")
        return Chem.AddHs(mol, addCoords=True)
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMolecule(mol)
    return mol


__all__ = [
    "denoiser_jacobian", "force_field_hessian", "jacobian_analysis", "normal_modes", "reference_molecule",
    "rigid_basis", "write_jacobian",
]
