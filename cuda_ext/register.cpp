// torch.library registration of molconf's ops.
//
// Schemas live in TORCH_LIBRARY(molconf, ...); the CPU kernels are always registered, the
// CUDA ones only when built with -DMOLCONF_WITH_CUDA (torch with CUDA + nvcc). Fake
// (meta) kernels and autograd are registered from Python (molconf/ops/_extension.py).
//
// The entry points below re-check every input with TORCH_CHECK_* (ValueError/TypeError in
// Python), so calling torch.ops.molconf.* directly with bad tensors raises instead of
// reading out of bounds.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "ops.h"

#ifdef MOLCONF_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace molconf {
namespace {

using at::Tensor;

void check_floating(const Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
}

void check_dtype(const Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
                   t.scalar_type());
}

void check_shape(const Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

void check_device(const Tensor& t, const Tensor& pos, const char* name) {
  TORCH_CHECK_VALUE(t.device() == pos.device(), name, " is on ", t.device(),
                    " but pos is on ", pos.device());
}

// pos (B, N, 3) float; mask (B, N) bool; sigma/epsilon (B, N) with pos's dtype.
void check_common(const Tensor& pos, const Tensor& mask, const Tensor& sigma,
                  const Tensor& epsilon) {
  TORCH_CHECK_VALUE(pos.dim() == 3 && pos.size(2) == 3, "pos must have shape (B, N, 3), got ",
                    pos.sizes());
  check_floating(pos, "pos");
  const int64_t B = pos.size(0), N = pos.size(1);
  check_shape(mask, {B, N}, "mask");
  check_dtype(mask, at::kBool, "mask");
  check_device(mask, pos, "mask");
  check_shape(sigma, {B, N}, "sigma");
  check_dtype(sigma, pos.scalar_type(), "sigma");
  check_device(sigma, pos, "sigma");
  check_shape(epsilon, {B, N}, "epsilon");
  check_dtype(epsilon, pos.scalar_type(), "epsilon");
  check_device(epsilon, pos, "epsilon");
}

void check_pair_mask(const Tensor& t, const Tensor& pos, const char* name) {
  const int64_t B = pos.size(0), N = pos.size(1);
  check_shape(t, {B, N, N}, name);
  check_dtype(t, at::kBool, name);
  check_device(t, pos, name);
}

#ifdef MOLCONF_WITH_CUDA
void* current_stream(const Tensor& pos) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(pos.device().index()).stream());
}
#endif

[[noreturn]] void no_kernel(const Tensor& pos) {
  TORCH_CHECK(false, "molconf ops: no kernel for device ", pos.device(),
              " in this build of the extension");
}

std::tuple<Tensor, Tensor, Tensor> rewire_impl(const Tensor& pos, const Tensor& mask,
                                               const Tensor& bond_adj, const Tensor& sigma,
                                               const Tensor& epsilon, const Tensor& k,
                                               bool return_forces, bool emulate_cuda) {
  check_common(pos, mask, sigma, epsilon);
  check_pair_mask(bond_adj, pos, "bond_adj");
  const int64_t B = pos.size(0), N = pos.size(1);
  check_shape(k, {B, N}, "k");
  check_dtype(k, at::kLong, "k");
  check_device(k, pos, "k");

  const Tensor pos_c = pos.contiguous(), mask_c = mask.contiguous(),
               bond_c = bond_adj.contiguous(), sigma_c = sigma.contiguous(),
               eps_c = epsilon.contiguous(), k_c = k.contiguous();
  Tensor attr = at::empty({B, N, N}, pos.options().dtype(at::kBool));  // (B, N, N)
  Tensor rep = at::empty({B, N, N}, pos.options().dtype(at::kBool));   // (B, N, N)
  // Without return_forces the third output is an empty placeholder (schemas need a
  // fixed number of outputs).
  const std::vector<int64_t> force_shape =
      return_forces ? std::vector<int64_t>{B, N, N} : std::vector<int64_t>{0};
  Tensor force = at::empty(force_shape, pos.options());
  if (B * N == 0) return {attr, rep, force};
  Tensor* force_ptr = return_forces ? &force : nullptr;
  if (emulate_cuda) {
    TORCH_CHECK_VALUE(pos.device().is_cpu(), "the CUDA emulation runs on CPU tensors only");
    rewire_by_force_cuda_emulation(pos_c, mask_c, bond_c, sigma_c, eps_c, k_c, attr, rep,
                                   force_ptr);
  } else if (pos.device().is_cpu()) {
    rewire_by_force_cpu(pos_c, mask_c, bond_c, sigma_c, eps_c, k_c, attr, rep, force_ptr);
  } else if (pos.device().is_cuda()) {
#ifdef MOLCONF_WITH_CUDA
    const c10::cuda::CUDAGuard guard(pos.device());
    Tensor scratch;
    if (rewire_cuda_shared_bytes(N, pos.element_size()) == 0) {
      scratch = at::empty({B, N, N}, pos.options());  // rows too long for shared memory
    }
    rewire_by_force_cuda(pos_c, mask_c, bond_c, sigma_c, eps_c, k_c, attr, rep, force_ptr,
                         scratch.defined() ? &scratch : nullptr, current_stream(pos));
#else
    no_kernel(pos);
#endif
  } else {
    no_kernel(pos);
  }
  return {attr, rep, force};
}

