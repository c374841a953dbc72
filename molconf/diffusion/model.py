"""E(3)-equivariant coordinate denoiser (DESIGN §7): e3nn tensor-product convolutions.

The network maps noisy coordinates ``y`` of a molecular graph to a denoised estimate
``x̂ = f(y)`` (the quantity DESIGN's Jacobian analysis differentiates, ``J = ∂f/∂y``).

Frame
    Coordinates are handled with their **centroid** (unweighted mean over real atoms)
    removed, not the mass-weighted centre of mass: the training noise is isotropic per atom,
    and removing the unweighted mean is the orthogonal projection onto the zero-mean
    subspace, so the projected noise stays a standard Gaussian there (a mass-weighted
    centre would be an oblique projection and make the noise anisotropic). "Zero CoM" in
    this package means zero centroid. Outputs are centred the same way, so ``f`` is
    translation invariant and its output lies in the 3(n−1)-dimensional zero-mean space.

Graph
    Message passing runs on sparse edge lists built from the dense padded batch: every
    covalent bond, plus every pair of real atoms closer than ``cutoff`` in the *noisy*
    coordinates. The edge type (bond / non-bond) is an edge scalar. Non-bonded edges are
    weighted by a cosine envelope that vanishes at the cutoff, so ``f`` stays continuous
    when the radius graph changes (the Jacobian study needs that); bonds are never cut.

Layers
    Node features ``ns×0e + nv×1o + nv×1e``. One interaction: self-connection
    (``o3.Linear``) + a "uvu" ``o3.TensorProduct`` of the source features with the
    spherical harmonics (l ≤ 2) of the edge vector, its per-edge weights given by a radial
    MLP of (Gaussian basis of |r|, edge type, tanh of the source and target scalars: squashed, so the
    weights cannot square the features' scale layer after layer); messages are
    summed, mixed by ``o3.Linear`` and passed through an ``e3nn.nn.Gate``. The first layer
    also sees the centred position vector ``y_i`` (1o), so a global "shrink towards the
    centroid" is easy to express at large σ. The readout is an ``o3.Linear`` to one 1o
    vector per atom.

Parity: all features carry O(3) parities, so the network is equivariant under
reflections as well; it cannot prefer one enantiomer (chiral tags enter only as
ordinary scalars). Stereo is therefore repaired after sampling (see :mod:`.api`).

Variants
    * noise-conditioned (``blind=False``): an embedding of log σ is added to the node
      scalars of every layer, and the output uses EDM preconditioning
      ``x̂ = c_skip(σ) y + c_out(σ) F(y, σ)`` with ``c_skip = σd²/(σ²+σd²)``,
      ``c_out = σ σd / sqrt(σ²+σd²)`` (``c_in = 1``: the network sees coordinates in Å
      because the radius graph and radial basis are defined in Å).
    * blind (``blind=True``): no σ input; ``x̂ = y + F(y)``. As bias-free as e3nn allows:
      ``o3.Linear`` without biases, ``o3.TensorProduct`` (bilinear, no bias),
      ``e3nn.nn.FullyConnectedNet`` (has no biases) and gates with SiLU (SiLU(0)=0).
      *Not* bias-free: the atom-feature embedding (a per-atom constant that conditions on
      the graph, independent of ``y``), the Gaussian radial basis and the cutoff envelope
      (fixed length scales in Å), and the sigmoid gates (sigmoid(0) = ½). So, unlike
      Kadkhodaie et al.'s image networks, ``f`` is not homogeneous (``f(αy) ≠ αf(y)``):
      molecular geometry has an absolute length scale.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from molconf import constants as K
from molconf.models.layers import AtomEncoder


# --------------------------------------------------------------------------- frame helpers
def centre(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Remove the centroid of the real atoms; padding set to 0.

    x : (B, N, 3); mask : (B, N) bool. Returns (B, N, 3).
    """
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    count = m.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    mean = (x * m).sum(1, keepdim=True) / count
    return (x - mean) * m


