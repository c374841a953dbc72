// CPU kernels of molconf's ops, parallel over the B*N rows (one row = one atom i and all
// its partners j). All per-pair arithmetic comes from lj_math.h, shared with the CUDA
// kernels. Memory: besides the outputs, each thread holds O(N) scratch for one row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "lj_math.h"
#include "ops.h"

namespace molconf {
namespace {

// Rows per task: enough pair work per chunk (~4k pairs) to amortise the scheduling.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)); }

// Below this K the CPU ranks each valid column directly (the CUDA kernel's method)
// instead of running nth_element; both give the same set as the order is strict.
constexpr int64_t kRankCountMaxK = 0;

template <typename T>
void rewire_rows(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& bond_adj,
                 const at::Tensor& sigma, const at::Tensor& epsilon, const at::Tensor& k,
                 at::Tensor& attr, at::Tensor& rep, at::Tensor* force) {
  const int64_t B = pos.size(0), N = pos.size(1);
  const T* P = pos.data_ptr<T>();          // (B, N, 3)
  const bool* M = mask.data_ptr<bool>();   // (B, N)
  const bool* A = bond_adj.data_ptr<bool>();  // (B, N, N)
  const T* S = sigma.data_ptr<T>();        // (B, N)
  const T* E = epsilon.data_ptr<T>();      // (B, N)
  const int64_t* K = k.data_ptr<int64_t>();  // (B, N)
  bool* AT = attr.data_ptr<bool>();        // (B, N, N)
  bool* RP = rep.data_ptr<bool>();         // (B, N, N)
  T* FO = force ? force->data_ptr<T>() : nullptr;  // (B, N, N) or none

  at::parallel_for(0, B * N, row_grain(N), [&](int64_t begin, int64_t end) {
    std::vector<T> fbuf(FO ? 0 : N);   // row of masked forces when not an output
    std::vector<int64_t> cols(N);      // valid columns of the row
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / N, i = row - b * N;
      bool* attr_row = AT + row * N;
      bool* rep_row = RP + row * N;
      T* f_row = FO ? FO + row * N : fbuf.data();
      std::memset(attr_row, 0, N * sizeof(bool));
      std::memset(rep_row, 0, N * sizeof(bool));
      if (!M[row]) {
        if (FO) std::fill(f_row, f_row + N, T(0));
        continue;
      }
      const T* Pb = P + b * N * 3;
      const bool* Mb = M + b * N;
      const bool* A_row = A + row * N;
      const T* Sb = S + b * N;
      const T* Eb = E + b * N;
      const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2];
      const T si = Sb[i], ei = Eb[i];
      // Pass 1, branch-free so the compiler can vectorise it: F_ij for every column.
      for (int64_t j = 0; j < N; ++j) {
        f_row[j] = rewire_pair_force(xi, yi, zi, Pb[3 * j], Pb[3 * j + 1], Pb[3 * j + 2], si,
                                     Sb[j], ei, Eb[j]);
      }
      // Pass 2: zero the non-candidates (padding, bonded, self), list the valid columns.
      int64_t n_valid = 0;
      for (int64_t j = 0; j < N; ++j) {
        const bool cand = Mb[j] && !A_row[j] && j != i;
        const T f = cand ? f_row[j] : T(0);
        f_row[j] = f;
        if (rewire_valid(f)) cols[n_valid++] = j;
      }
      const int64_t Ki = K[row];
      if (Ki <= 0 || n_valid == 0) continue;
      int64_t n_keep = n_valid;
      if (Ki < n_valid) {
        n_keep = Ki;
        if (Ki <= kRankCountMaxK) {
          int64_t w = 0;
          for (int64_t t = 0; t < n_valid; ++t) {
            const int64_t j = cols[t];
            if (rewire_rank(f_row, N, j, Ki) < Ki) cols[w++] = j;
          }
        } else {
          // Partial selection: the first Ki entries become the Ki strongest (any order).
          std::nth_element(cols.begin(), cols.begin() + Ki, cols.begin() + n_valid,
                           [f_row](int64_t a, int64_t c) {
                             return rewire_precedes(op_abs(f_row[a]), a, op_abs(f_row[c]), c);
                           });
        }
      }
      for (int64_t t = 0; t < n_keep; ++t) {
        const int64_t j = cols[t];
        attr_row[j] = f_row[j] < T(0);
        rep_row[j] = f_row[j] > T(0);
      }
    }
  });
}

