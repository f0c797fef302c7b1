// Hot loops of the KVStore decode read path and the append path, for x86-64 CPUs with AVX-512
// (the files without a suffix) and with AVX2 + FMA + F16C (the `_avx2` files and functions).
// Every kernel has a Swift twin in KVQuantization that defines it and that tests hold it to; the
// Swift entries (`PageKernels`, `ValueCheck`, `RowCodec`) call these only on the `KernelPath`
// whose features they need, with the shapes each kernel states, and run the Swift path otherwise.
//
// Only the CPU probe and the bandwidth probe exist on every architecture; the kernels are declared
// and compiled on x86-64 only (Swift call sites are under `#if arch(x86_64)`). The sections below
// follow the source files: cpu.c, softmax.c, scores.c, scores_vnni.c, accumulate.c,
// accumulate_integer.c, conversion.c, then softmax_avx2.c, scores_avx2.c, scores_int_avx2.c, accumulate_avx2.c,
// conversion_avx2.c, encode_avx2.c (the write path on AVX2: `EncodeKernels`), int3_avx2.c and
// lloydmax_avx2.c, weights_avx2.c, then matvec_avx2.c (the model runner's weight kernels, called from KVModel's
// `WeightKernels` on its own `WeightKernelPath`).
//
// Layouts (d = headDim, all row-major):
//   queries / prepared queries:  R rows × d floats
//   scores / weights:            R rows × `stride` floats (the first n used)
//   FP16 rows:                   n rows × d halves (little-endian bit patterns)
//   code rows:                   n rows × `rowBytes` bytes (codes packed little-end first, then,
//                                for grouped rows, (scale, zero) FP16 pairs per group at `codeBytes`)
// Prepared channelwise queries are *permuted* within blocks (see kvk_prepare_channelwise).
#ifndef CKVKERNELS_H
#define CKVKERNELS_H

#include <stddef.h>
#include <stdint.h>

// MARK: cpu.c

/// Bits of `kvk_cpu_features()`.
/// AVX-512 F, BW, VL and DQ with F16C and FMA (and the OS saving their state): the kernels below.
#define KVK_CPU_AVX512 0x1u
/// AVX512-VNNI (`vpdpbusd`), for kvk_prepare_channelwise_vnni / kvk_scores_channelwise_vnni.
#define KVK_CPU_AVX512_VNNI 0x2u
/// AVX512-VBMI (`vpermb`, `vpermt2b`), with VNNI for kvk_accumulate_integer.
#define KVK_CPU_AVX512_VBMI 0x4u
/// AVX2 with F16C and FMA: the `…_avx2` kernels (read path, encoders of encode_avx2.c, weights).
#define KVK_CPU_AVX2 0x8u

/// The `KVK_CPU_…` features of this CPU (0 on other architectures). Each bit is reported on its
/// own: the kernels of a feature set need all of its bits (VNNI scores: AVX512 | AVX512_VNNI).
unsigned kvk_cpu_features(void);

/// Sum of `count` floats, read as four concurrent streams (a memory-bandwidth probe for
/// benchmarks): AVX-512 loads when the CPU has them, else portable C (eight partial sums).
double kvk_read_sum(const float *p, size_t count);

/// Largest headDim of the VNNI kernels: the int32 dots |Σ a_c·code_c| ≤ d·255·127 stay exact in
/// int32 up to d = 66311, and convert to FP32 exactly (< 2²⁴) up to d = 518; 512 keeps both.
#define KVK_VNNI_MAX_HEAD_DIM 512

/// Largest headDim of the AVX2 integer scores (scores_int_avx2.c): their int16 lanes add one
/// `vpmaddubsw` pair (|·| ≤ 2·15·127 = 3810) per 32 channels, below 2¹⁵ up to d = 256.
#define KVK_AVX2_INT_MAX_HEAD_DIM 256

#if defined(__x86_64__)

// MARK: softmax.c (KVK_CPU_AVX512)

/// out[i] = exp(x[i]) for i < count, by the algorithm of `PageKernels.expReference` (bit-exact).
void kvk_exp(const float *x, float *out, long count);

