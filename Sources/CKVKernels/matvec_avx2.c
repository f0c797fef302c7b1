// Weight kernels of the model runner on the quantised GGUF blocks, for x86-64 CPUs with AVX2, FMA
// and F16C (`KVK_CPU_AVX2`). The Swift twins (KVModel's `WeightKernels`) define the arithmetic and
// the tests hold these to them bit for bit.
//
// Every kernel computes with the *dequantised* weight w_k: the FP32 value ggml's
// `dequantize_row_*` gives (see `kvk_weights_dequantize_avx2` in the header), so the weight a kernel
// multiplies is the one `GGUFFile.floats` returns. A dot product w·x is the 8-lane sum
//   a_l = fma(w_k, x_k, a_l) for k = 0, 1, … in order, lane l = k mod 8 (k < K & ~7),
//   s = ((a_0 + a_4) + (a_2 + a_6)) + ((a_1 + a_5) + (a_3 + a_7)),
//   then s = fma(w_k, x_k, s) for the tail k ≥ K & ~7 (F32 and F16 rows only),
// so the decode kernel (one vector), the prefill kernel (dequantised panels × many vectors) and any
// split of the rows over threads give the same bits.
#include "internal.h"

#if defined(__x86_64__)

#define KVK_TARGET_WEIGHTS __attribute__((target("avx2,fma,f16c")))
#define KVK_W_INLINE KVK_TARGET_WEIGHTS static inline __attribute__((always_inline))

// MARK: scalar helpers

KVK_W_INLINE uint16_t load_u16(const uint8_t *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }
KVK_W_INLINE uint32_t load_u32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
KVK_W_INLINE float half_at(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }

// The 6-bit scale and minimum of sub-block j (0..<8) of a Q4_K / Q5_K super-block's 12 scale bytes
// (ggml's get_scale_min_k4): j < 4 in the low 6 bits of bytes j and j + 4; j ≥ 4 split over the low
// or high nibble of byte j + 4 and the top 2 bits of bytes j − 4 (scale) and j (minimum).
KVK_W_INLINE void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

KVK_W_INLINE float hsum8(__m256 a) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // a_l + a_{l+4}
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                // (0+4)+(2+6), (1+5)+(3+7)
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// MARK: unpacking 32 weights

// Four vectors of int32 from 32 bytes held as two 16-byte halves (bytes 0..15 in lo, 16..31 in hi).
KVK_W_INLINE void widen_u8(__m128i lo, __m128i hi, __m256i q[4]) {
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

// The 4-bit codes of 16 bytes: elements 0..15 the low nibbles, 16..31 the high ones.
KVK_W_INLINE void nibbles16(const uint8_t *qs, __m256i q[4]) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    widen_u8(_mm_and_si128(b, m4), _mm_and_si128(_mm_srli_epi16(b, 4), m4), q);
}

// The nibbles (low if shift = 0, high if 4) of 32 bytes, element l from byte l.
KVK_W_INLINE void nibbles32(const uint8_t *qs, int shift, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i b = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)qs), _mm_cvtsi32_si128(shift)), m4);
    widen_u8(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1), q);
}

// q_l |= ((bits >> l) & 1) << 4 for the 32 elements l of a Q5_0 / Q5_1 block.
KVK_W_INLINE void fifth_bits(uint32_t bits, __m256i q[4]) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
    const __m256i b = _mm256_set1_epi32((int)bits);
    for (int i = 0; i < 4; i++) {
        __m256i h = _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_add_epi32(lanes, _mm256_set1_epi32(8 * i))), one);
        q[i] = _mm256_or_si256(q[i], _mm256_slli_epi32(h, 4));
    }
}

// w = fl(a·q) (+ c, rounded again, when affine): the dequantised weights of one 32-element piece.
KVK_W_INLINE void scale4(const __m256i q[4], float a, __m256 v[4]) {
    const __m256 av = _mm256_set1_ps(a);
    for (int i = 0; i < 4; i++) v[i] = _mm256_mul_ps(av, _mm256_cvtepi32_ps(q[i]));
}
KVK_W_INLINE void scale_add4(const __m256i q[4], float a, float c, __m256 v[4]) {
    const __m256 av = _mm256_set1_ps(a), cv = _mm256_set1_ps(c);
    for (int i = 0; i < 4; i++) v[i] = _mm256_add_ps(_mm256_mul_ps(av, _mm256_cvtepi32_ps(q[i])), cv);
}

