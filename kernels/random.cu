// Philox4x32-10 streams on the GPU: raw words, uniforms and standard normals of the draw
// (seed, offset, stream), element for element the same as minivae.random (words bit-exact,
// floats to a few ulp). Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
#include "device.cuh"

extern "C" __global__ void mv_philox_words(mv_u32* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                           mv_u32 stream) {
    const mv_i64 chunks = (n + 3) >> 2;
    for (mv_i64 c = (mv_i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks;
         c += (mv_i64)gridDim.x * blockDim.x) {
        mv_u32x4 w = mv_philox_block((mv_u64)c, seed, offset, stream);
        mv_i64 e = 4 * c;
        out[e] = w.x;
        if (e + 1 < n) out[e + 1] = w.y;
        if (e + 2 < n) out[e + 2] = w.z;
        if (e + 3 < n) out[e + 3] = w.w;
    }
}

template <typename T>
__device__ __forceinline__ void mv_generate(T* out, mv_i64 n, int dist, mv_u64 seed,
                                            mv_u64 offset, mv_u32 stream) {
    __shared__ T tile[4 * MV_BLOCK];
    const int G = blockDim.x, tx = threadIdx.x;
    const mv_i64 ntiles = mv_flat_ntiles(n, G);
    for (mv_i64 t = blockIdx.x; t < ntiles; t += gridDim.x) {
        mv_flat_fill<T>(tile, tx, G, t, n, dist, seed, offset, stream);
        __syncthreads();
        mv_flat_store<T>(tile, tx, G, t, n, out);
        __syncthreads();
    }
}

extern "C" __global__ void mv_normal_f32(float* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                         mv_u32 stream) {
    mv_generate<float>(out, n, 0, seed, offset, stream);
}
extern "C" __global__ void mv_normal_f64(double* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                         mv_u32 stream) {
    mv_generate<double>(out, n, 0, seed, offset, stream);
}
extern "C" __global__ void mv_uniform_f32(float* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                          mv_u32 stream) {
    mv_generate<float>(out, n, 1, seed, offset, stream);
}
extern "C" __global__ void mv_uniform_f64(double* out, mv_i64 n, mv_u64 seed, mv_u64 offset,
                                          mv_u32 stream) {
    mv_generate<double>(out, n, 1, seed, offset, stream);
}
