/* Per-format matmul building blocks. For every weight format FMT the matmul tiles use:
 *
 *   RFC_UNIT_FMT, RFC_UNIT_BYTES_FMT   elements and bytes of one step along a weight row
 *   RFC_ACT_FMT                        the activation kind it reads: rfc_quantize_row_<kind>
 *   rfc_w_fmt                          one step of one weight row, loaded (unpacked)
 *   rfc_wload_fmt(&w, p)               load the step at p
 *   rfc_wdot_fmt(acc, &w, act, t, u)   acc += that step . token t's step u of the activation
 *   rfc_wdot8_fmt(acc, w, act, t, u0)  8 steps at once (decode)
 *
 * A tile loads each weight step once and dots it with several tokens, so rfc_wload does
 * all per-weight work (unpacking nibbles, converting scales) and rfc_wdot the rest.
 *
 * With AVX2 + FMA, Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 (against q8_32 activations) and the k-quants
 * Q2_K..Q6_K (against q8_k) use int8 dot products (_mm256_maddubs_epi16, _mm256_madd_epi16). Every
 * other format, and every format without AVX2, dequantizes a step to float32 and uses
 * float activations: simpler, and exact up to float rounding.
 *
 * This file holds the kernels; the format table (artifacts/formats.py) instantiates them:
 * templates/cpu_formats.h.j2, rendered after it, defines RFC_UNIT_/RFC_ACT_ from each row's
 * cpu_unit and cpu_act, the float step (RFC_DEFINE_FLOAT_STEP) of every quantized format
 * where it has no int8 dot, the tails of the float formats and rfc_wdot8 step by step where
 * no grouped kernel (RFC_HAS_DOT8_FMT) is here.
 * Requires rfc_blocks.h, the format constants, cpu_simd.h and cpu_act.h.
 */
#ifndef RFC_CPU_DOT_H
#define RFC_CPU_DOT_H

/* ---- float steps: dequantize, then fma against the float activation ------------------- */

/* acc += w[0:n] . x[0:n], n a multiple of 8 */
static inline rfc_acc rfc_dot_f32(rfc_acc acc, const float *RFC_RESTRICT w, const float *RFC_RESTRICT x, int n) {
#ifdef RFC_AVX2
    for (int i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc);
    return acc;
#else
    float s[8] = {0};
    for (int i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += w[i + j] * x[i + j];
    return acc + (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
#endif
}

#define RFC_DEFINE_FLOAT_STEP(fmt, QK)                                                      \
    typedef struct { float v[QK]; } rfc_w_##fmt;                                            \
    static inline void rfc_wload_##fmt(rfc_w_##fmt *w, const uint8_t *p) {                  \
        rfc_dequant_block_##fmt(p, w->v);                                                   \
    }                                                                                       \
    static inline rfc_acc rfc_wdot_##fmt(rfc_acc acc, const rfc_w_##fmt *w, const rfc_act *a, size_t t, int u) { \
        return rfc_dot_f32(acc, w->v, a->x + t * a->K + (size_t)(QK) * u, QK);       \
    }

/* F32, F16, BF16: steps of 8 elements, converted straight into a vector; rows of any length,
 * the last K % 8 elements summed by rfc_wtail_<fmt>(row, x, k0, n) = sum_{k0<=k<k0+n} w[k] x[k]. */
#define RFC_DEFINE_TAIL(fmt, TS)                                                                    \
    static inline float rfc_wtail_##fmt(const uint8_t *row, const float *x, int k0, int n) {        \
        float s = 0.0f, v;                                                                          \
        for (int k = k0; k < k0 + n; k++) {                                                         \
            rfc_dequant_block_##fmt(row + (size_t)(TS) * k, &v);                                    \
            s += v * x[k];                                                                          \
        }                                                                                           \
        return s;                                                                                   \
    }

#ifdef RFC_AVX2
#define RFC_DEFINE_VEC8_STEP(fmt, LOAD)                                                     \
    typedef struct { __m256 v; } rfc_w_##fmt;                                               \
    static inline void rfc_wload_##fmt(rfc_w_##fmt *w, const uint8_t *p) { w->v = LOAD; }   \
    static inline rfc_acc rfc_wdot_##fmt(rfc_acc acc, const rfc_w_##fmt *w, const rfc_act *a, size_t t, int u) { \
        return _mm256_fmadd_ps(w->v, _mm256_loadu_ps(a->x + t * a->K + 8 * (size_t)u), acc); \
    }
RFC_DEFINE_VEC8_STEP(f32, _mm256_loadu_ps((const float *)p))
RFC_DEFINE_VEC8_STEP(f16, rfc_load8_f16((const uint16_t *)p))
RFC_DEFINE_VEC8_STEP(bf16, rfc_load8_bf16((const uint16_t *)p))
#else
typedef struct { float v[8]; } rfc_w_f32;
typedef struct { float v[8]; } rfc_w_f16;
typedef struct { float v[8]; } rfc_w_bf16;
#define RFC_DEFINE_SCALAR8_STEP(fmt)                                                        \
    static inline void rfc_wload_##fmt(rfc_w_##fmt *w, const uint8_t *p) { rfc_dequant_row_##fmt(p, w->v, 8); } \
    static inline rfc_acc rfc_wdot_##fmt(rfc_acc acc, const rfc_w_##fmt *w, const rfc_act *a, size_t t, int u) { \
        return rfc_dot_f32(acc, w->v, a->x + t * a->K + 8 * (size_t)u, 8);          \
    }
RFC_DEFINE_SCALAR8_STEP(f32)
RFC_DEFINE_SCALAR8_STEP(f16)
RFC_DEFINE_SCALAR8_STEP(bf16)
#endif

/* Quantized formats: one step is one GGUF block; without AVX2 (and for a format without an
 * int8 dot) a float step (RFC_DEFINE_FLOAT_STEP), with AVX2 the int8 dots below. */
#ifdef RFC_AVX2
/* 32 weights as bytes (unsigned 0..31 for the offset formats, signed for Q8_0) and the
 * block's scale (and minimum) broadcast. */
typedef struct { __m256i q; __m256 d; } rfc_w32;
typedef struct { __m256i q; __m256 d; __m256 m; } rfc_w32m;
typedef rfc_w32 rfc_w_q8_0;
typedef rfc_w32 rfc_w_q4_0;
typedef rfc_w32 rfc_w_q5_0;
typedef rfc_w32m rfc_w_q4_1;
typedef rfc_w32m rfc_w_q5_1;

