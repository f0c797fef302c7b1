// Integer-domain scores of per-channel INT4 key pages on AVX2 (`vpmaddubsw`): the arithmetic of
// the VNNI kernels (scores_vnni.c), bit for bit. Contract: include/CKVKernels.h; Swift twins:
// PageKernels.prepareChannelwiseVNNIReference, PageKernels.scoresChannelwiseVNNIReference.
//
// Each query row is split into two int8 pieces per channel (as kvk_prepare_channelwise_vnni), and
// each 16-byte group of a code row is unpacked once into 32 codes (low nibbles, then high ones)
// for all the rows of a tile. `vpmaddubsw` multiplies u8 codes by s8 pieces and adds pairs into
// int16 lanes exactly: |pair| ≤ 2·15·127 = 3810, and a lane adds one pair per 32 channels, so
// it stays below 2¹⁵ (≤ 8·3810 = 30480) for headDim ≤ 256 = KVK_AVX2_INT_MAX_HEAD_DIM. `vpmaddwd`
// by ones widens to int32, and lane sums of four (token, row) pairs at a time give the exact dots.
#include "internal.h"

#if defined(__x86_64__)

// The 32 codes of the 16 code bytes at p: bytes 0–15 the low nibbles, 16–31 the high ones.
KVK_TARGET_AVX2 KVK_INLINE __m256i int_codes32_avx2(const uint8_t *p) {
    const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

// Lane sums of eight vectors of eight int32 (four pairs: v[2i] piece 0, v[2i + 1] piece 1):
// lane 2i = Σ v[2i], lane 2i + 1 = Σ v[2i + 1]. Integer additions: exact.
KVK_TARGET_AVX2 KVK_INLINE __m256i int_reduce8_avx2(const __m256i v[8]) {
    const __m256i g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}

// The scores of four (token, row) pairs from their dots (lane 2i: D0, 2i + 1: D1 of pair i) and
// per-pair coefficients (s0 = σ0, s1 = σ1, zt in both lanes of the pair): lane 2i holds
// fl(fl(fma(σ0, D0, fma(σ1, D1, zt)))·scale), as the VNNI kernel.
KVK_TARGET_AVX2 KVK_INLINE __m256 int_scores4_avx2(__m256i dots, __m256 s0, __m256 s1, __m256 zt, __m256 scale) {
    const __m256 f = _mm256_cvtepi32_ps(dots);  // exact: |D| ≤ d·15·127 < 2²⁴
    const __m256 inner = _mm256_movehdup_ps(_mm256_fmadd_ps(s1, f, zt));  // lane 2i ← fma(σ1, D1, zt)
    return _mm256_mul_ps(_mm256_fmadd_ps(s0, f, inner), scale);
}

// The dots of RT (1–4) prepared rows with one code row: w[2r], w[2r + 1] get the int32 partial
// sums of piece 0 and piece 1 of row r (lanes to be summed); rows ≥ RT are left alone.
KVK_TARGET_AVX2 KVK_INLINE void int_dots_avx2(int RT, const int8_t *a, long d, const uint8_t *row, __m256i *w) {
    __m256i acc[4][2];
    for (int r = 0; r < RT; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (long u = 0; u < d / 32; u++) {
        const __m256i cv = int_codes32_avx2(row + 16 * u);
        for (int r = 0; r < RT; r++) {
            const int8_t *ar = a + r * 2 * d + 32 * u;
            acc[r][0] = _mm256_add_epi16(acc[r][0], _mm256_maddubs_epi16(cv, _mm256_loadu_si256((const __m256i *)ar)));
            acc[r][1] = _mm256_add_epi16(acc[r][1], _mm256_maddubs_epi16(cv, _mm256_loadu_si256((const __m256i *)(ar + d))));
        }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < RT; r++) {
        w[2 * r] = _mm256_madd_epi16(acc[r][0], ones);
        w[2 * r + 1] = _mm256_madd_epi16(acc[r][1], ones);
    }
}

// A tile of RT (2–4) rows, one token at a time: its four (token, row) pairs are the tile's rows.
KVK_TARGET_AVX2 KVK_INLINE void int_scores_tile_avx2(int RT, const int8_t *a, const float *coef, long d, const uint8_t *codes,
                                                     long rowBytes, long n, float scale, float *scores, long stride) {
    float c0[8], c1[8], cz[8];
    for (int r = 0; r < 4; r++) {
        const int rr = r < RT ? r : 0;
        c0[2 * r] = c0[2 * r + 1] = coef[4 * rr];
        c1[2 * r] = c1[2 * r + 1] = coef[4 * rr + 1];
        cz[2 * r] = cz[2 * r + 1] = coef[4 * rr + 2];
    }
    const __m256 s0 = _mm256_loadu_ps(c0), s1 = _mm256_loadu_ps(c1), zt = _mm256_loadu_ps(cz), sc = _mm256_set1_ps(scale);
    for (long j = 0; j < n; j++) {
        __m256i w[8];
        for (int i = 2 * RT; i < 8; i++) w[i] = _mm256_setzero_si256();
        int_dots_avx2(RT, a, d, codes + j * rowBytes, w);
        float s[8];
        _mm256_storeu_ps(s, int_scores4_avx2(int_reduce8_avx2(w), s0, s1, zt, sc));
        for (int r = 0; r < RT; r++) scores[r * stride + j] = s[2 * r];
    }
}

// One row (a decode step without GQA): four tokens at a time are the four pairs.
KVK_TARGET_AVX2 KVK_INLINE void int_scores_row_avx2(const int8_t *a, const float *coef, long d, const uint8_t *codes, long rowBytes,
                                                    long n, float scale, float *scores) {
    const __m256 s0 = _mm256_set1_ps(coef[0]), s1 = _mm256_set1_ps(coef[1]), zt = _mm256_set1_ps(coef[2]), sc = _mm256_set1_ps(scale);
    for (long j = 0; j < n; j += 4) {
        __m256i w[8];
        for (int t = 0; t < 4; t++) {
            if (j + t < n) int_dots_avx2(1, a, d, codes + (j + t) * rowBytes, w + 2 * t);
            else w[2 * t] = w[2 * t + 1] = _mm256_setzero_si256();
        }
        float s[8];
        _mm256_storeu_ps(s, int_scores4_avx2(int_reduce8_avx2(w), s0, s1, zt, sc));
        for (int t = 0; t < 4 && j + t < n; t++) scores[j + t] = s[2 * t];
    }
}

// Folds the query rows r0 ..< r0 + RT into the page's parameters (scales sc, zeros ze as FP32,
// natural order) and splits them (the arithmetic of kvk_prepare_channelwise_vnni): pieces at a + (r − r0)·2d (π: within each 32-channel unit,
// channel 2k + h at 16h + k, the order of int_codes32_avx2), (σ0, σ1, zt, 0) at coef + 4(r − r0).
KVK_TARGET_AVX2 KVK_INLINE void int_prepare_avx2(const float *q, long RT, long d, const float *sc, const float *ze, int8_t *a, float *coef) {
    float qs[KVK_AVX2_INT_MAX_HEAD_DIM];
    const __m256i absMask = _mm256_set1_epi32(0x7FFFFFFF);
    for (long r = 0; r < RT; r++) {
        const float *qr = q + r * d;
        // zt: lane c mod 16 by fma in channel order (zl: lanes 0–7, zh: 8–15).
        __m256 zl = _mm256_setzero_ps(), zh = _mm256_setzero_ps();
        // max_c |qs_c| as bit patterns: unsigned order is float order on |x|, and above it (∞, NaN).
        __m256i mx = _mm256_setzero_si256();
        for (long c = 0; c < d; c += 32) {
            __m256 x[4];
            for (int k = 0; k < 4; k++) {
                const __m256 s = _mm256_loadu_ps(sc + c + 8 * k), z = _mm256_loadu_ps(ze + c + 8 * k);
                const __m256 qv = _mm256_loadu_ps(qr + c + 8 * k);
                x[k] = _mm256_mul_ps(qv, s);
                if (k % 2 == 0) zl = _mm256_fmadd_ps(qv, z, zl);
                else zh = _mm256_fmadd_ps(qv, z, zh);
                mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(x[k]), absMask));
            }
            // Evens of the unit at c..c+15, then odds (shuffle_ps pairs lanes within halves; the
            // 64-bit permute puts the halves in order).
            for (int h = 0; h < 2; h++) {
                const __m256 ev = _mm256_shuffle_ps(x[2 * h], x[2 * h + 1], _MM_SHUFFLE(2, 0, 2, 0));
                const __m256 od = _mm256_shuffle_ps(x[2 * h], x[2 * h + 1], _MM_SHUFFLE(3, 1, 3, 1));
                _mm256_storeu_ps(qs + c + 8 * h, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0))));
                _mm256_storeu_ps(qs + c + 16 + 8 * h, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0))));
            }
        }
        // zt: fold halves 8, 4, 2, 1 (the order of PageKernels.prepareChannelwiseVNNIReference).
        const __m256 z8 = _mm256_add_ps(zl, zh);
        const __m128 z4 = _mm_add_ps(_mm256_castps256_ps128(z8), _mm256_extractf128_ps(z8, 1));
        const __m128 z2 = _mm_add_ps(z4, _mm_movehl_ps(z4, z4));
        const float zsum = _mm_cvtss_f32(_mm_add_ss(z2, _mm_shuffle_ps(z2, z2, 1)));
        const __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
        const __m128i m2 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(1, 0, 3, 2)));
        const uint32_t mbits = (uint32_t)_mm_cvtsi128_si32(_mm_max_epu32(m2, _mm_shuffle_epi32(m2, _MM_SHUFFLE(2, 3, 0, 1))));
        int8_t *a0 = a + r * 2 * d, *a1 = a0 + d;
        float sg0, sg1;
        if (!kvk_split_scales(mbits, zsum, d, coef + 4 * r, a0, &sg0, &sg1)) continue;
        const __m256 i0 = _mm256_set1_ps(1.0f / sg0), i1 = _mm256_set1_ps(1.0f / sg1), ns0 = _mm256_set1_ps(-sg0);
        // rint(x·inv) by the magic number 1.5·2²³, as kvk_prepare_channelwise_vnni: fl(magic + x·inv)
        // is magic + rint(x·inv) exactly (|x·inv| < 127.5), so its bit pattern minus magic's is the
        // piece (no clamping needed, see PageKernels.prepareChannelwiseVNNIReference).
        const __m256 magic = _mm256_set1_ps(0x1.8p23f);
        const __m256i mb = _mm256_castps_si256(magic), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (long c = 0; c < d; c += 32) {
            __m256i p0[4], p1[4];
            for (int k = 0; k < 4; k++) {
                const __m256 x = _mm256_loadu_ps(qs + c + 8 * k);
                const __m256 y0 = _mm256_fmadd_ps(x, i0, magic);
                const __m256 res = _mm256_fmadd_ps(ns0, _mm256_sub_ps(y0, magic), x);
                const __m256 y1 = _mm256_fmadd_ps(res, i1, magic);
                p0[k] = _mm256_sub_epi32(_mm256_castps_si256(y0), mb);
                p1[k] = _mm256_sub_epi32(_mm256_castps_si256(y1), mb);
            }
            // int32 → int8 (values in ±127: the saturating packs are exact), lanes back in order.
            const __m256i b0 = _mm256_packs_epi16(_mm256_packs_epi32(p0[0], p0[1]), _mm256_packs_epi32(p0[2], p0[3]));
            const __m256i b1 = _mm256_packs_epi16(_mm256_packs_epi32(p1[0], p1[1]), _mm256_packs_epi32(p1[2], p1[3]));
            _mm256_storeu_si256((__m256i *)(a0 + c), _mm256_permutevar8x32_epi32(b0, order));
            _mm256_storeu_si256((__m256i *)(a1 + c), _mm256_permutevar8x32_epi32(b1, order));
        }
    }
}

