/*
 * Tests of the C ABI (kvcrush.h) against the built libKVCrushC: every function, every error path
 * (each must return its status and a message and change nothing), attention against an FP64
 * reference, layouts and FP16 input, compression policies and presets, decode sessions, forks,
 * snapshots (corrupt ones included), the byte limit, and calls from several threads.
 * Built and run under AddressSanitizer by Tests/C/run (and .ci/run).
 */
#include "kvcrush.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        checks++;                                                                  \
        if (!(cond)) {                                                             \
            failures++;                                                            \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fprintf(stderr, "\n");                                                 \
        }                                                                          \
    } while (0)

/* A call that must succeed. */
#define OK(call)                                                                    \
    do {                                                                            \
        kvcrush_status s_ = (call);                                                 \
        CHECK(s_ == KVCRUSH_OK, "%s returned %d: %s", #call, s_, kvcrush_last_error()); \
        CHECK(kvcrush_last_error()[0] == 0, "message after success: %s", kvcrush_last_error()); \
    } while (0)

/* A call that must fail with `status` and a message containing `text`. */
#define FAILS(call, status, text)                                                   \
    do {                                                                            \
        kvcrush_status s_ = (call);                                                 \
        const char *m_ = kvcrush_last_error();                                      \
        CHECK(s_ == (status), "%s returned %d (%s), expected %d", #call, s_, m_, status); \
        CHECK(strstr(m_, (text)) != NULL, "%s: message '%s' lacks '%s'", #call, m_, text); \
    } while (0)

/* ---- Data ----------------------------------------------------------------------------------- */

static uint64_t rng_state;
static double uniform01(void) {  /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}
/* Values exactly representable in FP16 (multiples of 1/256 in [-2, 2]) so FP16 storage is exact. */
static float exact_value(void) { return (float)((int)(uniform01() * 1025) - 512) / 256.0f; }
static void fill(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = exact_value(); }

/* IEEE binary16 bits of a float that is exactly representable (normal or zero). */
static uint16_t f16_bits(float x) {
    if (x == 0) return signbit(x) ? 0x8000 : 0;
    if (isinf(x)) return x > 0 ? 0x7C00 : 0xFC00;
    if (isnan(x)) return 0x7E00;
    int e;
    float m = frexpf(fabsf(x), &e); /* |x| = m * 2^e, m in [0.5, 1) */
    uint16_t mant = (uint16_t)((m * 2 - 1) * 1024);
    return (uint16_t)((x < 0 ? 0x8000 : 0) | ((e - 1 + 15) << 10) | mant);
}

/* [h][t][d] -> [t][h][d] */
static void to_token_major(const float *x, float *y, int heads, int tokens, int d) {
    for (int h = 0; h < heads; h++)
        for (int t = 0; t < tokens; t++) memcpy(y + ((size_t)t * heads + h) * d, x + ((size_t)h * tokens + t) * d, d * sizeof(float));
}

enum { L = 2, QH = 4, KVH = 2, D = 64, N = 512, OBS = 32 };

/* FP64 attention of query q (d floats, query head qh) over tokens 0..upto of a head-major K, V. */
static void reference_attention(const float *k, const float *v, int tokens, int upto, int kvh, const float *q, double scale,
                                double *out) {
    double mx = -INFINITY, sum = 0, s[N + 64];
    for (int t = 0; t <= upto; t++) {
        double dot = 0;
        for (int e = 0; e < D; e++) dot += (double)q[e] * k[((size_t)kvh * tokens + t) * D + e];
        s[t] = dot * scale;
        if (s[t] > mx) mx = s[t];
    }
    for (int e = 0; e < D; e++) out[e] = 0;
    for (int t = 0; t <= upto; t++) {
        double w = exp(s[t] - mx);
        sum += w;
        for (int e = 0; e < D; e++) out[e] += w * v[((size_t)kvh * tokens + t) * D + e];
    }
    for (int e = 0; e < D; e++) out[e] /= sum;
}

static kvcrush_store *make_store(int64_t byte_limit, const char *preset) {
    kvcrush_config c;
    kvcrush_config_init(&c);
    c.layers = L, c.query_heads = QH, c.kv_heads = KVH, c.head_dim = D, c.byte_limit = byte_limit, c.preset = preset;
    kvcrush_store *s = NULL;
    OK(kvcrush_store_create(&c, &s));
    return s;
}

static float *keys_, *values_;  /* [L][KVH][N][D] prompt */
static float *obs_[L];          /* [QH][OBS][D] observation queries per layer */

static kvcrush_sequence prefill(kvcrush_store *s) {
    kvcrush_sequence id;
    OK(kvcrush_sequence_add(s, &id));
    for (int l = 0; l < L; l++)
        OK(kvcrush_append(s, id, l, keys_ + (size_t)l * KVH * N * D, values_ + (size_t)l * KVH * N * D, (size_t)KVH * N * D, N,
                          KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    return id;
}

static int64_t total_bytes(kvcrush_store *s) {
    int64_t b = -1;
    OK(kvcrush_byte_count(s, &b));
    return b;
}

/* ---- Tests ---------------------------------------------------------------------------------- */

static void test_library(void) {
    CHECK(strcmp(kvcrush_version(), "") != 0, "empty version");
    CHECK(kvcrush_abi_version() == KVCRUSH_ABI_VERSION, "abi %u", kvcrush_abi_version());
    CHECK(kvcrush_last_error()[0] == 0, "initial message '%s'", kvcrush_last_error());
    CHECK(kvcrush_preset_count() == 4, "%zu presets", kvcrush_preset_count());
    const char *name;
    double budget;
    int32_t page;
    OK(kvcrush_preset_info(1, &name, &budget, &page));
    CHECK(strcmp(name, "4x") == 0 && budget == 0.25 && page == 64, "preset 1: %s %g %d", name, budget, page);
    OK(kvcrush_preset_info(0, NULL, NULL, NULL));
    OK(kvcrush_preset_info(2, &name, &budget, &page));
    CHECK(strcmp(name, "6x") == 0 && budget == 1.0 / 6 && page == 64, "preset 2: %s %g %d", name, budget, page);
    FAILS(kvcrush_preset_info(4, &name, NULL, NULL), KVCRUSH_ERROR_INVALID_ARGUMENT, "preset index 4");
    kvcrush_config_init(NULL); /* ignored */
}

static void test_create(void) {
    kvcrush_config c;
    kvcrush_store *s = (kvcrush_store *)0x1;
    kvcrush_config_init(&c);
    CHECK(c.struct_size == sizeof c && c.byte_limit == -1 && c.page_capacity == 32 && c.preset == NULL, "defaults");
    FAILS(kvcrush_store_create(NULL, &s), KVCRUSH_ERROR_NULL_POINTER, "config is NULL");
    c.layers = L, c.query_heads = QH, c.kv_heads = KVH, c.head_dim = D;
    FAILS(kvcrush_store_create(&c, NULL), KVCRUSH_ERROR_NULL_POINTER, "store is NULL");
    kvcrush_config bad = c;
    bad.struct_size = 8;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "struct_size");
    bad = c, bad.kv_heads = 3;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "kvHeadCount");
    bad = c, bad.layers = 0;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "layerCount");
    bad = c, bad.head_dim = 5000;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "headDim");
    bad = c, bad.page_capacity = 0;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "pageCapacity");
    bad = c, bad.byte_limit = -2;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "byte_limit");
    bad = c, bad.attention_scale = NAN;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "attention_scale");
    bad = c, bad.attend_threads = -1;
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_INVALID_ARGUMENT, "attend_threads");
    bad = c, bad.preset = "3x";
    FAILS(kvcrush_store_create(&bad, &s), KVCRUSH_ERROR_POLICY, "unknown preset '3x'");
    CHECK(s == (kvcrush_store *)0x1, "output written on failure");

    c.preset = "preset:4x", c.attention_scale = 0.5f, c.attend_threads = 1, c.byte_limit = 1 << 20;
    OK(kvcrush_store_create(&c, &s));
    kvcrush_config back;
    OK(kvcrush_store_config(s, &back));
    CHECK(back.layers == L && back.query_heads == QH && back.kv_heads == KVH && back.head_dim == D, "shape");
    CHECK(back.page_capacity == 64 && back.byte_limit == 1 << 20 && back.attention_scale == 0.5f && back.attend_threads == 1,
          "fields %d %lld %g %d", back.page_capacity, (long long)back.byte_limit, back.attention_scale, back.attend_threads);
    CHECK(back.preset && strcmp(back.preset, "4x") == 0, "preset %s", back.preset ? back.preset : "(null)");
    FAILS(kvcrush_store_config(s, NULL), KVCRUSH_ERROR_NULL_POINTER, "config is NULL");
    FAILS(kvcrush_store_config(NULL, &back), KVCRUSH_ERROR_NULL_POINTER, "store is NULL");
    kvcrush_store_destroy(s);
    kvcrush_store_destroy(NULL);
}