/* 16 packed bytes -> 32 nibbles: low nibbles (elements 0-15) then high (16-31). */
static inline __m256i rfc_nibbles32(const uint8_t *qs) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi32(raw, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* The 32 bits of qh as bytes 0x10 (bit set) or 0 (clear), element j from bit j. */
static inline __m256i rfc_bits32_x10(const uint8_t *qh) {
    uint32_t x32;
    memcpy(&x32, qh, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
    return _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

static inline __m256i rfc_act_q8(const rfc_act *a, size_t t, int u, size_t *i) {
    *i = t * (a->K / 32) + (size_t)u;
    return _mm256_loadu_si256((const __m256i *)(a->qs + t * a->K + 32 * (size_t)u));
}

/* Block u of a q8_32p activation in plain order (its two halves, see cpu_act.h). */
static inline __m256i rfc_act_q8p(const rfc_act *a, size_t t, int u, size_t *i) {
    const size_t nb = a->K / 32, pair = (size_t)u & ~(size_t)1;
    *i = t * nb + (size_t)u;
    const int8_t *base = a->qs + t * a->K + 32 * pair;
    if (pair + 1 < nb) {
        const int8_t *lo = base + 16 * ((size_t)u & 1);
        return _mm256_loadu2_m128i((const __m128i *)(lo + 32), (const __m128i *)lo);
    }
    return _mm256_loadu_si256((const __m256i *)base);
}

/* sum over the 8 int32 lanes of an unsigned-by-signed byte dot product */
static inline __m256i rfc_dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

static inline void rfc_wload_q8_0(rfc_w32 *w, const uint8_t *p) {
    const rfc_block_q8_0 *b = (const rfc_block_q8_0 *)p;
    w->q = _mm256_loadu_si256((const __m256i *)b->qs);
    w->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

static inline rfc_acc rfc_wdot_q8_0(rfc_acc acc, const rfc_w32 *w, const rfc_act *a, size_t t, int u) {
    size_t i;
    const __m256i y = rfc_act_q8(a, t, u, &i);
    const __m256i p = rfc_dot_u8s8(_mm256_sign_epi8(w->q, w->q), _mm256_sign_epi8(y, w->q));
    return _mm256_fmadd_ps(_mm256_mul_ps(w->d, _mm256_set1_ps(a->d[i])), _mm256_cvtepi32_ps(p), acc);
}

static inline void rfc_wload_q4_0(rfc_w32 *w, const uint8_t *p) {
    const rfc_block_q4_0 *b = (const rfc_block_q4_0 *)p;
    w->q = rfc_nibbles32(b->qs);
    w->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

/* Offset formats store q + off; sum((q + off) * y) - off * sum(y), with off * sum(y)
 * spread evenly over the 8 lanes (off is 8 or 16, so off / 8 * sum(y) is whole). */
static inline rfc_acc rfc_wdot_offset(rfc_acc acc, const rfc_w32 *w, const rfc_act *a, size_t t, int u, int off8) {
    size_t i;
    const __m256i y = rfc_act_q8p(a, t, u, &i);
    __m256i p = rfc_dot_u8s8(w->q, y);
    p = _mm256_sub_epi32(p, _mm256_set1_epi32(off8 * a->isum[i]));
    return _mm256_fmadd_ps(_mm256_mul_ps(w->d, _mm256_set1_ps(a->d[i])), _mm256_cvtepi32_ps(p), acc);
}

static inline rfc_acc rfc_wdot_q4_0(rfc_acc acc, const rfc_w32 *w, const rfc_act *a, size_t t, int u) {
    return rfc_wdot_offset(acc, w, a, t, u, 1);
}

static inline void rfc_wload_q5_0(rfc_w32 *w, const uint8_t *p) {
    const rfc_block_q5_0 *b = (const rfc_block_q5_0 *)p;
    w->q = _mm256_or_si256(rfc_nibbles32(b->qs), rfc_bits32_x10(b->qh));
    w->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

static inline rfc_acc rfc_wdot_q5_0(rfc_acc acc, const rfc_w32 *w, const rfc_act *a, size_t t, int u) {
    return rfc_wdot_offset(acc, w, a, t, u, 2);
}

/* Formats with a minimum: sum((d q + m) * dy y) = d dy sum(q y) + m dy sum(y). */
static inline rfc_acc rfc_wdot_min(rfc_acc acc, const rfc_w32m *w, const rfc_act *a, size_t t, int u) {
    size_t i;
    const __m256i y = rfc_act_q8p(a, t, u, &i);
    const __m256i p = rfc_dot_u8s8(w->q, y);
    const float dy = a->d[i];
    acc = _mm256_fmadd_ps(_mm256_mul_ps(w->d, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(p), acc);
    return _mm256_fmadd_ps(w->m, _mm256_set1_ps(dy * (float)a->isum[i] * 0.125f), acc);
}

static inline void rfc_wload_q4_1(rfc_w32m *w, const uint8_t *p) {
    const rfc_block_q4_1 *b = (const rfc_block_q4_1 *)p;
    w->q = rfc_nibbles32(b->qs);
    w->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
    w->m = _mm256_set1_ps(rfc_fp16_scalar(b->m));
}

static inline rfc_acc rfc_wdot_q4_1(rfc_acc acc, const rfc_w32m *w, const rfc_act *a, size_t t, int u) {
    return rfc_wdot_min(acc, w, a, t, u);
}

static inline void rfc_wload_q5_1(rfc_w32m *w, const uint8_t *p) {
    const rfc_block_q5_1 *b = (const rfc_block_q5_1 *)p;
    w->q = _mm256_or_si256(rfc_nibbles32(b->qs), rfc_bits32_x10(b->qh));
    w->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
    w->m = _mm256_set1_ps(rfc_fp16_scalar(b->m));
}

static inline rfc_acc rfc_wdot_q5_1(rfc_acc acc, const rfc_w32m *w, const rfc_act *a, size_t t, int u) {
    return rfc_wdot_min(acc, w, a, t, u);
}

/* ---- 8 blocks of one row at once (decode, one token) --------------------------------------
 * Each block's int8 dot product stays a vector of 8 int32 partial sums; the 8 vectors are
 * reduced together into one vector (lane j = block j), so converting to float, applying the
 * 8 weight scales (gathered) and the 8 activation scales costs one instruction each per
 * 8 blocks instead of per block. */

/* lane j = sum of the 8 lanes of p[j] */
static inline __m256i rfc_reduce8_epi32(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* the fp16 at byte `at` of 8 consecutive blocks of `ts` bytes, as floats (a tree of
 * unpacks: a hardware gather costs several times more on current x86 cores) */
static inline __m256 rfc_gather8_f16(const uint8_t *blk, int ts, int at) {
    __m128i v[8];
    for (int j = 0; j < 8; j++) {
        int32_t x;
        memcpy(&x, blk + (size_t)ts * j + at, 4);
        v[j] = _mm_cvtsi32_si128(x);
    }
    const __m128i a = _mm_unpacklo_epi32(_mm_unpacklo_epi16(v[0], v[1]), _mm_unpacklo_epi16(v[2], v[3]));
    const __m128i b = _mm_unpacklo_epi32(_mm_unpacklo_epi16(v[4], v[5]), _mm_unpacklo_epi16(v[6], v[7]));
    return _mm256_cvtph_ps(_mm_unpacklo_epi64(a, b));
}

/* Q8_0: 8 blocks' int8 dots against activation blocks u0..u0+7 (plain order), reduced. */
static inline __m256i rfc_dot8_q8_0(const uint8_t *w, const int8_t *y) {
    __m256i p[8];
    for (int j = 0; j < 8; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w + RFC_TS_Q8_0 * j + 2));
        const __m256i yv = _mm256_loadu_si256((const __m256i *)(y + 32 * j));
        p[j] = rfc_dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yv, q));
    }
    return rfc_reduce8_epi32(p);
}

/* 4-bit formats: two blocks per register (block 2k's nibbles in the low half, 2k+1's in the
 * high half), against the q8_32p activation whose pair layout matches. QS is the offset of
 * qs in a block, QH that of qh (or -1: no fifth bit). Returns lane j = block j. */
static inline __m256i rfc_dot8_nibbles(const uint8_t *w, int ts, int qs, int qh, const int8_t *y) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i p[4];
    for (int k = 0; k < 4; k++) {
        const uint8_t *a = w + (size_t)ts * (2 * k), *b = a + ts;
        const __m256i v = _mm256_loadu2_m128i((const __m128i *)(b + qs), (const __m128i *)(a + qs));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (qh >= 0) {
            const __m256i xa = rfc_bits32_x10(a + qh), xb = rfc_bits32_x10(b + qh);
            lo = _mm256_or_si256(lo, _mm256_permute2x128_si256(xa, xb, 0x20));
            hi = _mm256_or_si256(hi, _mm256_permute2x128_si256(xa, xb, 0x31));
        }
        const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y + 64 * k))),
                                           _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 64 * k + 32))));
        p[k] = _mm256_madd_epi16(s, _mm256_set1_epi16(1)); /* lanes 0-3: block 2k, 4-7: 2k+1 */
    }
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    /* h = blocks 0 2 4 6 | 1 3 5 7 */
    return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline __m256i rfc_dot8_q4_0(const uint8_t *w, const int8_t *y) { return rfc_dot8_nibbles(w, RFC_TS_Q4_0, 2, -1, y); }