// Weights 32c ..< 32c + 32 of a row of `type` blocks starting at `row`, dequantised (block types only).
KVK_W_INLINE void unpack32(const int type, const uint8_t *row, long c, __m256 v[4]) {
    __m256i q[4];
    switch (type) {
    case KVK_GGML_Q8_0: {
        const uint8_t *b = row + 34 * c;
        const __m256 d = _mm256_set1_ps(half_at(b));
        for (int i = 0; i < 4; i++)
            v[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i)))));
        return;
    }
    case KVK_GGML_Q4_0: {
        const uint8_t *b = row + 18 * c;
        nibbles16(b + 2, q);
        for (int i = 0; i < 4; i++) q[i] = _mm256_sub_epi32(q[i], _mm256_set1_epi32(8));
        scale4(q, half_at(b), v);
        return;
    }
    case KVK_GGML_Q4_1: {
        const uint8_t *b = row + 20 * c;
        nibbles16(b + 4, q);
        scale_add4(q, half_at(b), half_at(b + 2), v);
        return;
    }
    case KVK_GGML_Q5_0: {
        const uint8_t *b = row + 22 * c;
        nibbles16(b + 6, q);
        fifth_bits(load_u32(b + 2), q);
        for (int i = 0; i < 4; i++) q[i] = _mm256_sub_epi32(q[i], _mm256_set1_epi32(16));
        scale4(q, half_at(b), v);
        return;
    }
    case KVK_GGML_Q5_1: {
        const uint8_t *b = row + 24 * c;
        nibbles16(b + 8, q);
        fifth_bits(load_u32(b + 4), q);
        scale_add4(q, half_at(b), half_at(b + 2), v);
        return;
    }
    case KVK_GGML_Q4_K:
    case KVK_GGML_Q5_K: {
        // Super-block of 256: d, dmin, 12 scale bytes, (Q5_K: 32 bytes of fifth bits), 128 code bytes;
        // sub-block s takes the low (s even) or high nibbles of code bytes 32·(s/2) ..< +32.
        const int k5 = type == KVK_GGML_Q5_K;
        const uint8_t *b = row + (k5 ? 176 : 144) * (c >> 3);
        const int s = (int)(c & 7);
        int sc, m;
        scale_min_k4(s, b + 4, &sc, &m);
        const float d1 = half_at(b) * (float)sc, m1 = half_at(b + 2) * (float)m;
        nibbles32(b + (k5 ? 48 : 16) + 32 * (s >> 1), 4 * (s & 1), q);
        if (k5) {
            // Bit s of fifth-bit byte l is element l's bit 4.
            __m256i h = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 16)), _mm_cvtsi32_si128(s)),
                                         _mm256_set1_epi8(1));
            __m256i hq[4];
            widen_u8(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1), hq);
            for (int i = 0; i < 4; i++) q[i] = _mm256_or_si256(q[i], _mm256_slli_epi32(hq[i], 4));
        }
        scale_add4(q, d1, -m1, v);
        return;
    }
    case KVK_GGML_Q6_K: {
        // Super-block of 256: 128 low-nibble bytes, 64 high-pair bytes, 16 int8 scales, d. Piece c
        // (0..<8) is quarter c mod 4 of half c / 4: low (quarters 0, 1) or high (2, 3) nibbles of
        // bytes 64·half + 32·(quarter mod 2) ..< +32, bits 2·quarter of the half's 32 high-pair bytes.
        const uint8_t *b = row + 210 * (c >> 3);
        const int h = (int)((c >> 2) & 1), qq = (int)(c & 3);
        const float d = half_at(b + 208);
        const int8_t *scales = (const int8_t *)(b + 192) + 8 * h + 2 * qq;
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
        __m256i lo = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (qq & 1))),
                                                       _mm_cvtsi32_si128(4 * (qq >> 1))), m4);
        __m256i hi = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)),
                                                       _mm_cvtsi32_si128(2 * qq)), m2);
        __m256i x = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
        __m128i x0 = _mm256_castsi256_si128(x), x1 = _mm256_extracti128_si256(x, 1);
        q[0] = _mm256_cvtepi8_epi32(x0);
        q[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(x0, 8));
        q[2] = _mm256_cvtepi8_epi32(x1);
        q[3] = _mm256_cvtepi8_epi32(_mm_srli_si128(x1, 8));
        const __m256 a0 = _mm256_set1_ps(d * (float)scales[0]), a1 = _mm256_set1_ps(d * (float)scales[1]);
        v[0] = _mm256_mul_ps(a0, _mm256_cvtepi32_ps(q[0]));
        v[1] = _mm256_mul_ps(a0, _mm256_cvtepi32_ps(q[1]));
        v[2] = _mm256_mul_ps(a1, _mm256_cvtepi32_ps(q[2]));
        v[3] = _mm256_mul_ps(a1, _mm256_cvtepi32_ps(q[3]));
        return;
    }
    }
}

// Eight weights 8i ..< 8i + 8 of an F32 or F16 row.
KVK_W_INLINE __m256 load8(const int type, const uint8_t *row, long i) {
    return type == KVK_GGML_F32 ? _mm256_loadu_ps((const float *)row + 8 * i)
                                : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + 8 * i)));
}
KVK_W_INLINE float load1(const int type, const uint8_t *row, long k) {
    return type == KVK_GGML_F32 ? ((const float *)row)[k] : _cvtsh_ss(((const uint16_t *)row)[k]);
}

// MARK: dequantisation

KVK_W_INLINE void dequantize_rows(const int type, const uint8_t *w, long rowBytes, long rows, long columns, float *out, long outStride) {
    for (long r = 0; r < rows; r++) {
        const uint8_t *row = w + r * rowBytes;
        float *o = out + r * outStride;
        if (type == KVK_GGML_F32 || type == KVK_GGML_F16) {
            long k = 0;
            for (; k + 8 <= columns; k += 8) _mm256_storeu_ps(o + k, load8(type, row, k / 8));
            for (; k < columns; k++) o[k] = load1(type, row, k);
            continue;
        }
        for (long c = 0; c < columns / 32; c++) {
            __m256 v[4];
            unpack32(type, row, c, v);
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(o + 32 * c + 8 * i, v[i]);
        }
    }
}

// MARK: matrix × vector

// Rows processed together by the decode kernel: independent FMA chains to cover the FMA latency.
#define KVK_MATVEC_ROWS 4

