// The append path: the value check and FP32 → FP16 conversion (AVX-512). Contracts:
// include/CKVKernels.h; Swift twins: ValueCheck.firstInvalidReference, Float16Bits.floatToHalfReference.
#include "internal.h"

#if defined(__x86_64__)

KVK_TARGET_AVX512 long kvk_first_invalid(const float *x, long count) {
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

KVK_TARGET_AVX512 void kvk_float_to_half(const float *x, uint16_t *out, long count) {
    long i = 0;
    for (; i + 16 <= count; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < count) {
        __mmask16 k = (__mmask16)((1u << (count - i)) - 1);
        __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(out + i, k, h);
    }
}

#endif
