// Test-only host build of the kernels' __host__ __device__ code (kernels/*.cuh), loaded by
// tests/test_kernels.py through ctypes and compared with the NumPy twin (minivae.random).
//
// Besides the per-element functions, it replays each kernel's thread loops sequentially with the
// very per-chunk functions of kernels/chunks.cuh the GPU runs: every chunk of a flat array, and
// for a forward row kernel every tile (its chunks, then its row sums in the device's fixed
// order, mv_segment_sum), so the row sums are the device's bit for bit, not only to rounding.
// The tiles and their order depend on MV_TILE alone, not on the design of device.cuh that runs
// them (a block or a warp per tile): a shim built with -DMV_TILE=512 replays the forward row
// kernels built with -DMV_ROW_FWD=MV_WARPTILES -DMV_TILE=512.
//
// Build: g++ -O2 -std=c++14 -shared -fPIC -I kernels tests/host_shim.cpp -o libshim.so
// (no -ffast-math: the host and device builds must round the same way).
#include "adam.cuh"
#include "chunks.cuh"
#include "step.cuh"

#include <vector>

#define SHIM extern "C"

SHIM int shim_abi_version() { return 18; }

// ---- the tiling of the forward row kernels (MV_TILE, rows per tile, lanes per row segment) --
SHIM mv_i64 shim_tile() { return MV_TILE; }
SHIM void shim_row_tiling(mv_i64 D, mv_i64* rows, int* lanes) {
    const mv_row_tiling t = mv_row_tiling_of(D);
    *rows = t.rows;
    *lanes = t.lanes;
}

// ---- the chunks' division (a chunk's row, its place in a repeating input) -------------------
SHIM mv_i64 shim_div(mv_i64 e, mv_i64 D) { return mv_div(e, D); }

// ---- Philox -------------------------------------------------------------------------------
SHIM void shim_philox4x32(const mv_u32* ctr, const mv_u32* key, mv_u32* out, mv_i64 n, int rounds) {
    for (mv_i64 i = 0; i < n; ++i) {
        mv_u32x4 c = {ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]};
        mv_u32x2 k = {key[2 * i], key[2 * i + 1]};
        mv_u32x4 r = rounds == 10 ? mv_philox4x32_10(c, k) : mv_philox4x32_R(rounds, c, k);
        out[4 * i] = r.x;
        out[4 * i + 1] = r.y;
        out[4 * i + 2] = r.z;
        out[4 * i + 3] = r.w;
    }
}

SHIM void shim_philox_words(mv_u32* out, mv_i64 n, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                            mv_i64 start) {
    for (mv_i64 i = 0; i < n; ++i) out[i] = mv_philox_word((mv_u64)(start + i), seed, offset, stream);
}