KVK_W_INLINE void matvec_rows(const int type, const uint8_t *w, long rowBytes, long rows, long columns, const float *x, float *y) {
    const int dense = type == KVK_GGML_F32 || type == KVK_GGML_F16;
    const long k8 = columns & ~7L;
    long o = 0;
    for (; o + KVK_MATVEC_ROWS <= rows; o += KVK_MATVEC_ROWS) {
        __m256 acc[KVK_MATVEC_ROWS];
        for (int r = 0; r < KVK_MATVEC_ROWS; r++) acc[r] = _mm256_setzero_ps();
        if (dense) {
            for (long i = 0; i < k8 / 8; i++) {
                const __m256 xv = _mm256_loadu_ps(x + 8 * i);
                for (int r = 0; r < KVK_MATVEC_ROWS; r++)
                    acc[r] = _mm256_fmadd_ps(load8(type, w + (o + r) * rowBytes, i), xv, acc[r]);
            }
        } else {
            for (long c = 0; c < columns / 32; c++) {
                for (int r = 0; r < KVK_MATVEC_ROWS; r++) {
                    __m256 v[4];
                    unpack32(type, w + (o + r) * rowBytes, c, v);
                    for (int i = 0; i < 4; i++) acc[r] = _mm256_fmadd_ps(v[i], _mm256_loadu_ps(x + 32 * c + 8 * i), acc[r]);
                }
            }
        }
        for (int r = 0; r < KVK_MATVEC_ROWS; r++) {
            float s = hsum8(acc[r]);
            for (long k = k8; k < columns; k++) s = fmaf(load1(type, w + (o + r) * rowBytes, k), x[k], s);
            y[o + r] = s;
        }
    }
    for (; o < rows; o++) {
        const uint8_t *row = w + o * rowBytes;
        __m256 acc = _mm256_setzero_ps();
        if (dense) {
            for (long i = 0; i < k8 / 8; i++) acc = _mm256_fmadd_ps(load8(type, row, i), _mm256_loadu_ps(x + 8 * i), acc);
        } else {
            for (long c = 0; c < columns / 32; c++) {
                __m256 v[4];
                unpack32(type, row, c, v);
                for (int i = 0; i < 4; i++) acc = _mm256_fmadd_ps(v[i], _mm256_loadu_ps(x + 32 * c + 8 * i), acc);
            }
        }
        float s = hsum8(acc);
        for (long k = k8; k < columns; k++) s = fmaf(load1(type, row, k), x[k], s);
        y[o] = s;
    }
}

// MARK: dispatch on the type (each case an inlined copy specialised to it)

#define KVK_FOR_EACH_TYPE(CALL)                                                                  \
    switch (type) {                                                                              \
    case KVK_GGML_F32: CALL(KVK_GGML_F32); break;                                                \
    case KVK_GGML_F16: CALL(KVK_GGML_F16); break;                                                \
    case KVK_GGML_Q4_0: CALL(KVK_GGML_Q4_0); break;                                              \
    case KVK_GGML_Q4_1: CALL(KVK_GGML_Q4_1); break;                                              \
    case KVK_GGML_Q5_0: CALL(KVK_GGML_Q5_0); break;                                              \
    case KVK_GGML_Q5_1: CALL(KVK_GGML_Q5_1); break;                                              \
    case KVK_GGML_Q8_0: CALL(KVK_GGML_Q8_0); break;                                              \
    case KVK_GGML_Q4_K: CALL(KVK_GGML_Q4_K); break;                                              \
    case KVK_GGML_Q5_K: CALL(KVK_GGML_Q5_K); break;                                              \
    case KVK_GGML_Q6_K: CALL(KVK_GGML_Q6_K); break;                                              \
    default: __builtin_trap();                                                                   \
    }

KVK_TARGET_WEIGHTS void kvk_weights_dequantize_avx2(int type, const void *w, long rowBytes, long rows, long columns,
                                                     float *out, long outStride) {
#define KVK_DEQUANTIZE(T) dequantize_rows(T, (const uint8_t *)w, rowBytes, rows, columns, out, outStride)
    KVK_FOR_EACH_TYPE(KVK_DEQUANTIZE)
#undef KVK_DEQUANTIZE
}

KVK_TARGET_WEIGHTS void kvk_weights_matvec_avx2(int type, const void *w, long rowBytes, long rows, long columns,
                                                 const float *x, float *y) {
#define KVK_MATVEC(T) matvec_rows(T, (const uint8_t *)w, rowBytes, rows, columns, x, y)
    KVK_FOR_EACH_TYPE(KVK_MATVEC)
#undef KVK_MATVEC
}

// MARK: matrix × 16-bit activations (decode)

// Codes of one 32-element piece as bytes, and its scales: `signed_codes` says whether the bytes are
// signed (q minus the type's offset) or unsigned (the affine types, whose offset is `c`).
typedef struct {
    __m256i q;   // 32 codes, element j in byte j
    float a0;    // the weight scale of elements 0..<16
    float a1;    // … of elements 16..<32 (differs from a0 only in Q6_K)
    float c;     // the affine offset (0 for the symmetric types)
} kvk_codes32;

// Bit j of the 32-bit word at p as 0x10 in byte j (the fifth bit of Q5_0 / Q5_1 codes).
KVK_W_INLINE __m256i fifth_bit_bytes(const uint8_t *p) {
    const __m256i shuffle = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                             2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)load_u32(p)), shuffle);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit), _mm256_set1_epi8(0x10));
}

