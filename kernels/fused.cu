// Reparameterization and KL of a row in one pass over C-contiguous (B, D) arrays:
//   forward:  z = mu + exp(logvar / 2) * eps,  kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2
//   backward: dmu = dz + gkl * mu,
//             dlogvar = dz * eps * exp(logvar / 2) / 2 + gkl * (exp(logvar) - 1) / 2
// eps is element b*D + d of the draw (seed, offset, stream) (minivae.random.normal((B, D), ...)),
// generated in registers/shared memory in both passes and never stored in global memory.
// gkl may be a null pointer in the backward (no gradient reaches the KL).
// Launch: block (G, MV_BLOCK / G, 1) with G a power of two in [8, 256]; any grid.
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_reparam_kl_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                                  T* __restrict__ z, T* __restrict__ kl, mv_i64 B,
                                                  mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    __shared__ T tile[4 * MV_BLOCK];
    __shared__ T red[MV_BLOCK / 32];
    const int G = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    T* my = tile + 4 * G * ty;
    const int ntiles = mv_row_ntiles(D, G);
    for (mv_i64 row0 = (mv_i64)blockIdx.x * R; row0 < B; row0 += (mv_i64)gridDim.x * R) {
        const mv_i64 row = row0 + ty;
        const bool active = row < B;
        const mv_row_span s = mv_row_span_of(active ? row : 0, D);
        T acc = T(0);
        for (int t = 0; t < ntiles; ++t) {
            if (active) mv_row_fill<T>(my, tx, G, t, s, seed, offset, stream);
            __syncthreads();
            if (active) acc += mv_row_fused_fwd<T>(my, tx, G, t, s, mu, logvar, z);
            __syncthreads();
        }
        acc = mv_group_sum<T>(acc, G, red);
        if (active && tx == 0) kl[row] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void mv_reparam_kl_bwd(const T* __restrict__ dz, const T* __restrict__ gkl,
                                                  const T* __restrict__ mu, const T* __restrict__ logvar,
                                                  T* __restrict__ dmu, T* __restrict__ dlogvar, mv_i64 B,
                                                  mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    __shared__ T tile[4 * MV_BLOCK];
    const int G = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
    T* my = tile + 4 * G * ty;
    const int ntiles = mv_row_ntiles(D, G);
    for (mv_i64 row0 = (mv_i64)blockIdx.x * R; row0 < B; row0 += (mv_i64)gridDim.x * R) {
        const mv_i64 row = row0 + ty;
        const bool active = row < B;
        const mv_row_span s = mv_row_span_of(active ? row : 0, D);
        const T g = (active && gkl) ? gkl[row] : T(0);
        for (int t = 0; t < ntiles; ++t) {
            if (active) mv_row_fill<T>(my, tx, G, t, s, seed, offset, stream);
            __syncthreads();
            if (active) mv_row_fused_bwd<T>(my, tx, G, t, s, dz, g, mu, logvar, dmu, dlogvar);
            __syncthreads();
        }
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