// ---- per-element transforms -----------------------------------------------------------------
template <typename T>
static void uniform_words(const mv_u32* w, T* out, mv_i64 n) {
    for (mv_i64 i = 0; i < n; ++i) out[i] = mv_traits<T>::uniform(w[i]);
}
template <typename T>
static void normal_words(const mv_u32* w, T* out, mv_i64 nblocks) {
    for (mv_i64 b = 0; b < nblocks; ++b) {
        mv_u32x4 v = {w[4 * b], w[4 * b + 1], w[4 * b + 2], w[4 * b + 3]};
        mv_normal4<T>(v, out + 4 * b);
    }
}
template <typename T>
static void gumbel_words(const mv_u32* w, T* out, mv_i64 n) {
    for (mv_i64 i = 0; i < n; ++i) out[i] = mv_gumbel<T>(w[i]);
}
template <typename T>
static void normal_at(const mv_i64* idx, T* out, mv_i64 n, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    for (mv_i64 i = 0; i < n; ++i) out[i] = mv_normal_at<T>((mv_u64)idx[i], seed, offset, stream);
}
template <typename T>
static void elementwise(int which, const T* a, const T* b, const T* c, T* out, mv_i64 n) {
    for (mv_i64 i = 0; i < n; ++i) {
        switch (which) {
            case 0: out[i] = mv_reparam<T>(a[i], b[i], c[i]); break;           // (mu, logvar, eps)
            case 1: out[i] = mv_reparam_dlogvar<T>(a[i], b[i], c[i]); break;   // (dz, logvar, eps)
            case 2: out[i] = mv_kl_term<T>(a[i], b[i]); break;                 // (mu, logvar)
            case 3: out[i] = mv_kl_dmu<T>(a[i], b[i]); break;                  // (g, mu)
            case 4: out[i] = mv_kl_dlogvar<T>(a[i], b[i]); break;              // (g, logvar)
            case 5: out[i] = mv_bernoulli_term<T>(a[i], b[i]); break;          // (logits, x)
            case 6: out[i] = mv_bernoulli_dlogit<T>(a[i], b[i], c[i]); break;  // (g, logits, x)
            case 7: out[i] = mv_gaussian_term<T>(a[i], b[i], c[i]); break;     // (x, mu, logvar)
            case 8: out[i] = mv_lse_term<T>(a[i], b[i]); break;                // (x, shift)
            case 9: out[i] = mv_lse_finish<T>(a[i], b[i]); break;              // (shift, sum)
            case 10: out[i] = mv_log_softmax<T>(a[i], b[i], mv_log(c[i])); break;  // (x, shift, sum)
        }
    }
}

// ---- kernel replays -------------------------------------------------------------------------
template <typename T>
static void replay_generate(T* out, mv_i64 n, int dist, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    for (mv_i64 c = 0; c < mv_nchunks(n); ++c) mv_chunk_generate<T>(c, n, dist, seed, offset, stream, out);
}
template <typename T>
static void replay_reparam_fwd(const T* mu, const T* lv, T* z, mv_i64 n, mv_u64 seed, mv_u64 offset,
                               mv_u32 stream) {
    for (mv_i64 c = 0; c < mv_nchunks(n); ++c) mv_chunk_reparam_fwd<T>(c, n, seed, offset, stream, mu, lv, z);
}
template <typename T>
static void replay_reparam_bwd(const T* dz, const T* lv, T* dmu, T* dlv, mv_i64 n, mv_u64 seed,
                               mv_u64 offset, mv_u32 stream) {
    for (mv_i64 c = 0; c < mv_nchunks(n); ++c)
        mv_chunk_reparam_bwd<T>(c, n, seed, offset, stream, dz, lv, dmu, dlv);
}
// A forward row kernel: its tiles in order, each segment's chunks (loaded, then computed, their
// terms at 4 (c - c0) + k) then its row-segment sums in the order of the device (mv_segment_sum),
// segments of a row added in order.
template <typename T, int kind>
static void replay_row_fwd(const T* in0, const T* in1, mv_i64 p1, const T* in2, mv_i64 p2, T* z, T* out, mv_i64 B,
                           mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    const mv_row_tiling t = mv_row_tiling_of(D);
    std::vector<T> terms(MV_TILE);
    for (mv_i64 r0 = 0; r0 < B; r0 += t.rows) {
        const mv_i64 r1 = r0 + t.rows < B ? r0 + t.rows : B;
        T carry = T(0);
        for (mv_i64 lo = r0 * D, hi; lo < r1 * D; lo = hi) {
            hi = mv_tile_end(lo, r1, D);
            const mv_i64 c0 = lo >> 2, c1 = (hi + 3) >> 2;
            for (mv_i64 c = c0; c < c1; ++c) {
                T a[4], b[4], d[4];
                mv_row_load4<T, kind>(in0, in1, p1, in2, p2, c, lo, hi, a, b, d);
                mv_chunk_row_fwd<T, kind>(c, lo, hi, seed, offset, stream, a, b, d, z, &terms[4 * (c - c0)]);
            }
            for (mv_i64 row = r0; row < r1; ++row) {
                const mv_i64 from = row * D > lo ? row * D : lo, to = row * D + D < hi ? row * D + D : hi;
                if (from >= to) continue;
                carry += mv_segment_sum<T>(terms.data() + (from - 4 * c0), to - from, t.lanes);
                if (to == row * D + D) {
                    out[row] = mv_row_finish<T, kind>(carry);
                    carry = T(0);
                }
            }
        }
    }
}
template <typename T>
static void replay_kl_bwd(const T* gkl, const T* mu, const T* lv, T* dmu, T* dlv, mv_i64 B, mv_i64 D) {
    for (mv_i64 c = 0; c < mv_nchunks(B * D); ++c) mv_chunk_kl_bwd<T>(c, B * D, D, gkl, mu, lv, dmu, dlv);
}
template <typename T>
static void replay_reparam_kl_bwd(const T* dz, const T* gkl, const T* mu, const T* lv, T* dmu, T* dlv,
                                  mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    for (mv_i64 c = 0; c < mv_nchunks(B * D); ++c)
        mv_chunk_fused_bwd<T>(c, B * D, D, seed, offset, stream, dz, gkl, mu, lv, dmu, dlv);
}

