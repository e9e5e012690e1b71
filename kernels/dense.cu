// The elementwise work of a dense layer around its cuBLAS product (minivae/gpu/dispatch.py), and
// of a ReLU alone, over C-contiguous arrays of n elements, one thread per chunk of 4 (chunks.cuh):
//   forward:  out = relu(in + b) of rows of N: in place on the product (in = out), or into a new
//             array; b (N,) broadcast over the rows, and may be a null pointer (no bias);
//             relu = 0 leaves the ReLU out;
//   backward: d = g * [y > 0], y the ReLU's output.
// One launch each where NumPy's code takes two or three (`out += b`, `maximum`, then `out > 0`
// for a mask kept until the backward, and `g * mask`).
// Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
//
// And the bias gradient of a layer, db = the column sums of d over (R, N) rows, d = g or, behind
// a ReLU, d = g * [y > 0] written on the way: one launch where NumPy's code takes one for d and
// one for its sum (chunks.cuh, "column reductions", gives the order of the sums).
// Launch: block (MV_BLOCK, 1, 1), grid (ceil(N / MV_COLUMNS), 1, 1).
#include "device.cuh"

template <typename T>
__device__ __forceinline__ void mv_bias_act(const T* in, const T* __restrict__ b, T* out, mv_i64 n, mv_i64 N,
                                            int relu) {
    // (in and out may be the same array: no __restrict__ on them)
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_bias_act<T>(c, n, N, in, b, relu, out);
}

extern "C" __global__ void mv_bias_act_f32(const float* in, const float* b, float* out, mv_i64 n, mv_i64 N,
                                           int relu) {
    mv_bias_act<float>(in, b, out, n, N, relu);
}
extern "C" __global__ void mv_bias_act_f64(const double* in, const double* b, double* out, mv_i64 n, mv_i64 N,
                                           int relu) {
    mv_bias_act<double>(in, b, out, n, N, relu);
}

template <typename T>
__device__ __forceinline__ void mv_relu_grad_flat(const T* __restrict__ g, const T* __restrict__ y,
                                                  T* __restrict__ d, mv_i64 n) {
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_relu_grad<T>(c, n, g, y, d);
}

extern "C" __global__ void mv_relu_grad_f32(const float* g, const float* y, float* d, mv_i64 n) {
    mv_relu_grad_flat<float>(g, y, d, n);
}
extern "C" __global__ void mv_relu_grad_f64(const double* g, const double* y, double* d, mv_i64 n) {
    mv_relu_grad_flat<double>(g, y, d, n);
}

template <typename T>
__device__ __forceinline__ void mv_bias_grad(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ d,
                                             T* __restrict__ db, mv_i64 R, mv_i64 N) {
    __shared__ T part[MV_COLUMN_LANES][MV_COLUMNS];
    const mv_columns v = mv_row_columns(R, N);
    const mv_i64 col = mv_column();
    const T sum = mv_column_total<T, false>(
        part, col < N ? mv_column_sum_partial<T>(v, col, mv_column_lane(), g, y, d) : T(0));
    if (mv_column_lane() == 0 && col < N) db[col] = sum;
}

extern "C" __global__ void mv_bias_grad_f32(const float* g, const float* y, float* d, float* db, mv_i64 R, mv_i64 N) {
    mv_bias_grad<float>(g, y, d, db, R, N);
}
extern "C" __global__ void mv_bias_grad_f64(const double* g, const double* y, double* d, double* db, mv_i64 R,
                                            mv_i64 N) {
    mv_bias_grad<double>(g, y, d, db, R, N);
}
