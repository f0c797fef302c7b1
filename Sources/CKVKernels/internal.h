// Shared by the kernel files, not part of the public interface: the target attributes (one per
// feature set the kernels are compiled for; runtime dispatch, no compiler flags) and the inline
// helpers used by more than one file. x86-64 only, like the kernels.
#ifndef CKVKERNELS_INTERNAL_H
#define CKVKERNELS_INTERNAL_H

#include "CKVKernels.h"
#include <float.h>
#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>

/// AVX-512 F/BW/VL/DQ with F16C and FMA (`KVK_CPU_AVX512`): every kernel of the files without a
/// suffix but the two below.
#define KVK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
/// … plus AVX512-VNNI (`KVK_CPU_AVX512_VNNI`): the integer-domain scores (scores_vnni.c).
#define KVK_TARGET_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
/// … plus AVX512-VNNI and VBMI: the integer-domain value accumulation (accumulate_integer.c).
#define KVK_TARGET_AVX512_VNNI_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,f16c,fma")))
/// AVX2 with F16C and FMA (`KVK_CPU_AVX2`): the `…_avx2` kernels (the `_avx2.c` files).
#define KVK_TARGET_AVX2 __attribute__((target("avx2,f16c,fma")))

#define KVK_INLINE static inline __attribute__((always_inline))

// MARK: row chunks (scores.c, accumulate.c)

// Codes as FP32 by table lookup: `vpermps` reads only the low 4 bits of each index lane, so an
// INT4 byte needs no mask for its low nibble, and an INT2 index (code t plus the next code above it)
// maps through a table of i mod 4. The values are the codes exactly, as `vcvtdq2ps` would give.
KVK_TARGET_AVX512 KVK_INLINE __m512 code_table(int bits) {
    return bits == 4 ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                     : _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
}

// Table indices of a 64-element chunk of 4- or 2-bit codes, in block order.
KVK_TARGET_AVX512 KVK_INLINE void load_indices(int bits, const void *row, long c0, __m512i idx[4]) {
    if (bits == 4) {
        const uint8_t *b = (const uint8_t *)row + c0 / 2;
        for (int k = 0; k < 2; k++) {
            __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 16 * k)));
            idx[2 * k] = x;
            idx[2 * k + 1] = _mm512_srli_epi32(x, 4);
        }
    } else {
        const uint8_t *b = (const uint8_t *)row + c0 / 4;
        __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
        idx[0] = x;
        idx[1] = _mm512_srli_epi32(x, 2);
        idx[2] = _mm512_srli_epi32(x, 4);
        idx[3] = _mm512_srli_epi32(x, 6);
    }
}

// Four FP32 vectors of one 64-element chunk starting at element c0 of a row, in the block order of
// `bits` (0 = FP16, natural order; 8 natural; 4 and 2 permuted within blocks, see the header).
KVK_TARGET_AVX512 KVK_INLINE void load_chunk(int bits, const void *row, long c0, __m512 v[4]) {
    if (bits == 0) {
        const uint16_t *h = (const uint16_t *)row + c0;
        for (int k = 0; k < 4; k++) v[k] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 16 * k)));
    } else if (bits == 8) {
        const uint8_t *b = (const uint8_t *)row + c0;
        for (int k = 0; k < 4; k++)
            v[k] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 16 * k))));
    } else {
        __m512i idx[4];
        load_indices(bits, row, c0, idx);
        const __m512 table = code_table(bits);
        for (int k = 0; k < 4; k++) v[k] = _mm512_permutexvar_ps(idx[k], table);
    }
}

// 16 channels' (scale, zero) FP16 pairs at p → scales and zeros (scores.c, scores_vnni.c).
KVK_TARGET_AVX512 KVK_INLINE void load_params16(const uint16_t *p, __m512 *scale, __m512 *zero) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    __m512 b = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
    *scale = _mm512_permutex2var_ps(a, ev, b);
    *zero = _mm512_permutex2var_ps(a, od, b);
}

// MARK: AVX2 row units (scores_avx2.c, accumulate_avx2.c)

