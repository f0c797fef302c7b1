// AVX-512 kernels of the decode read path. See include/CKVKernels.h for the contracts and
// KVQuantization/PageKernels.swift for the Swift reference twins.
//
// Everything works in 64-element chunks of a row (d must be a multiple of 64 for the caller to pick
// these kernels; `PageKernels.supports` checks) and in tiles of up to 4 query rows, so each key or
// value row is converted to FP32 once per tile, with the tile's accumulators in registers.
#include "CKVKernels.h"
#include <float.h>
#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__)

#define KVK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
#define KVK_INLINE static inline __attribute__((always_inline))

int kvk_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}

KVK_T static double read_sum_avx512(const float *p, size_t count) {
    size_t quarter = count / 4 / 64 * 64;
    const float *s0 = p, *s1 = p + quarter, *s2 = p + 2 * quarter, *s3 = p + 3 * quarter;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < quarter; i += 32) {
        a0 = _mm512_add_ps(a0, _mm512_add_ps(_mm512_loadu_ps(s0 + i), _mm512_loadu_ps(s0 + i + 16)));
        a1 = _mm512_add_ps(a1, _mm512_add_ps(_mm512_loadu_ps(s1 + i), _mm512_loadu_ps(s1 + i + 16)));
        a2 = _mm512_add_ps(a2, _mm512_add_ps(_mm512_loadu_ps(s2 + i), _mm512_loadu_ps(s2 + i + 16)));
        a3 = _mm512_add_ps(a3, _mm512_add_ps(_mm512_loadu_ps(s3 + i), _mm512_loadu_ps(s3 + i + 16)));
    }
    double t = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (size_t i = 4 * quarter; i < count; i++) t += p[i];
    return t;
}

double kvk_read_sum(const float *p, size_t count) {
    if (kvk_avx512_available()) return read_sum_avx512(p, count);
    float a[8] = {0};
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    double t = 0;
    for (int k = 0; k < 8; k++) t += a[k];
    for (; i < count; i++) t += p[i];
    return t;
}

// MARK: exp

// exp(x) for x ≤ 0 (any x ≤ 88 works): n = round(x·log2 e), r = x − n·C1 − n·C2 (Cody–Waite, by
// fma), e^r ≈ 1 + r + r²·P(r) (Cephes expf coefficients, Horner by fma), times 2^n (scalef: one
// rounding). x < −103 (and −∞) gives 0. Same operations as PageKernels.expReference.
KVK_T KVK_INLINE __m512 exp16(__m512 x) {
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

KVK_T void kvk_exp(const float *x, float *out, long count) {
    long i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < count) {
        __mmask16 k = (__mmask16)((1u << (count - i)) - 1);
        _mm512_mask_storeu_ps(out + i, k, exp16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

// MARK: row chunks

// Codes as FP32 by table lookup: `vpermps` reads only the low 4 bits of each index lane, so an
// INT4 byte needs no mask for its low nibble, and an INT2 index (code t plus the next code above it)
// maps through a table of i mod 4. The values are the codes exactly, as `vcvtdq2ps` would give.
KVK_T KVK_INLINE __m512 code_table(int bits) {
    return bits == 4 ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                     : _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
}

// Table indices of a 64-element chunk of 4- or 2-bit codes, in block order.
KVK_T KVK_INLINE void load_indices(int bits, const void *row, long c0, __m512i idx[4]) {
    if (bits == 4) {
        const uint8_t *b = (const uint8_t *)row + c0 / 2;
        for (int k = 0; k < 2; k++) {
            __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 16 * k)));
            idx[2 * k] = x;
            idx[2 * k + 1] = _mm512_srli_epi32(x, 4);
        }
    } else {
        const uint8_t *b = (const uint8_t *)row + c0 / 4;
        __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
        idx[0] = x;
        idx[1] = _mm512_srli_epi32(x, 2);
        idx[2] = _mm512_srli_epi32(x, 4);
        idx[3] = _mm512_srli_epi32(x, 6);
    }
}

// Four FP32 vectors of one 64-element chunk starting at element c0 of a row, in the block order of
// `bits` (0 = FP16, natural order; 8 natural; 4 and 2 permuted within blocks, see the header).
KVK_T KVK_INLINE void load_chunk(int bits, const void *row, long c0, __m512 v[4]) {
    if (bits == 0) {
        const uint16_t *h = (const uint16_t *)row + c0;
        for (int k = 0; k < 4; k++) v[k] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 16 * k)));
    } else if (bits == 8) {
        const uint8_t *b = (const uint8_t *)row + c0;
        for (int k = 0; k < 4; k++)
            v[k] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 16 * k))));
    } else {
        __m512i idx[4];
        load_indices(bits, row, c0, idx);
        const __m512 table = code_table(bits);
        for (int k = 0; k < 4; k++) v[k] = _mm512_permutexvar_ps(idx[k], table);
    }
}

// MARK: scores

// Sums of the lanes of four vectors, as four floats: two 512→256→128 folds each, then two hadds.
KVK_T KVK_INLINE __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
    __m256 abcd = _mm256_hadd_ps(ab, cd); // lanes: a b c d (low half) + a b c d (high half)
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

