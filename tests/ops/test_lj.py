"""lj_energy_forces: compiled extension vs PyTorch reference vs a NumPy brute force, and
the hand-written backward (energy gradient and force Hessian-vector products) by gradcheck.
"""

from __future__ import annotations

import pytest
import torch
from ops_testlib import DTYPES, numpy_lj, random_batch, real_molecule_batch, separated_batch

import molconf.ops as ops
from molconf.ops import reference

needs_ext = pytest.mark.needs_extension  # skipped without the extension; failed under MOLCONF_REQUIRE_EXTENSION=1

TOL = {torch.float32: {"rtol": 2e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}


def lj_args(batch, exclude=None):
    return batch["pos"], batch["mask"], batch["sigma"], batch["epsilon"], exclude


def assert_close_scaled(got, want, dtype):
    # LJ terms span many orders of magnitude: compare relative to the largest entry.
    scale = want.abs().max().clamp_min(1.0)
    torch.testing.assert_close(got / scale, want / scale, **TOL[dtype])


def ext_lj(*args):
    return torch.ops.molconf.lj_energy_forces(*args)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_numpy(dtype):
    batch = random_batch(4, 14, dtype, seed=21, pad_value=0.0)
    excl = reference.bond_exclusions(batch["bond_adj"], batch["mask"])
    for ex in (None, excl):
        e, f = reference.lj_energy_forces(*lj_args(batch, ex))
        ne, nf = numpy_lj(*lj_args(batch, ex))
        assert_close_scaled(e.double(), torch.from_numpy(ne), dtype)
        assert_close_scaled(f.double(), torch.from_numpy(nf), dtype)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "n"), [(6, 13), (8, 44), (2, 150)])
def test_extension_matches_reference(dtype, b, n):
    batch = random_batch(b, n, dtype, seed=b + n)
    excl = reference.bond_exclusions(batch["bond_adj"], batch["mask"])
    for ex in (None, excl):
        e, f = ext_lj(*lj_args(batch, ex))
        re_, rf = reference.lj_energy_forces(*lj_args(batch, ex))
        assert e.dtype == f.dtype == dtype and e.shape == (b,) and f.shape == (b, n, 3)
        assert_close_scaled(e, re_, dtype)
        assert_close_scaled(f, rf, dtype)
        if n <= 13:
            ne, nf = numpy_lj(*lj_args(batch, ex))
            assert_close_scaled(e.double(), torch.from_numpy(ne), dtype)
            assert_close_scaled(f.double(), torch.from_numpy(nf), dtype)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_molecules(dtype):
    batch = real_molecule_batch(dtype)
    excl = reference.bond_exclusions(batch["bond_adj"], batch["mask"])
    e, f = ops.lj_energy_forces(*lj_args(batch, excl))
    re_, rf = reference.lj_energy_forces(*lj_args(batch, excl))
    assert_close_scaled(e, re_, dtype)
    assert_close_scaled(f, rf, dtype)
    # Newton's third law: the forces of each molecule add up to zero.
    assert_close_scaled(f.sum(1), torch.zeros_like(f.sum(1)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_coincident_atoms_and_padding(dtype):
    batch = random_batch(3, 9, dtype, seed=2, min_atoms=4)  # NaN in padding positions
    batch["pos"][0, 1] = batch["pos"][0, 0]  # r = 0: clamped energy, no force
    e, f = ops.lj_energy_forces(*lj_args(batch))
    re_, rf = reference.lj_energy_forces(*lj_args(batch))
    assert torch.isfinite(e).all() and torch.isfinite(f).all()
    assert_close_scaled(e, re_, dtype)
    assert_close_scaled(f, rf, dtype)
    assert not f[~batch["mask"]].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "n"), [(0, 4), (2, 0), (0, 0), (3, 1)])
