// Reparameterization and KL of a row in one pass over C-contiguous (B, D) arrays:
//   forward:  z = mu + exp(logvar / 2) * eps,  kl[b] = sum_d (mu^2 + exp(logvar) - 1 - logvar) / 2
//   backward: dmu = dz + gkl * mu,
//             dlogvar = dz * eps * exp(logvar / 2) / 2 + gkl * (exp(logvar) - 1) / 2
// eps is element b*D + d of the draw (seed, offset, stream) (minivae.random.normal((B, D), ...)),
// generated in registers in both passes (a thread per chunk of 4 elements) and never stored.
// The forward works on tiles of whole rows held in registers (mv_row_fwd of device.cuh) and
// sums each row in the fixed order documented in chunks.cuh; the backward is flat over the
// chunks. gkl may be a null pointer in the backward (no gradient reaches the KL). The draw's
// offset is offset + *offset_from when offset_from is not a null pointer (mv_draw_offset).
// Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
#include "device.cuh"

extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_reparam_kl_fwd_f32(const float* mu, const float* logvar, float* z, float* kl, mv_i64 B, mv_i64 D,
                      mv_u64 seed, mv_u64 offset, const mv_u64* offset_from, mv_u32 stream) {
    mv_row_fwd<float, MV_ROW_REPARAM_KL>(mu, logvar, 0, nullptr, 0, z, kl, B, D, seed,
                                         mv_draw_offset(offset, offset_from), stream);
}
extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_reparam_kl_fwd_f64(const double* mu, const double* logvar, double* z, double* kl, mv_i64 B, mv_i64 D,
                      mv_u64 seed, mv_u64 offset, const mv_u64* offset_from, mv_u32 stream) {
    mv_row_fwd<double, MV_ROW_REPARAM_KL>(mu, logvar, 0, nullptr, 0, z, kl, B, D, seed,
                                          mv_draw_offset(offset, offset_from), stream);
}

template <typename T>
__device__ __forceinline__ void mv_reparam_kl_bwd(const T* __restrict__ dz, const T* __restrict__ gkl,
                                                  const T* __restrict__ mu, const T* __restrict__ logvar,
                                                  T* __restrict__ dmu, T* __restrict__ dlogvar, mv_i64 B,
                                                  mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    const mv_i64 n = B * D;
    MV_FOR_CHUNKS(c, mv_nchunks(n))
        mv_chunk_fused_bwd<T>(c, n, D, seed, offset, stream, dz, gkl, mu, logvar, dmu, dlogvar);
}

extern "C" __global__ void mv_reparam_kl_bwd_f32(const float* dz, const float* gkl, const float* mu,
                                                 const float* logvar, float* dmu, float* dlogvar,
                                                 mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset,
                                                 const mv_u64* offset_from, mv_u32 stream) {
    mv_reparam_kl_bwd<float>(dz, gkl, mu, logvar, dmu, dlogvar, B, D, seed,
                              mv_draw_offset(offset, offset_from), stream);
}
extern "C" __global__ void mv_reparam_kl_bwd_f64(const double* dz, const double* gkl, const double* mu,
                                                 const double* logvar, double* dmu, double* dlogvar,
                                                 mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset,
                                                 const mv_u64* offset_from, mv_u32 stream) {
    mv_reparam_kl_bwd<double>(dz, gkl, mu, logvar, dmu, dlogvar, B, D, seed,
                              mv_draw_offset(offset, offset_from), stream);
}