/// One page of online softmax, per row r < R: pm = max_j s_j; if pm = −∞ the row's weights become
/// 0 and nothing else changes; else M = max(m_r, pm), c = exp(m_r − M), l_r ← l_r·c, out_r ← out_r·c
/// (only when c ≠ 1), s_j ← exp(s_j − M) (0 for −∞), l_r ← l_r + Σ_j s_j (16-lane partial sums), m_r ← M.
void kvk_softmax_page(float *s, long R, long n, long stride, float *m, float *l, float *out, long d);

// MARK: scores.c (KVK_CPU_AVX512; d a multiple of 64)

/// scores[r·stride + j] = scale · (q_r · key_j) for FP16 keys.
void kvk_scores_fp16(const float *q, long R, long d, const uint16_t *keys, long n, float scale,
                     float *scores, long stride);

/// Folds R query rows into one page's per-channel (scale, zero) FP16 parameters (`params`, d pairs):
/// qs[r·d + π(c)] = q[r·d + c]·scale_c (π: the block permutation of `bits`), zt[r] = Σ_c q·zero_c
/// (16-lane partial sums). π is the identity for 8 bits; for 4 bits, within each 32-channel block,
/// channel 2k+h goes to 16h+k; for 2 bits, within each 64-channel block, channel 4k+t goes to 16t+k.
void kvk_prepare_channelwise(int bits, const float *q, long R, long d, const uint16_t *params,
                             float *qs, float *zt);

/// scores[r·stride + j] = scale · (Σ_c qs_r[π(c)]·code_jc + zt[r]) for channelwise code rows and
/// the output of kvk_prepare_channelwise.
void kvk_scores_channelwise(int bits, const float *qs, const float *zt, long R, long d, const uint8_t *codes,
                            long rowBytes, long n, float scale, float *scores, long stride);

// MARK: scores_vnni.c (KVK_CPU_AVX512 | KVK_CPU_AVX512_VNNI; d a multiple of 64, ≤ KVK_VNNI_MAX_HEAD_DIM, else traps)

/// Splits R query rows, folded into one page's channelwise (scale, zero) FP16 parameters, into two
/// int8 pieces per channel (see `PageKernels.prepareChannelwiseVNNIReference` for the arithmetic):
/// qs_c = q_c·scale_c, m = max_c |qs_c|, σ0 = m/127, a0_c = clamp(rint(qs_c·(1/σ0)), ±127),
/// r_c = fma(−σ0, a0_c, qs_c), σ1 = σ0/254, a1_c = clamp(rint(r_c·(1/σ1)), ±127);
/// zt = Σ_c q_c·zero_c (lane c mod 16 by fma in channel order, then halves folded 8, 4, 2, 1).
/// m < 2⁻⁹⁶ (zero queries included): σ0 = σ1 = 0 and a = 0; m not finite: σ0 = σ1 = NaN, a = 0.
/// Output per row r: a[r·2d + π(c)] = a0_c, a[r·2d + d + π(c)] = a1_c; coef[4r..4r+2] = σ0, σ1, zt.
/// π is the byte order the unpacked codes come out in: channels are cut greedily from 0 into blocks
/// of B = 64 (8 bits), 128 then 64 (4 bits), 256 then 128 then 64 (2 bits) channels; with k = 8/bits
/// codes per byte, channel b0 + k·i + t of the block at b0 sits at b0 + t·(B/k) + i (identity for 8 bits).
void kvk_prepare_channelwise_vnni(int bits, const float *q, long R, long d, const uint16_t *params, int8_t *a,
                                  float *coef);

/// scores[r·stride + j] = fl(fl(fma(σ0, D0, fma(σ1, D1, zt)))·scale) with the exact int32 dots
/// D0 = Σ_c a0_c·code_jc, D1 = Σ_c a1_c·code_jc (converted to FP32 exactly), for the output of
/// kvk_prepare_channelwise_vnni and channelwise code rows (same layout as kvk_scores_channelwise).
void kvk_scores_channelwise_vnni(int bits, const int8_t *a, const float *coef, long R, long d, const uint8_t *codes,
                                 long rowBytes, long n, float scale, float *scores, long stride);

// MARK: accumulate.c (KVK_CPU_AVX512; d a multiple of 64)

/// out[r·d + i] ← fma(w_rj, v_ji, out[r·d + i]) for j = 0..<n in order, FP16 value rows.
void kvk_accumulate_fp16(const float *w, long R, long stride, long n, const uint16_t *rows, long d, float *out);

