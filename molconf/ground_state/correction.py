"""A learned correction that turns MMFF94 into a GFN2-xTB-like potential near minima.

GFN2-xTB, started from an MMFF94 minimum, spends most of its optimisation steps moving bond
lengths and angles from MMFF94's values to its own (``benchmarks/xtb_start_probe.py``: with
1-2/1-3 distances already at GFN2-xTB's, the median drops from 24 to 10.5 steps). This
module learns ΔE = E(GFN2-xTB) − E(MMFF94) as a sum of pair terms over atom pairs at most
``max_hops`` bonds apart, each a function of the pair's distance whose coefficients come from
the 2D graph only:

    ΔE(x) = Σ_pairs Σ_k c_pk · φ_k(r_p),   c_p = MLP(h_i + h_j, h_i ⊙ h_j, hop)

with h a message-passing embedding of the molecular graph and φ two polynomial terms in the
distance from a per-hop centre plus Gaussian radial functions. With ``dihedrals``, terms in
cos nφ of every proper torsion (n = 1…3) and in h², h⁴ of the out-of-plane height of every atom
with three neighbours are added, their coefficients again from the graph. It is fitted to the
difference of GFN2-xTB and MMFF94 forces (:mod:`molconf.ground_state.forces`). Minimising
MMFF94 + ΔE from an MMFF94 minimum, torsions held (:func:`molconf.ground_state.prerelax.prerelax`),
brings its bonds and angles closer to GFN2-xTB's, and GFN2-xTB then needs fewer steps
(``benchmarks/xtb_relax.py --correction``; README, "GFN2-xTB from a prediction").

Shapes: N atoms, E bonds, P pairs, K basis functions, T torsions, I out-of-plane centres,
B molecules, d width (flat batches).
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
    torsions: np.ndarray  # (T, 4) int64, i-j-k-l bonded in a chain, i != l, j and k not sp (linear)
    impropers: np.ndarray  # (I, 4) int64, an atom with exactly three neighbours, then them

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


def torsion_quadruples(mol: Chem.Mol) -> np.ndarray:
    """(T, 4) proper torsions i-j-k-l, each once (i-j-k-l, not also l-k-j-i), i != l. Torsions
    about a bond to an sp atom are left out: their angle is undefined where the chain is linear.

    >>> torsion_quadruples(Chem.AddHs(Chem.MolFromSmiles("CO"))).shape  # 3 H-C-O-H
    (3, 4)
    >>> len(torsion_quadruples(Chem.AddHs(Chem.MolFromSmiles("CC#C"))))  # only through sp carbons
    0
    """
    out = []
    for bond in mol.GetBonds():
        j, k = bond.GetBeginAtom(), bond.GetEndAtom()
        if Chem.HybridizationType.SP in (j.GetHybridization(), k.GetHybridization()):
            continue
        for i in j.GetNeighbors():
            for ll in k.GetNeighbors():
                if i.GetIdx() not in (k.GetIdx(), ll.GetIdx()) and ll.GetIdx() != j.GetIdx():
                    out.append((i.GetIdx(), j.GetIdx(), k.GetIdx(), ll.GetIdx()))
    return np.asarray(out, np.int64).reshape(-1, 4)


def improper_quadruples(mol: Chem.Mol) -> np.ndarray:
    """(I, 4): every atom with exactly three neighbours, then those neighbours.

    >>> improper_quadruples(Chem.AddHs(Chem.MolFromSmiles("NC=O"))).tolist()  # the N and the C
    [[0, 1, 3, 4], [1, 0, 2, 5]]
    """
    out = [(a.GetIdx(), *sorted(n.GetIdx() for n in a.GetNeighbors())) for a in mol.GetAtoms() if a.GetDegree() == 3]
    return np.asarray(out, np.int64).reshape(-1, 4)


def pair_graph(mol: Chem.Mol, max_hops: int = 3) -> PairGraph:
    """The graph, every atom pair at most ``max_hops`` bonds apart (explicit-H ``mol``), and
    its torsions and out-of-plane centres (a model uses them if it has ``dihedrals``).

    Examples
    --------
    >>> g = pair_graph(Chem.AddHs(Chem.MolFromSmiles("CO")))
    >>> g.num_atoms, len(g.bonds), np.bincount(g.hops).tolist()  # 5 bonds, 7 angles, 3 torsions
    (6, 5, [0, 5, 7, 3])
    """
    bonds, types = bond_list(mol)
    pairs, hops = pairs_within_hops(mol, max_hops)
    return PairGraph(atom_features(mol), bonds.astype(np.int64), types.astype(np.int64), pairs, hops,
                     torsion_quadruples(mol), improper_quadruples(mol))


def batch_pair_graphs(graphs: list[PairGraph]) -> dict[str, torch.Tensor]:
    """Concatenate graphs into one flat batch (indices offset per molecule)."""
    offsets = np.cumsum([0] + [g.num_atoms for g in graphs[:-1]])
    cat = np.concatenate

    def atom_indices(field: str) -> torch.Tensor:  # a per-molecule index array, offset into the batch
        return torch.from_numpy(cat([getattr(g, field) + o for g, o in zip(graphs, offsets)]))

    def molecule_of(field: str) -> torch.Tensor:  # which molecule each row of that array belongs to
        return torch.from_numpy(cat([np.full(len(getattr(g, field)), b) for b, g in enumerate(graphs)]))

    return {
        "atom_features": torch.from_numpy(cat([g.atom_features for g in graphs]).astype(np.int64)),  # (N, 9)
        "edge_index": atom_indices("bonds").T.contiguous(),  # (2, E)
        "bond_types": torch.from_numpy(cat([g.bond_types for g in graphs])),  # (E,)
        "pairs": atom_indices("pairs"),  # (P, 2)
        "hops": torch.from_numpy(cat([g.hops for g in graphs])),  # (P,)
        "pair_batch": molecule_of("pairs"),  # (P,)
        "torsions": atom_indices("torsions"),  # (T, 4)
        "torsion_batch": molecule_of("torsions"),  # (T,)
        "impropers": atom_indices("impropers"),  # (I, 4)
        "improper_batch": molecule_of("impropers"),  # (I,)
        "num_molecules": torch.tensor(len(graphs)),
    }


def torsion_cos_sin(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos φ and sin φ (T,) of torsions given as positions (T, 4, 3) of i, j, k, l (RDKit's sign).

    >>> x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1]]])  # 90°
    >>> [round(v.item(), 6) for v in torsion_cos_sin(x)]
    [0.0, 1.0]
    """
    b1, b2, b3 = x[:, 1] - x[:, 0], x[:, 2] - x[:, 1], x[:, 3] - x[:, 2]  # (T, 3)
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)  # normals of the two planes
    # |n1| |n2|; the small constant keeps the gradient finite for a chain that is nearly straight
    norm = torch.sqrt((n1 * n1).sum(-1) * (n2 * n2).sum(-1) + 1e-6)
    return (n1 * n2).sum(-1) / norm, b2.norm(dim=-1) * (b1 * n2).sum(-1) / norm