static inline __m256i rfc_dot8_q5_0(const uint8_t *w, const int8_t *y) { return rfc_dot8_nibbles(w, RFC_TS_Q5_0, 6, 2, y); }
static inline __m256i rfc_dot8_q4_1(const uint8_t *w, const int8_t *y) { return rfc_dot8_nibbles(w, RFC_TS_Q4_1, 4, -1, y); }
static inline __m256i rfc_dot8_q5_1(const uint8_t *w, const int8_t *y) { return rfc_dot8_nibbles(w, RFC_TS_Q5_1, 8, 4, y); }

/* Symmetric and offset formats: sum_j dw_j dy_j (dot_j - off * ysum_j). */
#define RFC_DOT8_OFFSET(FMT, TS, OFF_SHIFT)                                                         \
    static inline rfc_acc rfc_wdot8_##FMT(rfc_acc acc, const uint8_t *w, const rfc_act *a, size_t t, int u0) { \
        const size_t i = t * (a->K / 32) + (size_t)u0;                                              \
        __m256i r = rfc_dot8_##FMT(w, a->qs + t * a->K + 32 * (size_t)u0);                          \
        if ((OFF_SHIFT) >= 0)                                                                       \
            r = _mm256_sub_epi32(r, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(a->isum + i)), (OFF_SHIFT) < 0 ? 0 : (OFF_SHIFT))); \
        const __m256 d = _mm256_mul_ps(rfc_gather8_f16(w, TS, 0), _mm256_loadu_ps(a->d + i));      \
        return _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(r), acc);                                      \
    }
RFC_DOT8_OFFSET(q8_0, RFC_TS_Q8_0, -1)
RFC_DOT8_OFFSET(q4_0, RFC_TS_Q4_0, 3)
RFC_DOT8_OFFSET(q5_0, RFC_TS_Q5_0, 4)

/* Formats with a minimum: sum_j dy_j (dw_j dot_j + m_j ysum_j). */
#define RFC_DOT8_MIN(FMT, TS)                                                                       \
    static inline rfc_acc rfc_wdot8_##FMT(rfc_acc acc, const uint8_t *w, const rfc_act *a, size_t t, int u0) { \
        const size_t i = t * (a->K / 32) + (size_t)u0;                                              \
        const __m256i r = rfc_dot8_##FMT(w, a->qs + t * a->K + 32 * (size_t)u0);                    \
        const __m256 dy = _mm256_loadu_ps(a->d + i);                                                \
        const __m256 ys = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(a->isum + i)));  \
        acc = _mm256_fmadd_ps(_mm256_mul_ps(rfc_gather8_f16(w, TS, 0), dy), _mm256_cvtepi32_ps(r), acc);   \
        return _mm256_fmadd_ps(_mm256_mul_ps(rfc_gather8_f16(w, TS, 2), dy), ys, acc);             \
    }
RFC_DOT8_MIN(q4_1, RFC_TS_Q4_1)
RFC_DOT8_MIN(q5_1, RFC_TS_Q5_1)

#define RFC_HAS_DOT8_Q8_0 1
#define RFC_HAS_DOT8_Q4_0 1
#define RFC_HAS_DOT8_Q5_0 1
#define RFC_HAS_DOT8_Q4_1 1
#define RFC_HAS_DOT8_Q5_1 1

/* ---- k-quants against q8_k: a step is a whole 256-element super-block ----------------
 * Every k-quant is sum_g d sc_g sum_{e in g} q_e y_e (- dmin m_g sum_{e in g} y_e) over its
 * sub-blocks g; the int8 sums run in maddubs (unsigned weights 0..63 by signed activations),
 * then one madd per 32 elements applies the sub-block scales, and the minimums (or the offset
 * of the signed formats) come from the activation's 16-element sums. */
typedef struct { const uint8_t *p; } rfc_wk;
typedef rfc_wk rfc_w_q2_k;
typedef rfc_wk rfc_w_q3_k;
typedef rfc_wk rfc_w_q4_k;
typedef rfc_wk rfc_w_q5_k;
typedef rfc_wk rfc_w_q6_k;

static inline void rfc_wload_q2_k(rfc_wk *w, const uint8_t *p) { w->p = p; }
static inline void rfc_wload_q3_k(rfc_wk *w, const uint8_t *p) { w->p = p; }
static inline void rfc_wload_q4_k(rfc_wk *w, const uint8_t *p) { w->p = p; }
static inline void rfc_wload_q5_k(rfc_wk *w, const uint8_t *p) { w->p = p; }
static inline void rfc_wload_q6_k(rfc_wk *w, const uint8_t *p) { w->p = p; }

/* 16 int16 scales, lanes 0-7 = scale 2 blk, lanes 8-15 = scale 2 blk + 1 (of 16 int8): the
 * scales of the two 16-element halves of 32-element piece blk, matching maddubs' lanes. */
static inline __m256i rfc_pick_scales16(__m128i sc8, int blk) {
    const __m128i pick = _mm_or_si128(_mm_set1_epi8((char)(2 * blk)), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
}

/* Q4_K/Q5_K: the 8 six-bit scales then the 8 six-bit mins as 16 int16 (ggml's
 * get_scale_min_k4, all at once). */
static inline __m256i rfc_k4_scales_mins(const uint8_t *scales) {
    uint32_t s[4];
    memcpy(s, scales, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    s[3] = ((s[2] >> 4) & m2) | (((s[1] >> 6) & m3) << 4);
    const uint32_t mins_lo = s[1] & m1;
    s[1] = (s[2] & m2) | (((s[0] >> 6) & m3) << 4);
    s[2] = mins_lo;
    s[0] &= m1;
    return _mm256_cvtepu8_epi16(_mm_set_epi32((int)s[3], (int)s[2], (int)s[1], (int)s[0]));
}

/* acc -= dmin sum_j min_j (sum of the 32 activations of sub-block j), sm from rfc_k4_scales_mins */
static inline rfc_acc rfc_k4_sub_mins(rfc_acc acc, __m256i sm, const int16_t *bsums, float dmin) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m128i pm = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), q8s);
    return _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_zextps128_ps256(_mm_cvtepi32_ps(pm)), acc);
}

