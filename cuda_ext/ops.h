// Host-side declarations of molconf's kernels. register.cpp validates inputs, makes them
// contiguous and allocates the outputs; the functions below only fill them.
//
// Shapes (B molecules, N atoms incl. padding):
//   pos (B, N, 3) float32/float64; mask (B, N) bool; bond_adj / exclude (B, N, N) bool;
//   sigma, epsilon (B, N) same dtype as pos; k (B, N) int64.
#pragma once

#include <ATen/core/Tensor.h>

namespace molconf {

// attr, rep: (B, N, N) bool; force: (B, N, N) or nullptr when not requested.
void rewire_by_force_cpu(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& bond_adj,
                         const at::Tensor& sigma, const at::Tensor& epsilon, const at::Tensor& k,
                         at::Tensor& attr, at::Tensor& rep, at::Tensor* force);

// The CUDA rewiring kernel's per-row code (lj_math.h) replayed serially on the CPU, lane
// by lane; same contract as rewire_by_force_cpu. For tests: it lets CPU-only machines check
// the GPU's selection logic and its correctly rounded square roots.
void rewire_by_force_cuda_emulation(const at::Tensor& pos, const at::Tensor& mask,
                                    const at::Tensor& bond_adj, const at::Tensor& sigma,
                                    const at::Tensor& epsilon, const at::Tensor& k,
                                    at::Tensor& attr, at::Tensor& rep, at::Tensor* force);

// The CUDA LJ kernels' per-row code replayed on the CPU (32 lanes, warp-tree sums): the
// forward into row_energy (B, N) and forces (B, N, 3), and the backward for the given
// output gradients (each may be nullptr) into grad_pos (B, N, 3). For tests.
void lj_energy_forces_cuda_emulation(const at::Tensor& pos, const at::Tensor& mask,
                                     const at::Tensor& sigma, const at::Tensor& epsilon,
                                     const at::Tensor* exclude, const at::Tensor* grad_energy,
                                     const at::Tensor* grad_forces, at::Tensor& row_energy,
                                     at::Tensor& forces, at::Tensor& grad_pos);

// row_energy: (B, N), Σ_j V_ij for each row i (the caller sums the rows of a molecule
// and halves, as every pair appears twice). forces: (B, N, 3). exclude may be nullptr.
void lj_energy_forces_cpu(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                          const at::Tensor& epsilon, const at::Tensor* exclude,
                          at::Tensor& row_energy, at::Tensor& forces);

// grad_energy (B,) and grad_forces (B, N, 3) may each be nullptr (= zero). grad_pos (B, N, 3).
void lj_energy_forces_backward_cpu(const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                                   const at::Tensor& pos, const at::Tensor& mask,
                                   const at::Tensor& sigma, const at::Tensor& epsilon,
                                   const at::Tensor* exclude, at::Tensor& grad_pos);

#ifdef MOLCONF_WITH_CUDA
// Same contracts on CUDA tensors; `stream` is a cudaStream_t (void* keeps CUDA headers
// out of this file, so the host compiler never needs them).
void rewire_by_force_cuda(const at::Tensor& pos, const at::Tensor& mask,
                          const at::Tensor& bond_adj, const at::Tensor& sigma,
                          const at::Tensor& epsilon, const at::Tensor& k, at::Tensor& attr,
                          at::Tensor& rep, at::Tensor* force, at::Tensor* scratch, void* stream);
void lj_energy_forces_cuda(const at::Tensor& pos, const at::Tensor& mask, const at::Tensor& sigma,
                           const at::Tensor& epsilon, const at::Tensor* exclude,
                           at::Tensor& row_energy, at::Tensor& forces, void* stream);
void lj_energy_forces_backward_cuda(const at::Tensor* grad_energy, const at::Tensor* grad_forces,
                                    const at::Tensor& pos, const at::Tensor& mask,
                                    const at::Tensor& sigma, const at::Tensor& epsilon,
                                    const at::Tensor* exclude, at::Tensor& grad_pos, void* stream);
// Bytes of shared memory one rewiring block needs for rows of n atoms (0: too many for
// shared memory, pass a (B, N, N) scratch tensor instead).
int64_t rewire_cuda_shared_bytes(int64_t n, int64_t element_size);
#endif

}  // namespace molconf
