// The append path: the value check and FP32 → FP16 conversion (AVX2 + F16C). Contracts:
// include/CKVKernels.h; Swift twins: ValueCheck.firstInvalidReference, Float16Bits.floatToHalfReference.
#include "internal.h"

#if defined(__x86_64__)

KVK_TARGET_AVX2 long kvk_first_invalid_avx2(const float *x, long count) {
    // |x| as bits, compared as signed integers (the sign bit is cleared, so signed order is float
    // order on magnitudes, with ∞ and NaN above 65504).
    const __m256i maxBits = _mm256_set1_epi32(0x477FE000), absMask = _mm256_set1_epi32(0x7FFFFFFF);
    long i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256i a = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), absMask);
        int bad = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, maxBits)));
        if (bad) return i + __builtin_ctz((unsigned)bad);
    }
    for (; i < count; i++) {
        uint32_t b;
        __builtin_memcpy(&b, x + i, 4);
        if ((b & 0x7FFFFFFFu) > 0x477FE000u) return i;
    }
    return -1;
}

KVK_TARGET_AVX2 void kvk_float_to_half_avx2(const float *x, uint16_t *out, long count) {
    long i = 0;
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < count; i++) out[i] = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x[i]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0);
}

#endif