// The 4-bit codes of 16 bytes as 32 bytes: elements 0..15 the low nibbles, 16..31 the high ones.
KVK_W_INLINE __m256i nibble_bytes16(const uint8_t *qs) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

// The K types' piece s (0..<8) of the 256-element super-block at b: `codes32` of piece 8·i + s of a
// row whose super-block i is at b. With s a constant (the unrolled loop of `matvec_q16_rows`) the
// scale unpacking and shifts fold to immediates and the super-block's d and dmin load once.
KVK_W_INLINE kvk_codes32 codes32_super(const int type, const uint8_t *b, const int s) {
    kvk_codes32 r;
    r.c = 0;
    switch (type) {
    case KVK_GGML_Q4_K:
    case KVK_GGML_Q5_K: {
        const int k5 = type == KVK_GGML_Q5_K;
        int sc, m;
        scale_min_k4(s, b + 4, &sc, &m);
        r.q = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + (k5 ? 48 : 16) + 32 * (s >> 1))),
                                                _mm_cvtsi32_si128(4 * (s & 1))), _mm256_set1_epi8(0x0F));
        if (k5) {
            __m256i h = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 16)), _mm_cvtsi32_si128(s)),
                                         _mm256_set1_epi8(1));
            r.q = _mm256_or_si256(r.q, _mm256_slli_epi16(h, 4));  // h ≤ 1 per byte: no carry across bytes
        }
        r.a0 = r.a1 = half_at(b) * (float)sc;
        r.c = -(half_at(b + 2) * (float)m);
        return r;
    }
    case KVK_GGML_Q6_K: {
        const int h = (s >> 2) & 1, qq = s & 3;
        const float d = half_at(b + 208);
        const int8_t *scales = (const int8_t *)(b + 192) + 8 * h + 2 * qq;
        __m256i lo = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (qq & 1))),
                                                       _mm_cvtsi32_si128(4 * (qq >> 1))), _mm256_set1_epi8(0x0F));
        __m256i hi = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)),
                                                       _mm_cvtsi32_si128(2 * qq)), _mm256_set1_epi8(3));
        r.q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
        r.a0 = d * (float)scales[0];
        r.a1 = d * (float)scales[1];
        return r;
    }
    }
    __builtin_unreachable();
}

KVK_W_INLINE kvk_codes32 codes32(const int type, const uint8_t *row, long c) {
    kvk_codes32 r;
    r.c = 0;
    switch (type) {
    case KVK_GGML_Q8_0: {
        const uint8_t *b = row + 34 * c;
        r.q = _mm256_loadu_si256((const __m256i *)(b + 2));
        r.a0 = r.a1 = half_at(b);
        return r;
    }
    case KVK_GGML_Q4_0: {
        const uint8_t *b = row + 18 * c;
        r.q = _mm256_sub_epi8(nibble_bytes16(b + 2), _mm256_set1_epi8(8));
        r.a0 = r.a1 = half_at(b);
        return r;
    }
    case KVK_GGML_Q4_1: {
        const uint8_t *b = row + 20 * c;
        r.q = nibble_bytes16(b + 4);
        r.a0 = r.a1 = half_at(b);
        r.c = half_at(b + 2);
        return r;
    }
    case KVK_GGML_Q5_0: {
        const uint8_t *b = row + 22 * c;
        r.q = _mm256_sub_epi8(_mm256_or_si256(nibble_bytes16(b + 6), fifth_bit_bytes(b + 2)), _mm256_set1_epi8(16));
        r.a0 = r.a1 = half_at(b);
        return r;
    }
    case KVK_GGML_Q5_1: {
        const uint8_t *b = row + 24 * c;
        r.q = _mm256_or_si256(nibble_bytes16(b + 8), fifth_bit_bytes(b + 4));
        r.a0 = r.a1 = half_at(b);
        r.c = half_at(b + 2);
        return r;
    }
    case KVK_GGML_Q4_K: return codes32_super(type, row + 144 * (c >> 3), (int)(c & 7));
    case KVK_GGML_Q5_K: return codes32_super(type, row + 176 * (c >> 3), (int)(c & 7));
    case KVK_GGML_Q6_K: return codes32_super(type, row + 210 * (c >> 3), (int)(c & 7));
    }
    __builtin_unreachable();
}

KVK_W_INLINE int signed_codes(const int type) {
    return type == KVK_GGML_Q8_0 || type == KVK_GGML_Q4_0 || type == KVK_GGML_Q5_0 || type == KVK_GGML_Q6_K;
}

// The int32 lanes of one half (16 elements) of a piece: lane l = q_2l·x_2l + q_2l+1·x_2l+1 (exact).
KVK_W_INLINE __m256i half_dots(const int type, __m128i q, const int16_t *x) {
    __m256i w = signed_codes(type) ? _mm256_cvtepi8_epi16(q) : _mm256_cvtepu8_epi16(q);
    return _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)x));
}

