// The write path on AVX2 + F16C + FMA (`KVK_CPU_AVX2`): the value check, FP32 <-> FP16 rows, and
// the affine encoders (grouped rows, per-channel key pages). Contracts: include/CKVKernels.h.
// Swift twins, bit-exact: ValueCheck.firstInvalidReference, Float16Bits.floatToHalfReference /
// halfToFloatReference, RowCodec.encodeReference, ChannelwiseKeyCodec.encodePageReference.
//
// The affine parameters are computed with the rounding modes of F16C instead of Swift's
// round-then-nudge: zero = lo rounded to FP16 towards +inf (vcvtps2ph, imm 2), and scale = the least
// FP16 >= q = max(hi - zero, 0) / M, with q in double (hi - zero is exact there, one rounding in the
// division), as the least float >= q rounded to FP16 towards +inf. Every FP16 >= q is a float >= q,
// so that is the least FP16 >= q: what `AffineParameters.init(lo:hi:width:)` computes.
#include "internal.h"
#include <string.h>

#if defined(__x86_64__)

#define KVK_TARGET_ENCODE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVK_ROUND_UP (_MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC)
#define KVK_ROUND_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

KVK_TARGET_ENCODE_AVX2 long kvk_encode_first_invalid_avx2(const float *x, long count) {
    const __m256i maxBits = _mm256_set1_epi32(0x477FE000), absMask = _mm256_set1_epi32(0x7FFFFFFF);
    long i = 0;
    // |x| bits as signed integers are non-negative, so the signed compare is the unsigned one.
    for (; i + 32 <= count; i += 32) {
        __m256i bad = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            __m256i a = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8 * k)), absMask);
            bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(a, maxBits));
        }
        if (!_mm256_testz_si256(bad, bad)) break;
    }
    for (; i < count; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        if ((u & 0x7FFFFFFF) > 0x477FE000) return i;
    }
    return -1;
}

KVK_TARGET_ENCODE_AVX2 void kvk_encode_fp16_avx2(const float *x, uint16_t *out, long count) {
    long i = 0;
    for (; i + 32 <= count; i += 32)
        for (int k = 0; k < 4; k++)
            _mm_storeu_si128((__m128i *)(out + i + 8 * k), _mm256_cvtps_ph(_mm256_loadu_ps(x + i + 8 * k), KVK_ROUND_NEAREST));
    for (; i + 8 <= count; i += 8) _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), KVK_ROUND_NEAREST));
    if (i < count) {
        float t[8] = {0};
        uint16_t h[8];
        memcpy(t, x + i, (size_t)(count - i) * 4);
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(_mm256_loadu_ps(t), KVK_ROUND_NEAREST));
        memcpy(out + i, h, (size_t)(count - i) * 2);
    }
}

KVK_TARGET_ENCODE_AVX2 void kvk_decode_fp16_avx2(const uint16_t *h, float *out, long count) {
    long i = 0;
    for (; i + 32 <= count; i += 32)
        for (int k = 0; k < 4; k++)
            _mm256_storeu_ps(out + i + 8 * k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i + 8 * k))));
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    if (i < count) {
        uint16_t t[8] = {0};
        float f[8];
        memcpy(t, h + i, (size_t)(count - i) * 2);
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t)));
        memcpy(out + i, f, (size_t)(count - i) * 4);
    }
}

