// Scores of per-channel INT3 key pages and weighted sums of grouped INT3 value rows in FP32
// (AVX2 + FMA + F16C). Contracts: include/CKVKernels.h; Swift twins:
// PageKernels.scoresChannelwiseReference and PageKernels.accumulateReference.
//
// Tiles of up to four query (output) rows: each row's codes are unpacked once per tile.
#include "codes_avx2.h"

#if defined(__x86_64__)

KVK_TARGET_AVX2_CODES void kvk_scores_channelwise_int3_avx2(const float *qs, const float *zt, long R, long d, const uint8_t *codes,
                                                             long rowBytes, long n, float scale, float *scores, long stride) {
    for (long r0 = 0; r0 < R; r0 += 4) {
        const int RT = R - r0 < 4 ? (int)(R - r0) : 4;
        const float *qt = qs + r0 * d;
        for (long j = 0; j < n; j++) {
            const uint8_t *row = codes + j * rowBytes;
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (long c0 = 0; c0 < d; c0 += 8) {
                const __m256 c = _mm256_cvtepi32_ps(fmt_codes8(3, row, c0));
                for (int r = 0; r < RT; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qt + r * d + c0), c, acc[r]);
            }
            for (int r = 0; r < RT; r++) scores[(r0 + r) * stride + j] = (fmt_hsum(acc[r]) + zt[r0 + r]) * scale;
        }
    }
}

KVK_TARGET_AVX2_CODES void kvk_accumulate_int3_avx2(long groupSize, const float *w, long R, long stride, long n, const uint8_t *rows,
                                                     long rowBytes, long codeBytes, long d, float *out) {
    for (long r0 = 0; r0 < R; r0 += 4) {
        const int RT = R - r0 < 4 ? (int)(R - r0) : 4;
        for (long c0 = 0; c0 < d; c0 += 8) {
            const long param = codeBytes + 4 * (c0 / groupSize);
            __m256 acc[4];
            for (int r = 0; r < RT; r++) acc[r] = _mm256_loadu_ps(out + (r0 + r) * d + c0);
            for (long j = 0; j < n; j++) {
                const uint8_t *row = rows + j * rowBytes;
                // x̂ = fma(scale, code, zero) = zero + scale·code exactly (scale·code is exact).
                const __m256 x = _mm256_fmadd_ps(_mm256_set1_ps(fmt_half(row + param)), _mm256_cvtepi32_ps(fmt_codes8(3, row, c0)),
                                                 _mm256_set1_ps(fmt_half(row + param + 2)));
                for (int r = 0; r < RT; r++) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(w[(r0 + r) * stride + j]), x, acc[r]);
            }
            for (int r = 0; r < RT; r++) _mm256_storeu_ps(out + (r0 + r) * d + c0, acc[r]);
        }
    }
}

#endif
