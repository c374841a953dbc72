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

// One warp per row. Pass 1: each lane computes the masked F_ij of its columns into the
// row buffer (shared memory, or global scratch for very long rows). Pass 2: each lane
// ranks its valid columns against the whole row (rewire_rank, the same strict order as
// the CPU's nth_element) and keeps those ranked below K_i. O(N^2 / 32) per row, no sort,
// no atomics; ranks stop counting at K_i, which is small in practice.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rewire_kernel(const T* __restrict__ P, const bool* __restrict__ M,
                  const bool* __restrict__ A, const T* __restrict__ S,
                  const T* __restrict__ E, const int64_t* __restrict__ K,
                  bool* __restrict__ attr, bool* __restrict__ rep, T* __restrict__ force_out,
                  T* __restrict__ scratch, int64_t B, int64_t N) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= B * N) return;  // uniform per warp
  const int64_t b = row / N, i = row - b * N;
  T* buf = scratch ? scratch + row * N : reinterpret_cast<T*>(smem_raw) + warp * N;
  bool* attr_row = attr + row * N;
  bool* rep_row = rep + row * N;
  T* f_out = force_out ? force_out + row * N : nullptr;

  if (!M[row]) {
    for (int64_t j = lane; j < N; j += kWarp) {
      attr_row[j] = false;
      rep_row[j] = false;
      if (f_out) f_out[j] = T(0);
    }
    return;
  }
  const T* Pb = P + b * N * 3;
  const bool* Mb = M + b * N;
  const bool* A_row = A + row * N;
  const T* Sb = S + b * N;
  const T* Eb = E + b * N;
  const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2];
  const T si = Sb[i], ei = Eb[i];
  for (int64_t j = lane; j < N; j += kWarp) {
    const bool cand = Mb[j] && !A_row[j] && j != i;
    const T f = cand ? rewire_pair_force(xi, yi, zi, Pb[3 * j], Pb[3 * j + 1], Pb[3 * j + 2],
                                         si, Sb[j], ei, Eb[j])
                     : T(0);
    buf[j] = f;
    if (f_out) f_out[j] = f;
  }
  __syncwarp();  // the whole row must be in buf before any lane ranks against it
  const int64_t Ki = K[row];
  for (int64_t j = lane; j < N; j += kWarp) {
    const T f = buf[j];
    const bool keep = Ki > 0 && rewire_valid(f) && rewire_rank(buf, N, j, Ki) < Ki;
    attr_row[j] = keep && f < T(0);
    rep_row[j] = keep && f > T(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    lj_kernel(const T* __restrict__ P, const bool* __restrict__ M, const T* __restrict__ S,
              const T* __restrict__ E, const bool* __restrict__ X, T* __restrict__ row_energy,
              T* __restrict__ forces, int64_t B, int64_t N) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= B * N) return;
  const int64_t b = row / N, i = row - b * N;
  double e = 0, fx = 0, fy = 0, fz = 0;
  if (M[row]) {
    const T* Pb = P + b * N * 3;
    const bool* Mb = M + b * N;
    const T* Sb = S + b * N;
    const T* Eb = E + b * N;
    const bool* X_row = X ? X + row * N : nullptr;
    const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2];
    const T si = Sb[i], ei = Eb[i];
    for (int64_t j = lane; j < N; j += kWarp) {
      if (!Mb[j] || j == i || (X_row && X_row[j])) continue;
      const T dx = op_sub(xi, Pb[3 * j]), dy = op_sub(yi, Pb[3 * j + 1]),
              dz = op_sub(zi, Pb[3 * j + 2]);
      const T r = pair_distance(pair_r2(dx, dy, dz));
      const LjPairTerms<T> t = lj_pair_terms(r, mix_sigma(si, Sb[j]), mix_epsilon(ei, Eb[j]), false);
      e += t.energy;
      fx += static_cast<double>(t.g) * dx;
      fy += static_cast<double>(t.g) * dy;
      fz += static_cast<double>(t.g) * dz;
    }
  }
  e = warp_sum(e);
  fx = warp_sum(fx);
  fy = warp_sum(fy);
  fz = warp_sum(fz);
  if (lane == 0) {
    row_energy[row] = static_cast<T>(e);
    forces[3 * row] = static_cast<T>(fx);
    forces[3 * row + 1] = static_cast<T>(fy);
    forces[3 * row + 2] = static_cast<T>(fz);
  }
}