template <typename T>
void lj_rows(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
             const at::Tensor& epsilon, const at::Tensor* exclude, at::Tensor& row_energy,
             at::Tensor& forces) {
  const int64_t B = pos.size(0), N = pos.size(1);
  const T* P = pos.data_ptr<T>();
  const bool* M = mask.data_ptr<bool>();
  const T* S = sigma.data_ptr<T>();
  const T* E = epsilon.data_ptr<T>();
  const bool* X = exclude ? exclude->data_ptr<bool>() : nullptr;  // (B, N, N) or none
  T* RE = row_energy.data_ptr<T>();  // (B, N)
  T* FO = forces.data_ptr<T>();      // (B, N, 3)

  at::parallel_for(0, B * N, row_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / N, i = row - b * N;
      if (!M[row]) {
        RE[row] = T(0);
        FO[3 * row] = FO[3 * row + 1] = FO[3 * row + 2] = T(0);
        continue;
      }
      const T* Pb = P + b * N * 3;
      const bool* Mb = M + b * N;
      const T* Sb = S + b * N;
      const T* Eb = E + b * N;
      const bool* X_row = X ? X + row * N : nullptr;
      const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2];
      const T si = Sb[i], ei = Eb[i];
      // Accumulate in double: per-row sums of up to N terms of mixed sign.
      double e = 0, fx = 0, fy = 0, fz = 0;
      for (int64_t j = 0; j < N; ++j) {
        if (!Mb[j] || j == i || (X_row && X_row[j])) continue;
        const T dx = op_sub(xi, Pb[3 * j]), dy = op_sub(yi, Pb[3 * j + 1]),
                dz = op_sub(zi, Pb[3 * j + 2]);
        const T r = pair_distance(pair_r2(dx, dy, dz));
        const LjPairTerms<T> t =
            lj_pair_terms(r, mix_sigma(si, Sb[j]), mix_epsilon(ei, Eb[j]), false);
        e += t.energy;
        fx += t.g * dx;
        fy += t.g * dy;
        fz += t.g * dz;
      }
      RE[row] = static_cast<T>(e);
      FO[3 * row] = static_cast<T>(fx);
      FO[3 * row + 1] = static_cast<T>(fy);
      FO[3 * row + 2] = static_cast<T>(fz);
    }
  });
}

// grad_pos_k = gE_b dE/dp_k + Σ_i (∂F_i/∂p_k)^T gF_i, one row k at a time:
//   dE/dp_k             = -½ Σ_j (a_kj + a_jk) g_kj d_kj
//   Σ_i (∂F_i/∂p_k)^T gF_i = Σ_j H_kj (a_kj gF_k - a_jk gF_j),  H = g I + h d d^T
// with a_kj = 1 when pair (k, j) is active (both real, k != j, not excluded); a_kj and
// a_jk differ only for an asymmetric `exclude`. Each row writes only its own gradient,
// so no atomics are needed.
template <typename T>
void lj_backward_rows(const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                      const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                      const at::Tensor& epsilon, const at::Tensor* exclude,
                      at::Tensor& grad_pos) {
  const int64_t B = pos.size(0), N = pos.size(1);
  const T* P = pos.data_ptr<T>();
  const bool* M = mask.data_ptr<bool>();
  const T* S = sigma.data_ptr<T>();
  const T* E = epsilon.data_ptr<T>();
  const bool* X = exclude ? exclude->data_ptr<bool>() : nullptr;
  const T* GE = grad_energy ? grad_energy->data_ptr<T>() : nullptr;  // (B,)
  const T* GF = grad_forces ? grad_forces->data_ptr<T>() : nullptr;  // (B, N, 3)
  T* G = grad_pos.data_ptr<T>();                                     // (B, N, 3)
  const bool need_h = GF != nullptr;

  at::parallel_for(0, B * N, row_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
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
        for (int64_t j = 0; j < N; ++j) {
          if (!Mb[j] || j == k) continue;
          const double a_kj = (Xb && Xb[k * N + j]) ? 0.0 : 1.0;
          const double a_jk = (Xb && Xb[j * N + k]) ? 0.0 : 1.0;
          if (a_kj == 0.0 && a_jk == 0.0) continue;
          const T dx = op_sub(xk, Pb[3 * j]), dy = op_sub(yk, Pb[3 * j + 1]),
                  dz = op_sub(zk, Pb[3 * j + 2]);
          const T r = pair_distance(pair_r2(dx, dy, dz));
          const LjPairTerms<T> t =
              lj_pair_terms(r, mix_sigma(sk, Sb[j]), mix_epsilon(ek, Eb[j]), need_h);
          const double g = t.g, h = t.h;
          if (g == 0.0 && h == 0.0) continue;
          // energy part
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
      G[3 * row] = static_cast<T>(gx);
      G[3 * row + 1] = static_cast<T>(gy);
      G[3 * row + 2] = static_cast<T>(gz);
    }
  });
}

}  // namespace

void rewire_by_force_cpu(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& bond_adj,
                         const at::Tensor& sigma, const at::Tensor& epsilon, const at::Tensor& k,
                         at::Tensor& attr, at::Tensor& rep, at::Tensor* force) {
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::rewire_by_force (CPU)", [&] {
    rewire_rows<scalar_t>(pos, mask, bond_adj, sigma, epsilon, k, attr, rep, force);
  });
}

void lj_energy_forces_cpu(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                          const at::Tensor& epsilon, const at::Tensor* exclude,
                          at::Tensor& row_energy, at::Tensor& forces) {
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::lj_energy_forces (CPU)", [&] {
    lj_rows<scalar_t>(pos, mask, sigma, epsilon, exclude, row_energy, forces);
  });
}

void lj_energy_forces_backward_cpu(const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                                   const at::Tensor& pos, const at::Tensor& mask,
                                   const at::Tensor& sigma, const at::Tensor& epsilon,
                                   const at::Tensor* exclude, at::Tensor& grad_pos) {
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::lj_energy_forces_backward (CPU)", [&] {
    lj_backward_rows<scalar_t>(grad_energy, grad_forces, pos, mask, sigma, epsilon, exclude,
                               grad_pos);
  });
}

}  // namespace molconf