KVK_T KVK_INLINE void scores_tile(int bits, int RT, const float *q, const float *zt, long d, const uint8_t *rows,
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
KVK_T KVK_INLINE void scores_row4(int bits, const float *q, const float *zt, long d, const uint8_t *rows,
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

KVK_T KVK_INLINE void scores_all(int bits, const float *q, const float *zt, long R, long d, const uint8_t *rows,
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

KVK_T void kvk_scores_fp16(const float *q, long R, long d, const uint16_t *keys, long n, float scale,
                           float *scores, long stride) {
    scores_all(0, q, 0, R, d, (const uint8_t *)keys, 2 * d, n, scale, scores, stride);
}

KVK_T void kvk_scores_codes(int bits, const float *qs, const float *zt, long R, long d, const uint8_t *codes,
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

// 16 channels' (scale, zero) FP16 pairs at p → scales and zeros.
KVK_T KVK_INLINE void load_params16(const uint16_t *p, __m512 *scale, __m512 *zero) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    __m512 b = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
    *scale = _mm512_permutex2var_ps(a, ev, b);
    *zero = _mm512_permutex2var_ps(a, od, b);
}

KVK_T void kvk_prepare_channelwise(int bits, const float *q, long R, long d, const uint16_t *params,
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

// MARK: softmax

KVK_T void kvk_softmax_page(float *s, long R, long n, long stride, float *m, float *l, float *out, long d) {
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

// MARK: accumulate

// Output chunk of 64 elements in the block order of `bits`, and back.
KVK_T KVK_INLINE void load_out(int bits, const float *o, __m512 a[4]) {
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

KVK_T KVK_INLINE void store_out(int bits, float *o, const __m512 a[4]) {
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
KVK_T KVK_INLINE void accumulate_tile(int bits, int RT, long groupSize, const float *w, long stride, long n,
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

KVK_T KVK_INLINE void accumulate_all(int bits, long groupSize, const float *w, long R, long stride, long n,
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

KVK_T void kvk_accumulate_fp16(const float *w, long R, long stride, long n, const uint16_t *rows, long d, float *out) {
    accumulate_all(0, d, w, R, stride, n, (const uint8_t *)rows, 2 * d, 0, d, out);
}

KVK_T void kvk_accumulate_grouped(int bits, long groupSize, const float *w, long R, long stride, long n,
                                  const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    switch (bits) {
    case 8: accumulate_all(8, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    case 4: accumulate_all(4, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    default: accumulate_all(2, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out); break;
    }
}


// MARK: value check and FP16 conversion (the append path)

KVK_T long kvk_first_unstorable(const float *x, long count) {
    const __m512i maxBits = _mm512_set1_epi32(0x477FE000), absMask = _mm512_set1_epi32(0x7FFFFFFF);
    long i = 0;
    for (; i + 16 <= count; i += 16) {
        __mmask16 bad = _mm512_cmpgt_epu32_mask(_mm512_and_si512(_mm512_loadu_si512(x + i), absMask), maxBits);
        if (bad) return i + __builtin_ctz(bad);
    }
    if (i < count) {
        __mmask16 k = (__mmask16)((1u << (count - i)) - 1);
        __mmask16 bad = _mm512_mask_cmpgt_epu32_mask(k, _mm512_and_si512(_mm512_maskz_loadu_epi32(k, x + i), absMask), maxBits);
        if (bad) return i + __builtin_ctz(bad);
    }
    return -1;
}

KVK_T void kvk_float_to_half(const float *x, uint16_t *out, long count) {
    long i = 0;
    for (; i + 16 <= count; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < count) {
        __mmask16 k = (__mmask16)((1u << (count - i)) - 1);
        __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(out + i, k, h);
    }
}

// MARK: integer-domain value accumulation (AVX-512 VNNI + VBMI)

#define KVK_VI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,f16c,fma")))

int kvk_integer_values_available(void) {
    return kvk_avx512_available() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
}

// Byte indices interleaving two 64-byte rows a, b into (a[k], b[k]) pairs for k in [base, base + 32).
KVK_VI KVK_INLINE __m512i pair_bytes_index(int base) {
    uint8_t ix[64];
    for (int k = 0; k < 32; k++) { ix[2 * k] = (uint8_t)(base + k); ix[2 * k + 1] = (uint8_t)(64 + base + k); }
    return _mm512_loadu_si512(ix);
}

// Word indices interleaving two vectors of 32 words p, q into (p[k], q[k]) dword pairs for k in [base, base + 16).
KVK_VI KVK_INLINE __m512i pair_words_index(int base) {
    uint16_t ix[32];
    for (int k = 0; k < 16; k++) { ix[2 * k] = (uint16_t)(base + k); ix[2 * k + 1] = (uint16_t)(32 + base + k); }
    return _mm512_loadu_si512(ix);
}

// The codes of a block of up to 64 tokens, transposed for vpdpbusd: per 64-code-byte chunk and
// quad of tokens, four vectors whose dword m holds byte 16x + m of the chunk for the quad's four
// tokens (token-minor), split into low and high nibbles at 4 bits. Missing tokens read as zero.
// Computed once per block and shared by all query rows.
// The (scale, zero) FP16 pairs of `gs` ≤ 4 groups at p, zero-extended to 16 bytes. Plain loads of
// the exact bytes: a partially masked load was measured 2× slower for a whole decode step here.
KVK_VI KVK_INLINE __m128i load_param_set(const uint8_t *p, long gs) {
    switch (gs) {
    case 4: return _mm_loadu_si128((const __m128i *)p);
    case 3: return _mm_insert_epi32(_mm_loadl_epi64((const __m128i *)p), *(const int32_t *)(const void *)(p + 8), 2);
    case 2: return _mm_loadl_epi64((const __m128i *)p);
    default: return _mm_cvtsi32_si128(*(const int32_t *)(const void *)p);
    }
}

#define KVK_MAX_CHUNKS 4
typedef struct {
    // Per quad and set of four groups: lane 4·gl + t holds token t's scale (sc) and zero (ze) of
    // group 4·set + gl (0 for missing tokens and groups).
    __m512 sc[16][8], ze[16][8];
    // Codes, densely: vector (x, nibble h) of quad q of chunk c at ((c·16 + q)·4 + x)·H + h, where
    // H = 2 at 4 bits, 1 at 8.
    __m512i v[KVK_MAX_CHUNKS * 16 * 4 * 2];
} kvk_block_codes;
#define KVK_CODE(bc, c, q, x, h, H) ((bc)->v[(((c) * 16 + (q)) * 4 + (x)) * (H) + (h)])

// Quad q's (from token j) codes of chunk c, transposed: V[x][h] (see above).
KVK_VI KVK_INLINE void transpose_quad(const int BITS, long j, long n, const uint8_t *rows, long rowBytes, long c, __m512i V[4][2]) {
    const __m512i pb0 = pair_bytes_index(0), pb1 = pair_bytes_index(32);
    const __m512i pw0 = pair_words_index(0), pw1 = pair_words_index(16);
    const __m512i nib = _mm512_set1_epi8(0x0F);
    __m512i T[4];
    for (int t = 0; t < 4; t++) T[t] = j + t < n ? _mm512_loadu_si512(rows + (j + t) * rowBytes + 64 * c) : _mm512_setzero_si512();
    __m512i P0 = _mm512_permutex2var_epi8(T[0], pb0, T[1]), P1 = _mm512_permutex2var_epi8(T[0], pb1, T[1]);
    __m512i Q0 = _mm512_permutex2var_epi8(T[2], pb0, T[3]), Q1 = _mm512_permutex2var_epi8(T[2], pb1, T[3]);
    __m512i X[4] = {_mm512_permutex2var_epi16(P0, pw0, Q0), _mm512_permutex2var_epi16(P0, pw1, Q0),
                    _mm512_permutex2var_epi16(P1, pw0, Q1), _mm512_permutex2var_epi16(P1, pw1, Q1)};
    for (int x = 0; x < 4; x++) {
        if (BITS == 4) {
            V[x][0] = _mm512_and_si512(X[x], nib);
            V[x][1] = _mm512_and_si512(_mm512_srli_epi16(X[x], 4), nib);
        } else {
            V[x][0] = X[x];
        }
    }
}

// Quad (from token j) scales and zeros of group set k: lane 4·gl + t ← token t's of group 4k + gl.
KVK_VI KVK_INLINE void quad_params(long j, long n, const uint8_t *rows, long rowBytes, long codeBytes, long k, long G,
                                   __m512 *sc, __m512 *ze) {
    const __m512i idxS = _mm512_setr_epi32(0, 8, 16, 24, 2, 10, 18, 26, 4, 12, 20, 28, 6, 14, 22, 30);
    const __m512i idxZ = _mm512_add_epi32(idxS, _mm512_set1_epi32(1));
    const long gs = G - 4 * k < 4 ? G - 4 * k : 4;
    __m256 h[4];
    for (int t = 0; t < 4; t++)
        h[t] = j + t < n ? _mm256_cvtph_ps(load_param_set(rows + (j + t) * rowBytes + codeBytes + 16 * k, gs)) : _mm256_setzero_ps();
    __m512 a = _mm512_insertf32x8(_mm512_castps256_ps512(h[0]), h[1], 1);
    __m512 b = _mm512_insertf32x8(_mm512_castps256_ps512(h[2]), h[3], 1);
    *sc = _mm512_permutex2var_ps(a, idxS, b);
    *ze = _mm512_permutex2var_ps(a, idxZ, b);
}

KVK_VI KVK_INLINE void transpose_block(const int BITS, long j0, long n, long quads, const uint8_t *rows, long rowBytes,
                                       long codeBytes, long G, kvk_block_codes *bc) {
    for (long c = 0; c < codeBytes / 64; c++) {
        for (long q = 0; q < quads; q++) {
            __m512i V[4][2];
            transpose_quad(BITS, j0 + 4 * q, n, rows, rowBytes, c, V);
            for (int x = 0; x < 4; x++)
                for (int h = 0; h < (BITS == 4 ? 2 : 1); h++) KVK_CODE(bc, c, q, x, h, (BITS == 4 ? 2 : 1)) = V[x][h];
        }
    }
    // The scales and zeros after the codes: their rows are in L1 by then (read in row order).
    for (long k = 0; k < (G + 3) / 4; k++)
        for (long q = 0; q < quads; q++) quad_params(j0 + 4 * q, n, rows, rowBytes, codeBytes, k, G, &bc->sc[q][k], &bc->ze[q][k]);
}

// One output row over one block: out[i] += Σ_j w_j·(scale_jg·code_ji + zero_jg) for the block's
// tokens, as documented in the header (kvk_accumulate_grouped_integer). BITS is 4 or 8.
// With bc = NULL (a single row) the codes, scales and zeros are read from the rows directly.
KVK_VI KVK_INLINE void acc_int_row_block(const int BITS, long g, const float *w, long j0, long n, long quads,
                                         const uint8_t *rows, long rowBytes, long codeBytes, long d,
                                         const kvk_block_codes *bc, float *out) {
    const long G = d / g, sets = (G + 3) / 4;
    float wsBuf[16][16];
    uint32_t W0[16][8][4], W1[16][8][4];
    float s0[32], s1[32], zsum[32];
    // Pass 1: w·scale and w·zero per (token, group); maxima and zero sums per group. Pass 2: two
    // int8 pieces per weight: ws ≈ σ0·a0 + σ1·a1.
    for (long k = 0; k < sets; k++) {
        __m512 mx = _mm512_setzero_ps(), zs = _mm512_setzero_ps();
        for (long q = 0; q < quads; q++) {
            // Lane 4·gl + t ← w of token t (0 past n).
            const long left = n - (j0 + 4 * q);
            const __mmask8 wm = (__mmask8)(left >= 4 ? 0xF : (1u << left) - 1);
            const __m512 wv = _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(wm, w + j0 + 4 * q));
            __m512 sc, ze;
            if (bc) { sc = bc->sc[q][k]; ze = bc->ze[q][k]; }
            else quad_params(j0 + 4 * q, n, rows, rowBytes, codeBytes, k, G, &sc, &ze);
            __m512 ws = _mm512_mul_ps(sc, wv), wz = _mm512_mul_ps(ze, wv);
            zs = _mm512_add_ps(zs, wz);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(ws));
            _mm512_storeu_ps(wsBuf[q], ws);
        }
        // Group maxima: the four lanes of each 128-bit lane.
        mx = _mm512_max_ps(mx, _mm512_permute_ps(mx, 0xB1));
        mx = _mm512_max_ps(mx, _mm512_permute_ps(mx, 0x4E));
        __m512 sg0 = _mm512_div_ps(mx, _mm512_set1_ps(127.0f));
        __m512 sg1 = _mm512_div_ps(sg0, _mm512_set1_ps(254.0f));
        __m512 d0 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sg0, _mm512_setzero_ps(), _CMP_EQ_OQ), sg0, _mm512_set1_ps(1.0f));
        __m512 d1 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sg1, _mm512_setzero_ps(), _CMP_EQ_OQ), sg1, _mm512_set1_ps(1.0f));
        float sv0[16], sv1[16], zv[16];
        _mm512_storeu_ps(sv0, sg0);
        _mm512_storeu_ps(sv1, sg1);
        _mm512_storeu_ps(zv, zs);
        for (int gl = 0; gl < 4; gl++) {
            s0[4 * k + gl] = sv0[4 * gl];
            s1[4 * k + gl] = sv1[4 * gl];
            zsum[4 * k + gl] = (zv[4 * gl] + zv[4 * gl + 1]) + (zv[4 * gl + 2] + zv[4 * gl + 3]);
        }
        const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
        const __m512 inv0 = _mm512_div_ps(_mm512_set1_ps(1.0f), d0), inv1 = _mm512_div_ps(_mm512_set1_ps(1.0f), d1);
        for (long q = 0; q < quads; q++) {
            __m512 ws = _mm512_loadu_ps(wsBuf[q]);
            __m512i a0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(ws, inv0), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            a0 = _mm512_max_epi32(_mm512_min_epi32(a0, lim), nlim);
            __m512 r = _mm512_fnmadd_ps(d0, _mm512_cvtepi32_ps(a0), ws);
            __m512i a1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(r, inv1), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            a1 = _mm512_max_epi32(_mm512_min_epi32(a1, lim), nlim);
            _mm_storeu_si128((__m128i *)W0[q][k], _mm512_cvtepi32_epi8(a0));
            _mm_storeu_si128((__m128i *)W1[q][k], _mm512_cvtepi32_epi8(a1));
        }
    }
    // Integer pass per chunk: vpdpbusd of the transposed codes against the tokens' weight bytes,
    // then out += fma(σ0, dot0, fma(σ1, dot1, Z)) per channel, in natural channel order.
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (long c = 0; c < codeBytes / 64; c++) {
        const long c0 = 64 * c;
        __m512i acc[4][2][2];
        long grp[4];
        for (int x = 0; x < 4; x++) {
            grp[x] = BITS == 4 ? (2 * (c0 + 16 * x)) / g : (c0 + 16 * x) / g;
            for (int h = 0; h < 2; h++) { acc[x][h][0] = _mm512_setzero_si512(); acc[x][h][1] = _mm512_setzero_si512(); }
        }
        for (long q = 0; q < quads; q++) {
            __m512i V[4][2];
            if (!bc) transpose_quad(BITS, j0 + 4 * q, n, rows, rowBytes, c, V);
            for (int x = 0; x < 4; x++) {
                const long gi = grp[x];
                const __m512i w0 = _mm512_set1_epi32((int)W0[q][gi / 4][gi % 4]);
                const __m512i w1 = _mm512_set1_epi32((int)W1[q][gi / 4][gi % 4]);
                for (int h = 0; h < (BITS == 4 ? 2 : 1); h++) {
                    const __m512i v = bc ? _mm512_load_si512(&KVK_CODE(bc, c, q, x, h, (BITS == 4 ? 2 : 1))) : V[x][h];
                    acc[x][h][0] = _mm512_dpbusd_epi32(acc[x][h][0], v, w0);
                    acc[x][h][1] = _mm512_dpbusd_epi32(acc[x][h][1], v, w1);
                }
            }
        }
        for (int x = 0; x < 4; x++) {
            const long gi = grp[x];
            const __m512 S0 = _mm512_set1_ps(s0[gi]), S1 = _mm512_set1_ps(s1[gi]), Z = _mm512_set1_ps(zsum[gi]);
            __m512 v0 = _mm512_fmadd_ps(S0, _mm512_cvtepi32_ps(acc[x][0][0]), _mm512_fmadd_ps(S1, _mm512_cvtepi32_ps(acc[x][0][1]), Z));
            if (BITS == 4) {
                __m512 v1 = _mm512_fmadd_ps(S0, _mm512_cvtepi32_ps(acc[x][1][0]), _mm512_fmadd_ps(S1, _mm512_cvtepi32_ps(acc[x][1][1]), Z));
                float *o = out + 2 * (c0 + 16 * x);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_permutex2var_ps(v0, lo, v1)));
                _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), _mm512_permutex2var_ps(v0, hi, v1)));
            } else {
                float *o = out + c0 + 16 * x;
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), v0));
            }
        }
    }
}

