// CPU kernels of molconf's ops, parallel over the B*N rows (row = atom i against all j)
// with at::parallel_for. All per-pair arithmetic comes from lj_math.h, shared with the
// CUDA kernels. Memory: besides the outputs, each thread holds O(block * N) scratch.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lj_math.h"
#include "ops.h"

// MKL VML square roots (LP64 interface, as ATen calls them). Weak references: null when
// this torch has no MKL, and then std::sqrt is what torch.sqrt computes too.
extern "C" {
void vmsSqrt(int n, const float* a, float* r, long long mode) __attribute__((weak));
void vmdSqrt(int n, const double* a, double* r, long long mode) __attribute__((weak));
}

namespace molconf {
namespace {

// Rows per task: enough pair work per chunk (~4k pairs) to amortise the scheduling.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)); }

// ---- square roots exactly as torch.sqrt takes them on the CPU ---------------------------
//
// The reference's forces go through torch.sqrt twice (r and sqrt(eps_i eps_j)). PyTorch
// builds with MKL compute torch.sqrt with MKL's VML (vmsSqrt/vmdSqrt, high-accuracy mode),
// which is NOT always correctly rounded (on an AVX-512 machine ~20% of float32 and ~1% of
// float64 results differ from std::sqrt by an ulp). Calling the same routine with the same
// mode keeps the forces bit-identical, so the top-K selection cannot flip near-ties.
// (On the GPU torch.sqrt is correctly rounded, as is op_sqrt in lj_math.h.)

// VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, the mode ATen passes (ATen/cpu/vml.h).
constexpr long long kVmlMode = 0x00000002LL | 0x00140000LL | 0x00000100LL;

void torch_like_sqrt(const float* in, float* out, int64_t n) {
  if (vmsSqrt != nullptr) {
    vmsSqrt(static_cast<int>(n), in, out, kVmlMode);
  } else {
    for (int64_t t = 0; t < n; ++t) out[t] = std::sqrt(in[t]);
  }
}
void torch_like_sqrt(const double* in, double* out, int64_t n) {
  if (vmdSqrt != nullptr) {
    vmdSqrt(static_cast<int>(n), in, out, kVmlMode);
  } else {
    for (int64_t t = 0; t < n; ++t) out[t] = std::sqrt(in[t]);
  }
}

// ---- top-K_i selection ------------------------------------------------------------------
//
// K_i is usually small (max degree - degree: a handful), so one pass that keeps the best
// K in a sorted array beats sorting or nth_element; larger K use nth_element. Both produce
// the set defined by rewire_precedes (a strict order), hence the same edges as the
// reference's stable sort and the CUDA kernel's rank counting.
constexpr int64_t kInsertMaxK = 16;

// Best min(Ki, #valid) columns of a row of selection scores (rewire_score: |F| or -1),
// written to out; returns how many. Columns are visited in increasing order, so on equal
// scores the column already kept (lower index) stays ahead, as rewire_precedes requires.
template <typename T>
int64_t select_by_insertion(const T* score, int64_t n, int64_t Ki, int64_t* out) {
  constexpr int64_t kChunk = 16;
  T best[kInsertMaxK];
  int64_t cnt = 0;
  T threshold = T(0);  // valid scores are > 0; once full, the K-th best score
  for (int64_t jb = 0; jb < n; jb += kChunk) {
    const int64_t je = std::min(jb + kChunk, n);
    // Most chunks hold nothing above the threshold once K are kept: test a whole chunk
    // with one vectorised comparison before walking it element by element.
    bool any = false;
    for (int64_t j = jb; j < je; ++j) any |= score[j] > threshold;
    if (!any) continue;
    for (int64_t j = jb; j < je; ++j) {
      const T s = score[j];
      if (!(s > threshold)) continue;
      int64_t pos = cnt < Ki ? cnt++ : Ki - 1;  // when full, the last one drops out
      while (pos > 0 && s > best[pos - 1]) {   // strict: equal scores keep index order
        best[pos] = best[pos - 1];
        out[pos] = out[pos - 1];
        --pos;
      }
      best[pos] = s;
      out[pos] = j;
      if (cnt == Ki) threshold = best[Ki - 1];
    }
  }
  return cnt;
}

template <typename T>
int64_t select_by_nth_element(const T* score, int64_t n, int64_t Ki, int64_t* cols) {
  int64_t n_valid = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (score[j] > T(0)) cols[n_valid++] = j;
  }
  if (Ki >= n_valid) return n_valid;
  // Partial selection: the first Ki entries become the Ki strongest (in any order).
  std::nth_element(cols, cols + Ki, cols + n_valid, [score](int64_t a, int64_t c) {
    return rewire_precedes(score[a], a, score[c], c);
  });
  return Ki;
}

// Masks a row of forces to the candidates (real, not bonded; the caller clears self) and
// scores them. Written so GCC vectorises both loops: restrict pointers, bytes compared as
// integers (mask > bond <=> mask && !bond), no index comparison, one select per loop.
template <typename T>
void mask_and_score(T* __restrict__ f_row, T* __restrict__ score, const bool* mask_row,
                    const bool* bond_row, int64_t n) {
  const uint8_t* __restrict__ m = reinterpret_cast<const uint8_t*>(mask_row);
  const uint8_t* __restrict__ a = reinterpret_cast<const uint8_t*>(bond_row);
  for (int64_t j = 0; j < n; ++j) {
    const T f = f_row[j];
    f_row[j] = (m[j] > a[j]) ? f : T(0);
  }
  for (int64_t j = 0; j < n; ++j) score[j] = rewire_score(f_row[j]);
}

// Pairs per block of rows whose square roots are taken in one call (amortises the call,
// keeps the block buffers in L1/L2).
constexpr int64_t kBlockPairs = 4096;

template <typename T>
void rewire_rows(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& bond_adj,
                 const at::Tensor& sigma, const at::Tensor& epsilon, const at::Tensor& k,
                 at::Tensor& attr, at::Tensor& rep, at::Tensor* force) {
  const int64_t B = pos.size(0), N = pos.size(1);
  const T* P = pos.data_ptr<T>();             // (B, N, 3)
  const bool* M = mask.data_ptr<bool>();      // (B, N)
  const bool* A = bond_adj.data_ptr<bool>();  // (B, N, N)
  const T* S = sigma.data_ptr<T>();           // (B, N)
  const T* E = epsilon.data_ptr<T>();         // (B, N)
  const int64_t* K = k.data_ptr<int64_t>();   // (B, N)
  bool* AT = attr.data_ptr<bool>();           // (B, N, N)
  bool* RP = rep.data_ptr<bool>();            // (B, N, N)
  T* FO = force ? force->data_ptr<T>() : nullptr;  // (B, N, N) or none
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockPairs / std::max<int64_t>(N, 1));

