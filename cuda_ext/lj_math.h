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
// One caveat: torch.sqrt on the CPU is MKL's VML routine in MKL builds of PyTorch, which
// is not always correctly rounded. The CPU rewiring kernel therefore takes its two square
// roots from that same routine (lj_cpu.cpp) and uses the staged helpers below
// (pair_distance_from_sqrt, mix_epsilon_squared, rewire_force_from_parts); on the GPU
// torch.sqrt and op_sqrt are both correctly rounded.
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

// r from r^2 and its square root; r = 0 whenever r^2 is not > 0 (incl. NaN), exactly like
// the reference's torch.where(r2 > 0, sqrt(r2), 0).
template <typename T>
MOLCONF_HD T pair_distance_from_sqrt(T r2, T sqrt_r2) {
  return r2 > T(0) ? sqrt_r2 : T(0);
}
template <typename T>
MOLCONF_HD T pair_distance(T r2) {
  const T root = op_sqrt(r2);  // unconditional, so compilers can vectorise the select
  return pair_distance_from_sqrt(r2, root);
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
MOLCONF_HD T mix_epsilon_squared(T ei, T ej) {
  return op_mul(ei, ej);
}
template <typename T>
MOLCONF_HD T mix_epsilon(T ei, T ej) {
  return op_sqrt(mix_epsilon_squared(ei, ej));
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

// F_ij from the pair distance r (unclamped) and the mixed parameters.
template <typename T>
MOLCONF_HD T rewire_force_from_parts(T r, T sigma_ij, T eps_ij) {
  const T rc = clamp_r(r);
  return lj_force_from_s6(rc, eps_ij, lj_s6(rc, sigma_ij));
}

// The whole rewiring pipeline for one pair: positions and per-atom parameters -> F_ij.
// (The CPU kernel runs the same stages, but takes both square roots in batches from the
// routine torch.sqrt itself uses on the CPU; see lj_cpu.cpp.)
template <typename T>
MOLCONF_HD T rewire_pair_force(T xi, T yi, T zi, T xj, T yj, T zj, T si, T sj, T ei, T ej) {
  const T r = pair_distance(pair_r2(op_sub(xi, xj), op_sub(yi, yj), op_sub(zi, zj)));
  return rewire_force_from_parts(r, mix_sigma(si, sj), mix_epsilon(ei, ej));
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

// Branch-free (selects only), so the CPU loops over it vectorise; kNeedH = false skips the
// curvature, which only the forces' backward needs.
template <bool kNeedH, typename T>
MOLCONF_HD LjPairTerms<T> lj_pair_terms(T r, T sigma_ij, T eps_ij) {
  LjPairTerms<T> out;
  const T rc = clamp_r(r);
  const T s6 = lj_s6(rc, sigma_ij);
  const bool live = r > static_cast<T>(kLjRMin);  // rc == r there
  out.energy = lj_energy_from_s6(eps_ij, s6);
  const T g = op_div(lj_force_from_s6(rc, eps_ij, s6), rc);
  out.g = live ? g : T(0);
  if constexpr (kNeedH) {
    const T r2 = op_mul(rc, rc);
    const T s12 = op_mul(s6, s6);
    const T num = op_mul(op_mul(static_cast<T>(24), eps_ij),
                         op_sub(op_mul(static_cast<T>(8), s6), op_mul(static_cast<T>(28), s12)));
    const T h = op_div(num, op_mul(r2, r2));
    out.h = live ? h : T(0);
  } else {
    out.h = T(0);
  }
  return out;
}

// ---- per row: top-K_i selection ------------------------------------------------------------

template <typename T>
MOLCONF_HD T max_finite();
template <>
MOLCONF_HD float max_finite<float>() {
  return 3.40282346638528859811704183484516925e+38F;
}
template <>
MOLCONF_HD double max_finite<double>() {
  return 1.79769313486231570814527423731704357e+308;
}

// Selection score of a masked pair force: |F| for a candidate that competes for a slot
// (finite and non-zero force), -1 otherwise. Written without isfinite (|F| <= max is false
// for inf and NaN) so CPU loops over it vectorise.
template <typename T>
MOLCONF_HD T rewire_score(T force) {
  const T a = op_abs(force);
  // '&' rather than '&&': no branch, so loops over rows vectorise.
  return ((a <= max_finite<T>()) & (a != T(0))) ? a : T(-1);
}
template <typename T>
MOLCONF_HD bool rewire_valid(T force) {
  return rewire_score(force) > T(0);
}

// Strict total order of the selection: larger |F| first, equal |F| -> lower column first.
// Both entries must be valid, so the scores compare without NaN surprises.
template <typename T>
MOLCONF_HD bool rewire_precedes(T score_a, int64_t col_a, T score_b, int64_t col_b) {
  return score_a > score_b || (score_a == score_b && col_a < col_b);
}

// Rank of column j among the valid entries of a row of masked forces (0 = strongest),
// counted only up to `limit` (callers only ask whether rank < K). The CUDA kernel's
// selection: every lane ranks its own columns against the whole row.
template <typename T>
MOLCONF_HD int64_t rewire_rank(const T* row_force, int64_t n, int64_t j, int64_t limit) {
  const T score_j = rewire_score(row_force[j]);
  int64_t rank = 0;
  for (int64_t l = 0; l < n && rank < limit; ++l) {
    const T score_l = rewire_score(row_force[l]);
    if (score_l > T(0) && rewire_precedes(score_l, l, score_j, j)) ++rank;
  }
  return rank;
}

// ---- per row: whole-row bodies of the CUDA kernels ------------------------------------------
//
// Each function handles the columns lane, lane + stride, ... of one row (row = b * n + i).
// The CUDA kernels call them with lane = thread index in the warp and stride = 32 and
// combine the lanes (warp sum / __syncwarp); the CPU runs the very same code with
// lane 0 / stride 1 (LJ ops) or replays all 32 lanes (the rewiring emulation op used by the
// tests), so the CPU test suite exercises what the GPU executes.

template <typename T>
struct RewireRowArgs {
  const T* pos;          // (B, n, 3)
  const bool* mask;      // (B, n)
  const bool* bond_adj;  // (B, n, n)
  const T* sigma;        // (B, n)
  const T* epsilon;      // (B, n)
  const int64_t* k;      // (B, n)
  bool* attr;            // (B, n, n) out
  bool* rep;             // (B, n, n) out
  T* force;              // (B, n, n) out, or nullptr
  int64_t n;
};

// Pass 1: masked pair forces F_ij (0 for non-candidates) of the lane's columns into the
// row buffer buf (n entries) and, if requested, the force output.
template <typename T>
MOLCONF_HD void rewire_row_forces(const RewireRowArgs<T>& a, int64_t row, T* buf, int64_t lane,
                                  int64_t stride) {
  const int64_t n = a.n, b = row / n, i = row - b * n;
  const T* Pb = a.pos + b * n * 3;
  const bool* Mb = a.mask + b * n;
  const bool* A_row = a.bond_adj + row * n;
  const T* Sb = a.sigma + b * n;
  const T* Eb = a.epsilon + b * n;
  const bool real_i = a.mask[row];
  const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2];
  const T si = Sb[i], ei = Eb[i];
  for (int64_t j = lane; j < n; j += stride) {
    const bool cand = real_i && Mb[j] && !A_row[j] && j != i;
    const T f = cand ? rewire_pair_force(xi, yi, zi, Pb[3 * j], Pb[3 * j + 1], Pb[3 * j + 2], si,
                                         Sb[j], ei, Eb[j])
                     : T(0);
    buf[j] = f;
    if (a.force != nullptr) a.force[row * n + j] = f;
  }
}

// Pass 2 (after every lane finished pass 1 for the row): keep the lane's columns ranked
// below K_i, split by the sign of the force.
template <typename T>
MOLCONF_HD void rewire_row_select(const RewireRowArgs<T>& a, int64_t row, const T* buf,
                                  int64_t lane, int64_t stride) {
  const int64_t n = a.n;
  const int64_t Ki = a.k[row];
  for (int64_t j = lane; j < n; j += stride) {
    const T f = buf[j];
    const bool keep = Ki > 0 && rewire_valid(f) && rewire_rank(buf, n, j, Ki) < Ki;
    a.attr[row * n + j] = keep && f < T(0);
    a.rep[row * n + j] = keep && f > T(0);
  }
}

template <typename T>
struct LjRowArgs {
  const T* pos;         // (B, n, 3)
  const bool* mask;     // (B, n)
  const T* sigma;       // (B, n)
  const T* epsilon;     // (B, n)
  const bool* exclude;  // (B, n, n), or nullptr
  int64_t n;
};

struct Sum4 {
  double e, x, y, z;
};

// Partial sums over the lane's columns of row i: Σ_j V_ij and the force Σ_j g_ij d_ij
// (d_ij = p_i - p_j) over active pairs (both real, i != j, not excluded). Accumulated in
// double: rows mix huge and tiny terms of both signs.
template <typename T>
MOLCONF_HD Sum4 lj_row_partial(const LjRowArgs<T>& a, int64_t row, int64_t lane, int64_t stride) {
  Sum4 acc{0.0, 0.0, 0.0, 0.0};
  const int64_t n = a.n, b = row / n, i = row - b * n;
  if (!a.mask[row]) return acc;
  const T* Pb = a.pos + b * n * 3;
  const bool* Mb = a.mask + b * n;
  const T* Sb = a.sigma + b * n;
  const T* Eb = a.epsilon + b * n;
  const bool* X_row = a.exclude != nullptr ? a.exclude + row * n : nullptr;
  const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2];
  const T si = Sb[i], ei = Eb[i];
  for (int64_t j = lane; j < n; j += stride) {
    if (!Mb[j] || j == i || (X_row != nullptr && X_row[j])) continue;
    const T dx = op_sub(xi, Pb[3 * j]), dy = op_sub(yi, Pb[3 * j + 1]),
            dz = op_sub(zi, Pb[3 * j + 2]);
    const T r = pair_distance(pair_r2(dx, dy, dz));
    const LjPairTerms<T> t = lj_pair_terms<false>(r, mix_sigma(si, Sb[j]), mix_epsilon(ei, Eb[j]));
    const double g = t.g;
    acc.e += t.energy;
    acc.x += g * dx;
    acc.y += g * dy;
    acc.z += g * dz;
  }
  return acc;
}

// Partial gradient of row k (columns lane, lane + stride, ...) for the LJ backward:
//   grad_k = gE_b dE/dp_k + Σ_i (∂F_i/∂p_k)^T gF_i
//   dE/dp_k = -½ Σ_j (a_kj + a_jk) g_kj d_kj
//   Σ_i (∂F_i/∂p_k)^T gF_i = Σ_j H_kj (a_kj gF_k - a_jk gF_j),  H_kj = g I + h d d^T
// a_kj = 1 for an active pair; a_kj and a_jk differ only for an asymmetric `exclude`.
// grad_energy (B,) and grad_forces (B, n, 3) may each be nullptr (zero). The e member of
// the result is unused.
template <typename T>
MOLCONF_HD Sum4 lj_backward_row_partial(const LjRowArgs<T>& a, const T* grad_energy,
                                        const T* grad_forces, int64_t row, int64_t lane,
                                        int64_t stride) {
  Sum4 acc{0.0, 0.0, 0.0, 0.0};
  const int64_t n = a.n, b = row / n, k = row - b * n;
  if (!a.mask[row] || (grad_energy == nullptr && grad_forces == nullptr)) return acc;
  const T* Pb = a.pos + b * n * 3;
  const bool* Mb = a.mask + b * n;
  const T* Sb = a.sigma + b * n;
  const T* Eb = a.epsilon + b * n;
  const bool* Xb = a.exclude != nullptr ? a.exclude + b * n * n : nullptr;
  const double ge = grad_energy != nullptr ? static_cast<double>(grad_energy[b]) : 0.0;
  const T* GFb = grad_forces != nullptr ? grad_forces + b * n * 3 : nullptr;
  const double gkx = GFb ? GFb[3 * k] : 0.0, gky = GFb ? GFb[3 * k + 1] : 0.0,
               gkz = GFb ? GFb[3 * k + 2] : 0.0;
  const T xk = Pb[3 * k], yk = Pb[3 * k + 1], zk = Pb[3 * k + 2];
  const T sk = Sb[k], ek = Eb[k];
  for (int64_t j = lane; j < n; j += stride) {
    if (!Mb[j] || j == k) continue;
    const double a_kj = (Xb != nullptr && Xb[k * n + j]) ? 0.0 : 1.0;
    const double a_jk = (Xb != nullptr && Xb[j * n + k]) ? 0.0 : 1.0;
    if (a_kj == 0.0 && a_jk == 0.0) continue;
    const T dx = op_sub(xk, Pb[3 * j]), dy = op_sub(yk, Pb[3 * j + 1]),
            dz = op_sub(zk, Pb[3 * j + 2]);
    const T r = pair_distance(pair_r2(dx, dy, dz));
    const LjPairTerms<T> t =
        GFb != nullptr ? lj_pair_terms<true>(r, mix_sigma(sk, Sb[j]), mix_epsilon(ek, Eb[j]))
                       : lj_pair_terms<false>(r, mix_sigma(sk, Sb[j]), mix_epsilon(ek, Eb[j]));
    const double g = t.g, h = t.h;
    if (g == 0.0 && h == 0.0) continue;  // r <= r_min: flat energy, no force
    const double ce = -0.5 * ge * (a_kj + a_jk) * g;
    acc.x += ce * dx;
    acc.y += ce * dy;
    acc.z += ce * dz;
    if (GFb != nullptr) {
      const double vx = a_kj * gkx - a_jk * GFb[3 * j];
      const double vy = a_kj * gky - a_jk * GFb[3 * j + 1];
      const double vz = a_kj * gkz - a_jk * GFb[3 * j + 2];
      const double hdv = h * (dx * vx + dy * vy + dz * vz);
      acc.x += g * vx + hdv * dx;
      acc.y += g * vy + hdv * dy;
      acc.z += g * vz + hdv * dz;
    }
  }
  return acc;
}

}  // namespace molconf
