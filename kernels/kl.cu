// Analytic KL(N(mu, diag(exp(logvar))) || N(0, I)) per row of C-contiguous (B, D) arrays:
//   kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2      (expm1 form, see vae_math.cuh)
// forward: tiles of whole rows held in registers (mv_row_fwd of device.cuh), the row sums in
// the fixed order documented in chunks.cuh; backward with upstream gkl (B,): dmu = gkl * mu,
// dlogvar = gkl * (exp(logvar) - 1) / 2, flat over the chunks of the B*D elements.
// Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
#include "device.cuh"

extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_kl_fwd_f32(const float* mu, const float* logvar, float* kl, mv_i64 B, mv_i64 D) {
    mv_row_fwd<float, MV_ROW_KL>(mu, logvar, 0, nullptr, 0, nullptr, kl, B, D, 0, 0, 0);
}
extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_kl_fwd_f64(const double* mu, const double* logvar, double* kl, mv_i64 B, mv_i64 D) {
    mv_row_fwd<double, MV_ROW_KL>(mu, logvar, 0, nullptr, 0, nullptr, kl, B, D, 0, 0, 0);
}

template <typename T>
__device__ __forceinline__ void mv_kl_bwd(const T* __restrict__ gkl, const T* __restrict__ mu,
                                          const T* __restrict__ logvar, T* __restrict__ dmu,
                                          T* __restrict__ dlogvar, mv_i64 B, mv_i64 D) {
    const mv_i64 n = B * D;
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_kl_bwd<T>(c, n, D, gkl, mu, logvar, dmu, dlogvar);
}

extern "C" __global__ void mv_kl_bwd_f32(const float* gkl, const float* mu, const float* logvar,
                                         float* dmu, float* dlogvar, mv_i64 B, mv_i64 D) {
    mv_kl_bwd<float>(gkl, mu, logvar, dmu, dlogvar, B, D);
}
extern "C" __global__ void mv_kl_bwd_f64(const double* gkl, const double* mu, const double* logvar,
                                         double* dmu, double* dlogvar, mv_i64 B, mv_i64 D) {
    mv_kl_bwd<double>(gkl, mu, logvar, dmu, dlogvar, B, D);
}