/// As kvk_accumulate_fp16 for grouped rows, v_ji = fma(scale_k, code_ji, zero_k) (= zero + scale·code
/// exactly). Needs groupSize a multiple of 16 (8 bits), 32 (4 bits) or 64 (2 bits), d a multiple of
/// groupSize, and d/groupSize ≤ 32.
void kvk_accumulate_grouped(int bits, long groupSize, const float *w, long R, long stride, long n,
                            const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out);

// MARK: accumulate_integer.c (KVK_CPU_AVX512 | KVK_CPU_AVX512_VNNI | KVK_CPU_AVX512_VBMI)

/// The weighted sum of grouped value rows in the integer domain, per output row r < R: for each
/// block of up to 64 tokens (j0 = 0, 64, …) and group k, with a_j = w_j·scale_jk (FP32):
///   m = max_j |a_j|, σ0 = m/127, σ1 = σ0/254 (divisors 1 where these are 0),
///   a0_j = clamp(rne(a_j·(1/σ0)), ±127), a1_j = clamp(rne(fma(−σ0, a0_j, a_j)·(1/σ1)), ±127),
///   Z = (z0 + z1) + (z2 + z3) with z_t = Σ_{j ≡ t mod 4} w_j·zero_jk (products rounded, summed in order),
///   dot_p[i] = Σ_j a_p,j·code_ji (exact, int32),
///   out[r·d + i] += fma(σ0, dot0[i], fma(σ1, dot1[i], Z)).
/// Bit-identical to `PageKernels.accumulateIntegerReference`. Needs bits 4 (groupSize a multiple
/// of 32) or 8 (a multiple of 16), codeBytes a multiple of 64 and at most 256, d/groupSize ≤ 32.
void kvk_accumulate_integer(int bits, long groupSize, const float *w, long R, long stride, long n,
                            const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out);

// MARK: conversion.c (KVK_CPU_AVX512)

/// Index of the first x[i] that no format may store (NaN, ±∞, or |x| > 65504), or −1.
long kvk_first_invalid(const float *x, long count);

/// out[i] = the FP16 bit pattern of x[i], rounded to nearest even (x already checked storable).
void kvk_float_to_half(const float *x, uint16_t *out, long count);

// MARK: softmax_avx2.c (KVK_CPU_AVX2)

/// As kvk_exp (bit-exact with `PageKernels.expReference`).
void kvk_exp_avx2(const float *x, float *out, long count);

/// As kvk_softmax_page, with 8-lane partial sums for l.
void kvk_softmax_page_avx2(float *s, long R, long n, long stride, float *m, float *l, float *out, long d);

// MARK: scores_avx2.c (KVK_CPU_AVX2; d a multiple of 16, or of 8 for the channelwise entries)

/// As kvk_scores_fp16.
void kvk_scores_fp16_avx2(const float *q, long R, long d, const uint16_t *keys, long n, float scale,
                          float *scores, long stride);

/// As kvk_prepare_channelwise, with the unit order of the AVX2 kernels: π is the identity for 8 and
/// 2 bits; for 4 bits, within each 16-channel unit, channel 2k+h goes to 8h+k, and within a last
/// 8-channel half unit (d ≡ 8 mod 16) to 4h+k. zt by 8-lane partial sums.
void kvk_prepare_channelwise_avx2(int bits, const float *q, long R, long d, const uint16_t *params,
                                  float *qs, float *zt);

/// As kvk_scores_channelwise, for the output of kvk_prepare_channelwise_avx2.
void kvk_scores_channelwise_avx2(int bits, const float *qs, const float *zt, long R, long d, const uint8_t *codes,
                                 long rowBytes, long n, float scale, float *scores, long stride);

// MARK: scores_int_avx2.c (KVK_CPU_AVX2; INT4, d a multiple of 32, ≤ KVK_AVX2_INT_MAX_HEAD_DIM, else traps)

/// kvk_prepare_channelwise_vnni followed by kvk_scores_channelwise_vnni for 4-bit per-channel key
/// pages, bit for bit (`PageKernels.scoresChannelwiseVNNIReference`), on AVX2: the pieces are
/// computed per tile of four query rows into the kernel's own scratch, and the exact int32 dots
/// come from `vpmaddubsw` (int16 lanes, exact for these widths and head dims) and `vpmaddwd`.
void kvk_scores_channelwise_int_avx2(const float *q, long R, long d, const uint16_t *params, const uint8_t *codes,
                                     long rowBytes, long n, float scale, float *scores, long stride);

