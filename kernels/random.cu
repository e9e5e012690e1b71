// Philox4x32-10 streams on the GPU: raw words, uniforms, standard normals and standard Gumbel
// samples of the draw (seed, offset, stream), element for element the same as minivae.random
// (words and uniforms bit-exact, floats to a few ulp). One thread per chunk (4 elements, one
// Philox block).
// Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
#include "device.cuh"

extern "C" __global__ void mv_philox_words(mv_u32* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                           mv_u32 stream) {
    MV_FOR_CHUNKS(c, mv_nchunks(n)) {
        mv_u32x4 w = mv_philox_block((mv_u64)c, seed, offset, stream);
        mv_i64 e = 4 * c;
        out[e] = w.x;
        if (e + 1 < n) out[e + 1] = w.y;
        if (e + 2 < n) out[e + 2] = w.z;
        if (e + 3 < n) out[e + 3] = w.w;
    }
}

// The draw's offset is offset + *offset_from when offset_from is not a null pointer
// (mv_draw_offset, philox.cuh), so that a step captured as a CUDA graph draws new noise at every
// replay; dist: 0 normals, 1 uniforms, 2 Gumbel samples (mv_chunk_generate).
template <typename T>
__device__ __forceinline__ void mv_generate(T* out, mv_i64 n, int dist, mv_u64 seed, mv_u64 offset,
                                            const mv_u64* offset_from, mv_u32 stream) {
    offset = mv_draw_offset(offset, offset_from);
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_generate<T>(c, n, dist, seed, offset, stream, out);
}

extern "C" __global__ void mv_normal_f32(float* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                         const mv_u64* offset_from, mv_u32 stream) {
    mv_generate<float>(out, n, 0, seed, offset, offset_from, stream);
}
extern "C" __global__ void mv_normal_f64(double* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                         const mv_u64* offset_from, mv_u32 stream) {
    mv_generate<double>(out, n, 0, seed, offset, offset_from, stream);
}
extern "C" __global__ void mv_uniform_f32(float* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                          const mv_u64* offset_from, mv_u32 stream) {
    mv_generate<float>(out, n, 1, seed, offset, offset_from, stream);
}
extern "C" __global__ void mv_uniform_f64(double* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                          const mv_u64* offset_from, mv_u32 stream) {
    mv_generate<double>(out, n, 1, seed, offset, offset_from, stream);
}
extern "C" __global__ void mv_gumbel_f32(float* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                         const mv_u64* offset_from, mv_u32 stream) {
    mv_generate<float>(out, n, 2, seed, offset, offset_from, stream);
}
extern "C" __global__ void mv_gumbel_f64(double* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                         const mv_u64* offset_from, mv_u32 stream) {
    mv_generate<double>(out, n, 2, seed, offset, offset_from, stream);
}