// See lj_cpu.cpp (lj_backward_rows) for the formula; one warp per row k.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    lj_backward_kernel(const T* __restrict__ GE, const T* __restrict__ GF,
                       const T* __restrict__ P, const bool* __restrict__ M,
                       const T* __restrict__ S, const T* __restrict__ E,
                       const bool* __restrict__ X, T* __restrict__ grad_pos, int64_t B,
                       int64_t N) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= B * N) return;
  const int64_t b = row / N, k = row - b * N;
  double gx = 0, gy = 0, gz = 0;
  if (M[row] && (GE || GF)) {
    const T* Pb = P + b * N * 3;
    const bool* Mb = M + b * N;
    const T* Sb = S + b * N;
    const T* Eb = E + b * N;
    const bool* Xb = X ? X + b * N * N : nullptr;
    const double ge = GE ? static_cast<double>(GE[b]) : 0.0;
    const T* GFb = GF ? GF + b * N * 3 : nullptr;
    const double gkx = GFb ? GFb[3 * k] : 0.0, gky = GFb ? GFb[3 * k + 1] : 0.0,
                 gkz = GFb ? GFb[3 * k + 2] : 0.0;
    const T xk = Pb[3 * k], yk = Pb[3 * k + 1], zk = Pb[3 * k + 2];
    const T sk = Sb[k], ek = Eb[k];
    for (int64_t j = lane; j < N; j += kWarp) {
      if (!Mb[j] || j == k) continue;
      const double a_kj = (Xb && Xb[k * N + j]) ? 0.0 : 1.0;
      const double a_jk = (Xb && Xb[j * N + k]) ? 0.0 : 1.0;
      if (a_kj == 0.0 && a_jk == 0.0) continue;
      const T dx = op_sub(xk, Pb[3 * j]), dy = op_sub(yk, Pb[3 * j + 1]),
              dz = op_sub(zk, Pb[3 * j + 2]);
      const T r = pair_distance(pair_r2(dx, dy, dz));
      const LjPairTerms<T> t =
          lj_pair_terms(r, mix_sigma(sk, Sb[j]), mix_epsilon(ek, Eb[j]), GFb != nullptr);
      const double g = t.g, h = t.h;
      if (g == 0.0 && h == 0.0) continue;
      const double ce = -0.5 * ge * (a_kj + a_jk) * g;
      gx += ce * dx;
      gy += ce * dy;
      gz += ce * dz;
      if (GFb) {
        const double vx = a_kj * gkx - a_jk * GFb[3 * j];
        const double vy = a_kj * gky - a_jk * GFb[3 * j + 1];
        const double vz = a_kj * gkz - a_jk * GFb[3 * j + 2];
        const double hdv = h * (dx * vx + dy * vy + dz * vz);
        gx += g * vx + hdv * dx;
        gy += g * vy + hdv * dy;
        gz += g * vz + hdv * dz;
      }
    }
  }
  gx = warp_sum(gx);
  gy = warp_sum(gy);
  gz = warp_sum(gz);
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
    rewire_kernel<scalar_t><<<num_blocks(B * N), kThreads, shared,
                              static_cast<cudaStream_t>(stream)>>>(
        pos.data_ptr<scalar_t>(), mask.data_ptr<bool>(), bond_adj.data_ptr<bool>(),
        sigma.data_ptr<scalar_t>(), epsilon.data_ptr<scalar_t>(), k.data_ptr<int64_t>(),
        attr.data_ptr<bool>(), rep.data_ptr<bool>(),
        force ? force->data_ptr<scalar_t>() : nullptr,
        scratch ? scratch->data_ptr<scalar_t>() : nullptr, B, N);
    check_launch("molconf::rewire_by_force");
  });
}

void lj_energy_forces_cuda(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                           const at::Tensor& epsilon, const at::Tensor* exclude,
                           at::Tensor& row_energy, at::Tensor& forces, void* stream) {
  const int64_t B = pos.size(0), N = pos.size(1);
  if (B * N == 0) return;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::lj_energy_forces (CUDA)", [&] {
    lj_kernel<scalar_t><<<num_blocks(B * N), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        pos.data_ptr<scalar_t>(), mask.data_ptr<bool>(), sigma.data_ptr<scalar_t>(),
        epsilon.data_ptr<scalar_t>(), exclude ? exclude->data_ptr<bool>() : nullptr,
        row_energy.data_ptr<scalar_t>(), forces.data_ptr<scalar_t>(), B, N);
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
    lj_backward_kernel<scalar_t>
        <<<num_blocks(B * N), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            opt_ptr<scalar_t>(grad_energy), opt_ptr<scalar_t>(grad_forces),
            pos.data_ptr<scalar_t>(), mask.data_ptr<bool>(), sigma.data_ptr<scalar_t>(),
            epsilon.data_ptr<scalar_t>(), exclude ? exclude->data_ptr<bool>() : nullptr,
            grad_pos.data_ptr<scalar_t>(), B, N);
    check_launch("molconf::lj_energy_forces_backward");
  });
}

}  // namespace molconf
