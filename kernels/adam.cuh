// One Adam step of one parameter entry, as a __host__ __device__ function: the GPU kernel
// (adam.cu) and the host test shim run it, and it is written to give the CPU optimizer's
// numbers (minivae.optim.Adam on NumPy) bit for bit: the same operations in the same order,
// each rounded once -- no fused multiply-add on the device (__fmul_rn / __fadd_rn), IEEE
// division and square root on both sides. (Apart from float32 subnormals: CuPy compiles with
// -ftz=true, so the device flushes them at once, where the CPU optimizer flushes subnormal
// moments every few steps; see minivae/gpu/_source.py.)
#ifndef MINIVAE_ADAM_CUH
#define MINIVAE_ADAM_CUH

// philox.cuh: MV_HD and the integer types
#include "philox.cuh"

#if !defined(__CUDACC_RTC__)
#include <math.h>
#endif

MV_HD float mv_mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
MV_HD double mv_mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
MV_HD float mv_add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
MV_HD double mv_add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
MV_HD float mv_sqrt_rn(float x) { return sqrtf(x); }
MV_HD double mv_sqrt_rn(double x) { return sqrt(x); }
// NumPy's maximum: NaN wins.
template <typename T>
MV_HD T mv_nan_max(T a, T b) { return (a != a) ? a : (b != b) ? b : (a > b ? a : b); }

// The step's scalars, each already rounded to T as NumPy rounds a Python float next to a T array.
template <typename T>
struct mv_adam_scalars {
    T b1, one_minus_b1, b2, one_minus_b2;
    T eps_s;          // eps * sqrt(1 - beta2^t)
    T neg_step;       // -(lr * sqrt(1 - beta2^t) / (1 - beta1^t))
    T weight_decay;   // coupled L2 term (g + weight_decay * p); 0: none
    T decay;          // decoupled decay factor 1 - lr * weight_decay (AdamW); 1: none
    int amsgrad, decoupled;
};

// The scalars of the step: ``s``, with eps_s, neg_step and decay taken from step_scalars[0..2]
// (device memory; see adam.cu) when that is not a null pointer, each rounded to T as NumPy rounds
// a Python float next to a T array.
template <typename T>
MV_HD mv_adam_scalars<T> mv_adam_at_step(mv_adam_scalars<T> s, const double* step_scalars) {
    if (step_scalars) {
        s.eps_s = T(step_scalars[0]);
        s.neg_step = T(step_scalars[1]);
        s.decay = T(step_scalars[2]);
    }
    return s;
}

// Entry i: p, m, v (and vmax with amsgrad) updated in place from the gradient g.
template <typename T>
MV_HD void mv_adam_entry(mv_i64 i, T* p, const T* g, T* m, T* v, T* vmax, mv_adam_scalars<T> s) {
    T pi = p[i], gi = g[i];
    if (s.decoupled)
        pi = mv_mul_rn(pi, s.decay);
    else if (s.weight_decay != T(0))
        gi = mv_add_rn(mv_mul_rn(pi, s.weight_decay), gi);
    const T mi = mv_add_rn(mv_mul_rn(m[i], s.b1), mv_mul_rn(gi, s.one_minus_b1));
    T vi = mv_add_rn(mv_mul_rn(v[i], s.b2), mv_mul_rn(mv_mul_rn(gi, s.one_minus_b2), gi));
    m[i] = mi;
    v[i] = vi;
    if (s.amsgrad) {
        vi = mv_nan_max(vmax[i], vi);
        vmax[i] = vi;
    }
    const T denom = mv_add_rn(mv_sqrt_rn(vi), s.eps_s);
    p[i] = mv_add_rn(pi, mv_mul_rn(mi / denom, s.neg_step));
}

#endif  // MINIVAE_ADAM_CUH
