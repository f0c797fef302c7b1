// The weighted sum of a page's grouped value rows in the integer domain (AVX-512 VNNI + VBMI).
// Contract: include/CKVKernels.h; Swift twin: PageKernels.accumulateIntegerReference.
#include "internal.h"

#if defined(__x86_64__)

// Byte indices interleaving two 64-byte rows a, b into (a[k], b[k]) pairs for k in [base, base + 32).
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE __m512i pair_bytes_index(int base) {
    uint8_t ix[64];
    for (int k = 0; k < 32; k++) { ix[2 * k] = (uint8_t)(base + k); ix[2 * k + 1] = (uint8_t)(64 + base + k); }
    return _mm512_loadu_si512(ix);
}

// Word indices interleaving two vectors of 32 words p, q into (p[k], q[k]) dword pairs for k in [base, base + 16).
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE __m512i pair_words_index(int base) {
    uint16_t ix[32];
    for (int k = 0; k < 16; k++) { ix[2 * k] = (uint16_t)(base + k); ix[2 * k + 1] = (uint16_t)(32 + base + k); }
    return _mm512_loadu_si512(ix);
}

// The (scale, zero) FP16 pairs of `gs` ≤ 4 groups at p, zero-extended to 16 bytes. Plain loads of
// the exact bytes: a partially masked load was measured 2× slower for a whole decode step here.
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE __m128i load_param_set(const uint8_t *p, long gs) {
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
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE void transpose_quad(const int BITS, long j, long n, const uint8_t *rows, long rowBytes, long c, __m512i V[4][2]) {
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
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE void quad_params(long j, long n, const uint8_t *rows, long rowBytes, long codeBytes, long k, long G,
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

// The codes of a block of up to 64 tokens, transposed for vpdpbusd: per 64-code-byte chunk and
// quad of tokens, four vectors whose dword m holds byte 16x + m of the chunk for the quad's four
// tokens (token-minor), split into low and high nibbles at 4 bits. Missing tokens read as zero.
// Computed once per block and shared by all query rows.
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE void transpose_block(const int BITS, long j0, long n, long quads, const uint8_t *rows, long rowBytes,
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
// tokens, as documented in the header (kvk_accumulate_integer). BITS is 4 or 8.
// With bc = NULL (a single row) the codes, scales and zeros are read from the rows directly.
KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE void acc_int_row_block(const int BITS, long g, const float *w, long j0, long n, long quads,
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

KVK_TARGET_AVX512_VNNI_VBMI KVK_INLINE void acc_int_all(const int BITS, long g, const float *w, long R, long stride, long n, const uint8_t *rows,
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

KVK_TARGET_AVX512_VNNI_VBMI void kvk_accumulate_integer(int bits, long groupSize, const float *w, long R, long stride, long n,
                                           const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out) {
    if (bits == 4) acc_int_all(4, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out);
    else acc_int_all(8, groupSize, w, R, stride, n, rows, rowBytes, codeBytes, d, out);
}

#endif