def centred_noise(shape_like: torch.Tensor, mask: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gaussian noise projected onto the zero-centroid subspace (B, N, 3)."""
    z = torch.randn(shape_like.shape, generator=generator, dtype=shape_like.dtype, device="cpu")
    return centre(z.to(shape_like.device), mask)


def noise_dims(mask: torch.Tensor) -> torch.Tensor:
    """Dimension of the zero-centroid coordinate space per molecule, 3(n − 1), shape (B,)."""
    return (3 * (mask.sum(1) - 1)).clamp(min=1)


# --------------------------------------------------------------------------- sparse graph
def build_edges(y: torch.Tensor, mask: torch.Tensor, bond_adj: torch.Tensor, cutoff: float):
    """Sparse edges of a dense batch: bonds plus radius pairs on the (noisy) coordinates.

    Parameters
    ----------
    y : (B, N, 3) coordinates; mask : (B, N) bool; bond_adj : (B, N, N) bool
    cutoff : float
        Radius (Å) for non-bonded edges.

    Returns
    -------
    node : (M,) long, flat index ``b*N + i`` of every real atom (M atoms in the batch)
    src, dst : (E,) long, edges as positions in ``node`` (messages flow src → dst)
    bonded : (E,) bool
    """
    b, n, _ = y.shape
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)  # (B, N, N)
    pair = pair & ~torch.eye(n, dtype=torch.bool, device=y.device)
    with torch.no_grad():  # the edge *set* is discrete; smoothness comes from the envelope
        d2 = (y.unsqueeze(2) - y.unsqueeze(1)).square().sum(-1)  # (B, N, N)
        near = d2 < cutoff * cutoff
    bonds = bond_adj & pair
    edges = pair & (bonds | near)
    flat = mask.reshape(-1)
    node = flat.nonzero().squeeze(1)  # (M,)
    position = torch.full((b * n,), -1, dtype=torch.long, device=y.device)
    position[node] = torch.arange(node.numel(), device=y.device)
    bi, i, j = edges.nonzero(as_tuple=True)  # ordered by (b, i, j): padding-independent order
    src, dst = position[bi * n + j], position[bi * n + i]  # message j → i
    return node, src, dst, bonds[bi, i, j]


def gaussian_basis(r: torch.Tensor, stop: float, number: int) -> torch.Tensor:
    """Gaussians of width = spacing centred on ``linspace(0, stop, number)``; (E,) → (E, number)."""
    centres = torch.linspace(0.0, stop, number, dtype=r.dtype, device=r.device)
    width = stop / (number - 1)
    return torch.exp(-0.5 * ((r.unsqueeze(-1) - centres) / width).square()) * math.sqrt(2.0)


def cosine_envelope(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """1 at r = 0, smoothly 0 at and beyond the cutoff."""
    return 0.5 * (torch.cos(math.pi * (r / cutoff).clamp(max=1.0)) + 1.0)


# --------------------------------------------------------------------------- layers
class Interaction(nn.Module):
    """One tensor-product convolution with self-connection and gated nonlinearity."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, ns: int, nv: int, n_edge_scalars: int,
                 radial_hidden: int, avg_neighbours: float):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.gate = Gate(f"{ns}x0e", [nn.functional.silu], f"{2 * nv}x0e", [torch.sigmoid], f"{nv}x1o + {nv}x1e")
        wanted = {ir for _, ir in self.gate.irreps_in}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid = o3.Irreps(mid)
        mid_sorted, perm, _ = mid.sort()
        instructions = [(a, b, perm[c], mode, train) for a, b, c, mode, train in instructions]
        self.tp = o3.TensorProduct(self.irreps_in, irreps_sh, mid_sorted, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([n_edge_scalars + 2 * self.irreps_in.count("0e"), radial_hidden,
                                         radial_hidden, self.tp.weight_numel], nn.functional.silu)
        self.mix = o3.Linear(mid_sorted.simplify(), self.gate.irreps_in, biases=False)
        self.irreps_out = self.gate.irreps_out  # ns×0e + nv×1o + nv×1e
        self.self_connection = o3.Linear(self.irreps_in, self.irreps_out, biases=False)
        self.n_scalars_in = self.irreps_in.count("0e")
        self.norm = 1.0 / math.sqrt(avg_neighbours)
        self._mid_sorted = mid_sorted

    def forward(self, h, sh, edge_scalars, envelope, src, dst):
        # h (M, irreps_in), sh (E, irreps_sh), edge_scalars (E, S), envelope (E, 1)
        # The radial weights see the node scalars squashed: w(h) multiplies h, so unbounded scalars
        # would square the features' scale at every layer (init outputs of 1e27 Å at 8 layers).
        scal = torch.tanh(h[:, : self.n_scalars_in])  # (M, ns); 0e channels come first in sorted irreps
        w = self.radial(torch.cat([edge_scalars, scal[src], scal[dst]], dim=-1)) * envelope  # (E, W)
        msg = self.tp(h[src], sh, w)  # (E, mid)
        agg = torch.zeros(h.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device)
        agg = agg.index_add(0, dst, msg) * self.norm  # (M, mid)
        return self.self_connection(h) + self.gate(self.mix(agg))


class SigmaEmbedding(nn.Module):
    """Embedding of log σ: Gaussian basis on [log σ_lo, log σ_hi] → MLP → one vector per layer."""

    def __init__(self, width: int, n_layers: int, sigma_range=(1e-3, 10.0), n_basis: int = 16):
        super().__init__()
        self.lo, self.hi, self.n_basis = math.log(sigma_range[0]), math.log(sigma_range[1]), n_basis
        self.mlp = nn.Sequential(nn.Linear(n_basis, width), nn.SiLU(), nn.Linear(width, width * n_layers))
        self.width, self.n_layers = width, n_layers

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        # sigma (B,) → (n_layers, B, width)
        s = sigma.log().clamp(self.lo, self.hi) - self.lo
        basis = gaussian_basis(s, self.hi - self.lo, self.n_basis)  # (B, n_basis)
        return self.mlp(basis).view(-1, self.n_layers, self.width).transpose(0, 1)


class EquivariantDenoiser(nn.Module):
    """Graph-conditioned E(3)-equivariant denoiser of 3D coordinates (see module docstring).

    Parameters
    ----------
    blind : bool
        No σ input (Kadkhodaie et al.'s blind denoiser) instead of a noise-conditioned one.
    ns, nv : int
        Scalar channels, and channels of each of the 1o and 1e vector irreps.
    n_layers : int
        Interaction layers.
    cutoff : float
        Radius (Å) of non-bonded edges, computed on the noisy coordinates.
    n_rbf : int
        Gaussians of the radial basis on [0, cutoff].
    lmax : int
        Largest degree of the edge spherical harmonics.
    radial_hidden : int
        Width of the radial MLPs.
    sigma_data : float
        Typical per-coordinate spread of centred conformers (Å; ≈ 1.1 on the first QM9
        molecules, larger for drug-sized ones); EDM preconditioning and the
        scale of the position input.
    avg_neighbours : float
        Message-sum normalisation (messages are divided by its square root).

    Call ``model(batch, y, sigma)`` with a dense batch dict (:func:`molconf.data.collate_dense`),
    noisy coordinates ``y`` (B, N, 3) and ``sigma`` (B,) (ignored, may be None, if blind).
    Returns the denoised estimate x̂ (B, N, 3), centred, 0 on padding.
    """

    def __init__(self, blind: bool = False, ns: int = 32, nv: int = 8, n_layers: int = 4, cutoff: float = 5.0,
                 n_rbf: int = 16, lmax: int = 2, radial_hidden: int = 64, sigma_data: float = 1.5,
                 avg_neighbours: float = 10.0):
        super().__init__()
        self.config = dict(blind=blind, ns=ns, nv=nv, n_layers=n_layers, cutoff=cutoff, n_rbf=n_rbf, lmax=lmax,
                           radial_hidden=radial_hidden, sigma_data=sigma_data, avg_neighbours=avg_neighbours)
        self.blind, self.cutoff, self.n_rbf, self.sigma_data = blind, cutoff, n_rbf, sigma_data
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.embed = AtomEncoder(ns)
        self.sigma_embed = None if blind else SigmaEmbedding(ns, n_layers)
        n_edge = n_rbf + 2  # radial basis + one-hot (non-bond, bond)
        irreps = o3.Irreps(f"{ns}x0e + 1x1o")  # atom embedding + centred position
        layers = []
        for _ in range(n_layers):
            layer = Interaction(irreps, self.irreps_sh, ns, nv, n_edge, radial_hidden, avg_neighbours)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.readout = o3.Linear(irreps, "1x1o", biases=False)
        self.ns = ns

    # -- preconditioning (noise-conditioned variant) --------------------------------------
    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def forward(self, batch: dict, y: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        mask = batch[K.MASK]
        b, n, _ = y.shape
        if not self.blind:
            if sigma is None:
                raise ValueError("this denoiser is noise-conditioned: give sigma (B,)")
            sigma = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).reshape(-1).expand(b)
        y = centre(y, mask)  # (B, N, 3)
        node, src, dst, bonded = build_edges(y, mask, batch[K.BOND_ADJ], self.cutoff)
        pos = y.reshape(b * n, 3)[node]  # (M, 3)
        vec = pos[src] - pos[dst]  # (E, 3), points from target to source
        r2 = vec.square().sum(-1)
        r = (r2 + 1e-12).sqrt()  # finite gradient if two atoms coincide
        # Unit vectors without NaN at r = 0: the l ≥ 1 harmonics fade smoothly to 0 there.
        unit = vec / (r2 + 1e-6).sqrt().unsqueeze(-1)
        sh = o3.spherical_harmonics(self.irreps_sh, unit, normalize=False, normalization="component")
        edge_scalars = torch.cat([gaussian_basis(r, self.cutoff, self.n_rbf),
                                  nn.functional.one_hot(bonded.long(), 2).to(y.dtype)], dim=-1)  # (E, S)
        envelope = torch.where(bonded, torch.ones_like(r), cosine_envelope(r, self.cutoff)).unsqueeze(-1)
        scal = self.embed(batch[K.ATOM_FEATURES]).reshape(b * n, -1)[node].to(y.dtype)  # (M, ns)
        h = torch.cat([scal, pos / self.sigma_data], dim=-1)  # (M, ns + 3)
        if not self.blind:
            emb = self.sigma_embed(sigma)  # (L, B, ns)
            mol_of_node = node // n  # (M,)
        for l_idx, layer in enumerate(self.layers):
            if not self.blind:
                h = torch.cat([h[:, : self.ns] + emb[l_idx][mol_of_node], h[:, self.ns :]], dim=-1)
            h = layer(h, sh, edge_scalars, envelope, src, dst)
        out = self.readout(h)  # (M, 3)
        f = torch.zeros(b * n, 3, dtype=y.dtype, device=y.device).index_copy(0, node, out).view(b, n, 3)
        if self.blind:
            x_hat = y + f
        else:
            s = sigma.view(b, 1, 1)
            x_hat = self.c_skip(s) * y + self.c_out(s) * f
        return centre(x_hat, mask)