// acc ← the piece's terms: one fma of the two halves' exact sum (|Σ of 4 products| ≤ 4·128·32767
// < 2²⁴, exact in FP32), or, for Q6_K (two scales), one fma per half, the low half first.
KVK_W_INLINE __m256 piece_terms(const int type, kvk_codes32 k, const int16_t *x, float dx, __m256 acc) {
    __m256i lo = half_dots(type, _mm256_castsi256_si128(k.q), x), hi = half_dots(type, _mm256_extracti128_si256(k.q, 1), x + 16);
    if (type == KVK_GGML_Q6_K) {
        acc = _mm256_fmadd_ps(_mm256_set1_ps(k.a0 * dx), _mm256_cvtepi32_ps(lo), acc);
        return _mm256_fmadd_ps(_mm256_set1_ps(k.a1 * dx), _mm256_cvtepi32_ps(hi), acc);
    }
    return _mm256_fmadd_ps(_mm256_set1_ps(k.a0 * dx), _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi)), acc);
}

// One row at a time: the weights stream through memory in order (rows interleaved as in the FP32
// kernel make one stream per row and run at half the bandwidth), and one fma per piece keeps the
// accumulator's chain short enough.
KVK_W_INLINE void matvec_q16_rows(const int type, const uint8_t *w, long rowBytes, long rows, long columns,
                                  const int16_t *xq, const float *dx, const float *sx, float *y) {
    const long blocks = columns / 32;
    const int affine = !signed_codes(type);
    for (long o = 0; o < rows; o++) {
        const uint8_t *row = w + o * rowBytes;
        __m256 acc = _mm256_setzero_ps();
        float off = 0;
        if (type == KVK_GGML_Q4_K || type == KVK_GGML_Q5_K || type == KVK_GGML_Q6_K) {
            // The same pieces in the same order, a super-block (8 pieces) at a time.
            const long superBytes = type == KVK_GGML_Q4_K ? 144 : type == KVK_GGML_Q5_K ? 176 : 210;
            for (long c0 = 0; c0 < blocks; c0 += 8) {
                const uint8_t *b = row + superBytes * (c0 >> 3);
#pragma clang loop unroll(full)
                for (int s = 0; s < 8; s++) {
                    kvk_codes32 k = codes32_super(type, b, s);
                    acc = piece_terms(type, k, xq + 32 * (c0 + s), dx[c0 + s], acc);
                    if (affine) off = fmaf(k.c, sx[c0 + s], off);
                }
            }
        } else {
            for (long c = 0; c < blocks; c++) {
                kvk_codes32 k = codes32(type, row, c);
                acc = piece_terms(type, k, xq + 32 * c, dx[c], acc);
                if (affine) off = fmaf(k.c, sx[c], off);
            }
        }
        y[o] = hsum8(acc) + off;
    }
}

KVK_TARGET_WEIGHTS void kvk_weights_matvec_q16_avx2(int type, const void *w, long rowBytes, long rows, long columns,
                                                     const int16_t *xq, const float *dx, const float *sx, float *y) {
#define KVK_MATVEC_Q16(T) matvec_q16_rows(T, (const uint8_t *)w, rowBytes, rows, columns, xq, dx, sx, y)
    switch (type) {
    case KVK_GGML_Q4_0: KVK_MATVEC_Q16(KVK_GGML_Q4_0); break;
    case KVK_GGML_Q4_1: KVK_MATVEC_Q16(KVK_GGML_Q4_1); break;
    case KVK_GGML_Q5_0: KVK_MATVEC_Q16(KVK_GGML_Q5_0); break;
    case KVK_GGML_Q5_1: KVK_MATVEC_Q16(KVK_GGML_Q5_1); break;
    case KVK_GGML_Q8_0: KVK_MATVEC_Q16(KVK_GGML_Q8_0); break;
    case KVK_GGML_Q4_K: KVK_MATVEC_Q16(KVK_GGML_Q4_K); break;
    case KVK_GGML_Q5_K: KVK_MATVEC_Q16(KVK_GGML_Q5_K); break;
    case KVK_GGML_Q6_K: KVK_MATVEC_Q16(KVK_GGML_Q6_K); break;
    default: __builtin_trap();
    }
#undef KVK_MATVEC_Q16
}

// MARK: FP32 matrix × many vectors (prefill, on dequantised panels)

// A tile of R rows × T vectors: R·T accumulators over the 8-lane k loop, then the sums and tails.
// 3 × 4 keeps the 12 accumulators and 3 weight vectors in the 16 registers (4 × 3 spills).
#define KVK_TILE(R, T)                                                                                        \
    KVK_W_INLINE void tile_##R##x##T(const float *w, long wStride, long columns, const float *x, long xStride, \
                                     float *y, long yStride) {                                                \
        const long k8 = columns & ~7L;                                                                        \
        __m256 acc[R][T];                                                                                     \
        for (int r = 0; r < R; r++)                                                                           \
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();                                      \
        for (long k = 0; k < k8; k += 8) {                                                                    \
            __m256 wv[R];                                                                                     \
            for (int r = 0; r < R; r++) wv[r] = _mm256_loadu_ps(w + r * wStride + k);                         \
            for (int t = 0; t < T; t++) {                                                                     \
                const __m256 xv = _mm256_loadu_ps(x + t * xStride + k);                                       \
                for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);                \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < R; r++)                                                                           \
            for (int t = 0; t < T; t++) {                                                                     \
                float s = hsum8(acc[r][t]);                                                                   \
                for (long k = k8; k < columns; k++) s = fmaf(w[r * wStride + k], x[t * xStride + k], s);      \
                y[t * yStride + r] = s;                                                                       \
            }                                                                                                 \
    }
KVK_TILE(3, 4)
KVK_TILE(1, 4)
KVK_TILE(3, 1)
KVK_TILE(1, 1)
#undef KVK_TILE

