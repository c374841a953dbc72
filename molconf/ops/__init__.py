"""Custom ops used by the models: force-based rewiring and Lennard-Jones energy/forces.

Callers use the functions here; whether they run the compiled extension (``cuda_ext/``,
registered as ``torch.ops.molconf.*``) or the pure-PyTorch reference
(``molconf.ops.reference``) is decided inside, per call:

- ``MOLCONF_REFERENCE_OPS=1`` in the environment forces the reference;
- otherwise the extension is built on first use (see ``molconf.ops._extension``); if that
  fails, one ``RuntimeWarning`` names the reason and the reference is used from then on;
- tensors on a device the extension has no kernel for (CUDA in a CPU-only build) use the
  reference too.

Both backends give the same results: identical edge sets and force values for
:func:`rewire_by_force`, energies and forces within float rounding for
:func:`lj_energy_forces`. :func:`backend` tells which one runs.
"""

from __future__ import annotations

import os

import torch

from molconf.constants import ENV_FORCE_REFERENCE_OPS
from molconf.ops import _extension, reference
from molconf.ops.lj_params import SUPPORTED_ELEMENTS, lj_parameters
from molconf.ops.reference import bond_exclusions, degree_compensating_k

__all__ = [
    "SUPPORTED_ELEMENTS",
    "backend",
    "bond_exclusions",
    "degree_compensating_k",
    "lj_energy_forces",
    "lj_parameters",
    "rewire_by_force",
]

_FALSE_STRINGS = ("", "0", "false", "no", "off")


def _reference_forced() -> bool:
    return os.environ.get(ENV_FORCE_REFERENCE_OPS, "").strip().lower() not in _FALSE_STRINGS


# Under torch.compile, Dynamo calls this at trace time and bakes the answer into the graph
# (building the extension is no code to trace). The decision depends only on the device
# type, the environment and the once-per-process build outcome.
@torch.compiler.assume_constant_result
def _use_extension(device_type: str) -> bool:
    if _reference_forced():
        return False
    st = _extension.load()
    if not st.ok:
        return False
    if device_type == "cpu":
        return True
    return device_type == "cuda" and st.with_cuda


def backend(device: torch.device | str = "cpu") -> str:
    """Which implementation the ops run on ``device``: ``"extension"`` or ``"reference"``.

    Triggers the one-time build of the extension if it has not been attempted yet.

    Examples
    --------
    >>> backend() in ("extension", "reference")
    True
    """
    return "extension" if _use_extension(torch.device(device).type) else "reference"


# --------------------------------------------------------------------------- validation


def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_positions(pos) -> tuple[torch.Tensor, int, int]:
    """Validates pos (B, N, 3); half-precision input is computed in float32."""
    _check_tensor(pos, "pos")
    if pos.dim() != 3 or pos.shape[-1] != 3:
        raise ValueError(f"pos must have shape (B, N, 3), got {tuple(pos.shape)}")
    if pos.dtype in _LOW_PRECISION:
        # Mixed-precision models: LJ terms overflow float16 and lose ties in bfloat16.
        pos = pos.float()
    elif pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"pos must be a floating-point tensor (float32, float64; float16 and bfloat16 "
            f"are computed in float32), got {pos.dtype}"
        )
    return pos, pos.shape[0], pos.shape[1]


def _check_like(x, name: str, shape: tuple, pos: torch.Tensor, kind: str) -> torch.Tensor:
    """Shape, device and dtype family; returns x (cast to pos's dtype for floats)."""
    _check_tensor(x, name)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} to match pos {tuple(pos.shape)}, "
            f"got {tuple(x.shape)}"
        )
    if x.device != pos.device:
        raise ValueError(f"{name} is on {x.device} but pos is on {pos.device}")
    if kind == "bool":
        if x.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {x.dtype}")
        return x
    if kind == "int":
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
        return x if x.dtype == torch.int64 else x.to(torch.int64)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # Parameters follow the positions' precision (lj_parameters returns float64), so the
    # result dtype is pos.dtype whichever backend runs.
    return x if x.dtype == pos.dtype else x.to(pos.dtype)