std::tuple<Tensor, Tensor, Tensor> rewire_by_force(const Tensor& pos, const Tensor& mask,
                                                   const Tensor& bond_adj, const Tensor& sigma,
                                                   const Tensor& epsilon, const Tensor& k,
                                                   bool return_forces) {
  return rewire_impl(pos, mask, bond_adj, sigma, epsilon, k, return_forces, false);
}

std::tuple<Tensor, Tensor, Tensor> rewire_by_force_cuda_emulation_op(
    const Tensor& pos, const Tensor& mask, const Tensor& bond_adj, const Tensor& sigma,
    const Tensor& epsilon, const Tensor& k, bool return_forces) {
  return rewire_impl(pos, mask, bond_adj, sigma, epsilon, k, return_forces, true);
}

std::tuple<Tensor, Tensor> lj_energy_forces(const Tensor& pos, const Tensor& mask,
                                            const Tensor& sigma, const Tensor& epsilon,
                                            const std::optional<Tensor>& exclude) {
  check_common(pos, mask, sigma, epsilon);
  if (exclude.has_value()) check_pair_mask(*exclude, pos, "exclude");
  const int64_t B = pos.size(0), N = pos.size(1);
  const Tensor pos_c = pos.contiguous(), mask_c = mask.contiguous(),
               sigma_c = sigma.contiguous(), eps_c = epsilon.contiguous();
  const Tensor excl_c = exclude.has_value() ? exclude->contiguous() : Tensor();
  const Tensor* excl_ptr = excl_c.defined() ? &excl_c : nullptr;
  Tensor forces = at::empty({B, N, 3}, pos.options());  // (B, N, 3)
  if (B * N == 0) {
    return {at::zeros({B}, pos.options()), forces};
  }
  Tensor row_energy = at::empty({B, N}, pos.options());  // (B, N) per-row scratch
  if (pos.device().is_cpu()) {
    lj_energy_forces_cpu(pos_c, mask_c, sigma_c, eps_c, excl_ptr, row_energy, forces);
  } else if (pos.device().is_cuda()) {
#ifdef MOLCONF_WITH_CUDA
    const c10::cuda::CUDAGuard guard(pos.device());
    lj_energy_forces_cuda(pos_c, mask_c, sigma_c, eps_c, excl_ptr, row_energy, forces,
                          current_stream(pos));
#else
    no_kernel(pos);
#endif
  } else {
    no_kernel(pos);
  }
  // Every pair is counted from both ends: E = ½ Σ_i Σ_j V_ij.  (B,)
  Tensor energy = at::sum(row_energy, {1}).mul_(0.5);
  return {energy, forces};
}

Tensor lj_energy_forces_backward(const std::optional<Tensor>& grad_energy,
                                 const std::optional<Tensor>& grad_forces, const Tensor& pos,
                                 const Tensor& mask, const Tensor& sigma, const Tensor& epsilon,
                                 const std::optional<Tensor>& exclude) {
  check_common(pos, mask, sigma, epsilon);
  if (exclude.has_value()) check_pair_mask(*exclude, pos, "exclude");
  const int64_t B = pos.size(0), N = pos.size(1);
  if (grad_energy.has_value()) {
    check_shape(*grad_energy, {B}, "grad_energy");
    check_dtype(*grad_energy, pos.scalar_type(), "grad_energy");
    check_device(*grad_energy, pos, "grad_energy");
  }
  if (grad_forces.has_value()) {
    check_shape(*grad_forces, {B, N, 3}, "grad_forces");
    check_dtype(*grad_forces, pos.scalar_type(), "grad_forces");
    check_device(*grad_forces, pos, "grad_forces");
  }
  const Tensor pos_c = pos.contiguous(), mask_c = mask.contiguous(),
               sigma_c = sigma.contiguous(), eps_c = epsilon.contiguous();
  const Tensor excl_c = exclude.has_value() ? exclude->contiguous() : Tensor();
  const Tensor ge_c = grad_energy.has_value() ? grad_energy->contiguous() : Tensor();
  const Tensor gf_c = grad_forces.has_value() ? grad_forces->contiguous() : Tensor();
  Tensor grad_pos = at::empty({B, N, 3}, pos.options());  // (B, N, 3)
  if (B * N == 0) return grad_pos;
  const Tensor* excl_ptr = excl_c.defined() ? &excl_c : nullptr;
  const Tensor* ge_ptr = ge_c.defined() ? &ge_c : nullptr;
  const Tensor* gf_ptr = gf_c.defined() ? &gf_c : nullptr;
  if (pos.device().is_cpu()) {
    lj_energy_forces_backward_cpu(ge_ptr, gf_ptr, pos_c, mask_c, sigma_c, eps_c, excl_ptr,
                                  grad_pos);
  } else if (pos.device().is_cuda()) {
#ifdef MOLCONF_WITH_CUDA
    const c10::cuda::CUDAGuard guard(pos.device());
    lj_energy_forces_backward_cuda(ge_ptr, gf_ptr, pos_c, mask_c, sigma_c, eps_c, excl_ptr,
                                   grad_pos, current_stream(pos));
#else
    no_kernel(pos);
#endif
  } else {
    no_kernel(pos);
  }
  return grad_pos;
}

