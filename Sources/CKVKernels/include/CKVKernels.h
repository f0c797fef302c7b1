// Hot loops of the KVStore decode read path and the append path, for x86-64 CPUs with AVX-512.
// Every kernel has a Swift twin in KVQuantization that defines it and that tests hold it to; the
// Swift entries (`PageKernels`, `ValueCheck`, `RowCodec`) call these only on the `avx512`
// `KernelPath`, with the shapes each kernel states, and run the Swift path otherwise.
//
// Only the CPU probe and the bandwidth probe exist on every architecture; the kernels are declared
// and compiled on x86-64 only (Swift call sites are under `#if arch(x86_64)`). The sections below
// follow the source files: cpu.c, softmax.c, scores.c, scores_vnni.c, accumulate.c,
// accumulate_integer.c, conversion.c, int3_avx2.c, lloydmax_avx2.c and encode_avx2.c (the write path
// on AVX2: `EncodeKernels`).
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
/// AVX2 with F16C and FMA: the encoders of encode_avx2.c.
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
// MARK: int3_avx2.c, lloydmax_avx2.c (KVK_CPU_AVX2; d a multiple of 8)
//
// The kernels of the INT3 and Lloyd–Max formats. They run on any CPU with AVX2, F16C and FMA, AVX-512
// ones included (the AVX-512 kernels above do not take these formats). Rows are tiled by four.

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

/// scores[r·stride + j] = fl(fl(fl(Σ_c q_rc·L[code_jc])·norm_j)·scale) for Lloyd–Max rows of `bits`
/// (2, 3 or 4) with the 16-entry level table `levels` (lanes ≥ 2^bits unused) and the row's FP16
/// norm at `codeBytes`.
void kvk_scores_lloydmax_avx2(int bits, const float *levels, const float *q, long R, long d, const uint8_t *rows,
                              long rowBytes, long codeBytes, long n, float scale, float *scores, long stride);

/// out[r·d + i] ← fma(w_rj, v_ji, out[r·d + i]) for j = 0..<n in order, Lloyd–Max rows,
/// v_ji = fl(norm_j · L[code_ji]).
void kvk_accumulate_lloydmax_avx2(int bits, const float *levels, const float *w, long R, long stride, long n,
                                  const uint8_t *rows, long rowBytes, long codeBytes, long d, float *out);

#endif // __x86_64__
#endif