  at::parallel_for(0, B * N, row_grain(N), [&](int64_t begin, int64_t end) {
    // Per-thread scratch: r^2, r, eps_i*eps_j, eps_ij of a block of rows; one row of
    // forces (when not an output) and scores; selected columns.
    const int64_t cap = std::min(rows_per_block, end - begin) * N;
    std::vector<T> r2b(cap), rb(cap), e2b(cap), eb(cap);
    std::vector<T> fbuf(FO ? 0 : N), score(N);
    std::vector<int64_t> cols(N);
    for (int64_t blk = begin; blk < end; blk += rows_per_block) {
      const int64_t nb = std::min(rows_per_block, end - blk);
      // Stage 1 (vectorised): r^2 and eps_i*eps_j of every pair of the block's real rows.
      for (int64_t t = 0; t < nb; ++t) {
        const int64_t row = blk + t;
        if (!M[row]) continue;
        const int64_t b = row / N, i = row - b * N;
        const T* Pb = P + b * N * 3;
        const T* Eb = E + b * N;
        const T xi = Pb[3 * i], yi = Pb[3 * i + 1], zi = Pb[3 * i + 2], ei = Eb[i];
        T* r2_row = r2b.data() + t * N;
        T* e2_row = e2b.data() + t * N;
        for (int64_t j = 0; j < N; ++j) {
          r2_row[j] = pair_r2(op_sub(xi, Pb[3 * j]), op_sub(yi, Pb[3 * j + 1]),
                              op_sub(zi, Pb[3 * j + 2]));
          e2_row[j] = mix_epsilon_squared(ei, Eb[j]);
        }
      }
      // Stage 2: both square roots of the block in two calls (rows of padding atoms hold
      // stale values whose roots are never read).
      torch_like_sqrt(r2b.data(), rb.data(), nb * N);
      torch_like_sqrt(e2b.data(), eb.data(), nb * N);
      // Stage 3 per row: forces, candidate mask, top-K_i.
      for (int64_t t = 0; t < nb; ++t) {
        const int64_t row = blk + t;
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
        const bool* Mb = M + b * N;
        const bool* A_row = A + row * N;
        const T* Sb = S + b * N;
        const T si = Sb[i];
        const T* r2_row = r2b.data() + t * N;
        const T* r_row = rb.data() + t * N;
        const T* e_row = eb.data() + t * N;
        // Branch-free loops (vectorised): F_ij for every column, then the candidate mask
        // (padding, bonded, self -> 0) and the selection score.
        for (int64_t j = 0; j < N; ++j) {
          const T r = pair_distance_from_sqrt(r2_row[j], r_row[j]);
          f_row[j] = rewire_force_from_parts(r, mix_sigma(si, Sb[j]), e_row[j]);
        }
        mask_and_score(f_row, score.data(), Mb, A_row, N);
        // Self is never a candidate; cleared here because a j != i test in the loop above
        // would keep GCC from vectorising it.
        f_row[i] = T(0);
        score[i] = T(-1);
        const int64_t Ki = K[row];
        if (Ki <= 0) continue;
        const int64_t n_keep = Ki <= kInsertMaxK
                                   ? select_by_insertion(score.data(), N, Ki, cols.data())
                                   : select_by_nth_element(score.data(), N, Ki, cols.data());
        for (int64_t q = 0; q < n_keep; ++q) {
          const int64_t j = cols[q];
          attr_row[j] = f_row[j] < T(0);
          rep_row[j] = f_row[j] > T(0);
        }
      }
    }
  });
}

