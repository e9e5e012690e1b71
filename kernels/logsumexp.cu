// The log-sum-exp over the leading axis of a C-contiguous (R, N) array, one value per column:
// the importance-weighted bound's log-mean-exp over its k samples (R = k, N = the batch).
//   forward:  out[col] = s + log(sum_r exp(x[r, col] - s)), s = the column's maximum where it is
//             finite, else 0 (vae_math.cuh); one launch where NumPy's code takes eight (max,
//             isfinite, where, subtract, exp, sum, log, add). The maximum and the sum of each
//             column run in the fixed order of chunks.cuh ("column reductions").
//             Launch: block (MV_BLOCK, 1, 1), grid (ceil(N / MV_COLUMNS), 1, 1); R >= 1.
//   backward: d = g[col] exp(x - out[col]) over the n = R N elements (g and out repeat over the
//             rows), one launch where NumPy's code takes three.
//             Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loop).
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_logsumexp_fwd(const T* __restrict__ x, T* __restrict__ out, mv_i64 R, mv_i64 N) {
    __shared__ T part[MV_COLUMN_LANES][MV_COLUMNS];
    const mv_i64 col = mv_column();
    const int l = mv_column_lane();
    const bool mine = col < N;  // (the threads of columns past N take part in the block's trees)
    const T m = mv_column_total<T, true>(part, mine ? mv_column_max_partial<T>(col, l, R, N, x) : T(0));
    const T shift = mv_lse_shift<T>(m);
    const T sum = mv_column_total<T, false>(part, mine ? mv_lse_partial<T>(col, l, R, N, x, shift) : T(0));
    if (l == 0 && mine) out[col] = mv_lse_finish<T>(shift, sum);
}

extern "C" __global__ void mv_logsumexp_fwd_f32(const float* x, float* out, mv_i64 R, mv_i64 N) {
    mv_logsumexp_fwd<float>(x, out, R, N);
}
extern "C" __global__ void mv_logsumexp_fwd_f64(const double* x, double* out, mv_i64 R, mv_i64 N) {
    mv_logsumexp_fwd<double>(x, out, R, N);
}

template <typename T>
__device__ __forceinline__ void mv_logsumexp_bwd(const T* __restrict__ g, const T* __restrict__ x,
                                                 const T* __restrict__ out, T* __restrict__ d, mv_i64 n, mv_i64 N) {
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_lse_bwd<T>(c, n, N, g, x, out, d);
}

extern "C" __global__ void mv_logsumexp_bwd_f32(const float* g, const float* x, const float* out, float* d, mv_i64 n,
                                                mv_i64 N) {
    mv_logsumexp_bwd<float>(g, x, out, d, n, N);
}
extern "C" __global__ void mv_logsumexp_bwd_f64(const double* g, const double* x, const double* out, double* d,
                                                mv_i64 n, mv_i64 N) {
    mv_logsumexp_bwd<double>(g, x, out, d, n, N);
}
