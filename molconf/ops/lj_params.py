"""Per-element Lennard-Jones parameters from the Universal Force Field (UFF).

UFF tabulates, per element, the van der Waals distance ``x_i`` (Å) and well depth ``D_i``
(kcal/mol). ReBind (DESIGN §4) turns them into LJ parameters as ``σ_i = x_i / 2^(1/6)`` (so
the LJ minimum sits at ``x_i``) and ``ε_i = D_i``. The ReBind reference code uses ``x_i``
itself as σ for hydrogen only; ``h_sigma_convention="reference"`` keeps that quirk.
"""

from __future__ import annotations

import functools

import torch

# Z -> (x_i [Å], D_i [kcal/mol]); UFF (Rappé et al. 1992), matches RDKit's UFF tables.
UFF_VDW: dict[int, tuple[float, float]] = {
    1: (2.886, 0.044),  # H
    5: (4.083, 0.180),  # B
    6: (3.851, 0.105),  # C
    7: (3.660, 0.069),  # N
    8: (3.500, 0.060),  # O
    9: (3.364, 0.050),  # F
    14: (4.295, 0.402),  # Si
    15: (4.147, 0.305),  # P
    16: (4.035, 0.274),  # S
    17: (3.947, 0.227),  # Cl
    35: (4.189, 0.251),  # Br
    53: (4.500, 0.339),  # I
}

SUPPORTED_ELEMENTS = tuple(sorted(UFF_VDW))
_MAX_Z = 119
H_SIGMA_CONVENTIONS = ("uff", "reference")


def _lookup_tables(h_sigma_convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    if h_sigma_convention not in H_SIGMA_CONVENTIONS:
        raise ValueError(
            f"h_sigma_convention must be one of {H_SIGMA_CONVENTIONS}, got {h_sigma_convention!r}"
        )
    sigma = torch.full((_MAX_Z,), float("nan"), dtype=torch.float64)
    eps = torch.full((_MAX_Z,), float("nan"), dtype=torch.float64)
    for z, (x, d) in UFF_VDW.items():
        sigma[z] = x / 2.0 ** (1.0 / 6.0)
        eps[z] = d
    if h_sigma_convention == "reference":
        sigma[1] = UFF_VDW[1][0]
    sigma[0] = 0.0  # padding: parameters are irrelevant (masked), keep them finite
    eps[0] = 0.0
    return sigma, eps


@functools.lru_cache(maxsize=None)
def _tables_on(h_sigma_convention: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The σ and ε tables on ``device``, made once per (convention, device): shared, read-only."""
    sigma, eps = _lookup_tables(h_sigma_convention)
    return sigma.to(device), eps.to(device)


def lj_parameters(
    atomic_numbers: torch.Tensor, h_sigma_convention: str = "uff", check: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-atom LJ ``σ`` and ``ε`` for a tensor of atomic numbers (0 = padding).

    Parameters
    ----------
    atomic_numbers : torch.Tensor
        Integer tensor of any shape; 0 marks padding.
    h_sigma_convention : str
        ``"uff"`` (σ = x/2^(1/6) for every element) or ``"reference"`` (σ_H = x_H).
    check : bool, optional
        Raise ``ValueError`` for atomic numbers without parameters. Reading the answer needs the
        values on the host, so by default it runs only for CPU tensors: on an accelerator the
        lookup stays on the device with no synchronisation (tables are built once per device),
        and an unsupported element gives NaN parameters (the data pipeline and ``predict``
        refuse such molecules before they reach a model).

    Returns
    -------
    sigma, epsilon : torch.Tensor
        Float64 tensors with the shape of ``atomic_numbers``, on its device.

    Examples
    --------
    >>> s, e = lj_parameters(torch.tensor([6, 1, 0]))
    >>> [round(v, 3) for v in s.tolist()], e.tolist()
    ([3.431, 2.571, 0.0], [0.105, 0.044, 0.0])
    """
    sigma_table, eps_table = _tables_on(h_sigma_convention, str(atomic_numbers.device))
    z = atomic_numbers.long()
    if check if check is not None else z.device.type == "cpu":
        if z.numel() and (z.min() < 0 or z.max() >= _MAX_Z):
            raise ValueError(f"atomic numbers must lie in [0, {_MAX_Z - 1}]")
        bad = torch.isnan(sigma_table[z])
        if bad.any():
            missing = sorted(set(z[bad].tolist()))
            raise ValueError(
                f"no UFF Lennard-Jones parameters for atomic number(s) {missing}; "
                f"supported: {list(SUPPORTED_ELEMENTS)}"
            )
    else:
        # out of range: the NaN row of an element without parameters (Z = 118)
        z = torch.where((z < 0) | (z >= _MAX_Z), torch.full_like(z, _MAX_Z - 1), z)
    return sigma_table[z], eps_table[z]
