"""DDIM determinism, the Kadkhodaie–Simoncelli ascent, and Lennard-Jones clash guidance."""

import math

import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from molconf import constants as K
from molconf.data import batch_from_mols, batch_from_smiles
from molconf.diffusion.model import centre
from molconf.diffusion.sampling import LJGuidance, ddim_sample, ks_sample, min_nonbonded_distance, sigma_schedule


class PointDenoiser:
    """Optimal blind denoiser of a point prior: always returns the centred target."""

    blind = True

    def __init__(self, target, mask):
        self.target = centre(target, mask)

    def __call__(self, batch, y, sigma):
        return self.target.to(y.dtype).expand_as(y)


class GaussianPriorDenoiser:
    """Optimal noise-conditioned denoiser of a Gaussian prior (spread tau) around a target."""

    blind = False

    def __init__(self, target, mask, tau=0.3):
        self.target, self.mask, self.tau = centre(target, mask), mask, tau

    def __call__(self, batch, y, sigma):
        shrink = (self.tau**2 / (self.tau**2 + sigma**2)).view(-1, 1, 1)
        return centre(self.target + shrink * (y - self.target), self.mask)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_schedule_is_geometric():
    s = sigma_schedule(3.0, 0.01, 6)
    assert math.isclose(float(s[0]), 3.0) and math.isclose(float(s[-1]), 0.01)
    ratios = s[1:] / s[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))


def test_ddim_is_deterministic_given_the_seed(tiny_conditioned):
    batch = batch_from_smiles(["CC(=O)NC", "OCC=C"])
    a = ddim_sample(tiny_conditioned, batch, n_steps=6, generator=_gen(1))
    b = ddim_sample(tiny_conditioned, batch, n_steps=6, generator=_gen(1))
    c = ddim_sample(tiny_conditioned, batch, n_steps=6, generator=_gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    mask = batch[K.MASK]
    assert torch.isfinite(a).all() and (a[~mask] == 0).all()
    assert torch.allclose(a.sum(1), torch.zeros(2, 3), atol=1e-4)  # zero centroid
    # stochastic variant (eta > 0) runs and depends on the seed too
    d = ddim_sample(tiny_conditioned, batch, n_steps=4, generator=_gen(1), eta=1.0)
    assert torch.isfinite(d).all() and not torch.allclose(d, a)


def test_ddim_refinement_stays_near_the_start():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    batch = batch_from_mols([mol])
    denoiser = PointDenoiser(batch[K.POS], batch[K.MASK])
    out = ddim_sample(denoiser, batch, n_steps=5, sigma_max=0.5, generator=_gen(0), init=batch[K.POS])
    assert torch.allclose(out, centre(batch[K.POS], batch[K.MASK]), atol=1e-5)


def test_ks_sigma_estimate_decreases_and_stops():
    batch = batch_from_smiles(["CC(=O)NC", "c1ccccc1"])
    target = torch.randn(batch[K.POS].shape, generator=_gen(0)) * batch[K.MASK].unsqueeze(-1)
    res = ks_sample(PointDenoiser(target, batch[K.MASK]), batch, sigma_0=1.0, sigma_L=0.01, h0=0.05, beta=0.1,
                    generator=_gen(3))
    assert res.converged.all() and (res.steps > 5).all()
    trace = res.sigma_trace  # (T, B)
    for b in range(2):
        s = trace[: int(res.steps[b]), b]
        assert 0.5 < float(s[0]) < 2.0 and float(s[-1]) <= 0.01  # starts near σ₀, stops at σ_L
        # decreases on average (injected noise makes single steps go up now and then)
        quarters = torch.stack([c.mean() for c in s.tensor_split(4)])
        assert (quarters[1:] < quarters[:-1]).all()
    assert torch.allclose(res.pos, centre(target, batch[K.MASK]), atol=0.05)
    # the same seed gives the same sample
    again = ks_sample(PointDenoiser(target, batch[K.MASK]), batch, h0=0.05, beta=0.1, generator=_gen(3))
    assert torch.equal(res.pos, again.pos)


def test_ks_flags_a_runaway_ascent():
    class Repeller:
        blind = True

        def __call__(self, batch, y, sigma):
            return 3.0 * y  # residual 2y: every step moves away

    batch = batch_from_smiles(["CCO"])
    res = ks_sample(Repeller(), batch, h0=0.5, beta=0.5, max_steps=200, generator=_gen(0))
    assert res.diverged.all() and not res.converged.any() and int(res.steps[0]) < 200


def test_ks_runs_with_networks(tiny_blind, tiny_conditioned):
    batch = batch_from_smiles(["CCO", "CC#N"])
    for net in (tiny_blind, tiny_conditioned):
        res = ks_sample(net, batch, h0=0.2, beta=0.5, max_steps=15, generator=_gen(0))
        assert torch.isfinite(res.pos).all() and res.sigma_trace.shape[1] == 2
        assert (res.steps <= 15).all()


def _clashing_butanol():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32).unsqueeze(0)
    batch = batch_from_mols([mol])
    # put the hydroxyl H on top of a methyl H (a 1-6 pair, never excluded)
    o_h = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1 and a.GetNeighbors()[0].GetAtomicNum() == 8][0]
    me_h = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1 and a.GetNeighbors()[0].GetIdx() == 0][0]
    pos[0, o_h] = pos[0, me_h] + torch.tensor([0.3, 0.0, 0.0])
    batch[K.POS] = pos
    return batch


def test_lj_guidance_removes_a_clash():
    batch = _clashing_butanol()
    start = float(min_nonbonded_distance(batch[K.POS], batch)[0])
    assert start < 0.35
    denoiser = GaussianPriorDenoiser(batch[K.POS], batch[K.MASK], tau=0.05)  # prior centred on the clash
    kw = dict(n_steps=30, sigma_max=0.2, sigma_min=0.01, init=batch[K.POS])
    plain = ddim_sample(denoiser, batch, generator=_gen(0), **kw)
    guided = ddim_sample(denoiser, batch, generator=_gen(0), guidance=LJGuidance(step=0.01, max_displacement=0.1), **kw)
    d_plain = float(min_nonbonded_distance(plain, batch)[0])
    d_guided = float(min_nonbonded_distance(guided, batch)[0])
    assert d_plain < 0.6 and d_guided > d_plain + 0.5, (d_plain, d_guided)
    # guidance alone, step by step, keeps the centroid and pushes the pair apart
    g = LJGuidance(step=0.01, max_displacement=0.1)
    y = batch[K.POS].clone()
    for _ in range(10):
        y = g(y, batch, torch.tensor([0.0]))
    assert float(min_nonbonded_distance(y, batch)[0]) > start + 0.5