// Replays the CUDA rewiring kernel on the CPU: for each row, 32 "lanes" run pass 1
// (rewire_row_forces), then 32 lanes run pass 2 (rewire_row_select), exactly the calls
// and column split a warp makes on the GPU. Serial and slow; for tests only.
template <typename T>
void rewire_emulate_rows(const at::Tensor& pos, const at::Tensor& mask,
                         const at::Tensor& bond_adj, const at::Tensor& sigma,
                         const at::Tensor& epsilon, const at::Tensor& k, at::Tensor& attr,
                         at::Tensor& rep, at::Tensor* force) {
  constexpr int64_t kLanes = 32;
  const int64_t B = pos.size(0), N = pos.size(1);
  RewireRowArgs<T> a{pos.data_ptr<T>(),     mask.data_ptr<bool>(),  bond_adj.data_ptr<bool>(),
                     sigma.data_ptr<T>(),   epsilon.data_ptr<T>(),  k.data_ptr<int64_t>(),
                     attr.data_ptr<bool>(), rep.data_ptr<bool>(),
                     force ? force->data_ptr<T>() : nullptr, N};
  std::vector<T> buf(N);
  for (int64_t row = 0; row < B * N; ++row) {
    for (int64_t lane = 0; lane < kLanes; ++lane) rewire_row_forces(a, row, buf.data(), lane, kLanes);
    for (int64_t lane = 0; lane < kLanes; ++lane) rewire_row_select(a, row, buf.data(), lane, kLanes);
  }
}

// ---- Lennard-Jones energy / forces --------------------------------------------------------
//
// Per row the CPU first writes which partners are active (real, not excluded, not self)
// into a byte buffer, then runs one branch-free loop over all partners: lj_pair_terms
// (lj_math.h, shared with the CUDA kernels) per pair, contributions of inactive pairs
// selected away (not multiplied by 0: padding may hold NaN positions). `omp simd
// reduction` lets GCC vectorise the loop including its sums, kept in the input precision
// per vector lane (like the reference's float32 sums; double lanes would halve the
// vector width). Results match the reference to rounding, not bit for bit.

// One molecule in structure-of-arrays layout, zero-padded to a multiple of kLanePad
// entries: contiguous loads and no scalar remainder loop for the vectorised row loops
// (the padding is inactive, and finite, so it adds nothing).
constexpr int64_t kLanePad = 64;

template <typename T>
struct MolSoA {
  int64_t b = -1, n = 0, np = 0;
  std::vector<T> x, y, z, s, e, gx, gy, gz;  // gx..gz: grad_forces (backward only)
  std::vector<uint8_t> m;

