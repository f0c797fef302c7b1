// Exponentials and one page of online softmax (AVX-512). Contracts: include/CKVKernels.h; Swift
// twins: PageKernels.expReference, PageKernels.softmaxPageReference.
#include "internal.h"

#if defined(__x86_64__)

// MARK: exp

// exp(x) for x ≤ 0 (any x ≤ 88 works): n = round(x·log2 e), r = x − n·C1 − n·C2 (Cody–Waite, by
// fma), e^r ≈ 1 + r + r²·P(r) (Cephes expf coefficients, Horner by fma), times 2^n (scalef: one
// rounding). x < −103 (and −∞) gives 0. Same operations as PageKernels.expReference.
KVK_TARGET_AVX512 KVK_INLINE __m512 exp16(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-103.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, n));
}

KVK_TARGET_AVX512 void kvk_exp(const float *x, float *out, long count) {
    long i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < count) {
        __mmask16 k = (__mmask16)((1u << (count - i)) - 1);
        _mm512_mask_storeu_ps(out + i, k, exp16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

// MARK: softmax

KVK_TARGET_AVX512 void kvk_softmax_page(float *s, long R, long n, long stride, float *m, float *l, float *out, long d) {
    for (long r = 0; r < R; r++) {
        float *sr = s + r * stride;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        long j = 0;
        for (; j + 16 <= n; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sr + j));
        __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
        if (j < n) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, sr + j));
        float pm = _mm512_reduce_max_ps(mx);
        if (pm == -INFINITY) {
            for (long k = 0; k < n; k++) sr[k] = 0;
            continue;
        }
        float nm = m[r] > pm ? m[r] : pm;
        float cx = m[r] - nm, c;
        kvk_exp(&cx, &c, 1);
        if (c != 1.0f) {
            l[r] *= c;
            __m512 cv = _mm512_set1_ps(c);
            float *o = out + r * d;
            long i = 0;
            for (; i + 16 <= d; i += 16) _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(o + i), cv));
            for (; i < d; i++) o[i] *= c;
        }
        __m512 nmv = _mm512_set1_ps(nm), sum = _mm512_setzero_ps();
        for (j = 0; j + 16 <= n; j += 16) {
            __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(sr + j), nmv));
            _mm512_storeu_ps(sr + j, p);
            sum = _mm512_add_ps(sum, p);
        }
        if (j < n) {
            __m512 p = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, sr + j), nmv));
            _mm512_mask_storeu_ps(sr + j, tail, p);
            sum = _mm512_add_ps(sum, p);
        }
        l[r] += _mm512_reduce_add_ps(sum);
        m[r] = nm;
    }
}

#endif
