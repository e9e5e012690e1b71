// Adam (and AdamW, amsgrad) over one parameter array in one pass, in place: the GPU side of
// minivae.optim.Adam, equal to its NumPy update bit for bit (see adam.cuh). On the GPU the
// NumPy form's twelve element-wise passes would be twelve launches per parameter; this is one.
// vmax may be a null pointer (amsgrad off). The scalars that change from step to step, eps_s,
// neg_step and decay (they hold the bias corrections and the learning rate), are read from
// step_scalars[0..2] in device memory instead of the arguments when step_scalars is not a null
// pointer: a captured CUDA graph freezes scalar arguments, and reads memory at every replay.
// Launch: block (MV_BLOCK, 1, 1), any grid.
#include "adam.cuh"

template <typename T>
__device__ __forceinline__ void mv_adam(T* p, const T* g, T* m, T* v, T* vmax, mv_i64 n,
                                        mv_adam_scalars<T> s) {
    for (mv_i64 i = (mv_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (mv_i64)gridDim.x * blockDim.x)
        mv_adam_entry<T>(i, p, g, m, v, vmax, s);
}

extern "C" __global__ void mv_adam_f32(float* p, const float* g, float* m, float* v, float* vmax, mv_i64 n,
                                       float b1, float one_minus_b1, float b2, float one_minus_b2,
                                       float eps_s, float neg_step, float weight_decay, float decay,
                                       int amsgrad, int decoupled, const double* step_scalars) {
    const mv_adam_scalars<float> s = {b1, one_minus_b1, b2, one_minus_b2, eps_s, neg_step,
                                      weight_decay, decay, amsgrad, decoupled};
    mv_adam<float>(p, g, m, v, vmax, n, mv_adam_at_step(s, step_scalars));
}
extern "C" __global__ void mv_adam_f64(double* p, const double* g, double* m, double* v, double* vmax,
                                       mv_i64 n, double b1, double one_minus_b1, double b2,
                                       double one_minus_b2, double eps_s, double neg_step,
                                       double weight_decay, double decay, int amsgrad, int decoupled,
                                       const double* step_scalars) {
    const mv_adam_scalars<double> s = {b1, one_minus_b1, b2, one_minus_b2, eps_s, neg_step,
                                       weight_decay, decay, amsgrad, decoupled};
    mv_adam<double>(p, g, m, v, vmax, n, mv_adam_at_step(s, step_scalars));
}