  explicit MolSoA(int64_t n_atoms) : n(n_atoms), np((n_atoms + kLanePad - 1) / kLanePad * kLanePad) {
    for (auto* v : {&x, &y, &z, &s, &e, &gx, &gy, &gz}) v->assign(np, T(0));
    m.assign(np, 0);
  }
  // P (B, N, 3), M (B, N), S/E (B, N), GF (B, N, 3) or nullptr; loads molecule bb.
  void load(int64_t bb, const T* P, const uint8_t* M, const T* S, const T* E, const T* GF) {
    if (bb == b) return;
    b = bb;
    const T* Pb = P + b * n * 3;
    for (int64_t j = 0; j < n; ++j) {
      x[j] = Pb[3 * j];
      y[j] = Pb[3 * j + 1];
      z[j] = Pb[3 * j + 2];
    }
    std::memcpy(m.data(), M + b * n, n);
    std::memcpy(s.data(), S + b * n, n * sizeof(T));
    std::memcpy(e.data(), E + b * n, n * sizeof(T));
    if (GF != nullptr) {
      const T* Gb = GF + b * n * 3;
      for (int64_t j = 0; j < n; ++j) {
        gx[j] = Gb[3 * j];
        gy[j] = Gb[3 * j + 1];
        gz[j] = Gb[3 * j + 2];
      }
    }
  }
};

template <typename T>
Sum4 lj_row_cpu(const MolSoA<T>& mol, const uint8_t* __restrict__ act, int64_t i) {
  const T* __restrict__ X = mol.x.data();
  const T* __restrict__ Y = mol.y.data();
  const T* __restrict__ Z = mol.z.data();
  const T* __restrict__ S = mol.s.data();
  const T* __restrict__ E = mol.e.data();
  const T xi = X[i], yi = Y[i], zi = Z[i], si = S[i], ei = E[i];
  T e = 0, x = 0, y = 0, z = 0;  // per-lane sums in T keep the loop at full vector width
#pragma omp simd reduction(+ : e, x, y, z)
  for (int64_t j = 0; j < mol.np; ++j) {
    const T dx = op_sub(xi, X[j]), dy = op_sub(yi, Y[j]), dz = op_sub(zi, Z[j]);
    const T r = pair_distance(pair_r2(dx, dy, dz));
    const LjPairTerms<T> t = lj_pair_terms<false>(r, mix_sigma(si, S[j]), mix_epsilon(ei, E[j]));
    const bool on = act[j] != 0;
    e += on ? t.energy : T(0);
    x += on ? t.g * dx : T(0);
    y += on ? t.g * dy : T(0);
    z += on ? t.g * dz : T(0);
  }
  return Sum4{e, x, y, z};
}

// One row k of the backward (formula: lj_backward_row_partial in lj_math.h); a_kj and a_jk
// are the activity bytes of (k, j) and (j, k).
template <bool kNeedH, typename T>
Sum4 lj_backward_row_cpu(const MolSoA<T>& mol, const uint8_t* __restrict__ a_kj,
                         const uint8_t* __restrict__ a_jk, double ge, int64_t k) {
  const T* __restrict__ X = mol.x.data();
  const T* __restrict__ Y = mol.y.data();
  const T* __restrict__ Z = mol.z.data();
  const T* __restrict__ S = mol.s.data();
  const T* __restrict__ E = mol.e.data();
  const T* __restrict__ GX = mol.gx.data();
  const T* __restrict__ GY = mol.gy.data();
  const T* __restrict__ GZ = mol.gz.data();
  const T xk = X[k], yk = Y[k], zk = Z[k], sk = S[k], ek = E[k];
  const T gkx = GX[k], gky = GY[k], gkz = GZ[k];
  const T half_ge = static_cast<T>(-0.5 * ge);
  T x = 0, y = 0, z = 0;
#pragma omp simd reduction(+ : x, y, z)
  for (int64_t j = 0; j < mol.np; ++j) {
    const T dx = op_sub(xk, X[j]), dy = op_sub(yk, Y[j]), dz = op_sub(zk, Z[j]);
    const T r = pair_distance(pair_r2(dx, dy, dz));
    const LjPairTerms<T> t = lj_pair_terms<kNeedH>(r, mix_sigma(sk, S[j]), mix_epsilon(ek, E[j]));
    const T akj = a_kj[j], ajk = a_jk[j];
    const bool on = (a_kj[j] | a_jk[j]) != 0;
    const T g = t.g;
    const T ce = half_ge * (akj + ajk) * g;
    T cx = ce * dx, cy = ce * dy, cz = ce * dz;
    if constexpr (kNeedH) {
      const T vx = akj * gkx - ajk * GX[j];
      const T vy = akj * gky - ajk * GY[j];
      const T vz = akj * gkz - ajk * GZ[j];
      const T hdv = t.h * (dx * vx + dy * vy + dz * vz);
      cx += g * vx + hdv * dx;
      cy += g * vy + hdv * dy;
      cz += g * vz + hdv * dz;
    }
    x += on ? cx : T(0);
    y += on ? cy : T(0);
    z += on ? cz : T(0);
  }
  return Sum4{0.0, x, y, z};
}

