// Device-only helpers of the kernels (never compiled for the host): the block size, the
// grid-stride loop of the flat kernels, the column reductions' tree and the tiled forward pass
// of the row kernels.
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

// ---------------------------------------------------------------- column reductions
// The column reductions of chunks.cuh ("column reductions"), block (MV_BLOCK, 1, 1), grid
// (ceil(N / MV_COLUMNS), 1, 1): thread t reduces lane t / MV_COLUMNS of column
// blockIdx.x * MV_COLUMNS + t % MV_COLUMNS.
static_assert(MV_COLUMNS * MV_COLUMN_LANES == MV_BLOCK,
              "a block reduces MV_COLUMNS columns, MV_COLUMN_LANES lanes each");

// This thread's lane and column.
__device__ __forceinline__ int mv_column_lane() { return threadIdx.x / MV_COLUMNS; }
__device__ __forceinline__ mv_i64 mv_column() {
    return (mv_i64)blockIdx.x * MV_COLUMNS + threadIdx.x % MV_COLUMNS;
}

// The lanes' partials v of each column of the block combined by the halving tree (the sum, or
// the maximum with is_max), returned to every thread of the column. All threads of the block must
// call it (it synchronizes them); part is the block's shared buffer.
template <typename T, bool is_max>
__device__ __forceinline__ T mv_column_total(T (*part)[MV_COLUMNS], T v) {
    const int l = mv_column_lane(), k = threadIdx.x % MV_COLUMNS;
    part[l][k] = v;
    for (int o = MV_COLUMN_LANES / 2; o > 0; o >>= 1) {
        __syncthreads();
        if (l < o) part[l][k] = is_max ? mv_max<T>(part[l][k], part[l + o][k]) : part[l][k] + part[l + o][k];
    }
    __syncthreads();
    const T total = part[0][k];
    __syncthreads();  // before the buffer is written again
    return total;
}

// ---------------------------------------------------------------- the forward row kernels
// Their design is chosen when the kernels are compiled, -DMV_ROW_FWD=<one of these>:
//   MV_REGTILES  (the default) a tile is the work of a block of MV_BLOCK threads: one block per
//                tile (the wrappers launch as many blocks as tiles), its terms in a block-wide
//                shared buffer, __syncthreads between loading and summing.
//   MV_WARPTILES a tile is the work of one warp: its terms in the warp's own slice of shared
//                memory, __syncwarp between loading and summing, and the warps walk the tiles
//                in a grid-stride loop (launched like the flat kernels: at most 32 blocks per
//                multiprocessor). Compile it with a tile of 4 * 32 * q elements: -DMV_TILE=512
//                gives each lane q = 4 chunks, as many as a thread of MV_REGTILES holds.
// Both run the tiles of chunks.cuh (rows per tile, segments, the order of the row sums), so the
// host replay of either is replay_row_fwd built with the same MV_TILE. Rows of D <= MV_TILE - 3
// are one segment: then both sum them in the same order (the same kl bit for bit); longer rows
// are cut at every MV_TILE elements, a fixed order that depends on the tile.
//
// Why MV_WARPTILES could reach the flat kernels' share of copy bandwidth (92% for the
// reparameterization forward, the same loads, stores and per-element math as the fused forward)
// where MV_REGTILES stays at 48-75%: MV_REGTILES has up to 128 KB of loads in flight per
// multiprocessor (4 blocks x 256 threads x 4 chunks x 2 inputs x 16 bytes), twice a flat
// kernel's, and measured slower, not faster, with smaller tiles and more blocks resident (2048
// and 1024 elements); so what it lacks is not bytes in flight, and its cost is per tile: every
// tile is a block that is launched, issues its loads, waits at a barrier for the slowest of its
// 8 warps, sums with no load in flight, and retires. With a warp per tile the only wait is the
// __syncwarp of the 32 lanes that share the tile, and a warp that has summed its tile issues the
// loads of its next one at once (no block launch, no other warp to wait for), so at any time
// most warps of a multiprocessor have loads in flight, as in a flat kernel's grid-stride loop.
// Its loads are those of MV_REGTILES (whole 16-byte chunks, consecutive lanes on consecutive
// chunks, every load of a lane issued before any use) and each chunk's four normals come from
// its own Philox block, as in the reparameterization kernel, so z is that kernel's bit for bit.
// (The wrappers' grid, one block per tile, is correct for both designs, as any grid is, but
// would give MV_WARPTILES 8 warps per tile, 7 of them idle.)
//
// (Not chosen: two passes, a flat one writing z and every element's KL term, then a row sum over
// the terms. It moves the terms twice more: KL alone 4n + B items against the 2n + B the op must
// move, the fused forward 5n + B against 3n + B, so even at full copy speed it reaches at most
// 50% and 60% of the copy bandwidth counted in the op's bytes: below 85% by construction.)
#define MV_REGTILES 1
#define MV_WARPTILES 2
#ifndef MV_ROW_FWD
#define MV_ROW_FWD MV_REGTILES
#endif
#if MV_ROW_FWD == MV_REGTILES
#define MV_TEAM MV_BLOCK  // the threads that share a tile
#elif MV_ROW_FWD == MV_WARPTILES
#define MV_TEAM 32
#else
#error "MV_ROW_FWD must be MV_REGTILES or MV_WARPTILES"
#endif

