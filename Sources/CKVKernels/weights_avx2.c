// Normalised attention weights in position order (AVX2 + FMA), for the read path's `returnWeights`.
// Contract: include/CKVKernels.h; Swift twin: PageKernels.normalizedWeightsPortable.
#include "internal.h"

#if defined(__x86_64__)

// glibc's expf (2.28 and later, sysdeps/ieee754/flt-32/e_expf.c with EXP2F_TABLE_BITS = 5), four
// lanes in double precision: z = x·32/ln 2, k = round(z) (by adding 1.5·2⁵²), r = z − k,
// 2^(k/32) = T[k mod 32] + (k << 47) as a double, e^x ≈ 2^(k/32)·(C0·r³ + C1·r² + C2·r + 1) with
// the same fused operations as glibc's FMA build (`__expf_fma`), rounded once to float.
// x < −103.97 (log 2⁻¹⁵⁰, and −∞) gives 0, as glibc's underflow path. Bit-identical to glibc's expf
// for every float x ≤ 0 (all 2,139,095,040 of them checked on glibc 2.36); x > 0 is not taken here.
// tab[i] = bits(2^(i/32)) − (i << 47).
static const uint64_t expf_table[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

KVK_TARGET_AVX2 KVK_INLINE __m128 glibc_expf4(__m128 x) {
    const __m256d shift = _mm256_set1_pd(0x1.8p+52), invln2n = _mm256_set1_pd(0x1.71547652b82fep+0 * 32);
    const __m256d c0 = _mm256_set1_pd(0x1.c6af84b912394p-5 / 32 / 32 / 32), c1 = _mm256_set1_pd(0x1.ebfce50fac4f3p-3 / 32 / 32);
    const __m256d c2 = _mm256_set1_pd(0x1.62e42ff0c52d6p-1 / 32);
    __m256d z = _mm256_mul_pd(invln2n, _mm256_cvtps_pd(x));
    __m256d kd = _mm256_add_pd(z, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_sub_pd(z, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)expf_table, _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
    __m256d p = _mm256_fmadd_pd(c0, r, c1), r2 = _mm256_mul_pd(r, r), y = _mm256_fmadd_pd(c2, r, _mm256_set1_pd(1.0));
    y = _mm256_mul_pd(_mm256_fmadd_pd(p, r2, y), s);
    // Underflow (and −∞, whose lanes are NaN by now) to 0.
    return _mm_andnot_ps(_mm_cmplt_ps(x, _mm_set1_ps(-0x1.9fe368p6f)), _mm256_cvtpd_ps(y));
}

KVK_TARGET_AVX2 void kvk_normalized_weights_avx2(const float *scores, const int32_t *order, long n, float m, float l, float *out) {
    const __m256 mv = _mm256_set1_ps(m), lv = _mm256_set1_ps(l), ninf = _mm256_set1_ps(-INFINITY);
    long k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 s = _mm256_i32gather_ps(scores, _mm256_loadu_si256((const __m256i *)(order + k)), 4);
        __m256 x = _mm256_sub_ps(s, mv);
        // x > 0 (or NaN) only if m is not the row's maximum: libm's expf then, lane by lane.
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NLE_UQ)) != 0) {
            for (long j = k; j < k + 8; j++) {
                float sj = scores[order[j]];
                out[j] = sj > -INFINITY ? expf(sj - m) / l : 0;
            }
            continue;
        }
        __m256 e = _mm256_set_m128(glibc_expf4(_mm256_extractf128_ps(x, 1)), glibc_expf4(_mm256_castps256_ps128(x)));
        __m256 w = _mm256_div_ps(e, lv);
        _mm256_storeu_ps(out + k, _mm256_and_ps(w, _mm256_cmp_ps(s, ninf, _CMP_GT_OQ)));
    }
    for (; k < n; k++) {
        float s = scores[order[k]];
        out[k] = s > -INFINITY ? expf(s - m) / l : 0;
    }
}

#endif
