// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC 2011; the Random123 generator) as
// __host__ __device__ inline functions: compiled by nvcc/NVRTC for the GPU kernels and by
// g++ for the host test shim (tests/host_shim.cpp), where it is compared bit for bit with
// the NumPy twin in minivae/random.py.
//
// Addressing convention (same as minivae/random.py):
//   key     = (seed & 0xFFFFFFFF, seed >> 32)
//   counter = (i / 4, offset & 0xFFFFFFFF, offset >> 32, stream)
//   element i of a draw takes word i % 4 of that block.
//
// No standard headers are needed here (NVRTC has none by default).
#ifndef MINIVAE_PHILOX_CUH
#define MINIVAE_PHILOX_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MV_HD __host__ __device__ __forceinline__
#define MV_DEVICE_CODE 1
#else
#define MV_HD inline
#endif

typedef unsigned int mv_u32;
typedef unsigned long long mv_u64;
typedef long long mv_i64;

struct mv_u32x4 { mv_u32 x, y, z, w; };
struct mv_u32x2 { mv_u32 x, y; };

#define MV_PHILOX_M0 0xD2511F53u
#define MV_PHILOX_M1 0xCD9E8D57u
#define MV_PHILOX_W0 0x9E3779B9u
#define MV_PHILOX_W1 0xBB67AE85u

// High and low 32-bit words of the 64-bit product a * b.
// The offset of a draw: ``offset``, plus the number at ``offset_from`` when that is not a null
// pointer. offset_from is a counter in device memory: a CUDA graph captures a kernel's scalar
// arguments once, so a captured training step reads its draw's offset from memory, where the
// step advances it, to draw new noise at every replay.
MV_HD mv_u64 mv_draw_offset(mv_u64 offset, const mv_u64* offset_from) {
    return offset_from ? offset + *offset_from : offset;
}

MV_HD void mv_mulhilo32(mv_u32 a, mv_u32 b, mv_u32* hi, mv_u32* lo) {
#if defined(__CUDA_ARCH__)
    *hi = __umulhi(a, b);
    *lo = a * b;
#else
    mv_u64 p = (mv_u64)a * (mv_u64)b;
    *hi = (mv_u32)(p >> 32);
    *lo = (mv_u32)p;
#endif
}

// One Philox4x32 round: (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0).
MV_HD mv_u32x4 mv_philox4x32_round(mv_u32x4 c, mv_u32x2 k) {
    mv_u32 hi0, lo0, hi1, lo1;
    mv_mulhilo32(MV_PHILOX_M0, c.x, &hi0, &lo0);
    mv_mulhilo32(MV_PHILOX_M1, c.z, &hi1, &lo1);
    mv_u32x4 r;
    r.x = hi1 ^ c.y ^ k.x;
    r.y = lo1;
    r.z = hi0 ^ c.w ^ k.y;
    r.w = lo0;
    return r;
}

MV_HD mv_u32x2 mv_philox4x32_bumpkey(mv_u32x2 k) {
    k.x += MV_PHILOX_W0;
    k.y += MV_PHILOX_W1;
    return k;
}

// Philox4x32 with a run-time round count (used by the known-answer tests: 7 and 10).
MV_HD mv_u32x4 mv_philox4x32_R(int rounds, mv_u32x4 c, mv_u32x2 k) {
    for (int r = 0; r < rounds; ++r) {
        if (r > 0) k = mv_philox4x32_bumpkey(k);
        c = mv_philox4x32_round(c, k);
    }
    return c;
}

// Philox4x32-10, fully unrolled.
MV_HD mv_u32x4 mv_philox4x32_10(mv_u32x4 c, mv_u32x2 k) {
    c = mv_philox4x32_round(c, k);
#if defined(MV_DEVICE_CODE)
#pragma unroll
#endif
    for (int r = 1; r < 10; ++r) {
        k = mv_philox4x32_bumpkey(k);
        c = mv_philox4x32_round(c, k);
    }
    return c;
}

// The Philox block that holds elements 4*chunk ... 4*chunk + 3 of draw (seed, offset, stream).
MV_HD mv_u32x4 mv_philox_block(mv_u64 chunk, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    mv_u32x4 c;
    c.x = (mv_u32)chunk;  // chunk < 2**32 (a draw holds at most 2**34 elements)
    c.y = (mv_u32)offset;
    c.z = (mv_u32)(offset >> 32);
    c.w = stream;
    mv_u32x2 k;
    k.x = (mv_u32)seed;
    k.y = (mv_u32)(seed >> 32);
    return mv_philox4x32_10(c, k);
}

MV_HD mv_u32 mv_u32x4_get(mv_u32x4 v, int lane) {
    return lane == 0 ? v.x : lane == 1 ? v.y : lane == 2 ? v.z : v.w;
}

// The raw word of element i.
MV_HD mv_u32 mv_philox_word(mv_u64 i, mv_u64 seed, mv_u64 offset, mv_u32 stream) {
    return mv_u32x4_get(mv_philox_block(i >> 2, seed, offset, stream), (int)(i & 3));
}

#endif  // MINIVAE_PHILOX_CUH