// The chunks each thread of a forward row kernel holds in registers: a tile is MV_TEAM threads
// of MV_TILE_CHUNKS chunks of 4 elements.
#define MV_TILE_CHUNKS (MV_TILE / (4 * MV_TEAM))
static_assert(MV_TILE_CHUNKS >= 1 && MV_TILE == 4 * MV_TEAM * MV_TILE_CHUNKS,
              "MV_TILE must be a multiple of 4 * MV_TEAM (MV_BLOCK, or 32 with MV_WARPTILES)");

// The register budget of the forward row kernels. Without launch bounds (the default) nvcc
// gives the float32 kernels 55-64 registers a thread (sm_80, sm_90): 4 blocks of MV_BLOCK
// resident on a multiprocessor (__launch_bounds__(MV_BLOCK, 1) would let it take 80-99, and
// keep 2 or 3). MV_WARPTILES takes 72-80 on sm_90 (76-96 on sm_80) with MV_TILE=512: 3 blocks
// (with -DMV_ROW_FWD_MIN_BLOCKS=4, 64 and at most 56 bytes spilled), and 56-64 (61-72) with
// MV_TILE=256: 4 blocks on sm_90.
// -DMV_ROW_FWD_MIN_BLOCKS=k asks for k blocks: at most 65536 / (MV_BLOCK k) registers, the rest
// spilled to local memory.
#ifdef MV_ROW_FWD_MIN_BLOCKS
#define MV_ROW_FWD_BOUNDS __launch_bounds__(MV_BLOCK, MV_ROW_FWD_MIN_BLOCKS)
#else
#define MV_ROW_FWD_BOUNDS
#endif

// The barrier of the threads that share a tile.
__device__ __forceinline__ void mv_team_sync() {
#if MV_ROW_FWD == MV_WARPTILES
    __syncwarp();
#else
    __syncthreads();
#endif
}

