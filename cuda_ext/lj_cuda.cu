// CUDA kernels of molconf's ops: one warp per row (atom i against all j), four rows per
// block. All per-pair arithmetic and the selection order come from lj_math.h, which the
// CPU kernels (and therefore the CPU test suite) share.
//
// Only plain CUDA and ATen's core Tensor headers are used (no c10/cuda), so this file can be
// compile-checked with nvcc against a CPU-only torch install (tests/ops/test_cuda_compile.py);
// register.cpp passes the current stream in as a void*.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

// This file is CUDA by definition: declare the CUDA entry points of ops.h so the
// definitions below are checked against them.
#ifndef MOLCONF_WITH_CUDA
#define MOLCONF_WITH_CUDA
#endif
#include "lj_math.h"
#include "ops.h"

namespace molconf {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;
constexpr int kThreads = kWarp * kRowsPerBlock;
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // default dynamic shared-memory limit
constexpr unsigned kFullMask = 0xffffffffu;

int64_t num_blocks(int64_t rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return v;  // complete in lane 0
}

// One warp per row; the row bodies are lj_math.h's rewire_row_forces/rewire_row_select,
// which the CPU emulation op replays lane by lane in the tests. Pass 1: each lane writes
// the masked F_ij of its columns into the row buffer (shared memory, or global scratch for
// very long rows). Pass 2: each lane ranks its valid columns against the whole row and
// keeps those ranked below K_i. O(N^2 / 32) per row with early exit at rank K_i (small in
// practice); no sort, no atomics.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rewire_kernel(RewireRowArgs<T> a, T* __restrict__ scratch, int64_t rows) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= rows) return;  // uniform per warp
  T* buf = scratch != nullptr ? scratch + row * a.n : reinterpret_cast<T*>(smem_raw) + warp * a.n;
  rewire_row_forces(a, row, buf, lane, kWarp);
  __syncwarp();  // the whole row must be in buf before any lane ranks against it
  rewire_row_select(a, row, buf, lane, kWarp);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    lj_kernel(LjRowArgs<T> a, T* __restrict__ row_energy, T* __restrict__ forces, int64_t rows) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= rows) return;
  const Sum4 s = lj_row_partial(a, row, lane, kWarp);
  const double e = warp_sum(s.e), fx = warp_sum(s.x), fy = warp_sum(s.y), fz = warp_sum(s.z);
  if (lane == 0) {
    row_energy[row] = static_cast<T>(e);
    forces[3 * row] = static_cast<T>(fx);
    forces[3 * row + 1] = static_cast<T>(fy);
    forces[3 * row + 2] = static_cast<T>(fz);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    lj_backward_kernel(LjRowArgs<T> a, const T* __restrict__ grad_energy,
                       const T* __restrict__ grad_forces, T* __restrict__ grad_pos,
                       int64_t rows) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= rows) return;
  const Sum4 s = lj_backward_row_partial(a, grad_energy, grad_forces, row, lane, kWarp);
  const double gx = warp_sum(s.x), gy = warp_sum(s.y), gz = warp_sum(s.z);
  if (lane == 0) {
    grad_pos[3 * row] = static_cast<T>(gx);
    grad_pos[3 * row + 1] = static_cast<T>(gy);
    grad_pos[3 * row + 2] = static_cast<T>(gz);
  }
}

template <typename T>
const T* opt_ptr(const at::Tensor* t) {
  return t ? t->data_ptr<T>() : nullptr;
}

}  // namespace

int64_t rewire_cuda_shared_bytes(int64_t n, int64_t element_size) {
  const int64_t bytes = static_cast<int64_t>(kRowsPerBlock) * n * element_size;
  return bytes <= kMaxSharedBytes ? bytes : 0;
}

void rewire_by_force_cuda(const at::Tensor& pos, const at::Tensor& mask,
                          const at::Tensor& bond_adj, const at::Tensor& sigma,
                          const at::Tensor& epsilon, const at::Tensor& k, at::Tensor& attr,
                          at::Tensor& rep, at::Tensor* force, at::Tensor* scratch, void* stream) {
  const int64_t B = pos.size(0), N = pos.size(1);
  if (B * N == 0) return;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::rewire_by_force (CUDA)", [&] {
    const int64_t shared = scratch ? 0 : rewire_cuda_shared_bytes(N, sizeof(scalar_t));
    TORCH_CHECK(scratch || shared > 0, "rewire_by_force (CUDA): rows of ", N,
                " atoms need a global scratch buffer");
    const RewireRowArgs<scalar_t> a{pos.data_ptr<scalar_t>(),     mask.data_ptr<bool>(),
                                    bond_adj.data_ptr<bool>(),    sigma.data_ptr<scalar_t>(),
                                    epsilon.data_ptr<scalar_t>(), k.data_ptr<int64_t>(),
                                    attr.data_ptr<bool>(),        rep.data_ptr<bool>(),
                                    force ? force->data_ptr<scalar_t>() : nullptr,
                                    N};
    rewire_kernel<scalar_t><<<num_blocks(B * N), kThreads, shared,
                              static_cast<cudaStream_t>(stream)>>>(
        a, scratch ? scratch->data_ptr<scalar_t>() : nullptr, B * N);
    check_launch("molconf::rewire_by_force");
  });
}

void lj_energy_forces_cuda(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                           const at::Tensor& epsilon, const at::Tensor* exclude,
                           at::Tensor& row_energy, at::Tensor& forces, void* stream) {
  const int64_t B = pos.size(0), N = pos.size(1);
  if (B * N == 0) return;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::lj_energy_forces (CUDA)", [&] {
    const LjRowArgs<scalar_t> a{pos.data_ptr<scalar_t>(), mask.data_ptr<bool>(),
                                sigma.data_ptr<scalar_t>(), epsilon.data_ptr<scalar_t>(),
                                exclude ? exclude->data_ptr<bool>() : nullptr, N};
    lj_kernel<scalar_t><<<num_blocks(B * N), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        a, row_energy.data_ptr<scalar_t>(), forces.data_ptr<scalar_t>(), B * N);
    check_launch("molconf::lj_energy_forces");
  });
}

void lj_energy_forces_backward_cuda(const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                                    const at::Tensor& pos, const at::Tensor& mask,
                                    const at::Tensor& sigma, const at::Tensor& epsilon,
                                    const at::Tensor* exclude, at::Tensor& grad_pos,
                                    void* stream) {
  const int64_t B = pos.size(0), N = pos.size(1);
  if (B * N == 0) return;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::lj_energy_forces_backward (CUDA)", [&] {
    const LjRowArgs<scalar_t> a{pos.data_ptr<scalar_t>(), mask.data_ptr<bool>(),
                                sigma.data_ptr<scalar_t>(), epsilon.data_ptr<scalar_t>(),
                                exclude ? exclude->data_ptr<bool>() : nullptr, N};
    lj_backward_kernel<scalar_t>
        <<<num_blocks(B * N), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            a, opt_ptr<scalar_t>(grad_energy), opt_ptr<scalar_t>(grad_forces),
            grad_pos.data_ptr<scalar_t>(), B * N);
    check_launch("molconf::lj_energy_forces_backward");
  });
}

}  // namespace molconf