/* Q4_K (fifth bits qh == NULL) and Q5_K: sub-block 2j is the low nibbles of qs[32j..], 2j+1
 * the high ones; Q5_K adds qh bit 2j (2j+1) of byte l as 16. rfc_k45_piece unpacks piece j
 * (elements 64j..64j+63): the two sub-blocks' values (lo, hi) and their scales as int16
 * lanes (sl, sh), from the scales broadcast to both halves and the fifth bits hb. */
static inline __attribute__((always_inline)) void rfc_k45_piece(const uint8_t *qs, const uint8_t *qh, __m256i hb,
        __m256i scales, int j, __m256i *lo, __m256i *hi, __m256i *sl, __m256i *sh) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    *sl = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)((4 * j) | ((4 * j + 1) << 8))));
    *sh = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)((4 * j + 2) | ((4 * j + 3) << 8))));
    const __m256i q4 = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
    *lo = _mm256_and_si256(q4, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
    if (qh) {
        *lo = _mm256_or_si256(*lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4));
        *hi = _mm256_or_si256(*hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4));
    }
}

static inline rfc_acc rfc_wdot_k45(rfc_acc acc, const uint8_t *qs, const uint8_t *qh, __m256i sm, float d,
                                   const int8_t *q8) {
    const __m256i scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
    const __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        __m256i lo, hi, sl, sh;
        rfc_k45_piece(qs, qh, hb, scales, j, &lo, &hi, &sl, &sh);
        const __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j)));
        const __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32)));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(sl, pl), _mm256_madd_epi16(sh, ph)));
    }
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
}

static inline rfc_acc rfc_wdot_q4_k(rfc_acc acc, const rfc_wk *w, const rfc_act *a, size_t t, int u) {
    const rfc_block_q4_k *b = (const rfc_block_q4_k *)w->p;
    const size_t i = t * (a->K / 256) + (size_t)u;
    const float dy = a->d[i];
    const __m256i sm = rfc_k4_scales_mins(b->scales);
    acc = rfc_k4_sub_mins(acc, sm, a->bsums + t * (a->K / 16) + 16 * (size_t)u, dy * rfc_fp16_scalar(b->dmin));
    return rfc_wdot_k45(acc, b->qs, NULL, sm, dy * rfc_fp16_scalar(b->d), a->qs + t * a->K + 256 * (size_t)u);
}

static inline rfc_acc rfc_wdot_q5_k(rfc_acc acc, const rfc_wk *w, const rfc_act *a, size_t t, int u) {
    const rfc_block_q5_k *b = (const rfc_block_q5_k *)w->p;
    const size_t i = t * (a->K / 256) + (size_t)u;
    const float dy = a->d[i];
    const __m256i sm = rfc_k4_scales_mins(b->scales);
    acc = rfc_k4_sub_mins(acc, sm, a->bsums + t * (a->K / 16) + 16 * (size_t)u, dy * rfc_fp16_scalar(b->dmin));
    return rfc_wdot_k45(acc, b->qs, b->qh, sm, dy * rfc_fp16_scalar(b->d), a->qs + t * a->K + 256 * (size_t)u);
}

/* Multi-token dots (rfc_wdotn_<fmt>): a few tokens (2 to RFC_DOTN_TT) against one
 * super-block of one row, with the same sums as rfc_wdot_<fmt> but the block's values and
 * scales unpacked once for all of them. rfc_wdot_<fmt> unpacks per token, so a decode step
 * of a few sequences paid the unpacking once per sequence. acc[i] += row . token t0 + i. */
#define RFC_DOTN_TT 4

/* Q4_K (qh == NULL) and Q5_K: 4 pieces of 64, each unpacked once and dotted with every token. */
static inline __attribute__((always_inline)) void rfc_wdotn_k45(__m256 acc[RFC_DOTN_TT], const uint8_t *qs,
        const uint8_t *qh, const uint8_t *scale_bytes, float d, float dmin, const rfc_act *a, size_t t0, const int nt,
        int u) {
    const size_t nbk = a->K / 256;
    const __m256i sm = rfc_k4_scales_mins(scale_bytes);
    const __m256i scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
    const __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i sumi[RFC_DOTN_TT];
    for (int i = 0; i < nt; i++) sumi[i] = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        __m256i lo, hi, sl, sh;
        rfc_k45_piece(qs, qh, hb, scales, j, &lo, &hi, &sl, &sh);
        for (int i = 0; i < nt; i++) {
            const int8_t *y = a->qs + (t0 + (size_t)i) * a->K + 256 * (size_t)u + 64 * (size_t)j;
            const __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)y));
            const __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 32)));
            sumi[i] = _mm256_add_epi32(sumi[i], _mm256_add_epi32(_mm256_madd_epi16(sl, pl), _mm256_madd_epi16(sh, ph)));
        }
    }
    for (int i = 0; i < nt; i++) {
        const size_t t = t0 + (size_t)i;
        const float dy = a->d[t * nbk + (size_t)u];
        acc[i] = rfc_k4_sub_mins(acc[i], sm, a->bsums + t * (a->K / 16) + 16 * (size_t)u, dy * dmin);
        acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dy * d), _mm256_cvtepi32_ps(sumi[i]), acc[i]);
    }
}

#define RFC_HAS_DOTN_Q4_K 1
static inline __attribute__((always_inline)) void rfc_wdotn_q4_k(__m256 acc[RFC_DOTN_TT], const uint8_t *p, const rfc_act *a,
        size_t t0, const int nt, int u) {
    const rfc_block_q4_k *b = (const rfc_block_q4_k *)p;
    rfc_wdotn_k45(acc, b->qs, NULL, b->scales, rfc_fp16_scalar(b->d), rfc_fp16_scalar(b->dmin), a, t0, nt, u);
}

#define RFC_HAS_DOTN_Q5_K 1
static inline __attribute__((always_inline)) void rfc_wdotn_q5_k(__m256 acc[RFC_DOTN_TT], const uint8_t *p, const rfc_act *a,
        size_t t0, const int nt, int u) {
    const rfc_block_q5_k *b = (const rfc_block_q5_k *)p;
    rfc_wdotn_k45(acc, b->qs, b->qh, b->scales, rfc_fp16_scalar(b->d), rfc_fp16_scalar(b->dmin), a, t0, nt, u);
}

/* Q2_K: 16 sub-blocks of 16 with 4-bit scale (low nibble) and min (high); element
 * 128 n + 32 j + l is bits 2j..2j+1 of qs[32 n + l]. */
