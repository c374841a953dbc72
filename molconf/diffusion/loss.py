"""Denoising score matching on conformers (shared by Lightning training and the study).

For each molecule: σ ~ log-uniform[σ_min, σ_max], ε ~ N(0, I) projected onto the
zero-centroid subspace, ``y = x + σ ε`` (x = centred reference coordinates), and the loss
is the squared error of the denoised estimate ``x̂ = f(y)``, per coordinate, averaged over
atoms, weighted per molecule by ``λ(σ)``:

* ``"edm"`` (default): ``λ = (σ² + σd²) / (σ σd)²`` (Karras et al. 2022). For the
  noise-conditioned network this equals the unit-weighted error of its raw output
  ``F`` against the preconditioned target, so every noise level contributes O(1).
* ``"noise"``: ``λ = 1/σ²``, i.e. the MSE of the implied noise estimate
  ``ε̂ = (y − x̂)/σ`` (DDPM's ε-loss).
* ``"none"``: plain MSE of ``x̂`` in Å² (dominated by the largest σ; what Kadkhodaie
  et al. use for images with σ drawn uniformly).

The blind network never sees σ, but the weighting is a training-time choice and uses it.
"""

from __future__ import annotations

import math

import torch

from molconf import constants as K
from molconf.diffusion.model import centre, centred_noise

WEIGHTINGS = ("edm", "noise", "none")


def sample_sigma(n: int, sigma_min: float, sigma_max: float, generator: torch.Generator | None = None,
                 dtype=torch.float32) -> torch.Tensor:
    """(n,) noise levels, log-uniform on [sigma_min, sigma_max]."""
    u = torch.rand(n, generator=generator, dtype=dtype)
    return torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))


def loss_weight(sigma: torch.Tensor, weighting: str, sigma_data: float) -> torch.Tensor:
    if weighting == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if weighting == "noise":
        return 1.0 / sigma**2
    if weighting == "none":
        return torch.ones_like(sigma)
    raise ValueError(f"loss weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def per_molecule_mse(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per coordinate of real atoms, per molecule: (B,)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return ((x_hat - x).square() * m).sum((1, 2)) / (3 * mask.sum(1).clamp(min=1)).to(x.dtype)


def denoising_loss(model, batch: dict, sigma: torch.Tensor | None = None, sigma_min: float = 0.01,
                   sigma_max: float = 3.0, weighting: str = "edm",
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Weighted denoising loss of one dense batch.

    Parameters
    ----------
    model : EquivariantDenoiser
    batch : dense batch dict (needs ``pos``, ``mask``, ``bond_adj``, ``atom_features``)
    sigma : (B,) tensor, optional
        Noise levels; drawn log-uniformly from [sigma_min, sigma_max] if not given.
    generator : torch.Generator, optional
        Source of σ and ε (default: torch's global RNG).

    Returns
    -------
    dict with ``loss`` (scalar), ``mse`` (B,) per-coordinate squared error in Å², ``sigma`` (B,).
    """
    mask = batch[K.MASK]
    x = centre(batch[K.POS], mask)  # (B, N, 3)
    b = x.shape[0]
    if sigma is None:
        sigma = sample_sigma(b, sigma_min, sigma_max, generator, x.dtype).to(x.device)
    eps = centred_noise(x, mask, generator)
    y = x + sigma.view(b, 1, 1) * eps
    x_hat = model(batch, y, None if model.blind else sigma)
    mse = per_molecule_mse(x_hat, x, mask)  # (B,)
    loss = (loss_weight(sigma, weighting, model.sigma_data) * mse).mean()
    return {"loss": loss, "mse": mse, "sigma": sigma}
