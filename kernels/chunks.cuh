// The per-thread work of the kernels, as __host__ __device__ functions: one thread, one chunk.
//
// A chunk is one Philox block: elements [4c, 4c + 4) of a draw share the counter c (see
// philox.cuh), so the thread that owns chunk c computes its four normals in registers and uses
// them at once on the same four elements of mu, logvar, dz, ... -- no shared memory, no
// barrier, and the loads of the inputs do not wait for the generator (they are independent of
// it, so the compiler issues them first and Philox's arithmetic hides their latency).
// Neighbouring threads own neighbouring chunks, so a warp reads 32 x 16 contiguous bytes per
// input (one 16-byte vector load per thread where the chunk is whole and aligned).
//
// Flat kernels (random.cu, reparam.cu, dense.cu but for its bias gradient, and the backward
// passes of kl.cu, fused.cu, bernoulli.cu, gaussian.cu) run these over the chunks of n
// elements; the forward row kernels run them over tiles of whole rows (see "row kernels"
// below), and the column reductions over columns (see "column reductions").
// tests/host_shim.cpp replays the same loops on the host, calling these very functions, so the
// indexing (every element written once, rows and tiles masked, the order of the row and column
// sums) is tested without a GPU.
#ifndef MINIVAE_CHUNKS_CUH
#define MINIVAE_CHUNKS_CUH

#include "vae_math.cuh"

