/*
 * kvcrush.h: the C ABI of KVCrush, a paged mixed-precision KV cache (libKVCrushC).
 *
 * One store holds many sequences; each sequence has one stream per (layer, KV head). Tokens enter
 * at FP16 (kvcrush_append), are read back through one dequantising decode-attention path
 * (kvcrush_attend), and move down tiers (FP16 -> INT8 -> INT4 -> INT2 -> dropped) when a sequence
 * is compressed (kvcrush_compress) or while a decode session keeps it within its budget.
 *
 * Status and messages. Every function that can fail returns a kvcrush_status. KVCRUSH_OK means it
 * did what it says; any other status means it changed nothing (no store, sequence, session or
 * output argument is modified, except that output buffers of kvcrush_attend may hold partial
 * results) and kvcrush_last_error() returns a message saying what was wrong. Bad input (null
 * pointers, wrong sizes, unknown sequence ids, out-of-range indices, non-finite values, unknown
 * policy or preset names, a corrupt snapshot, an exhausted byte limit) is always reported this
 * way, never by aborting the process. Passing a pointer that is not null but does not point to
 * what the function expects (a destroyed handle, a buffer shorter than its stated length) is
 * undefined behaviour, as everywhere in C.
 *
 * Ownership. Handles (kvcrush_store, kvcrush_session) are created by this library and released
 * with their destroy function, exactly once. Buffers passed in are borrowed for the duration of the
 * call only. Strings returned by the library are owned by it (lifetimes stated per function).
 *
 * Thread safety. Every kvcrush_store function may be called from any thread at any time on the
 * same store: functions that change a store (marked "writes") run one at a time; functions that
 * only read it ("reads") run in parallel with each other. A kvcrush_session must be used by one
 * thread at a time (different sessions, even of one store, may be used in parallel).
 *
 * Layouts (row-major, element counts in the function docs):
 *   KVCRUSH_LAYOUT_HEAD_MAJOR   [head][token][head_dim]   (the store's own order: no copy for FP32)
 *   KVCRUSH_LAYOUT_TOKEN_MAJOR  [token][head][head_dim]   (what most runtimes produce)
 * where head is the KV head for keys/values and the query head for queries and outputs.
 * Grouped-query attention: query head h reads KV head h / (query_heads / kv_heads).
 */
#ifndef KVCRUSH_H
#define KVCRUSH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header's ABI; kvcrush_abi_version() returns the library's. */
#define KVCRUSH_ABI_VERSION 1

/* Result of every fallible call. */
typedef enum kvcrush_status {
    KVCRUSH_OK = 0,
    KVCRUSH_ERROR_NULL_POINTER = 1,     /* a required pointer argument is null */
    KVCRUSH_ERROR_INVALID_ARGUMENT = 2, /* a size, count, index, layout, dtype or configuration field is wrong */
    KVCRUSH_ERROR_UNKNOWN_SEQUENCE = 3, /* no sequence with this id in the store */
    KVCRUSH_ERROR_INVALID_VALUE = 4,    /* a non-finite value, or one beyond FP16's range (+-65504) */
    KVCRUSH_ERROR_BYTE_LIMIT = 5,       /* the store's byte limit would be exceeded */
    KVCRUSH_ERROR_POLICY = 6,           /* an unknown policy or preset name, or a budget it cannot meet */
    KVCRUSH_ERROR_STATE = 7,            /* the sequence is not in the state the call needs (e.g. not a fresh prefill) */
    KVCRUSH_ERROR_SNAPSHOT = 8,         /* a snapshot file is unreadable, corrupt, or does not fit */
    KVCRUSH_ERROR_IO = 9                /* a file could not be written */
} kvcrush_status;

/* Element type of input buffers. */
typedef enum kvcrush_dtype {
    KVCRUSH_F32 = 0, /* float */
    KVCRUSH_F16 = 1  /* IEEE binary16, as uint16_t bit patterns */
} kvcrush_dtype;

/* Order of a buffer's elements (see the layouts above). */
typedef enum kvcrush_layout {
    KVCRUSH_LAYOUT_HEAD_MAJOR = 0,
    KVCRUSH_LAYOUT_TOKEN_MAJOR = 1
} kvcrush_layout;

