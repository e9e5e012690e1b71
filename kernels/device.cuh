// Device-only helpers of the kernels (never compiled for the host): the block size, the
// grid-stride loop of the flat kernels and the tiled forward pass of the row kernels.
#ifndef MINIVAE_DEVICE_CUH
#define MINIVAE_DEVICE_CUH

#include "chunks.cuh"

#define MV_BLOCK 256

// First chunk of this thread and the stride of a flat kernel's grid-stride loop (1-D launch).
#define MV_FOR_CHUNKS(c, nchunks)                                                       \
    for (mv_i64 c = (mv_i64)blockIdx.x * blockDim.x + threadIdx.x; c < (nchunks);      \
         c += (mv_i64)gridDim.x * blockDim.x)

// Sum of the P partials of a lane group (P a power of two <= 32, groups aligned in the warp):
// the halving tree of chunks.cuh (lane i += lane i + o, o = P/2 ... 1); valid in lane 0.
// Every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ T mv_lane_tree(T v, int P) {
    for (int o = P >> 1; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o, P);
    return v;
}

// The forward of a row kernel over C-contiguous (B, D) arrays (block (MV_BLOCK, 1, 1), any
// grid): kl[b] = sum of row b's KL terms in the order of chunks.cuh, and with fuse also
// z = mu + exp(logvar / 2) * eps. Each block takes tiles (R rows, or one segment of a long row)
// in a grid-stride loop: (a) the tile's chunks flat, one per thread, terms parked in shared
// memory; (b) P lanes per row segment sum them. Loads and stores are whole 16-byte vectors
// where the tile starts on a chunk boundary (see mv_row_tiling_of).
template <typename T, bool fuse>
__device__ __forceinline__ void mv_row_fwd_tiles(const T* __restrict__ mu, const T* __restrict__ logvar,
                                                 T* __restrict__ z, T* __restrict__ kl, mv_i64 B, mv_i64 D,
                                                 mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    __shared__ T terms[MV_TILE];
    const mv_row_tiling t = mv_row_tiling_of(D);
    const int P = t.lanes, tid = threadIdx.x, lane = tid & (P - 1), group = tid / P;
    const int groups = MV_BLOCK / P;
    const mv_i64 ntiles = (B + t.rows - 1) / t.rows;
    for (mv_i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const mv_i64 r0 = tile * t.rows;
        const mv_i64 r1 = r0 + t.rows < B ? r0 + t.rows : B;
        T carry = T(0);  // the row's sum over its earlier segments (one-row tiles only)
        for (mv_i64 lo = r0 * D; lo < r1 * D; lo += MV_TILE) {
            const mv_i64 hi = lo + MV_TILE < r1 * D ? lo + MV_TILE : r1 * D;
            for (mv_i64 c = (lo >> 2) + tid; c <= (hi - 1) >> 2; c += MV_BLOCK)
                mv_chunk_row_fwd<T, fuse>(c, lo, hi, seed, offset, stream, mu, logvar, z, terms);
            __syncthreads();
            // rows [r0, r1) meet this segment in [max(lo, row*D), min(hi, row*D + D))
            for (mv_i64 base = r0; base < r1; base += groups) {  // the same trip count in every lane
                const mv_i64 row = base + group;
                T v = T(0);
                mv_i64 a = 0, b = 0;
                if (row < r1) {
                    a = row * D > lo ? row * D : lo;
                    b = row * D + D < hi ? row * D + D : hi;
                    v = mv_lane_partial<T>(terms + (a - lo), b - a, lane, P);
                }
                v = mv_lane_tree<T>(v, P);
                if (row < r1 && lane == 0) {
                    carry += v;
                    if (b == row * D + D) {  // the row's last segment
                        kl[row] = carry;
                        carry = T(0);
                    }
                }
            }
            __syncthreads();  // terms is overwritten by the next segment
        }
    }
}

#endif  // MINIVAE_DEVICE_CUH
