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

// ---- candidate forward designs, chosen at compile time (-DMV_ROW_FWD_VARIANT=k):
//   0  tiles: mv_row_fwd_tiles above (the default);
//   1  regtiles: tiles of up to MV_REGTILE elements of whole rows (D <= MV_REGTILE / 4; longer
//      rows take variant 0), each thread loading its MV_REGTILE / (4 MV_BLOCK) chunks into
//      registers before any use, terms stored to shared memory as 16-byte vectors, one barrier;
//      the row sums in the order of variant 0 (bit for bit the same kl);
//   2  spans: mv_span_lane_fwd of chunks.cuh, G lanes per span of rows, registers and shuffles
//      only (its own documented order).
#ifndef MV_ROW_FWD_VARIANT
#define MV_ROW_FWD_VARIANT 0
#endif

#define MV_REGTILE 4096
#define MV_REGTILE_CHUNKS (MV_REGTILE / (4 * MV_BLOCK))

// Rows per tile of variant 1 (0 when the rows are too long: then variant 0 runs).
__device__ __forceinline__ mv_i64 mv_regtile_rows(mv_i64 D) {
    if (D > MV_REGTILE / 4) return 0;
    const mv_i64 m = (D % 4 == 0) ? 1 : ((D % 2 == 0) ? 2 : 4);
    return (MV_REGTILE / (m * D)) * m;
}

template <typename T, bool fuse>
__device__ __forceinline__ void mv_row_fwd_regtiles(const T* __restrict__ mu, const T* __restrict__ logvar,
                                                    T* __restrict__ z, T* __restrict__ kl, mv_i64 B, mv_i64 D,
                                                    mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    const mv_i64 R = mv_regtile_rows(D);
    if (R == 0) {
        mv_row_fwd_tiles<T, fuse>(mu, logvar, z, kl, B, D, seed, offset, stream);
        return;
    }
    __shared__ __align__(16) T terms[MV_REGTILE];
    const int P = mv_row_tiling_of(D).lanes, tid = threadIdx.x, lane = tid & (P - 1), group = tid / P;
    const int groups = MV_BLOCK / P;
    const mv_i64 ntiles = (B + R - 1) / R;
    for (mv_i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const mv_i64 r0 = tile * R, r1 = r0 + R < B ? r0 + R : B;
        const mv_i64 lo = r0 * D, hi = r1 * D;  // lo is a chunk boundary (R*D % 4 == 0)
        const mv_i64 c0 = lo >> 2, c1 = (hi + 3) >> 2;
        T m[MV_REGTILE_CHUNKS][4], lv[MV_REGTILE_CHUNKS][4];
#pragma unroll
        for (int q = 0; q < MV_REGTILE_CHUNKS; ++q) {  // every load of the thread first
            const mv_i64 c = c0 + tid + q * MV_BLOCK;
            if (c < c1) {
                mv_load4<T>(mu, c, lo, hi, m[q]);
                mv_load4<T>(logvar, c, lo, hi, lv[q]);
            }
        }
#pragma unroll
        for (int q = 0; q < MV_REGTILE_CHUNKS; ++q) {
            const mv_i64 c = c0 + tid + q * MV_BLOCK;
            if (c < c1) {
                T t4[4], eps[4];
                if (fuse) mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
                for (int k = 0; k < 4; ++k) {
                    t4[k] = mv_kl_term<T>(m[q][k], lv[q][k]);  // 0 past hi (read as 0): never summed
                    if (fuse) m[q][k] = mv_reparam<T>(m[q][k], lv[q][k], eps[k]);
                }
                mv_vec4_store(terms + 4 * (c - c0), t4);
                if (fuse) mv_store4<T>(z, c, lo, hi, m[q]);
            }
        }
        __syncthreads();
        for (mv_i64 base = r0; base < r1; base += groups) {  // the same trip count in every lane
            const mv_i64 row = base + group;
            T v = T(0);
            if (row < r1) v = mv_lane_partial<T>(terms + (row * D - lo), D, lane, P);
            v = mv_lane_tree<T>(v, P);
            if (row < r1 && lane == 0) kl[row] = v;
        }
        if (tile + gridDim.x < ntiles) __syncthreads();  // terms is overwritten by the next tile
    }
}

template <typename T, bool fuse>
__device__ __forceinline__ void mv_row_fwd_spans(const T* __restrict__ mu, const T* __restrict__ logvar,
                                                 T* __restrict__ z, T* __restrict__ kl, mv_i64 B, mv_i64 D,
                                                 mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    const mv_span_tiling t = mv_span_tiling_of(D);
    const int G = t.lanes, j = threadIdx.x & (G - 1);
    const mv_i64 nspans = (B + t.rows - 1) / t.rows;
    const mv_i64 stride = (mv_i64)gridDim.x * (MV_BLOCK / G);
    // the loop condition is the same in every lane of a warp (its first group's span), so the
    // whole warp reaches the shuffles; groups past the end add nothing
    const mv_i64 first = ((mv_i64)blockIdx.x * MV_BLOCK + (threadIdx.x & ~31)) / G;
    for (mv_i64 w = first; w < nspans; w += stride) {
        const mv_i64 s = w + (threadIdx.x & 31) / G;
        T acc[4] = {T(0), T(0), T(0), T(0)};
        if (s < nspans) mv_span_lane_fwd<T, fuse>(s, j, t, B, D, seed, offset, stream, mu, logvar, z, acc);
        for (int r = 0; r < 4; ++r) {
            if (r >= t.rows) break;  // the same in every lane
            const T v = mv_lane_tree<T>(acc[r], G);
            if (j == 0 && s < nspans && s * t.rows + r < B) kl[s * t.rows + r] = v;
        }
    }
}

// The forward of the row kernels (kl.cu, fused.cu): the design MV_ROW_FWD_VARIANT selects.
template <typename T, bool fuse>
__device__ __forceinline__ void mv_row_fwd(const T* __restrict__ mu, const T* __restrict__ logvar,
                                           T* __restrict__ z, T* __restrict__ kl, mv_i64 B, mv_i64 D,
                                           mv_u64 seed, mv_u64 offset, mv_u32 stream) {
#if MV_ROW_FWD_VARIANT == 0
    mv_row_fwd_tiles<T, fuse>(mu, logvar, z, kl, B, D, seed, offset, stream);
#elif MV_ROW_FWD_VARIANT == 1
    mv_row_fwd_regtiles<T, fuse>(mu, logvar, z, kl, B, D, seed, offset, stream);
#elif MV_ROW_FWD_VARIANT == 2
    mv_row_fwd_spans<T, fuse>(mu, logvar, z, kl, B, D, seed, offset, stream);
#else
#error "MV_ROW_FWD_VARIANT must be 0, 1 or 2"
#endif
}

#endif  // MINIVAE_DEVICE_CUH