def out_of_plane_height(x: torch.Tensor) -> torch.Tensor:
    """Signed distance (I,) of each centre ``x[:, 0]`` from the plane of its three neighbours
    ``x[:, 1:]`` (I, 4, 3): 0 for a planar centre.

    >>> x = torch.tensor([[[0, 0, 0.3], [1.0, 0, 0], [0, 1, 0], [-1, -1, 0]]])
    >>> round(out_of_plane_height(x).item(), 6)
    0.3
    """
    n = torch.linalg.cross(x[:, 2] - x[:, 1], x[:, 3] - x[:, 1])  # (I, 3)
    return ((x[:, 0] - x[:, 1]) * n).sum(-1) / n.norm(dim=-1)


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
    dihedrals : bool
        Also terms in the torsion angle φ of every proper torsion (cos φ, cos 2φ, cos 3φ) and
        in the out-of-plane height h of every atom with three neighbours (h², h⁴): what pair
        distances express only indirectly (the pyramidalisation of an amide or aniline N).

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

    def __init__(self, hidden: int = 128, layers: int = 3, max_hops: int = 3, num_rbf: int = 16,
                 dihedrals: bool = False):
        super().__init__()
        if not 1 <= max_hops <= len(HOP_CENTRES):
            raise ValueError(f"max_hops must be within 1 … {len(HOP_CENTRES)}, got {max_hops}")
        self.config = {"hidden": hidden, "layers": layers, "max_hops": max_hops, "num_rbf": num_rbf}
        if dihedrals:  # only when set, so weights files written before the option still load
            self.config["dihedrals"] = True
        self.max_hops, self.dihedrals = max_hops, dihedrals
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
        if dihedrals:
            self.torsion_mlp = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3))
            self.improper_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
            for mlp in (self.torsion_mlp, self.improper_mlp):
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)
        self.register_buffer("centres", torch.tensor(HOP_CENTRES[:max_hops]))
        self.register_buffer("rbf_means", torch.linspace(0.9, 5.0, num_rbf))
        self.rbf_width = (5.0 - 0.9) / max(num_rbf - 1, 1)

    def graph(self, mol: Chem.Mol) -> PairGraph:
        """The :class:`PairGraph` this model's settings need."""
        return pair_graph(mol, self.max_hops)

    def coefficients(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The terms' coefficients: ``pairs`` (P, K), with ``dihedrals`` also ``torsions`` (T, 3)
        and ``impropers`` (I, 2). They depend on the graph only, so a relaxation computes them once."""
        h = self.atoms(batch["atom_features"])  # (N, d)
        e = self.bond_embedding(batch["bond_types"])  # (E, d)
        edge_index = torch.cat([batch["edge_index"], batch["edge_index"].flip(0)], 1)  # (2, 2E) both directions
        e = torch.cat([e, e])
        for conv, norm in zip(self.convs, self.norms):
            h = h + conv(norm(h), edge_index, e)  # (N, d)
        hi, hj = h[batch["pairs"][:, 0]], h[batch["pairs"][:, 1]]  # (P, d)
        pair = torch.cat([hi + hj + self.hop_embedding(batch["hops"]), hi * hj], -1)  # (P, 2d) symmetric in i, j
        out = {"pairs": self.pair_mlp(pair)}  # (P, K)
        if self.dihedrals:
            t = h[batch["torsions"]]  # (T, 4, d)
            # symmetric under reading the torsion backwards (l-k-j-i)
            out["torsions"] = self.torsion_mlp(torch.cat([t[:, 1] + t[:, 2], t[:, 1] * t[:, 2], t[:, 0] + t[:, 3],
                                                          t[:, 0] * t[:, 3]], -1))  # (T, 3)
            q = h[batch["impropers"]]  # (I, 4, d)
            out["impropers"] = self.improper_mlp(torch.cat([q[:, 0], q[:, 1:].sum(1)], -1))  # (I, 2)
        return out

    def basis(self, r: torch.Tensor, hops: torch.Tensor) -> torch.Tensor:
        """(P, K): x, x² with x = r − centre(hop), then Gaussians of r."""
        x = r - self.centres[hops - 1]  # (P,)
        rbf = torch.exp(-(((r[:, None] - self.rbf_means) / self.rbf_width) ** 2))  # (P, num_rbf)
        return torch.cat([x[:, None], x[:, None] ** 2, rbf], -1)

    def energy(self, pos: torch.Tensor, coefficients: dict[str, torch.Tensor],
               batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """ΔE per molecule (B,) at positions ``pos`` (N, 3)."""
        i, j = batch["pairs"][:, 0], batch["pairs"][:, 1]
        r = (pos[i] - pos[j]).norm(dim=-1)  # (P,)
        terms = (coefficients["pairs"] * self.basis(r, batch["hops"])).sum(-1)  # (P,)
        out = torch.zeros(int(batch["num_molecules"]), dtype=pos.dtype, device=pos.device)
        out = out.index_add(0, batch["pair_batch"], terms)
        if self.dihedrals:
            c, _ = torsion_cos_sin(pos[batch["torsions"]])  # (T,)
            basis = torch.stack([c, 2 * c**2 - 1, 4 * c**3 - 3 * c], -1)  # cos φ, cos 2φ, cos 3φ
            out = out.index_add(0, batch["torsion_batch"], (coefficients["torsions"] * basis).sum(-1))
            h2 = out_of_plane_height(pos[batch["impropers"]]) ** 2  # (I,)
            basis = torch.stack([h2, h2**2], -1)
            out = out.index_add(0, batch["improper_batch"], (coefficients["impropers"] * basis).sum(-1))
        return out

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