def test_empty_and_single_atom(dtype, b, n):
    batch = random_batch(b, n, dtype, seed=0)
    pos = batch["pos"].nan_to_num().requires_grad_()
    e, f = ops.lj_energy_forces(pos, batch["mask"], batch["sigma"], batch["epsilon"])
    assert e.shape == (b,) and f.shape == (b, n, 3) and e.dtype == f.dtype == dtype
    assert not e.any() and not f.any()
    (e.sum() + f.sum()).backward()
    assert pos.grad is not None and not pos.grad.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype):
    batch = random_batch(4, 12, dtype, seed=8, pad_value=0.0)
    excl = reference.bond_exclusions(batch["bond_adj"], batch["mask"])
    want = reference.lj_energy_forces(*lj_args(batch, excl))
    pos = batch["pos"].transpose(1, 2).contiguous().transpose(1, 2)
    mask = torch.stack([batch["mask"]] * 2, -1)[..., 1]
    sigma = batch["sigma"].repeat_interleave(2, dim=1)[:, 1::2]
    eps = batch["epsilon"].repeat_interleave(2, dim=1)[:, ::2]
    got = ops.lj_energy_forces(pos, mask, sigma, eps, excl.transpose(1, 2))  # symmetric
    for g, w in zip(got, want):
        assert_close_scaled(g, w, dtype)


def test_half_precision_positions():
    batch = random_batch(2, 8, torch.float32, seed=13, pad_value=0.0)
    pos = batch["pos"].bfloat16().requires_grad_()
    e, f = ops.lj_energy_forces(pos, batch["mask"], batch["sigma"], batch["epsilon"])
    assert e.dtype == f.dtype == torch.bfloat16
    want = reference.lj_energy_forces(pos.detach().float(), *lj_args(batch)[1:])
    torch.testing.assert_close(e.float(), want[0].to(torch.bfloat16).float())
    (e.float().sum()).backward()
    assert pos.grad is not None and pos.grad.dtype == torch.bfloat16


def test_parameters_follow_pos_dtype():
    batch = random_batch(2, 7, torch.float32, seed=3)
    e, f = ops.lj_energy_forces(
        batch["pos"], batch["mask"], batch["sigma"].double(), batch["epsilon"].double()
    )
    assert e.dtype == f.dtype == torch.float32


# --------------------------------------------------------------------------- gradients


def _lj_fn(batch, exclude, impl):
    def fn(pos):
        return impl(pos, batch["mask"], batch["sigma"], batch["epsilon"], exclude)

    return fn


