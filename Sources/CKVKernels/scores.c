// Scores of a tile of query rows against FP16 and per-channel (channelwise) key pages, in FP32
// (AVX-512). Contracts: include/CKVKernels.h; Swift twins: PageKernels.scoresReference,
// PageKernels.scoresChannelwiseReference.
//
// Everything works in 64-element chunks of a row (d a multiple of 64) and in tiles of up to 4
// query rows, so each key row is converted to FP32 once per tile, with the tile's accumulators in
// registers.
#include "internal.h"

#if defined(__x86_64__)

// MARK: scores

// Sums of the lanes of four vectors, as four floats: two 512→256→128 folds each, then two hadds.
KVK_TARGET_AVX512 KVK_INLINE __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
    __m256 abcd = _mm256_hadd_ps(ab, cd); // lanes: a b c d (low half) + a b c d (high half)
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

KVK_TARGET_AVX512 KVK_INLINE void scores_tile(int bits, int RT, const float *q, const float *zt, long d, const uint8_t *rows,
                                  long rowBytes, long n, float scale, float *scores, long stride) {
    for (long j = 0; j < n; j++) {
        const uint8_t *row = rows + j * rowBytes;
        __m512 acc[4][2];
        for (int r = 0; r < RT; r++) { acc[r][0] = _mm512_setzero_ps(); acc[r][1] = _mm512_setzero_ps(); }
        for (long c0 = 0; c0 < d; c0 += 64) {
            __m512 v[4];
            load_chunk(bits, row, c0, v);
            for (int r = 0; r < RT; r++) {
                const float *qr = q + r * d + c0;
                acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(qr), v[0], acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 16), v[1], acc[r][1]);
                acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 32), v[2], acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 48), v[3], acc[r][1]);
            }
        }
        if (RT == 4) {
            float s4[4];
            _mm_storeu_ps(s4, reduce4(_mm512_add_ps(acc[0][0], acc[0][1]), _mm512_add_ps(acc[1][0], acc[1][1]),
                                      _mm512_add_ps(acc[2][0], acc[2][1]), _mm512_add_ps(acc[3][0], acc[3][1])));
            for (int r = 0; r < 4; r++) scores[r * stride + j] = (zt ? s4[r] + zt[r] : s4[r]) * scale;
        } else {
            for (int r = 0; r < RT; r++) {
                float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
                if (zt) s += zt[r];
                scores[r * stride + j] = s * scale;
            }
        }
    }
}

// One query row (a decode step without GQA): four tokens at a time, one combined reduction.
KVK_TARGET_AVX512 KVK_INLINE void scores_row4(int bits, const float *q, const float *zt, long d, const uint8_t *rows,
                                  long rowBytes, long n, float scale, float *scores) {
    long j = 0;
    const __m128 z = _mm_set1_ps(zt ? zt[0] : 0.0f), sc = _mm_set1_ps(scale);
    for (; j + 4 <= n; j += 4) {
        __m512 acc[4];
        for (int t = 0; t < 4; t++) acc[t] = _mm512_setzero_ps();
        for (long c0 = 0; c0 < d; c0 += 64) {
            __m512 q0 = _mm512_loadu_ps(q + c0), q1 = _mm512_loadu_ps(q + c0 + 16);
            __m512 q2 = _mm512_loadu_ps(q + c0 + 32), q3 = _mm512_loadu_ps(q + c0 + 48);
            for (int t = 0; t < 4; t++) {
                __m512 v[4];
                load_chunk(bits, rows + (j + t) * rowBytes, c0, v);
                __m512 x = _mm512_fmadd_ps(q0, v[0], _mm512_mul_ps(q1, v[1]));
                x = _mm512_fmadd_ps(q2, v[2], x);
                acc[t] = _mm512_add_ps(acc[t], _mm512_fmadd_ps(q3, v[3], x));
            }
        }
        __m128 s4 = reduce4(acc[0], acc[1], acc[2], acc[3]);
        if (zt) s4 = _mm_add_ps(s4, z);
        _mm_storeu_ps(scores + j, _mm_mul_ps(s4, sc));
    }
    if (j < n) scores_tile(bits, 1, q, zt, d, rows + j * rowBytes, rowBytes, n - j, scale, scores + j, 0);
}