// Eight affine parameters from eight (lo, hi) pairs (see the file's notes): FP16 bits of zero and
// scale, and both as floats. lo and hi must be finite, |.| <= 65504, lo <= hi, zeros of either sign
// already made +0 (`AffineParameters` does the same).
KVK_TARGET_ENCODE_AVX2 KVK_INLINE void affine8(__m256 lo, __m256 hi, double maxCode, __m128i *zeroBits, __m128i *scaleBits,
                                                __m256 *zero, __m256 *scale) {
    __m128i z = _mm256_cvtps_ph(lo, KVK_ROUND_UP);
    __m256 zf = _mm256_cvtph_ps(z);
    const __m256d m = _mm256_set1_pd(maxCode), zeroD = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
    __m128 f[2];
    for (int h = 0; h < 2; h++) {
        __m256d hd = _mm256_cvtps_pd(h ? _mm256_extractf128_ps(hi, 1) : _mm256_castps256_ps128(hi));
        __m256d zd = _mm256_cvtps_pd(h ? _mm256_extractf128_ps(zf, 1) : _mm256_castps256_ps128(zf));
        __m256d q = _mm256_div_pd(_mm256_max_pd(_mm256_sub_pd(hd, zd), zeroD), m);
        __m128 r = _mm256_cvtpd_ps(q);  // nearest (MXCSR default)
        // Where the nearest float is below q, take the next float up (r >= 0: its bits + 1).
        __m256d below = _mm256_cmp_pd(_mm256_cvtps_pd(r), q, _CMP_LT_OQ);
        __m128i inc = _mm256_cvtpd_epi32(_mm256_and_pd(below, one));
        f[h] = _mm_castsi128_ps(_mm_add_epi32(_mm_castps_si128(r), inc));
    }
    __m128i s = _mm256_cvtps_ph(_mm256_set_m128(f[1], f[0]), KVK_ROUND_UP);
    *zeroBits = z;
    *scaleBits = s;
    *zero = zf;
    *scale = _mm256_cvtph_ps(s);
}

// +0 for -0 (x + 0 under round to nearest), as `AffineParameters` normalises.
KVK_TARGET_ENCODE_AVX2 KVK_INLINE __m256 plus_zero(__m256 x) { return _mm256_add_ps(x, _mm256_setzero_ps()); }

// Codes of eight values: min(max((x - zero) / scale, 0) + 2^23, 2^23 + M) as float, whose bits
// minus those of 2^23 are round-half-even of the clamped quotient; 0 where scale is 0.
KVK_TARGET_ENCODE_AVX2 KVK_INLINE __m256i codes8(__m256 x, __m256 zero, __m256 scale, __m256 top) {
    const __m256 magic = _mm256_set1_ps(0x1p23f);
    __m256 t = _mm256_min_ps(_mm256_add_ps(_mm256_max_ps(_mm256_div_ps(_mm256_sub_ps(x, zero), scale), _mm256_setzero_ps()), magic), top);
    __m256i c = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    return _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(scale, _mm256_setzero_ps(), _CMP_EQ_OQ)), c);
}

// The same for one value (tails), with the same operations.
static inline uint8_t code1(float x, float zero, float scale, int maxCode) {
    if (scale == 0) return 0;
    float q = (x - zero) / scale;
    float t = (q > 0 ? q : 0) + 0x1p23f;
    float top = 0x1p23f + (float)maxCode;
    t = t < top ? t : top;
    return (uint8_t)(t - 0x1p23f);
}

// Eight codes (≤ 255 each, in 32-bit lanes) stored as eight bytes.
KVK_TARGET_ENCODE_AVX2 KVK_INLINE void store_bytes8(__m256i c, uint8_t *out) {
    __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(c, c), _mm256_setzero_si256());
    uint32_t lo = (uint32_t)_mm256_extract_epi32(p, 0), hi = (uint32_t)_mm256_extract_epi32(p, 4);
    memcpy(out, &lo, 4);
    memcpy(out + 4, &hi, 4);
}

// Packs `count` byte codes into `bits`-bit codes, element i at byte i/(8/bits), bit (i mod (8/bits))·bits;
// the last byte's unused bits are 0. `codes` may be read up to a multiple of 8/bits (zero-padded).
KVK_TARGET_ENCODE_AVX2 static void pack_codes(int bits, const uint8_t *codes, long count, uint8_t *out) {
    if (bits == 8) {
        memcpy(out, codes, (size_t)count);
    } else if (bits == 4) {
        for (long k = 0; k < (count + 1) / 2; k++) out[k] = (uint8_t)(codes[2 * k] | codes[2 * k + 1] << 4);
    } else {
        for (long k = 0; k < (count + 3) / 4; k++)
            out[k] = (uint8_t)(codes[4 * k] | codes[4 * k + 1] << 2 | codes[4 * k + 2] << 4 | codes[4 * k + 3] << 6);
    }
}

// Channels per block of the per-channel encoder (its parameters stay in registers' worth of stack).
#define KVK_CHANNEL_BLOCK 64