// Two FP32 vectors of the 16-element unit starting at element c0 (a multiple of 16) of a row, in
// the unit order of `bits`: natural for FP16 (0), 8 and 2 bits; for 4 bits, v[0] holds elements
// c0 + 2k and v[1] elements c0 + 2k + 1 (k = 0..<8): within a unit, element 2k + h sits at 8h + k.
// The values are the codes exactly (or the halves, exactly).
KVK_TARGET_AVX2 KVK_INLINE void load_unit_avx2(int bits, const void *row, long c0, __m256 v[2]) {
    if (bits == 0) {
        const uint16_t *h = (const uint16_t *)row + c0;
        v[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
        v[1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 8)));
    } else if (bits == 8) {
        const uint8_t *b = (const uint8_t *)row + c0;
        v[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b)));
        v[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8))));
    } else if (bits == 4) {
        __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)row + c0 / 2)));
        v[0] = _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0x0F)));
        v[1] = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4));
    } else {
        int32_t w;
        __builtin_memcpy(&w, (const uint8_t *)row + c0 / 4, 4);
        const __m256i x = _mm256_set1_epi32(w), three = _mm256_set1_epi32(3);
        v[0] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), three));
        v[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30)), three));
    }
}

// The half unit of 8 elements at c0 (c0 a multiple of 16, the row's last 8 elements), in the order
// kvk_prepare_channelwise_avx2 (and kvk_prepare_mixed_avx2) stores the query's last 8: natural, except at 4 bits (low nibbles,
// elements c0 + 0, 2, 4, 6, then high nibbles, c0 + 1, 3, 5, 7). Reads exactly the half unit's bytes.
KVK_TARGET_AVX2 KVK_INLINE __m256 load_half_avx2(int bits, const void *row, long c0) {
    if (bits == 0) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c0)));
    if (bits == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)row + c0))));
    if (bits == 4) {
        int32_t w;
        __builtin_memcpy(&w, (const uint8_t *)row + c0 / 2, 4);
        const __m128i x = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(w));
        const __m128i lo = _mm_and_si128(x, _mm_set1_epi32(0x0F)), hi = _mm_srli_epi32(x, 4);
        return _mm256_cvtepi32_ps(_mm256_set_m128i(hi, lo));
    }
    uint16_t w;
    __builtin_memcpy(&w, (const uint8_t *)row + c0 / 4, 2);
    const __m256i x = _mm256_set1_epi32(w);
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), _mm256_set1_epi32(3)));
}

// 8 (scale, zero) FP16 pairs at p → 8 scales and 8 zeros.
KVK_TARGET_AVX2 KVK_INLINE void load_params8_avx2(const uint16_t *p, __m256 *scale, __m256 *zero) {
    const __m256i split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256 a = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), split);       // s0–3 z0–3
    __m256 b = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8))), split); // s4–7 z4–7
    *scale = _mm256_permute2f128_ps(a, b, 0x20);
    *zero = _mm256_permute2f128_ps(a, b, 0x31);
}

// Lane sums of four vectors, as four floats (two hadds, then the halves).
KVK_TARGET_AVX2 KVK_INLINE __m128 reduce4_avx2(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

#endif // __x86_64__
// MARK: integer-domain key scores (scores_vnni.c, scores_int_avx2.c)

// The split of one prepared query row (PageKernels.prepareChannelwiseVNNIReference): from the row's
// max |q_c·s_c| as a bit pattern (unsigned order is float order on |x|, ∞ and NaN above) and its zero
// term zt, the piece scales σ0 = m/127, σ1 = σ0/254 (NaN for a non-finite row, 0 below 2⁻⁹⁶), written
// with zt to coef as (σ0, σ1, zt, 0). Returns 0, with the row's 2d pieces at a0 zeroed, when σ0 is not
// positive (nothing to split); else 1, and the caller writes the pieces.
static inline int kvk_split_scales(uint32_t mbits, float zt, long d, float *coef, int8_t *a0, float *s0, float *s1) {
    float m, sg0 = 0, sg1 = 0;
    __builtin_memcpy(&m, &mbits, 4);
    if (mbits > 0x7F7FFFFFu) {
        sg0 = sg1 = NAN;
    } else if (m >= 0x1p-96f) {
        sg0 = m / 127.0f;
        sg1 = sg0 / 254.0f;
    }
    coef[0] = sg0;
    coef[1] = sg1;
    coef[2] = zt;
    coef[3] = 0;
    *s0 = sg0;
    *s1 = sg1;
    if (!(sg0 > 0)) {
        for (long c = 0; c < 2 * d; c++) a0[c] = 0;
        return 0;
    }
    return 1;
}

#endif
