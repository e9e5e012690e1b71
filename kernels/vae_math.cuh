// Per-element math of the VAE hot path as __host__ __device__ inline functions, shared by
// the CUDA kernels (*.cu) and the host test shim (tests/host_shim.cpp, built with g++ and
// compared with the NumPy twin in minivae/random.py and minivae/ops):
//   - uniform, standard-normal and standard-Gumbel transforms of Philox words (the convention
//     of minivae/random.py: float32 uniform ((w >> 9) + 0.5) * 2^-23, float64 (w + 0.5) * 2^-32,
//     Box-Muller on the pairs (w0, w1), (w2, w3) of a block: r cos(theta), r sin(theta),
//     r = sqrt(-2 log u1), theta = 2 pi u2 evaluated with sincospi; Gumbel -log(-log(u)));
//   - reparameterization z = mu + exp(logvar / 2) * eps and its gradient;
//   - analytic KL(N(mu, exp(logvar)) || N(0, 1)) per element and its gradient;
//   - the ReLU of a dense layer and its gradient;
//   - the Bernoulli log-likelihood of a pixel given its logit, and its gradient;
//   - the Gaussian log-density of one coordinate, and its gradients;
//   - the log-sum-exp's shift, terms and gradient, and the log-softmax's.
// (The kernels' per-thread loops over these are in chunks.cuh.)
// Compile without fast-math: the host and device builds then agree to a few ulp.
#ifndef MINIVAE_VAE_MATH_CUH
#define MINIVAE_VAE_MATH_CUH

#include "philox.cuh"

#if !defined(__CUDACC_RTC__)
#include <math.h>
#endif

// ---- math wrappers with float and double overloads (device: CUDA libdevice; host: libm) ----
MV_HD float mv_log(float x) { return logf(x); }
MV_HD double mv_log(double x) { return log(x); }
MV_HD float mv_sqrt(float x) { return sqrtf(x); }
MV_HD double mv_sqrt(double x) { return sqrt(x); }
MV_HD float mv_exp(float x) { return expf(x); }
MV_HD double mv_exp(double x) { return exp(x); }
MV_HD float mv_expm1(float x) { return expm1f(x); }
MV_HD double mv_expm1(double x) { return expm1(x); }
MV_HD float mv_log1p(float x) { return log1pf(x); }
MV_HD double mv_log1p(double x) { return log1p(x); }
MV_HD float mv_abs(float x) { return fabsf(x); }
MV_HD double mv_abs(double x) { return fabs(x); }
// sin(pi x) and cos(pi x): the argument reduction is exact (no rounded 2*pi, no slow path
// for large arguments). Device: CUDA's sincospi. Host (test builds): x is folded exactly to
// r = x - k in [-1/2, 1/2] with k the nearest integer, then sin/cos(pi r) in double and the
// signs of (-1)^k -- the same evaluation as minivae.random: sin stays relatively accurate near
// its zeros, cos near its zeros (r = +-1/2) to about 1e-16 absolute, not relative (CUDA's
// sincospi reduces to a quarter period); absolute is what Box-Muller's r cos(theta) needs.
#if !defined(__CUDA_ARCH__)
inline void mv_host_sincospi(double x, double* s, double* c) {
    double k = floor(x + 0.5);
    double r = x - k;  // exact
    double t = 3.141592653589793238462643383279502884 * r;
    double sr = sin(t), cr = cos(t);
    bool odd = (((long long)k) & 1) != 0;
    *s = odd ? -sr : sr;
    *c = odd ? -cr : cr;
}
#endif
MV_HD void mv_sincospi(float x, float* s, float* c) {
#if defined(__CUDA_ARCH__)
    sincospif(x, s, c);
#else
    double sd, cd;
    mv_host_sincospi((double)x, &sd, &cd);
    *s = (float)sd;
    *c = (float)cd;
#endif
}
MV_HD void mv_sincospi(double x, double* s, double* c) {
#if defined(__CUDA_ARCH__)
    sincospi(x, s, c);
#else
    mv_host_sincospi(x, s, c);
#endif
}