static inline rfc_acc rfc_wdot_q2_k(rfc_acc acc, const rfc_wk *w, const rfc_act *a, size_t t, int u) {
    const rfc_block_q2_k *b = (const rfc_block_q2_k *)w->p;
    const size_t i = t * (a->K / 256) + (size_t)u;
    const int8_t *q8 = a->qs + t * a->K + 256 * (size_t)u;
    const int16_t *bsums = a->bsums + t * (a->K / 16) + 16 * (size_t)u;
    const float dy = a->d[i];
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i raw = _mm_loadu_si128((const __m128i *)b->scales);
    const __m128i sc8 = _mm_and_si128(raw, m4), mn8 = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    const __m256i pm = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mn8), _mm256_loadu_si256((const __m256i *)bsums));
    const __m256i m3 = _mm256_set1_epi8(0x03);
    __m256i sumi = _mm256_setzero_si256();
    for (int n = 0; n < 2; n++) {
        const __m256i q2 = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * n));
        for (int j = 0; j < 4; j++) {
            const int blk = 4 * n + j;
            const __m256i q = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), m3);
            const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(q8 + 32 * blk)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(rfc_pick_scales16(sc8, blk), p));
        }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * rfc_fp16_scalar(b->d)), _mm256_cvtepi32_ps(sumi), acc);
    return _mm256_fnmadd_ps(_mm256_set1_ps(dy * rfc_fp16_scalar(b->dmin)), _mm256_cvtepi32_ps(pm), acc);
}

/* Q3_K: 16 sub-blocks of 16 with signed 6-bit scales; element 128 n + 32 j + l is bits
 * 2j..2j+1 of qs[32 n + l] plus 4 if bit 4n + j of hmask[l] is set, minus 4 (the minus 4
 * comes from the activation sums). */
static inline rfc_acc rfc_wdot_q3_k(rfc_acc acc, const rfc_wk *w, const rfc_act *a, size_t t, int u) {
    const rfc_block_q3_k *b = (const rfc_block_q3_k *)w->p;
    const size_t i = t * (a->K / 256) + (size_t)u;
    const int8_t *q8 = a->qs + t * a->K + 256 * (size_t)u;
    const int16_t *bsums = a->bsums + t * (a->K / 16) + 16 * (size_t)u;
    /* ggml's kmask unpacking of the 16 six-bit scales, four at a time (rfc_q3_k_scales) */
    uint32_t s[4];
    memcpy(s, b->scales, 12);
    const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f, hi = s[2];
    s[2] = ((s[0] >> 4) & k2) | (((hi >> 4) & k1) << 4);
    s[3] = ((s[1] >> 4) & k2) | (((hi >> 6) & k1) << 4);
    s[0] = (s[0] & k2) | ((hi & k1) << 4);
    s[1] = (s[1] & k2) | (((hi >> 2) & k1) << 4);
    const __m128i sc8 = _mm_sub_epi8(_mm_set_epi32((int)s[3], (int)s[2], (int)s[1], (int)s[0]), _mm_set1_epi8(32));
    const __m256i corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_loadu_si256((const __m256i *)bsums));
    const __m256i m3 = _mm256_set1_epi8(0x03), one = _mm256_set1_epi8(1);
    const __m256i hm = _mm256_loadu_si256((const __m256i *)b->hmask);
    __m256i sumi = _mm256_setzero_si256();
    for (int n = 0; n < 2; n++) {
        const __m256i q2 = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * n));
        for (int j = 0; j < 4; j++) {
            const int blk = 4 * n + j;
            const __m256i h = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, blk), one), 2);
            const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), m3), h);
            const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(q8 + 32 * blk)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(rfc_pick_scales16(sc8, blk), p));
        }
    }
    sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 2));
    return _mm256_fmadd_ps(_mm256_set1_ps(a->d[i] * rfc_fp16_scalar(b->d)), _mm256_cvtepi32_ps(sumi), acc);
}

/* The 256 values of a Q6_K super-block as 8 vectors of 32 (0..63, stored as q + 32), in
 * element order: vector 4h + g holds elements 128h + 32g .. +31. Shared by the decode dot
 * product and the prefill pack (cpu_gemm.h). */
static inline __attribute__((always_inline)) void rfc_q6_k_unpack_half(const rfc_block_q6_k *b, int h, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x03);
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
    const __m256i lows[4] = {
        _mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
        _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
    for (int g = 0; g < 4; g++) {
        const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m3);
        q[g] = _mm256_or_si256(lows[g], _mm256_slli_epi16(hb, 4));
    }
}

static inline void rfc_q6_k_unpack(const rfc_block_q6_k *b, __m256i q[8]) {
    rfc_q6_k_unpack_half(b, 0, q);
    rfc_q6_k_unpack_half(b, 1, q + 4);
}

static inline rfc_acc rfc_wdot_q6_k(rfc_acc acc, const rfc_wk *w, const rfc_act *a, size_t t, int u) {
    const rfc_block_q6_k *b = (const rfc_block_q6_k *)w->p;
    const size_t i = t * (a->K / 256) + (size_t)u;
    const int8_t *q8 = a->qs + t * a->K + 256 * (size_t)u;
    const int16_t *bsums = a->bsums + t * (a->K / 16) + 16 * (size_t)u;
    const float d = a->d[i] * rfc_fp16_scalar(b->d);

    const __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
    /* values are stored as q + 32: subtract 32 * sum_j scale_j * (sum of sub-block j) */
    const __m256i corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_loadu_si256((const __m256i *)bsums));
    __m256i q6[8];
    rfc_q6_k_unpack(b, q6);
    __m256i sumi = _mm256_setzero_si256();
    for (int blk = 0; blk < 8; blk++) {
        const __m256i sc = rfc_pick_scales16(sc8, blk);
        const __m256i p = _mm256_maddubs_epi16(q6[blk], _mm256_loadu_si256((const __m256i *)(q8 + 32 * blk)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
    }
    sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 5));
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
}

/* The multi-token dot of Q6_K (see rfc_wdotn_k45). Unpacking per token made a batch-8 decode
 * step spend about 2x the time per weight on Q6_K tensors (a Q4_0 model's output matrix,
 * Q4_K_M's ffn_down) that it spends on the x8 layouts. One half super-block (4 vectors) is
 * unpacked at a time so that the values and RFC_DOTN_TT int32 sums fit AVX2's 16 registers. */