KVK_VI KVK_INLINE void acc_int_all(const int BITS, long g, const float *w, long R, long stride, long n, const uint8_t *rows,
                                   long rowBytes, long codeBytes, long d, float *out) {
    // One row (a decode step without GQA): read the rows directly, measured faster than through the
    // scratch (mha-32x128 INT4, 1,024 tokens). Several rows share one transposition per block.
    if (R == 1) {
        for (long j0 = 0; j0 < n; j0 += 64) {
            const long nb = n - j0 < 64 ? n - j0 : 64;
            acc_int_row_block(BITS, g, w, j0, n, (nb + 3) / 4, rows, rowBytes, codeBytes, d, 0, out);
        }
        return;
    }
    kvk_block_codes *bc = (kvk_block_codes *)__builtin_alloca(sizeof(kvk_block_codes) + 64);
    bc = (kvk_block_codes *)(((uintptr_t)bc + 63) & ~(uintptr_t)63);
    for (long j0 = 0; j0 < n; j0 += 64) {
        const long nb = n - j0 < 64 ? n - j0 : 64, quads = (nb + 3) / 4;
        transpose_block(BITS, j0, n, quads, rows, rowBytes, codeBytes, d / g, bc);
        for (long r = 0; r < R; r++)
            acc_int_row_block(BITS, g, w + r * stride, j0, n, quads, rows, rowBytes, codeBytes, d, bc, out + r * d);
    }
}