// The tiles of one team over C-contiguous (B, D) arrays in0 and in1, in2 (repeating with periods
// p1, p2 where the kind reads them so, chunks.cuh): out[b] = row b's terms of the `kind` summed
// in the order of chunks.cuh (mv_row_finish of the sum), and for MV_ROW_REPARAM_KL
// z = mu + exp(logvar / 2) * eps. Team `team` of `teams`
// takes tiles team, team + teams, ... (R rows, or the segments of one long row): (a) every thread
// (rank tid of MV_TEAM) loads its MV_TILE_CHUNKS chunks of the tile into registers before it uses
// any (so that they are in flight together), computes them and stores their terms to the team's
// `terms` (MV_TILE elements of shared memory) as 16-byte vectors; one team barrier; (b) P lanes
// per row segment sum them.
template <typename T, int kind>
__device__ __forceinline__ void mv_row_fwd_tiles(const T* __restrict__ in0, const T* __restrict__ in1, mv_i64 p1,
                                                 const T* __restrict__ in2, mv_i64 p2, T* __restrict__ z,
                                                 T* __restrict__ out, mv_i64 B, mv_i64 D, mv_u64 seed,
                                                 mv_u64 offset, mv_u32 stream, T* terms, int tid, mv_i64 team,
                                                 mv_i64 teams) {
    // terms[e - 4 c0]: element e of the tile
    const mv_row_tiling t = mv_row_tiling_of(D);
    const int P = t.lanes, lane = tid & (P - 1), group = tid / P;
    const int groups = MV_TEAM / P;
    const mv_i64 ntiles = (B + t.rows - 1) / t.rows;
    for (mv_i64 tile = team; tile < ntiles; tile += teams) {
        const mv_i64 r0 = tile * t.rows, r1 = r0 + t.rows < B ? r0 + t.rows : B;
        T carry = T(0);  // the row's sum over its earlier segments (one-row tiles only)
        for (mv_i64 lo = r0 * D, hi; lo < r1 * D; lo = hi) {
            hi = mv_tile_end(lo, r1, D);
            const mv_i64 c0 = lo >> 2, c1 = (hi + 3) >> 2;
            T a[MV_TILE_CHUNKS][4], b[MV_TILE_CHUNKS][4], d[MV_TILE_CHUNKS][4];  // (d: MV_ROW_GAUSSIAN's)
#pragma unroll
            for (int q = 0; q < MV_TILE_CHUNKS; ++q) {  // every load of the thread first
                const mv_i64 c = c0 + tid + q * MV_TEAM;
                if (c < c1) mv_row_load4<T, kind>(in0, in1, p1, in2, p2, c, lo, hi, a[q], b[q], d[q]);
            }
#pragma unroll
            for (int q = 0; q < MV_TILE_CHUNKS; ++q) {
                const mv_i64 c = c0 + tid + q * MV_TEAM;
                if (c < c1) {
                    T t4[4];
                    mv_chunk_row_fwd<T, kind>(c, lo, hi, seed, offset, stream, a[q], b[q], d[q], z, t4);
                    mv_vec4_store(terms + 4 * (c - c0), t4);
                }
            }
            mv_team_sync();
            // rows [r0, r1) meet this tile in [max(lo, row*D), min(hi, row*D + D))
            for (mv_i64 base = r0; base < r1; base += groups) {  // the same trip count in every lane
                const mv_i64 row = base + group;
                T v = T(0);
                mv_i64 from = 0, to = 0;
                if (row < r1) {
                    from = row * D > lo ? row * D : lo;
                    to = row * D + D < hi ? row * D + D : hi;
                    v = mv_lane_partial<T>(terms + (from - 4 * c0), to - from, lane, P);
                }
                v = mv_lane_tree<T>(v, P);
                if (row < r1 && lane == 0) {
                    carry += v;
                    if (to == row * D + D) {  // the row's last segment
                        out[row] = mv_row_finish<T, kind>(carry);
                        carry = T(0);
                    }
                }
            }
            // terms is overwritten by the next segment or tile (the same condition in every thread)
            if (hi < r1 * D || tile + teams < ntiles) mv_team_sync();
        }
    }
}

// The forward of the row kernels (kl.cu, fused.cu, bernoulli.cu, gaussian.cu) over C-contiguous
// (B, D) arrays (block (MV_BLOCK, 1, 1), any grid), in the design MV_ROW_FWD chose.
template <typename T, int kind>
__device__ __forceinline__ void mv_row_fwd(const T* __restrict__ in0, const T* __restrict__ in1, mv_i64 p1,
                                           const T* __restrict__ in2, mv_i64 p2, T* __restrict__ z,
                                           T* __restrict__ out, mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset,
                                           mv_u32 stream) {
    __shared__ __align__(16) T terms[MV_BLOCK / MV_TEAM][MV_TILE];
    static_assert(sizeof(terms) <= 48 * 1024, "the terms of a block must fit in 48 KiB of static shared memory");
#if MV_ROW_FWD == MV_WARPTILES  // a team per warp: MV_BLOCK / 32 teams a block
    const int warp = threadIdx.x / 32;
    mv_row_fwd_tiles<T, kind>(in0, in1, p1, in2, p2, z, out, B, D, seed, offset, stream, terms[warp],
                              threadIdx.x % 32, (mv_i64)blockIdx.x * (MV_BLOCK / 32) + warp,
                              (mv_i64)gridDim.x * (MV_BLOCK / 32));
#else  // a team per block
    mv_row_fwd_tiles<T, kind>(in0, in1, p1, in2, p2, z, out, B, D, seed, offset, stream, terms[0], threadIdx.x,
                              blockIdx.x, gridDim.x);
#endif
}

#endif  // MINIVAE_DEVICE_CUH
