// The Gaussian log-density log N(x; mu, exp(logvar)) per row of D coordinates
// (minivae.ops.vae.GaussianLogProb), over C-contiguous (B, D) x; mu and logvar hold mu_n and
// lv_n values that repeat over the elements of x (mu_n = B * D, or a divisor of it: the
// parameters of each example under several samples, (D,) for all rows, one value for a standard
// normal prior):
//   forward:  out[b] = -(sum_d log(2 pi) + logvar + t^2) / 2,  t = (x - mu) exp(-logvar / 2),
//             tiles of whole rows held in registers (mv_row_fwd of device.cuh), the row sums in
//             the fixed order documented in chunks.cuh;
//   backward: dmu = g[b] t exp(-logvar / 2), dx = -dmu, dlogvar = g[b] (t^2 - 1) / 2, each of
//             x's shape and written only where its pointer is not null; flat over the chunks.
// One launch each where NumPy's code takes nine and six, and nothing is kept between the passes
// (the backward recomputes t).
// Launch: block (MV_BLOCK, 1, 1), any grid (grid-stride loops).
#include "device.cuh"

extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_gaussian_fwd_f32(const float* x, const float* mu, mv_i64 mu_n, const float* logvar, mv_i64 lv_n, float* out,
                    mv_i64 B, mv_i64 D) {
    mv_row_fwd<float, MV_ROW_GAUSSIAN>(x, mu, mu_n, logvar, lv_n, nullptr, out, B, D, 0, 0, 0);
}
extern "C" __global__ void MV_ROW_FWD_BOUNDS
mv_gaussian_fwd_f64(const double* x, const double* mu, mv_i64 mu_n, const double* logvar, mv_i64 lv_n,
                    double* out, mv_i64 B, mv_i64 D) {
    mv_row_fwd<double, MV_ROW_GAUSSIAN>(x, mu, mu_n, logvar, lv_n, nullptr, out, B, D, 0, 0, 0);
}

template <typename T>
__device__ __forceinline__ void mv_gaussian_bwd(const T* __restrict__ g, const T* __restrict__ x,
                                                const T* __restrict__ mu, mv_i64 mu_n, const T* __restrict__ logvar,
                                                mv_i64 lv_n, T* __restrict__ dx, T* __restrict__ dmu,
                                                T* __restrict__ dlogvar, mv_i64 B, mv_i64 D) {
    const mv_i64 n = B * D;
    MV_FOR_CHUNKS(c, mv_nchunks(n)) mv_chunk_gaussian_bwd<T>(c, n, D, g, x, mu, mu_n, logvar, lv_n, dx, dmu, dlogvar);
}

extern "C" __global__ void mv_gaussian_bwd_f32(const float* g, const float* x, const float* mu, mv_i64 mu_n,
                                               const float* logvar, mv_i64 lv_n, float* dx, float* dmu,
                                               float* dlogvar, mv_i64 B, mv_i64 D) {
    mv_gaussian_bwd<float>(g, x, mu, mu_n, logvar, lv_n, dx, dmu, dlogvar, B, D);
}
extern "C" __global__ void mv_gaussian_bwd_f64(const double* g, const double* x, const double* mu, mv_i64 mu_n,
                                               const double* logvar, mv_i64 lv_n, double* dx, double* dmu,
                                               double* dlogvar, mv_i64 B, mv_i64 D) {
    mv_gaussian_bwd<double>(g, x, mu, mu_n, logvar, lv_n, dx, dmu, dlogvar, B, D);
}
