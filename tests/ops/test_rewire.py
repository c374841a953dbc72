"""rewire_by_force: compiled extension vs PyTorch reference vs a NumPy brute force.

Edge sets must be identical and, on the CPU, the pair forces bit-identical (the kernel
reproduces the reference's arithmetic operation by operation, torch.sqrt included).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ops_testlib import (
    DTYPES,
    extension_available,
    numpy_rewire,
    random_batch,
    real_molecule_batch,
    rewire_args,
)

import molconf.ops as ops
from molconf.ops import reference

needs_ext = pytest.mark.needs_extension  # skipped without the extension; failed under MOLCONF_REQUIRE_EXTENSION=1


def ext_rewire(*args, return_forces=True):
    return torch.ops.molconf.rewire_by_force(*args, return_forces)


def assert_same_rewiring(got, want, forces_bitwise=True):
    attr, rep = (torch.as_tensor(np.asarray(x)) for x in got[:2])
    w_attr, w_rep = (torch.as_tensor(np.asarray(x)) for x in want[:2])
    assert torch.equal(attr, w_attr), f"attr differs at {torch.nonzero(attr != w_attr)[:5]}"
    assert torch.equal(rep, w_rep), f"rep differs at {torch.nonzero(rep != w_rep)[:5]}"
    if len(got) > 2 and len(want) > 2:
        f, w_f = torch.as_tensor(np.asarray(got[2])), torch.as_tensor(np.asarray(want[2]))
        if forces_bitwise:
            same = (f == w_f) | (torch.isnan(f) & torch.isnan(w_f))
            assert bool(same.all()), f"forces differ at {torch.nonzero(~same)[:5]}"
        else:
            torch.testing.assert_close(f, w_f)


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_numpy(dtype):
    batch = random_batch(6, 23, dtype, seed=1, extra_k=3)
    got = reference.rewire_by_force(*rewire_args(batch), return_forces=True)
    assert_same_rewiring(got, numpy_rewire(*rewire_args(batch)))


def test_reference_r2_is_summed_in_xyz_order():
    # The kernels compute (dx² + dy²) + dz²; the reference relies on torch's 3-term sum
    # doing the same. Guard it: a different torch reduction order would break bit-equality.
    g = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        d = torch.randn(20000, 3, generator=g, dtype=dtype) * 5
        explicit = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
        assert torch.equal(d.square().sum(-1), explicit)


# --------------------------------------------------------------------------- extension


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "n", "extra_k"), [(9, 17, 2), (12, 44, 4), (3, 130, 20)])
def test_extension_matches_reference_and_numpy(dtype, b, n, extra_k):
    # extra_k=20 pushes K_i past 16, the CPU kernel's switch to nth_element.
    batch = random_batch(b, n, dtype, seed=b * n, extra_k=extra_k)
    args = rewire_args(batch)
    got = ext_rewire(*args)
    assert_same_rewiring(got, reference.rewire_by_force(*args, return_forces=True))
    if n <= 44:  # the brute force is slow; the reference stands in for the larger case
        assert_same_rewiring(got, numpy_rewire(*args))
    assert got[0].any() and got[1].any()  # the comparison is not vacuous


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_public_function_uses_extension_and_agrees(dtype):
    batch = random_batch(5, 31, dtype, seed=3, extra_k=2)
    args = rewire_args(batch)
    attr, rep = ops.rewire_by_force(*args)
    assert_same_rewiring((attr, rep), reference.rewire_by_force(*args))
    attr, rep, force = ops.rewire_by_force(*args, return_forces=True)
    assert force.dtype == dtype and force.shape == (5, 31, 31)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernel_logic_emulated_on_cpu(dtype):
    # The CUDA kernel's per-row code (rank-count selection, correctly rounded sqrt) replayed
    # on the CPU: identical to a brute force that uses np.sqrt, same edges as the reference.
    batch = random_batch(7, 40, dtype, seed=11, extra_k=6)
    args = rewire_args(batch)
    emu = torch.ops.molconf._rewire_by_force_cuda_emulation(*args, True)
    assert_same_rewiring(emu, numpy_rewire(*args, sqrt=np.sqrt))
    assert_same_rewiring(emu[:2], reference.rewire_by_force(*args))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_molecules(dtype):
    batch = real_molecule_batch(dtype)
    args = rewire_args(batch)
    got = ext_rewire(*args)
    assert_same_rewiring(got, reference.rewire_by_force(*args, return_forces=True))
    assert_same_rewiring(got, numpy_rewire(*args))
    emu = torch.ops.molconf._rewire_by_force_cuda_emulation(*args, True)
    assert_same_rewiring(emu[:2], got[:2])
    # H2: its only pair is bonded, so nothing can be rewired.
    assert not got[0][0].any() and not got[1][0].any()
    assert got[0].any() and got[1].any()


# --------------------------------------------------------------------------- edge cases


def _tie_batch(dtype, perm):
    """Centre atom with six equal neighbours at ±d on each axis (same element).

    Every r² is bitwise equal (one non-zero coordinate), so |F| ties exactly; ``perm``
    shuffles the atom indices so "lowest index wins" is not "first placed wins".
    """
    d = 2.9
    base = torch.tensor(
        [[0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0], [0, 0, d], [0, 0, -d]],
        dtype=torch.float64,
    )
    pos = base[perm].unsqueeze(0).to(dtype)  # (1, 7, 3)
    z = torch.full((1, 7), 6)
    sigma, eps = ops.lj_parameters(z)
    mask = torch.ones(1, 7, dtype=torch.bool)
    bond = torch.zeros(1, 7, 7, dtype=torch.bool)
    return pos, mask, bond, sigma.to(dtype), eps.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_go_to_the_lower_index(dtype, seed):
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(seed))
    pos, mask, bond, sigma, eps = _tie_batch(dtype, perm)
    centre = int(torch.nonzero(perm == 0)[0, 0])
    k = torch.full((1, 7), 3)
    impls = [("reference", reference.rewire_by_force)]
    if extension_available():
        impls += [
            ("extension", lambda *a: ext_rewire(*a, return_forces=False)),
            ("emulation", lambda *a: torch.ops.molconf._rewire_by_force_cuda_emulation(*a)),
        ]
    neighbours = [j for j in range(7) if j != centre]
    for name, fn in impls:
        attr, rep = fn(pos, mask, bond, sigma, eps, k)[:2]
        kept = torch.nonzero(attr[0, centre] | rep[0, centre]).flatten().tolist()
        assert kept == neighbours[:3], name  # six equal forces: the three lowest indices
    assert_same_rewiring(
        reference.rewire_by_force(pos, mask, bond, sigma, eps, k, return_forces=True),
        numpy_rewire(pos, mask, bond, sigma, eps, k),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_zero_negative_and_larger_than_candidates(dtype):
    batch = random_batch(4, 15, dtype, seed=5)
    args = list(rewire_args(batch))
    mask, bond = batch["mask"], batch["bond_adj"]
    n_cand = (mask.unsqueeze(1) & mask.unsqueeze(2) & ~bond & ~torch.eye(15, dtype=torch.bool))
    for k in (torch.zeros_like(batch["k"]), torch.full_like(batch["k"], -3)):
        args[5] = k
        attr, rep = ops.rewire_by_force(*args)
        assert not attr.any() and not rep.any()
    args[5] = torch.full_like(batch["k"], 1000)
    attr, rep, force = ops.rewire_by_force(*args, return_forces=True)
    assert torch.equal(attr | rep, n_cand & (force != 0))  # every valid candidate kept
    assert_same_rewiring((attr, rep, force), numpy_rewire(*args))


@pytest.mark.parametrize("dtype", DTYPES)
def test_coincident_zero_and_nonfinite_forces(dtype):
    batch = random_batch(3, 12, dtype, seed=9, min_atoms=6, extra_k=12)
    pos, mask, bond, sigma, eps, k = (x.clone() for x in rewire_args(batch))
    pos[0, 3] = pos[0, 2]  # coincident atoms: r = 0 is clamped, finite huge repulsion
    bond[0, 2, 3] = bond[0, 3, 2] = False
    k[0, 2] = k[0, 2].clamp_min(1)
    eps[1, 4] = 0.0  # ε_ij = 0: zero force, never kept
    sigma[2, 1] = 1e30 if dtype == torch.float32 else 1e300  # overflows: inf/NaN, never kept
    args = (pos, mask, bond, sigma, eps, k)
    want = numpy_rewire(*args)
    assert_same_rewiring(reference.rewire_by_force(*args, return_forces=True), want)
    if extension_available():
        got = ext_rewire(*args)
        assert_same_rewiring(got, want)
        assert got[2][0, 2, 3] > 1e20 and got[1][0, 2, 3]  # coincident pair kept, repulsive
        assert not (got[0][1, 4] | got[1][1, 4]).any()
        assert not torch.isfinite(got[2][2, 1, mask[2]]).all()
        assert not (got[0][2, 1] | got[1][2, 1]).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype):
    batch = random_batch(5, 19, dtype, seed=4, extra_k=2)
    args = rewire_args(batch)
    want = reference.rewire_by_force(*args, return_forces=True)
    pos = batch["pos"].transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, 3), strided
    mask = torch.stack([batch["mask"], batch["mask"]], -1)[..., 0]
    bond = batch["bond_adj"].transpose(1, 2)  # symmetric: same values, transposed strides
    sigma = torch.stack([batch["sigma"]] * 2, 0)[1]
    eps = batch["epsilon"].repeat_interleave(2, dim=1)[:, ::2]
    k = batch["k"].repeat_interleave(2, dim=1)[:, ::2]
    for t in (pos, mask, bond, eps, k):
        assert not t.is_contiguous()
    got = ops.rewire_by_force(pos, mask, bond, sigma, eps, k, return_forces=True)
    assert_same_rewiring(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "n"), [(0, 5), (3, 0), (0, 0), (4, 1)])
def test_empty_and_single_atom(dtype, b, n):
    batch = random_batch(b, n, dtype, seed=0)
    attr, rep, force = ops.rewire_by_force(*rewire_args(batch), return_forces=True)
    assert attr.shape == rep.shape == force.shape == (b, n, n)
    assert attr.dtype == torch.bool and force.dtype == dtype
    assert not attr.any() and not rep.any() and not force.any()


def test_one_atom_molecules_among_larger_ones():
    batch = random_batch(6, 10, torch.float64, seed=2)
    batch["mask"][1:4] = False
    batch["mask"][1:4, 0] = True  # three one-atom molecules
    args = rewire_args(batch)
    got = ops.rewire_by_force(*args, return_forces=True)
    assert not got[0][1:4].any() and not got[1][1:4].any()
    assert_same_rewiring(got, numpy_rewire(*args))


def test_parameters_follow_pos_dtype():
    batch = random_batch(3, 9, torch.float32, seed=6)
    args = list(rewire_args(batch))
    args[3], args[4] = args[3].double(), args[4].double()  # lj_parameters returns float64
    args[5] = args[5].int()  # any integer dtype for k
    attr, rep, force = ops.rewire_by_force(*args, return_forces=True)
    assert force.dtype == torch.float32
    assert_same_rewiring((attr, rep, force), numpy_rewire(*rewire_args(batch)))


def test_half_precision_positions_are_computed_in_float32():
    batch = random_batch(3, 12, torch.float32, seed=12, extra_k=2)
    args = list(rewire_args(batch))
    args[0] = args[0].bfloat16()
    got = ops.rewire_by_force(*args, return_forces=True)
    args[0] = args[0].float()
    assert got[2].dtype == torch.float32
    assert_same_rewiring(got, reference.rewire_by_force(*args, return_forces=True))


def test_rewiring_is_detached():
    batch = random_batch(2, 8, torch.float64, seed=1)
    args = list(rewire_args(batch))
    args[0] = args[0].nan_to_num().requires_grad_()
    _, _, force = ops.rewire_by_force(*args, return_forces=True)
    assert not force.requires_grad


# --------------------------------------------------------------------------- bad input


def _bad_inputs():
    good = rewire_args(random_batch(2, 6, torch.float64, seed=0))
    pos, mask, bond, sigma, eps, k = good

    def swap(i, value):
        out = list(good)
        out[i] = value
        return tuple(out)

    return [
        (swap(0, pos[0]), ValueError, "pos must have shape"),
        (swap(0, pos[..., :2]), ValueError, "pos must have shape"),
        (swap(0, pos.long()), TypeError, "float32, float64"),
        (swap(0, pos.to(torch.complex64)), TypeError, "float32, float64"),
        (swap(0, pos.numpy()), TypeError, "must be a torch.Tensor"),
        (swap(1, mask.float()), TypeError, "mask must be a bool"),
        (swap(1, mask[:1]), ValueError, "mask must have shape"),
        (swap(2, bond[:, :5]), ValueError, "bond_adj must have shape"),
        (swap(2, bond.long()), TypeError, "bond_adj must be a bool"),
        (swap(3, sigma[:, :5]), ValueError, "sigma must have shape"),
        (swap(3, sigma.long()), TypeError, "sigma must be a floating"),
        (swap(4, eps.unsqueeze(0)), ValueError, "epsilon must have shape"),
        (swap(5, k.float()), TypeError, "k must be an integer"),
        (swap(5, k.bool()), TypeError, "k must be an integer"),
        (swap(5, k[:1]), ValueError, "k must have shape"),
        (swap(1, mask.to("meta")), ValueError, "mask is on meta"),
    ]


@pytest.mark.parametrize(("args", "exc", "match"), _bad_inputs())
def test_bad_inputs_raise_clear_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        ops.rewire_by_force(*args)


def test_bad_return_forces_flag():
    with pytest.raises(TypeError, match="return_forces"):
        ops.rewire_by_force(*rewire_args(random_batch(1, 3, seed=0)), return_forces=1)


@needs_ext
def test_raw_op_checks_inputs_instead_of_crashing():
    pos, mask, bond, sigma, eps, k = rewire_args(random_batch(2, 6, torch.float64, seed=0))
    cases = [
        ((pos, mask, bond[:, :5], sigma, eps, k), "bond_adj must have shape"),
        ((pos, mask, bond, sigma.float(), eps, k), "sigma must have dtype"),
        ((pos, mask, bond, sigma, eps, k.int()), "k must have dtype"),
        ((pos.float(), mask, bond, sigma, eps, k), "sigma must have dtype"),
        ((pos[..., :2], mask, bond, sigma, eps, k), r"pos must have shape"),
    ]
    for args, match in cases:
        with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
            torch.ops.molconf.rewire_by_force(*args, False)


# --------------------------------------------------------------------------- torch.library


@needs_ext
def test_opcheck():
    batch = random_batch(3, 9, torch.float64, seed=7, extra_k=2)
    args = rewire_args(batch)
    for flag in (False, True):
        torch.library.opcheck(torch.ops.molconf.rewire_by_force.default, (*args, flag))


@needs_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    batch = random_batch(3, 11, torch.float32, seed=8, extra_k=2)
    args = rewire_args(batch)

    def edges(pos, mask, bond, sigma, eps, k):
        attr, rep = ops.rewire_by_force(pos, mask, bond, sigma, eps, k)
        return attr.sum(-1) - rep.sum(-1)

    compiled = torch.compile(edges, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(*args), edges(*args))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_qm9_dft_geometries(dtype, qm9_small):
    # Real QM9 molecules with their DFT coordinates, dense and padded as the models see them.
    from molconf import constants as K
    from molconf.data import ConformerDataset, collate_dense
    from molconf.ops import degree_compensating_k, lj_parameters

    ds = ConformerDataset(qm9_small, np.arange(0, 300, 7), pe_dim=8)
    b = collate_dense([ds[i] for i in range(len(ds))])
    sigma, eps = lj_parameters(b[K.ATOMIC_NUMBERS])
    args = (b[K.POS].to(dtype), b[K.MASK], b[K.BOND_ADJ], sigma.to(dtype), eps.to(dtype),
            degree_compensating_k(b[K.BOND_ADJ], b[K.MASK]))
    want = reference.rewire_by_force(*args, return_forces=True)
    assert_same_rewiring(ext_rewire(*args), want)
    attr, rep, force = numpy_rewire(*args)
    assert np.array_equal(want[0].numpy(), attr) and np.array_equal(want[1].numpy(), rep)
    assert int(want[0].sum() + want[1].sum()) > 100  # the comparison is not vacuous