template <typename T>
static void replay_bias_act(const T* in, const T* b, T* out, mv_i64 n, mv_i64 N, int relu) {
    for (mv_i64 c = 0; c < mv_nchunks(n); ++c) mv_chunk_bias_act<T>(c, n, N, in, b, relu, out);
}
template <typename T>
static void replay_relu_grad(const T* g, const T* y, T* d, mv_i64 n) {
    for (mv_i64 c = 0; c < mv_nchunks(n); ++c) mv_chunk_relu_grad<T>(c, n, g, y, d);
}

// A column reduction (chunks.cuh, "column reductions"): the halving tree over the lanes'
// partials that a block runs in shared memory (mv_column_total of device.cuh), the sum or the
// maximum; returns the total.
template <typename T>
static T column_tree(T part[MV_COLUMN_LANES], bool is_max) {
    for (int o = MV_COLUMN_LANES / 2; o > 0; o >>= 1)
        for (int l = 0; l < o; ++l) part[l] = is_max ? mv_max<T>(part[l], part[l + o]) : part[l] + part[l + o];
    return part[0];
}
// The sum of column col of the view v: its lanes (mv_column_sum_partial, which writes d too),
// then the tree.
template <typename T>
static T column_sum(mv_columns v, mv_i64 col, const T* g, const T* y, T* d) {
    T part[MV_COLUMN_LANES];
    for (int l = 0; l < MV_COLUMN_LANES; ++l) part[l] = mv_column_sum_partial<T>(v, col, l, g, y, d);
    return column_tree<T>(part, false);
}
// The parts of the log-sum-exp of column col: the maximum's lanes and tree, then the sum's.
template <typename T>
static mv_lse_parts<T> column_lse(mv_columns v, mv_i64 col, const T* x) {
    T part[MV_COLUMN_LANES];
    for (int l = 0; l < MV_COLUMN_LANES; ++l) part[l] = mv_column_max_partial<T>(v, col, l, x);
    const T shift = mv_lse_shift<T>(column_tree<T>(part, true));
    for (int l = 0; l < MV_COLUMN_LANES; ++l) part[l] = mv_lse_partial<T>(v, col, l, x, shift);
    return {shift, column_tree<T>(part, false)};
}
template <typename T>
static void replay_bias_grad(const T* g, const T* y, T* d, T* db, mv_i64 R, mv_i64 N) {
    for (mv_i64 col = 0; col < N; ++col) db[col] = column_sum<T>(mv_row_columns(R, N), col, g, y, d);
}
template <typename T>
static void replay_lse_fwd(const T* x, T* out, T* shift, T* log_sum, mv_i64 R, mv_i64 N) {
    for (mv_i64 col = 0; col < N; ++col) {
        const mv_lse_parts<T> p = column_lse<T>(mv_row_columns(R, N), col, x);
        out[col] = mv_lse_finish<T>(p.shift, p.sum);
        shift[col] = p.shift;
        log_sum[col] = mv_log(p.sum);
    }
}
// The log-softmax over the C classes of each of B rows: C rows of B columns (mv_class_columns).
template <typename T>
static void replay_log_softmax_fwd(const T* x, T* out, mv_i64 B, mv_i64 C) {
    const mv_columns v = mv_class_columns(B, C);
    for (mv_i64 col = 0; col < B; ++col) {
        const mv_lse_parts<T> p = column_lse<T>(v, col, x);
        for (int l = 0; l < MV_COLUMN_LANES; ++l) mv_log_softmax_lane<T>(v, col, l, x, p, out);
    }
}
template <typename T>
static void replay_log_softmax_bwd(const T* g, const T* out, T* d, mv_i64 B, mv_i64 C) {
    const mv_columns v = mv_class_columns(B, C);
    for (mv_i64 col = 0; col < B; ++col) {
        const T s = column_sum<T>(v, col, g, nullptr, nullptr);
        for (int l = 0; l < MV_COLUMN_LANES; ++l) mv_log_softmax_grad_lane<T>(v, col, l, g, out, s, d);
    }
}
template <typename T>
static void replay_lse_bwd(const T* g, const T* x, const T* shift, const T* log_sum, T* d, mv_i64 n, mv_i64 N) {
    for (mv_i64 c = 0; c < mv_nchunks(n); ++c) mv_chunk_lse_bwd<T>(c, n, N, g, x, shift, log_sum, d);
}

