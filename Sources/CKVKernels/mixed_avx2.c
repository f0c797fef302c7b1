// Scores of mixed-width per-channel key pages (MixedChannelwiseKeyCodec) in one pass (AVX2 + FMA +
// F16C): each token's codes of every segment are unpacked once per tile of query rows and added
// into the same accumulators, instead of one kernel call, one pass over the tokens and one
// partial-score sum per segment. Contracts: include/CKVKernels.h; Swift twin:
// MixedChannelwiseKeyCodec.scoresReference.
//
// Each segment is read as the per-channel AVX2 kernels read a row (scores_avx2.c): 16-channel units
// (`load_unit_avx2`; INT3 by two `fmt_codes8`) and at most one 8-channel half unit at its end, into
// two accumulators per query row. The prepared query follows the units' element order: natural,
// except in INT4 segments (low nibbles, then high nibbles, in each unit and half unit).
#include "codes_avx2.h"

#if defined(__x86_64__)

KVK_TARGET_AVX2_CODES KVK_INLINE void mixed_unit(int bits, const uint8_t *row, long c0, __m256 v[2]) {
    if (bits == 3) {
        v[0] = _mm256_cvtepi32_ps(fmt_codes8(3, row, c0));
        v[1] = _mm256_cvtepi32_ps(fmt_codes8(3, row, c0 + 8));
    } else {
        load_unit_avx2(bits, row, c0, v);
    }
}

KVK_TARGET_AVX2_CODES KVK_INLINE __m256 mixed_half(int bits, const uint8_t *row, long c0) {
    return bits == 3 ? _mm256_cvtepi32_ps(fmt_codes8(3, row, c0)) : load_half_avx2(bits, row, c0);
}

KVK_TARGET_AVX2_CODES void kvk_prepare_mixed_avx2(const float *q, long R, long d, const int32_t *channels, const uint16_t *params,
                                                   const int32_t *segments, long segmentCount, float *qs, float *zt) {
    const __m256i halfOrder = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (long r = 0; r < R; r++) {
        const float *qr = q + r * d;
        float *out = qs + r * d;
        __m256 z = _mm256_setzero_ps();
        long start = 0;
        for (long k = 0; k < segmentCount; k++) {
            const int bits = segments[4 * k];
            const long m = segments[4 * k + 1], end = start + m;
            long c = start;
            for (; c + 16 <= end; c += 16) {
                __m256 s0, z0, s1, z1;
                load_params8_avx2(params + 2 * c, &s0, &z0);
                load_params8_avx2(params + 2 * c + 16, &s1, &z1);
                const __m256 q0 = _mm256_i32gather_ps(qr, _mm256_loadu_si256((const __m256i *)(channels + c)), 4);
                const __m256 q1 = _mm256_i32gather_ps(qr, _mm256_loadu_si256((const __m256i *)(channels + c + 8)), 4);
                const __m256 a = _mm256_mul_ps(q0, s0), b = _mm256_mul_ps(q1, s1);
                z = _mm256_fmadd_ps(q0, z0, z);
                z = _mm256_fmadd_ps(q1, z1, z);
                if (bits == 4) {  // evens, then odds (as kvk_prepare_channelwise_avx2)
                    const __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
                    _mm256_storeu_ps(out + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0))));
                    _mm256_storeu_ps(out + c + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0))));
                } else {
                    _mm256_storeu_ps(out + c, a);
                    _mm256_storeu_ps(out + c + 8, b);
                }
            }
            if (c < end) {  // the half unit
                __m256 s0, z0;
                load_params8_avx2(params + 2 * c, &s0, &z0);
                const __m256 q0 = _mm256_i32gather_ps(qr, _mm256_loadu_si256((const __m256i *)(channels + c)), 4);
                __m256 a = _mm256_mul_ps(q0, s0);
                z = _mm256_fmadd_ps(q0, z0, z);
                if (bits == 4) a = _mm256_permutevar8x32_ps(a, halfOrder);
                _mm256_storeu_ps(out + c, a);
            }
            start = end;
        }
        zt[r] = fmt_hsum(z);
    }
}

