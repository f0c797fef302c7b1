// Helpers of the AVX2 kernels of the INT3 and Lloyd–Max formats (int3_avx2.c, lloydmax_avx2.c):
// codes of a packed row as 32-bit lanes, level lookups, horizontal sums. x86-64 only.
#ifndef CKVKERNELS_CODES_AVX2_H
#define CKVKERNELS_CODES_AVX2_H

#include "internal.h"
#include <string.h>

#if defined(__x86_64__)

/// AVX2 with FMA and F16C (`KVK_CPU_AVX2`): the kernels of int3_avx2.c and lloydmax_avx2.c.
#define KVK_TARGET_AVX2_CODES __attribute__((target("avx2,fma,f16c")))

// Eight codes of `bits` (2, 3, 4 or 8) starting at element e (a multiple of 8) of a row packed as a
// little-end-first bit stream: exactly `bits` bytes are read.
KVK_TARGET_AVX2_CODES KVK_INLINE __m256i fmt_codes8(int bits, const uint8_t *row, long e) {
    const uint8_t *b = row + e / 8 * bits;
    uint32_t w = 0;
    switch (bits) {
    case 8: {
        int64_t x;
        memcpy(&x, b, 8);
        return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(x));
    }
    case 4:
        memcpy(&w, b, 4);
        return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                _mm256_set1_epi32(15));
    case 3:
        w = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
        return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21)),
                                _mm256_set1_epi32(7));
    default:
        w = (uint32_t)b[0] | (uint32_t)b[1] << 8;
        return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                _mm256_set1_epi32(3));
    }
}

// The levels of eight codes (< 16) from a table held as levels 0–7 (`lo`) and 8–15 (`hi`):
// `vpermps` reads the low three bits of each index; bit 3 picks the half (4-bit codes only).
KVK_TARGET_AVX2_CODES KVK_INLINE __m256 fmt_lookup(int bits, __m256i idx, __m256 lo, __m256 hi) {
    __m256 a = _mm256_permutevar8x32_ps(lo, idx);
    if (bits < 4) return a;
    __m256 b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

KVK_TARGET_AVX2_CODES KVK_INLINE float fmt_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// One FP16 value (little-endian bit pattern at p) as a float.
KVK_TARGET_AVX2_CODES KVK_INLINE float fmt_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

#endif // __x86_64__
#endif