static void test_null_store(void) {
    kvcrush_sequence id;
    int64_t n;
    size_t count;
    float x[1];
    const char *msg = "store is NULL";
    FAILS(kvcrush_sequence_add(NULL, &id), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_sequence_fork(NULL, 0, &id), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_sequence_remove(NULL, 0), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_sequences(NULL, NULL, 0, &count), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_sequence_length(NULL, 0, 0, &n), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_append(NULL, 0, 0, x, x, 1, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_attend(NULL, 0, 0, x, 1, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, x, 1, NULL, 0), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_compress(NULL, 0, "snapkv", 0.5, NULL, 0, 0, NULL), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_byte_count(NULL, &n), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_tier_counts(NULL, 0, -1, NULL, NULL), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_store_save(NULL, "/tmp/x", NULL, 0), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_store_load("/tmp/x", NULL), KVCRUSH_ERROR_NULL_POINTER, msg);
    FAILS(kvcrush_store_load(NULL, NULL), KVCRUSH_ERROR_NULL_POINTER, "path is NULL");
    FAILS(kvcrush_session_attend(NULL, 0, x, 1, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, x, 1), KVCRUSH_ERROR_NULL_POINTER, "session is NULL");
    FAILS(kvcrush_session_appended(NULL, 0, 1), KVCRUSH_ERROR_NULL_POINTER, "session is NULL");
    FAILS(kvcrush_session_info(NULL, NULL, NULL), KVCRUSH_ERROR_NULL_POINTER, "session is NULL");
    kvcrush_session_destroy(NULL);
}

static void test_sequences(void) {
    kvcrush_store *s = make_store(-1, NULL);
    kvcrush_sequence a, b, f, ids[4];
    size_t count = 99;
    OK(kvcrush_sequences(s, NULL, 0, &count));
    CHECK(count == 0, "%zu sequences", count);
    OK(kvcrush_sequence_add(s, &a));
    OK(kvcrush_sequence_add(s, &b));
    CHECK(a != b, "ids %llu %llu", (unsigned long long)a, (unsigned long long)b);
    FAILS(kvcrush_sequence_add(s, NULL), KVCRUSH_ERROR_NULL_POINTER, "sequence is NULL");
    FAILS(kvcrush_sequence_fork(s, 999, &f), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence 999");
    FAILS(kvcrush_sequence_fork(s, a, NULL), KVCRUSH_ERROR_NULL_POINTER, "fork is NULL");
    OK(kvcrush_sequence_fork(s, a, &f));
    OK(kvcrush_sequences(s, ids, 1, &count));
    CHECK(count == 3 && ids[0] == a, "count %zu first %llu", count, (unsigned long long)ids[0]);
    FAILS(kvcrush_sequences(s, NULL, 2, &count), KVCRUSH_ERROR_NULL_POINTER, "ids");
    FAILS(kvcrush_sequences(s, ids, 4, NULL), KVCRUSH_ERROR_NULL_POINTER, "count is NULL");
    OK(kvcrush_sequence_remove(s, b));
    FAILS(kvcrush_sequence_remove(s, b), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence");
    OK(kvcrush_sequences(s, ids, 4, &count));
    CHECK(count == 2 && ids[0] == a && ids[1] == f, "after remove: %zu", count);
    int64_t n = -1;
    OK(kvcrush_sequence_length(s, a, 1, &n));
    CHECK(n == 0, "length %lld", (long long)n);
    FAILS(kvcrush_sequence_length(s, a, 2, &n), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer 2 outside 0..<2");
    FAILS(kvcrush_sequence_length(s, a, -1, &n), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer -1");
    FAILS(kvcrush_sequence_length(s, b, 0, &n), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence");
    FAILS(kvcrush_sequence_length(s, a, 0, NULL), KVCRUSH_ERROR_NULL_POINTER, "length is NULL");
    kvcrush_store_destroy(s);
}

static void test_append_errors(void) {
    kvcrush_store *s = make_store(-1, NULL);
    kvcrush_sequence id;
    OK(kvcrush_sequence_add(s, &id));
    size_t n = (size_t)KVH * 3 * D;
    float *k = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    fill(k, n), fill(v, n);
    FAILS(kvcrush_append(s, id, 0, NULL, v, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_NULL_POINTER, "keys is NULL");
    FAILS(kvcrush_append(s, id, 0, k, NULL, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_NULL_POINTER, "values is NULL");
    FAILS(kvcrush_append(s, id, 0, k, v, n - 1, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_INVALID_ARGUMENT, "expected 384");
    FAILS(kvcrush_append(s, id, 0, k, v, n, (size_t)-1 / 2, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_INVALID_ARGUMENT, "overflows");
    FAILS(kvcrush_append(s, id, 0, k, v, n, 3, (kvcrush_dtype)7, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_INVALID_ARGUMENT, "dtype 7");
    FAILS(kvcrush_append(s, id, 0, k, v, n, 3, KVCRUSH_F32, (kvcrush_layout)9), KVCRUSH_ERROR_INVALID_ARGUMENT, "layout 9");
    FAILS(kvcrush_append(s, id, 2, k, v, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer 2");
    FAILS(kvcrush_append(s, 77, 0, k, v, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence 77");
    v[D + 5] = NAN; /* KV head 0, token 1, element 5 */
    FAILS(kvcrush_append(s, id, 0, k, v, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_INVALID_VALUE, "token 1, element 5");
    v[D + 5] = 70000.0f;
    FAILS(kvcrush_append(s, id, 0, k, v, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR), KVCRUSH_ERROR_INVALID_VALUE, "layer 0");
    v[D + 5] = 0;
    uint16_t *h = calloc(n, sizeof(uint16_t));
    h[7] = 0x7C00; /* +inf */
    FAILS(kvcrush_append(s, id, 1, h, h, n, 3, KVCRUSH_F16, KVCRUSH_LAYOUT_HEAD_MAJOR), KVCRUSH_ERROR_INVALID_VALUE, "element 7");
    int64_t len = -1;
    OK(kvcrush_sequence_length(s, id, 0, &len));
    CHECK(len == 0 && total_bytes(s) == 0, "failed appends changed the store: length %lld", (long long)len);
    OK(kvcrush_append(s, id, 0, k, v, 0, 0, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR)); /* zero tokens: nothing */
    OK(kvcrush_append(s, id, 0, k, v, n, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    OK(kvcrush_sequence_length(s, id, 0, &len));
    CHECK(len == 3, "length %lld", (long long)len);
    free(k), free(v), free(h);
    kvcrush_store_destroy(s);
}

/* Head-major FP32, token-major FP32 and FP16 appends store the same rows; attention matches FP64. */
static void test_layouts_and_attention(void) {
    kvcrush_store *s = make_store(-1, NULL);
    const int T = 37;
    size_t n = (size_t)KVH * T * D, nq = (size_t)QH * 3 * D;
    float *k = malloc(n * 4), *v = malloc(n * 4), *kt = malloc(n * 4), *vt = malloc(n * 4);
    uint16_t *kh = malloc(n * 2), *vh = malloc(n * 2);
    fill(k, n), fill(v, n);
    to_token_major(k, kt, KVH, T, D), to_token_major(v, vt, KVH, T, D);
    for (size_t i = 0; i < n; i++) kh[i] = f16_bits(kt[i]), vh[i] = f16_bits(vt[i]);
    kvcrush_sequence a, b, c;
    OK(kvcrush_sequence_add(s, &a));
    OK(kvcrush_sequence_add(s, &b));
    OK(kvcrush_sequence_add(s, &c));
    OK(kvcrush_append(s, a, 0, k, v, n, T, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    OK(kvcrush_append(s, b, 0, kt, vt, n, T, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR));
    OK(kvcrush_append(s, c, 0, kh, vh, n, T, KVCRUSH_F16, KVCRUSH_LAYOUT_TOKEN_MAJOR));

    float *q = malloc(nq * 4), *qt = malloc(nq * 4), *oa = malloc(nq * 4), *ob = malloc(nq * 4), *oc = malloc(nq * 4);
    uint16_t *qh = malloc(nq * 2);
    float *w = malloc((size_t)QH * 3 * T * 4);
    fill(q, nq);
    to_token_major(q, qt, QH, 3, D);
    for (size_t i = 0; i < nq; i++) qh[i] = f16_bits(q[i]);
    OK(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, w, (size_t)QH * 3 * T));
    OK(kvcrush_attend(s, b, 0, qt, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR, NULL, ob, nq, NULL, 0));
    OK(kvcrush_attend(s, c, 0, qh, nq, 3, KVCRUSH_F16, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oc, nq, NULL, 0));
    float *oat = malloc(nq * 4);
    to_token_major(oa, oat, QH, 3, D);
    CHECK(memcmp(oat, ob, nq * 4) == 0, "token-major output differs from head-major");
    CHECK(memcmp(oa, oc, nq * 4) == 0, "FP16 input differs from FP32 input");
    /* Against FP64 attention over the (exact) rows: each query sees all T tokens. */
    double worst = 0, ref[D];
    for (int h = 0; h < QH; h++)
        for (int i = 0; i < 3; i++) {
            reference_attention(k, v, T, T - 1, h / (QH / KVH), q + ((size_t)h * 3 + i) * D, 1 / sqrt((double)D), ref);
            for (int e = 0; e < D; e++) {
                double err = fabs(ref[e] - oa[((size_t)h * 3 + i) * D + e]);
                if (err > worst) worst = err;
            }
            double sum = 0;
            for (int t = 0; t < T; t++) sum += w[((size_t)h * 3 + i) * T + t];
            CHECK(fabs(sum - 1) < 1e-5, "weights of head %d query %d sum to %g", h, i, sum);
        }
    /* Values |v| <= 2, T = 37 terms: FP32 rounding of the softmax-weighted sum stays far below 1e-5. */
    CHECK(worst < 1e-5, "attention differs from FP64 by %g", worst);

    /* Causal positions: a query at position 0 sees token 0 only: its output is that token's value row. */
    int32_t pos[3] = {0, 5, T - 1};
    OK(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, pos, oa, nq, w, (size_t)QH * 3 * T));
    CHECK(memcmp(oa, v, D * 4) == 0, "query at position 0 did not return value row 0");
    CHECK(w[0] == 1 && w[1] == 0, "weights of a position-0 query: %g %g", w[0], w[1]);
    /* Layer 1 is empty: zeros. */
    OK(kvcrush_attend(s, a, 1, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0));
    CHECK(oa[0] == 0 && oa[nq - 1] == 0, "empty layer gave %g", oa[0]);

    /* Errors. */
    FAILS(kvcrush_attend(s, a, 0, NULL, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_NULL_POINTER, "queries is NULL");
    FAILS(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, NULL, nq, NULL, 0), KVCRUSH_ERROR_NULL_POINTER, "output is NULL");
    FAILS(kvcrush_attend(s, a, 0, q, nq, 0, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_INVALID_ARGUMENT, "query_count");
    FAILS(kvcrush_attend(s, a, 0, q, nq + 1, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_INVALID_ARGUMENT, "queries has");
    FAILS(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq - 1, NULL, 0), KVCRUSH_ERROR_INVALID_ARGUMENT, "output has");
    FAILS(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, w, 5), KVCRUSH_ERROR_INVALID_ARGUMENT, "weights has 5");
    FAILS(kvcrush_attend(s, a, 3, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer 3");
    FAILS(kvcrush_attend(s, 42, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence 42");
    FAILS(kvcrush_attend(s, a, 0, q, nq, 3, (kvcrush_dtype)2, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_INVALID_ARGUMENT, "dtype");
    q[D * 4 + 2] = INFINITY;
    FAILS(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_INVALID_VALUE, "[head 1][token 1][element 2]");
    q[D * 4 + 2] = 1e36f; /* finite, but q.k can overflow FP32 for stored keys up to 65504 */
    FAILS(kvcrush_attend(s, a, 0, q, nq, 3, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, oa, nq, NULL, 0), KVCRUSH_ERROR_INVALID_VALUE, "query 1 of head 1");
    free(k), free(v), free(kt), free(vt), free(kh), free(vh), free(q), free(qt), free(qh), free(oa), free(ob), free(oc), free(oat), free(w);
    kvcrush_store_destroy(s);
}

static void test_byte_limit(void) {
    kvcrush_store *s = make_store(40000, NULL);
    kvcrush_sequence id;
    OK(kvcrush_sequence_add(s, &id));
    size_t n = (size_t)KVH * 32 * D;
    float *k = malloc(n * 4), *v = malloc(n * 4);
    fill(k, n), fill(v, n);
    int appended = 0;
    kvcrush_status st;
    while ((st = kvcrush_append(s, id, 0, k, v, n, 32, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR)) == KVCRUSH_OK) appended++;
    CHECK(st == KVCRUSH_ERROR_BYTE_LIMIT && strstr(kvcrush_last_error(), "byte limit"), "status %d: %s", st, kvcrush_last_error());
    int64_t bytes = total_bytes(s), len;
    CHECK(appended >= 1 && bytes <= 40000, "%d appends, %lld bytes", appended, (long long)bytes);
    OK(kvcrush_sequence_length(s, id, 0, &len));
    CHECK(len == 32 * appended, "length %lld after %d appends", (long long)len, appended);
    /* Removing frees the pages: the append fits again. */
    OK(kvcrush_sequence_remove(s, id));
    CHECK(total_bytes(s) == 0, "bytes after remove %lld", (long long)total_bytes(s));
    OK(kvcrush_sequence_add(s, &id));
    OK(kvcrush_append(s, id, 0, k, v, n, 32, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    free(k), free(v);
    kvcrush_store_destroy(s);
}

static void tier_counts(kvcrush_store *s, kvcrush_sequence id, int32_t layer, int64_t *bytes, int64_t *tokens) {
    OK(kvcrush_tier_counts(s, id, layer, bytes, tokens));
}

static void test_compress(void) {
    static const char *policies[] = {"snapkv", "tiered", "plain", "h2o", "snapkv+kvcrush", "tiered+int2", "streaming", "preset:2x"};
    for (size_t p = 0; p < sizeof policies / sizeof *policies; p++) {
        kvcrush_store *s = make_store(-1, NULL);
        kvcrush_sequence id = prefill(s);
        int64_t before = total_bytes(s), bytes[4], tokens[4];
        OK(kvcrush_compress(s, id, policies[p], 0.25, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, NULL));
        int64_t after = total_bytes(s);
        tier_counts(s, id, -1, bytes, tokens);
        /* The budget is a quarter of each stream's FP16 bytes, plus at most a page per tier of slack. */
        CHECK(after <= before / 4 + (int64_t)L * KVH * 4 * 32 * 258 + 4096, "%s: %lld -> %lld bytes", policies[p], (long long)before, (long long)after);
        CHECK(tokens[KVCRUSH_TIER_FP16] < (int64_t)L * KVH * N, "%s kept every token at FP16", policies[p]);
        CHECK(bytes[0] + bytes[1] + bytes[2] + bytes[3] == after, "%s: tier bytes sum to %lld, store %lld", policies[p],
              (long long)(bytes[0] + bytes[1] + bytes[2] + bytes[3]), (long long)after);
        FAILS(kvcrush_compress(s, id, policies[p], 0.25, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, NULL),
              KVCRUSH_ERROR_STATE, "not a fresh FP16 prefill");
        kvcrush_store_destroy(s);
    }
    /* Unbudgeted policies. */
    kvcrush_store *s = make_store(-1, NULL);
    kvcrush_sequence id = prefill(s), other = prefill(s);
    int64_t bytes[4], tokens[4];
    OK(kvcrush_compress(s, id, "uncompressed", 0, NULL, 0, 0, NULL));
    OK(kvcrush_compress(s, id, "uniform-int4", 0, NULL, 0, 0, NULL));
    tier_counts(s, id, 0, bytes, tokens);
    CHECK(tokens[KVCRUSH_TIER_INT4] == KVH * N && tokens[KVCRUSH_TIER_FP16] == 0, "uniform-int4: %lld at INT4", (long long)tokens[2]);
    tier_counts(s, id, 1, NULL, NULL);
    FAILS(kvcrush_tier_counts(s, id, 2, bytes, tokens), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer 2");
    FAILS(kvcrush_tier_counts(s, 1234, -1, bytes, tokens), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence 1234");

    /* Errors, each leaving `other` a fresh prefill. */
    const float *const *o = (const float *const *)obs_;
    size_t oc = (size_t)QH * OBS * D;
    int64_t before = total_bytes(s);
    FAILS(kvcrush_compress(s, other, NULL, 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_NULL_POINTER, "policy is NULL");
    FAILS(kvcrush_compress(s, other, "bogus", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_POLICY, "unknown base 'bogus'");
    FAILS(kvcrush_compress(s, other, "snapkv+fast", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_POLICY, "unknown modifier");
    FAILS(kvcrush_compress(s, other, "preset:3x", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_POLICY, "unknown preset");
    FAILS(kvcrush_compress(s, other, "snapkv", NAN, o, oc, OBS, NULL), KVCRUSH_ERROR_POLICY, "budget must be finite");
    FAILS(kvcrush_compress(s, other, "snapkv", -1, o, oc, OBS, NULL), KVCRUSH_ERROR_POLICY, "budget");
    FAILS(kvcrush_compress(s, other, "snapkv", 0.01, o, oc, OBS, NULL), KVCRUSH_ERROR_POLICY, "sinks and recent window");
    FAILS(kvcrush_compress(s, other, "snapkv", 0.25, NULL, 0, 0, NULL), KVCRUSH_ERROR_POLICY, "give observation queries");
    FAILS(kvcrush_compress(s, other, "snapkv", 0.25, NULL, oc, OBS, NULL), KVCRUSH_ERROR_NULL_POINTER, "observation_queries");
    const float *half[L] = {obs_[0], NULL};
    FAILS(kvcrush_compress(s, other, "snapkv", 0.25, half, oc, OBS, NULL), KVCRUSH_ERROR_NULL_POINTER, "observation_queries[1] is NULL");
    FAILS(kvcrush_compress(s, other, "snapkv", 0.25, o, oc - 1, OBS, NULL), KVCRUSH_ERROR_INVALID_ARGUMENT, "observation_queries[0] has");
    obs_[1][3] = NAN;
    FAILS(kvcrush_compress(s, other, "snapkv", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_INVALID_VALUE, "observation_queries[1][head 0][token 0][element 3]");
    obs_[1][3] = 0;
    FAILS(kvcrush_compress(s, 555, "snapkv", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence 555");
    CHECK(total_bytes(s) == before, "failed compressions changed the store");
    tier_counts(s, other, -1, bytes, tokens);
    CHECK(tokens[KVCRUSH_TIER_FP16] == (int64_t)L * KVH * N, "failed compressions moved tokens");
    OK(kvcrush_compress(s, other, "snapkv", 0.25, o, oc, OBS, NULL)); /* still a fresh prefill */

    /* States: empty, uneven layers, an observation window longer than the prompt. */
    kvcrush_sequence empty, uneven;
    OK(kvcrush_sequence_add(s, &empty));
    FAILS(kvcrush_compress(s, empty, "snapkv", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_STATE, "is empty");
    OK(kvcrush_sequence_add(s, &uneven));
    OK(kvcrush_append(s, uneven, 0, keys_, values_, (size_t)KVH * N * D, N, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    FAILS(kvcrush_compress(s, uneven, "snapkv", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_STATE, "layer 1 holds 0 tokens");
    kvcrush_sequence tiny;
    OK(kvcrush_sequence_add(s, &tiny));
    for (int l = 0; l < L; l++) OK(kvcrush_append(s, tiny, l, keys_, values_, (size_t)KVH * 8 * D, 8, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    FAILS(kvcrush_compress(s, tiny, "snapkv", 0.25, o, oc, OBS, NULL), KVCRUSH_ERROR_INVALID_ARGUMENT, "exceeds the 8 prompt tokens");
    /* A short prompt (8 < sinks + window): its protected tokens alone exceed a quarter. */
    FAILS(kvcrush_compress(s, tiny, "snapkv", 0.25, o, (size_t)QH * 4 * D, 4, NULL), KVCRUSH_ERROR_POLICY, "sinks and recent window");
    kvcrush_store_destroy(s);
}

static void test_presets_and_session(void) {
    kvcrush_store *s = make_store(-1, "4x");
    kvcrush_sequence id = prefill(s);
    int64_t fp16 = total_bytes(s);
    kvcrush_session *session = NULL;
    OK(kvcrush_compress(s, id, "preset:4x", 0, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, &session));
    CHECK(session != NULL, "no session");
    kvcrush_sequence sid = 99;
    int64_t replans = -1;
    OK(kvcrush_session_info(session, &sid, &replans));
    CHECK(sid == id && replans == 0, "session of %llu, %lld replans", (unsigned long long)sid, (long long)replans);
    OK(kvcrush_session_info(session, NULL, NULL));

    size_t nq = (size_t)QH * D, nkv = (size_t)KVH * D;
    float q[QH * D], out[QH * D], k[KVH * D], v[KVH * D];
    const int steps = 40;
    for (int step = 0; step < steps; step++) {
        for (int l = 0; l < L; l++) {
            fill(k, nkv), fill(v, nkv), fill(q, nq);
            OK(kvcrush_append(s, id, l, k, v, nkv, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR));
            OK(kvcrush_session_attend(session, l, q, nq, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR, out, nq));
            OK(kvcrush_session_appended(session, l, 1));
        }
        /* The budget (a quarter of the FP16 bytes of every token so far) holds at every step, within the
           page slack: one page of 64 slots per tier per stream. */
        int64_t budget = fp16 * (N + step + 1) / N / 4;
        CHECK(total_bytes(s) <= budget + (int64_t)L * KVH * 4 * 64 * 258, "step %d: %lld bytes, budget %lld", step,
              (long long)total_bytes(s), (long long)budget);
    }
    OK(kvcrush_session_info(session, NULL, &replans));
    CHECK(replans == (int64_t)L * (steps / 16), "%lld replans in %d steps", (long long)replans, steps);

    /* Errors. */
    FAILS(kvcrush_session_attend(session, 2, q, nq, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, out, nq), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer 2");
    FAILS(kvcrush_session_attend(session, 0, q, nq, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, nq), KVCRUSH_ERROR_NULL_POINTER, "output is NULL");
    FAILS(kvcrush_session_attend(session, 0, q, nq - 1, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, out, nq), KVCRUSH_ERROR_INVALID_ARGUMENT, "queries has");
    float huge[QH * D];
    for (size_t i = 0; i < nq; i++) huge[i] = 3e38f;
    FAILS(kvcrush_session_attend(session, 0, huge, nq, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, out, nq), KVCRUSH_ERROR_INVALID_VALUE, "can overflow");
    FAILS(kvcrush_session_appended(session, -1, 1), KVCRUSH_ERROR_INVALID_ARGUMENT, "layer -1");
    FAILS(kvcrush_session_appended(session, 0, (size_t)-1), KVCRUSH_ERROR_INVALID_ARGUMENT, "token_count");
    FAILS(kvcrush_session_appended(session, 0, (size_t)INT32_MAX + 1), KVCRUSH_ERROR_INVALID_ARGUMENT, "token_count");

    /* The session keeps its store alive; once its sequence is removed it reports that. */
    kvcrush_store_destroy(s);
    OK(kvcrush_session_attend(session, 0, q, nq, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, out, nq));
    kvcrush_session_destroy(session);

    s = make_store(-1, NULL);
    id = prefill(s);
    OK(kvcrush_compress(s, id, "snapkv", 0.5, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, &session));
    OK(kvcrush_sequence_remove(s, id));
    FAILS(kvcrush_session_attend(session, 0, q, nq, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, out, nq), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence");
    FAILS(kvcrush_session_appended(session, 0, 1), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence");
    kvcrush_session_destroy(session);
    /* Unbudgeted policies give no session. */
    id = prefill(s);
    session = (kvcrush_session *)0x1;
    OK(kvcrush_compress(s, id, "uniform-int8", 0, NULL, 0, 0, &session));
    CHECK(session == NULL, "uniform-int8 gave a session");
    kvcrush_store_destroy(s);
}

static void test_fork(void) {
    kvcrush_store *s = make_store(-1, NULL);
    kvcrush_sequence a = prefill(s), f;
    int64_t bytes = total_bytes(s), ba[4], bf[4], ta[4], tf[4];
    OK(kvcrush_sequence_fork(s, a, &f));
    CHECK(total_bytes(s) == bytes, "fork allocated: %lld -> %lld", (long long)bytes, (long long)total_bytes(s));
    tier_counts(s, a, -1, ba, ta);
    tier_counts(s, f, -1, bf, tf);
    CHECK(memcmp(ba, bf, sizeof ba) == 0 && memcmp(ta, tf, sizeof ta) == 0, "fork counts differ");
    float k[KVH * D], v[KVH * D];
    fill(k, KVH * D), fill(v, KVH * D);
    OK(kvcrush_append(s, f, 0, k, v, KVH * D, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
    int64_t la, lf;
    OK(kvcrush_sequence_length(s, a, 0, &la));
    OK(kvcrush_sequence_length(s, f, 0, &lf));
    CHECK(la == N && lf == N + 1, "lengths %lld %lld", (long long)la, (long long)lf);
    /* Compressing the fork leaves the original untouched. */
    kvcrush_sequence g;
    OK(kvcrush_sequence_fork(s, a, &g));
    OK(kvcrush_compress(s, g, "tiered", 0.25, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, NULL));
    tier_counts(s, a, -1, ba, ta);
    CHECK(ta[KVCRUSH_TIER_FP16] == (int64_t)L * KVH * N, "original changed by its fork's compression");
    kvcrush_store_destroy(s);
}

static int read_file(const char *path, unsigned char **data, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = malloc(*size);
    size_t got = fread(*data, 1, *size, f);
    fclose(f);
    return got == (size_t)*size;
}

static void write_file(const char *path, const unsigned char *data, long size) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, size, f);
    fclose(f);
}

static void test_snapshot(const char *dir) {
    char path[512], other[512];
    snprintf(path, sizeof path, "%s/store.kvcs", dir);
    snprintf(other, sizeof other, "%s/broken.kvcs", dir);
    kvcrush_store *s = make_store(1 << 24, NULL);
    kvcrush_sequence a = prefill(s), b = prefill(s), f;
    OK(kvcrush_compress(s, b, "tiered", 0.25, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, NULL));
    OK(kvcrush_sequence_fork(s, a, &f));
    OK(kvcrush_store_save(s, path, NULL, 0));
    kvcrush_store *r = NULL;
    OK(kvcrush_store_load(path, &r));
    kvcrush_config c;
    OK(kvcrush_store_config(r, &c));
    CHECK(c.byte_limit == 1 << 24 && c.layers == L && c.preset == NULL, "restored config");
    CHECK(total_bytes(r) == total_bytes(s), "restored bytes %lld, saved %lld", (long long)total_bytes(r), (long long)total_bytes(s));
    kvcrush_sequence ids[4];
    size_t count;
    OK(kvcrush_sequences(r, ids, 4, &count));
    CHECK(count == 3 && ids[0] == a && ids[1] == b && ids[2] == f, "restored ids");
    size_t nq = (size_t)QH * 2 * D;
    float *q = malloc(nq * 4), *o1 = malloc(nq * 4), *o2 = malloc(nq * 4);
    fill(q, nq);
    for (int l = 0; l < L; l++)
        for (int i = 0; i < 2; i++) {
            kvcrush_sequence id = i ? b : a;
            OK(kvcrush_attend(s, id, l, q, nq, 2, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, o1, nq, NULL, 0));
            OK(kvcrush_attend(r, id, l, q, nq, 2, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, o2, nq, NULL, 0));
            CHECK(memcmp(o1, o2, nq * 4) == 0, "layer %d sequence %d: restored attention differs", l, i);
        }
    /* New ids continue after the restored ones. */
    kvcrush_sequence n;
    OK(kvcrush_sequence_add(r, &n));
    CHECK(n > f, "new id %llu after %llu", (unsigned long long)n, (unsigned long long)f);
    kvcrush_store_destroy(r);

    /* A subset. */
    OK(kvcrush_store_save(s, other, &b, 1));
    OK(kvcrush_store_load(other, &r));
    OK(kvcrush_sequences(r, ids, 4, &count));
    CHECK(count == 1 && ids[0] == b, "subset: %zu", count);
    kvcrush_store_destroy(r);

    /* Errors. */
    kvcrush_sequence twice[2] = {a, a}, unknown = 999;
    FAILS(kvcrush_store_save(s, NULL, NULL, 0), KVCRUSH_ERROR_NULL_POINTER, "path is NULL");
    FAILS(kvcrush_store_save(s, other, twice, 2), KVCRUSH_ERROR_INVALID_ARGUMENT, "named twice");
    FAILS(kvcrush_store_save(s, other, &unknown, 1), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "no sequence 999");
    FAILS(kvcrush_store_save(s, "/nonexistent-dir/x.kvcs", NULL, 0), KVCRUSH_ERROR_IO, "errno");
    r = (kvcrush_store *)0x1;
    FAILS(kvcrush_store_load("/nonexistent-dir/x.kvcs", &r), KVCRUSH_ERROR_SNAPSHOT, "snapshot");
    unsigned char *data;
    long size;
    CHECK(read_file(path, &data, &size), "cannot read %s", path);
    write_file(other, (const unsigned char *)"not a snapshot at all", 21);
    FAILS(kvcrush_store_load(other, &r), KVCRUSH_ERROR_SNAPSHOT, "bad magic");
    write_file(other, data, size / 2);
    FAILS(kvcrush_store_load(other, &r), KVCRUSH_ERROR_SNAPSHOT, "truncated");
    data[size / 2] ^= 0x40;
    write_file(other, data, size);
    FAILS(kvcrush_store_load(other, &r), KVCRUSH_ERROR_SNAPSHOT, "corrupted");
    write_file(other, data, 0);
    FAILS(kvcrush_store_load(other, &r), KVCRUSH_ERROR_SNAPSHOT, "snapshot");
    CHECK(r == (kvcrush_store *)0x1, "output written on failure");
    free(data), free(q), free(o1), free(o2);
    kvcrush_store_destroy(s);
}

/* ---- Threads -------------------------------------------------------------------------------- */

struct worker { kvcrush_store *store; kvcrush_sequence sequence; int failed; };

static void *attend_worker(void *arg) {
    struct worker *w = arg;
    float q[QH * D], out[QH * D];
    for (size_t i = 0; i < QH * D; i++) q[i] = (float)((int)(i % 17) - 8) / 16;
    for (int i = 0; i < 200; i++)
        if (kvcrush_attend(w->store, w->sequence, i % L, q, QH * D, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, out, QH * D, NULL, 0) != KVCRUSH_OK)
            w->failed++;
    /* A failure on this thread leaves its own message; other threads' messages are their own. */
    if (kvcrush_attend(w->store, 12345, 0, q, QH * D, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR, NULL, out, QH * D, NULL, 0) !=
            KVCRUSH_ERROR_UNKNOWN_SEQUENCE || !strstr(kvcrush_last_error(), "12345"))
        w->failed++;
    return NULL;
}

static void test_threads(void) {
    kvcrush_store *s = make_store(-1, NULL);
    struct worker w[2] = {{s, prefill(s), 0}, {s, prefill(s), 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, attend_worker, &w[i]);
    /* Meanwhile: appends, forks, removals and compressions of other sequences. */
    float k[KVH * D], v[KVH * D];
    fill(k, KVH * D), fill(v, KVH * D);
    for (int i = 0; i < 20; i++) {
        kvcrush_sequence id = prefill(s), f;
        OK(kvcrush_sequence_fork(s, w[0].sequence, &f));
        OK(kvcrush_append(s, f, 0, k, v, KVH * D, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_HEAD_MAJOR));
        OK(kvcrush_compress(s, id, "snapkv", 0.25, (const float *const *)obs_, (size_t)QH * OBS * D, OBS, NULL));
        OK(kvcrush_sequence_remove(s, id));
        OK(kvcrush_sequence_remove(s, f));
    }
    FAILS(kvcrush_sequence_remove(s, 777), KVCRUSH_ERROR_UNKNOWN_SEQUENCE, "777");
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK(w[0].failed == 0 && w[1].failed == 0, "thread failures %d %d", w[0].failed, w[1].failed);
    CHECK(strstr(kvcrush_last_error(), "777") != NULL, "main thread message replaced: %s", kvcrush_last_error());
    kvcrush_store_destroy(s);
}

/* ---- README example (kept verbatim in the README) -------------------------------------------- */

static int readme_example(void) {
    /* --- README C example starts --- */
    kvcrush_config config;
    kvcrush_config_init(&config);
    config.layers = 1, config.query_heads = 9, config.kv_heads = 3, config.head_dim = 64;
    kvcrush_store *store;
    if (kvcrush_store_create(&config, &store) != KVCRUSH_OK) { fprintf(stderr, "%s\n", kvcrush_last_error()); return 1; }
    kvcrush_sequence seq;
    kvcrush_sequence_add(store, &seq);

    /* A 300-token prompt, keys and values [token][kv_head][head_dim] as a runtime produces them. */
    enum { TOKENS = 300 };
    static float keys[TOKENS * 3 * 64], values[TOKENS * 3 * 64], window[9 * 32 * 64], query[9 * 64], out[9 * 64];
    for (int i = 0; i < TOKENS * 3 * 64; i++) keys[i] = (float)(i % 7) / 7, values[i] = (float)(i % 5) / 5;
    for (int i = 0; i < 9 * 32 * 64; i++) window[i] = (float)(i % 3) / 3;
    for (int i = 0; i < 9 * 64; i++) query[i] = (float)(i % 11) / 11;
    kvcrush_append(store, seq, 0, keys, values, TOKENS * 3 * 64, TOKENS, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR);

    /* Compress to a quarter of the FP16 bytes, scored by the prompt's last 32 queries. */
    const float *observation[1] = {window};
    kvcrush_status status = kvcrush_compress(store, seq, "tiered", 0.25, observation, 9 * 32 * 64, 32, NULL);
    if (status != KVCRUSH_OK) { fprintf(stderr, "compress: %s\n", kvcrush_last_error()); return 1; }

    /* Decode attention of one query per head over every tier. */
    kvcrush_attend(store, seq, 0, query, 9 * 64, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR, NULL, out, 9 * 64, NULL, 0);

    /* Bad input is a status and a message, never a crash. */
    if (kvcrush_append(store, 42, 0, keys, values, 3 * 64, 1, KVCRUSH_F32, KVCRUSH_LAYOUT_TOKEN_MAJOR) != KVCRUSH_OK)
        printf("expected: %s\n", kvcrush_last_error()); /* kvcrush_append: no sequence 42 in the store */

    int64_t bytes[KVCRUSH_TIER_COUNT], tokens[KVCRUSH_TIER_COUNT];
    kvcrush_tier_counts(store, seq, -1, bytes, tokens);
    printf("fp16 %lld, int8 %lld, int4 %lld tokens\n", (long long)tokens[0], (long long)tokens[1], (long long)tokens[2]);
    kvcrush_store_destroy(store);
    /* --- README C example ends --- */
    CHECK(tokens[0] + tokens[1] + tokens[2] + tokens[3] < 3 * TOKENS, "README example dropped nothing");
    CHECK(isfinite(out[0]), "README example output %g", out[0]);
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    uint64_t seed = 2026;
    printf("kvcrush_test: library %s, seed %llu\n", kvcrush_version(), (unsigned long long)seed);
    rng_state = seed;
    keys_ = malloc((size_t)L * KVH * N * D * 4), values_ = malloc((size_t)L * KVH * N * D * 4);
    fill(keys_, (size_t)L * KVH * N * D), fill(values_, (size_t)L * KVH * N * D);
    for (int l = 0; l < L; l++) obs_[l] = malloc((size_t)QH * OBS * D * 4), fill(obs_[l], (size_t)QH * OBS * D);

    test_library();
    test_create();
    test_null_store();
    test_sequences();
    test_append_errors();
    test_layouts_and_attention();
    test_byte_limit();
    test_compress();
    test_presets_and_session();
    test_fork();
    test_snapshot(dir);
    test_threads();
    CHECK(readme_example() == 0, "README example failed");

    free(keys_), free(values_);
    for (int l = 0; l < L; l++) free(obs_[l]);
    printf("kvcrush_test: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
