"""Pure-PyTorch reference implementation of molconf's custom ops.

Vectorised over the batch (no Python loops over molecules or atoms) so the models can use
it when the compiled extension is missing, and obvious enough to serve as the ground truth
for the fused kernels. All tensors are dense and padded:

- ``pos``       (B, N, 3) float
- ``mask``      (B, N)    bool, True for real atoms
- ``bond_adj``  (B, N, N) bool, symmetric
- ``sigma``, ``epsilon`` (B, N) float, per-atom LJ parameters (see ``lj_params``)
- ``k``         (B, N)    int64, how many rewired edges each atom may keep
"""

from __future__ import annotations

import torch

from molconf.constants import LJ_R_MIN


def _safe_norm(diff: torch.Tensor) -> torch.Tensor:
    # sqrt has an infinite derivative at 0 (the diagonal, coincident atoms); route those
    # entries around it so gradients stay finite (they are 0 there, as the LJ sums ignore them).
    r2 = diff.square().sum(-1)  # x, y, z summed in that order, as the kernels do
    nonzero = r2 > 0
    r = torch.where(nonzero, r2, torch.ones_like(r2)).sqrt()
    return torch.where(nonzero, r, torch.zeros_like(r))


def pair_distances(pos: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, N, N), with a finite gradient at r = 0."""
    return _safe_norm(pos.unsqueeze(2) - pos.unsqueeze(1))


def mixed_lj_parameters(
    sigma: torch.Tensor, epsilon: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lorentz–Berthelot mixing: σ_ij = (σ_i+σ_j)/2, ε_ij = sqrt(ε_i ε_j)."""
    sigma_ij = 0.5 * (sigma.unsqueeze(2) + sigma.unsqueeze(1))  # (B, N, N)
    eps_ij = (epsilon.unsqueeze(2) * epsilon.unsqueeze(1)).sqrt()  # (B, N, N)
    return sigma_ij, eps_ij


def _sixth_power(s: torch.Tensor) -> torch.Tensor:
    # s^6 as (s²·s²)·s² with exactly rounded multiplies rather than pow(s, 6): torch's pow
    # may differ by an ulp between its vectorised and scalar paths, while products round
    # the same everywhere, so the compiled kernels (cuda_ext/lj_math.h, same products in the
    # same order) reproduce these forces bit for bit and select identical top-K edges.
    s2 = s * s
    return s2 * s2 * s2


def lj_pair_force(r: torch.Tensor, sigma_ij: torch.Tensor, eps_ij: torch.Tensor) -> torch.Tensor:
    """Scalar LJ force F = -dV/dr = 24 ε / r · (2 (σ/r)^12 − (σ/r)^6); > 0 is repulsive."""
    r = r.clamp_min(LJ_R_MIN)
    s6 = _sixth_power(sigma_ij / r)
    return 24.0 * eps_ij / r * (2.0 * s6 * s6 - s6)


def lj_pair_energy(r: torch.Tensor, sigma_ij: torch.Tensor, eps_ij: torch.Tensor) -> torch.Tensor:
    """LJ pair energy V = 4 ε ((σ/r)^12 − (σ/r)^6)."""
    r = r.clamp_min(LJ_R_MIN)
    s6 = _sixth_power(sigma_ij / r)
    return 4.0 * eps_ij * (s6 * s6 - s6)


def rewire_candidates(mask: torch.Tensor, bond_adj: torch.Tensor) -> torch.Tensor:
    """Pairs eligible for rewiring: both atoms real, not bonded, not the same atom."""
    n = mask.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    return mask.unsqueeze(2) & mask.unsqueeze(1) & ~bond_adj & ~eye  # (B, N, N)


