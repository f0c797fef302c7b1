// The CPU-feature probe, and a memory-bandwidth probe for benchmarks. Both exist on every
// architecture (the kernels of the other files exist only on x86-64).
#include "internal.h"

unsigned kvk_cpu_features(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    unsigned f = 0;
    const int fma16 = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    if (fma16 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        f |= KVK_CPU_AVX512;
    if (__builtin_cpu_supports("avx512vnni")) f |= KVK_CPU_AVX512_VNNI;
    if (__builtin_cpu_supports("avx512vbmi")) f |= KVK_CPU_AVX512_VBMI;
    if (fma16 && __builtin_cpu_supports("avx2")) f |= KVK_CPU_AVX2;
    return f;
#else
    return 0;
#endif
}

#if defined(__x86_64__)
// Four concurrent streams of 64-byte loads.
KVK_TARGET_AVX512 static double read_sum_avx512(const float *p, size_t count) {
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

#endif

// Eight lanes of partial sums: what the compiler vectorises for any target.
static double read_sum_portable(const float *p, size_t count) {
    float a[8] = {0};
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    double t = 0;
    for (int k = 0; k < 8; k++) t += a[k];
    for (; i < count; i++) t += p[i];
    return t;
}

double kvk_read_sum(const float *p, size_t count) {
#if defined(__x86_64__)
    if (kvk_cpu_features() & KVK_CPU_AVX512) return read_sum_avx512(p, count);
#endif
    return read_sum_portable(p, count);
}