/* Storage tiers, indices into the per-tier arrays below. */
enum { KVCRUSH_TIER_FP16 = 0, KVCRUSH_TIER_INT8 = 1, KVCRUSH_TIER_INT4 = 2, KVCRUSH_TIER_INT2 = 3, KVCRUSH_TIER_COUNT = 4 };

/* A sequence id (unique in its store, never reused by it). */
typedef uint64_t kvcrush_sequence;

/* A store (opaque). */
typedef struct kvcrush_store kvcrush_store;

/* A decode session: keeps one sequence within its compression budget while generating (opaque). */
typedef struct kvcrush_session kvcrush_session;

/*
 * The shape of a model's cache and how the store keeps it. Fill with kvcrush_config_init, then
 * set the fields.
 */
typedef struct kvcrush_config {
    uint32_t struct_size;    /* sizeof(kvcrush_config); set by kvcrush_config_init */
    int32_t layers;          /* transformer layers, 1...65536 */
    int32_t query_heads;     /* attention heads per layer, 1...65536 */
    int32_t kv_heads;        /* KV heads per layer; must divide query_heads */
    int32_t head_dim;        /* elements of one head vector, 1...4096 */
    int32_t page_capacity;   /* token slots per page, 1...65536 (default 32; a preset sets its own) */
    int64_t byte_limit;      /* upper bound on the bytes of all pages, or -1 for none (default) */
    float attention_scale;   /* scale of query.key scores; 0 means 1/sqrt(head_dim) (default) */
    int32_t attend_threads;  /* threads kvcrush_attend spreads KV heads over; 0 = all cores (default) */
    const char *preset;      /* NULL (default: the standard tier formats) or a preset name ("2x",
                                "4x", "6x", "8x", with or without "preset:"): the preset's page capacity,
                                INT4 formats and value rotation, overriding page_capacity. Copied by
                                kvcrush_store_create. */
} kvcrush_config;

/* ---- Library ---------------------------------------------------------------------------- */

/* The library version, e.g. "0.1.0". Static string. Thread-safe. */
const char *kvcrush_version(void);

/* The ABI version the library implements (compare with KVCRUSH_ABI_VERSION). Thread-safe. */
uint32_t kvcrush_abi_version(void);

/*
 * The message of the last call on this thread that failed, or "" if the last call succeeded.
 * Owned by the library, valid until the next kvcrush_* call on the same thread. Thread-safe (one
 * message per thread).
 */
const char *kvcrush_last_error(void);

/* Fills *config with the defaults (shape fields 0: they must be set). Thread-safe. */
void kvcrush_config_init(kvcrush_config *config);

/*
 * Presets, least compression first. kvcrush_preset_count() of them; kvcrush_preset_info gives
 * preset `index`'s name (static string), budget (fraction of the FP16 cache) and page capacity;
 * any output pointer may be NULL. Thread-safe.
 */
size_t kvcrush_preset_count(void);
kvcrush_status kvcrush_preset_info(size_t index, const char **name, double *budget, int32_t *page_capacity);

/* ---- Stores ------------------------------------------------------------------------------ */

/* Creates an empty store from *config; *store receives the handle. */
kvcrush_status kvcrush_store_create(const kvcrush_config *config, kvcrush_store **store);

/*
 * Releases a store handle (NULL is ignored). Sessions of the store keep it alive until they are
 * destroyed too. Must not run concurrently with other calls on the same handle.
 */
void kvcrush_store_destroy(kvcrush_store *store);

/*
 * The store's configuration. config->preset is the preset name the store was created with (owned
 * by the store, valid while it lives) or NULL (including for a store restored from a snapshot, whose
 * formats are the snapshot's). Reads.
 */
kvcrush_status kvcrush_store_config(const kvcrush_store *store, kvcrush_config *config);

/* ---- Sequences --------------------------------------------------------------------------- */

/* Adds an empty sequence; *sequence receives its id. Allocates no pages. Writes. */
kvcrush_status kvcrush_sequence_add(kvcrush_store *store, kvcrush_sequence *sequence);