KVK_TARGET_ENCODE_AVX2 void kvk_encode_channelwise_avx2(int bits, const float *x, long n, long d, uint8_t *codes, long rowBytes,
                                                        uint16_t *params) {
    const double maxCode = (double)((1 << bits) - 1);
    const __m256 top = _mm256_set1_ps(0x1p23f + (float)maxCode);
    uint8_t row[KVK_CHANNEL_BLOCK + 8];
    for (long c0 = 0; c0 < d; c0 += KVK_CHANNEL_BLOCK) {
        const long w = d - c0 < KVK_CHANNEL_BLOCK ? d - c0 : KVK_CHANNEL_BLOCK, full = w / 8 * 8;
        float lo[KVK_CHANNEL_BLOCK], hi[KVK_CHANNEL_BLOCK], zero[KVK_CHANNEL_BLOCK], scale[KVK_CHANNEL_BLOCK];
        // Per-channel minimum and maximum over the tokens.
        for (long c = 0; c < full; c += 8) {
            __m256 l = _mm256_loadu_ps(x + c0 + c), h = l;
            for (long t = 1; t < n; t++) {
                __m256 v = _mm256_loadu_ps(x + t * d + c0 + c);
                l = _mm256_min_ps(l, v);
                h = _mm256_max_ps(h, v);
            }
            _mm256_storeu_ps(lo + c, plus_zero(l));
            _mm256_storeu_ps(hi + c, plus_zero(h));
        }
        for (long c = full; c < w; c++) {
            float l = x[c0 + c], h = l;
            for (long t = 1; t < n; t++) {
                float v = x[t * d + c0 + c];
                l = v < l ? v : l;
                h = v > h ? v : h;
            }
            lo[c] = l + 0.0f;
            hi[c] = h + 0.0f;
        }
        // Parameters, eight channels at a time (the block's tail padded with zeros).
        for (long c = w; c < (w + 7) / 8 * 8; c++) lo[c] = hi[c] = 0;
        for (long c = 0; c < w; c += 8) {
            __m128i zb, sb;
            __m256 zf, sf;
            affine8(_mm256_loadu_ps(lo + c), _mm256_loadu_ps(hi + c), maxCode, &zb, &sb, &zf, &sf);
            _mm256_storeu_ps(zero + c, zf);
            _mm256_storeu_ps(scale + c, sf);
            uint16_t pairs[16];
            _mm_storeu_si128((__m128i *)pairs, _mm_unpacklo_epi16(sb, zb));
            _mm_storeu_si128((__m128i *)(pairs + 8), _mm_unpackhi_epi16(sb, zb));
            long m = w - c < 8 ? w - c : 8;
            memcpy(params + 2 * (c0 + c), pairs, (size_t)m * 4);
        }
        // Codes, token by token.
        for (long t = 0; t < n; t++) {
            const float *r = x + t * d + c0;
            for (long c = 0; c < full; c += 8)
                store_bytes8(codes8(_mm256_loadu_ps(r + c), _mm256_loadu_ps(zero + c), _mm256_loadu_ps(scale + c), top), row + c);
            for (long c = full; c < w; c++) row[c] = code1(r[c], zero[c], scale[c], (int)maxCode);
            for (long c = w; c < w + 8; c++) row[c] = 0;
            pack_codes(bits, row, w, codes + t * rowBytes + c0 * bits / 8);
        }
    }
}