// ---- uniform in (0, 1), strictly ----
// float32: top 23 bits, centred: values k * 2^-23 + 2^-24, all exact, in [2^-24, 1 - 2^-24].
MV_HD float mv_uniform_f32(mv_u32 w) {
    return ((float)(w >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}
// float64: all 32 bits, centred: exact, in [2^-33, 1 - 2^-33].
MV_HD double mv_uniform_f64(mv_u32 w) {
    return ((double)w + 0.5) * 2.3283064365386962890625e-10;  // 2^-32
}

template <typename T> struct mv_traits;
template <> struct mv_traits<float> {
    MV_HD static float uniform(mv_u32 w) { return mv_uniform_f32(w); }
};
template <> struct mv_traits<double> {
    MV_HD static double uniform(mv_u32 w) { return mv_uniform_f64(w); }
};

// ---- standard normals by Box-Muller ----
// One pair: n0 = r cos(theta), n1 = r sin(theta), r = sqrt(-2 log U(wa)), theta = 2 pi U(wb),
// with sin and cos taken as sincospi(2 U(wb)) (2 U(wb) is exact).
template <typename T>
MV_HD void mv_box_muller(mv_u32 wa, mv_u32 wb, T* n0, T* n1) {
    T u1 = mv_traits<T>::uniform(wa);
    T u2 = mv_traits<T>::uniform(wb);
    T r = mv_sqrt(T(-2) * mv_log(u1));
    T s, c;
    mv_sincospi(T(2) * u2, &s, &c);
    *n0 = r * c;
    *n1 = r * s;
}

// The four normals of one Philox block (elements 4*chunk ... 4*chunk + 3).
template <typename T>
MV_HD void mv_normal4(mv_u32x4 w, T out[4]) {
    mv_box_muller<T>(w.x, w.y, &out[0], &out[1]);
    mv_box_muller<T>(w.z, w.w, &out[2], &out[3]);
}

template <typename T>
MV_HD void mv_uniform4(mv_u32x4 w, T out[4]) {
    out[0] = mv_traits<T>::uniform(w.x);
    out[1] = mv_traits<T>::uniform(w.y);
    out[2] = mv_traits<T>::uniform(w.z);
    out[3] = mv_traits<T>::uniform(w.w);
}

// ---- standard Gumbel samples: g = -log(-log(u)) ----
// minivae.random.gumbel's recipe step for step: u the uniform of the target dtype (exact, strictly
// inside (0, 1), so both logs are finite), widened to double, both logs taken in double, the
// result rounded once to T. The host build gives NumPy's float32 sample bit for bit for every one
// of the 2^23 float32 uniforms; in float64 the two libraries' logs differ by an ulp now and then,
// and the samples by at most an ulp of max(1, |g|) (tests/test_kernels.py).
template <typename T>
MV_HD T mv_gumbel(mv_u32 w) {
    const double u = (double)mv_traits<T>::uniform(w);
    return (T)(-mv_log(-mv_log(u)));
}

template <typename T>
MV_HD void mv_gumbel4(mv_u32x4 w, T out[4]) {
    out[0] = mv_gumbel<T>(w.x);
    out[1] = mv_gumbel<T>(w.y);
    out[2] = mv_gumbel<T>(w.z);
    out[3] = mv_gumbel<T>(w.w);
}

// The normal of element i alone (the slow path; the kernels use whole blocks).
template <typename T>
MV_HD T mv_normal_at(mv_u64 i, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    T n[4];
    mv_normal4<T>(mv_philox_block(i >> 2, seed, offset, stream), n);
    return n[i & 3];
}

// ---- reparameterization: z = mu + exp(logvar / 2) * eps ----
template <typename T>
MV_HD T mv_reparam(T mu, T logvar, T eps) {
    return mu + mv_exp(T(0.5) * logvar) * eps;
}
// Gradient: dz/dmu = 1, dz/dlogvar = eps * exp(logvar / 2) / 2 (eps regenerated, never stored).
template <typename T>
MV_HD T mv_reparam_dlogvar(T dz, T logvar, T eps) {
    return dz * eps * (T(0.5) * mv_exp(T(0.5) * logvar));
}

// ---- KL(N(mu, exp(logvar)) || N(0, 1)) of one coordinate ----
//   kl = (mu^2 + exp(logvar) - 1 - logvar) / 2, written with expm1: near logvar = 0, where
//   exp(logvar) - 1 - logvar cancels, the error stays a few ulp(logvar) instead of ulp(1).
// The halves are formed first, (exp(x) - 1) / 2 as m (m / 2 + 1) with m = expm1(x / 2), so a term
// is finite wherever its value is (0.5 * expm1(x) is inf in float32 for x in [88.72, 89.42],
// where the result is below 3.4e38). The operations of minivae.ops.vae._kl_terms, in its order.
template <typename T>
MV_HD T mv_half_expm1(T x) {
    const T m = mv_expm1(T(0.5) * x);
    return m * (T(0.5) * m + T(1));
}
template <typename T>
MV_HD T mv_kl_term(T mu, T logvar) {
    return T(0.5) * mu * mu + (mv_half_expm1<T>(logvar) - T(0.5) * logvar);
}
// Gradient with upstream g (per row): dkl/dmu = mu, dkl/dlogvar = (exp(logvar) - 1) / 2.
template <typename T>
MV_HD T mv_kl_dmu(T g, T mu) { return g * mu; }
template <typename T>
MV_HD T mv_kl_dlogvar(T g, T logvar) { return g * mv_half_expm1<T>(logvar); }

// ---- ReLU of a dense layer's output, and its gradient ----
// relu(v) = max(v, 0) with NumPy's maximum: a NaN stays NaN (a diverging layer is not hidden
// behind zeros; CUDA's fmax would return 0), and -0 gives +0, as NumPy's maximum(-0.0, 0) does.
template <typename T>
MV_HD T mv_relu(T v) { return (v > T(0) || v != v) ? v : T(0); }
// The gradient reaching the ReLU's input, from the upstream g and the ReLU's output y:
// g * [y > 0], as g times a 0/1 mask (so 0 at the kink y = 0, and NaN where g is NaN).
template <typename T>
MV_HD T mv_relu_grad(T g, T y) { return g * (y > T(0) ? T(1) : T(0)); }

// ---- Bernoulli log-likelihood of a target x in [0, 1] given the logit l ----
//   x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l),
//   softplus(l) = max(l, 0) + log1p(exp(-|l|)): never log(sigmoid(l)), -inf for confident wrong
//   logits. The operations of minivae.ops.vae.BernoulliLogProb, in its order.
template <typename T>
MV_HD T mv_bernoulli_term(T l, T x) {
    return x * l - (mv_relu<T>(l) + mv_log1p(mv_exp(-mv_abs(l))));
}
// Gradient with upstream g (per row): d/dl = x - sigmoid(l), written around
// s = sigmoid(-|l|) = e / (1 + e), e = exp(-|l|): (x - 1) + s where l >= 0 and x - s where l < 0.
// Never x - sigmoid(l), which cancels where sigmoid(l) is near 1 (0 in float32 at x = 1, l = 20,
// where it is 2.06e-9), nor sigmoid as (tanh(l / 2) + 1) / 2, which cancels for negative l. The
// operations of BernoulliLogProb's backward, in its order.
template <typename T>
MV_HD T mv_bernoulli_dlogit(T g, T l, T x) {
    const T e = mv_exp(-mv_abs(l));
    const T s = e / (T(1) + e);
    return (l >= T(0) ? (x - T(1)) + s : x - s) * g;
}

// ---- Gaussian log-density of x under N(mu, exp(logvar)), one coordinate ----
//   log N = -(log(2 pi) + logvar + t^2) / 2,  t = (x - mu) exp(-logvar / 2):
// t^2, not (x - mu)^2 exp(-logvar), which overflows for a collapsed variance. mv_gaussian_term
// is the bracket halved, t^2 / 2 as (t / 2) t (finite wherever the log-density is, where t^2
// may overflow); the row's result is minus the sum. The operations of
// minivae.ops.vae.GaussianLogProb, in its order.
#define MV_LOG_2PI 1.8378770664093453  // log(2 pi)
template <typename T>
MV_HD T mv_inv_std(T logvar) { return mv_exp(T(-0.5) * logvar); }
template <typename T>
MV_HD T mv_gaussian_term(T x, T mu, T logvar) {
    const T t = (x - mu) * mv_inv_std<T>(logvar);
    return T(0.5) * (T(MV_LOG_2PI) + logvar) + T(0.5) * t * t;
}
// Gradients with upstream g (per row), from t and inv_std = exp(-logvar / 2) (computed once for
// the three): d/dmu = g t inv_std = -d/dx (written as (g t) inv_std, finite wherever the
// product is), d/dlogvar = g (t^2 - 1) / 2 (written as ((g t) / 2) t - g / 2, finite wherever
// it is, and 0 where g is 0, though t^2 may overflow).
template <typename T>
MV_HD T mv_gaussian_dmu(T g, T t, T inv_std) { return (g * t) * inv_std; }
template <typename T>
MV_HD T mv_gaussian_dlogvar(T g, T t) { return T(0.5) * (g * t) * t - T(0.5) * g; }

// ---- log-sum-exp, log(sum_i exp(x_i)), in the stable form of minivae.ops.reduce.LogSumExp ----
// m = max(x); the shift s = m where m is finite, else 0 (an all -inf column gives log(0) = -inf,
// not NaN; an inf gives inf); then s + log(sum(exp(x - s))). A NaN makes the sum NaN whatever
// the shift, so the maximum need not propagate it. d/dx_i = g exp((x_i - s) - log(sum))
// (mv_lse_grad, below the log-softmax whose form it takes).
template <typename T>
MV_HD T mv_max(T a, T b) { return a > b ? a : b; }
template <typename T>
MV_HD T mv_lse_shift(T m) { return m - m == T(0) ? m : T(0); }  // (m - m is NaN for inf and NaN)
template <typename T>
MV_HD T mv_lse_term(T x, T shift) { return mv_exp(x - shift); }
template <typename T>
MV_HD T mv_lse_finish(T shift, T sum) { return shift + mv_log(sum); }
// log_softmax(x)_i = (x_i - shift) - log(sum), the stable form of minivae.ops.reduce.LogSoftmax:
// x_i - (shift + log(sum)) would round the log-sum-exp to x's precision first and lose the digits
// of the small log term when the shift is large (float32 logits near -90: errors of 2e-6, not
// 1e-7). d/dx_i = g_i - exp(out_i) * sum_j g_j (s, the upstream's sum).
template <typename T>
MV_HD T mv_log_softmax(T x, T shift, T log_sum) { return (x - shift) - log_sum; }
template <typename T>
MV_HD T mv_log_softmax_grad(T g, T out, T s) { return g - mv_exp(out) * s; }
// The log-sum-exp's gradient g exp(x_i - out) = g exp(log_softmax(x)_i), from the shift and the
// log-sum apart, as minivae.ops.reduce.LogSumExp: exp(x_i - out) with out rounded to x's precision
// loses the log term when the shift is large (float32 at 1e8: two equal entries get 1 each, not
// 1/2).
template <typename T>
MV_HD T mv_lse_grad(T g, T x, T shift, T log_sum) { return g * mv_exp(mv_log_softmax<T>(x, shift, log_sum)); }

#endif  // MINIVAE_VAE_MATH_CUH