KVK_TARGET_WEIGHTS void kvk_matmul_f32_avx2(const float *w, long wStride, long rows, long columns, const float *x, long xStride,
                                             long count, float *y, long yStride) {
    long t = 0;
    for (; t + 4 <= count; t += 4) {
        long o = 0;
        for (; o + 3 <= rows; o += 3) tile_3x4(w + o * wStride, wStride, columns, x + t * xStride, xStride, y + t * yStride + o, yStride);
        for (; o < rows; o++) tile_1x4(w + o * wStride, wStride, columns, x + t * xStride, xStride, y + t * yStride + o, yStride);
    }
    for (; t < count; t++) {
        long o = 0;
        for (; o + 3 <= rows; o += 3) tile_3x1(w + o * wStride, wStride, columns, x + t * xStride, xStride, y + t * yStride + o, yStride);
        for (; o < rows; o++) tile_1x1(w + o * wStride, wStride, columns, x + t * xStride, xStride, y + t * yStride + o, yStride);
    }
}

// MARK: matrix × many 16-bit-activation vectors (prefill, on packed integer panels)

// The panel layout (`kvk_weights_pack_q16_avx2`): rows in groups of 16; per group and piece b
// (32 columns), `codes` holds 16 steps s of 16 rows × 2 int16, element k = 2s + e of row r at
// [b][s][r][e] (512 int16), and `params` 48 floats: a0[16], a1[16], c[16] (row r's scale of the
// piece's first and second half, its affine offset). So one 512-bit load is the pair (2s, 2s+1) of
// 16 rows, and a 256-bit load the pair of 8 rows.
#define KVK_Q16_GROUP 16

KVK_TARGET_WEIGHTS void kvk_weights_pack_q16_avx2(int type, const void *w, long rowBytes, long rows, long columns,
                                                   int16_t *codes, float *params) {
    const long pieces = columns / 32;
    const long groups = (rows + KVK_Q16_GROUP - 1) / KVK_Q16_GROUP;
    const int affine = !signed_codes(type);
    for (long g = 0; g < groups; g++) {
        for (long r = 0; r < KVK_Q16_GROUP; r++) {
            const long o = g * KVK_Q16_GROUP + r;
            for (long b = 0; b < pieces; b++) {
                int16_t *dst = codes + ((g * pieces + b) * 16 * KVK_Q16_GROUP + r) * 2;
                float *pr = params + (g * pieces + b) * 3 * KVK_Q16_GROUP;
                if (o >= rows) {
                    for (int s = 0; s < 16; s++) { dst[s * 2 * KVK_Q16_GROUP] = 0; dst[s * 2 * KVK_Q16_GROUP + 1] = 0; }
                    pr[r] = 0; pr[KVK_Q16_GROUP + r] = 0; pr[2 * KVK_Q16_GROUP + r] = 0;
                    continue;
                }
                kvk_codes32 k = codes32(type, (const uint8_t *)w + o * rowBytes, b);
                __m128i lo = _mm256_castsi256_si128(k.q), hi = _mm256_extracti128_si256(k.q, 1);
                __m256i w0 = affine ? _mm256_cvtepu8_epi16(lo) : _mm256_cvtepi8_epi16(lo);
                __m256i w1 = affine ? _mm256_cvtepu8_epi16(hi) : _mm256_cvtepi8_epi16(hi);
                int32_t pairs[16];
                _mm256_storeu_si256((__m256i *)pairs, w0);
                _mm256_storeu_si256((__m256i *)(pairs + 8), w1);
                for (int s = 0; s < 16; s++) __builtin_memcpy(dst + s * 2 * KVK_Q16_GROUP, pairs + s, 4);
                pr[r] = k.a0;
                pr[KVK_Q16_GROUP + r] = k.a1;
                pr[2 * KVK_Q16_GROUP + r] = k.c;
            }
        }
    }
}

// Per token block b of 32: m = max |x|, sx = Σ x (lanes: ((v0 + v1) + v2) + v3, then hsum8), and
// if m or sx is not finite dx = NaN, codes 0; if m < 2⁻⁹⁶ dx = 0, codes 0; else dx = m/32767,
// codes rne(x·fl(32767/m)). `ActivationBlocks.init` is the twin.
KVK_TARGET_WEIGHTS void kvk_quantize_q16_avx2(const float *x, long count, long columns, int16_t *xq, float *dx, float *sx) {
    const long pieces = columns / 32;
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (long t = 0; t < count; t++) {
        for (long b = 0; b < pieces; b++) {
            const float *p = x + t * columns + 32 * b;
            int16_t *q = xq + t * columns + 32 * b;
            __m256 v[4];
            for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(p + 8 * i);
            const __m256 lanes = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), v[2]), v[3]);
            const __m256 mv = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absMask), _mm256_and_ps(v[1], absMask)),
                                            _mm256_max_ps(_mm256_and_ps(v[2], absMask), _mm256_and_ps(v[3], absMask)));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            const float sum = hsum8(lanes);
            sx[t * pieces + b] = sum;
            const __m256i zero = _mm256_setzero_si256();
            if (!__builtin_isfinite(m) || !__builtin_isfinite(sum)) {
                dx[t * pieces + b] = __builtin_nanf("");
                _mm256_storeu_si256((__m256i *)q, zero); _mm256_storeu_si256((__m256i *)(q + 16), zero);
                continue;
            }
            if (!(m >= 0x1p-96f)) {
                dx[t * pieces + b] = 0;
                _mm256_storeu_si256((__m256i *)q, zero); _mm256_storeu_si256((__m256i *)(q + 16), zero);
                continue;
            }
            dx[t * pieces + b] = m / 32767.0f;
            const __m256 inverse = _mm256_set1_ps(32767.0f / m);
            __m256i c[4];
            for (int i = 0; i < 4; i++) c[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));
            // packs interleaves the 128-bit halves: (0..3, 8..11, 4..7, 12..15) → permute back.
            _mm256_storeu_si256((__m256i *)q, _mm256_permute4x64_epi64(_mm256_packs_epi32(c[0], c[1]), 0xD8));
            _mm256_storeu_si256((__m256i *)(q + 16), _mm256_permute4x64_epi64(_mm256_packs_epi32(c[2], c[3]), 0xD8));
        }
    }
}

