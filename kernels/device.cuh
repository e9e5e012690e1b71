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

// The chunks each thread of a forward row kernel holds in registers: a tile is MV_BLOCK threads
// of MV_TILE_CHUNKS chunks of 4 elements.
#define MV_TILE_CHUNKS (MV_TILE / (4 * MV_BLOCK))
static_assert(MV_TILE_CHUNKS >= 1 && MV_TILE == 4 * MV_BLOCK * MV_TILE_CHUNKS,
              "MV_TILE must be a multiple of 4 * MV_BLOCK");

// The register budget of the forward row kernels. Without launch bounds (the default) nvcc
// gives the float32 kernels 55-64 registers a thread (sm_80, sm_90): 4 blocks of MV_BLOCK
// resident on a multiprocessor (__launch_bounds__(MV_BLOCK, 1) would let it take 80-99, and
// keep 2 or 3). -DMV_ROW_FWD_MIN_BLOCKS=k asks for k blocks: at most 65536 / (MV_BLOCK k)
// registers, the rest spilled to local memory.
#ifdef MV_ROW_FWD_MIN_BLOCKS
#define MV_ROW_FWD_BOUNDS __launch_bounds__(MV_BLOCK, MV_ROW_FWD_MIN_BLOCKS)
#else
#define MV_ROW_FWD_BOUNDS
#endif

// The forward of the row kernels (kl.cu, fused.cu) over C-contiguous (B, D) arrays (block
// (MV_BLOCK, 1, 1), any grid): kl[b] = sum of row b's KL terms in the order of chunks.cuh, and
// with fuse also z = mu + exp(logvar / 2) * eps. Each block takes tiles (R rows, or the
// segments of one long row) in a grid-stride loop: (a) every thread loads its MV_TILE_CHUNKS
// chunks of the tile into registers before it uses any (so that they are in flight together),
// computes them and stores their KL terms to shared memory as 16-byte vectors; one barrier;
// (b) P lanes per row segment sum them.
template <typename T, bool fuse>
__device__ __forceinline__ void mv_row_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                           T* __restrict__ z, T* __restrict__ kl, mv_i64 B, mv_i64 D,
                                           mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    __shared__ __align__(16) T terms[MV_TILE];  // terms[e - 4 c0]: element e of the tile
    const mv_row_tiling t = mv_row_tiling_of(D);
    const int P = t.lanes, tid = threadIdx.x, lane = tid & (P - 1), group = tid / P;
    const int groups = MV_BLOCK / P;
    const mv_i64 ntiles = (B + t.rows - 1) / t.rows;
    for (mv_i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const mv_i64 r0 = tile * t.rows, r1 = r0 + t.rows < B ? r0 + t.rows : B;
        T carry = T(0);  // the row's sum over its earlier segments (one-row tiles only)
        for (mv_i64 lo = r0 * D, hi; lo < r1 * D; lo = hi) {
            hi = mv_tile_end(lo, r1, D);
            const mv_i64 c0 = lo >> 2, c1 = (hi + 3) >> 2;
            T m[MV_TILE_CHUNKS][4], lv[MV_TILE_CHUNKS][4];
#pragma unroll
            for (int q = 0; q < MV_TILE_CHUNKS; ++q) {  // every load of the thread first
                const mv_i64 c = c0 + tid + q * MV_BLOCK;
                if (c < c1) {
                    mv_load4<T>(mu, c, lo, hi, m[q]);
                    mv_load4<T>(logvar, c, lo, hi, lv[q]);
                }
            }
#pragma unroll
            for (int q = 0; q < MV_TILE_CHUNKS; ++q) {
                const mv_i64 c = c0 + tid + q * MV_BLOCK;
                if (c < c1) {
                    T t4[4];
                    mv_chunk_row_fwd<T, fuse>(c, lo, hi, seed, offset, stream, m[q], lv[q], z, t4);
                    mv_vec4_store(terms + 4 * (c - c0), t4);
                }
            }
            __syncthreads();
            // rows [r0, r1) meet this tile in [max(lo, row*D), min(hi, row*D + D))
            for (mv_i64 base = r0; base < r1; base += groups) {  // the same trip count in every lane
                const mv_i64 row = base + group;
                T v = T(0);
                mv_i64 a = 0, b = 0;
                if (row < r1) {
                    a = row * D > lo ? row * D : lo;
                    b = row * D + D < hi ? row * D + D : hi;
                    v = mv_lane_partial<T>(terms + (a - 4 * c0), b - a, lane, P);
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
            // terms is overwritten by the next segment or tile (the same condition in every thread)
            if (hi < r1 * D || tile + gridDim.x < ntiles) __syncthreads();
        }
    }
}

#endif  // MINIVAE_DEVICE_CUH
