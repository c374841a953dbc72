"""Shared helpers of the molconf.ops tests: batch generators and NumPy brute forces.

The brute forces loop over molecules and rows and spell the arithmetic out in NumPy, in the
order DESIGN §4 / molconf.ops.reference define it, so they are independent of both the
PyTorch reference and the compiled kernels. The square root is a parameter: torch.sqrt on
the CPU (MKL VML, not always correctly rounded) reproduces the reference and the CPU kernel
bit for bit; np.sqrt (correctly rounded) reproduces the CUDA kernel's arithmetic.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import molconf.ops as ops
from molconf.constants import ENV_FORCE_REFERENCE_OPS, LJ_R_MIN
from molconf.ops import _FALSE_STRINGS, _extension, degree_compensating_k, lj_parameters

# CI sets this: a compiled extension that does not build then fails the tests that need it
# (with the build error) instead of skipping them, so a broken build cannot pass unnoticed.
ENV_REQUIRE_EXTENSION = "MOLCONF_REQUIRE_EXTENSION"


def extension_required() -> bool:
    return os.environ.get(ENV_REQUIRE_EXTENSION, "").strip().lower() not in _FALSE_STRINGS


def extension_available() -> bool:
    """Whether the ops run on the compiled extension (on the CPU). If not, and
    ``MOLCONF_REQUIRE_EXTENSION=1``, the calling test fails here with the build error.

    The one place tests ask: the ``needs_extension`` mark (tests/ops/conftest.py) skips or
    fails through it, and tests that also compare the extension call it directly.
    """
    if ops.backend() == "extension":
        return True
    if extension_required():
        pytest.fail(f"{ENV_REQUIRE_EXTENSION}=1 but the compiled extension is unavailable: "
                    f"{extension_unavailable_reason()}", pytrace=False)
    return False


def extension_unavailable_reason() -> str:
    st = _extension.state()
    if st is not None and not st.ok:
        return st.reason  # the build error (compiler output tail) or missing sources
    return f"{ENV_FORCE_REFERENCE_OPS} forces the reference ops"

ELEMENTS = (1, 6, 7, 8, 9, 16, 17)
DTYPES = (torch.float32, torch.float64)


def torch_sqrt(x: np.ndarray) -> np.ndarray:
    """Square root exactly as torch.sqrt computes it on this machine's CPU."""
    return torch.from_numpy(np.ascontiguousarray(x)).sqrt().numpy()


def random_batch(
    b: int,
    n: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    min_atoms: int = 1,
    pad_value: float = float("nan"),
    extra_k: int = 0,
) -> dict[str, torch.Tensor]:
    """Molecule-like random batch with padding.

    Atoms are uniform in a cube holding ~10 Å^3 per atom (organic-molecule density);
    atoms closer than 1.55 Å are "bonded"; K_i is the degree-compensating K plus a random
    0..extra_k. Padding positions hold ``pad_value`` (NaN by default: it must not matter).
    """
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(min_atoms, n + 1, (b,), generator=g) if n > 0 else torch.zeros(b)
    if b > 0:
        counts[0] = n  # at least one molecule fills the batch
    mask = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)  # (B, N)
    side = (counts.clamp_min(1).double() * 10.0) ** (1.0 / 3.0)  # (B,)
    pos = torch.rand(b, n, 3, generator=g, dtype=torch.float64) * side.view(-1, 1, 1)
    pos = pos.to(dtype)
    z = torch.tensor(ELEMENTS)[torch.randint(0, len(ELEMENTS), (b, n), generator=g)]
    z = torch.where(mask, z, torch.zeros_like(z))
    sigma, eps = lj_parameters(z)
    pair = mask.unsqueeze(1) & mask.unsqueeze(2)
    d = torch.cdist(pos.double(), pos.double()) if n > 0 else torch.zeros(b, n, n)
    bond = (d < 1.55) & pair & ~torch.eye(n, dtype=torch.bool)
    k = degree_compensating_k(bond, mask)
    if extra_k:
        k = k + torch.randint(0, extra_k + 1, (b, n), generator=g) * mask
    pos = torch.where(mask.unsqueeze(-1), pos, torch.full_like(pos, pad_value))
    return {
        "pos": pos,
        "mask": mask,
        "bond_adj": bond,
        "sigma": sigma.to(dtype),
        "epsilon": eps.to(dtype),
        "k": k,
        "z": z,
    }