// AVX2: 8 rows (half h of a group) × T tokens. Per piece: I = Σ_s madd(codes pair s, x pair s) over
// 16 steps (8 per half for Q6_K), acc = fma(cvt(I), a·dx, acc); then off = fma(c, sx, off) over the
// pieces, y = acc + off.
#define KVK_Q16_TILE_AVX2(T)                                                                                     \
    KVK_W_INLINE void q16_tile_avx2_##T(const int halves, const int affine, long pieces, const int16_t *codes,      \
                                        const float *params, const int16_t *xq, long columns, const float *dx,      \
                                        const float *sx, float *y, long yStride, long valid) {                      \
        __m256 acc[T], off[T];                                                                                  \
        for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); off[t] = _mm256_setzero_ps(); }            \
        for (long b = 0; b < pieces; b++) {                                                                     \
            const int16_t *cb = codes + b * 16 * 2 * KVK_Q16_GROUP;                                              \
            const float *pb = params + b * 3 * KVK_Q16_GROUP;                                                    \
            for (int h = 0; h < 2; h++) {                                                                       \
                if (h == 1 && !halves) break;                                                                   \
                const int s0 = halves ? 8 * h : 0, s1 = halves ? s0 + 8 : 16;                                   \
                __m256i I[T];                                                                                   \
                for (int t = 0; t < T; t++) I[t] = _mm256_setzero_si256();                                      \
                for (int s = s0; s < s1; s++) {                                                                 \
                    const __m256i wv = _mm256_loadu_si256((const __m256i *)(cb + s * 2 * KVK_Q16_GROUP));       \
                    for (int t = 0; t < T; t++) {                                                               \
                        int32_t pair; __builtin_memcpy(&pair, xq + t * columns + 32 * b + 2 * s, 4);            \
                        I[t] = _mm256_add_epi32(I[t], _mm256_madd_epi16(wv, _mm256_set1_epi32(pair)));          \
                    }                                                                                           \
                }                                                                                               \
                const __m256 a = _mm256_loadu_ps(pb + h * KVK_Q16_GROUP);                                       \
                for (int t = 0; t < T; t++)                                                                     \
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I[t]),                                          \
                                             _mm256_mul_ps(a, _mm256_set1_ps(dx[t * pieces + b])), acc[t]);     \
            }                                                                                                   \
        }                                                                                                       \
        if (affine)                                                                                             \
            for (long b = 0; b < pieces; b++) {                                                                 \
                const __m256 c = _mm256_loadu_ps(params + b * 3 * KVK_Q16_GROUP + 2 * KVK_Q16_GROUP);           \
                for (int t = 0; t < T; t++) off[t] = _mm256_fmadd_ps(c, _mm256_set1_ps(sx[t * pieces + b]), off[t]); \
            }                                                                                                   \
        for (int t = 0; t < T; t++) {                                                                           \
            float out[8];                                                                                       \
            _mm256_storeu_ps(out, _mm256_add_ps(acc[t], off[t]));                                               \
            for (long r = 0; r < valid; r++) y[t * yStride + r] = out[r];                                       \
        }                                                                                                       \
    }
KVK_Q16_TILE_AVX2(4)
KVK_Q16_TILE_AVX2(1)
#undef KVK_Q16_TILE_AVX2

// The products of a packed panel of `rows` rows with `count` quantised tokens:
// y[t·yStride + r] for r < rows, t < count.
KVK_TARGET_WEIGHTS void kvk_weights_matmul_q16_avx2(int type, long rows, long columns, const int16_t *codes, const float *params,
                                                     const int16_t *xq, const float *dx, const float *sx, long count,
                                                     float *y, long yStride) {
    const long pieces = columns / 32, groups = (rows + KVK_Q16_GROUP - 1) / KVK_Q16_GROUP;
    const int halves = type == KVK_GGML_Q6_K, affine = !signed_codes(type);
    for (long t = 0; t < count;) {
        const int T = count - t >= 4 ? 4 : 1;
        for (long g = 0; g < groups; g++) {
            for (int h = 0; h < 2; h++) {
                const long first = g * KVK_Q16_GROUP + 8 * h;
                if (first >= rows) break;
                const long valid = rows - first < 8 ? rows - first : 8;
                // Half h's rows: 8 int16 pairs at offset 16·h of each step, its params at +8·h.
                const int16_t *cg = codes + g * pieces * 16 * 2 * KVK_Q16_GROUP + 16 * h;
                const float *pg = params + g * pieces * 3 * KVK_Q16_GROUP + 8 * h;
                const int16_t *xt = xq + t * columns;
                float *yt = y + t * yStride + first;
                if (T == 4) q16_tile_avx2_4(halves, affine, pieces, cg, pg, xt, columns, dx + t * pieces, sx + t * pieces, yt, yStride, valid);
                else q16_tile_avx2_1(halves, affine, pieces, cg, pg, xt, columns, dx + t * pieces, sx + t * pieces, yt, yStride, valid);
            }
        }
        t += T;
    }
}