// MARK: accumulate_avx2.c (KVK_CPU_AVX2; d a multiple of 16)

/// As kvk_accumulate_fp16 (bit-exact with `PageKernels.accumulateReference`).
void kvk_accumulate_fp16_avx2(const float *w, long R, long stride, long n, const uint16_t *rows, long d, float *out);

/// As kvk_accumulate_grouped (bit-exact), for groupSize a multiple of 16 dividing d.
void kvk_accumulate_grouped_avx2(int bits, long groupSize, const float *w, long R, long stride, long n,
                                 const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out);

// MARK: conversion_avx2.c (KVK_CPU_AVX2)

/// As kvk_first_invalid.
long kvk_first_invalid_avx2(const float *x, long count);

/// As kvk_float_to_half.
void kvk_float_to_half_avx2(const float *x, uint16_t *out, long count);

// MARK: encode_avx2.c (KVK_CPU_AVX2): the write path (append, quantise), any d

/// As kvk_first_invalid (AVX2).
long kvk_encode_first_invalid_avx2(const float *x, long count);

/// As kvk_float_to_half (AVX2 + F16C).
void kvk_encode_fp16_avx2(const float *x, uint16_t *out, long count);

/// out[i] = the float of the FP16 bit pattern h[i] (exact; F16C).
void kvk_decode_fp16_avx2(const uint16_t *h, float *out, long count);

/// Quantises n grouped rows of x (n × d floats, each finite with |x| ≤ 65504) to `bits`-bit codes
/// in groups of `groupSize` (a multiple of 8; the last group may be shorter): row r at
/// rows + r·rowBytes, codes packed in its first codeBytes bytes, then (scale, zero) FP16 per group.
/// Bit-identical to `RowCodec.encodeReference` (bits 2, 4 or 8).
void kvk_encode_grouped_avx2(int bits, long groupSize, const float *x, long n, long d, uint8_t *rows,
                             long rowBytes, long codeBytes);

/// Quantises a page of n ≥ 1 keys (x: n × d floats, finite, |x| ≤ 65504) per channel: token t's
/// codes at codes + t·rowBytes, the d (scale, zero) FP16 pairs at params. Bit-identical to
/// `ChannelwiseKeyCodec.encodePageReference` (bits 2, 4 or 8).
void kvk_encode_channelwise_avx2(int bits, const float *x, long n, long d, uint8_t *codes, long rowBytes,
                                 uint16_t *params);

/// Lloyd–Max level codes of count8 values (a multiple of 8): codes[i] = the number of the
/// thresholdCount ascending thresholds t with x[i] / norm > t (norm > 0, x finite). As `RowCodec.levelCode`.
void kvk_encode_lloydmax_codes_avx2(const float *x, long count8, float norm, const float *thresholds, int thresholdCount,
                                    uint32_t *codes);

// MARK: int3_avx2.c, lloydmax_avx2.c (KVK_CPU_AVX2; d a multiple of 8)
//
// The kernels of the INT3 and Lloyd–Max formats. They run on the avx2 kernel path and on the avx512 one
// (the AVX-512 kernels above do not take these formats). Rows are tiled by four.

/// scores[r·stride + j] = fl(fl(Σ_c qs_r[c]·code_jc + zt[r])·scale) for per-channel INT3 code rows
/// (`rowBytes` apart) and a query folded into the page's parameters in natural channel order:
/// qs[r·d + c] = q_c·scale_c, zt[r] = Σ_c q_c·zero_c (as `ChannelwiseKeyCodec.prepare`).
void kvk_scores_channelwise_int3_avx2(const float *qs, const float *zt, long R, long d, const uint8_t *codes,
                                      long rowBytes, long n, float scale, float *scores, long stride);

/// out[r·d + i] ← fma(w_rj, v_ji, out[r·d + i]) for j = 0..<n in order, grouped INT3 value rows
/// (codes, then (scale, zero) FP16 pairs per group at `codeBytes`), v_ji = fma(scale_k, code_ji, zero_k).
/// Needs groupSize a multiple of 8.
void kvk_accumulate_int3_avx2(long groupSize, const float *w, long R, long stride, long n, const uint8_t *rows,
                              long rowBytes, long codeBytes, long d, float *out);