# --------------------------------------------------------------------------- ops


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

    Candidates are pairs of real atoms that are neither bonded nor the same atom. The LJ
    pair force uses Lorentz–Berthelot mixing and distances clamped to ``LJ_R_MIN``; ties
    in |F| go to the lower column index; zero or non-finite forces are never kept. The
    computation is detached: no gradient flows through the rewiring.

    Parameters
    ----------
    pos : torch.Tensor
        (B, N, 3) float32 or float64 positions (Å); float16/bfloat16 are computed in
        float32.
    mask : torch.Tensor
        (B, N) bool, True for real atoms.
    bond_adj : torch.Tensor
        (B, N, N) bool bond adjacency.
    sigma, epsilon : torch.Tensor
        (B, N) floating per-atom LJ parameters (cast to ``pos.dtype``).
    k : torch.Tensor
        (B, N) integer, number of edges atom i may keep (≤ 0 keeps none).
    return_forces : bool
        Also return the pair forces.

    Returns
    -------
    attr, rep : torch.Tensor
        (B, N, N) bool: kept pairs with attractive (F < 0) / repulsive (F > 0) force.
    force : torch.Tensor
        (B, N, N) pair forces in the compute dtype (``pos.dtype``, float32 for half
        inputs), 0 for non-candidates (only with ``return_forces``).

    Raises
    ------
    TypeError, ValueError
        Wrong types, dtypes, shapes or devices.
    """
    pos, b, n = _check_positions(pos)
    mask = _check_like(mask, "mask", (b, n), pos, "bool")
    bond_adj = _check_like(bond_adj, "bond_adj", (b, n, n), pos, "bool")
    sigma = _check_like(sigma, "sigma", (b, n), pos, "float")
    epsilon = _check_like(epsilon, "epsilon", (b, n), pos, "float")
    k = _check_like(k, "k", (b, n), pos, "int")
    if not isinstance(return_forces, bool):
        raise TypeError(f"return_forces must be a bool, got {type(return_forces).__name__}")
    pos, sigma, epsilon = pos.detach(), sigma.detach(), epsilon.detach()
    if _use_extension(pos.device.type):
        attr, rep, force = torch.ops.molconf.rewire_by_force(
            pos, mask, bond_adj, sigma, epsilon, k, return_forces
        )
        return (attr, rep, force) if return_forces else (attr, rep)
    return reference.rewire_by_force(pos, mask, bond_adj, sigma, epsilon, k, return_forces)


def lj_energy_forces(
    pos: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor,
    epsilon: torch.Tensor,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LJ energy per molecule and force per atom over non-excluded pairs of real atoms.

    Differentiable with respect to ``pos`` for both outputs (the extension's backward
    evaluates the pair Hessian blocks for the forces' gradient; double backward falls back
    to the reference). Gradients with respect to ``sigma``/``epsilon`` are supported by
    routing such calls to the reference.

    Parameters
    ----------
    pos : torch.Tensor
        (B, N, 3) float32 or float64 positions (Å); float16/bfloat16 are computed in
        float32 and the results cast back.
    mask : torch.Tensor
        (B, N) bool, True for real atoms.
    sigma, epsilon : torch.Tensor
        (B, N) floating per-atom LJ parameters (cast to ``pos.dtype``).
    exclude : torch.Tensor, optional
        (B, N, N) bool, pairs left out (e.g. from :func:`bond_exclusions`).

    Returns
    -------
    energy : torch.Tensor
        (B,) total LJ energy (kcal/mol with UFF parameters), each pair counted once.
    forces : torch.Tensor
        (B, N, 3) forces −∂E/∂pos (0 for padding; pairs closer than ``LJ_R_MIN`` add none).

    Raises
    ------
    TypeError, ValueError
        Wrong types, dtypes, shapes or devices.
    """
    out_dtype = pos.dtype if isinstance(pos, torch.Tensor) else None
    pos, b, n = _check_positions(pos)
    mask = _check_like(mask, "mask", (b, n), pos, "bool")
    sigma = _check_like(sigma, "sigma", (b, n), pos, "float")
    epsilon = _check_like(epsilon, "epsilon", (b, n), pos, "float")
    if exclude is not None:
        exclude = _check_like(exclude, "exclude", (b, n, n), pos, "bool")
    params_need_grad = sigma.requires_grad or epsilon.requires_grad
    if not params_need_grad and _use_extension(pos.device.type):
        energy, forces = torch.ops.molconf.lj_energy_forces(pos, mask, sigma, epsilon, exclude)
    else:
        energy, forces = reference.lj_energy_forces(pos, mask, sigma, epsilon, exclude)
    if out_dtype != pos.dtype:  # half-precision input: results in the input's dtype
        energy, forces = energy.to(out_dtype), forces.to(out_dtype)
    return energy, forces