// ---------------------------------------------------------------- loads and stores of a chunk
#if defined(__CUDA_ARCH__)
// Four consecutive values at a 16-byte aligned address: one float4, or two double2.
__device__ __forceinline__ void mv_vec4_load(const float* p, float v[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void mv_vec4_load(const double* p, double v[4]) {
    const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void mv_vec4_store(float* p, const float v[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void mv_vec4_store(double* p, const double v[4]) {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}
#endif

// Elements [4c, 4c + 4) that lie in [lo, hi) are read (the others read as 0, a value every
// formula below takes without NaN) or written (the others are left alone). On the device a
// whole chunk of a 16-byte aligned array is one vector load/store per 16 bytes.
template <typename T>
MV_HD bool mv_chunk_whole(const T* p, mv_i64 c, mv_i64 lo, mv_i64 hi) {
#if defined(__CUDA_ARCH__)
    return 4 * c >= lo && 4 * c + 4 <= hi && (((unsigned long long)p) & 15) == 0;
#else
    (void)p; (void)c; (void)lo; (void)hi;
    return false;  // the host replay takes the element-wise path (the same values)
#endif
}

template <typename T>
MV_HD void mv_load4(const T* __restrict__ p, mv_i64 c, mv_i64 lo, mv_i64 hi, T v[4]) {
#if defined(__CUDA_ARCH__)
    if (mv_chunk_whole(p, c, lo, hi)) {
        mv_vec4_load(p + 4 * c, v);
        return;
    }
#endif
    for (int k = 0; k < 4; ++k) {
        mv_i64 e = 4 * c + k;
        v[k] = (e >= lo && e < hi) ? p[e] : T(0);
    }
}

template <typename T>
MV_HD void mv_store4(T* __restrict__ p, mv_i64 c, mv_i64 lo, mv_i64 hi, const T v[4]) {
#if defined(__CUDA_ARCH__)
    if (mv_chunk_whole(p, c, lo, hi)) {
        mv_vec4_store(p + 4 * c, v);
        return;
    }
#endif
    for (int k = 0; k < 4; ++k) {
        mv_i64 e = 4 * c + k;
        if (e >= lo && e < hi) p[e] = v[k];
    }
}

// e / D for e, D >= 0: in 32 bits when both fit (a 64-bit division is a long subroutine).
MV_HD mv_i64 mv_div(mv_i64 e, mv_i64 D) {
    return (e < 0x7fffffffLL && D < 0x7fffffffLL) ? (mv_i64)((mv_u32)e / (mv_u32)D) : e / D;
}

// Elements [4c, 4c + 4) that lie in [lo, hi) of an array whose values repeat p[0, period) (an
// array broadcast over leading axes: a bias over the rows of a product, the images x over the
// samples of their logits); the others read as 0. One division per chunk; a whole chunk is one
// vector load where the period is a multiple of 4.
template <typename T>
MV_HD void mv_load4_periodic(const T* __restrict__ p, mv_i64 period, mv_i64 c, mv_i64 lo, mv_i64 hi, T v[4]) {
    mv_i64 i = 4 * c - period * mv_div(4 * c, period);  // where element 4c is in p
#if defined(__CUDA_ARCH__)
    if (period % 4 == 0 && mv_chunk_whole(p + i, 0, lo - 4 * c, hi - 4 * c)) {
        mv_vec4_load(p + i, v);
        return;
    }
#endif
    for (int k = 0; k < 4; ++k) {
        const mv_i64 e = 4 * c + k;
        v[k] = (e >= lo && e < hi) ? p[i] : T(0);
        if (++i == period) i = 0;
    }
}

// ---------------------------------------------------------------- flat kernels (n elements)
MV_HD mv_i64 mv_nchunks(mv_i64 n) { return (n + 3) >> 2; }

// Normals (dist = 0), uniforms (dist = 1) or standard Gumbel samples (dist = 2) of chunk c into
// out[0, n).
template <typename T>
MV_HD void mv_chunk_generate(mv_i64 c, mv_i64 n, int dist, mv_u64 seed, mv_u64 offset,
                             mv_u32 stream, T* out) {
    T v[4];
    mv_u32x4 w = mv_philox_block((mv_u64)c, seed, offset, stream);
    if (dist == 0)
        mv_normal4<T>(w, v);
    else if (dist == 1)
        mv_uniform4<T>(w, v);
    else
        mv_gumbel4<T>(w, v);
    mv_store4<T>(out, c, 0, n, v);
}

// Reparameterization forward of chunk c: z = mu + exp(logvar / 2) * eps.
template <typename T>
MV_HD void mv_chunk_reparam_fwd(mv_i64 c, mv_i64 n, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                                const T* mu, const T* logvar, T* z) {
    T m[4], lv[4], eps[4];
    mv_load4<T>(mu, c, 0, n, m);
    mv_load4<T>(logvar, c, 0, n, lv);
    mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
    for (int k = 0; k < 4; ++k) m[k] = mv_reparam<T>(m[k], lv[k], eps[k]);
    mv_store4<T>(z, c, 0, n, m);
}

// Reparameterization backward of chunk c: dmu = dz (written only when dmu != 0),
// dlogvar = dz * eps * exp(logvar / 2) / 2.
template <typename T>
MV_HD void mv_chunk_reparam_bwd(mv_i64 c, mv_i64 n, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                                const T* dz, const T* logvar, T* dmu, T* dlogvar) {
    T d[4], lv[4], eps[4];
    mv_load4<T>(dz, c, 0, n, d);
    mv_load4<T>(logvar, c, 0, n, lv);
    mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
    if (dmu) mv_store4<T>(dmu, c, 0, n, d);
    for (int k = 0; k < 4; ++k) lv[k] = mv_reparam_dlogvar<T>(d[k], lv[k], eps[k]);
    mv_store4<T>(dlogvar, c, 0, n, lv);
}

// ---------------------------------------------------------------- row kernels ((B, D) arrays)
// Row b of a C-contiguous (B, D) array holds elements [b*D, b*D + D).
//
// Backward passes need no reduction: they run flat over the chunks like the kernels above, each
// element e taking its row's upstream gkl[e / D] (one division per chunk).
//
// Forward passes sum each row's terms (the KL's, the Bernoulli's or the Gaussian's, as the
// kernel's kind says below). They work on tiles of at most MV_TILE elements: a tile
// is R whole rows, or, for rows too long for that, one segment of one row. The threads that
// share a tile (a block, or a warp: the designs of device.cuh) (a) load the tile's chunks into
// registers (each thread an equal share, all loads before any use, so that they are in flight
// together), compute them (mv_chunk_row_fwd: z, and each element's term parked in shared
// memory at its place in the tile), then (b) sum each row's terms in a FIXED order
// (mv_segment_sum below): a row's sum = segment sums added in segment order, each segment
// summed by P "lanes" -- lane p adds terms p, p + P, p + 2P, ... left to right -- whose P
// partials are then added pairwise by a halving tree (lane i += lane i + P/2, then + P/4, ...
// 1). R is chosen so that R*D is a multiple of 4: then a tile of whole rows starts on a chunk
// boundary, and its chunks are whole, aligned 16-byte vector loads and stores.
// A row that does not fit so (R = 1) is cut into segments: the first runs from the row's start
// to MV_TILE elements past the chunk boundary at or before it, each next one MV_TILE further
// (so every segment covers at most MV_TILE / 4 chunks, and all but the first start on a chunk
// boundary); a row of D <= MV_TILE - 3 is one segment.
// The result is deterministic (no atomics) and is the same on the host replay, which calls
// mv_segment_sum itself; it depends on MV_TILE (where long rows are cut), not on who sums a tile.
#ifndef MV_TILE
#define MV_TILE 4096
#endif

struct mv_row_tiling {
    mv_i64 rows;  // R: rows per tile (1 when R*D % 4 == 0 leaves no whole rows in MV_TILE)
    int lanes;    // P: the lanes summing one row segment, a power of two in [1, 32]
};
MV_HD mv_row_tiling mv_row_tiling_of(mv_i64 D) {
    mv_row_tiling t;
    // the smallest m with m*D a multiple of 4: 4 / gcd(D, 4)
    const mv_i64 m = (D % 4 == 0) ? 1 : ((D % 2 == 0) ? 2 : 4);
    t.rows = (MV_TILE / (m * D)) * m;
    if (t.rows < 1) t.rows = 1;
    const mv_i64 seg = D < MV_TILE ? D : MV_TILE;
    int p = 1;
    while (p < 32 && 8 * p < seg) p *= 2;  // about 8 terms or fewer per lane
    t.lanes = p;
    return t;
}

// The end of the tile (or segment) that starts at element lo, for the tile of rows [r0, r1):
// MV_TILE elements past the chunk boundary at or before lo, or the end of row r1 - 1.
MV_HD mv_i64 mv_tile_end(mv_i64 lo, mv_i64 r1, mv_i64 D) {
    const mv_i64 cap = 4 * (lo >> 2) + MV_TILE;
    return cap < r1 * D ? cap : r1 * D;
}

// Lane p's partial of the terms [0, n) of a segment: terms p, p + P, ... added left to right.
template <typename T>
MV_HD T mv_lane_partial(const T* terms, mv_i64 n, int p, int P) {
    T acc = T(0);
    for (mv_i64 j = p; j < n; j += P) acc += terms[j];
    return acc;
}
// The whole fixed-order sum of one segment, sequentially (the host replay's: the halving tree
// over an array, in the order the device's shuffle-down tree, mv_lane_tree, adds).
template <typename T>
MV_HD T mv_segment_sum(const T* terms, mv_i64 n, int P) {
    T part[32];
    for (int p = 0; p < P; ++p) part[p] = mv_lane_partial<T>(terms, n, p, P);
    for (int o = P / 2; o > 0; o /= 2)
        for (int i = 0; i < o; ++i) part[i] += part[i + o];
    return part[0];
}

// What a forward row kernel computes of each element of its inputs (in0 with the rows' elements,
// in1 and in2 repeating with the periods p1 and p2: a divisor of the rows' size where an input is
// broadcast over leading axes) and sums per row (its `kind`):
#define MV_ROW_KL 0          // (mu, logvar): the KL terms
#define MV_ROW_REPARAM_KL 1  // (mu, logvar): the KL terms, and z = mu + exp(logvar / 2) eps
#define MV_ROW_BERNOULLI 2   // (logits, x): the Bernoulli log-likelihood terms; x repeats (the
                             // images, under the logits of several samples of each)
#define MV_ROW_GAUSSIAN 3    // (x, mu, logvar): the Gaussian log-density, minus the sum of the
                             // halved terms; mu and logvar repeat (a sample's parameters under
                             // several samples, or one value for all: a standard normal prior)

// Chunk c of the tile [lo, hi) of the kind's inputs (0 outside the tile). The KL kinds read two
// inputs of the rows' shape (whole vector loads, no division).
template <typename T, int kind>
MV_HD void mv_row_load4(const T* in0, const T* in1, mv_i64 p1, const T* in2, mv_i64 p2, mv_i64 c, mv_i64 lo,
                        mv_i64 hi, T a[4], T b[4], T d[4]) {
    mv_load4<T>(in0, c, lo, hi, a);
    if (kind == MV_ROW_KL || kind == MV_ROW_REPARAM_KL) {
        mv_load4<T>(in1, c, lo, hi, b);
        return;
    }
    mv_load4_periodic<T>(in1, p1, c, lo, hi, b);
    if (kind == MV_ROW_GAUSSIAN) mv_load4_periodic<T>(in2, p2, c, lo, hi, d);
}

// A row's result from the sum of its terms.
template <typename T, int kind>
MV_HD T mv_row_finish(T sum) {
    return kind == MV_ROW_GAUSSIAN ? -sum : sum;
}

// Forward of chunk c of the tile [lo, hi), its inputs a, b, d already loaded (mv_row_load4): the
// terms of its four elements into t4 (those outside the tile are terms of zeros, never summed),
// and for MV_ROW_REPARAM_KL z = mu + exp(logvar / 2) eps of its elements in the tile.
template <typename T, int kind>
MV_HD void mv_chunk_row_fwd(mv_i64 c, mv_i64 lo, mv_i64 hi, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                            T a[4], const T b[4], const T d[4], T* z, T t4[4]) {
    if (kind == MV_ROW_BERNOULLI) {
        for (int k = 0; k < 4; ++k) t4[k] = mv_bernoulli_term<T>(a[k], b[k]);
        return;
    }
    if (kind == MV_ROW_GAUSSIAN) {
        for (int k = 0; k < 4; ++k) t4[k] = mv_gaussian_term<T>(a[k], b[k], d[k]);
        return;
    }
    const bool fuse = kind == MV_ROW_REPARAM_KL;
    T eps[4];
    if (fuse) mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
    for (int k = 0; k < 4; ++k) {
        t4[k] = mv_kl_term<T>(a[k], b[k]);
        if (fuse) a[k] = mv_reparam<T>(a[k], b[k], eps[k]);
    }
    if (fuse) mv_store4<T>(z, c, lo, hi, a);
}

// The upstream gkl of the four elements of chunk c (0 past n, and everywhere when gkl is null).
template <typename T>
MV_HD void mv_row_upstream4(const T* gkl, mv_i64 c, mv_i64 n, mv_i64 D, T g[4]) {
    mv_i64 row = mv_div(4 * c, D);  // one division per chunk
    mv_i64 next = (row + 1) * D;
    for (int k = 0; k < 4; ++k) {
        const mv_i64 e = 4 * c + k;
        while (e >= next) { ++row; next += D; }  // D < 4: a chunk can span several rows
        g[k] = (gkl && e < n) ? gkl[row] : T(0);
    }
}

// Fused backward of chunk c of the n = B*D elements, upstream dz and gkl (B,) (may be null):
//   dmu = dz + g * mu,   dlogvar = dz * eps * exp(logvar / 2) / 2 + g * (exp(logvar) - 1) / 2.
// With gkl null the KL's terms are left out, not added as 0 * mu and 0 * (exp(logvar) - 1) / 2:
// those are NaN where mu is infinite or exp(logvar) overflows, and the op's xp code, which adds
// nothing then, stays finite.
template <typename T>
MV_HD void mv_chunk_fused_bwd(mv_i64 c, mv_i64 n, mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                              const T* dz, const T* gkl, const T* mu, const T* logvar, T* dmu, T* dlogvar) {
    T d[4], m[4], lv[4], eps[4], g[4];
    mv_load4<T>(dz, c, 0, n, d);
    mv_load4<T>(mu, c, 0, n, m);
    mv_load4<T>(logvar, c, 0, n, lv);
    mv_row_upstream4<T>(gkl, c, n, D, g);
    mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
    for (int k = 0; k < 4; ++k) {
        const T dlv = mv_reparam_dlogvar<T>(d[k], lv[k], eps[k]);
        m[k] = gkl ? d[k] + mv_kl_dmu<T>(g[k], m[k]) : d[k];
        lv[k] = gkl ? dlv + mv_kl_dlogvar<T>(g[k], lv[k]) : dlv;
    }
    mv_store4<T>(dmu, c, 0, n, m);
    mv_store4<T>(dlogvar, c, 0, n, lv);
}

// KL backward alone of chunk c: dmu = g * mu, dlogvar = g * (exp(logvar) - 1) / 2.
template <typename T>
MV_HD void mv_chunk_kl_bwd(mv_i64 c, mv_i64 n, mv_i64 D, const T* gkl, const T* mu, const T* logvar,
                           T* dmu, T* dlogvar) {
    T m[4], lv[4], g[4];
    mv_load4<T>(mu, c, 0, n, m);
    mv_load4<T>(logvar, c, 0, n, lv);
    mv_row_upstream4<T>(gkl, c, n, D, g);
    for (int k = 0; k < 4; ++k) {
        m[k] = mv_kl_dmu<T>(g[k], m[k]);
        lv[k] = mv_kl_dlogvar<T>(g[k], lv[k]);
    }
    mv_store4<T>(dmu, c, 0, n, m);
    mv_store4<T>(dlogvar, c, 0, n, lv);
}

// ---------------------------------------------------------------- dense layers (flat)
// Element e of a C-contiguous (rows, N) product is in column e % N.
//
// Bias and ReLU of chunk c of the n elements: out = relu(in + b[column]) (b may be null: no
// bias; relu 0: no ReLU; in may be out: in place). The additions and the ReLU are NumPy's
// `out += b` and `maximum(out, 0)`, the same numbers in one pass.
template <typename T>
MV_HD void mv_chunk_bias_act(mv_i64 c, mv_i64 n, mv_i64 N, const T* in, const T* b, int relu, T* out) {
    T v[4], bias[4];
    mv_load4<T>(in, c, 0, n, v);
    if (b) mv_load4_periodic<T>(b, N, c, 0, n, bias);
    for (int k = 0; k < 4; ++k) {
        if (b) v[k] = v[k] + bias[k];
        if (relu) v[k] = mv_relu<T>(v[k]);
    }
    mv_store4<T>(out, c, 0, n, v);
}

// The ReLU's backward of chunk c: d = g * [y > 0] (y: the layer's output, after the ReLU).
template <typename T>
MV_HD void mv_chunk_relu_grad(mv_i64 c, mv_i64 n, const T* g, const T* y, T* d) {
    T gv[4], yv[4];
    mv_load4<T>(g, c, 0, n, gv);
    mv_load4<T>(y, c, 0, n, yv);
    for (int k = 0; k < 4; ++k) gv[k] = mv_relu_grad<T>(gv[k], yv[k]);
    mv_store4<T>(d, c, 0, n, gv);
}

// ---------------------------------------------------------------- column reductions
// Reductions over the R rows of an (R, N) view, one result per column; element (r, col) of the
// view is at r * rs + col * cs (mv_columns). They are: a dense layer's bias gradient
// (kernels/dense.cu: the rows of a C-contiguous (R, N) array, rs = N, cs = 1); the log-sum-exp
// over the leading axis (kernels/logsumexp.cu: the IWAE bound over its k samples, the same
// view); and the log-softmax over the last axis (kernels/logsumexp.cu: a (B, C) array of
// logits viewed as C rows of B columns, rs = 1, cs = C). A block of MV_COLUMNS x
// MV_COLUMN_LANES threads reduces MV_COLUMNS neighbouring columns (in the first view a warp
// reads 4 rows of 8 neighbouring values: whole 32-byte sectors). Each column is reduced in a
// FIXED order by MV_COLUMN_LANES lanes -- lane l takes rows l, l + MV_COLUMN_LANES, ... left to
// right -- whose partials are then combined by the halving tree of the row sums (lane i with
// lane i + 16, then i + 8, ... 1): for a sum, the order of mv_segment_sum with
// P = MV_COLUMN_LANES over the column's values. No atomics: the same bits at every run, eager
// or captured. The work is spread over N / MV_COLUMNS blocks: made for many columns of up to a
// few thousand rows (a batch of a layer's units, k samples of a batch, a batch's classes), not
// for a long axis over a few columns, which would run on a few blocks.
#define MV_COLUMNS 8
#define MV_COLUMN_LANES 32

struct mv_columns {
    mv_i64 R, N;    // rows (reduced over) and columns (one result each)
    mv_i64 rs, cs;  // the strides, in elements, of a row and of a column
};
MV_HD mv_i64 mv_at(mv_columns v, mv_i64 r, mv_i64 col) { return r * v.rs + col * v.cs; }
// The views of the kernels: the rows of a C-contiguous (R, N) array; the C classes of each of
// the B rows of a C-contiguous (B, C) array (C rows of B columns).
MV_HD mv_columns mv_row_columns(mv_i64 R, mv_i64 N) { return mv_columns{R, N, N, 1}; }
MV_HD mv_columns mv_class_columns(mv_i64 B, mv_i64 C) { return mv_columns{C, B, 1, C}; }

// Lane l's partial sum of column col of d = g, or of d = g * [y > 0] behind a ReLU whose output is
// y (d is then written too): a dense layer's bias gradient (its d is needed by the layer's two
// products), and with y null the upstream's sum of the log-softmax's backward.
template <typename T>
MV_HD T mv_column_sum_partial(mv_columns v, mv_i64 col, int l, const T* g, const T* y, T* d) {
    T acc = T(0);
    for (mv_i64 r = l; r < v.R; r += MV_COLUMN_LANES) {
        const mv_i64 e = mv_at(v, r, col);
        T x = g[e];
        if (y) {
            x = mv_relu_grad<T>(x, y[e]);
            d[e] = x;
        }
        acc += x;
    }
    return acc;
}

// The log-sum-exp of column col (R >= 1) in two passes over it: the maximum m (lane l's partial
// starts from row l, or from row 0 when it has no rows: the maximum is the same with a value
// taken twice), then, with the shift s = mv_lse_shift(m), the sum of exp(x - s) (lane l's
// partial below); the result is mv_lse_finish(s, sum). The two parts are kept apart for the
// log-softmax and the log-sum-exp's gradient, which subtract them one at a time (mv_log_softmax).
template <typename T>
struct mv_lse_parts {
    T shift, sum;
};
template <typename T>
MV_HD T mv_column_max_partial(mv_columns v, mv_i64 col, int l, const T* x) {
    T acc = x[mv_at(v, l < v.R ? l : 0, col)];
    for (mv_i64 r = l + MV_COLUMN_LANES; r < v.R; r += MV_COLUMN_LANES) acc = mv_max<T>(acc, x[mv_at(v, r, col)]);
    return acc;
}
template <typename T>
MV_HD T mv_lse_partial(mv_columns v, mv_i64 col, int l, const T* x, T shift) {
    T acc = T(0);
    for (mv_i64 r = l; r < v.R; r += MV_COLUMN_LANES) acc += mv_lse_term<T>(x[mv_at(v, r, col)], shift);
    return acc;
}

// The log-softmax of column col, given the parts p of its log-sum-exp: out = (x - p.shift) -
// log(p.sum), lane l writing its rows; and its backward, given the column's sum s of the upstream
// g: d = g - exp(out) s.
template <typename T>
MV_HD void mv_log_softmax_lane(mv_columns v, mv_i64 col, int l, const T* x, mv_lse_parts<T> p, T* out) {
    const T log_sum = mv_log(p.sum);
    for (mv_i64 r = l; r < v.R; r += MV_COLUMN_LANES) {
        const mv_i64 e = mv_at(v, r, col);
        out[e] = mv_log_softmax<T>(x[e], p.shift, log_sum);
    }
}
template <typename T>
MV_HD void mv_log_softmax_grad_lane(mv_columns v, mv_i64 col, int l, const T* g, const T* out, T s, T* d) {
    for (mv_i64 r = l; r < v.R; r += MV_COLUMN_LANES) {
        const mv_i64 e = mv_at(v, r, col);
        d[e] = mv_log_softmax_grad<T>(g[e], out[e], s);
    }
}

// The log-sum-exp's backward of chunk c of the n = R N elements: d = g[col] exp((x -
// shift[col]) - log_sum[col]) (mv_lse_grad), g and the forward's parts shift and log_sum (N,)
// repeating over the rows.
template <typename T>
MV_HD void mv_chunk_lse_bwd(mv_i64 c, mv_i64 n, mv_i64 N, const T* g, const T* x, const T* shift,
                            const T* log_sum, T* d) {
    T gv[4], xv[4], sv[4], lv[4];
    mv_load4_periodic<T>(g, N, c, 0, n, gv);
    mv_load4<T>(x, c, 0, n, xv);
    mv_load4_periodic<T>(shift, N, c, 0, n, sv);
    mv_load4_periodic<T>(log_sum, N, c, 0, n, lv);
    for (int k = 0; k < 4; ++k) xv[k] = mv_lse_grad<T>(gv[k], xv[k], sv[k], lv[k]);
    mv_store4<T>(d, c, 0, n, xv);
}

// ---------------------------------------------------------------- Bernoulli log-likelihood
// Backward of chunk c of the n logits, rows of D, with the per-row upstream g and the targets x
// repeating with period xn: dlogits = g * (x - sigmoid(logits)).
template <typename T>
MV_HD void mv_chunk_bernoulli_bwd(mv_i64 c, mv_i64 n, mv_i64 D, const T* g, const T* logits, const T* x,
                                  mv_i64 xn, T* d) {
    T l[4], xv[4], gv[4];
    mv_load4<T>(logits, c, 0, n, l);
    mv_load4_periodic<T>(x, xn, c, 0, n, xv);
    mv_row_upstream4<T>(g, c, n, D, gv);
    for (int k = 0; k < 4; ++k) l[k] = mv_bernoulli_dlogit<T>(gv[k], l[k], xv[k]);
    mv_store4<T>(d, c, 0, n, l);
}

// ---------------------------------------------------------------- Gaussian log-density
// Backward of chunk c of the n elements of x, rows of D, with the per-row upstream g, mu and
// logvar repeating with periods mu_n and lv_n: dmu = g t exp(-logvar / 2), dx = -dmu,
// dlogvar = g (t^2 - 1) / 2, each written where its pointer is not null (the engine sums dmu and
// dlogvar over the axes mu and logvar were broadcast along).
template <typename T>
MV_HD void mv_chunk_gaussian_bwd(mv_i64 c, mv_i64 n, mv_i64 D, const T* g, const T* x, const T* mu, mv_i64 mu_n,
                                 const T* logvar, mv_i64 lv_n, T* dx, T* dmu, T* dlogvar) {
    T xv[4], m[4], lv[4], gv[4], inv_std[4], t[4], d[4];
    mv_load4<T>(x, c, 0, n, xv);
    mv_load4_periodic<T>(mu, mu_n, c, 0, n, m);
    mv_load4_periodic<T>(logvar, lv_n, c, 0, n, lv);
    mv_row_upstream4<T>(g, c, n, D, gv);
    for (int k = 0; k < 4; ++k) {  // once for the three gradients
        inv_std[k] = mv_inv_std<T>(lv[k]);
        t[k] = (xv[k] - m[k]) * inv_std[k];
    }
    if (dx || dmu) {
        for (int k = 0; k < 4; ++k) d[k] = mv_gaussian_dmu<T>(gv[k], t[k], inv_std[k]);
        if (dmu) mv_store4<T>(dmu, c, 0, n, d);
        if (dx) {
            for (int k = 0; k < 4; ++k) d[k] = -d[k];
            mv_store4<T>(dx, c, 0, n, d);
        }
    }
    if (dlogvar) {
        for (int k = 0; k < 4; ++k) d[k] = mv_gaussian_dlogvar<T>(gv[k], t[k]);
        mv_store4<T>(dlogvar, c, 0, n, d);
    }
}

#endif  // MINIVAE_CHUNKS_CUH
