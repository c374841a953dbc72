// Per-pair and per-row arithmetic of molconf's Lennard-Jones ops, shared by the CPU
// kernels (lj_cpu.cpp, compiled by the host compiler) and the CUDA kernels (lj_cuda.cu).
//
// Why one header: no GPU is available to test the CUDA kernels, so every number they
// compute must come from code the CPU tests exercise. Each function reproduces the
// pure-PyTorch reference (molconf/ops/reference.py) operation by operation, in the same
// order and the same precision, so the force values are bit-identical to it and the
// top-K_i selection (which compares |F| exactly) picks identical edges.
//
// Rounding: every multiply/add/divide/sqrt below goes through the exactly rounded
// helpers. On the host they are plain operators (the build passes -ffp-contract=off, so
// the compiler may not fuse a*b+c into an FMA, which would round differently from
// PyTorch); on the device they are the *_rn intrinsics, which nvcc never contracts.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MOLCONF_HD __host__ __device__ __forceinline__
#else
#define MOLCONF_HD inline
#endif

namespace molconf {

// Distances below this are clamped before evaluating LJ terms. The Python loader passes
// molconf.constants.LJ_R_MIN as -DMOLCONF_LJ_R_MIN so the two can never disagree; the
// default only serves stand-alone compiles (e.g. the nvcc compile test).
#ifdef MOLCONF_LJ_R_MIN
constexpr double kLjRMin = MOLCONF_LJ_R_MIN;
#else
constexpr double kLjRMin = 1e-2;
#endif

// ---- exactly rounded primitives -------------------------------------------------------
MOLCONF_HD float op_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
MOLCONF_HD double op_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
MOLCONF_HD float op_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
MOLCONF_HD double op_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
MOLCONF_HD float op_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
MOLCONF_HD double op_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
MOLCONF_HD float op_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
MOLCONF_HD double op_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
MOLCONF_HD float op_sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
MOLCONF_HD double op_sqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
template <typename T>
MOLCONF_HD T op_abs(T a) {
  return a < T(0) ? -a : a;  // sign flip is exact; NaN passes through unchanged
}
template <typename T>
MOLCONF_HD bool op_isfinite(T a) {
#if defined(__CUDA_ARCH__)
  return isfinite(a);
#else
  return std::isfinite(a);
#endif
}

// ---- per pair ---------------------------------------------------------------------------

// |p_i - p_j|^2 summed in x, y, z order, as the reference's (d_x^2 + d_y^2) + d_z^2.
template <typename T>
MOLCONF_HD T pair_r2(T dx, T dy, T dz) {
  return op_add(op_add(op_mul(dx, dx), op_mul(dy, dy)), op_mul(dz, dz));
}

// r from r^2; r = 0 whenever r^2 is not > 0 (incl. NaN), exactly like the reference's
// torch.where(r2 > 0, sqrt(r2), 0).
template <typename T>
MOLCONF_HD T pair_distance(T r2) {
  return r2 > T(0) ? op_sqrt(r2) : T(0);
}

// r clamped to LJ_R_MIN (NaN propagates, like Tensor.clamp_min).
template <typename T>
MOLCONF_HD T clamp_r(T r) {
  const T r_min = static_cast<T>(kLjRMin);
  return r < r_min ? r_min : r;
}

// Lorentz-Berthelot mixing: sigma_ij = 0.5 (sigma_i + sigma_j), eps_ij = sqrt(eps_i eps_j).
template <typename T>
MOLCONF_HD T mix_sigma(T si, T sj) {
  return op_mul(static_cast<T>(0.5), op_add(si, sj));
}
template <typename T>
MOLCONF_HD T mix_epsilon(T ei, T ej) {
  return op_sqrt(op_mul(ei, ej));
}

// (sigma/r)^6 as s2*s2*s2 with s2 = s*s (the reference uses the same products, not pow).
template <typename T>
MOLCONF_HD T lj_s6(T rc, T sigma_ij) {
  const T s = op_div(sigma_ij, rc);
  const T s2 = op_mul(s, s);
  return op_mul(op_mul(s2, s2), s2);
}

// F = 24 eps / r * (2 s^12 - s^6) = -dV/dr, > 0 repulsive; rc is the clamped distance.
// Evaluated as ((24 eps) / r) * ((2 s6) s6 - s6), the reference's order of operations.
template <typename T>
MOLCONF_HD T lj_force_from_s6(T rc, T eps_ij, T s6) {
  const T a = op_div(op_mul(static_cast<T>(24), eps_ij), rc);
  const T b = op_sub(op_mul(op_mul(static_cast<T>(2), s6), s6), s6);
  return op_mul(a, b);
}

// V = 4 eps (s^12 - s^6), as (4 eps) * (s6 s6 - s6).
template <typename T>
MOLCONF_HD T lj_energy_from_s6(T eps_ij, T s6) {
  return op_mul(op_mul(static_cast<T>(4), eps_ij), op_sub(op_mul(s6, s6), s6));
}

// The whole rewiring pipeline for one pair: positions and per-atom parameters -> F_ij.
template <typename T>
MOLCONF_HD T rewire_pair_force(T xi, T yi, T zi, T xj, T yj, T zj, T si, T sj, T ei, T ej) {
  const T r = pair_distance(pair_r2(op_sub(xi, xj), op_sub(yi, yj), op_sub(zi, zj)));
  const T rc = clamp_r(r);
  const T s6 = lj_s6(rc, mix_sigma(si, sj));
  return lj_force_from_s6(rc, mix_epsilon(ei, ej), s6);
}

// Everything the LJ energy/force kernels need for one active pair at distance r.
//   energy: V(max(r, r_min))            (flat below r_min, as the reference clamps r)
//   g:      F(r) / r                    (0 when r <= r_min: the energy is flat there)
//   h:      g'(r) / r = 24 eps (8 s^6 - 28 s^12) / r^4   (0 when r <= r_min)
// so that the pair force on i is g * d_ij (d_ij = p_i - p_j) and its Jacobian with
// respect to p_i is the Hessian block H_ij = g I + h d_ij d_ij^T.
template <typename T>
struct LjPairTerms {
  T energy;
  T g;
  T h;
};

template <typename T>
MOLCONF_HD LjPairTerms<T> lj_pair_terms(T r, T sigma_ij, T eps_ij, bool need_h) {
  LjPairTerms<T> out;
  const T rc = clamp_r(r);
  const T s6 = lj_s6(rc, sigma_ij);
  out.energy = lj_energy_from_s6(eps_ij, s6);
  if (r > static_cast<T>(kLjRMin)) {
    out.g = op_div(lj_force_from_s6(rc, eps_ij, s6), r);
    if (need_h) {
      const T r2 = op_mul(r, r);
      const T s12 = op_mul(s6, s6);
      const T num = op_mul(op_mul(static_cast<T>(24), eps_ij),
                           op_sub(op_mul(static_cast<T>(8), s6), op_mul(static_cast<T>(28), s12)));
      out.h = op_div(num, op_mul(r2, r2));
    } else {
      out.h = T(0);
    }
  } else {
    out.g = T(0);
    out.h = T(0);
  }
  return out;
}

// ---- per row: top-K_i selection ------------------------------------------------------------

// A candidate competes for a slot only with a finite, non-zero force.
template <typename T>
MOLCONF_HD bool rewire_valid(T force) {
  return op_isfinite(force) && force != T(0);
}

// Strict total order of the selection: larger |F| first, equal |F| -> lower column first.
// a and b must both be valid (finite), so |F| compares without NaN surprises.
template <typename T>
MOLCONF_HD bool rewire_precedes(T abs_a, int64_t col_a, T abs_b, int64_t col_b) {
  return abs_a > abs_b || (abs_a == abs_b && col_a < col_b);
}

// Rank of column j among the valid entries of a row of masked forces (0 = strongest),
// counting only up to `limit` (callers only need to know whether rank < K). Used by the
// CUDA kernel (each lane ranks its own columns) and by the CPU kernel for tiny K.
template <typename T>
MOLCONF_HD int64_t rewire_rank(const T* row_force, int64_t n, int64_t j, int64_t limit) {
  const T abs_j = op_abs(row_force[j]);
  int64_t rank = 0;
  for (int64_t l = 0; l < n && rank < limit; ++l) {
    const T f = row_force[l];
    if (rewire_valid(f) && rewire_precedes(op_abs(f), l, abs_j, j)) ++rank;
  }
  return rank;
}

}  // namespace molconf