def _asymmetric_exclusion(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, n = batch["mask"].shape
    return torch.rand(b, n, n, generator=g) < 0.3  # asymmetric on purpose


@pytest.mark.parametrize("exclusion", ["none", "bonds", "asymmetric"])
def test_gradcheck_both_outputs(exclusion):
    batch = separated_batch(2, 6, seed=1)
    ex = {
        "none": None,
        "bonds": torch.eye(6, dtype=torch.bool).roll(1, 1).expand(2, 6, 6),
        "asymmetric": _asymmetric_exclusion(batch),
    }[exclusion]
    pos = batch["pos"].clone().requires_grad_()
    fn = _lj_fn(batch, ex, ops.lj_energy_forces)
    assert torch.autograd.gradcheck(fn, (pos,), eps=1e-6, atol=1e-7, rtol=1e-5)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference_autograd(dtype):
    batch = random_batch(5, 16, dtype, seed=4, pad_value=0.0)
    ex = _asymmetric_exclusion(batch, seed=1)
    g = torch.Generator().manual_seed(0)
    w_e = torch.randn(5, generator=g, dtype=dtype)
    w_f = torch.randn(5, 16, 3, generator=g, dtype=dtype)
    grads = []
    for impl in (ext_lj, reference.lj_energy_forces):
        pos = batch["pos"].clone().requires_grad_()
        e, f = impl(pos, batch["mask"], batch["sigma"], batch["epsilon"], ex)
        ((e * w_e).sum() + (f * w_f).sum()).backward()
        grads.append(pos.grad)
    assert_close_scaled(grads[0], grads[1], dtype)
    # One output at a time (the other's gradient arrives as None).
    for pick in (0, 1):
        both = []
        for impl in (ext_lj, reference.lj_energy_forces):
            pos = batch["pos"].clone().requires_grad_()
            out = impl(pos, batch["mask"], batch["sigma"], batch["epsilon"], ex)[pick]
            (out * (w_e if pick == 0 else w_f)).sum().backward()
            both.append(pos.grad)
        assert_close_scaled(both[0], both[1], dtype)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernel_logic_emulated_on_cpu(dtype):
    # The CUDA kernels' per-row code (32 lanes + warp-tree sums) replayed on the CPU: the
    # forward and the backward for both outputs must match the reference.
    batch = random_batch(4, 37, dtype, seed=14)  # NaN padding
    ex = _asymmetric_exclusion(batch, seed=2)
    g = torch.Generator().manual_seed(3)
    w_e = torch.randn(4, generator=g, dtype=dtype)
    w_f = torch.randn(4, 37, 3, generator=g, dtype=dtype)
    e, f, grad = torch.ops.molconf._lj_energy_forces_cuda_emulation(
        batch["pos"], batch["mask"], batch["sigma"], batch["epsilon"], ex, w_e, w_f
    )
    pos = batch["pos"].clone().requires_grad_()
    re_, rf = reference.lj_energy_forces(pos, batch["mask"], batch["sigma"], batch["epsilon"], ex)
    ((re_ * w_e).sum() + (rf * w_f).sum()).backward()
    assert_close_scaled(e, re_.detach(), dtype)
    assert_close_scaled(f, rf.detach(), dtype)
    assert_close_scaled(grad, pos.grad, dtype)


def test_energy_gradient_is_minus_forces():
    batch = separated_batch(3, 7, seed=2)
    excl = torch.eye(7, dtype=torch.bool).roll(2, 1).expand(3, 7, 7)
    excl = excl | excl.transpose(1, 2)
    pos = batch["pos"].clone().requires_grad_()
    e, f = ops.lj_energy_forces(pos, batch["mask"], batch["sigma"], batch["epsilon"], excl)
    (grad,) = torch.autograd.grad(e.sum(), pos)
    torch.testing.assert_close(grad, -f, rtol=1e-10, atol=1e-12)


def test_double_backward_falls_back_to_reference():
    batch = separated_batch(2, 5, seed=3)
    grads = []
    for impl in (ops.lj_energy_forces, reference.lj_energy_forces):
        pos = batch["pos"].clone().requires_grad_()
        e, _ = impl(pos, batch["mask"], batch["sigma"], batch["epsilon"])
        (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), pos)
        grads.append(gg)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_gradient_wrt_parameters_routes_to_reference():
    batch = separated_batch(2, 5, seed=4)
    grads = []
    for impl in (ops.lj_energy_forces, reference.lj_energy_forces):
        eps = batch["epsilon"].clone().requires_grad_()
        e, f = impl(batch["pos"], batch["mask"], batch["sigma"], eps)
        (e.sum() + f.sum()).backward()
        grads.append(eps.grad)
    torch.testing.assert_close(grads[0], grads[1])


