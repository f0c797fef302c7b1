// Scores of a tile of query rows against FP16 and per-channel (channelwise) key pages, in FP32
// (AVX2 + FMA + F16C). Contracts: include/CKVKernels.h; Swift twins: PageKernels.scoresReference,
// PageKernels.scoresChannelwiseReference.
//
// Rows are read in 16-element units (`load_unit_avx2`; per-channel codes may end in one 8-element
// half unit, `load_half_avx2`, so their d need only be a multiple of 8) and query rows in tiles of up to 4, so each key row is converted to FP32 once per tile (a GQA group, a prefill
// chunk), with the tile's accumulators in registers (two per row: 16 ymm registers in all).
#include "internal.h"

#if defined(__x86_64__)

// RT query rows (1–4) against every token, one token at a time.
KVK_TARGET_AVX2 KVK_INLINE void scores_tile_avx2(int bits, int RT, const float *q, const float *zt, long d, const uint8_t *rows,
                                                 long rowBytes, long n, float scale, float *scores, long stride) {
    for (long j = 0; j < n; j++) {
        const uint8_t *row = rows + j * rowBytes;
        __m256 acc[4][2];
        for (int r = 0; r < RT; r++) { acc[r][0] = _mm256_setzero_ps(); acc[r][1] = _mm256_setzero_ps(); }
        long c0 = 0;
        for (; c0 + 16 <= d; c0 += 16) {
            __m256 v[2];
            load_unit_avx2(bits, row, c0, v);
            for (int r = 0; r < RT; r++) {
                acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * d + c0), v[0], acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * d + c0 + 8), v[1], acc[r][1]);
            }
        }
        if (c0 < d) {
            const __m256 v = load_half_avx2(bits, row, c0);
            for (int r = 0; r < RT; r++) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * d + c0), v, acc[r][0]);
        }
        __m256 a[4];
        for (int r = 0; r < 4; r++) a[r] = r < RT ? _mm256_add_ps(acc[r][0], acc[r][1]) : _mm256_setzero_ps();
        float s4[4];
        _mm_storeu_ps(s4, reduce4_avx2(a[0], a[1], a[2], a[3]));
        for (int r = 0; r < RT; r++) scores[r * stride + j] = (zt ? s4[r] + zt[r] : s4[r]) * scale;
    }
}

// One query row (a decode step without GQA): four tokens at a time, one combined reduction.
KVK_TARGET_AVX2 KVK_INLINE void scores_row4_avx2(int bits, const float *q, const float *zt, long d, const uint8_t *rows,
                                                 long rowBytes, long n, float scale, float *scores) {
    const __m128 z = _mm_set1_ps(zt ? zt[0] : 0.0f), sc = _mm_set1_ps(scale);
    long j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256 acc[4][2];
        for (int t = 0; t < 4; t++) { acc[t][0] = _mm256_setzero_ps(); acc[t][1] = _mm256_setzero_ps(); }
        long c0 = 0;
        for (; c0 + 16 <= d; c0 += 16) {
            const __m256 q0 = _mm256_loadu_ps(q + c0), q1 = _mm256_loadu_ps(q + c0 + 8);
            for (int t = 0; t < 4; t++) {
                __m256 v[2];
                load_unit_avx2(bits, rows + (j + t) * rowBytes, c0, v);
                acc[t][0] = _mm256_fmadd_ps(q0, v[0], acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(q1, v[1], acc[t][1]);
            }
        }
        if (c0 < d) {
            const __m256 q0 = _mm256_loadu_ps(q + c0);
            for (int t = 0; t < 4; t++) acc[t][0] = _mm256_fmadd_ps(q0, load_half_avx2(bits, rows + (j + t) * rowBytes, c0), acc[t][0]);
        }
        __m128 s4 = reduce4_avx2(_mm256_add_ps(acc[0][0], acc[0][1]), _mm256_add_ps(acc[1][0], acc[1][1]),
                                 _mm256_add_ps(acc[2][0], acc[2][1]), _mm256_add_ps(acc[3][0], acc[3][1]));
        if (zt) s4 = _mm_add_ps(s4, z);
        _mm_storeu_ps(scores + j, _mm_mul_ps(s4, sc));
    }
    if (j < n) scores_tile_avx2(bits, 1, q, zt, d, rows + j * rowBytes, rowBytes, n - j, scale, scores + j, 0);
}