template <typename T>
void lj_rows(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
             const at::Tensor& epsilon, const at::Tensor* exclude, at::Tensor& row_energy,
             at::Tensor& forces) {
  const int64_t B = pos.size(0), N = pos.size(1);
  const T* P = pos.data_ptr<T>();                                              // (B, N, 3)
  const uint8_t* M = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());  // (B, N)
  const T* S = sigma.data_ptr<T>();                                            // (B, N)
  const T* E = epsilon.data_ptr<T>();                                          // (B, N)
  const uint8_t* X =
      exclude ? reinterpret_cast<const uint8_t*>(exclude->data_ptr<bool>()) : nullptr;
  T* RE = row_energy.data_ptr<T>();  // (B, N)
  T* FO = forces.data_ptr<T>();      // (B, N, 3)
  at::parallel_for(0, B * N, row_grain(N), [&](int64_t begin, int64_t end) {
    MolSoA<T> mol(N);
    std::vector<uint8_t> act(mol.np, 0);  // tail beyond N stays 0
    for (int64_t row = begin; row < end; ++row) {
      Sum4 s{0.0, 0.0, 0.0, 0.0};
      if (M[row]) {
        const int64_t b = row / N, i = row - b * N;
        mol.load(b, P, M, S, E, nullptr);
        if (X) {
          const uint8_t* X_row = X + row * N;
          for (int64_t j = 0; j < N; ++j) act[j] = mol.m[j] > X_row[j];
        } else {
          std::memcpy(act.data(), mol.m.data(), N);
        }
        act[i] = 0;
        s = lj_row_cpu(mol, act.data(), i);
      }
      RE[row] = static_cast<T>(s.e);
      FO[3 * row] = static_cast<T>(s.x);
      FO[3 * row + 1] = static_cast<T>(s.y);
      FO[3 * row + 2] = static_cast<T>(s.z);
    }
  });
}

template <typename T>
void lj_backward_rows(const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                      const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                      const at::Tensor& epsilon, const at::Tensor* exclude,
                      at::Tensor& grad_pos) {
  const int64_t B = pos.size(0), N = pos.size(1);
  const T* P = pos.data_ptr<T>();
  const uint8_t* M = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  const T* S = sigma.data_ptr<T>();
  const T* E = epsilon.data_ptr<T>();
  const uint8_t* X =
      exclude ? reinterpret_cast<const uint8_t*>(exclude->data_ptr<bool>()) : nullptr;
  const T* GE = grad_energy ? grad_energy->data_ptr<T>() : nullptr;  // (B,)
  const T* GF = grad_forces ? grad_forces->data_ptr<T>() : nullptr;  // (B, N, 3)
  T* G = grad_pos.data_ptr<T>();                                     // (B, N, 3)
  at::parallel_for(0, B * N, row_grain(N), [&](int64_t begin, int64_t end) {
    MolSoA<T> mol(N);
    std::vector<uint8_t> a_kj(mol.np, 0), a_jk(mol.np, 0);
    for (int64_t row = begin; row < end; ++row) {
      Sum4 s{0.0, 0.0, 0.0, 0.0};
      if (M[row] && (GE || GF)) {
        const int64_t b = row / N, k = row - b * N;
        mol.load(b, P, M, S, E, GF);
        if (X) {
          const uint8_t* Xb = X + b * N * N;
          for (int64_t j = 0; j < N; ++j) a_kj[j] = mol.m[j] > Xb[k * N + j];
          for (int64_t j = 0; j < N; ++j) a_jk[j] = mol.m[j] > Xb[j * N + k];  // column k
        } else {
          std::memcpy(a_kj.data(), mol.m.data(), N);
          std::memcpy(a_jk.data(), mol.m.data(), N);
        }
        a_kj[k] = a_jk[k] = 0;
        const double ge = GE ? static_cast<double>(GE[b]) : 0.0;
        s = GF ? lj_backward_row_cpu<true>(mol, a_kj.data(), a_jk.data(), ge, k)
               : lj_backward_row_cpu<false>(mol, a_kj.data(), a_jk.data(), ge, k);
      }
      G[3 * row] = static_cast<T>(s.x);
      G[3 * row + 1] = static_cast<T>(s.y);
      G[3 * row + 2] = static_cast<T>(s.z);
    }
  });
}

