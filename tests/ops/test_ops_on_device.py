"""The ops on an accelerator: the CUDA kernels against the CPU kernel and the PyTorch reference.

Runs where ``MOLCONF_TEST_DEVICE`` names a device, or on CUDA when one is present; skipped
otherwise (so on the project's CPU machines, except in the GPU check's dry run, which sets
``MOLCONF_TEST_DEVICE=cpu`` to exercise the plumbing). ``benchmarks/gpu_check.sh`` runs it on
the GPU machine with ``MOLCONF_GPU_INPUTS`` pointing at batches featurised beforehand
(``benchmarks/gpu_inputs.py``), since that machine has no RDKit; without that variable the
batches are featurised here.

Edge sets must be identical across the device kernel, the reference run on the device, the
CPU kernel, the CPU reference and the CPU replay of the CUDA kernel's arithmetic, on real QM9
and drug-like molecules (reference geometries and the shipped models' predictions), on
drug-sized random batches and on a lattice full of exact ties.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ops_testlib import numpy_rewire, random_batch, separated_batch, torch_sqrt

import molconf.ops as ops
from molconf import constants as K
from molconf.ops import _extension, reference

ENV_DEVICE = "MOLCONF_TEST_DEVICE"
ENV_INPUTS = "MOLCONF_GPU_INPUTS"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _device() -> str | None:
    if os.environ.get(ENV_DEVICE):
        return os.environ[ENV_DEVICE]
    return "cuda" if torch.cuda.is_available() else None


DEVICE = _device()
if DEVICE is None:
    pytest.skip(f"no CUDA device (set {ENV_DEVICE}=cpu to run these on the CPU)", allow_module_level=True)
CUDA = torch.device(DEVICE).type == "cuda"


@pytest.fixture(scope="module")
def inputs():
    """{"qm9": [batch, ...], "moses_xtb": [...]} on the CPU (reference geometries + CPU predictions)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        gpu_inputs = importlib.import_module("gpu_inputs")
        if os.environ.get(ENV_INPUTS):
            return {name: e["batches"] for name, e in gpu_inputs.load(os.environ[ENV_INPUTS]).items()}
        pytest.importorskip("rdkit", reason=f"no {ENV_INPUTS} file and no RDKit to featurise molecules")
        return {name: gpu_inputs.reference_batches(name, n=100) for name in gpu_inputs.SETS}
    finally:
        sys.path.remove(str(BENCHMARKS))


def _kernel(args, return_forces=True):
    return torch.ops.molconf.rewire_by_force(*args, return_forces)


def _cpu(args):
    return tuple(a.cpu() for a in args)


def _rewire_args(pos, batch, dtype, extra_k=0):
    sigma, eps = ops.lj_parameters(batch[K.ATOMIC_NUMBERS].cpu())
    k = ops.degree_compensating_k(batch[K.BOND_ADJ], batch[K.MASK]) + extra_k * batch[K.MASK]
    return tuple(t.to(DEVICE) for t in (pos.to(dtype), batch[K.MASK], batch[K.BOND_ADJ], sigma.to(dtype),
                                        eps.to(dtype), k))


def assert_same_edges(args, label=""):
    """Device kernel = device reference = CPU kernel = CPU reference (= CPU replay of the CUDA
    kernel); returns the device kernel's (attr, rep, force) on the CPU."""
    got = [x.cpu() for x in _kernel(args)]
    cpu = _cpu(args)
    impls = {
        "reference on the device": reference.rewire_by_force(*args, return_forces=True),
        "CPU kernel": _kernel(cpu),
        "CPU reference": reference.rewire_by_force(*cpu, return_forces=True),
        "CPU replay of the CUDA kernel": torch.ops.molconf._rewire_by_force_cuda_emulation(*cpu, True),
    }
    for name, want in impls.items():
        for what, g, w in (("attr", got[0], want[0].cpu()), ("rep", got[1], want[1].cpu())):
            assert torch.equal(g, w), f"{label}: {what} differs from the {name} at {torch.nonzero(g != w)[:5].tolist()}"
    return got


# --------------------------------------------------------------------------- the build


def test_the_extension_has_kernels_for_the_device():
    st = _extension.load()
    assert st.ok, st.reason
    if CUDA:
        assert st.with_cuda, f"the CUDA kernels did not build: {st.cuda_reason}"
    assert ops.backend(DEVICE) == "extension"


