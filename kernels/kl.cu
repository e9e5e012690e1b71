// Analytic KL(N(mu, diag(exp(logvar))) || N(0, I)) per row of C-contiguous (B, D) arrays:
//   kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2      (expm1 form, see vae_math.cuh)
// forward: one thread group per row, one group reduction per row (deterministic tree);
// backward with upstream gkl (B,): dmu = gkl * mu, dlogvar = gkl * (exp(logvar) - 1) / 2.
// Launch: block (G, MV_BLOCK / G, 1) with G a power of two in [8, 256]; any grid.
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_kl_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                          T* __restrict__ kl, mv_i64 B, mv_i64 D) {
    __shared__ T red[MV_BLOCK / 32];
    const int G = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    for (mv_i64 row0 = (mv_i64)blockIdx.x * R; row0 < B; row0 += (mv_i64)gridDim.x * R) {
        const mv_i64 row = row0 + ty;
        const bool active = row < B;
        T acc = T(0);
        if (active) acc = mv_row_kl_partial<T>(tx, G, mv_row_span_of(row, D), mu, logvar);
        acc = mv_group_sum<T>(acc, G, red);
        if (active && tx == 0) kl[row] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void mv_kl_bwd(const T* __restrict__ gkl, const T* __restrict__ mu,
                                          const T* __restrict__ logvar, T* __restrict__ dmu,
                                          T* __restrict__ dlogvar, mv_i64 B, mv_i64 D) {
    const int G = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    for (mv_i64 row0 = (mv_i64)blockIdx.x * R; row0 < B; row0 += (mv_i64)gridDim.x * R) {
        const mv_i64 row = row0 + ty;
        if (row < B) mv_row_kl_bwd<T>(tx, G, mv_row_span_of(row, D), gkl[row], mu, logvar, dmu, dlogvar);
    }
}

extern "C" __global__ void mv_kl_fwd_f32(const float* mu, const float* logvar, float* kl,
                                         mv_i64 B, mv_i64 D) {
    mv_kl_fwd<float>(mu, logvar, kl, B, D);
}
extern "C" __global__ void mv_kl_fwd_f64(const double* mu, const double* logvar, double* kl,
                                         mv_i64 B, mv_i64 D) {
    mv_kl_fwd<double>(mu, logvar, kl, B, D);
}
extern "C" __global__ void mv_kl_bwd_f32(const float* gkl, const float* mu, const float* logvar,
                                         float* dmu, float* dlogvar, mv_i64 B, mv_i64 D) {
    mv_kl_bwd<float>(gkl, mu, logvar, dmu, dlogvar, B, D);
}
extern "C" __global__ void mv_kl_bwd_f64(const double* gkl, const double* mu, const double* logvar,
                                         double* dmu, double* dlogvar, mv_i64 B, mv_i64 D) {
    mv_kl_bwd<double>(gkl, mu, logvar, dmu, dlogvar, B, D);
}
