"""Relation builders: the one component in which ReBind and GTMGC differ (DESIGN §4–5).

A builder maps the intermediate conformation (and the graph) to a stack of relation
matrices ``(B, R, N, N)`` for the decoder's attention. The encoder always uses the bond
adjacency alone.
"""

from __future__ import annotations

import torch
from torch import nn

from molconf import ops
from molconf.ops.lj_params import H_SIGMA_CONVENTIONS


def masked_distances(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pair distances (B, N, N) with 0 wherever either atom is padding."""
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)
    return torch.where(pair, torch.cdist(pos, pos), torch.zeros((), dtype=pos.dtype, device=pos.device))


class ForceRewiringRelations(nn.Module):
    """ReBind: bonds, plus attractive and repulsive edges picked by LJ forces.

    Parameters
    ----------
    k_rule : str or int
        ``"degree"``: K_i = max degree in the molecule − deg_i (the paper's rule);
        an int: the same K for every atom.
    h_sigma_convention : str
        ``"uff"`` (σ = x/2^(1/6) for all elements) or ``"reference"`` (σ_H = x_H, as the
        ReBind code does).
    detach : bool
        Accepted for symmetry with the distance relation; the conformation is always
        detached here because the edge choice is discrete.
    """

    n_relations = 3  # bond, attractive, repulsive

    def __init__(self, k_rule: str | int = "degree", h_sigma_convention: str = "uff", detach: bool = True):
        super().__init__()
        if not (k_rule == "degree" or (isinstance(k_rule, int) and k_rule >= 0)):
            raise ValueError(f"k_rule must be 'degree' or a non-negative int, got {k_rule!r}")
        if h_sigma_convention not in H_SIGMA_CONVENTIONS:
            raise ValueError(f"h_sigma_convention must be one of {H_SIGMA_CONVENTIONS}")
        self.k_rule, self.h_sigma_convention, self.detach = k_rule, h_sigma_convention, detach

    def forward(self, pos: torch.Tensor, atomic_numbers: torch.Tensor, bond_adj: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        pos = pos.detach()  # edge choice is discrete: no gradient flows through it anyway
        sigma, eps = ops.lj_parameters(atomic_numbers, self.h_sigma_convention)
        if self.k_rule == "degree":
            k = ops.degree_compensating_k(bond_adj, mask)
        else:
            k = torch.where(mask, self.k_rule, 0).long()
        attr, rep = ops.rewire_by_force(pos, mask, bond_adj, sigma.to(pos.dtype), eps.to(pos.dtype), k)
        return torch.stack([bond_adj, attr, rep], dim=1).to(pos.dtype)  # (B, 3, N, N)


class RowMaxDistanceRelations(nn.Module):
    """GTMGC: bonds, plus ``D_rs[i, j] = max_k D[i, k] − D[i, j]`` of the cache conformer
    (row maximum over real atoms; diagonal and padding 0).

    ``detach=False`` (default), as GTMGC's reference computes it: the loss reaches the cache
    conformer, and through it the encoder, also by way of the decoder's relation. ``True``
    (no gradient through the relation) is an ablation (``configs/gtmgc_detached.yaml``); models
    trained before this default (the shipped ``moses_xtb_gtmgc``) were trained that way.
    """

    n_relations = 2  # bond, row-max-subtracted distance

    def __init__(self, detach: bool = False):
        super().__init__()
        self.detach = detach

    def forward(self, pos: torch.Tensor, atomic_numbers: torch.Tensor, bond_adj: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        if self.detach:
            pos = pos.detach()
        d = masked_distances(pos, mask)  # (B, N, N)
        d_rs = d.max(dim=-1, keepdim=True).values - d
        pair = mask.unsqueeze(1) & mask.unsqueeze(2)
        eye = torch.eye(d.shape[-1], dtype=torch.bool, device=d.device)
        d_rs = torch.where(pair & ~eye, d_rs, torch.zeros_like(d_rs))
        return torch.stack([bond_adj.to(d.dtype), d_rs], dim=1)  # (B, 2, N, N)


def build_relations(kind: str, **kwargs) -> nn.Module:
    """Relation builder by name: ``"rebind"`` or ``"gtmgc"``."""
    builders = {"rebind": ForceRewiringRelations, "gtmgc": RowMaxDistanceRelations}
    if kind not in builders:
        raise ValueError(f"unknown decoder relation {kind!r}; choose from {sorted(builders)}")
    return builders[kind](**kwargs)