KVK_TARGET_AVX2 KVK_INLINE void scores_all_avx2(int bits, const float *q, const float *zt, long R, long d, const uint8_t *rows,
                                                long rowBytes, long n, float scale, float *scores, long stride) {
    if (R == 1) { scores_row4_avx2(bits, q, zt, d, rows, rowBytes, n, scale, scores); return; }
    long r = 0;
    for (; r + 4 <= R; r += 4)
        scores_tile_avx2(bits, 4, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride);
    switch (R - r) {
    case 3: scores_tile_avx2(bits, 3, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride); break;
    case 2: scores_tile_avx2(bits, 2, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride); break;
    case 1: scores_tile_avx2(bits, 1, q + r * d, zt ? zt + r : 0, d, rows, rowBytes, n, scale, scores + r * stride, stride); break;
    default: break;
    }
}

KVK_TARGET_AVX2 void kvk_scores_fp16_avx2(const float *q, long R, long d, const uint16_t *keys, long n, float scale,
                                          float *scores, long stride) {
    scores_all_avx2(0, q, 0, R, d, (const uint8_t *)keys, 2 * d, n, scale, scores, stride);
}

KVK_TARGET_AVX2 void kvk_scores_channelwise_avx2(int bits, const float *qs, const float *zt, long R, long d, const uint8_t *codes,
                                                 long rowBytes, long n, float scale, float *scores, long stride) {
    switch (bits) {
    case 8: scores_all_avx2(8, qs, zt, R, d, codes, rowBytes, n, scale, scores, stride); break;
    case 4: scores_all_avx2(4, qs, zt, R, d, codes, rowBytes, n, scale, scores, stride); break;
    default: scores_all_avx2(2, qs, zt, R, d, codes, rowBytes, n, scale, scores, stride); break;
    }
}

KVK_TARGET_AVX2 void kvk_prepare_channelwise_avx2(int bits, const float *q, long R, long d, const uint16_t *params,
                                                  float *qs, float *zt) {
    for (long r = 0; r < R; r++) {
        const float *qr = q + r * d;
        float *out = qs + r * d;
        __m256 z = _mm256_setzero_ps();
        long c = 0;
        for (; c + 16 <= d; c += 16) {
            __m256 s0, z0, s1, z1;
            load_params8_avx2(params + 2 * c, &s0, &z0);
            load_params8_avx2(params + 2 * c + 16, &s1, &z1);
            const __m256 q0 = _mm256_loadu_ps(qr + c), q1 = _mm256_loadu_ps(qr + c + 8);
            __m256 a = _mm256_mul_ps(q0, s0), b = _mm256_mul_ps(q1, s1);
            z = _mm256_fmadd_ps(q0, z0, z);
            z = _mm256_fmadd_ps(q1, z1, z);
            if (bits == 4) {
                // Unit order: evens, then odds. shuffle_ps pairs lanes within 128-bit halves; the
                // 64-bit permute puts the halves in order.
                const __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); // a0 a2 b0 b2 | a4 a6 b4 b6
                const __m256 od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
                _mm256_storeu_ps(out + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0))));
                _mm256_storeu_ps(out + c + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0))));
            } else {
                _mm256_storeu_ps(out + c, a);
                _mm256_storeu_ps(out + c + 8, b);
            }
        }
        if (c < d) {  // the last 8 channels: load_half_avx2's order
            __m256 s0, z0;
            load_params8_avx2(params + 2 * c, &s0, &z0);
            const __m256 q0 = _mm256_loadu_ps(qr + c);
            __m256 a = _mm256_mul_ps(q0, s0);
            z = _mm256_fmadd_ps(q0, z0, z);
            if (bits == 4) a = _mm256_permutevar8x32_ps(a, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
            _mm256_storeu_ps(out + c, a);
        }
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        zt[r] = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
    }
}

#endif
