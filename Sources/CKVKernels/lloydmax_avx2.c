// Scores and weighted sums of Lloyd–Max rows (codes, then an FP16 norm) in FP32 (AVX2 + FMA + F16C).
// Contracts: include/CKVKernels.h; Swift twins: PageKernels.scoresReference and
// PageKernels.accumulateReference.
//
// Tiles of up to four query (output) rows: each row's level lookups are done once per tile.
#include "codes_avx2.h"

#if defined(__x86_64__)

KVK_TARGET_AVX2_CODES void kvk_scores_lloydmax_avx2(int bits, const float *levels, const float *q, long R, long d,
                                                     const uint8_t *rows, long rowBytes, long codeBytes, long n, float scale,
                                                     float *scores, long stride) {
    const __m256 lo = _mm256_loadu_ps(levels), hi = _mm256_loadu_ps(levels + 8);
    for (long r0 = 0; r0 < R; r0 += 4) {
        const int RT = R - r0 < 4 ? (int)(R - r0) : 4;
        const float *qt = q + r0 * d;
        for (long j = 0; j < n; j++) {
            const uint8_t *row = rows + j * rowBytes;
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (long c0 = 0; c0 < d; c0 += 8) {
                const __m256 x = fmt_lookup(bits, fmt_codes8(bits, row, c0), lo, hi);
                for (int r = 0; r < RT; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qt + r * d + c0), x, acc[r]);
            }
            const float norm = fmt_half(row + codeBytes);
            for (int r = 0; r < RT; r++) scores[(r0 + r) * stride + j] = fmt_hsum(acc[r]) * norm * scale;
        }
    }
}

KVK_TARGET_AVX2_CODES void kvk_accumulate_lloydmax_avx2(int bits, const float *levels, const float *w, long R, long stride, long n,
                                                         const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    const __m256 lo = _mm256_loadu_ps(levels), hi = _mm256_loadu_ps(levels + 8);
    for (long r0 = 0; r0 < R; r0 += 4) {
        const int RT = R - r0 < 4 ? (int)(R - r0) : 4;
        for (long c0 = 0; c0 < d; c0 += 16) {
            const int two = c0 + 16 <= d;
            __m256 acc[4][2];
            for (int r = 0; r < RT; r++) {
                acc[r][0] = _mm256_loadu_ps(out + (r0 + r) * d + c0);
                acc[r][1] = two ? _mm256_loadu_ps(out + (r0 + r) * d + c0 + 8) : _mm256_setzero_ps();
            }
            for (long j = 0; j < n; j++) {
                const uint8_t *row = rows + j * rowBytes;
                const __m256 norm = _mm256_set1_ps(fmt_half(row + codeBytes));
                // x̂ = norm · L[c], rounded once (as the reference decodes it).
                const __m256 x0 = _mm256_mul_ps(norm, fmt_lookup(bits, fmt_codes8(bits, row, c0), lo, hi));
                const __m256 x1 = two ? _mm256_mul_ps(norm, fmt_lookup(bits, fmt_codes8(bits, row, c0 + 8), lo, hi)) : x0;
                for (int r = 0; r < RT; r++) {
                    const __m256 wr = _mm256_set1_ps(w[(r0 + r) * stride + j]);
                    acc[r][0] = _mm256_fmadd_ps(wr, x0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(wr, x1, acc[r][1]);
                }
            }
            for (int r = 0; r < RT; r++) {
                _mm256_storeu_ps(out + (r0 + r) * d + c0, acc[r][0]);
                if (two) _mm256_storeu_ps(out + (r0 + r) * d + c0 + 8, acc[r][1]);
            }
        }
    }
}

#endif