KVK_VI void kvk_accumulate_grouped_integer(int bits, long groupSize, const float *w, long R, long stride, long n,
                                           const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    if (bits == 4) acc_int_all(4, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out);
    else acc_int_all(8, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out);
}

// MARK: VNNI scores of channelwise keys

// Integer-domain scores: the query is split into two int8 vectors per page (kvk_prepare_vnni), and
// each code row is dotted with both by `vpdpbusd` (u8 codes × s8 weights → s32, exact), 64 codes
// per instruction, with no per-code conversion to FP32. See the header for the layout.
#define KVK_VNNI_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))

int kvk_vnni_available(void) {
    __builtin_cpu_init();
    return kvk_avx512_available() && __builtin_cpu_supports("avx512vnni");
}

// The block (base b0, size B channels) that channel c falls in: greedy from 0, the largest size
// of the width (64 at 8 bits, 128 at 4, 256 at 2) that fits, halving down to 64 at the end.
static inline void vnni_block(int bits, long d, long c, long *b0, long *B) {
    long base = 0, size = bits == 4 ? 128 : bits == 2 ? 256 : 64;
    for (;;) {
        while (base + size > d) size /= 2;
        if (c < base + size) break;
        base += size;
    }
    *b0 = base;
    *B = size;
}

// The codes of the block at b0 (B channels) as B/64 vectors of 64 unsigned bytes, in π order.
KVK_VNNI_T KVK_INLINE int vnni_codes(int bits, const uint8_t *row, long b0, long B, __m512i v[4]) {
    if (bits == 8) {
        v[0] = _mm512_loadu_si512((const void *)(row + b0));
        return 1;
    }
    if (bits == 4) {
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        if (B == 128) {
            __m512i x = _mm512_loadu_si512((const void *)(row + b0 / 2));
            v[0] = _mm512_and_si512(x, m4);
            v[1] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
            return 2;
        }
        __m256i x = _mm256_loadu_si256((const __m256i *)(row + b0 / 2));
        v[0] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(x), _mm256_srli_epi16(x, 4), 1), m4);
        return 1;
    }
    const __m512i m2 = _mm512_set1_epi8(0x03);
    if (B == 256) {
        __m512i x = _mm512_loadu_si512((const void *)(row + b0 / 4));
        v[0] = _mm512_and_si512(x, m2);
        v[1] = _mm512_and_si512(_mm512_srli_epi16(x, 2), m2);
        v[2] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m2);
        v[3] = _mm512_and_si512(_mm512_srli_epi16(x, 6), m2);
        return 4;
    }
    if (B == 128) {
        __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(row + b0 / 4)));
        const __m512i s01 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        const __m512i s23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
        v[0] = _mm512_and_si512(_mm512_srlv_epi16(x, s01), m2);
        v[1] = _mm512_and_si512(_mm512_srlv_epi16(x, s23), m2);
        return 2;
    }
    __m512i x = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(row + b0 / 4)));
    const __m512i s = _mm512_setr_epi64(0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                        0x0004000400040004LL, 0x0004000400040004LL, 0x0006000600060006LL, 0x0006000600060006LL);
    v[0] = _mm512_and_si512(_mm512_srlv_epi16(x, s), m2);
    return 1;
}

