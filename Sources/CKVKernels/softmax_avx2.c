// Exponentials and one page of online softmax (AVX2 + FMA). Contracts: include/CKVKernels.h; Swift
// twins: PageKernels.expReference, PageKernels.softmaxPageReference.
#include "internal.h"

#if defined(__x86_64__)

// MARK: exp

// exp(x) by the operations of exp16 (softmax.c) and PageKernels.expReference: n = round(x·log2 e),
// Cody–Waite reduction and the Cephes polynomial by fma, then y·2ⁿ as one product. AVX2 has no
// scalef, so 2ⁿ is built exactly from its bits: (n + 127)·2²³ for n ≥ −126, the subnormal
// 2^(n + 149) (one bit) for −149 ≤ n < −126 (x ≥ −103 gives n ≥ −149). x < −103, −∞ and NaN give 0.
KVK_TARGET_AVX2 KVK_INLINE __m256 exp8_avx2(__m256 x) {
    const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-103.0f), _CMP_GE_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-103.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n); // exact: n is an integer in [−149, 128]
    const __m256i normal = _mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23);
    const __m256i subnormal = _mm256_sllv_epi32(_mm256_set1_epi32(1), _mm256_add_epi32(ni, _mm256_set1_epi32(149)));
    const __m256 tiny = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(-126), ni));
    const __m256 pow2 = _mm256_blendv_ps(_mm256_castsi256_ps(normal), _mm256_castsi256_ps(subnormal), tiny);
    return _mm256_and_ps(_mm256_mul_ps(y, pow2), live);
}

// Lanes [0, k) of a mask, k ≤ 8.
KVK_TARGET_AVX2 KVK_INLINE __m256i tail_mask_avx2(long k) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

KVK_TARGET_AVX2 void kvk_exp_avx2(const float *x, float *out, long count) {
    long i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, exp8_avx2(_mm256_loadu_ps(x + i)));
    if (i < count) {
        const __m256i k = tail_mask_avx2(count - i);
        _mm256_maskstore_ps(out + i, k, exp8_avx2(_mm256_maskload_ps(x + i, k)));
    }
}

// MARK: softmax

KVK_TARGET_AVX2 KVK_INLINE float hmax_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

KVK_TARGET_AVX2 KVK_INLINE float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

KVK_TARGET_AVX2 void kvk_softmax_page_avx2(float *s, long R, long n, long stride, float *m, float *l, float *out, long d) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const long tail = n % 8, whole = n - tail;
    const __m256i tm = tail_mask_avx2(tail);
    for (long r = 0; r < R; r++) {
        float *sr = s + r * stride;
        __m256 mx = ninf;
        for (long j = 0; j < whole; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sr + j));
        if (tail) mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, _mm256_maskload_ps(sr + whole, tm), _mm256_castsi256_ps(tm)));
        const float pm = hmax_avx2(mx);
        if (pm == -INFINITY) {
            for (long k = 0; k < n; k++) sr[k] = 0;
            continue;
        }
        const float nm = m[r] > pm ? m[r] : pm;
        const float c = _mm256_cvtss_f32(exp8_avx2(_mm256_set1_ps(m[r] - nm)));
        if (c != 1.0f) {
            l[r] *= c;
            const __m256 cv = _mm256_set1_ps(c);
            float *o = out + r * d;
            long i = 0;
            for (; i + 8 <= d; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(o + i), cv));
            for (; i < d; i++) o[i] *= c;
        }
        const __m256 nmv = _mm256_set1_ps(nm);
        __m256 sum = _mm256_setzero_ps();
        for (long j = 0; j < whole; j += 8) {
            const __m256 p = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(sr + j), nmv));
            _mm256_storeu_ps(sr + j, p);
            sum = _mm256_add_ps(sum, p);
        }
        if (tail) {
            // Masked-off lanes load 0 and give exp(0 − M) ≠ 0: zero them before summing.
            const __m256 p = _mm256_and_ps(exp8_avx2(_mm256_sub_ps(_mm256_maskload_ps(sr + whole, tm), nmv)), _mm256_castsi256_ps(tm));
            _mm256_maskstore_ps(sr + whole, tm, p);
            sum = _mm256_add_ps(sum, p);
        }
        l[r] += hsum_avx2(sum);
        m[r] = nm;
    }
}

#endif