def rewire_args(batch: dict) -> tuple:
    return tuple(batch[key] for key in ("pos", "mask", "bond_adj", "sigma", "epsilon", "k"))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def numpy_rewire(pos, mask, bond_adj, sigma, epsilon, k, sqrt=torch_sqrt):
    """Brute-force rewiring: per molecule, per row, sort candidates by (-|F|, j).

    Returns NumPy ``attr``, ``rep`` (bool) and ``force`` (pos's dtype), shapes (B, N, N).
    """
    pos, mask, bond, sig, eps, k = map(_np, (pos, mask, bond_adj, sigma, epsilon, k))
    t = pos.dtype.type
    b_count, n = mask.shape
    attr = np.zeros((b_count, n, n), dtype=bool)
    rep = np.zeros((b_count, n, n), dtype=bool)
    force = np.zeros((b_count, n, n), dtype=pos.dtype)
    cols = np.arange(n)
    with np.errstate(all="ignore"):
        for b in range(b_count):
            for i in range(n):
                if not mask[b, i]:
                    continue
                d = pos[b, i] - pos[b]  # (N, 3)
                r2 = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
                r = np.where(r2 > 0, sqrt(np.where(r2 > 0, r2, t(1))), t(0))
                rc = np.maximum(r, t(LJ_R_MIN))
                sigma_ij = t(0.5) * (sig[b, i] + sig[b])
                eps_ij = sqrt(eps[b, i] * eps[b])
                s = sigma_ij / rc
                s2 = s * s
                s6 = s2 * s2 * s2
                f = (t(24) * eps_ij / rc) * (t(2) * s6 * s6 - s6)
                cand = mask[b] & ~bond[b, i] & (cols != i)
                f = np.where(cand, f, t(0)).astype(pos.dtype)
                force[b, i] = f
                valid = cand & np.isfinite(f) & (f != 0)
                js = cols[valid]
                order = js[np.lexsort((js, -np.abs(f[js])))]  # by -|F|, then by column
                keep = order[: max(int(k[b, i]), 0)]
                attr[b, i, keep] = f[keep] < 0
                rep[b, i, keep] = f[keep] > 0
    return attr, rep, force


def numpy_lj(pos, mask, sigma, epsilon, exclude=None):
    """Brute-force LJ energy (B,) and forces (B, N, 3) in float64, pair by pair."""
    pos, mask, sig, eps = (_np(x).astype(np.float64) if x.is_floating_point() else _np(x)
                           for x in (pos, mask, sigma, epsilon))
    excl = None if exclude is None else _np(exclude)
    b_count, n = mask.shape
    energy = np.zeros(b_count)
    forces = np.zeros((b_count, n, 3))
    for b in range(b_count):
        for i in range(n):
            for j in range(n):
                if i == j or not (mask[b, i] and mask[b, j]):
                    continue
                if excl is not None and excl[b, i, j]:
                    continue
                d = pos[b, i] - pos[b, j]
                r = float(np.sqrt(d @ d))
                rc = max(r, LJ_R_MIN)
                s6 = ((0.5 * (sig[b, i] + sig[b, j])) / rc) ** 6
                e_ij = np.sqrt(eps[b, i] * eps[b, j])
                energy[b] += 0.5 * 4.0 * e_ij * (s6 * s6 - s6)
                if r > LJ_R_MIN:
                    forces[b, i] += 24.0 * e_ij / r * (2.0 * s6 * s6 - s6) * d / r
    return energy, forces


def separated_batch(b: int, n: int, seed: int = 0, spacing: float = 3.0) -> dict:
    """float64 batch with atoms on a jittered grid (no pair closer than ~2.4 Å).

    For gradcheck: LJ terms are stiff at short range, so finite differences need atoms
    that are well apart.
    """
    g = torch.Generator().manual_seed(seed)
    side = int(np.ceil(n ** (1.0 / 3.0)))
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(side, dtype=torch.float64),) * 3, indexing="ij"), -1
    ).reshape(-1, 3)[:n]
    pos = torch.stack(
        [grid[torch.randperm(n, generator=g)] for _ in range(b)]
    ) * spacing + 0.2 * (torch.rand(b, n, 3, generator=g, dtype=torch.float64) - 0.5)
    counts = torch.randint(max(1, n - 2), n + 1, (b,), generator=g)
    counts[0] = n
    mask = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)
    z = torch.tensor(ELEMENTS)[torch.randint(0, len(ELEMENTS), (b, n), generator=g)]
    z = torch.where(mask, z, torch.zeros_like(z))
    sigma, eps = lj_parameters(z)
    return {"pos": pos, "mask": mask, "sigma": sigma, "epsilon": eps, "z": z}


REAL_SMILES = (
    "[H][H]",  # two bonded atoms: no candidates at all
    "O",
    "CCO",
    "C1CCCCC1",
    "c1ccccc1",
    "CC(=O)Nc1ccc(O)cc1",
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "FC(F)(F)c1ccc(Cl)cc1",
    "CS(=O)(=O)NCCBr",
    "CC(C)(C)OC(=O)N[C@@H](Cc1ccccc1)C(=O)O",
)


def real_molecule_batch(dtype=torch.float64, seed: int = 0xF00D) -> dict:
    """A padded batch of RDKit-embedded molecules (explicit H, fixed seed)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols = []
    for smi in REAL_SMILES:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
            raise RuntimeError(f"RDKit could not embed {smi}")
        mols.append(mol)
    n = max(m.GetNumAtoms() for m in mols)
    b = len(mols)
    pos = torch.zeros(b, n, 3, dtype=torch.float64)
    z = torch.zeros(b, n, dtype=torch.long)
    bond = torch.zeros(b, n, n, dtype=torch.bool)
    for bi, mol in enumerate(mols):
        m = mol.GetNumAtoms()
        pos[bi, :m] = torch.from_numpy(mol.GetConformer().GetPositions())
        z[bi, :m] = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
        for bd in mol.GetBonds():
            i, j = bd.GetBeginAtomIdx(), bd.GetEndAtomIdx()
            bond[bi, i, j] = bond[bi, j, i] = True
    mask = z > 0
    sigma, eps = lj_parameters(z)
    return {
        "pos": pos.to(dtype),
        "mask": mask,
        "bond_adj": bond,
        "sigma": sigma.to(dtype),
        "epsilon": eps.to(dtype),
        "k": degree_compensating_k(bond, mask),
        "z": z,
    }
