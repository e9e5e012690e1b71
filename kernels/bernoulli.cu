// The Bernoulli log-likelihood of the images x under the decoder's logits, per row of D pixels
// (minivae.ops.vae.BernoulliLogProb), over C-contiguous (B, D) logits; x holds xn values that
// repeat over the logits' elements (xn = B * D, or a divisor of it: the images under the logits
// of several samples of each):
//   forward:  out[b] = sum_d x l - softplus(l)   (l = logits[b, d], x its image's pixel),
//             tiles of whole rows held in registers (mv_row_fwd of device.cuh), the row sums in
//             the fixed order documented in chunks.cuh;
//   backward: dlogits = g[b] * (x - sigmoid(l)), flat over the chunks of the B*D elements.
// One launch each where NumPy's code takes eight and ten (each pass over the image-sized arrays).
// Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
#include "device.cuh"

extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_bernoulli_fwd_f32(const float* logits, const float* x, mv_i64 xn, float* out, mv_i64 B, mv_i64 D) {
    mv_row_fwd<float, MV_ROW_BERNOULLI>(logits, x, xn, nullptr, 0, nullptr, out, B, D, 0, 0, 0);
}
extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_bernoulli_fwd_f64(const double* logits, const double* x, mv_i64 xn, double* out, mv_i64 B, mv_i64 D) {
    mv_row_fwd<double, MV_ROW_BERNOULLI>(logits, x, xn, nullptr, 0, nullptr, out, B, D, 0, 0, 0);
}

template <typename T>
__device__ __forceinline__ void mv_bernoulli_bwd(const T* __restrict__ g, const T* __restrict__ logits,
                                                 const T* __restrict__ x, T* __restrict__ d, mv_i64 B,
                                                 mv_i64 D, mv_i64 xn) {
    const mv_i64 n = B * D;
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_bernoulli_bwd<T>(c, n, D, g, logits, x, xn, d);
}

extern "C" __global__ void mv_bernoulli_bwd_f32(const float* g, const float* logits, const float* x, float* d,
                                                mv_i64 B, mv_i64 D, mv_i64 xn) {
    mv_bernoulli_bwd<float>(g, logits, x, d, B, D, xn);
}
extern "C" __global__ void mv_bernoulli_bwd_f64(const double* g, const double* logits, const double* x,
                                                double* d, mv_i64 B, mv_i64 D, mv_i64 xn) {
    mv_bernoulli_bwd<double>(g, logits, x, d, B, D, xn);
}
