"""Samplers for the coordinate denoiser.

* :func:`ddim_sample` — deterministic DDIM / probability-flow sampler (variance-exploding
  form, Euler steps of ``dx/dσ = (x − x̂(x, σ))/σ`` on a geometric σ schedule). Meant for the
  noise-conditioned network; with a blind network σ is simply not passed.
* :func:`ks_sample` — Kadkhodaie & Simoncelli's stochastic coarse-to-fine ascent for blind
  denoisers (Algorithm 1 of "Stochastic solutions for linear inverse problems using the
  prior implicit in a denoiser", NeurIPS 2021, used by Kadkhodaie et al. ICLR 2024).

Both work on dense padded batches, keep every iterate centred (zero centroid), start from
pure noise or around a given conformer (refinement), can add Lennard-Jones clash guidance
(:class:`LJGuidance`), and draw all randomness from a ``torch.Generator``: the same
generator seed (and batch) gives the same samples.

A *denoiser* here is any callable ``denoiser(batch, y, sigma) -> x̂`` with ``y`` (B, N, 3)
and ``sigma`` (B,) or ``None``; an :class:`~molconf.diffusion.model.EquivariantDenoiser`
qualifies (it ignores σ when blind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from molconf import constants as K
from molconf.diffusion.model import centre, centred_noise, noise_dims
from molconf.ops import bond_exclusions, lj_energy_forces, lj_parameters


def _is_blind(denoiser) -> bool:
    return bool(getattr(denoiser, "blind", False))


def sigma_schedule(sigma_max: float, sigma_min: float, n_steps: int) -> torch.Tensor:
    """Geometric noise levels from ``sigma_max`` down to ``sigma_min`` (n_steps values, float64)."""
    if n_steps < 1:
        raise ValueError("n_steps must be ≥ 1")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min ≤ sigma_max, got {sigma_min}, {sigma_max}")
    if n_steps == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n_steps, dtype=torch.float64)


# --------------------------------------------------------------------------- guidance
@dataclass
class LJGuidance:
    """Small steps along Lennard-Jones forces (UFF parameters) to push clashing atoms apart.

    Bonded and 1-3 (angle) pairs are excluded (:func:`molconf.ops.bond_exclusions`); other
    pairs, 1-4 included, feel the full LJ force (attraction too, so keep steps small).
    The displacement per atom is ``step × F`` capped at ``max_displacement`` Å, and the
    guidance only acts once the current noise level is ≤ ``sigma_below`` (at high noise
    clashes are meaningless).
    """

    step: float = 0.002  # Å per (kcal/mol/Å)
    max_displacement: float = 0.05  # Å per atom per sampler step
    sigma_below: float = 0.5  # Å
    exclude_13: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    def _params(self, batch: dict, dtype, device):
        # Cached per batch object; the cache holds the batch itself, so a later batch can
        # never be mistaken for it (ids of freed objects get reused).
        if self._cache.get("batch") is not batch:
            sigma, eps = lj_parameters(batch[K.ATOMIC_NUMBERS])
            excl = bond_exclusions(batch[K.BOND_ADJ], batch[K.MASK], self.exclude_13)
            self._cache = {"batch": batch, "p": (sigma, eps, excl)}
        sigma, eps, excl = self._cache["p"]
        return sigma.to(device, dtype), eps.to(device, dtype), excl.to(device)

    def displacement(self, y: torch.Tensor, batch: dict) -> torch.Tensor:
        """Capped, centred displacement (B, N, 3) along the LJ forces at ``y``."""
        mask = batch[K.MASK]
        sigma, eps, excl = self._params(batch, y.dtype, y.device)
        _, forces = lj_energy_forces(y.detach(), mask, sigma, eps, excl)  # (B, N, 3)
        disp = self.step * forces
        norm = disp.norm(dim=-1, keepdim=True)
        disp = disp * (self.max_displacement / norm.clamp(min=self.max_displacement))
        return centre(torch.nan_to_num(disp), mask)

    def __call__(self, y: torch.Tensor, batch: dict, sigma_now: torch.Tensor) -> torch.Tensor:
        on = (sigma_now <= self.sigma_below).to(y.dtype).view(-1, 1, 1)  # (B, 1, 1)
        if not bool(on.any()):
            return y
        return y + on * self.displacement(y, batch)


def min_nonbonded_distance(pos: torch.Tensor, batch: dict, exclude_13: bool = True) -> torch.Tensor:
    """Smallest distance between non-excluded real atom pairs, per molecule (B,) (inf if none)."""
    mask = batch[K.MASK]
    excl = bond_exclusions(batch[K.BOND_ADJ], mask, exclude_13)
    n = pos.shape[1]
    ok = mask.unsqueeze(1) & mask.unsqueeze(2) & ~excl & ~torch.eye(n, dtype=torch.bool, device=pos.device)
    d = torch.cdist(pos.double(), pos.double())
    return d.masked_fill(~ok, math.inf).flatten(1).min(1).values


# --------------------------------------------------------------------------- DDIM
def _start(batch, init, sigma, generator, dtype):
    mask = batch[K.MASK]
    ref = batch[K.POS].to(dtype) if init is None else torch.as_tensor(init, dtype=dtype)
    z = centred_noise(ref, mask, generator)
    if init is None:
        return sigma * z
    return centre(ref, mask) + sigma * z


@torch.no_grad()
def ddim_sample(denoiser, batch: dict, n_steps: int = 50, sigma_max: float = 3.0, sigma_min: float = 0.01,
                generator: torch.Generator | None = None, init: torch.Tensor | None = None, eta: float = 0.0,
                guidance: LJGuidance | None = None, return_trajectory: bool = False):
    """DDIM sampling (deterministic for ``eta = 0``).

    Parameters
    ----------
    denoiser : callable ``(batch, y, sigma) -> x̂``
    batch : dense batch dict (the graphs to sample; ``pos`` is not used unless ``init``)
    n_steps : int
        Denoiser evaluations; σ follows a geometric schedule from ``sigma_max`` to ``sigma_min``.
    generator : torch.Generator, optional
        Source of the initial noise (and of the fresh noise when ``eta > 0``).
    init : (B, N, 3) tensor, optional
        Start around these coordinates instead of from pure noise: ``y₀ = init + σ_max z``
        (refinement of e.g. a regressor's prediction; use a moderate ``sigma_max``, ~0.3–1 Å).
    eta : float
        0 = deterministic DDIM; 1 = ancestral sampling (fresh noise every step).
    guidance : LJGuidance, optional
    return_trajectory : bool
        Also return the list of iterates (after each step).

    Returns
    -------
    (B, N, 3) sample, centred, 0 on padding (and the trajectory if asked).

    Update: with ``x̂ = denoiser(y, σ_i)``, ``y ← x̂ + (σ_down/σ_i)(y − x̂) + σ_up z`` where
    ``σ_up = min(σ_{i+1}, η σ_{i+1} sqrt(1 − σ_{i+1}²/σ_i²))``, ``σ_down = sqrt(σ_{i+1}² − σ_up²)``
    (η = 0: σ_down = σ_{i+1}, the DDIM / Euler probability-flow step). The last step
    returns the final denoised estimate ``x̂(y, σ_min)``.
    """
    mask = batch[K.MASK]
    dtype = next((p.dtype for p in getattr(denoiser, "parameters", lambda: iter(()))()), torch.float32)
    sigmas = sigma_schedule(sigma_max, sigma_min, n_steps)
    y = _start(batch, init, float(sigmas[0]), generator, dtype)
    b = y.shape[0]
    blind = _is_blind(denoiser)
    traj = []
    for i in range(n_steps):
        s = float(sigmas[i])
        x_hat = denoiser(batch, y, None if blind else torch.full((b,), s, dtype=dtype, device=y.device))
        if i + 1 == n_steps:
            y = x_hat
        else:
            s_next = float(sigmas[i + 1])
            s_up = min(s_next, eta * s_next * math.sqrt(max(0.0, 1 - s_next**2 / s**2)))
            s_down = math.sqrt(s_next**2 - s_up**2)
            y = x_hat + (s_down / s) * (y - x_hat)
            if s_up > 0:
                y = y + s_up * centred_noise(y, mask, generator)
            if guidance is not None:
                y = guidance(y, batch, torch.full((b,), s_next, dtype=dtype, device=y.device))
        y = centre(y, mask)
        if return_trajectory:
            traj.append(y.clone())
    if guidance is not None:
        y = centre(guidance(y, batch, torch.full((b,), sigma_min, dtype=dtype, device=y.device)), mask)
    return (y, traj) if return_trajectory else y


# --------------------------------------------------------------------------- KS ascent
@dataclass
class KSResult:
    """Output of :func:`ks_sample`."""

    pos: torch.Tensor  # (B, N, 3) final iterate y_T
    sigma_trace: torch.Tensor  # (T, B) σ_t estimates (NaN after a molecule stopped)
    steps: torch.Tensor  # (B,) iterations each molecule ran
    converged: torch.Tensor  # (B,) bool, σ_t reached σ_L within max_steps
    diverged: torch.Tensor  # (B,) bool, stopped because σ_t blew up (> diverge_factor σ₀ or non-finite)


@torch.no_grad()
def ks_sample(denoiser, batch: dict, sigma_0: float = 1.0, sigma_L: float = 0.01, h0: float = 0.01,
              beta: float = 0.01, max_steps: int = 5000, generator: torch.Generator | None = None,
              init: torch.Tensor | None = None, guidance: LJGuidance | None = None,
              final_denoise: bool = False, diverge_factor: float = 10.0) -> KSResult:
    """Kadkhodaie–Simoncelli stochastic coarse-to-fine ascent, exactly as their Algorithm 1.

    With the residual ``d(y) = x̂(y) − y`` (pointing towards the denoised estimate)::

        t = 1;  y₀ = σ₀ z  (or init + σ₀ z)
        while σ_{t−1} ≥ σ_L:
            h_t  = h₀ t / (1 + h₀ (t − 1))
            d_t  = d(y_{t−1});   σ_t² = ‖d_t‖² / D
            γ_t² = ((1 − β h_t)² − (1 − h_t)²) σ_t²
            y_t  = y_{t−1} + h_t d_t + γ_t z_t,   z_t ~ N(0, I)
            t ← t + 1

    i.e. ``y ← y − h_t (y − x̂(y)) + γ_t z``. ``D = 3(n − 1)`` is the dimension of the
    zero-centroid coordinate space (noise lives there), and every ``z`` is centred. β is
    the share of the noise removed per step that is *not* re-injected (β = 1: no
    injected noise). Each molecule of the batch stops on its own when its σ_t drops to
    ≤ σ_L; the loop ends when all have stopped or after ``max_steps`` iterations.

    A noise-conditioned network is called with σ = the latest estimate σ_{t−1} (σ₀ at
    first); a blind one without σ. The image version starts at mean 0.5 (grey);
    conformers start at the centroid (0).

    Not in the paper: a poorly trained denoiser can make the ascent run away; a molecule
    whose σ_t exceeds ``diverge_factor × σ₀`` (or is not finite) is stopped and flagged in
    ``KSResult.diverged`` (its ``pos`` is then meaningless).

    Returns a :class:`KSResult`; ``pos`` is ``y_T`` (or ``x̂(y_T)`` with ``final_denoise``).
    """
    if not (0 < sigma_L < sigma_0 and 0 < h0 <= 1 and 0 <= beta <= 1):
        raise ValueError("need 0 < sigma_L < sigma_0, 0 < h0 ≤ 1, 0 ≤ beta ≤ 1")
    mask = batch[K.MASK]
    dtype = next((p.dtype for p in getattr(denoiser, "parameters", lambda: iter(()))()), torch.float32)
    y = _start(batch, init, sigma_0, generator, dtype)
    b = y.shape[0]
    dims = noise_dims(mask).to(dtype)  # (B,)
    blind = _is_blind(denoiser)
    dev = y.device
    active = torch.ones(b, dtype=torch.bool, device=dev)
    sigma_prev = torch.full((b,), float(sigma_0), dtype=dtype, device=dev)
    steps = torch.zeros(b, dtype=torch.long, device=dev)
    diverged = torch.zeros(b, dtype=torch.bool, device=dev)
    trace = []
    t = 1
    while bool(active.any()) and t <= max_steps:
        h = h0 * t / (1 + h0 * (t - 1))
        x_hat = denoiser(batch, y, None if blind else sigma_prev.clone())
        d = centre(x_hat - y, mask)  # (B, N, 3)
        sigma_t = (d.square().sum((1, 2)) / dims).sqrt()  # (B,)
        gamma = (((1 - beta * h) ** 2 - (1 - h) ** 2) * sigma_t.square()).clamp(min=0).sqrt()
        # drawn for the whole batch every step: the random stream does not depend on which molecules stopped
        z = centred_noise(y, mask, generator)
        step = y + h * d + gamma.view(b, 1, 1) * z
        if guidance is not None:
            step = guidance(step, batch, sigma_t)
        # stopped molecules keep their iterate (where, not a 0/1 product: 0 × NaN is NaN)
        y = centre(torch.where(active.view(b, 1, 1), step, y), mask)
        trace.append(torch.where(active, sigma_t, torch.full_like(sigma_t, math.nan)))
        steps += active.long()
        sigma_prev = torch.where(active, sigma_t, sigma_prev)
        blown = active & ~(sigma_t <= diverge_factor * sigma_0)  # also catches NaN
        diverged |= blown
        active = active & (sigma_t > sigma_L) & ~blown
        t += 1
    if final_denoise:
        y = denoiser(batch, y, None if blind else sigma_prev)
    sigma_trace = torch.stack(trace) if trace else torch.zeros(0, b, dtype=dtype)
    return KSResult(pos=centre(y, mask), sigma_trace=sigma_trace, steps=steps, converged=~active & ~diverged,
                    diverged=diverged)
