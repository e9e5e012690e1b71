// Analytic KL(N(mu, diag(exp(logvar))) || N(0, I)) per row of C-contiguous (B, D) arrays:
//   kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2      (expm1 form, see vae_math.cuh)
// forward: one thread group per row (a thread per chunk), one group reduction per row
// (deterministic tree);
// backward with upstream gkl (B,): dmu = gkl * mu, dlogvar = gkl * (exp(logvar) - 1) / 2.
// Launch: block (G, MV_BLOCK / G, 1) with G a power of two in [8, 256]; any grid.
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_kl_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                          T* __restrict__ kl, mv_i64 B, mv_i64 D) {
    __shared__ T red[MV_BLOCK / 32];
    const int G = blockDim.x, tx = threadIdx.x;
    MV_FOR_ROW_BLOCKS(row0, B) {
        const mv_i64 row = row0 + threadIdx.y;
        const bool active = row < B;
        const mv_row_span s = mv_row_span_of(active ? row : 0, D);
        T acc = T(0);
        if (active)
            for (mv_i64 c = s.c_begin + tx; c <= s.c_last; c += G) acc += mv_chunk_kl<T>(c, s, mu, logvar);
        acc = mv_group_sum<T>(acc, G, red);
        if (active && tx == 0) kl[row] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void mv_kl_bwd(const T* __restrict__ gkl, const T* __restrict__ mu,
                                          const T* __restrict__ logvar, T* __restrict__ dmu,
                                          T* __restrict__ dlogvar, mv_i64 B, mv_i64 D) {
    const int G = blockDim.x, tx = threadIdx.x;
    MV_FOR_ROW_BLOCKS(row0, B) {
        const mv_i64 row = row0 + threadIdx.y;
        if (row >= B) continue;
        const mv_row_span s = mv_row_span_of(row, D);
        const T g = gkl[row];
        for (mv_i64 c = s.c_begin + tx; c <= s.c_last; c += G) mv_chunk_kl_bwd<T>(c, s, g, mu, logvar, dmu, dlogvar);
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