/// Mixed-width per-channel keys (`MixedChannelwiseKeyCodec`), d a multiple of 8: qs[r·d + π(j)] =
/// q_r[channels[j]]·scale_j and zt[r] = Σ_j q_r[channels[j]]·zero_j, with the page's (scale, zero) FP16
/// pairs in stored order (`params`, 2·d values). π is the identity except inside INT4 segments, where
/// each 16-channel unit holds its even, then its odd channels, and a final 8-channel half unit
/// 0, 2, 4, 6, 1, 3, 5, 7 (the order kvk_scores_mixed_avx2 unpacks codes in). `segments` as there.
void kvk_prepare_mixed_avx2(const float *q, long R, long d, const int32_t *channels, const uint16_t *params,
                            const int32_t *segments, long segmentCount, float *qs, float *zt);

/// scores[r·stride + j] = fl(fl(Σ_c qs_r[c]·code_jc + zt[r])·scale) over all d stored channels of a
/// mixed-width page of n tokens, in one pass per token: `segments` holds segmentCount quadruples
/// (bits ∈ {2, 3, 4, 8}, channel count (a multiple of 8), code bytes per row, row offset), in stored
/// order; segment k's code row j is at codes + n·rowOffset_k + j·rowBytes_k.
void kvk_scores_mixed_avx2(const float *qs, const float *zt, long R, long d, const int32_t *segments, long segmentCount,
                           const uint8_t *codes, long n, float scale, float *scores, long stride);

/// scores[r·stride + j] = fl(fl(fl(Σ_c q_rc·L[code_jc])·norm_j)·scale) for Lloyd–Max rows of `bits`
/// (2, 3 or 4) with the 16-entry level table `levels` (lanes ≥ 2^bits unused) and the row's FP16
/// norm at `codeBytes`.
void kvk_scores_lloydmax_avx2(int bits, const float *levels, const float *q, long R, long d, const uint8_t *rows,
                              long rowBytes, long codeBytes, long n, float scale, float *scores, long stride);

/// out[r·d + i] ← fma(w_rj, v_ji, out[r·d + i]) for j = 0..<n in order, Lloyd–Max rows,
/// v_ji = fl(norm_j · L[code_ji]).
void kvk_accumulate_lloydmax_avx2(int bits, const float *levels, const float *w, long R, long stride, long n,
                                  const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out);

// MARK: weights_avx2.c (KVK_CPU_AVX2)

/// Normalised weights of one row in position order: out[k] = s > −∞ ? expf(s − m) / l : 0 for
/// s = scores[order[k]], k < n (m the row's maximum score, l > 0 its softmax sum). The exp is glibc's
/// expf algorithm in four double lanes, bit-identical to glibc's expf for every x ≤ 0 (libm's expf
/// where s − m > 0); the division is IEEE float division. Equal bit for bit to
/// `PageKernels.normalizedWeightsPortable` where Swift's `exp(Float)` is glibc's expf (Linux).
void kvk_normalized_weights_avx2(const float *scores, const int32_t *order, long n, float m, float l, float *out);

#endif // __x86_64__

// MARK: matvec_avx2.c: weight kernels of the model runner (KVK_CPU_AVX2)
//
// Weight matrices as a GGUF file stores them: `rows` rows of `columns` values, row r at
// w + r·rowBytes, in the ggml type `type` (the `KVK_GGML_…` ids, ggml's `ggml_type`; block layouts
// in KVModel's `GGMLType`). `columns` is a multiple of the type's block size (32, or 256 for the
// K-quants); any width for F32 and F16. Each kernel uses the dequantised weights of ggml's
// `dequantize_row_*` and one summation order (the file's header comment), so the decode kernel, the
// prefill kernel and any split of rows give the same bits; `WeightKernels` in KVModel is the twin.

#define KVK_GGML_F32 0
#define KVK_GGML_F16 1
#define KVK_GGML_Q4_0 2
#define KVK_GGML_Q4_1 3
#define KVK_GGML_Q5_0 6
#define KVK_GGML_Q5_1 7
#define KVK_GGML_Q8_0 8
#define KVK_GGML_Q4_K 12
#define KVK_GGML_Q5_K 13
#define KVK_GGML_Q6_K 14

#if defined(__x86_64__)

/// out[r·outStride + k] = the dequantised weight k of row r, for r < rows, k < columns.
void kvk_weights_dequantize_avx2(int type, const void *w, long rowBytes, long rows, long columns, float *out, long outStride);