def degree_compensating_k(bond_adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """K_i = (largest degree in the molecule, H counted) − deg_i; 0 for padding."""
    deg = (bond_adj & mask.unsqueeze(1) & mask.unsqueeze(2)).sum(-1)  # (B, N)
    max_deg = deg.max(dim=-1, keepdim=True).values if deg.numel() else deg  # (B, 1)
    return torch.where(mask, max_deg - deg, torch.zeros_like(deg))


def rewire_by_force(
    pos: torch.Tensor,
    mask: torch.Tensor,
    bond_adj: torch.Tensor,
    sigma: torch.Tensor,
    epsilon: torch.Tensor,
    k: torch.Tensor,
    return_forces: bool = False,
):
    """Force-based rewiring (DESIGN §4): per atom keep the top-K_i candidates by |F_ij|.

    Ties in |F| are broken by the lower column index; candidates with zero or non-finite
    force are never kept. Returns boolean ``(attr, rep)`` of shape (B, N, N) and, with
    ``return_forces``, the pair forces (0 where the pair is not a candidate).
    """
    r = pair_distances(pos)  # (B, N, N)
    sigma_ij, eps_ij = mixed_lj_parameters(sigma, epsilon)
    force = lj_pair_force(r, sigma_ij, eps_ij)  # (B, N, N)
    cand = rewire_candidates(mask, bond_adj)
    force = torch.where(cand, force, torch.zeros_like(force))
    valid = cand & torch.isfinite(force) & (force != 0)
    score = torch.where(valid, force.abs(), torch.full_like(force, -1.0))
    n = pos.shape[1]
    # A stable descending sort keeps equal scores in index order: ties go to the lower index.
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices  # (B, N, N)
    arange = torch.arange(n, device=pos.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, arange)  # rank of each column
    keep = valid & (rank < k.unsqueeze(-1))
    attr = keep & (force < 0)
    rep = keep & (force > 0)
    if return_forces:
        return attr, rep, force
    return attr, rep


def lj_energy_forces(
    pos: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor,
    epsilon: torch.Tensor,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LJ energy per molecule (B,) and force per atom (B, N, 3) over non-excluded pairs.

    ``exclude`` (B, N, N) bool marks pairs left out (typically bonded and 1-3 pairs).
    Differentiable with respect to ``pos`` through autograd; forces are −∂E/∂pos computed
    analytically (not by autograd) so they are themselves differentiable.
    """
    # Padding may hold any value (even NaN); zero it so masked pairs stay finite both in
    # f * unit below (0 * NaN would leak into real atoms' forces) and in the gradient.
    pos = torch.where(mask.unsqueeze(-1), pos, torch.zeros_like(pos))
    diff = pos.unsqueeze(2) - pos.unsqueeze(1)  # (B, N, N, 3)
    r = _safe_norm(diff)  # (B, N, N)
    sigma_ij, eps_ij = mixed_lj_parameters(sigma, epsilon)
    pair = rewire_candidates(mask, torch.zeros_like(mask.unsqueeze(-1) & mask.unsqueeze(-2)))
    if exclude is not None:
        pair = pair & ~exclude
    energy = torch.where(pair, lj_pair_energy(r, sigma_ij, eps_ij), torch.zeros_like(r))
    energy = 0.5 * energy.sum((-1, -2))  # each pair counted twice  (B,)
    f = torch.where(pair & (r > LJ_R_MIN), lj_pair_force(r, sigma_ij, eps_ij), torch.zeros_like(r))
    # F_i = Σ_j F_ij (r_i − r_j)/r_ij; below LJ_R_MIN the energy is flat so the force is 0.
    unit = diff / r.clamp_min(LJ_R_MIN).unsqueeze(-1)  # (B, N, N, 3)
    forces = (f.unsqueeze(-1) * unit).sum(2)  # (B, N, 3)
    return energy, forces


def bond_exclusions(bond_adj: torch.Tensor, mask: torch.Tensor, exclude_13: bool = True):
    """Pairs to leave out of LJ sums: bonded pairs and, optionally, 1-3 (angle) pairs."""
    a = (bond_adj & mask.unsqueeze(1) & mask.unsqueeze(2)).to(torch.float32)
    excl = a > 0
    if exclude_13:
        excl = excl | (a @ a > 0)
    return excl
