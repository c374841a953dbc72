"""Generative counterpart of the regressors: an E(3)-equivariant coordinate denoiser (DESIGN §7).

Modules
-------
model       :class:`EquivariantDenoiser` (e3nn tensor-product convolutions; blind or σ-conditioned)
loss        denoising score matching on zero-centroid coordinates
lightning   :class:`~molconf.diffusion.lightning.DenoiserModule` for ``molconf fit``
sampling    DDIM (deterministic) and Kadkhodaie–Simoncelli samplers, LJ clash guidance
api         :func:`generate` (SMILES / Mol → Mol with n conformers)
evaluate    best-of-n / diversity / stereo, COV-R/AMR-R and COV-P/AMR-P
study       generalisation study (two disjoint training sets) and Jacobian analysis
cli         ``molconf generate`` and ``molconf diffusion generalization|jacobian``
"""

from molconf.diffusion.api import generate, resolve_denoiser
from molconf.diffusion.io import load_denoiser, save_denoiser
from molconf.diffusion.model import EquivariantDenoiser
from molconf.diffusion.sampling import LJGuidance, ddim_sample, ks_sample

__all__ = [
    "EquivariantDenoiser",
    "LJGuidance",
    "ddim_sample",
    "generate",
    "ks_sample",
    "load_denoiser",
    "resolve_denoiser",
    "save_denoiser",
]
