// Fused reparameterization, z = mu + exp(logvar / 2) * eps, with eps generated in registers
// from the draw (seed, offset, stream) -- element i of the flattened arrays uses the normal
// minivae.random.normal(..., seed, offset, stream) gives for index i -- and its backward,
// which regenerates eps instead of reading a stored copy:
//   dmu = dz,  dlogvar = dz * eps * exp(logvar / 2) / 2.
// Arrays are C-contiguous with n elements; one thread per chunk of 4 elements. The draw's offset
// is offset + *offset_from when offset_from is not a null pointer (mv_draw_offset, philox.cuh).
// Launch: block (MV_BLOCK, 1, 1), any grid.
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_reparam_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                               T* __restrict__ z, mv_i64 n, mv_u64 seed,
                                               mv_u64 offset, mv_u32 stream) {
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_reparam_fwd<T>(c, n, seed, offset, stream, mu, logvar, z);
}

template <typename T>
__device__ __forceinline__ void mv_reparam_bwd(const T* __restrict__ dz, const T* __restrict__ logvar,
                                               T* __restrict__ dmu, T* __restrict__ dlogvar, mv_i64 n,
                                               mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_reparam_bwd<T>(c, n, seed, offset, stream, dz, logvar, dmu, dlogvar);
}

extern "C" __global__ void mv_reparam_fwd_f32(const float* mu, const float* logvar, float* z,
                                              mv_i64 n, mv_u64 seed, mv_u64 offset,
                                              const mv_u64* offset_from, mv_u32 stream) {
    mv_reparam_fwd<float>(mu, logvar, z, n, seed, mv_draw_offset(offset, offset_from), stream);
}
extern "C" __global__ void mv_reparam_fwd_f64(const double* mu, const double* logvar, double* z,
                                              mv_i64 n, mv_u64 seed, mv_u64 offset,
                                              const mv_u64* offset_from, mv_u32 stream) {
    mv_reparam_fwd<double>(mu, logvar, z, n, seed, mv_draw_offset(offset, offset_from), stream);
}
// dmu may be a null pointer (then only dlogvar is written; dmu = dz needs no kernel).
extern "C" __global__ void mv_reparam_bwd_f32(const float* dz, const float* logvar, float* dmu,
                                              float* dlogvar, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                              const mv_u64* offset_from, mv_u32 stream) {
    mv_reparam_bwd<float>(dz, logvar, dmu, dlogvar, n, seed, mv_draw_offset(offset, offset_from), stream);
}
extern "C" __global__ void mv_reparam_bwd_f64(const double* dz, const double* logvar, double* dmu,
                                              double* dlogvar, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                              const mv_u64* offset_from, mv_u32 stream) {
    mv_reparam_bwd<double>(dz, logvar, dmu, dlogvar, n, seed, mv_draw_offset(offset, offset_from), stream);
}
