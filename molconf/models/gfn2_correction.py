"""A learned correction that turns MMFF94 into a GFN2-xTB-like potential near minima.

GFN2-xTB, started from an MMFF94 minimum, spends most of its optimisation steps moving bond
lengths and angles from MMFF94's values to its own (``benchmarks/xtb_start_probe.py``: with
1-2/1-3 distances already at GFN2-xTB's, the median drops from 24 to 10.5 steps). This
module learns ΔE = E(GFN2-xTB) − E(MMFF94) as a sum of pair terms over atom pairs at most
``max_hops`` bonds apart, each a function of the pair's distance whose coefficients come from
the 2D graph only:

    ΔE(x) = Σ_pairs Σ_k c_pk · φ_k(r_p),   c_p = MLP(h_i + h_j, h_i ⊙ h_j, hop)

with h a message-passing embedding of the molecular graph and φ two polynomial terms in the
distance from a per-hop centre plus Gaussian radial functions. It is fitted to the difference
of GFN2-xTB and MMFF94 forces (:mod:`molconf.data.gfn2_forces`). Minimising
MMFF94 + ΔE from an MMFF94 minimum (:func:`molconf.gfn2_prerelax.prerelax`) brings its bonds
and angles closer to GFN2-xTB's; whether that saves GFN2-xTB steps is measured by
``benchmarks/xtb_relax.py --correction`` (so far it does not: see the README).

Shapes: N atoms, E bonds, P pairs, K basis functions, B molecules, d width (flat batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from torch import nn
from torch_geometric.nn import GINEConv

from molconf.data.features import atom_features, bond_list
from molconf.models.layers import AtomEncoder

HOP_CENTRES = (1.3, 2.4, 3.0, 3.8, 4.5)  # Å, typical 1-2 … 1-6 distances: the polynomial's origin


@dataclass
class PairGraph:
    """What the correction needs of one molecule besides its coordinates."""

    atom_features: np.ndarray  # (N, 9) uint8
    bonds: np.ndarray  # (E, 2) int64
    bond_types: np.ndarray  # (E,) int64
    pairs: np.ndarray  # (P, 2) int64, i < j
    hops: np.ndarray  # (P,) int64, bonds between i and j (1 … max_hops)

    @property
    def num_atoms(self) -> int:
        return len(self.atom_features)


def pairs_within_hops(mol: Chem.Mol, max_hops: int) -> tuple[np.ndarray, np.ndarray]:
    """Atom pairs (P, 2), i < j in row order, at most ``max_hops`` bonds apart, and their bond counts (P,)."""
    topo = Chem.GetDistanceMatrix(mol)
    i, j = np.where((topo > 0) & (topo <= max_hops))
    keep = i < j
    i, j = i[keep], j[keep]
    return np.stack([i, j], 1).astype(np.int64), topo[i, j].astype(np.int64)


def pair_graph(mol: Chem.Mol, max_hops: int = 3) -> PairGraph:
    """The graph and every atom pair at most ``max_hops`` bonds apart (explicit-H ``mol``).

    Examples
    --------
    >>> g = pair_graph(Chem.AddHs(Chem.MolFromSmiles("CO")))
    >>> g.num_atoms, len(g.bonds), np.bincount(g.hops).tolist()  # 5 bonds, 7 angles, 3 torsions
    (6, 5, [0, 5, 7, 3])
    """
    bonds, types = bond_list(mol)
    pairs, hops = pairs_within_hops(mol, max_hops)
    return PairGraph(atom_features(mol), bonds.astype(np.int64), types.astype(np.int64), pairs, hops)


def batch_pair_graphs(graphs: list[PairGraph]) -> dict[str, torch.Tensor]:
    """Concatenate graphs into one flat batch (indices offset per molecule)."""
    offsets = np.cumsum([0] + [g.num_atoms for g in graphs[:-1]])
    cat = np.concatenate
    return {
        "atom_features": torch.from_numpy(cat([g.atom_features for g in graphs]).astype(np.int64)),  # (N, 9)
        "edge_index": torch.from_numpy(cat([g.bonds + o for g, o in zip(graphs, offsets)]).T.copy()),  # (2, E)
        "bond_types": torch.from_numpy(cat([g.bond_types for g in graphs])),  # (E,)
        "pairs": torch.from_numpy(cat([g.pairs + o for g, o in zip(graphs, offsets)])),  # (P, 2)
        "hops": torch.from_numpy(cat([g.hops for g in graphs])),  # (P,)
        "pair_batch": torch.from_numpy(cat([np.full(len(g.pairs), b) for b, g in enumerate(graphs)])),  # (P,)
        "num_molecules": torch.tensor(len(graphs)),
    }


class Gfn2Correction(nn.Module):
    """ΔE = E(GFN2-xTB) − E(MMFF94) as learned pair terms (eV; distances in Å).

    Parameters
    ----------
    hidden : int
        Width of the atom embeddings and the pair MLP.
    layers : int
        Message-passing layers over the bond graph.
    max_hops : int
        Pairs up to this many bonds apart get a term (3: bonds, angles, torsions).
    num_rbf : int
        Gaussian radial functions between 0.9 and 5 Å, beside the two polynomial terms.

    Examples
    --------
    >>> model = Gfn2Correction(hidden=16, layers=1)
    >>> mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    >>> from rdkit.Chem import AllChem; _ = AllChem.EmbedMolecule(mol, randomSeed=0)
    >>> batch = batch_pair_graphs([pair_graph(mol)])
    >>> pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
    >>> energy, forces = model.energy_and_forces(pos, model.coefficients(batch), batch)
    >>> energy.shape, forces.shape
    (torch.Size([1]), torch.Size([9, 3]))
    """

    def __init__(self, hidden: int = 128, layers: int = 3, max_hops: int = 3, num_rbf: int = 16):
        super().__init__()
        if not 1 <= max_hops <= len(HOP_CENTRES):
            raise ValueError(f"max_hops must be within 1 … {len(HOP_CENTRES)}, got {max_hops}")
        self.config = {"hidden": hidden, "layers": layers, "max_hops": max_hops, "num_rbf": num_rbf}
        self.max_hops = max_hops
        self.atoms = AtomEncoder(hidden)
        self.bond_embedding = nn.Embedding(5, hidden)
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)), train_eps=True)
            for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.hop_embedding = nn.Embedding(max_hops + 1, hidden)
        self.pair_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, 2 + num_rbf))
        nn.init.zeros_(self.pair_mlp[-1].weight)  # start as "no correction": MMFF94 unchanged
        nn.init.zeros_(self.pair_mlp[-1].bias)
        self.register_buffer("centres", torch.tensor(HOP_CENTRES[:max_hops]))
        self.register_buffer("rbf_means", torch.linspace(0.9, 5.0, num_rbf))
        self.rbf_width = (5.0 - 0.9) / max(num_rbf - 1, 1)

    def coefficients(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pair terms' coefficients, (P, K): they depend on the graph only, so a relaxation
        computes them once."""
        h = self.atoms(batch["atom_features"])  # (N, d)
        e = self.bond_embedding(batch["bond_types"])  # (E, d)
        edge_index = torch.cat([batch["edge_index"], batch["edge_index"].flip(0)], 1)  # (2, 2E) both directions
        e = torch.cat([e, e])
        for conv, norm in zip(self.convs, self.norms):
            h = h + conv(norm(h), edge_index, e)  # (N, d)
        hi, hj = h[batch["pairs"][:, 0]], h[batch["pairs"][:, 1]]  # (P, d)
        pair = torch.cat([hi + hj + self.hop_embedding(batch["hops"]), hi * hj], -1)  # (P, 2d) symmetric in i, j
        return self.pair_mlp(pair)  # (P, K)

    def basis(self, r: torch.Tensor, hops: torch.Tensor) -> torch.Tensor:
        """(P, K): x, x² with x = r − centre(hop), then Gaussians of r."""
        x = r - self.centres[hops - 1]  # (P,)
        rbf = torch.exp(-(((r[:, None] - self.rbf_means) / self.rbf_width) ** 2))  # (P, num_rbf)
        return torch.cat([x[:, None], x[:, None] ** 2, rbf], -1)

    def energy(self, pos: torch.Tensor, coefficients: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """ΔE per molecule (B,) at positions ``pos`` (N, 3)."""
        i, j = batch["pairs"][:, 0], batch["pairs"][:, 1]
        r = (pos[i] - pos[j]).norm(dim=-1)  # (P,)
        terms = (coefficients * self.basis(r, batch["hops"])).sum(-1)  # (P,)
        out = torch.zeros(int(batch["num_molecules"]), dtype=pos.dtype, device=pos.device)
        return out.index_add(0, batch["pair_batch"], terms)

    def energy_and_forces(self, pos: torch.Tensor, coefficients: torch.Tensor, batch: dict[str, torch.Tensor],
                          create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔE (B,) and ΔF = −∇ΔE (N, 3); ``create_graph`` for training on forces."""
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        energy = self.energy(pos, coefficients, batch)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -grad

    def forward(self, pos: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.energy_and_forces(pos, self.coefficients(batch), batch, create_graph=self.training)