#define RFC_HAS_DOTN_Q6_K 1
static inline __attribute__((always_inline)) void rfc_wdotn_q6_k(__m256 acc[RFC_DOTN_TT], const uint8_t *p, const rfc_act *a,
        size_t t0, const int nt, int u) {
    const rfc_block_q6_k *b = (const rfc_block_q6_k *)p;
    const size_t nbk = a->K / 256;
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
    __m256i sumi[RFC_DOTN_TT];
    for (int i = 0; i < nt; i++) sumi[i] = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        __m256i q[4];
        rfc_q6_k_unpack_half(b, h, q);
        for (int g = 0; g < 4; g++) {
            const __m256i sc = rfc_pick_scales16(sc8, 4 * h + g);
            for (int i = 0; i < nt; i++) {
                const int8_t *y = a->qs + (t0 + (size_t)i) * a->K + 256 * (size_t)u + 32 * (size_t)(4 * h + g);
                const __m256i pr = _mm256_maddubs_epi16(q[g], _mm256_loadu_si256((const __m256i *)y));
                sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(sc, pr));
            }
        }
    }
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    const float dw = rfc_fp16_scalar(b->d);
    for (int i = 0; i < nt; i++) {
        const size_t t = t0 + (size_t)i;
        /* values are stored as q + 32: subtract 32 * sum_j scale_j * (sum of sub-block j) */
        const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bsums + t * (a->K / 16) + 16 * (size_t)u));
        const __m256i s = _mm256_sub_epi32(sumi[i], _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));
        acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(a->d[t * nbk + (size_t)u] * dw), _mm256_cvtepi32_ps(s), acc[i]);
    }
}
#endif /* RFC_AVX2 */

/* ---- Q4_Kx8 and Q5_Kx8 (artifacts/formats.py): one column is one super-block of 8 interleaved rows ----
 * rfc_x8col_q4_k(acc, col, a, t, b): lane r of acc += row r's super-block b . token t. A Q5_Kx8
 * column is a Q4_Kx8 one followed by the fifth bits (chunk j: bytes 4j..4j+3 of every row's qh),
 * so one kernel reads both (the rfc_x8col*_k45 below, q5 constant: 0 for Q4_K, 1 for Q5_K). */
#define RFC_X8COL_Q4_K 1184
#define RFC_X8COL_Q5_K (RFC_X8COL_Q4_K + 256)
#ifdef RFC_AVX2
/* Bit k of each byte of a fifth-bit chunk h as 16 or 0 (k a constant: the callers unroll pairs). */
static inline __attribute__((always_inline)) __m256i rfc_x8_bit16(__m256i h, const int k) {
    const __m256i s = k < 4 ? _mm256_slli_epi16(h, 4 - k) : _mm256_srli_epi16(h, k - 4);
    return _mm256_and_si256(s, _mm256_set1_epi8(0x10));
}

/* The 8 rows' scales of sub-block s as int16, each in both lanes of its row (madd with maddubs' pairs) */
static inline __m256i rfc_x8_scales16(const uint8_t *col, int s) {
    const __m128i v = _mm_loadl_epi64((const __m128i *)(col + 32 + 8 * s));
    return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v));
}

/* The values of pair c, chunk j (low nibbles: sub-block 2c, high: 2c + 1), with Q5_K's fifth bits */
static inline __attribute__((always_inline)) void rfc_x8_chunk_k45(const uint8_t *col, int c, int j, const int q5, __m256i *lo,
        __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i v = _mm256_loadu_si256((const __m256i *)(col + 160 + 256 * c + 32 * j));
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (q5) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)(col + RFC_X8COL_Q4_K + 32 * j));
        *lo = _mm256_or_si256(*lo, rfc_x8_bit16(h, 2 * c));
        *hi = _mm256_or_si256(*hi, rfc_x8_bit16(h, 2 * c + 1));
    }
}

/* Pair c of the column for token y (its 256 activations): sumi += the two sub-blocks' sums times
 * their scales, summ += their minimums times the activation sums ys. An int16 lane of maddubs
 * sums holds 8 products of at most 15 x 127 x 2 (Q4_K) but only 4 of 31 x 127 x 2 (Q5_K): Q5_K
 * widens them every 4 chunks. */
static inline __attribute__((always_inline)) void rfc_x8col_pair_k45(__m256i *sumi, __m256i *summ, const uint8_t *col,
        const int8_t *y, __m256i ys, const int c, const int q5) {
    const int8_t *yc = y + 64 * c;
    __m256i slo = _mm256_setzero_si256(), shi = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        __m256i lo, hi;
        rfc_x8_chunk_k45(col, c, j, q5, &lo, &hi);
        slo = _mm256_add_epi16(slo, _mm256_maddubs_epi16(lo, rfc_bcast4(yc + 4 * j)));
        shi = _mm256_add_epi16(shi, _mm256_maddubs_epi16(hi, rfc_bcast4(yc + 32 + 4 * j)));
        if (q5 && j == 3) {
            *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(slo, rfc_x8_scales16(col, 2 * c)));
            *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(shi, rfc_x8_scales16(col, 2 * c + 1)));
            slo = shi = _mm256_setzero_si256();
        }
    }
    *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(slo, rfc_x8_scales16(col, 2 * c)));
    *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(shi, rfc_x8_scales16(col, 2 * c + 1)));
    const __m256i m = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(col + 96 + 16 * c)));
    *summ = _mm256_add_epi32(*summ, _mm256_madd_epi16(m, _mm256_permutevar8x32_epi32(ys, _mm256_set1_epi32(c))));
}

static inline __attribute__((always_inline)) __m256 rfc_x8col_k45(__m256 acc, const uint8_t *col, const rfc_act *a, size_t t,
        int b, const int q5) {
    const float dy = a->d[t * (a->K / 256) + (size_t)b];
    const int8_t *y = a->qs + t * a->K + 256 * (size_t)b;
    const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bsums + t * (a->K / 16) + 16 * (size_t)b));
    /* the sums of the 8 sub-blocks of 32 as int16; int32 lane c = the pair (2c, 2c+1) */
    const __m256i ys = _mm256_broadcastsi128_si256(_mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
    __m256i sumi = _mm256_setzero_si256(), summ = _mm256_setzero_si256();
    if (q5) { /* the pair's bit positions must be constants */
        rfc_x8col_pair_k45(&sumi, &summ, col, y, ys, 0, 1);
        rfc_x8col_pair_k45(&sumi, &summ, col, y, ys, 1, 1);
        rfc_x8col_pair_k45(&sumi, &summ, col, y, ys, 2, 1);
        rfc_x8col_pair_k45(&sumi, &summ, col, y, ys, 3, 1);
    } else {
        for (int c = 0; c < 4; c++) rfc_x8col_pair_k45(&sumi, &summ, col, y, ys, c, 0);
    }
    const __m256 vdy = _mm256_set1_ps(dy);
    acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)col)), vdy), _mm256_cvtepi32_ps(sumi), acc);
    return _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(col + 16))), vdy),
                            _mm256_cvtepi32_ps(summ), acc);
}
static inline __m256 rfc_x8col_q4_k(__m256 acc, const uint8_t *col, const rfc_act *a, size_t t, int b) {
    return rfc_x8col_k45(acc, col, a, t, b, 0);
}
static inline __m256 rfc_x8col_q5_k(__m256 acc, const uint8_t *col, const rfc_act *a, size_t t, int b) {
    return rfc_x8col_k45(acc, col, a, t, b, 1);
}