/*
 * Forks `sequence`: the new one (*fork) shares every page with it until either changes a page
 * (copy-on-write), as a shared prompt prefix does. Allocates nothing. Writes.
 */
kvcrush_status kvcrush_sequence_fork(kvcrush_store *store, kvcrush_sequence sequence, kvcrush_sequence *fork);

/* Removes a sequence; pages no other sequence shares are freed. Writes. */
kvcrush_status kvcrush_sequence_remove(kvcrush_store *store, kvcrush_sequence sequence);

/*
 * The store's sequences in creation order: *count receives how many there are; the first
 * min(count, capacity) ids are written to ids (which may be NULL when capacity is 0). Reads.
 */
kvcrush_status kvcrush_sequences(const kvcrush_store *store, kvcrush_sequence *ids, size_t capacity, size_t *count);

/* Tokens ever appended to `layer` of `sequence` (the position the next token gets). Reads. */
kvcrush_status kvcrush_sequence_length(const kvcrush_store *store, kvcrush_sequence sequence, int32_t layer, int64_t *length);

/* ---- Appending and attention ------------------------------------------------------------- */

/*
 * Appends `token_count` tokens to every KV head of `layer` at FP16, at the next positions.
 * keys and values hold kv_heads * token_count * head_dim elements each (`element_count` states it
 * and is checked) of type `dtype` in `layout`. FP32 head-major input is read in place.
 * Errors: INVALID_VALUE for a non-finite value or one beyond +-65504 (the message names layer, KV
 * head, token and element), BYTE_LIMIT if the new pages do not fit. Writes.
 */
kvcrush_status kvcrush_append(kvcrush_store *store, kvcrush_sequence sequence, int32_t layer,
                              const void *keys, const void *values, size_t element_count, size_t token_count,
                              kvcrush_dtype dtype, kvcrush_layout layout);

/*
 * Decode attention of `query_count` queries per query head over `layer` of `sequence`.
 *
 * queries: query_heads * query_count * head_dim elements (`query_element_count`) of `dtype` in
 *   `layout`; output: the same count of floats (`output_element_count`), written in the same
 *   layout. Each output row is softmax(scale * q.K) V over the stored tokens of its KV head whose
 *   position is <= the query's position, whatever tier they sit in; a query that sees no token
 *   gets zeros.
 * query_positions: NULL (every query sees every stored token), or query_count positions (the
 *   causal limit of each query, e.g. a prefill chunk just appended: length-query_count ... length-1).
 * weights: NULL, or query_heads * query_count * length floats (`weight_count`, length =
 *   kvcrush_sequence_length), [query_head][query][position]: the weight each query put on each
 *   position (0 for positions not stored or not visible). Each row sums to 1 within FP32 rounding.
 * Error bound: relative to exact attention over the stored (decoded) rows, FP32 rounding only.
 * Errors: INVALID_VALUE for a non-finite query, or a query row so large that a score could overflow
 *   FP32 (scale * ||q||_1 * sqrt(head_dim) * 65504 > FLT_MAX / 4), whose softmax would be meaningless.
 * Reads (runs in parallel with other reads; uses up to config.attend_threads threads).
 */
kvcrush_status kvcrush_attend(const kvcrush_store *store, kvcrush_sequence sequence, int32_t layer,
                              const void *queries, size_t query_element_count, size_t query_count,
                              kvcrush_dtype dtype, kvcrush_layout layout, const int32_t *query_positions,
                              float *output, size_t output_element_count, float *weights, size_t weight_count);

/* ---- Compression ------------------------------------------------------------------------- */

