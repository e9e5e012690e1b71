// Reparameterization and KL of a row in one pass over C-contiguous (B, D) arrays:
//   forward:  z = mu + exp(logvar / 2) * eps,  kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2
//   backward: dmu = dz + gkl * mu,
//             dlogvar = dz * eps * exp(logvar / 2) / 2 + gkl * (exp(logvar) - 1) / 2
// eps is element b*D + d of the draw (seed, offset, stream) (minivae.random.normal((B, D), ...)),
// generated in registers in both passes (a thread per chunk of 4 elements) and never stored.
// gkl may be a null pointer in the backward (no gradient reaches the KL).
// Launch: block (G, MV_BLOCK / G, 1) with G a power of two in [8, 256]; any grid.
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_reparam_kl_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                                  T* __restrict__ z, T* __restrict__ kl, mv_i64 B,
                                                  mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    __shared__ T red[MV_BLOCK / 32];
    const int G = blockDim.x, tx = threadIdx.x;
    MV_FOR_ROW_BLOCKS(row0, B) {
        const mv_i64 row = row0 + threadIdx.y;
        const bool active = row < B;
        const mv_row_span s = mv_row_span_of(active ? row : 0, D);
        T acc = T(0);
        if (active)
            for (mv_i64 c = s.c_begin + tx; c <= s.c_last; c += G)
                acc += mv_chunk_fused_fwd<T>(c, s, seed, offset, stream, mu, logvar, z);
        acc = mv_group_sum<T>(acc, G, red);
        if (active && tx == 0) kl[row] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void mv_reparam_kl_bwd(const T* __restrict__ dz, const T* __restrict__ gkl,
                                                  const T* __restrict__ mu, const T* __restrict__ logvar,
                                                  T* __restrict__ dmu, T* __restrict__ dlogvar, mv_i64 B,
                                                  mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    const int G = blockDim.x, tx = threadIdx.x;
    MV_FOR_ROW_BLOCKS(row0, B) {
        const mv_i64 row = row0 + threadIdx.y;
        if (row >= B) continue;
        const mv_row_span s = mv_row_span_of(row, D);
        const T g = gkl ? gkl[row] : T(0);
        for (mv_i64 c = s.c_begin + tx; c <= s.c_last; c += G)
            mv_chunk_fused_bwd<T>(c, s, seed, offset, stream, dz, g, mu, logvar, dmu, dlogvar);
    }
}

extern "C" __global__ void mv_reparam_kl_fwd_f32(const float* mu, const float* logvar, float* z,
                                                 float* kl, mv_i64 B, mv_i64 D, mv_u64 seed,
                                                 mv_u64 offset, mv_u32 stream) {
    mv_reparam_kl_fwd<float>(mu, logvar, z, kl, B, D, seed, offset, stream);
}
extern "C" __global__ void mv_reparam_kl_fwd_f64(const double* mu, const double* logvar, double* z,
                                                 double* kl, mv_i64 B, mv_i64 D, mv_u64 seed,
                                                 mv_u64 offset, mv_u32 stream) {
    mv_reparam_kl_fwd<double>(mu, logvar, z, kl, B, D, seed, offset, stream);
}
extern "C" __global__ void mv_reparam_kl_bwd_f32(const float* dz, const float* gkl, const float* mu,
                                                 const float* logvar, float* dmu, float* dlogvar,
                                                 mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset,
                                                 mv_u32 stream) {
    mv_reparam_kl_bwd<float>(dz, gkl, mu, logvar, dmu, dlogvar, B, D, seed, offset, stream);
}
extern "C" __global__ void mv_reparam_kl_bwd_f64(const double* dz, const double* gkl, const double* mu,
                                                 const double* logvar, double* dmu, double* dlogvar,
                                                 mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset,
                                                 mv_u32 stream) {
    mv_reparam_kl_bwd<double>(dz, gkl, mu, logvar, dmu, dlogvar, B, D, seed, offset, stream);
}
