// The weighted sum of a page's FP16 or grouped value rows in FP32 (AVX-512). Contracts:
// include/CKVKernels.h; Swift twin: PageKernels.accumulateReference.
//
// Works in 64-element chunks of a row and tiles of up to 4 output rows, so each value row is
// converted to FP32 once per tile, with the tile's accumulators in registers.
#include "internal.h"

#if defined(__x86_64__)

// MARK: accumulate

// Output chunk of 64 elements in the block order of `bits`, and back.
KVK_TARGET_AVX512 KVK_INLINE void load_out(int bits, const float *o, __m512 a[4]) {
    if (bits == 4) {
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for (int b = 0; b < 2; b++) {
            __m512 x = _mm512_loadu_ps(o + 32 * b), y = _mm512_loadu_ps(o + 32 * b + 16);
            a[2 * b] = _mm512_permutex2var_ps(x, ev, y);
            a[2 * b + 1] = _mm512_permutex2var_ps(x, od, y);
        }
    } else if (bits == 2) {
        // a[t] lane k = o[4k + t].
        for (int t = 0; t < 4; t++) {
            const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60),
                                                 _mm512_set1_epi32(t));
            a[t] = _mm512_i32gather_ps(idx, o, 4);
        }
    } else {
        for (int k = 0; k < 4; k++) a[k] = _mm512_loadu_ps(o + 16 * k);
    }
}

KVK_TARGET_AVX512 KVK_INLINE void store_out(int bits, float *o, const __m512 a[4]) {
    if (bits == 4) {
        const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for (int b = 0; b < 2; b++) {
            _mm512_storeu_ps(o + 32 * b, _mm512_permutex2var_ps(a[2 * b], lo, a[2 * b + 1]));
            _mm512_storeu_ps(o + 32 * b + 16, _mm512_permutex2var_ps(a[2 * b], hi, a[2 * b + 1]));
        }
    } else if (bits == 2) {
        for (int t = 0; t < 4; t++) {
            const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60),
                                                 _mm512_set1_epi32(t));
            _mm512_i32scatter_ps(o, idx, a[t], 4);
        }
    } else {
        for (int k = 0; k < 4; k++) _mm512_storeu_ps(o + 16 * k, a[k]);
    }
}

// bits: 0 = FP16 rows, else grouped rows with (scale, zero) pairs at codeBytes.
KVK_TARGET_AVX512 KVK_INLINE void accumulate_tile(int bits, int RT, long groupSize, const float *w, long stride, long n,
                                      const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    const long G = bits ? d / groupSize : 0;
    for (long c0 = 0; c0 < d; c0 += 64) {
        __m512 acc[4][4];
        for (int r = 0; r < RT; r++) load_out(bits, out + r * d + c0, acc[r]);
        // Groups of this chunk's four vectors (elements c0 + blockBase(k)).
        long group[4];
        for (int k = 0; k < 4; k++) {
            long base = bits == 4 ? 32 * (k / 2) : bits == 2 ? 0 : 16 * k;
            group[k] = bits ? (c0 + base) / groupSize : 0;
        }
        // Lanes of each vector's scale and zero among the four converted halves: 2·(group − first).
        __m512i sIdx[4], zIdx[4];
        for (int k = 0; k < 4; k++) {
            sIdx[k] = _mm512_set1_epi32((int)(2 * (group[k] - group[0])));
            zIdx[k] = _mm512_set1_epi32((int)(2 * (group[k] - group[0]) + 1));
        }
        const int oneGroup = group[3] == group[0];
        const __mmask8 halfMask = (__mmask8)((1u << (2 * (group[3] - group[0] + 1))) - 1);
        for (long j = 0; j < n; j++) {
            const uint8_t *row = rows + j * rowBytes;
            __m512 v[4];
            if (bits == 4 || bits == 2) {
                __m512i idx[4];
                load_indices(bits, row, c0, idx);
                __m512 pv = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_maskz_loadu_epi16(halfMask, row + codeBytes + 4 * group[0])));
                const __m512 table = code_table(bits);
                if (oneGroup) {
                    __m512 t = _mm512_fmadd_ps(_mm512_permutexvar_ps(sIdx[0], pv), table, _mm512_permutexvar_ps(zIdx[0], pv));
                    for (int k = 0; k < 4; k++) v[k] = _mm512_permutexvar_ps(idx[k], t);
                } else {
                    for (int k = 0; k < 4; k += 2) {
                        // Vectors k and k+1 share a group (INT4: one 32-code block; INT2: one 64-code chunk).
                        __m512 t = _mm512_fmadd_ps(_mm512_permutexvar_ps(sIdx[k], pv), table, _mm512_permutexvar_ps(zIdx[k], pv));
                        v[k] = _mm512_permutexvar_ps(idx[k], t);
                        v[k + 1] = _mm512_permutexvar_ps(idx[k + 1], t);
                    }
                }
            } else {
            load_chunk(bits, row, c0, v);
            if (bits) {
                // The chunk's (at most 4) groups' parameters: one masked load and conversion.
                __m512 pv = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_maskz_loadu_epi16(halfMask, row + codeBytes + 4 * group[0])));
                if (oneGroup) {
                    __m512 sc = _mm512_permutexvar_ps(sIdx[0], pv), ze = _mm512_permutexvar_ps(zIdx[0], pv);
                    for (int k = 0; k < 4; k++) v[k] = _mm512_fmadd_ps(sc, v[k], ze);
                } else {
                    for (int k = 0; k < 4; k++)
                        v[k] = _mm512_fmadd_ps(_mm512_permutexvar_ps(sIdx[k], pv), v[k], _mm512_permutexvar_ps(zIdx[k], pv));
                }
            }
            }
            for (int r = 0; r < RT; r++) {
                __m512 wr = _mm512_set1_ps(w[r * stride + j]);
                for (int k = 0; k < 4; k++) acc[r][k] = _mm512_fmadd_ps(wr, v[k], acc[r][k]);
            }
        }
        for (int r = 0; r < RT; r++) store_out(bits, out + r * d + c0, acc[r]);
    }
    (void)G;
}

KVK_TARGET_AVX512 KVK_INLINE void accumulate_all(int bits, long groupSize, const float *w, long R, long stride, long n,
                                     const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    long r = 0;
    for (; r + 4 <= R; r += 4)
        accumulate_tile(bits, 4, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d);
    switch (R - r) {
    case 3: accumulate_tile(bits, 3, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d); break;
    case 2: accumulate_tile(bits, 2, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d); break;
    case 1: accumulate_tile(bits, 1, groupSize, w + r * stride, stride, n, rows, rowBytes, codeBytes, d, out + r * d); break;
    default: break;
    }
}

KVK_TARGET_AVX512 void kvk_accumulate_fp16(const float *w, long R, long stride, long n, const uint16_t *rows, long d, float *out) {
    accumulate_all(0, d, w, R, stride, n, (const uint8_t *)rows, 2 * d, 0, d, out);
}

KVK_TARGET_AVX512 void kvk_accumulate_grouped(int bits, long groupSize, const float *w, long R, long stride, long n,
                                  const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    switch (bits) {
    case 8: accumulate_all(8, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    case 4: accumulate_all(4, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    default: accumulate_all(2, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    }
}

#endif
