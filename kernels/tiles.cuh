// The per-thread phases of the kernels, as __host__ __device__ functions.
//
// Each kernel in *.cu is a loop over tiles of the form
//     phase 1 (every thread tx of the group)   -> barrier ->   phase 2 (every thread)   -> barrier
// and only that loop, the barriers and the warp/block reductions are device-only. The phases
// below hold all the index arithmetic; tests/host_shim.cpp replays the same loop on the host,
// calling the phases for tx = 0 .. G-1 in turn, so the indexing (every element written once,
// each Philox block computed once, row boundaries masked) is tested without a GPU.
//
// Layout: a thread group of G threads owns a tile buffer of 4*G values. Flat kernels treat
// an array of n elements as one sequence (tile k = chunks [k*G, k*G + G)); row kernels give
// each row of a C-contiguous (B, D) array its own group and tiles (see mv_row_span_of).
#ifndef MINIVAE_TILES_CUH
#define MINIVAE_TILES_CUH

#include "vae_math.cuh"

// ---------------------------------------------------------------- flat kernels (n elements)
// Phase 1: normals (dist = 0) or uniforms (dist = 1) of chunk t*G + tx into tile[4tx .. 4tx+3].
template <typename T>
MV_HD void mv_flat_fill(T* tile, int tx, int G, mv_i64 t, mv_i64 n, int dist,
                        mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    mv_i64 chunk = t * G + tx;
    mv_i64 last = (n - 1) >> 2;
    if (dist == 0)
        mv_tile_fill_normal<T>(tile + 4 * tx, chunk, last, seed, offset, stream);
    else
        mv_tile_fill_uniform<T>(tile + 4 * tx, chunk, last, seed, offset, stream);
}

// Phase 2, plain store of the tile (normal / uniform generation).
template <typename T>
MV_HD void mv_flat_store(const T* tile, int tx, int G, mv_i64 t, mv_i64 n, T* out) {
    mv_i64 base = 4 * t * G;
    for (int k = 0; k < 4; ++k) {
        int j = k * G + tx;
        mv_i64 e = base + j;
        if (e < n) out[e] = tile[j];
    }
}

// Phase 2, reparameterization forward: z = mu + exp(logvar / 2) * eps.
template <typename T>
MV_HD void mv_flat_reparam_fwd(const T* tile, int tx, int G, mv_i64 t, mv_i64 n,
                               const T* mu, const T* logvar, T* z) {
    mv_i64 base = 4 * t * G;
    for (int k = 0; k < 4; ++k) {
        int j = k * G + tx;
        mv_i64 e = base + j;
        if (e < n) z[e] = mv_reparam<T>(mu[e], logvar[e], tile[j]);
    }
}

// Phase 2, reparameterization backward: dmu = dz (written only when dmu != 0),
// dlogvar = dz * eps * exp(logvar / 2) / 2.
template <typename T>
MV_HD void mv_flat_reparam_bwd(const T* tile, int tx, int G, mv_i64 t, mv_i64 n,
                               const T* dz, const T* logvar, T* dmu, T* dlogvar) {
    mv_i64 base = 4 * t * G;
    for (int k = 0; k < 4; ++k) {
        int j = k * G + tx;
        mv_i64 e = base + j;
        if (e < n) {
            T g = dz[e];
            if (dmu) dmu[e] = g;
            dlogvar[e] = mv_reparam_dlogvar<T>(g, logvar[e], tile[j]);
        }
    }
}

// ---------------------------------------------------------------- row kernels ((B, D) arrays)
// Phase 1: the block of chunk c_begin + t*G + tx of the row into tile[4tx .. 4tx+3].
template <typename T>
MV_HD void mv_row_fill(T* tile, int tx, int G, int t, mv_row_span s,
                       mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    mv_tile_fill_normal<T>(tile + 4 * tx, s.c_begin + (mv_i64)t * G + tx, s.c_last, seed, offset, stream);
}

// Phase 2, fused forward: z for the thread's elements of the tile; returns their KL terms' sum.
template <typename T>
MV_HD T mv_row_fused_fwd(const T* tile, int tx, int G, int t, mv_row_span s,
                         const T* mu, const T* logvar, T* z) {
    mv_i64 base = 4 * (s.c_begin + (mv_i64)t * G);
    T acc = T(0);
    for (int k = 0; k < 4; ++k) {
        int j = k * G + tx;
        mv_i64 e = base + j;
        if (e >= s.e_begin && e < s.e_end) {
            T m = mu[e], lv = logvar[e];
            z[e] = mv_reparam<T>(m, lv, tile[j]);
            acc += mv_kl_term<T>(m, lv);
        }
    }
    return acc;
}

// Phase 2, fused backward: with upstream dz (B, D) and gkl (one value per row, here g):
//   dmu = dz + g * mu,   dlogvar = dz * eps * exp(logvar / 2) / 2 + g * (exp(logvar) - 1) / 2.
template <typename T>
MV_HD void mv_row_fused_bwd(const T* tile, int tx, int G, int t, mv_row_span s,
                            const T* dz, T g, const T* mu, const T* logvar, T* dmu, T* dlogvar) {
    mv_i64 base = 4 * (s.c_begin + (mv_i64)t * G);
    for (int k = 0; k < 4; ++k) {
        int j = k * G + tx;
        mv_i64 e = base + j;
        if (e >= s.e_begin && e < s.e_end) {
            T d = dz[e], lv = logvar[e];
            dmu[e] = d + mv_kl_dmu<T>(g, mu[e]);
            dlogvar[e] = mv_reparam_dlogvar<T>(d, lv, tile[j]) + mv_kl_dlogvar<T>(g, lv);
        }
    }
}

// KL alone needs no noise and no tile: thread tx of the row's group takes d = tx, tx + G, ...
template <typename T>
MV_HD T mv_row_kl_partial(int tx, int G, mv_row_span s, const T* mu, const T* logvar) {
    T acc = T(0);
    for (mv_i64 e = s.e_begin + tx; e < s.e_end; e += G) acc += mv_kl_term<T>(mu[e], logvar[e]);
    return acc;
}

template <typename T>
MV_HD void mv_row_kl_bwd(int tx, int G, mv_row_span s, T g, const T* mu, const T* logvar,
                         T* dmu, T* dlogvar) {
    for (mv_i64 e = s.e_begin + tx; e < s.e_end; e += G) {
        dmu[e] = mv_kl_dmu<T>(g, mu[e]);
        dlogvar[e] = mv_kl_dlogvar<T>(g, logvar[e]);
    }
}

#endif  // MINIVAE_TILES_CUH