// Lane-sum steps (see vnni_scores_width). The first two each use one blend (any vector pipe) and
// one cross-lane shuffle: red1(a, b) = [a.lo + a.hi | b.hi + b.lo] (token a in 128-bit blocks 0–1,
// b in 2–3); red2 of two of those (tokens a, b and c, d) puts a, c, b, d in blocks 0, 1, 2, 3.
KVK_VNNI_T KVK_INLINE __m512i vnni_red1(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_mask_blend_epi64(0xF0, a, b), _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(1, 0, 3, 2)));
}
KVK_VNNI_T KVK_INLINE __m512i vnni_red2(__m512i a, __m512i b) {
    const __m512i idx = _mm512_setr_epi64(2, 3, 8, 9, 6, 7, 12, 13);
    return _mm512_add_epi32(_mm512_mask_blend_epi64(0xCC, a, b), _mm512_permutex2var_epi64(a, idx, b));
}
KVK_VNNI_T KVK_INLINE __m512i vnni_red3(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
KVK_VNNI_T KVK_INLINE __m512i vnni_red4(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

// One block's contribution to both dots.
KVK_VNNI_T KVK_INLINE void vnni_block_dots(int bits, const uint8_t *row, const int8_t *a0, const int8_t *a1, long b0,
                                           long B, __m512i *x0, __m512i *x1) {
    __m512i v[4];
    int k = vnni_codes(bits, row, b0, B, v);
    for (int i = 0; i < k; i++) {
        *x0 = _mm512_dpbusd_epi32(*x0, v[i], _mm512_loadu_si512((const void *)(a0 + b0 + 64 * i)));
        *x1 = _mm512_dpbusd_epi32(*x1, v[i], _mm512_loadu_si512((const void *)(a1 + b0 + 64 * i)));
    }
}

// Both dots of one code row with one prepared row (16 int32 partial sums each), block by block as
// `vnni_block` cuts the row: full blocks, then halves down to 64.
KVK_VNNI_T KVK_INLINE void vnni_dots(int bits, const uint8_t *row, const int8_t *a0, const int8_t *a1, long d,
                                     __m512i *s0, __m512i *s1) {
    const long F = bits == 4 ? 128 : bits == 2 ? 256 : 64;
    __m512i x0 = _mm512_setzero_si512(), x1 = _mm512_setzero_si512();
    long b0 = 0;
    for (; b0 + F <= d; b0 += F) vnni_block_dots(bits, row, a0, a1, b0, F, &x0, &x1);
    for (long B = F / 2; B >= 64; B /= 2)
        if (b0 + B <= d) { vnni_block_dots(bits, row, a0, a1, b0, B, &x0, &x1); b0 += B; }
    *s0 = x0;
    *s1 = x1;
}

// Tokens j and j + 1 (each only if below n), their dots folded by the first lane-sum step.
KVK_VNNI_T KVK_INLINE void vnni_pair(int bits, int full, const uint8_t *codes, long rowBytes, long j, long n,
                                     const int8_t *a0, const int8_t *a1, long d, __m512i *p0, __m512i *p1) {
    __m512i u0 = _mm512_setzero_si512(), u1 = u0, w0 = u0, w1 = u0;
    if (full || j < n) vnni_dots(bits, codes + j * rowBytes, a0, a1, d, &u0, &u1);
    if (full || j + 1 < n) vnni_dots(bits, codes + (j + 1) * rowBytes, a0, a1, d, &w0, &w1);
    *p0 = vnni_red1(u0, w0);
    *p1 = vnni_red1(u1, w1);
}

// Four tokens from j: both dots after two lane-sum steps (128-bit block t = token j + t).
KVK_VNNI_T KVK_INLINE void vnni_quad(int bits, int full, const uint8_t *codes, long rowBytes, long j, long n,
                                     const int8_t *a0, const int8_t *a1, long d, __m512i *q0, __m512i *q1) {
    __m512i a, b, c, e;
    vnni_pair(bits, full, codes, rowBytes, j, n, a0, a1, d, &a, &b);
    vnni_pair(bits, full, codes, rowBytes, j + 2, n, a0, a1, d, &c, &e);
    *q0 = vnni_red2(a, c);
    *q1 = vnni_red2(b, e);
}

// Sixteen tokens from j0 (those below n) of one prepared row: their scores, stored.
KVK_VNNI_T KVK_INLINE void vnni_block16(int bits, int full, const uint8_t *codes, long rowBytes, long j0, long n,
                                        const int8_t *a0, const int8_t *a1, long d, __m512 c0, __m512 c1, __m512 zt,
                                        __m512 sc, float *out) {
    // After the four steps, lane 4k + i holds token π(k) + 4i of the 16 (π = 0, 2, 1, 3: the block
    // order of vnni_red2); this puts token j in lane j (lane 4·π(j mod 4) + ⌊j/4⌋).
    const __m512i order = _mm512_setr_epi32(0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15);
    __m512i qa0, qa1, qb0, qb1, t0, t1, u0, u1;
    vnni_quad(bits, full, codes, rowBytes, j0, n, a0, a1, d, &qa0, &qa1);
    vnni_quad(bits, full, codes, rowBytes, j0 + 4, n, a0, a1, d, &qb0, &qb1);
    t0 = vnni_red3(qa0, qb0);
    t1 = vnni_red3(qa1, qb1);
    vnni_quad(bits, full, codes, rowBytes, j0 + 8, n, a0, a1, d, &qa0, &qa1);
    vnni_quad(bits, full, codes, rowBytes, j0 + 12, n, a0, a1, d, &qb0, &qb1);
    u0 = vnni_red3(qa0, qb0);
    u1 = vnni_red3(qa1, qb1);
    __m512 f0 = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(order, vnni_red4(t0, u0)));
    __m512 f1 = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(order, vnni_red4(t1, u1)));
    __m512 s = _mm512_mul_ps(_mm512_fmadd_ps(c0, f0, _mm512_fmadd_ps(c1, f1, zt)), sc);
    if (full) {
        _mm512_storeu_ps(out + j0, s);
    } else {
        __mmask16 k = (__mmask16)((1u << (n - j0)) - 1);
        _mm512_mask_storeu_ps(out + j0, k, s);
    }
}