/// y[r] = w_r · x (8-lane order) for r < rows: the decode product on the stored blocks.
void kvk_weights_matvec_avx2(int type, const void *w, long rowBytes, long rows, long columns, const float *x, float *y);

/// The decode product with 16-bit activations. Per block b of 32 values (columns/32 blocks):
/// m = max_j |x_j|, dx[b] = m/32767, xq[32b + j] = rne(x_j·(32767/m)) (0 when m = 0), sx[b] = Σ_j x_j.
/// y[r] = sum8(acc) + off with, per piece b in order and int32 lane l < 8 (exact sums of codes q —
/// minus the offset of the symmetric types — times xq): I_hl = q_{16h+2l}·xq_{16h+2l} +
/// q_{16h+2l+1}·xq_{16h+2l+1} for the halves h = 0, 1; acc_l = fma(fl(a·dx[b]), I_0l + I_1l, acc_l)
/// (Q6_K, whose halves have scales a_0, a_1: one fma per half, h = 0 first); off = fma(c_b, sx[b], off)
/// for the affine types (c their offset). Block types only (not F32 / F16).
void kvk_weights_matvec_q16_avx2(int type, const void *w, long rowBytes, long rows, long columns,
                                 const int16_t *xq, const float *dx, const float *sx, float *y);

/// y[t·yStride + r] = w_r · x_t (8-lane order) for r < rows, t < count, FP32 rows w_r at w + r·wStride
/// and x_t at x + t·xStride: the prefill product on a dequantised panel, tiles of 3 rows × 4 vectors.
void kvk_matmul_f32_avx2(const float *w, long wStride, long rows, long columns, const float *x, long xStride,
                         long count, float *y, long yStride);

/// The prefill product with 16-bit activations on a packed integer panel. `kvk_weights_pack_q16_avx2`
/// packs rows 0 ..< rows (block types only) in groups of 16 (the last padded with zero codes and
/// parameters): per group g and piece b of 32 columns, codes[((g·P + b)·16 + s)·32 + 2r + e] = q of
/// element 2s + e of row 16g + r (as int16: minus the offset for the symmetric types), and
/// params[(g·P + b)·48 + {0, 16, 32} + r] = a0, a1, c (the piece's halves' scales, its affine offset
/// or 0); P = columns/32. Sizes: 512·P int16 and 48·P floats per group.
void kvk_weights_pack_q16_avx2(int type, const void *w, long rowBytes, long rows, long columns, int16_t *codes, float *params);

/// The 16-bit quantisation of `count` vectors of `columns` values (a multiple of 32), per block b:
/// m = max_j |x_j|, sx[b] = Σ_j x_j (lanes j mod 8 summed in order, then the 8-lane sum); non-finite
/// m or sx: dx[b] = NaN, codes 0; m < 2⁻⁹⁶: dx[b] = 0, codes 0; else dx[b] = m/32767 and
/// xq[32b + j] = rne(x_j·fl(32767/m)). Arrays [count][columns] and [count][columns/32].
void kvk_quantize_q16_avx2(const float *x, long count, long columns, int16_t *xq, float *dx, float *sx);

/// y[t·yStride + r] for r < rows, t < count, on a packed panel and quantised vectors: per piece b in
/// order, I = Σ_j q_j·xq_j (exact int32; Q6_K: per half), acc = fma(fl(I), fl(a·dx[b]), acc) (Q6_K: low
/// half then high), then off = fma(c_b, sx[b], off) over the pieces (affine types), y = acc + off.
/// The AVX2 kernel (8 rows × 4 vectors, vpmaddwd) and the AVX-512 VNNI one (16 rows × 8 vectors,
/// vpdpwssd) give the same bits.
void kvk_weights_matmul_q16_avx2(int type, long rows, long columns, const int16_t *codes, const float *params,
                                 const int16_t *xq, const float *dx, const float *sx, long count, float *y, long yStride);
/// As `kvk_weights_matmul_q16_avx2` (needs `KVK_CPU_AVX512 | KVK_CPU_AVX512_VNNI`).
void kvk_weights_matmul_q16_vnni(int type, long rows, long columns, const int16_t *codes, const float *params,
                                 const int16_t *xq, const float *dx, const float *sx, long count, float *y, long yStride);

#endif // __x86_64__
#endif