KVK_TARGET_ENCODE_AVX2 void kvk_encode_grouped_avx2(int bits, long groupSize, const float *x, long n, long d, uint8_t *rows,
                                                    long rowBytes, long codeBytes) {
    const double maxCode = (double)((1 << bits) - 1);
    const __m256 top = _mm256_set1_ps(0x1p23f + (float)maxCode);
    const long groups = (d + groupSize - 1) / groupSize;
    for (long r = 0; r < n; r++) {
        const float *v = x + r * d;
        uint8_t *row = rows + r * rowBytes;
        // Group minima and maxima, then their parameters eight groups at a time.
        float lo[8], hi[8], zero[8], scale[8];
        for (long k0 = 0; k0 < groups; k0 += 8) {
            const long m = groups - k0 < 8 ? groups - k0 : 8;
            for (long k = 0; k < 8; k++) {
                lo[k] = hi[k] = 0;
                if (k >= m) continue;
                const long start = (k0 + k) * groupSize, end = start + groupSize < d ? start + groupSize : d;
                long i = start;
                float l = v[start], h = l;
                if (i + 8 <= end) {
                    __m256 vl = _mm256_loadu_ps(v + i), vh = vl;
                    for (i += 8; i + 8 <= end; i += 8) {
                        __m256 y = _mm256_loadu_ps(v + i);
                        vl = _mm256_min_ps(vl, y);
                        vh = _mm256_max_ps(vh, y);
                    }
                    __m128 a = _mm_min_ps(_mm256_castps256_ps128(vl), _mm256_extractf128_ps(vl, 1));
                    a = _mm_min_ps(a, _mm_movehl_ps(a, a));
                    a = _mm_min_ss(a, _mm_shuffle_ps(a, a, 1));
                    __m128 b = _mm_max_ps(_mm256_castps256_ps128(vh), _mm256_extractf128_ps(vh, 1));
                    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
                    b = _mm_max_ss(b, _mm_shuffle_ps(b, b, 1));
                    l = _mm_cvtss_f32(a);
                    h = _mm_cvtss_f32(b);
                }
                for (; i < end; i++) {
                    l = v[i] < l ? v[i] : l;
                    h = v[i] > h ? v[i] : h;
                }
                lo[k] = l + 0.0f;
                hi[k] = h + 0.0f;
            }
            __m128i zb, sb;
            __m256 zf, sf;
            affine8(_mm256_loadu_ps(lo), _mm256_loadu_ps(hi), maxCode, &zb, &sb, &zf, &sf);
            _mm256_storeu_ps(zero, zf);
            _mm256_storeu_ps(scale, sf);
            uint16_t pairs[16];
            _mm_storeu_si128((__m128i *)pairs, _mm_unpacklo_epi16(sb, zb));
            _mm_storeu_si128((__m128i *)(pairs + 8), _mm_unpackhi_epi16(sb, zb));
            memcpy(row + codeBytes + 4 * k0, pairs, (size_t)m * 4);
            // Codes of these groups, packed: every group starts on a byte boundary (groupSize is a
            // multiple of 8).
            for (long k = 0; k < m; k++) {
                const long start = (k0 + k) * groupSize, end = start + groupSize < d ? start + groupSize : d;
                uint8_t buffer[8 + 8];
                const __m256 z8 = _mm256_set1_ps(zero[k]), s8 = _mm256_set1_ps(scale[k]);
                long i = start;
                for (; i + 8 <= end; i += 8) {
                    store_bytes8(codes8(_mm256_loadu_ps(v + i), z8, s8, top), buffer);
                    pack_codes(bits, buffer, 8, row + i * bits / 8);
                }
                if (i < end) {
                    long t = 0;
                    for (; i + t < end; t++) buffer[t] = code1(v[i + t], zero[k], scale[k], (int)maxCode);
                    for (long u = t; u < 8; u++) buffer[u] = 0;
                    pack_codes(bits, buffer, t, row + i * bits / 8);
                }
            }
        }
    }
}

// Lloyd–Max codes: code i = the number of the `count` thresholds strictly below x[i] / norm (the
// thresholds ascend, so that is the level search; counted branch-free, one compare per threshold).
// Twin: RowCodec.levelCode, and the Swift SIMD loop of EncodeKernels.lloydMaxCodes.
KVK_TARGET_ENCODE_AVX2 void kvk_encode_lloydmax_codes_avx2(const float *x, long count8, float norm, const float *thresholds,
                                                           int thresholdCount, uint32_t *codes) {
    const __m256 n = _mm256_set1_ps(norm);
    for (long i = 0; i + 8 <= count8; i += 8) {
        const __m256 z = _mm256_div_ps(_mm256_loadu_ps(x + i), n);
        __m256i c = _mm256_setzero_si256();
        // A true compare is all ones (−1): subtracting it counts.
        for (int k = 0; k < thresholdCount; k++)
            c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(z, _mm256_set1_ps(thresholds[k]), _CMP_GT_OQ)));
        _mm256_storeu_si256((__m256i *)(codes + i), c);
    }
}

#endif