// Lane sums, 16 tokens at a time: pairs of tokens fold their 256-bit halves together (one vector,
// 8 lanes each), pairs of those their 128-bit blocks (4 tokens × 4 lanes), then 64-bit pairs and
// lanes across 4 tokens 4 apart: 15 adds, 12 blends or shuffles across lanes and 6 within lanes per
// 16 tokens and dot, then one vpermd.
KVK_VNNI_T KVK_INLINE void vnni_scores_width(int bits, const int8_t *a, const float *coef, long R, long d,
                                             const uint8_t *codes, long rowBytes, long n, float scale,
                                             float *scores, long stride) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (long r = 0; r < R; r++) {
        const int8_t *a0 = a + r * 2 * d, *a1 = a0 + d;
        const __m512 c0 = _mm512_set1_ps(coef[4 * r]), c1 = _mm512_set1_ps(coef[4 * r + 1]), zt = _mm512_set1_ps(coef[4 * r + 2]);
        float *out = scores + r * stride;
        long j0 = 0;
        for (; j0 + 16 <= n; j0 += 16) vnni_block16(bits, 1, codes, rowBytes, j0, n, a0, a1, d, c0, c1, zt, sc, out);
        if (j0 < n) vnni_block16(bits, 0, codes, rowBytes, j0, n, a0, a1, d, c0, c1, zt, sc, out);
    }
}