@needs_ext
def test_raw_op_refuses_parameter_gradients():
    batch = separated_batch(1, 4, seed=5)
    eps = batch["epsilon"].clone().requires_grad_()
    e, _ = ext_lj(batch["pos"].clone().requires_grad_(), batch["mask"], batch["sigma"], eps, None)
    with pytest.raises(NotImplementedError, match="pos only"):
        e.sum().backward()


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    batch = random_batch(2, 5, torch.float64, seed=0)
    pos, mask, sigma, eps = batch["pos"], batch["mask"], batch["sigma"], batch["epsilon"]
    cases = [
        ((pos[0], mask, sigma, eps), ValueError, "pos must have shape"),
        ((pos.int(), mask, sigma, eps), TypeError, "float32, float64"),
        ((pos, mask.long(), sigma, eps), TypeError, "mask must be a bool"),
        ((pos, mask[:, :4], sigma, eps), ValueError, "mask must have shape"),
        ((pos, mask, sigma[:1], eps), ValueError, "sigma must have shape"),
        ((pos, mask, sigma, eps.bool()), TypeError, "epsilon must be a floating"),
        ((pos, mask, sigma, eps, mask), ValueError, "exclude must have shape"),
        ((pos, mask, sigma, eps, torch.zeros(2, 5, 5)), TypeError, "exclude must be a bool"),
        ((pos, mask, sigma, [1.0]), TypeError, "must be a torch.Tensor"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            ops.lj_energy_forces(*args)


@needs_ext
def test_raw_op_checks_inputs_instead_of_crashing():
    batch = random_batch(2, 5, torch.float64, seed=0)
    pos, mask, sigma, eps = batch["pos"], batch["mask"], batch["sigma"], batch["epsilon"]
    with pytest.raises(ValueError, match="exclude must have shape"):
        ext_lj(pos, mask, sigma, eps, mask)
    with pytest.raises(TypeError, match="epsilon must have dtype"):
        ext_lj(pos, mask, sigma, eps.float(), None)
    with pytest.raises(ValueError, match="grad_forces must have shape"):
        torch.ops.molconf.lj_energy_forces_backward(None, pos[:, :4], pos, mask, sigma, eps)


# --------------------------------------------------------------------------- torch.library


@needs_ext
def test_opcheck():
    batch = separated_batch(2, 5, seed=6)
    pos = batch["pos"].clone().requires_grad_()
    ex = _asymmetric_exclusion(batch)
    for exclude in (None, ex):
        torch.library.opcheck(
            torch.ops.molconf.lj_energy_forces.default,
            (pos, batch["mask"], batch["sigma"], batch["epsilon"], exclude),
        )


@needs_ext
def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    batch = separated_batch(2, 6, seed=7)
    m, s, e = batch["mask"], batch["sigma"], batch["epsilon"]

    def loss(pos):
        energy, forces = ops.lj_energy_forces(pos, m, s, e)
        return energy.sum() + 0.1 * forces.square().sum()

    compiled = torch.compile(loss, fullgraph=True, dynamic=False)
    grads = []
    for fn in (compiled, loss):
        pos = batch["pos"].clone().requires_grad_()
        value = fn(pos)
        value.backward()
        grads.append((value.detach(), pos.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_lj_parameters_match_the_uff_table_and_stay_on_the_device():
    """Against the UFF table written out by hand; a device tensor is looked up without a host copy
    (a meta tensor has no values to copy: any ``.cpu()`` or host check would raise)."""
    from molconf.ops.lj_params import UFF_VDW

    z = torch.tensor([[6, 1, 8, 0], [35, 7, 16, 0]])
    sigma, eps = ops.lj_parameters(z)
    for (i, j), zz in zip(((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)), (6, 1, 8, 35, 7, 16)):
        assert sigma[i, j].item() == pytest.approx(UFF_VDW[zz][0] / 2 ** (1 / 6))
        assert eps[i, j].item() == pytest.approx(UFF_VDW[zz][1])
    assert sigma[:, 3].tolist() == [0.0, 0.0] and eps[:, 3].tolist() == [0.0, 0.0]  # padding
    s_ref, _ = ops.lj_parameters(z, "reference")
    assert s_ref[0, 1].item() == pytest.approx(UFF_VDW[1][0])
    s_meta, e_meta = ops.lj_parameters(z.to("meta"))
    assert s_meta.device.type == "meta" and s_meta.shape == z.shape and e_meta.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[2\]"):
        ops.lj_parameters(torch.tensor([6, 2]))
    unchecked, _ = ops.lj_parameters(torch.tensor([6, 2, -1, 500]), check=False)
    assert torch.isnan(unchecked[1:]).all() and not torch.isnan(unchecked[0])