/* Pair c of the column for the 4 tokens t0..t0+3 (as rfc_x8col_pair_k45, the minimums apart) */
static inline __attribute__((always_inline)) void rfc_x8col4_pair_k45(__m256i sumi[4], const uint8_t *col, const rfc_act *a,
        size_t t0, int b, const int c, const int q5) {
    __m256i slo[4], shi[4];
    for (int i = 0; i < 4; i++) slo[i] = shi[i] = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        __m256i lo, hi;
        rfc_x8_chunk_k45(col, c, j, q5, &lo, &hi);
        for (int i = 0; i < 4; i++) {
            const int8_t *y = a->qs + (t0 + (size_t)i) * a->K + 256 * (size_t)b + 64 * c + 4 * j;
            slo[i] = _mm256_add_epi16(slo[i], _mm256_maddubs_epi16(lo, rfc_bcast4(y)));
            shi[i] = _mm256_add_epi16(shi[i], _mm256_maddubs_epi16(hi, rfc_bcast4(y + 32)));
        }
        if (q5 && j == 3) {
            const __m256i scl = rfc_x8_scales16(col, 2 * c), sch = rfc_x8_scales16(col, 2 * c + 1);
            for (int i = 0; i < 4; i++) {
                sumi[i] = _mm256_add_epi32(sumi[i], _mm256_add_epi32(_mm256_madd_epi16(slo[i], scl), _mm256_madd_epi16(shi[i], sch)));
                slo[i] = shi[i] = _mm256_setzero_si256();
            }
        }
    }
    const __m256i scl = rfc_x8_scales16(col, 2 * c), sch = rfc_x8_scales16(col, 2 * c + 1);
    for (int i = 0; i < 4; i++)
        sumi[i] = _mm256_add_epi32(sumi[i], _mm256_add_epi32(_mm256_madd_epi16(slo[i], scl), _mm256_madd_epi16(shi[i], sch)));
}

/* acc[i] += (d_w d_y of token t0 + i) sumi[i], i < 4: the float step every 4-token x8 column
 * kernel (k-quants, IQ4_XS, Q6_K) ends a super-block with */
static inline __attribute__((always_inline)) void rfc_x8col4_scale(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0,
        int b, const __m256i sumi[4]) {
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)col));
    for (int i = 0; i < 4; i++)
        acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(a->d[(t0 + (size_t)i) * (a->K / 256) + (size_t)b])),
                                 _mm256_cvtepi32_ps(sumi[i]), acc[i]);
}

/* The same for the 4 tokens t0..t0+3 (prefill): the nibbles are unpacked once for all four. */
static inline __attribute__((always_inline)) void rfc_x8col4_k45(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0,
        int b, const int q5) {
    const size_t K = a->K;
    const uint8_t *mn = col + 96;
    const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(col + 16)));
    float dy[4];
    for (int i = 0; i < 4; i++) { /* the minimums, token by token (as rfc_x8col_q4_k) */
        const size_t t = t0 + (size_t)i;
        dy[i] = a->d[t * (K / 256) + (size_t)b];
        const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bsums + t * (K / 16) + 16 * (size_t)b));
        const __m256i ys = _mm256_broadcastsi128_si256(_mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
        __m256i summ = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i m = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(mn + 16 * c)));
            summ = _mm256_add_epi32(summ, _mm256_madd_epi16(m, _mm256_permutevar8x32_epi32(ys, _mm256_set1_epi32(c))));
        }
        acc[i] = _mm256_fnmadd_ps(_mm256_mul_ps(mw, _mm256_set1_ps(dy[i])), _mm256_cvtepi32_ps(summ), acc[i]);
    }
    __m256i sumi[4];
    for (int i = 0; i < 4; i++) sumi[i] = _mm256_setzero_si256();
    if (q5) { /* the pair's bit positions must be constants */
        rfc_x8col4_pair_k45(sumi, col, a, t0, b, 0, 1);
        rfc_x8col4_pair_k45(sumi, col, a, t0, b, 1, 1);
        rfc_x8col4_pair_k45(sumi, col, a, t0, b, 2, 1);
        rfc_x8col4_pair_k45(sumi, col, a, t0, b, 3, 1);
    } else {
        for (int c = 0; c < 4; c++) rfc_x8col4_pair_k45(sumi, col, a, t0, b, c, 0);
    }
    rfc_x8col4_scale(acc, col, a, t0, b, sumi);
}
static inline void rfc_x8col4_q4_k(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0, int b) {
    rfc_x8col4_k45(acc, col, a, t0, b, 0);
}
static inline void rfc_x8col4_q5_k(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0, int b) {
    rfc_x8col4_k45(acc, col, a, t0, b, 1);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* With AVX-512 VNNI (cpu-avx512): two groups (16 rows, one per int32 lane of a zmm) and nt <= 8
 * tokens per pass (RFC_X8_TT), one kernel for every token count, so a row of a Q4_Kx8 or Q5_Kx8
 * matmul sums the same way in any step (batch invariant on that target; an odd last group is passed
 * as both groups, its lanes compute the same). acc[i][l] += row l's super-block b . token t0 + i,
 * rows 0-7 from the column c0, 8-15 from c1.
 * On the Xeon (Sapphire Rapids class) this was measured on, independent zmm vpdpbusd, ymm
 * vpdpbusd and ymm maddubs all retire at the same rate (1.2e9 of each: 0.15-0.16 s of user
 * time), so 16 rows a pass doubles the multiply-adds per cycle; an 8-row ymm vpdpbusd kernel
 * measured no faster than rfc_x8col4_q4_k's maddubs. Each sub-block's dot is 8 vpdpbusd
 * per token (activation bytes broadcast from memory), scaled in float by d sc once per
 * sub-block (exact int to float, one fma). The low and high sub-blocks of a chunk run as two
 * chains per token, 16 in all for 8 tokens, enough to cover vpdpbusd's latency. The minimums
 * come from the activation's 16-element sums, two vpdpwssd per sub-block pair. acc stays in
 * memory: it is touched once per column, and the 16 chains need the registers. Q5_Kx8's fifth
 * bits: vptestmb of the chunk's qh bytes against bit 2c (2c + 1) gives the 64 bytes of the low
 * (high) values that get +16, one masked vpaddb each. */
#define RFC_X8COLT_Q4_K 1
#define RFC_X8COLT_Q5_K 1
/* 16 bytes at offset `at` of two columns as one 256-bit vector: c0's in the low half */
static inline __m256i rfc_x8col2_16(const uint8_t *c0, const uint8_t *c1, int at) {
    return _mm256_loadu2_m128i((const __m128i *)(c1 + at), (const __m128i *)(c0 + at));
}
/* 8 bytes at `at` of two columns as 16 floats */
static inline __m512 rfc_x8col2_u8ps(const uint8_t *c0, const uint8_t *c1, int at) {
    const __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(c0 + at)), _mm_loadl_epi64((const __m128i *)(c1 + at)));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}