// One copy per width; inlined into each head-dim case below so `d` is a constant there.
KVK_VNNI_T KVK_INLINE void vnni_scores_bits(int bits, const int8_t *a, const float *coef, long R, long d, const uint8_t *codes,
                                            long rowBytes, long n, float scale, float *scores, long stride) {
    switch (bits) {
    case 8: vnni_scores_width(8, a, coef, R, d, codes, rowBytes, n, scale, scores, stride); break;
    case 4: vnni_scores_width(4, a, coef, R, d, codes, rowBytes, n, scale, scores, stride); break;
    default: vnni_scores_width(2, a, coef, R, d, codes, rowBytes, n, scale, scores, stride); break;
    }
}

KVK_VNNI_T void kvk_scores_vnni(int bits, const int8_t *a, const float *coef, long R, long d, const uint8_t *codes,
                                long rowBytes, long n, float scale, float *scores, long stride) {
    if (d % 64 != 0 || d > KVK_VNNI_MAX_HEAD_DIM) __builtin_trap();
    // The common head dims get their own copies (constant blocks, unrolled).
    if (d == 64) vnni_scores_bits(bits, a, coef, R, 64, codes, rowBytes, n, scale, scores, stride);
    else if (d == 128) vnni_scores_bits(bits, a, coef, R, 128, codes, rowBytes, n, scale, scores, stride);
    else vnni_scores_bits(bits, a, coef, R, d, codes, rowBytes, n, scale, scores, stride);
}

// Stores 16 FP32 values of a 64-channel chunk at c (k-th vector of 16) into the π order of `bits`.
KVK_VNNI_T KVK_INLINE void vnni_store_permuted(int bits, long d, long c, const __m512 x[4], float *qs) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    if (bits == 8) {
        for (int k = 0; k < 4; k++) _mm512_storeu_ps(qs + c + 16 * k, x[k]);
        return;
    }
    long b0, B;
    vnni_block(bits, d, c, &b0, &B);
    long o = c - b0;
    if (bits == 4) {
        // Channels b0 + o + 2i (+1) of each 32: evens at b0 + o/2 + i, odds at b0 + B/2 + o/2 + i.
        for (int h = 0; h < 2; h++) {
            long oo = o + 32 * h;
            _mm512_storeu_ps(qs + b0 + oo / 2, _mm512_permutex2var_ps(x[2 * h], ev, x[2 * h + 1]));
            _mm512_storeu_ps(qs + b0 + B / 2 + oo / 2, _mm512_permutex2var_ps(x[2 * h], od, x[2 * h + 1]));
        }
        return;
    }
    __m512 A = _mm512_permutex2var_ps(x[0], ev, x[1]), Bo = _mm512_permutex2var_ps(x[0], od, x[1]);
    __m512 C = _mm512_permutex2var_ps(x[2], ev, x[3]), D = _mm512_permutex2var_ps(x[2], od, x[3]);
    __m512 t[4] = {_mm512_permutex2var_ps(A, ev, C), _mm512_permutex2var_ps(Bo, ev, D),
                   _mm512_permutex2var_ps(A, od, C), _mm512_permutex2var_ps(Bo, od, D)};
    for (int k = 0; k < 4; k++) _mm512_storeu_ps(qs + b0 + k * (B / 4) + o / 4, t[k]);
}