// AVX-512 VNNI: the same sums, 16 rows per register, vpdpwssd (exact int32 accumulation of the
// same products), so the bits equal the AVX2 kernel's.
#define KVK_TARGET_Q16_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define KVK_Q16_TILE_VNNI(T)                                                                                     \
    KVK_TARGET_Q16_VNNI static inline __attribute__((always_inline)) void q16_tile_vnni_##T(                        \
        const int halves, const int affine, long pieces, const int16_t *codes, const float *params,               \
        const int16_t *xq, long columns, const float *dx, const float *sx, float *y, long yStride, long valid) {  \
        __m512 acc[T];                                                                                          \
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();                                               \
        for (long b = 0; b < pieces; b++) {                                                                     \
            const int16_t *cb = codes + b * 16 * 2 * KVK_Q16_GROUP;                                              \
            const float *pb = params + b * 3 * KVK_Q16_GROUP;                                                    \
            const int16_t *xb = xq + 32 * b;                                                                    \
            for (int h = 0; h < 2; h++) {                                                                       \
                if (h == 1 && !halves) break;                                                                   \
                const int s0 = halves ? 8 * h : 0, s1 = halves ? s0 + 8 : 16;                                   \
                __m512i I[T];                                                                                   \
                for (int t = 0; t < T; t++) I[t] = _mm512_setzero_si512();                                      \
                for (int s = s0; s < s1; s++) {                                                                 \
                    const __m512i wv = _mm512_loadu_si512((const void *)(cb + s * 2 * KVK_Q16_GROUP));          \
                    for (int t = 0; t < T; t++) {                                                               \
                        int32_t pair; __builtin_memcpy(&pair, xb + t * columns + 2 * s, 4);                     \
                        I[t] = _mm512_dpwssd_epi32(I[t], wv, _mm512_set1_epi32(pair));                          \
                    }                                                                                           \
                }                                                                                               \
                const __m512 a = _mm512_loadu_ps(pb + h * KVK_Q16_GROUP);                                       \
                for (int t = 0; t < T; t++)                                                                     \
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[t]),                                          \
                                             _mm512_mul_ps(a, _mm512_set1_ps(dx[t * pieces + b])), acc[t]);     \
            }                                                                                                   \
        }                                                                                                       \
        __m512 off[T];                                                                                          \
        for (int t = 0; t < T; t++) off[t] = _mm512_setzero_ps();                                               \
        if (affine)                                                                                             \
            for (long b = 0; b < pieces; b++) {                                                                 \
                const __m512 c = _mm512_loadu_ps(params + b * 3 * KVK_Q16_GROUP + 2 * KVK_Q16_GROUP);           \
                for (int t = 0; t < T; t++) off[t] = _mm512_fmadd_ps(c, _mm512_set1_ps(sx[t * pieces + b]), off[t]); \
            }                                                                                                   \
        const __mmask16 keep = (__mmask16)(valid >= 16 ? 0xFFFF : ((1u << valid) - 1));                         \
        for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + t * yStride, keep, _mm512_add_ps(acc[t], off[t])); \
    }
KVK_Q16_TILE_VNNI(8)
KVK_Q16_TILE_VNNI(4)
KVK_Q16_TILE_VNNI(1)
#undef KVK_Q16_TILE_VNNI

KVK_TARGET_Q16_VNNI void kvk_weights_matmul_q16_vnni(int type, long rows, long columns, const int16_t *codes, const float *params,
                                                      const int16_t *xq, const float *dx, const float *sx, long count,
                                                      float *y, long yStride) {
    const long pieces = columns / 32, groups = (rows + KVK_Q16_GROUP - 1) / KVK_Q16_GROUP;
    const int halves = type == KVK_GGML_Q6_K, affine = !signed_codes(type);
    for (long t = 0; t < count;) {
        const int T = count - t >= 8 ? 8 : count - t >= 4 ? 4 : 1;
        for (long g = 0; g < groups; g++) {
            const long first = g * KVK_Q16_GROUP, valid = rows - first;
            const int16_t *cg = codes + g * pieces * 16 * 2 * KVK_Q16_GROUP;
            const float *pg = params + g * pieces * 3 * KVK_Q16_GROUP;
            const int16_t *xt = xq + t * columns;
            float *yt = y + t * yStride + first;
            if (T == 8) q16_tile_vnni_8(halves, affine, pieces, cg, pg, xt, columns, dx + t * pieces, sx + t * pieces, yt, yStride, valid);
            else if (T == 4) q16_tile_vnni_4(halves, affine, pieces, cg, pg, xt, columns, dx + t * pieces, sx + t * pieces, yt, yStride, valid);
            else q16_tile_vnni_1(halves, affine, pieces, cg, pg, xt, columns, dx + t * pieces, sx + t * pieces, yt, yStride, valid);
        }
        t += T;
    }
}

#endif // __x86_64__