KVK_TARGET_AVX2 KVK_INLINE void int_scores_all_avx2(const float *q, long R, long d, const uint16_t *params, const uint8_t *codes,
                                                    long rowBytes, long n, float scale, float *scores, long stride) {
    int8_t a[4 * 2 * KVK_AVX2_INT_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float coef[16], sc[KVK_AVX2_INT_MAX_HEAD_DIM], ze[KVK_AVX2_INT_MAX_HEAD_DIM];
    // The page's parameters as FP32 once for every query row (exact conversions).
    for (long c = 0; c < d; c += 8) {
        __m256 s, z;
        load_params8_avx2(params + 2 * c, &s, &z);
        _mm256_storeu_ps(sc + c, s);
        _mm256_storeu_ps(ze + c, z);
    }
    for (long r = 0; r < R; r += 4) {
        const long RT = R - r < 4 ? R - r : 4;
        int_prepare_avx2(q + r * d, RT, d, sc, ze, a, coef);
        float *out = scores + r * stride;
        switch (RT) {
        case 4: int_scores_tile_avx2(4, a, coef, d, codes, rowBytes, n, scale, out, stride); break;
        case 3: int_scores_tile_avx2(3, a, coef, d, codes, rowBytes, n, scale, out, stride); break;
        case 2: int_scores_tile_avx2(2, a, coef, d, codes, rowBytes, n, scale, out, stride); break;
        default: int_scores_row_avx2(a, coef, d, codes, rowBytes, n, scale, out); break;
        }
    }
}

KVK_TARGET_AVX2 void kvk_scores_channelwise_int_avx2(const float *q, long R, long d, const uint16_t *params, const uint8_t *codes,
                                                     long rowBytes, long n, float scale, float *scores, long stride) {
    if (d % 32 != 0 || d > KVK_AVX2_INT_MAX_HEAD_DIM) __builtin_trap();
    // The common head dims get their own copies (constant unit counts, unrolled).
    if (d == 128) int_scores_all_avx2(q, R, 128, params, codes, rowBytes, n, scale, scores, stride);
    else if (d == 64) int_scores_all_avx2(q, R, 64, params, codes, rowBytes, n, scale, scores, stride);
    else int_scores_all_avx2(q, R, d, params, codes, rowBytes, n, scale, scores, stride);
}

#endif
