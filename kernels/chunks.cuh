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
// Flat kernels (random.cu, reparam.cu) run these over the chunks of n elements. Row kernels
// (kl.cu, fused.cu) give each row of a C-contiguous (B, D) array a group of G threads that
// take the row's chunks c_begin + tx, c_begin + tx + G, ... and mask the elements outside the
// row (the chunks that straddle two rows are computed by both), then sum the group's KL terms.
// tests/host_shim.cpp replays the same loops on the host, calling these very functions, so the
// indexing (every element written once, rows masked) is tested without a GPU.
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

// ---------------------------------------------------------------- flat kernels (n elements)
MV_HD mv_i64 mv_nchunks(mv_i64 n) { return (n + 3) >> 2; }

// Normals (dist = 0) or uniforms (dist = 1) of chunk c into out[0, n).
template <typename T>
MV_HD void mv_chunk_generate(mv_i64 c, mv_i64 n, int dist, mv_u64 seed, mv_u64 offset,
                             mv_u32 stream, T* out) {
    T v[4];
    mv_u32x4 w = mv_philox_block((mv_u64)c, seed, offset, stream);
    if (dist == 0)
        mv_normal4<T>(w, v);
    else
        mv_uniform4<T>(w, v);
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
// Row b holds elements [b*D, b*D + D), which lie in chunks [(b*D) / 4, (b*D + D - 1) / 4].
struct mv_row_span {
    mv_i64 e_begin, e_end;  // elements [e_begin, e_end)
    mv_i64 c_begin, c_last; // chunks [c_begin, c_last]
};
MV_HD mv_row_span mv_row_span_of(mv_i64 row, mv_i64 D) {
    mv_row_span s;
    s.e_begin = row * D;
    s.e_end = s.e_begin + D;
    s.c_begin = s.e_begin >> 2;
    s.c_last = (s.e_end - 1) >> 2;
    return s;
}

// Fused forward of chunk c of row s: z for its elements in the row; returns their KL terms' sum.
template <typename T>
MV_HD T mv_chunk_fused_fwd(mv_i64 c, mv_row_span s, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                           const T* mu, const T* logvar, T* z) {
    T m[4], lv[4], eps[4];
    mv_load4<T>(mu, c, s.e_begin, s.e_end, m);
    mv_load4<T>(logvar, c, s.e_begin, s.e_end, lv);
    mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
    T acc = T(0);
    for (int k = 0; k < 4; ++k) {
        acc += mv_kl_term<T>(m[k], lv[k]);  // exactly 0 for the masked (zero) elements
        m[k] = mv_reparam<T>(m[k], lv[k], eps[k]);
    }
    mv_store4<T>(z, c, s.e_begin, s.e_end, m);
    return acc;
}

// Fused backward of chunk c of row s, with upstream dz (B, D) and g, the row's gkl:
//   dmu = dz + g * mu,   dlogvar = dz * eps * exp(logvar / 2) / 2 + g * (exp(logvar) - 1) / 2.
template <typename T>
MV_HD void mv_chunk_fused_bwd(mv_i64 c, mv_row_span s, mv_u64 seed, mv_u64 offset, mv_u32 stream,
                              const T* dz, T g, const T* mu, const T* logvar, T* dmu, T* dlogvar) {
    T d[4], m[4], lv[4], eps[4];
    mv_load4<T>(dz, c, s.e_begin, s.e_end, d);
    mv_load4<T>(mu, c, s.e_begin, s.e_end, m);
    mv_load4<T>(logvar, c, s.e_begin, s.e_end, lv);
    mv_normal4<T>(mv_philox_block((mv_u64)c, seed, offset, stream), eps);
    for (int k = 0; k < 4; ++k) {
        m[k] = d[k] + mv_kl_dmu<T>(g, m[k]);
        lv[k] = mv_reparam_dlogvar<T>(d[k], lv[k], eps[k]) + mv_kl_dlogvar<T>(g, lv[k]);
    }
    mv_store4<T>(dmu, c, s.e_begin, s.e_end, m);
    mv_store4<T>(dlogvar, c, s.e_begin, s.e_end, lv);
}

// KL alone: the KL terms' sum of chunk c's elements in row s, and its backward.
template <typename T>
MV_HD T mv_chunk_kl(mv_i64 c, mv_row_span s, const T* mu, const T* logvar) {
    T m[4], lv[4];
    mv_load4<T>(mu, c, s.e_begin, s.e_end, m);
    mv_load4<T>(logvar, c, s.e_begin, s.e_end, lv);
    T acc = T(0);
    for (int k = 0; k < 4; ++k) acc += mv_kl_term<T>(m[k], lv[k]);
    return acc;
}

template <typename T>
MV_HD void mv_chunk_kl_bwd(mv_i64 c, mv_row_span s, T g, const T* mu, const T* logvar, T* dmu,
                           T* dlogvar) {
    T m[4], lv[4];
    mv_load4<T>(mu, c, s.e_begin, s.e_end, m);
    mv_load4<T>(logvar, c, s.e_begin, s.e_end, lv);
    for (int k = 0; k < 4; ++k) {
        m[k] = mv_kl_dmu<T>(g, m[k]);
        lv[k] = mv_kl_dlogvar<T>(g, lv[k]);
    }
    mv_store4<T>(dmu, c, s.e_begin, s.e_end, m);
    mv_store4<T>(dlogvar, c, s.e_begin, s.e_end, lv);
}

#endif  // MINIVAE_CHUNKS_CUH
