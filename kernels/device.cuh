// Device-only helpers of the kernels (never compiled for the host): the block size, the
// grid-stride loops and the reduction of a thread group's partial sums. A "group" is the
// G = blockDim.x threads of one row (threadIdx.y picks the row inside the block); G is a
// power of two in [8, 256] and G * blockDim.y == MV_BLOCK, so a warp never straddles two
// groups unevenly: for G < 32 a warp holds 32 / G whole groups, for G >= 32 a group holds
// G / 32 whole warps.
#ifndef MINIVAE_DEVICE_CUH
#define MINIVAE_DEVICE_CUH

#include "chunks.cuh"

#define MV_BLOCK 256

// First chunk of this thread and the stride of a flat kernel's grid-stride loop (1-D launch).
#define MV_FOR_CHUNKS(c, nchunks)                                                       \
    for (mv_i64 c = (mv_i64)blockIdx.x * blockDim.x + threadIdx.x; c < (nchunks);      \
         c += (mv_i64)gridDim.x * blockDim.x)

// The rows of a row kernel's block (launch (G, MV_BLOCK / G)): row = row0 + threadIdx.y, with
// every thread of the block running the same number of iterations (the group sums contain
// barriers when G > 32), so the rows past B are inactive rather than skipped.
#define MV_FOR_ROW_BLOCKS(row0, B)                                                      \
    for (mv_i64 row0 = (mv_i64)blockIdx.x * blockDim.y; row0 < (B);                     \
         row0 += (mv_i64)gridDim.x * blockDim.y)

// Sum of v over the thread group of threadIdx.y; the result is valid in threadIdx.x == 0.
// Must be reached by every thread of the block (it contains barriers when G > 32).
// Fixed reduction tree: the result is the same from run to run.
template <typename T>
__device__ __forceinline__ T mv_group_sum(T v, int G, T* red) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int w = G < 32 ? G : 32;
    for (int o = w >> 1; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o, w);
    if (G <= 32) return v;
    const int nw = G >> 5;
    __syncthreads();  // red may still be read from the previous call
    if ((tx & 31) == 0) red[ty * nw + (tx >> 5)] = v;
    __syncthreads();
    T s = T(0);
    if (tx == 0)
        for (int i = 0; i < nw; ++i) s += red[ty * nw + i];
    return s;
}

#endif  // MINIVAE_DEVICE_CUH