static inline __attribute__((always_inline)) void rfc_x8colt_k45(float acc[][16], const uint8_t *c0, const uint8_t *c1,
        const rfc_act *a, size_t t0, const int nt, int b, const int q5) {
    const size_t K = a->K;
    const int8_t *y0 = a->qs + t0 * K + 256 * (size_t)b;
    const int16_t *bs0 = a->bsums + t0 * (K / 16) + 16 * (size_t)b;
    const __m512i m4 = _mm512_set1_epi8(0x0F), low16 = _mm512_set1_epi32(0xFFFF), m16 = _mm512_set1_epi8(0x10);
    __m512 f[8]; /* token i's column sum before the activation scale */
    {
        __m512i mm[8]; /* lane l: sum_s min_s,l (activation sum of sub-block s) */
        for (int i = 0; i < nt; i++) mm[i] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            /* int32 lane l = (min 2c, min 2c+1) of row l; each spread to both int16 halves */
            const __m512i mp = _mm512_cvtepu8_epi16(rfc_x8col2_16(c0, c1, 96 + 16 * c));
            __m512i me = _mm512_and_si512(mp, low16), mo = _mm512_srli_epi32(mp, 16);
            me = _mm512_or_si512(me, _mm512_slli_epi32(me, 16));
            mo = _mm512_or_si512(mo, _mm512_slli_epi32(mo, 16));
            for (int i = 0; i < nt; i++) {
                const int16_t *bs = bs0 + (size_t)i * (K / 16) + 4 * c; /* 16-sums 4c .. 4c+3 */
                int32_t p0, p1;
                memcpy(&p0, bs, 4);
                memcpy(&p1, bs + 2, 4);
                mm[i] = _mm512_dpwssd_epi32(mm[i], me, _mm512_set1_epi32(p0));
                mm[i] = _mm512_dpwssd_epi32(mm[i], mo, _mm512_set1_epi32(p1));
            }
        }
        const __m512 nmw = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_cvtph_ps(rfc_x8col2_16(c0, c1, 16)));
        for (int i = 0; i < nt; i++) f[i] = _mm512_mul_ps(nmw, _mm512_cvtepi32_ps(mm[i]));
    }
    const __m512 dw = _mm512_cvtph_ps(rfc_x8col2_16(c0, c1, 0));
    for (int c = 0; c < 4; c++) {
        __m512i sl[8], sh[8];
        for (int i = 0; i < nt; i++) sl[i] = sh[i] = _mm512_setzero_si512();
#pragma GCC unroll 8 /* rolled, gcc copied all 16 chains between registers every chunk */
        for (int j = 0; j < 8; j++) {
            const int at = 160 + 256 * c + 32 * j;
            const __m512i v = rfc_x16_load(c0 + at, c1 + at);
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            if (q5) { /* Q5_Kx8: +16 where the fifth bit (bit 2c, 2c+1 of the qh chunk's byte) is set */
                const int at5 = RFC_X8COL_Q4_K + 32 * j;
                const __m512i h = rfc_x16_load(c0 + at5, c1 + at5);
                lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(h, _mm512_set1_epi8((char)(1 << (2 * c)))), lo, m16);
                hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(h, _mm512_set1_epi8((char)(2 << (2 * c)))), hi, m16);
            }
            for (int i = 0; i < nt; i++) {
                const int8_t *y = y0 + (size_t)i * K + 64 * c + 4 * j;
                int32_t y4l, y4h;
                memcpy(&y4l, y, 4);
                memcpy(&y4h, y + 32, 4);
                sl[i] = _mm512_dpbusd_epi32(sl[i], lo, _mm512_set1_epi32(y4l));
                sh[i] = _mm512_dpbusd_epi32(sh[i], hi, _mm512_set1_epi32(y4h));
            }
        }
        const __m512 fl = _mm512_mul_ps(dw, rfc_x8col2_u8ps(c0, c1, 32 + 16 * c));
        const __m512 fh = _mm512_mul_ps(dw, rfc_x8col2_u8ps(c0, c1, 32 + 16 * c + 8));
        for (int i = 0; i < nt; i++) {
            f[i] = _mm512_fmadd_ps(fl, _mm512_cvtepi32_ps(sl[i]), f[i]);
            f[i] = _mm512_fmadd_ps(fh, _mm512_cvtepi32_ps(sh[i]), f[i]);
        }
    }
    for (int i = 0; i < nt; i++) {
        const __m512 dy = _mm512_set1_ps(a->d[(t0 + (size_t)i) * (K / 256) + (size_t)b]);
        _mm512_storeu_ps(acc[i], _mm512_fmadd_ps(dy, f[i], _mm512_loadu_ps(acc[i])));
    }
}
static inline __attribute__((always_inline)) void rfc_x8colt_q4_k(float acc[][16], const uint8_t *c0, const uint8_t *c1,
        const rfc_act *a, size_t t0, const int nt, int b) {
    rfc_x8colt_k45(acc, c0, c1, a, t0, nt, b, 0);
}
static inline __attribute__((always_inline)) void rfc_x8colt_q5_k(float acc[][16], const uint8_t *c0, const uint8_t *c1,
        const rfc_act *a, size_t t0, const int nt, int b) {
    rfc_x8colt_k45(acc, c0, c1, a, t0, nt, b, 1);
}
#endif
#else
/* float activations: acc[r] += row r's super-block b . x[256 b ..] */
static inline void rfc_x8col_k45(float acc[8], const uint8_t *col, const float *x, const int q5) {
    const uint8_t *qs = col + 160, *qh = col + RFC_X8COL_Q4_K;
    for (int r = 0; r < 8; r++) {
        const float d = rfc_fp16_to_fp32((uint16_t)(col[2 * r] | col[2 * r + 1] << 8));
        const float dmin = rfc_fp16_to_fp32((uint16_t)(col[16 + 2 * r] | col[16 + 2 * r + 1] << 8));
        float s = 0.0f;
        for (int sb = 0; sb < 8; sb++) {
            const int c = sb / 2, shift = 4 * (sb & 1);
            const float ds = d * (float)col[32 + 8 * sb + r], dm = dmin * (float)col[96 + 16 * c + 2 * r + (sb & 1)];
            for (int e = 0; e < 32; e++) {
                const int at = 32 * (e / 4) + 4 * r + (e & 3);
                const int q = ((qs[256 * c + at] >> shift) & 0xF) | (q5 ? ((qh[at] >> sb) & 1) << 4 : 0);
                s += (ds * (float)q - dm) * x[32 * sb + e];
            }
        }
        acc[r] += s;
    }
}
static inline void rfc_x8col_q4_k(float acc[8], const uint8_t *col, const float *x) { rfc_x8col_k45(acc, col, x, 0); }
static inline void rfc_x8col_q5_k(float acc[8], const uint8_t *col, const float *x) { rfc_x8col_k45(acc, col, x, 1); }
#endif

/* rfc_wdot8_<fmt>(acc, w, act, t, u0): acc += steps u0..u0+7 of one weight row (w points at
 * step u0) . token t. Formats without a grouped kernel above (RFC_HAS_DOT8_FMT) do it step by
 * step (cpu_formats.h.j2). */
#define RFC_DOT8_BY_STEPS(fmt, UB)                                                                  \
    static inline rfc_acc rfc_wdot8_##fmt(rfc_acc acc, const uint8_t *w, const rfc_act *a, size_t t, int u0) { \
        for (int j = 0; j < 8; j++) {                                                               \
            rfc_w_##fmt wj;                                                                         \
            rfc_wload_##fmt(&wj, w + (size_t)(UB) * j);                                             \
            acc = rfc_wdot_##fmt(acc, &wj, a, t, u0 + j);                                           \
        }                                                                                           \
        return acc;                                                                                 \
    }
#endif /* RFC_CPU_DOT_H */
