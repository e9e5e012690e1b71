// Log-sum-exp reductions, as column reductions (chunks.cuh, "column reductions": the maximum
// and the sum of each column in a fixed order; the shift is the column's maximum where it is
// finite, else 0, vae_math.cuh):
//   logsumexp: over the leading axis of a C-contiguous (R, N) array, one value per column: the
//              importance-weighted bound's log-mean-exp over its k samples (R = k, N = the
//              batch). Forward out[col] = s + log(sum_r exp(x[r, col] - s)) in one launch where
//              NumPy's code takes eight (max, isfinite, where, subtract, exp, sum, log, add),
//              writing the parts its backward takes too, shift[col] = s and log_sum[col] =
//              log(sum_r ...); backward d = g[col] exp((x - shift[col]) - log_sum[col]) over the
//              n = R N elements (g and the parts repeat over the rows), one launch where NumPy's
//              code takes four. Never exp(x - out): out rounds s + log(sum) to x's precision,
//              which loses the log term when s is large (vae_math.cuh, mv_lse_grad).
//   log_softmax: over the last axis of a C-contiguous (B, C) array (a classifier's logits, the
//              C classes of each of the B rows reduced): out = (x - s) - log(sum_c exp(x - s)), the
//              shift and the log-sum subtracted one at a time (vae_math.cuh), in one launch
//              where NumPy's code takes nine; backward d = g - exp(out) sum(g) in one launch
//              where NumPy's code takes four.
// Launch: block (MV_BLOCK, 1, 1); grid (ceil(columns / MV_COLUMNS), 1, 1) for the column
// reductions (at least one row each), any grid for the flat logsumexp backward (grid-stride).
#include "device.cuh"

// The parts of the log-sum-exp of this thread's column of the view v (R >= 1), in every thread of
// the block's columns (a column past N gets values that are not used).
template <typename T>
__device__ __forceinline__ mv_lse_parts<T> mv_column_lse(T (*part)[MV_COLUMNS], mv_columns v,
                                                         const T* __restrict__ x) {
    const mv_i64 col = mv_column();
    const int l = mv_column_lane();
    const bool mine = col < v.N;  // (the threads of columns past N take part in the block's trees)
    const T m = mv_column_total<T, true>(part, mine ? mv_column_max_partial<T>(v, col, l, x) : T(0));
    const T shift = mv_lse_shift<T>(m);
    const T sum = mv_column_total<T, false>(part, mine ? mv_lse_partial<T>(v, col, l, x, shift) : T(0));
    return {shift, sum};
}

template <typename T>
__device__ __forceinline__ void mv_logsumexp_fwd(const T* __restrict__ x, T* __restrict__ out, T* __restrict__ shift,
                                                 T* __restrict__ log_sum, mv_i64 R, mv_i64 N) {
    __shared__ T part[MV_COLUMN_LANES][MV_COLUMNS];
    const mv_lse_parts<T> p = mv_column_lse<T>(part, mv_row_columns(R, N), x);
    const mv_i64 col = mv_column();
    if (mv_column_lane() == 0 && col < N) {
        out[col] = mv_lse_finish<T>(p.shift, p.sum);
        shift[col] = p.shift;
        log_sum[col] = mv_log(p.sum);
    }
}

extern "C" __global__ void mv_logsumexp_fwd_f32(const float* x, float* out, float* shift, float* log_sum, mv_i64 R,
                                                mv_i64 N) {
    mv_logsumexp_fwd<float>(x, out, shift, log_sum, R, N);
}
extern "C" __global__ void mv_logsumexp_fwd_f64(const double* x, double* out, double* shift, double* log_sum,
                                                mv_i64 R, mv_i64 N) {
    mv_logsumexp_fwd<double>(x, out, shift, log_sum, R, N);
}

template <typename T>
__device__ __forceinline__ void mv_logsumexp_bwd(const T* __restrict__ g, const T* __restrict__ x,
                                                 const T* __restrict__ shift, const T* __restrict__ log_sum,
                                                 T* __restrict__ d, mv_i64 n, mv_i64 N) {
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_lse_bwd<T>(c, n, N, g, x, shift, log_sum, d);
}

extern "C" __global__ void mv_logsumexp_bwd_f32(const float* g, const float* x, const float* shift,
                                                const float* log_sum, float* d, mv_i64 n, mv_i64 N) {
    mv_logsumexp_bwd<float>(g, x, shift, log_sum, d, n, N);
}
extern "C" __global__ void mv_logsumexp_bwd_f64(const double* g, const double* x, const double* shift,
                                                const double* log_sum, double* d, mv_i64 n, mv_i64 N) {
    mv_logsumexp_bwd<double>(g, x, shift, log_sum, d, n, N);
}

template <typename T>
__device__ __forceinline__ void mv_log_softmax_fwd(const T* __restrict__ x, T* __restrict__ out, mv_i64 B, mv_i64 C) {
    __shared__ T part[MV_COLUMN_LANES][MV_COLUMNS];
    const mv_columns v = mv_class_columns(B, C);
    const mv_lse_parts<T> p = mv_column_lse<T>(part, v, x);
    if (mv_column() < B) mv_log_softmax_lane<T>(v, mv_column(), mv_column_lane(), x, p, out);
}

extern "C" __global__ void mv_log_softmax_fwd_f32(const float* x, float* out, mv_i64 B, mv_i64 C) {
    mv_log_softmax_fwd<float>(x, out, B, C);
}
extern "C" __global__ void mv_log_softmax_fwd_f64(const double* x, double* out, mv_i64 B, mv_i64 C) {
    mv_log_softmax_fwd<double>(x, out, B, C);
}

template <typename T>
__device__ __forceinline__ void mv_log_softmax_bwd(const T* __restrict__ g, const T* __restrict__ out,
                                                   T* __restrict__ d, mv_i64 B, mv_i64 C) {
    __shared__ T part[MV_COLUMN_LANES][MV_COLUMNS];
    const mv_columns v = mv_class_columns(B, C);
    const mv_i64 col = mv_column();
    const int l = mv_column_lane();
    const T s = mv_column_total<T, false>(
        part, col < B ? mv_column_sum_partial<T>(v, col, l, g, (const T*)nullptr, (T*)nullptr) : T(0));
    if (col < B) mv_log_softmax_grad_lane<T>(v, col, l, g, out, s, d);
}

extern "C" __global__ void mv_log_softmax_bwd_f32(const float* g, const float* out, float* d, mv_i64 B, mv_i64 C) {
    mv_log_softmax_bwd<float>(g, out, d, B, C);
}
extern "C" __global__ void mv_log_softmax_bwd_f64(const double* g, const double* out, double* d, mv_i64 B, mv_i64 C) {
    mv_log_softmax_bwd<double>(g, out, d, B, C);
}