/*
 * Compresses a freshly prefilled sequence (every layer holds the same n tokens, all at FP16) with
 * `policy` to `budget`, scoring tokens by the attention of the prompt's last queries.
 *
 * policy: a name as in `kvcrush run`: "uncompressed" (nothing happens), "uniform-int8|int4|int2",
 *   the budgeted "streaming", "h2o", "snapkv", "tova", "random", "pyramid", "tiered", "plain" with
 *   modifiers "+tiered", "+plain", "+kvcrush" (share 0.3, INT4, alternate anchor), "+mikv", "+int2";
 *   or a preset "preset:2x|4x|8x" (the preset's plain plan; best on a store created with that preset).
 * budget: bytes each stream may keep as a fraction of its FP16 bytes (sinks 4 and recent window 32
 *   included), finite and >= 0; ignored by unbudgeted names; for a preset, 0 means its own budget.
 * observation_queries: NULL when observation_count is 0, else `layers` pointers, each to
 *   query_heads * observation_count * head_dim floats, head-major (`observation_element_count` per
 *   layer): the queries of the prompt's last observation_count positions (n - observation_count ...
 *   n-1), after RoPE. Score-based policies need at least one; SnapKV uses 32.
 * session: NULL, or where a decode session is returned (NULL for policies that keep no budget) that
 *   keeps the budget while generating; the plan then leaves FP16 headroom for it.
 * Errors: STATE (not a fresh prefill), POLICY (unknown name, or a budget below the sinks and recent
 *   window), BYTE_LIMIT, INVALID_VALUE (non-finite queries). Writes.
 */
kvcrush_status kvcrush_compress(kvcrush_store *store, kvcrush_sequence sequence, const char *policy, double budget,
                                const float *const *observation_queries, size_t observation_element_count,
                                size_t observation_count, kvcrush_session **session);

/*
 * Decode step, part 1: kvcrush_attend over the session's sequence (every query sees every stored
 * token; weights are not returned) that also adds the attention weights to the session's scores.
 * Reads the store; writes the session.
 */
kvcrush_status kvcrush_session_attend(kvcrush_session *session, int32_t layer,
                                      const void *queries, size_t query_element_count, size_t query_count,
                                      kvcrush_dtype dtype, kvcrush_layout layout, float *output, size_t output_element_count);

/*
 * Decode step, part 2: after kvcrush_append of `token_count` tokens to `layer` of the session's
 * sequence, re-plans the layer within the budget once the preset's (or the page capacity's) number
 * of new tokens has arrived. On error (BYTE_LIMIT, POLICY) nothing changed, the session included:
 * the call may be repeated. Writes the store and the session.
 */
kvcrush_status kvcrush_session_appended(kvcrush_session *session, int32_t layer, size_t token_count);

/* The session's sequence and the re-plans it has carried out (any pointer may be NULL). */
kvcrush_status kvcrush_session_info(const kvcrush_session *session, kvcrush_sequence *sequence, int64_t *replan_count);

/* Releases a session (NULL is ignored). */
void kvcrush_session_destroy(kvcrush_session *session);

/* ---- Memory ------------------------------------------------------------------------------ */

/* Bytes of every page in use, each counted once (pages shared by forks once). Reads. */
kvcrush_status kvcrush_byte_count(const kvcrush_store *store, int64_t *bytes);

/*
 * Per tier (indices KVCRUSH_TIER_*), the bytes of the pages and the tokens of `sequence` over
 * `layer`'s streams, or every layer's when layer is -1 (a page shared with a fork counts in both).
 * Either array may be NULL; each has KVCRUSH_TIER_COUNT entries. Reads.
 */
kvcrush_status kvcrush_tier_counts(const kvcrush_store *store, kvcrush_sequence sequence, int32_t layer,
                                   int64_t bytes[KVCRUSH_TIER_COUNT], int64_t tokens[KVCRUSH_TIER_COUNT]);

/* ---- Snapshots --------------------------------------------------------------------------- */

/*
 * Saves `sequences` (count ids, distinct; or every sequence when sequences is NULL) to `path`
 * atomically (temporary file, fsync, rename): on failure the file at path is as it was. Reads.
 */
kvcrush_status kvcrush_store_save(const kvcrush_store *store, const char *path,
                                  const kvcrush_sequence *sequences, size_t count);

/*
 * A new store restored from the snapshot at `path`: its configuration, its sequences under their
 * original ids. The whole file is validated first (magic, version, checksums, every count and
 * value): a corrupt or truncated file is SNAPSHOT. *store receives the handle.
 */
kvcrush_status kvcrush_store_load(const char *path, kvcrush_store **store);

#ifdef __cplusplus
}
#endif

#endif /* KVCRUSH_H */