KVK_TARGET_AVX512 KVK_INLINE void scores_all(int bits, const float *q, const float *zt, long R, long d, const uint8_t *rows,
                                 long rowBytes, long n, float scale, float *scores, long stride) {
    if (R == 1) { scores_row4(bits, q, zt, d, rows, rowBytes, n, scale, scores); return; }
    long r = 0;
    for (; r + 4 <= R; r += 4)
        scores_tile(bits, 4, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride);
    switch (R - r) {
    case 3: scores_tile(bits, 3, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride); break;
    case 2: scores_tile(bits, 2, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride); break;
    case 1: scores_tile(bits, 1, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride); break;
    default: break;
    }
}

KVK_TARGET_AVX512 void kvk_scores_fp16(const float *q, long R, long d, const uint16_t *keys, long n, float scale,
                           float *scores, long stride) {
    scores_all(0, q, 0, R, d, (const uint8_t *)keys, 2 * d, n, scale, scores, stride);
}

KVK_TARGET_AVX512 void kvk_scores_channelwise(int bits, const float *qs, const float *zt, long R, long d, const uint8_t *codes,
                            long rowBytes, long n, float scale, float *scores, long stride) {
    switch (bits) {
    case 8: scores_all(8, qs, zt, R, d, codes, rowBytes, n, scale, scores, stride); break;
    case 4: scores_all(4, qs, zt, R, d, codes, rowBytes, n, scale, scores, stride); break;
    default: scores_all(2, qs, zt, R, d, codes, rowBytes, n, scale, scores, stride); break;
    }
}

static long permuted(int bits, long c) {
    if (bits == 4) return c / 32 * 32 + (c % 2) * 16 + (c % 32) / 2;
    if (bits == 2) return c / 64 * 64 + (c % 4) * 16 + (c % 64) / 4;
    return c;
}

KVK_TARGET_AVX512 void kvk_prepare_channelwise(int bits, const float *q, long R, long d, const uint16_t *params,
                                   float *qs, float *zt) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (long r = 0; r < R; r++) {
        const float *qr = q + r * d;
        float *out = qs + r * d;
        __m512 z = _mm512_setzero_ps();
        if (bits == 2) {
            for (long c = 0; c < d; c++) {
                float scale = _cvtsh_ss(params[2 * c]), zero = _cvtsh_ss(params[2 * c + 1]);
                out[permuted(2, c)] = qr[c] * scale;
                z = _mm512_mask_add_ps(z, 1, z, _mm512_set1_ps(qr[c] * zero));
            }
            zt[r] = _mm512_reduce_add_ps(z);
            continue;
        }
        for (long c = 0; c < d; c += 32) {
            __m512 s0, z0, s1, z1;
            load_params16(params + 2 * c, &s0, &z0);
            load_params16(params + 2 * c + 32, &s1, &z1);
            __m512 q0 = _mm512_loadu_ps(qr + c), q1 = _mm512_loadu_ps(qr + c + 16);
            __m512 a = _mm512_mul_ps(q0, s0), b = _mm512_mul_ps(q1, s1);
            z = _mm512_fmadd_ps(q0, z0, z);
            z = _mm512_fmadd_ps(q1, z1, z);
            if (bits == 4) {
                _mm512_storeu_ps(out + c, _mm512_permutex2var_ps(a, ev, b));
                _mm512_storeu_ps(out + c + 16, _mm512_permutex2var_ps(a, od, b));
            } else {
                _mm512_storeu_ps(out + c, a);
                _mm512_storeu_ps(out + c + 16, b);
            }
        }
        zt[r] = _mm512_reduce_add_ps(z);
    }
}

#endif