KVK_VNNI_T void kvk_prepare_vnni(int bits, const float *q, long R, long d, const uint16_t *params, int8_t *a, float *coef) {
    if (d % 64 != 0 || d > KVK_VNNI_MAX_HEAD_DIM) __builtin_trap();
    float qs[KVK_VNNI_MAX_HEAD_DIM];
    for (long r = 0; r < R; r++) {
        const float *qr = q + r * d;
        __m512 z = _mm512_setzero_ps();
        // max_c |qs_c| as bit patterns: unsigned order is float order on |x|, and above it (∞, NaN).
        __m512i mx = _mm512_setzero_si512();
        for (long c = 0; c < d; c += 64) {
            __m512 x[4];
            for (int h = 0; h < 2; h++) {
                __m512 s0, z0, s1, z1;
                long cc = c + 32 * h;
                load_params16(params + 2 * cc, &s0, &z0);
                load_params16(params + 2 * cc + 32, &s1, &z1);
                __m512 q0 = _mm512_loadu_ps(qr + cc), q1 = _mm512_loadu_ps(qr + cc + 16);
                x[2 * h] = _mm512_mul_ps(q0, s0);
                x[2 * h + 1] = _mm512_mul_ps(q1, s1);
                z = _mm512_fmadd_ps(q0, z0, z);
                z = _mm512_fmadd_ps(q1, z1, z);
                mx = _mm512_max_epu32(mx, _mm512_castps_si512(_mm512_abs_ps(x[2 * h])));
                mx = _mm512_max_epu32(mx, _mm512_castps_si512(_mm512_abs_ps(x[2 * h + 1])));
            }
            vnni_store_permuted(bits, d, c, x, qs);
        }
        // zt: fold halves 8, 4, 2, 1 (the order of PageKernels.prepareChannelwiseVNNIReference).
        __m256 z8 = _mm256_add_ps(_mm512_castps512_ps256(z), _mm512_extractf32x8_ps(z, 1));
        __m128 z4 = _mm_add_ps(_mm256_castps256_ps128(z8), _mm256_extractf128_ps(z8, 1));
        __m128 z2 = _mm_add_ps(z4, _mm_movehl_ps(z4, z4));
        float zt = _mm_cvtss_f32(_mm_add_ss(z2, _mm_shuffle_ps(z2, z2, 1)));
        uint32_t mbits = (uint32_t)_mm512_reduce_max_epu32(mx);
        int finite = mbits <= 0x7F7FFFFFu;
        float m;
        __builtin_memcpy(&m, &mbits, 4);
        int8_t *a0 = a + r * 2 * d, *a1 = a0 + d;
        float s0 = 0, s1 = 0;
        if (!finite) {
            s0 = s1 = NAN;
        } else if (m >= 0x1p-96f) {
            s0 = m / 127.0f;
            s1 = s0 / 254.0f;
        }
        coef[4 * r] = s0;
        coef[4 * r + 1] = s1;
        coef[4 * r + 2] = zt;
        coef[4 * r + 3] = 0;
        if (!(s0 > 0)) {
            for (long c = 0; c < 2 * d; c++) a0[c] = 0;
            continue;
        }
        const __m512 i0 = _mm512_set1_ps(1.0f / s0), i1 = _mm512_set1_ps(1.0f / s1), nsv = _mm512_set1_ps(-s0);
        // rint(x·inv) by the magic number 1.5·2²³: fl(magic + x·inv) (one fma) is magic + rint(x·inv)
        // exactly for |x·inv| < 2²², so its low byte is the piece in two's complement. The clamps to
        // ±127 of the definition never bind for finite m ≥ 2⁻⁹⁶ (|x·inv| < 127.5, see
        // PageKernels.prepareChannelwiseVNNIReference), so they are left out here.
        const __m512 magic = _mm512_set1_ps(0x1.8p23f);
        for (long c = 0; c < d; c += 16) {
            __m512 x = _mm512_loadu_ps(qs + c);
            __m512 y0 = _mm512_fmadd_ps(x, i0, magic);
            __m512 res = _mm512_fmadd_ps(nsv, _mm512_sub_ps(y0, magic), x);
            __m512 y1 = _mm512_fmadd_ps(res, i1, magic);
            _mm_storeu_si128((__m128i *)(a0 + c), _mm512_cvtepi32_epi8(_mm512_castps_si512(y0)));
            _mm_storeu_si128((__m128i *)(a1 + c), _mm512_cvtepi32_epi8(_mm512_castps_si512(y1)));
        }
    }
}

#else // not x86-64: the Swift path is used; these must never be called.

int kvk_avx512_available(void) { return 0; }
double kvk_read_sum(const float *p, size_t count) {
    double t = 0;
    for (size_t i = 0; i < count; i++) t += p[i];
    return t;
}
void kvk_exp(const float *x, float *out, long count) { __builtin_trap(); }
void kvk_scores_fp16(const float *q, long R, long d, const uint16_t *keys, long n, float scale, float *scores, long stride) { __builtin_trap(); }
void kvk_prepare_channelwise(int bits, const float *q, long R, long d, const uint16_t *params, float *qs, float *zt) { __builtin_trap(); }
void kvk_scores_codes(int bits, const float *qs, const float *zt, long R, long d, const uint8_t *codes, long rowBytes, long n, float scale, float *scores, long stride) { __builtin_trap(); }
void kvk_softmax_page(float *s, long R, long n, long stride, float *m, float *l, float *out, long d) { __builtin_trap(); }
void kvk_accumulate_fp16(const float *w, long R, long stride, long n, const uint16_t *rows, long d, float *out) { __builtin_trap(); }
void kvk_accumulate_grouped(int bits, long groupSize, const float *w, long R, long stride, long n, const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) { __builtin_trap(); }
int kvk_integer_values_available(void) { return 0; }
long kvk_first_unstorable(const float *x, long count) { __builtin_trap(); }
void kvk_float_to_half(const float *x, uint16_t *out, long count) { __builtin_trap(); }
void kvk_accumulate_grouped_integer(int bits, long groupSize, const float *w, long R, long stride, long n, const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) { __builtin_trap(); }

int kvk_vnni_available(void) { return 0; }
void kvk_prepare_vnni(int bits, const float *q, long R, long d, const uint16_t *params, int8_t *a, float *coef) { __builtin_trap(); }
void kvk_scores_vnni(int bits, const int8_t *a, const float *coef, long R, long d, const uint8_t *codes, long rowBytes, long n, float scale, float *scores, long stride) { __builtin_trap(); }
#endif
