// Integer-domain (AVX512-VNNI) scores of per-channel key pages. Contracts: include/CKVKernels.h;
// Swift twins: PageKernels.prepareChannelwiseVNNIReference, PageKernels.scoresChannelwiseVNNIReference.
//
// Integer-domain scores: the query is split into two int8 vectors per page (kvk_prepare_channelwise_vnni), and
// each code row is dotted with both by `vpdpbusd` (u8 codes × s8 weights → s32, exact), 64 codes
// per instruction, with no per-code conversion to FP32. See the header for the layout.
#include "internal.h"

#if defined(__x86_64__)

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
KVK_TARGET_AVX512_VNNI KVK_INLINE int vnni_codes(int bits, const uint8_t *row, long b0, long B, __m512i v[4]) {
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
KVK_TARGET_AVX512_VNNI KVK_INLINE __m512i vnni_red1(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_mask_blend_epi64(0xF0, a, b), _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(1, 0, 3, 2)));
}
KVK_TARGET_AVX512_VNNI KVK_INLINE __m512i vnni_red2(__m512i a, __m512i b) {
    const __m512i idx = _mm512_setr_epi64(2, 3, 8, 9, 6, 7, 12, 13);
    return _mm512_add_epi32(_mm512_mask_blend_epi64(0xCC, a, b), _mm512_permutex2var_epi64(a, idx, b));
}
KVK_TARGET_AVX512_VNNI KVK_INLINE __m512i vnni_red3(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
KVK_TARGET_AVX512_VNNI KVK_INLINE __m512i vnni_red4(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

// One block's contribution to both dots.
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_block_dots(int bits, const uint8_t *row, const int8_t *a0, const int8_t *a1, long b0,
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
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_dots(int bits, const uint8_t *row, const int8_t *a0, const int8_t *a1, long d,
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
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_pair(int bits, int full, const uint8_t *codes, long rowBytes, long j, long n,
                                     const int8_t *a0, const int8_t *a1, long d, __m512i *p0, __m512i *p1) {
    __m512i u0 = _mm512_setzero_si512(), u1 = u0, w0 = u0, w1 = u0;
    if (full || j < n) vnni_dots(bits, codes + j * rowBytes, a0, a1, d, &u0, &u1);
    if (full || j + 1 < n) vnni_dots(bits, codes + (j + 1) * rowBytes, a0, a1, d, &w0, &w1);
    *p0 = vnni_red1(u0, w0);
    *p1 = vnni_red1(u1, w1);
}

// Four tokens from j: both dots after two lane-sum steps (128-bit block t = token j + t).
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_quad(int bits, int full, const uint8_t *codes, long rowBytes, long j, long n,
                                     const int8_t *a0, const int8_t *a1, long d, __m512i *q0, __m512i *q1) {
    __m512i a, b, c, e;
    vnni_pair(bits, full, codes, rowBytes, j, n, a0, a1, d, &a, &b);
    vnni_pair(bits, full, codes, rowBytes, j + 2, n, a0, a1, d, &c, &e);
    *q0 = vnni_red2(a, c);
    *q1 = vnni_red2(b, e);
}

// Sixteen tokens from j0 (those below n) of one prepared row: their scores, stored.
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_block16(int bits, int full, const uint8_t *codes, long rowBytes, long j0, long n,
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
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_scores_width(int bits, const int8_t *a, const float *coef, long R, long d,
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
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_scores_bits(int bits, const int8_t *a, const float *coef, long R, long d, const uint8_t *codes,
                                            long rowBytes, long n, float scale, float *scores, long stride) {
    switch (bits) {
    case 8: vnni_scores_width(8, a, coef, R, d, codes, rowBytes, n, scale, scores, stride); break;
    case 4: vnni_scores_width(4, a, coef, R, d, codes, rowBytes, n, scale, scores, stride); break;
    default: vnni_scores_width(2, a, coef, R, d, codes, rowBytes, n, scale, scores, stride); break;
    }
}

KVK_TARGET_AVX512_VNNI void kvk_scores_channelwise_vnni(int bits, const int8_t *a, const float *coef, long R, long d, const uint8_t *codes,
                                long rowBytes, long n, float scale, float *scores, long stride) {
    if (d % 64 != 0 || d > KVK_VNNI_MAX_HEAD_DIM) __builtin_trap();
    // The common head dims get their own copies (constant blocks, unrolled).
    if (d == 64) vnni_scores_bits(bits, a, coef, R, 64, codes, rowBytes, n, scale, scores, stride);
    else if (d == 128) vnni_scores_bits(bits, a, coef, R, 128, codes, rowBytes, n, scale, scores, stride);
    else vnni_scores_bits(bits, a, coef, R, d, codes, rowBytes, n, scale, scores, stride);
}

// Stores 16 FP32 values of a 64-channel chunk at c (k-th vector of 16) into the π order of `bits`.
KVK_TARGET_AVX512_VNNI KVK_INLINE void vnni_store_permuted(int bits, long d, long c, const __m512 x[4], float *qs) {
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

KVK_TARGET_AVX512_VNNI void kvk_prepare_channelwise_vnni(int bits, const float *q, long R, long d, const uint16_t *params, int8_t *a, float *coef) {
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
        int8_t *a0 = a + r * 2 * d, *a1 = a0 + d;
        float s0, s1;
        if (!kvk_split_scales(mbits, zt, d, coef + 4 * r, a0, &s0, &s1)) continue;
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

#endif