# --------------------------------------------------------------------------- rewiring


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dataset", ["qm9", "moses_xtb"])
@pytest.mark.parametrize("positions", [K.POS, "pos_pred_cpu"])
def test_rewire_real_molecules_identical_everywhere(inputs, dataset, dtype, positions):
    """Reference geometries and the shipped model's predictions (both K rules: the paper's and +3)."""
    kept = 0
    for i, batch in enumerate(inputs[dataset]):
        if positions not in batch:
            pytest.skip(f"these inputs carry no {positions}")
        for extra_k in (0, 3):
            args = _rewire_args(batch[positions], batch, dtype, extra_k)
            attr, rep, force = assert_same_edges(args, f"{dataset} batch {i}, K+{extra_k}")
            want_force = reference.rewire_by_force(*args, return_forces=True)[2].cpu()
            torch.testing.assert_close(force, want_force, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
            kept += int(attr.sum() + rep.sum())
    assert kept > 1000  # not vacuous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_forces_are_the_cpu_replay_bit_for_bit(inputs, dtype):
    if not CUDA:
        pytest.skip("the CPU replay reproduces the CUDA kernel, not the CPU one")
    for batch in inputs["moses_xtb"]:
        args = _rewire_args(batch[K.POS], batch, dtype)
        force = _kernel(args)[2].cpu()
        replay = torch.ops.molconf._rewire_by_force_cuda_emulation(*_cpu(args), True)[2]
        same = (force == replay) | (torch.isnan(force) & torch.isnan(replay))
        assert bool(same.all()), f"forces differ at {torch.nonzero(~same)[:5].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "n", "extra_k"), [(64, 128, 4), (16, 180, 20)])
def test_rewire_drug_sized_random_batches(dtype, b, n, extra_k):
    # extra_k=20 pushes K_i past 16, where the CPU kernel switches to nth_element
    batch = random_batch(b, n, dtype, seed=b + n, extra_k=extra_k)
    args = tuple(batch[k].to(DEVICE) for k in ("pos", "mask", "bond_adj", "sigma", "epsilon", "k"))
    attr, rep, _ = assert_same_edges(args, f"random {b}x{n}")
    assert attr.any() and rep.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rewire_ties_go_to_the_lower_index(dtype):
    """All-carbon cubic lattices (spacing 3 Å): every row has many exactly equal |F|."""
    side, spacing, b = 4, 3.0, 3
    axis = torch.arange(side, dtype=torch.float64) * spacing
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)  # (64, 3)
    n = grid.shape[0]
    perm = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in range(b)])
    pos = grid[perm].to(dtype)  # shuffled, so "lowest index" is not "first placed"
    mask = torch.arange(n) < torch.tensor([n, 50, 27]).unsqueeze(1)
    z = torch.where(mask, 6, 0)
    sigma, eps = ops.lj_parameters(z)
    bond = torch.zeros(b, n, n, dtype=torch.bool)
    k = torch.where(mask, 7, 0)
    args = tuple(t.to(DEVICE) for t in (pos, mask, bond, sigma.to(dtype), eps.to(dtype), k))
    attr, rep, _ = assert_same_edges(args, "lattice")
    # against the brute force, whose sqrt is the device's (correctly rounded on CUDA)
    want = numpy_rewire(*_cpu(args), sqrt=np.sqrt if CUDA else torch_sqrt)
    assert np.array_equal(attr.numpy(), want[0]) and np.array_equal(rep.numpy(), want[1])
    assert int((attr | rep).sum(-1).max()) == 7  # rows are full: the tie-break decided


# --------------------------------------------------------------------------- Lennard-Jones


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lj_real_molecules_match_the_reference(inputs, dtype):
    for batch in inputs["qm9"] + inputs["moses_xtb"]:
        mask, bond = batch[K.MASK], batch[K.BOND_ADJ]
        sigma, eps = ops.lj_parameters(batch[K.ATOMIC_NUMBERS])
        cpu = (batch[K.POS].to(dtype), mask, sigma.to(dtype), eps.to(dtype), reference.bond_exclusions(bond, mask))
        dev = tuple(t.to(DEVICE) for t in cpu)
        e, f = ops.lj_energy_forces(*dev)
        for want_e, want_f in (reference.lj_energy_forces(*dev), torch.ops.molconf.lj_energy_forces(*cpu)):
            scale = want_f.abs().max().clamp_min(1.0)
            tol = dict(rtol=2e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(e.cpu() / scale, want_e.cpu() / scale, **tol)
            torch.testing.assert_close(f.cpu() / scale, want_f.cpu() / scale, **tol)


def _lj_inputs(seed=1):
    batch = separated_batch(2, 6, seed=seed)
    excl = torch.eye(6, dtype=torch.bool).roll(1, 1).expand(2, 6, 6)
    return tuple(t.to(DEVICE) for t in (batch["pos"], batch["mask"], batch["sigma"], batch["epsilon"], excl))


def test_lj_gradcheck_on_the_device():
    pos, mask, sigma, eps, excl = _lj_inputs()
    pos = pos.clone().requires_grad_()
    w = torch.randn(pos.shape, generator=torch.Generator().manual_seed(0), dtype=pos.dtype).to(DEVICE)

    def both(p):  # the energy and a weighted sum of the forces: gradients through both outputs
        e, f = ops.lj_energy_forces(p, mask, sigma, eps, excl)
        return e, (f * w).sum(-1)

    assert torch.autograd.gradcheck(both, (pos,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_lj_backward_matches_reference_autograd_on_the_device():
    pos, mask, sigma, eps, excl = _lj_inputs(seed=2)
    w = torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=pos.dtype).to(DEVICE)
    grads = []
    for fn in (torch.ops.molconf.lj_energy_forces, reference.lj_energy_forces):
        p = pos.clone().requires_grad_()
        e, f = fn(p, mask, sigma, eps, excl)
        (e.sum() + (f * w).sum()).backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


def test_lj_opcheck_on_the_device():
    pos, mask, sigma, eps, excl = _lj_inputs(seed=3)
    for exclude in (None, excl):
        torch.library.opcheck(torch.ops.molconf.lj_energy_forces.default,
                              (pos.clone().requires_grad_(), mask, sigma, eps, exclude))


def test_rewire_opcheck_on_the_device():
    batch = random_batch(3, 9, torch.float64, seed=7, extra_k=2)
    args = tuple(batch[k].to(DEVICE) for k in ("pos", "mask", "bond_adj", "sigma", "epsilon", "k"))
    for flag in (False, True):
        torch.library.opcheck(torch.ops.molconf.rewire_by_force.default, (*args, flag))