template <typename T>
static void replay_bernoulli_bwd(const T* g, const T* logits, const T* x, T* d, mv_i64 B, mv_i64 D, mv_i64 xn) {
    for (mv_i64 c = 0; c < mv_nchunks(B * D); ++c) mv_chunk_bernoulli_bwd<T>(c, B * D, D, g, logits, x, xn, d);
}

template <typename T>
static void replay_gaussian_bwd(const T* g, const T* x, const T* mu, mv_i64 mu_n, const T* lv, mv_i64 lv_n, T* dx,
                                T* dmu, T* dlv, mv_i64 B, mv_i64 D) {
    for (mv_i64 c = 0; c < mv_nchunks(B * D); ++c)
        mv_chunk_gaussian_bwd<T>(c, B * D, D, g, x, mu, mu_n, lv, lv_n, dx, dmu, dlv);
}

template <typename T>
static void replay_adam(T* p, const T* g, T* m, T* v, T* vmax, mv_i64 n, mv_adam_scalars<T> s) {
    for (mv_i64 i = 0; i < n; ++i) mv_adam_entry<T>(i, p, g, m, v, vmax, s);
}

// ---- C entry points, one per dtype -----------------------------------------------------------
#define SHIM_DTYPE(T, SFX)                                                                                   \
    SHIM void shim_uniform_words_##SFX(const mv_u32* w, T* out, mv_i64 n) { uniform_words<T>(w, out, n); }   \
    SHIM void shim_normal_words_##SFX(const mv_u32* w, T* out, mv_i64 nblocks) {                            \
        normal_words<T>(w, out, nblocks);                                                                    \
    }                                                                                                        \
    SHIM void shim_gumbel_words_##SFX(const mv_u32* w, T* out, mv_i64 n) { gumbel_words<T>(w, out, n); }    \
    SHIM void shim_normal_at_##SFX(const mv_i64* idx, T* out, mv_i64 n, mv_u64 seed, mv_u64 offset,         \
                                   mv_u32 stream) {                                                          \
        normal_at<T>(idx, out, n, seed, offset, stream);                                                     \
    }                                                                                                        \
    SHIM void shim_elementwise_##SFX(int which, const T* a, const T* b, const T* c, T* out, mv_i64 n) {     \
        elementwise<T>(which, a, b, c, out, n);                                                              \
    }                                                                                                        \
    SHIM void shim_generate_##SFX(T* out, mv_i64 n, int dist, mv_u64 seed, mv_u64 offset,                   \
                                  const mv_u64* from, mv_u32 stream) {                                       \
        replay_generate<T>(out, n, dist, seed, mv_draw_offset(offset, from), stream);                        \
    }                                                                                                        \
    SHIM void shim_reparam_fwd_##SFX(const T* mu, const T* lv, T* z, mv_i64 n, mv_u64 seed, mv_u64 offset,  \
                                     const mv_u64* from, mv_u32 stream) {                                    \
        replay_reparam_fwd<T>(mu, lv, z, n, seed, mv_draw_offset(offset, from), stream);                     \
    }                                                                                                        \
    SHIM void shim_reparam_bwd_##SFX(const T* dz, const T* lv, T* dmu, T* dlv, mv_i64 n, mv_u64 seed,       \
                                     mv_u64 offset, const mv_u64* from, mv_u32 stream) {                     \
        replay_reparam_bwd<T>(dz, lv, dmu, dlv, n, seed, mv_draw_offset(offset, from), stream);              \
    }                                                                                                        \
    SHIM void shim_kl_fwd_##SFX(const T* mu, const T* lv, T* kl, mv_i64 B, mv_i64 D) {                      \
        replay_row_fwd<T, MV_ROW_KL>(mu, lv, 0, nullptr, 0, nullptr, kl, B, D, 0, 0, 0);                     \
    }                                                                                                        \
    SHIM void shim_kl_bwd_##SFX(const T* gkl, const T* mu, const T* lv, T* dmu, T* dlv, mv_i64 B, mv_i64 D) {\
        replay_kl_bwd<T>(gkl, mu, lv, dmu, dlv, B, D);                                                       \
    }                                                                                                        \
    SHIM void shim_reparam_kl_fwd_##SFX(const T* mu, const T* lv, T* z, T* kl, mv_i64 B, mv_i64 D,          \
                                        mv_u64 seed, mv_u64 offset, const mv_u64* from, mv_u32 stream) {     \
        replay_row_fwd<T, MV_ROW_REPARAM_KL>(mu, lv, 0, nullptr, 0, z, kl, B, D, seed,                       \
                                             mv_draw_offset(offset, from), stream);                          \
    }                                                                                                        \
    SHIM void shim_reparam_kl_bwd_##SFX(const T* dz, const T* gkl, const T* mu, const T* lv, T* dmu,        \
                                        T* dlv, mv_i64 B, mv_i64 D, mv_u64 seed, mv_u64 offset,              \
                                        const mv_u64* from, mv_u32 stream) {                                 \
        replay_reparam_kl_bwd<T>(dz, gkl, mu, lv, dmu, dlv, B, D, seed, mv_draw_offset(offset, from),        \
                                 stream);                                                                    \
    }                                                                                                        \
    SHIM void shim_bernoulli_fwd_##SFX(const T* logits, const T* x, mv_i64 xn, T* out, mv_i64 B, mv_i64 D) {  \
        replay_row_fwd<T, MV_ROW_BERNOULLI>(logits, x, xn, nullptr, 0, nullptr, out, B, D, 0, 0, 0);         \
    }                                                                                                        \
    SHIM void shim_bernoulli_bwd_##SFX(const T* g, const T* logits, const T* x, T* d, mv_i64 B, mv_i64 D,    \
                                       mv_i64 xn) {                                                          \
        replay_bernoulli_bwd<T>(g, logits, x, d, B, D, xn);                                                  \
    }                                                                                                        \
    SHIM void shim_gaussian_fwd_##SFX(const T* x, const T* mu, mv_i64 mu_n, const T* lv, mv_i64 lv_n, T* out,  \
                                      mv_i64 B, mv_i64 D) {                                                  \
        replay_row_fwd<T, MV_ROW_GAUSSIAN>(x, mu, mu_n, lv, lv_n, nullptr, out, B, D, 0, 0, 0);              \
    }                                                                                                        \
    SHIM void shim_gaussian_bwd_##SFX(const T* g, const T* x, const T* mu, mv_i64 mu_n, const T* lv,         \
                                      mv_i64 lv_n, T* dx, T* dmu, T* dlv, mv_i64 B, mv_i64 D) {              \
        replay_gaussian_bwd<T>(g, x, mu, mu_n, lv, lv_n, dx, dmu, dlv, B, D);                                \
    }                                                                                                        \
    SHIM void shim_bias_act_##SFX(const T* in, const T* b, T* out, mv_i64 n, mv_i64 N, int relu) {         \
        replay_bias_act<T>(in, b, out, n, N, relu);                                                          \
    }                                                                                                        \
    SHIM void shim_relu_grad_##SFX(const T* g, const T* y, T* d, mv_i64 n) { replay_relu_grad<T>(g, y, d, n); } \
    SHIM void shim_bias_grad_##SFX(const T* g, const T* y, T* d, T* db, mv_i64 R, mv_i64 N) {               \
        replay_bias_grad<T>(g, y, d, db, R, N);                                                              \
    }                                                                                                        \
    SHIM void shim_logsumexp_fwd_##SFX(const T* x, T* out, T* shift, T* log_sum, mv_i64 R, mv_i64 N) {      \
        replay_lse_fwd<T>(x, out, shift, log_sum, R, N);                                                     \
    }                                                                                                        \
    SHIM void shim_logsumexp_bwd_##SFX(const T* g, const T* x, const T* shift, const T* log_sum, T* d,      \
                                       mv_i64 n, mv_i64 N) {                                                 \
        replay_lse_bwd<T>(g, x, shift, log_sum, d, n, N);                                                    \
    }                                                                                                        \
    SHIM void shim_log_softmax_fwd_##SFX(const T* x, T* out, mv_i64 B, mv_i64 C) {                          \
        replay_log_softmax_fwd<T>(x, out, B, C);                                                             \
    }                                                                                                        \
    SHIM void shim_log_softmax_bwd_##SFX(const T* g, const T* out, T* d, mv_i64 B, mv_i64 C) {              \
        replay_log_softmax_bwd<T>(g, out, d, B, C);                                                          \
    }                                                                                                        \
    SHIM T shim_segment_sum_##SFX(const T* terms, mv_i64 n, int P) { return mv_segment_sum<T>(terms, n, P); }

#define SHIM_ADAM(T, SFX)                                                                                    \
    SHIM void shim_adam_##SFX(T* p, const T* g, T* m, T* v, T* vmax, mv_i64 n, T b1, T one_minus_b1, T b2,   \
                              T one_minus_b2, T eps_s, T neg_step, T weight_decay, T decay, int amsgrad,     \
                              int decoupled, const double* step_scalars) {                                   \
        const mv_adam_scalars<T> s = {b1, one_minus_b1, b2, one_minus_b2, eps_s, neg_step,                  \
                                      weight_decay, decay, amsgrad, decoupled};                              \
        replay_adam<T>(p, g, m, v, vmax, n, mv_adam_at_step(s, step_scalars));                               \
    }
SHIM_ADAM(float, f32)
SHIM_ADAM(double, f64)

SHIM_DTYPE(float, f32)
SHIM_DTYPE(double, f64)

// ---- the step counter of graph mode (step.cu: one thread) ----------------------------------
SHIM void shim_step_advance(const double* table, const mv_u64* offsets, mv_i64 width, mv_i64 steps,
                            mv_i64* step, double* current, mv_u64* offset) {
    mv_step_advance_at(table, offsets, width, steps, step, current, offset);
}