// acc[t][0..1] += one segment's products, for TT tokens (rows seg + t·rowBytes) against one query
// row (TT > 1), or for RT query rows (qs + r·d) against one token.
#define MIXED_SEGMENT(BITS)                                                                                        \
    {                                                                                                              \
        long c0 = 0;                                                                                               \
        for (; c0 + 16 <= m; c0 += 16) {                                                                           \
            __m256 v[2];                                                                                           \
            if (TT > 1) {                                                                                          \
                const __m256 q0 = _mm256_loadu_ps(qs + start + c0), q1 = _mm256_loadu_ps(qs + start + c0 + 8);      \
                for (int t = 0; t < TT; t++) {                                                                     \
                    mixed_unit(BITS, seg + t * rowBytes, c0, v);                                                   \
                    acc[t][0] = _mm256_fmadd_ps(q0, v[0], acc[t][0]);                                              \
                    acc[t][1] = _mm256_fmadd_ps(q1, v[1], acc[t][1]);                                              \
                }                                                                                                  \
            } else {                                                                                               \
                mixed_unit(BITS, seg, c0, v);                                                                      \
                for (int r = 0; r < RT; r++) {                                                                     \
                    acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + r * d + start + c0), v[0], acc[r][0]);        \
                    acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + r * d + start + c0 + 8), v[1], acc[r][1]);    \
                }                                                                                                  \
            }                                                                                                      \
        }                                                                                                          \
        if (c0 < m) {                                                                                              \
            if (TT > 1) {                                                                                          \
                const __m256 q0 = _mm256_loadu_ps(qs + start + c0);                                                \
                for (int t = 0; t < TT; t++) acc[t][0] = _mm256_fmadd_ps(q0, mixed_half(BITS, seg + t * rowBytes, c0), acc[t][0]); \
            } else {                                                                                               \
                const __m256 v = mixed_half(BITS, seg, c0);                                                        \
                for (int r = 0; r < RT; r++) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + r * d + start + c0), v, acc[r][0]); \
            }                                                                                                      \
        }                                                                                                          \
    }

// The lane sums of the accumulators of TT tokens from slot j (one query row, TT > 1), or of RT
// query rows for slot j (TT = 1), as four floats.
KVK_TARGET_AVX2_CODES KVK_INLINE __m128 mixed_tile(int TT, int RT, const float *qs, long d, const int32_t *segments, long segmentCount,
                                                   const uint8_t *codes, long n, long j) {
    __m256 acc[4][2];
    for (int i = 0; i < 4; i++) { acc[i][0] = _mm256_setzero_ps(); acc[i][1] = _mm256_setzero_ps(); }
    long start = 0;
    for (long k = 0; k < segmentCount; k++) {
        const int bits = segments[4 * k];
        const long m = segments[4 * k + 1], rowBytes = segments[4 * k + 2], rowOffset = segments[4 * k + 3];
        const uint8_t *seg = codes + n * rowOffset + j * rowBytes;
        switch (bits) {
        case 8: MIXED_SEGMENT(8) break;
        case 4: MIXED_SEGMENT(4) break;
        case 3: MIXED_SEGMENT(3) break;
        default: MIXED_SEGMENT(2) break;
        }
        start += m;
    }
    return reduce4_avx2(_mm256_add_ps(acc[0][0], acc[0][1]), _mm256_add_ps(acc[1][0], acc[1][1]),
                        _mm256_add_ps(acc[2][0], acc[2][1]), _mm256_add_ps(acc[3][0], acc[3][1]));
}

KVK_TARGET_AVX2_CODES void kvk_scores_mixed_avx2(const float *qs, const float *zt, long R, long d, const int32_t *segments,
                                                  long segmentCount, const uint8_t *codes, long n, float scale, float *scores,
                                                  long stride) {
    float s4[4];
    if (R == 1) {
        const __m128 z = _mm_set1_ps(zt[0]), sc = _mm_set1_ps(scale);
        long j = 0;
        for (; j + 4 <= n; j += 4)
            _mm_storeu_ps(scores + j, _mm_mul_ps(_mm_add_ps(mixed_tile(4, 1, qs, d, segments, segmentCount, codes, n, j), z), sc));
        for (; j < n; j++) {
            _mm_storeu_ps(s4, mixed_tile(1, 1, qs, d, segments, segmentCount, codes, n, j));
            scores[j] = (s4[0] + zt[0]) * scale;
        }
        return;
    }
    for (long r0 = 0; r0 < R; r0 += 4) {
        const int RT = R - r0 < 4 ? (int)(R - r0) : 4;
        const float *qt = qs + r0 * d;
        for (long j = 0; j < n; j++) {
            __m128 s;
            switch (RT) {
            case 4: s = mixed_tile(1, 4, qt, d, segments, segmentCount, codes, n, j); break;
            case 3: s = mixed_tile(1, 3, qt, d, segments, segmentCount, codes, n, j); break;
            case 2: s = mixed_tile(1, 2, qt, d, segments, segmentCount, codes, n, j); break;
            default: s = mixed_tile(1, 1, qt, d, segments, segmentCount, codes, n, j); break;
            }
            _mm_storeu_ps(s4, s);
            for (int r = 0; r < RT; r++) scores[(r0 + r) * stride + j] = (s4[r] + zt[r0 + r]) * scale;
        }
    }
}

#endif
