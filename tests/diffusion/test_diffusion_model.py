"""The denoiser's symmetries: rotation/translation/permutation equivariance, padding, dtype."""

import numpy as np
import pytest
import torch
from e3nn import o3
from rdkit import Chem

from molconf import constants as K
from molconf.data import batch_from_mols, batch_from_smiles
from molconf.diffusion.model import EquivariantDenoiser, build_edges, centre

SMILES = ["CC(=O)NC1CC1O", "c1ccc(F)cc1", "C#CC(C)(N)CO"]


def _inputs(smiles=SMILES, seed=0, scale=1.5):
    batch = batch_from_smiles(smiles)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch[K.POS].shape, generator=g, dtype=torch.float64) * scale
    return batch, y * batch[K.MASK].unsqueeze(-1)


@pytest.mark.parametrize("blind", [False, True])
def test_rotation_equivariance_and_translation_invariance(make_tiny, blind):
    net = make_tiny(blind).double()
    batch, y = _inputs()
    sigma = None if blind else torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    out = net(batch, y, sigma)
    mask = batch[K.MASK]
    rot = o3.rand_matrix(dtype=torch.float64)
    assert torch.allclose(net(batch, y @ rot.T, sigma), out @ rot.T, atol=1e-9)
    shift = torch.tensor([3.0, -7.0, 0.5], dtype=torch.float64) * mask.unsqueeze(-1)
    assert torch.allclose(net(batch, y + shift, sigma), out, atol=1e-9)
    # zero-centroid output, exactly 0 on padding
    assert torch.allclose((out * mask.unsqueeze(-1)).sum(1), torch.zeros(3, 3, dtype=torch.float64), atol=1e-9)
    assert (out[~mask] == 0).all()


def test_padding_does_not_change_results(make_tiny):
    net = make_tiny(False).double()
    batch, y = _inputs()
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    out = net(batch, y, sigma)
    for b, s in enumerate(SMILES):
        alone = batch_from_smiles([s])
        n = int(alone[K.NUM_ATOMS][0])
        got = net(alone, y[b : b + 1, :n], sigma[b : b + 1])
        assert torch.allclose(got[0], out[b, :n], atol=1e-10)


def test_permutation_equivariance(make_tiny):
    net = make_tiny(False).double()
    mol = Chem.AddHs(Chem.MolFromSmiles("OCC(N)C(=O)O"))
    n = mol.GetNumAtoms()
    perm = np.random.default_rng(1).permutation(n).tolist()
    permuted = Chem.RenumberAtoms(mol, perm)  # new atom k = old atom perm[k]
    y = torch.randn(1, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = torch.tensor([0.7], dtype=torch.float64)
    out = net(batch_from_mols([mol]), y, s)
    out_p = net(batch_from_mols([permuted]), y[:, perm], s)
    assert torch.allclose(out_p, out[:, perm], atol=1e-10)


def test_edges_are_bonds_plus_radius_pairs():
    batch = batch_from_smiles(["CCO"])  # 9 atoms
    y = torch.zeros(1, 9, 3)
    y[0, :, 0] = torch.arange(9) * 10.0  # far apart: only bonds survive
    _, src, dst, bonded = build_edges(y, batch[K.MASK], batch[K.BOND_ADJ], cutoff=5.0)
    assert bonded.all() and len(src) == 2 * 8
    _, src, _, bonded = build_edges(torch.zeros(1, 9, 3), batch[K.MASK], batch[K.BOND_ADJ], cutoff=5.0)
    assert len(src) == 9 * 8 and bonded.sum() == 16


def test_conditioned_needs_sigma_and_centre_helper(make_tiny):
    batch, y = _inputs()
    with pytest.raises(ValueError, match="sigma"):
        make_tiny(False)(batch, y.float())
    c = centre(y, batch[K.MASK])
    assert torch.allclose(c.sum(1), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)
    assert isinstance(make_tiny(True), EquivariantDenoiser)


@pytest.mark.parametrize("n_layers,ns,nv", [(6, 64, 16), (8, 32, 8)])
def test_deep_and_wide_networks_start_finite_and_bounded(qm9_small, n_layers, ns, nv):
    """The radial weights multiply the features they are computed from; fed raw node scalars, the
    features' scale squared at every layer and 6-8-layer networks began training at 1e7-1e27 Å²
    (or inf) for some seeds. Every seed here must start with a finite, bounded error."""
    from molconf.data.dataset import collate_dense, graph_to_data
    from molconf.diffusion.loss import denoising_loss

    batch = collate_dense([graph_to_data(qm9_small.graph(i), 1) for i in (3, 50, 120)] * 3)
    sigma = torch.tensor([0.01, 0.3, 3.0] * 3)
    for seed in range(6):
        torch.manual_seed(seed)
        net = EquivariantDenoiser(blind=seed % 2 == 0, ns=ns, nv=nv, n_layers=n_layers)
        with torch.no_grad():
            mse = denoising_loss(net, batch, sigma=sigma, generator=torch.Generator().manual_seed(seed))["mse"]
        assert torch.isfinite(mse).all() and float(mse.max()) < 1e3, (seed, mse)