// Test hook: energy, forces and the backward for (grad_energy, grad_forces), computed by
// the CUDA kernels' per-row code replayed on the CPU (see ops.h).
std::tuple<Tensor, Tensor, Tensor> lj_cuda_emulation_op(const Tensor& pos, const Tensor& mask,
                                                        const Tensor& sigma,
                                                        const Tensor& epsilon,
                                                        const std::optional<Tensor>& exclude,
                                                        const std::optional<Tensor>& grad_energy,
                                                        const std::optional<Tensor>& grad_forces) {
  check_common(pos, mask, sigma, epsilon);
  TORCH_CHECK_VALUE(pos.device().is_cpu(), "the CUDA emulation runs on CPU tensors only");
  if (exclude.has_value()) check_pair_mask(*exclude, pos, "exclude");
  const int64_t B = pos.size(0), N = pos.size(1);
  if (grad_energy.has_value()) {
    check_shape(*grad_energy, {B}, "grad_energy");
    check_dtype(*grad_energy, pos.scalar_type(), "grad_energy");
  }
  if (grad_forces.has_value()) {
    check_shape(*grad_forces, {B, N, 3}, "grad_forces");
    check_dtype(*grad_forces, pos.scalar_type(), "grad_forces");
  }
  const Tensor pos_c = pos.contiguous(), mask_c = mask.contiguous(),
               sigma_c = sigma.contiguous(), eps_c = epsilon.contiguous();
  const Tensor excl_c = exclude.has_value() ? exclude->contiguous() : Tensor();
  const Tensor ge_c = grad_energy.has_value() ? grad_energy->contiguous() : Tensor();
  const Tensor gf_c = grad_forces.has_value() ? grad_forces->contiguous() : Tensor();
  Tensor row_energy = at::empty({B, N}, pos.options());
  Tensor forces = at::empty({B, N, 3}, pos.options());
  Tensor grad_pos = at::empty({B, N, 3}, pos.options());
  if (B * N > 0) {
    lj_energy_forces_cuda_emulation(pos_c, mask_c, sigma_c, eps_c,
                                    excl_c.defined() ? &excl_c : nullptr,
                                    ge_c.defined() ? &ge_c : nullptr,
                                    gf_c.defined() ? &gf_c : nullptr, row_energy, forces,
                                    grad_pos);
  }
  return {at::sum(row_energy, {1}).mul_(0.5), forces, grad_pos};
}

}  // namespace
}  // namespace molconf

TORCH_LIBRARY(molconf, m) {
  m.def(
      "rewire_by_force(Tensor pos, Tensor mask, Tensor bond_adj, Tensor sigma, Tensor epsilon, "
      "Tensor k, bool return_forces=False) -> (Tensor attr, Tensor rep, Tensor force)");
  // Test hook: the CUDA kernel's per-row code run on the CPU (see ops.h).
  m.def(
      "_rewire_by_force_cuda_emulation(Tensor pos, Tensor mask, Tensor bond_adj, Tensor sigma, "
      "Tensor epsilon, Tensor k, bool return_forces=False) -> (Tensor attr, Tensor rep, "
      "Tensor force)");
  m.def(
      "lj_energy_forces(Tensor pos, Tensor mask, Tensor sigma, Tensor epsilon, "
      "Tensor? exclude=None) -> (Tensor energy, Tensor forces)");
  m.def(
      "_lj_energy_forces_cuda_emulation(Tensor pos, Tensor mask, Tensor sigma, Tensor epsilon, "
      "Tensor? exclude=None, Tensor? grad_energy=None, Tensor? grad_forces=None) -> "
      "(Tensor energy, Tensor forces, Tensor grad_pos)");
  m.def(
      "lj_energy_forces_backward(Tensor? grad_energy, Tensor? grad_forces, Tensor pos, "
      "Tensor mask, Tensor sigma, Tensor epsilon, Tensor? exclude=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(molconf, CPU, m) {
  m.impl("rewire_by_force", &molconf::rewire_by_force);
  m.impl("_rewire_by_force_cuda_emulation", &molconf::rewire_by_force_cuda_emulation_op);
  m.impl("_lj_energy_forces_cuda_emulation", &molconf::lj_cuda_emulation_op);
  m.impl("lj_energy_forces", &molconf::lj_energy_forces);
  m.impl("lj_energy_forces_backward", &molconf::lj_energy_forces_backward);
}

#ifdef MOLCONF_WITH_CUDA
TORCH_LIBRARY_IMPL(molconf, CUDA, m) {
  m.impl("rewire_by_force", &molconf::rewire_by_force);
  m.impl("lj_energy_forces", &molconf::lj_energy_forces);
  m.impl("lj_energy_forces_backward", &molconf::lj_energy_forces_backward);
}
#endif
