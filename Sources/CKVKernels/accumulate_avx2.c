// The weighted sum of a page's FP16 or grouped value rows in FP32 (AVX2 + FMA + F16C). Contracts:
// include/CKVKernels.h; Swift twin: PageKernels.accumulateReference (bit-identical: per element,
// tokens in order, x̂ = fma(scale, code, zero) and one fma into the output each).
//
// Rows are read in 16-element units (`load_unit_avx2`); output rows in tiles of up to 4, over a
// chunk of the row whose accumulators fill 8 ymm registers (64 elements for one row, 32 for two,
// 16 for three or four), so each value row is converted to FP32 once per tile.
#include "internal.h"

#if defined(__x86_64__)

// Output unit of 16 elements in the unit order of `bits` (4 bits: evens, then odds), and back.
KVK_TARGET_AVX2 KVK_INLINE void load_out_avx2(int bits, const float *o, __m256 a[2]) {
    const __m256 x = _mm256_loadu_ps(o), y = _mm256_loadu_ps(o + 8);
    if (bits == 4) {
        const __m256 ev = _mm256_shuffle_ps(x, y, _MM_SHUFFLE(2, 0, 2, 0)), od = _mm256_shuffle_ps(x, y, _MM_SHUFFLE(3, 1, 3, 1));
        a[0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0)));
        a[1] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0)));
    } else {
        a[0] = x;
        a[1] = y;
    }
}

KVK_TARGET_AVX2 KVK_INLINE void store_out_avx2(int bits, float *o, const __m256 a[2]) {
    if (bits == 4) {
        const __m256 lo = _mm256_unpacklo_ps(a[0], a[1]), hi = _mm256_unpackhi_ps(a[0], a[1]); // o0–3 o8–11 | o4–7 o12–15
        _mm256_storeu_ps(o, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    } else {
        _mm256_storeu_ps(o, a[0]);
        _mm256_storeu_ps(o + 8, a[1]);
    }
}

// RT output rows, the U units of the chunk at c0, every token in order. bits: 0 = FP16 rows, else
// grouped rows with (scale, zero) pairs at codeBytes (groupSize a multiple of 16: a unit is in one group).
KVK_TARGET_AVX2 KVK_INLINE void accumulate_chunk_avx2(int bits, int RT, int U, long c0, long groupSize, const float *w, long stride, long n,
                                                      const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    __m256 acc[4][8];
    for (int r = 0; r < RT; r++)
        for (int u = 0; u < U; u++) load_out_avx2(bits, out + r * d + c0 + 16 * u, &acc[r][2 * u]);
    for (long j = 0; j < n; j++) {
        const uint8_t *row = rows + j * rowBytes;
        __m256 wr[4];
        for (int r = 0; r < RT; r++) wr[r] = _mm256_broadcast_ss(w + r * stride + j);
        for (int u = 0; u < U; u++) {
            __m256 v[2];
            load_unit_avx2(bits, row, c0 + 16 * u, v);
            if (bits) {
                int32_t pair;
                __builtin_memcpy(&pair, row + codeBytes + 4 * ((c0 + 16 * u) / groupSize), 4);
                const __m128 sz = _mm_cvtph_ps(_mm_cvtsi32_si128(pair));
                const __m256 sc = _mm256_broadcastss_ps(sz), ze = _mm256_broadcastss_ps(_mm_movehdup_ps(sz));
                v[0] = _mm256_fmadd_ps(sc, v[0], ze);
                v[1] = _mm256_fmadd_ps(sc, v[1], ze);
            }
            for (int r = 0; r < RT; r++) {
                acc[r][2 * u] = _mm256_fmadd_ps(wr[r], v[0], acc[r][2 * u]);
                acc[r][2 * u + 1] = _mm256_fmadd_ps(wr[r], v[1], acc[r][2 * u + 1]);
            }
        }
    }
    for (int r = 0; r < RT; r++)
        for (int u = 0; u < U; u++) store_out_avx2(bits, out + r * d + c0 + 16 * u, &acc[r][2 * u]);
}

// RT rows over the whole row: chunks of 4/RT units (at least 1), then single units for the rest.
KVK_TARGET_AVX2 KVK_INLINE void accumulate_tile_avx2(int bits, int RT, long groupSize, const float *w, long stride, long n,
                                                     const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    const int U = RT == 1 ? 4 : RT == 2 ? 2 : 1;
    long c0 = 0;
    for (; c0 + 16 * U <= d; c0 += 16 * U)
        accumulate_chunk_avx2(bits, RT, U, c0, groupSize, w, stride, n, rows, rowBytes, codeBytes, d, out);
    for (; c0 < d; c0 += 16)
        accumulate_chunk_avx2(bits, RT, 1, c0, groupSize, w, stride, n, rows, rowBytes, codeBytes, d, out);
}

KVK_TARGET_AVX2 KVK_INLINE void accumulate_all_avx2(int bits, long groupSize, const float *w, long R, long stride, long n,
                                                    const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    long r = 0;
    for (; r + 4 <= R; r += 4)
        accumulate_tile_avx2(bits, 4, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d);
    switch (R - r) {
    case 3: accumulate_tile_avx2(bits, 3, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d); break;
    case 2: accumulate_tile_avx2(bits, 2, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d); break;
    case 1: accumulate_tile_avx2(bits, 1, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d); break;
    default: break;
    }
}

KVK_TARGET_AVX2 void kvk_accumulate_fp16_avx2(const float *w, long R, long stride, long n, const uint16_t *rows, long d, float *out) {
    accumulate_all_avx2(0, d, w, R, stride, n, (const uint8_t *)rows, 2 * d, 0, d, out);
}

KVK_TARGET_AVX2 void kvk_accumulate_grouped_avx2(int bits, long groupSize, const float *w, long R, long stride, long n,
                                                 const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    switch (bits) {
    case 8: accumulate_all_avx2(8, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    case 4: accumulate_all_avx2(4, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    default: accumulate_all_avx2(2, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    }
}

#endif