// Replays the CUDA LJ kernels on the CPU: 32 lanes run lj_row_partial /
// lj_backward_row_partial (lj_math.h) on their columns, and the lane sums are combined in
// the order of the warp's __shfl_down_sync tree. Serial; for tests only.
template <typename T>
void lj_emulate_rows(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                     const at::Tensor& epsilon, const at::Tensor* exclude,
                     const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                     at::Tensor& row_energy, at::Tensor& forces, at::Tensor& grad_pos) {
  constexpr int kLanes = 32;
  const int64_t B = pos.size(0), N = pos.size(1);
  const LjRowArgs<T> a{pos.data_ptr<T>(), mask.data_ptr<bool>(), sigma.data_ptr<T>(),
                       epsilon.data_ptr<T>(), exclude ? exclude->data_ptr<bool>() : nullptr,
                       N};
  const T* GE = grad_energy ? grad_energy->data_ptr<T>() : nullptr;
  const T* GF = grad_forces ? grad_forces->data_ptr<T>() : nullptr;
  T* RE = row_energy.data_ptr<T>();
  T* FO = forces.data_ptr<T>();
  T* G = grad_pos.data_ptr<T>();
  auto warp_reduce = [](Sum4* v) {  // lane 0 ends up with the warp_sum of every member
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {
      for (int l = 0; l < offset; ++l) {
        v[l].e += v[l + offset].e;
        v[l].x += v[l + offset].x;
        v[l].y += v[l + offset].y;
        v[l].z += v[l + offset].z;
      }
    }
    return v[0];
  };
  Sum4 lanes[kLanes];
  for (int64_t row = 0; row < B * N; ++row) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = lj_row_partial(a, row, l, kLanes);
    const Sum4 f = warp_reduce(lanes);
    RE[row] = static_cast<T>(f.e);
    FO[3 * row] = static_cast<T>(f.x);
    FO[3 * row + 1] = static_cast<T>(f.y);
    FO[3 * row + 2] = static_cast<T>(f.z);
    for (int l = 0; l < kLanes; ++l) lanes[l] = lj_backward_row_partial(a, GE, GF, row, l, kLanes);
    const Sum4 g = warp_reduce(lanes);
    G[3 * row] = static_cast<T>(g.x);
    G[3 * row + 1] = static_cast<T>(g.y);
    G[3 * row + 2] = static_cast<T>(g.z);
  }
}

}  // namespace

void rewire_by_force_cpu(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& bond_adj,
                         const at::Tensor& sigma, const at::Tensor& epsilon, const at::Tensor& k,
                         at::Tensor& attr, at::Tensor& rep, at::Tensor* force) {
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::rewire_by_force (CPU)", [&] {
    rewire_rows<scalar_t>(pos, mask, bond_adj, sigma, epsilon, k, attr, rep, force);
  });
}

void rewire_by_force_cuda_emulation(const at::Tensor& pos, const at::Tensor& mask,
                                    const at::Tensor& bond_adj, const at::Tensor& sigma,
                                    const at::Tensor& epsilon, const at::Tensor& k,
                                    at::Tensor& attr, at::Tensor& rep, at::Tensor* force) {
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::_rewire_by_force_cuda_emulation", [&] {
    rewire_emulate_rows<scalar_t>(pos, mask, bond_adj, sigma, epsilon, k, attr, rep, force);
  });
}

void lj_energy_forces_cuda_emulation(const at::Tensor& pos, const at::Tensor& mask,
                                     const at::Tensor& sigma, const at::Tensor& epsilon,
                                     const at::Tensor* exclude, const at::Tensor* grad_energy,
                                     const at::Tensor* grad_forces, at::Tensor& row_energy,
                                     at::Tensor& forces, at::Tensor& grad_pos) {
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "molconf::_lj_energy_forces_cuda_emulation", [&] {
    lj_emulate_rows<scalar_t>(pos, mask, sigma, epsilon, exclude, grad_energy, grad_forces,
                              row_energy, forces, grad_pos);
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
