/* Prefill matmul (many tokens): 8 weight rows are first packed so that one 256-bit vector
 * holds 4 consecutive weights of each of the 8 rows (row r in int32 lane r). Multiplying it
 * with 4 activation bytes broadcast to every lane (_mm256_maddubs_epi16 + _mm256_madd_epi16)
 * then yields 8 rows' partial dots in 8 lanes, and the float epilogue (scales, conversion)
 * serves 8 rows at once instead of one. A pack is made once per 8 rows and reused for every
 * token, so its cost (unpacking nibbles, a transpose) vanishes for long prompts.
 *
 * Packed blocks of 32 weights, by kind (RFC_GEMM_STEP_<FMT> names the step function):
 *   offset  values stored unsigned (q + off); the dot subtracts off * sum(activations)
 *   min     w = d q + m with unsigned q; the dot adds m * dy * sum(activations), with
 *           dy * sum precomputed per activation block
 *   signed  Q8_0: |w| and w kept, the sign moves onto the activations (_mm256_sign_epi8)
 *   q6k     Q6_K: two 16-element halves with their own scales, stored as q + 32
 * Activations are q8_32 in plain order with sums per 32 and per 16 (RFC_GEMM_ACT_<FMT>).
 * Requires rfc_blocks.h, cpu_simd.h, cpu_act.h and cpu_dot.h; AVX2 only.
 */
#ifndef RFC_CPU_GEMM_H
#define RFC_CPU_GEMM_H

/* tokens per pass over an x8 column (see the x8 column dots below) */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define RFC_X8_TT 8
#else
#define RFC_X8_TT 4
#endif

#ifdef RFC_AVX2

typedef struct {
    uint8_t *qs; /* [nb][8 steps][8 rows][4 bytes] (signed: then |w| and w per block) */
    float *d;    /* [nb][8 rows] scale (q6k: [nb][2 halves][8 rows]) */
    float *m;    /* [nb][8 rows] minimum (min formats) */
} rfc_pack8;

/* bytes of a pack of nb blocks of 32 (or of two Q6_K packs: rfc_gemm16_step_q6_k) */
static inline size_t rfc_pack8_bytes(int nb) { return (size_t)nb * (512 + 4 * 32) + 64; }

static inline void rfc_pack8_init(rfc_pack8 *p, void *mem, int nb) {
    p->qs = (uint8_t *)mem;
    p->d = (float *)(p->qs + (size_t)512 * nb);
    p->m = p->d + (size_t)16 * nb;
}

static inline void rfc_pack8_store(uint8_t *dst, __m256i r[8]) {
    rfc_transpose8_epi32(r);
    for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)(dst + 32 * j), r[j]);
}

/* 32-element formats: each row's block through its rfc_wload (values in element order). */
#define RFC_PACK8_B32(fmt, TS, KIND_SIGNED, KIND_MIN)                                               \
    static inline void rfc_pack8_##fmt(rfc_pack8 *p, const uint8_t *w, size_t row_bytes, int rows, int nb) { \
        for (int b = 0; b < nb; b++) {                                                              \
            __m256i r[8], s[8];                                                                     \
            for (int i = 0; i < 8; i++) {                                                           \
                if (i < rows) {                                                                     \
                    rfc_w_##fmt x;                                                                  \
                    rfc_wload_##fmt(&x, w + (size_t)i * row_bytes + (size_t)(TS) * b);             \
                    r[i] = KIND_SIGNED ? _mm256_sign_epi8(x.q, x.q) : x.q;                          \
                    s[i] = x.q;                                                                     \
                    p->d[8 * b + i] = _mm256_cvtss_f32(x.d);                                        \
                    p->m[8 * b + i] = KIND_MIN ? _mm256_cvtss_f32(((const rfc_w32m *)(const void *)&x)->m) : 0.0f; \
                } else {                                                                            \
                    r[i] = s[i] = _mm256_setzero_si256();                                           \
                    p->d[8 * b + i] = p->m[8 * b + i] = 0.0f;                                       \
                }                                                                                   \
            }                                                                                       \
            rfc_pack8_store(p->qs + (size_t)(KIND_SIGNED ? 512 : 256) * b, r);                     \
            if (KIND_SIGNED) rfc_pack8_store(p->qs + (size_t)512 * b + 256, s);                     \
        }                                                                                           \
    }
RFC_PACK8_B32(q8_0, RFC_TS_Q8_0, 1, 0)
RFC_PACK8_B32(q4_0, RFC_TS_Q4_0, 0, 0)
RFC_PACK8_B32(q5_0, RFC_TS_Q5_0, 0, 0)
RFC_PACK8_B32(q4_1, RFC_TS_Q4_1, 0, 1)
RFC_PACK8_B32(q5_1, RFC_TS_Q5_1, 0, 1)

/* Q4_K: each 32-element sub-block becomes a min-format block: w = (d sc) q - (dmin m). */
static inline void rfc_pack8_q4_k(rfc_pack8 *p, const uint8_t *w, size_t row_bytes, int rows, int nb) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int sb = 0; sb < nb / 8; sb++) {
        __m256i r[8][8]; /* [sub-block][row] */
        for (int i = 0; i < 8; i++) {
            if (i >= rows) {
                for (int j = 0; j < 8; j++) {
                    r[j][i] = _mm256_setzero_si256();
                    p->d[8 * (8 * sb + j) + i] = p->m[8 * (8 * sb + j) + i] = 0.0f;
                }
                continue;
            }
            const rfc_block_q4_k *b = (const rfc_block_q4_k *)(w + (size_t)i * row_bytes + (size_t)RFC_TS_Q4_K * sb);
            const float d = rfc_fp16_scalar(b->d), dmin = rfc_fp16_scalar(b->dmin);
            for (int j = 0; j < 8; j++) {
                uint8_t sc, mn;
                rfc_scale_min_k4(j, b->scales, &sc, &mn);
                p->d[8 * (8 * sb + j) + i] = d * (float)sc;
                p->m[8 * (8 * sb + j) + i] = -(dmin * (float)mn);
            }
            for (int j = 0; j < 4; j++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * j));
                r[2 * j][i] = _mm256_and_si256(q, m4);
                r[2 * j + 1][i] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
        }
        for (int j = 0; j < 8; j++) rfc_pack8_store(p->qs + (size_t)256 * (8 * sb + j), r[j]);
    }
}

/* Q6_K: 32-element blocks of two 16-element halves with scales d sc; values stored as q + 32. */
static inline void rfc_pack8_q6_k(rfc_pack8 *p, const uint8_t *w, size_t row_bytes, int rows, int nb) {
    for (int sb = 0; sb < nb / 8; sb++) {
        __m256i r[8][8]; /* [32-block][row] */
        for (int i = 0; i < 8; i++) {
            if (i >= rows) {
                for (int j = 0; j < 8; j++) {
                    r[j][i] = _mm256_setzero_si256();
                    p->d[16 * (8 * sb + j) + i] = p->d[16 * (8 * sb + j) + 8 + i] = 0.0f;
                }
                continue;
            }
            const rfc_block_q6_k *b = (const rfc_block_q6_k *)(w + (size_t)i * row_bytes + (size_t)RFC_TS_Q6_K * sb);
            const float d = rfc_fp16_scalar(b->d);
            __m256i q6[8];
            rfc_q6_k_unpack(b, q6);
            for (int blk = 0; blk < 8; blk++) { /* 32-block within the super-block */
                r[blk][i] = q6[blk];
                p->d[16 * (8 * sb + blk) + i] = d * (float)b->scales[2 * blk];
                p->d[16 * (8 * sb + blk) + 8 + i] = d * (float)b->scales[2 * blk + 1];
            }
        }
        for (int j = 0; j < 8; j++) rfc_pack8_store(p->qs + (size_t)256 * (8 * sb + j), r[j]);
    }
}

#define RFC_HAS_GEMM 1

/* -- the row-interleaved (x8) layouts' column dots (templates/cpu_matmul_x8.c.j2) ----------
 * A 32-byte chunk holds 4 weights of each of 8 rows; one token's 4 activation bytes are
 * broadcast to every lane, so each row's partial dot stays in its own int32 lane.
 * RFC_X8_TT tokens share one pass over a column's bytes: with AVX-512VL's 32 registers 8
 * (the unpacked weights and 8 accumulators stay in registers), with AVX2's 16 only 4.
 * Perf on a 1.1B Q4_0 prefill showed the old memcpy of a token's 32 activation bytes into
 * a local array routing every broadcast through a general register; broadcasting straight
 * from memory (rfc_bcast4) lets VNNI fold it into vpdpbusd: 1.8x the prefill.
 * (RFC_X8_TT is defined at the top of this file: the portable build sizes its tiles by it.) */

/* Nibbles: lo[j] holds weights 4j..4j+3 of each row, hi[j] weights 16+4j..16+4j+3 (0..15).
 * Two independent chains halve the dependency depth. */
static inline __attribute__((always_inline)) __m256i rfc_x8dot_u4(const __m256i lo[4], const __m256i hi[4], const int8_t *y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    __m256i s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo[0], rfc_bcast4(y));
    __m256i s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), hi[0], rfc_bcast4(y + 16));
    s0 = _mm256_dpbusd_epi32(s0, lo[1], rfc_bcast4(y + 4));
    s1 = _mm256_dpbusd_epi32(s1, hi[1], rfc_bcast4(y + 20));
    s0 = _mm256_dpbusd_epi32(s0, lo[2], rfc_bcast4(y + 8));
    s1 = _mm256_dpbusd_epi32(s1, hi[2], rfc_bcast4(y + 24));
    s0 = _mm256_dpbusd_epi32(s0, lo[3], rfc_bcast4(y + 12));
    s1 = _mm256_dpbusd_epi32(s1, hi[3], rfc_bcast4(y + 28));
    return _mm256_add_epi32(s0, s1);
#else
    /* 4 products of at most 15 x 127 x 2 per int16 lane and chain: 15240, no overflow */
    __m256i s0 = _mm256_maddubs_epi16(lo[0], rfc_bcast4(y));
    __m256i s1 = _mm256_maddubs_epi16(hi[0], rfc_bcast4(y + 16));
    s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(lo[1], rfc_bcast4(y + 4)));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(hi[1], rfc_bcast4(y + 20)));
    s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(lo[2], rfc_bcast4(y + 8)));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(hi[2], rfc_bcast4(y + 24)));
    s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(lo[3], rfc_bcast4(y + 12)));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(hi[3], rfc_bcast4(y + 28)));
    return _mm256_madd_epi16(_mm256_add_epi16(s0, s1), _mm256_set1_epi16(1));
#endif
}

/* Signed int8 weights: wa[j] = |w|, wq[j] = w (4 weights of each row per chunk); the sign
 * moves onto the broadcast activations, as in the Q8_0 kernels. */
static inline __attribute__((always_inline)) __m256i rfc_x8dot_i8(const __m256i wa[8], const __m256i wq[8], const int8_t *y) {
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    for (int j = 0; j < 8; j += 2) {
        const __m256i y0 = _mm256_sign_epi8(rfc_bcast4(y + 4 * j), wq[j]);
        const __m256i y1 = _mm256_sign_epi8(rfc_bcast4(y + 4 * j + 4), wq[j + 1]);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        s0 = _mm256_dpbusd_epi32(s0, wa[j], y0);
        s1 = _mm256_dpbusd_epi32(s1, wa[j + 1], y1);
#else
        /* 2 products of at most 128 x 127 per int16 lane: widen every step */
        const __m256i ones = _mm256_set1_epi16(1);
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_maddubs_epi16(wa[j], y0), ones));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_maddubs_epi16(wa[j + 1], y1), ones));
#endif
    }
    return _mm256_add_epi32(s0, s1);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* Two groups a pass (templates/cpu_matmul_x8.c.j2's pair path on AVX-512): the same 32-byte
 * chunk of two groups as one zmm (cpu_simd.h rfc_x16_load). A vpdpbusd on a zmm costs what one on a ymm does on these cores (cpu_dot.h), so
 * each token's block takes half the instructions of rfc_x8dot_*. The integer sums are exact,
 * hence the same as the 8-row dots' whatever the order. */
#define RFC_X16_DOT 1
static inline __attribute__((always_inline)) __m512i rfc_bcast4_512(const int8_t *y) {
    int32_t v;
    memcpy(&v, y, 4);
    return _mm512_set1_epi32(v);
}

/* rfc_x8dot_u4 on 16 rows, plus `init` (an offset the format takes off, e.g. Q4_0's 8 sum(y):
 * added as the first chain's start, one instruction fewer than a subtraction after) */
static inline __attribute__((always_inline)) __m512i rfc_x16dot_u4(const __m512i lo[4], const __m512i hi[4], const int8_t *y,
        __m512i init) {
    __m512i s0 = _mm512_dpbusd_epi32(init, lo[0], rfc_bcast4_512(y));
    __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[0], rfc_bcast4_512(y + 16));
    s0 = _mm512_dpbusd_epi32(s0, lo[1], rfc_bcast4_512(y + 4));
    s1 = _mm512_dpbusd_epi32(s1, hi[1], rfc_bcast4_512(y + 20));
    s0 = _mm512_dpbusd_epi32(s0, lo[2], rfc_bcast4_512(y + 8));
    s1 = _mm512_dpbusd_epi32(s1, hi[2], rfc_bcast4_512(y + 24));
    s0 = _mm512_dpbusd_epi32(s0, lo[3], rfc_bcast4_512(y + 12));
    s1 = _mm512_dpbusd_epi32(s1, hi[3], rfc_bcast4_512(y + 28));
    return _mm512_add_epi32(s0, s1);
}

/* rfc_x8dot_i8 on 16 rows. AVX-512 has no vpsignb, so the weights come as w + 128 (wu: w with
 * its top bit flipped, unsigned) and the block's 128 sum(y) comes off: sum (w + 128) y - 128
 * sum y is sum w y exactly (|each| <= 32 x 255 x 127). */
static inline __attribute__((always_inline)) __m512i rfc_x16dot_i8(const __m512i wu[8], const int8_t *y, int32_t ysum) {
    __m512i s0 = _mm512_set1_epi32(-128 * ysum), s1 = _mm512_setzero_si512();
    for (int j = 0; j < 8; j += 2) {
        s0 = _mm512_dpbusd_epi32(s0, wu[j], rfc_bcast4_512(y + 4 * j));
        s1 = _mm512_dpbusd_epi32(s1, wu[j + 1], rfc_bcast4_512(y + 4 * j + 4));
    }
    return _mm512_add_epi32(s0, s1);
}
#endif

/* Unsigned packed values against token t's block b: lane r = sum over the block of row r.
 * FLUSH steps are summed in int16 before widening. */
static inline __attribute__((always_inline)) __m256i rfc_gemm_block_u8(const uint8_t *qs, const int8_t *y, int flush) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i sum = _mm256_setzero_si256(), s16 = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(qs + 32 * j)), rfc_bcast4(y + 4 * j)));
        if ((j + 1) % flush == 0) {
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s16, ones));
            s16 = _mm256_setzero_si256();
        }
    }
    return sum;
}

/* acc[t] += the block-b contribution of the packed 8 rows for tokens t0..t0+ntok-1 */
#define RFC_GEMM_STEP(KIND, FLUSH, OFF)                                                              \
    static inline __attribute__((always_inline)) void rfc_gemm_step_##KIND##_##FLUSH##_##OFF(         \
            __m256 *acc, const rfc_pack8 *p, int b, const rfc_act *a, size_t t0, int ntok) {         \
        const size_t nb = a->K / 32;                                                                  \
        for (int t = 0; t < ntok; t++) {                                                              \
            const int8_t *y = a->qs + (t0 + t) * a->K + 32 * (size_t)b;                               \
            const size_t i = (t0 + t) * nb + (size_t)b;                                               \
            const __m256 dy = _mm256_broadcast_ss(a->d + i);                                          \
            RFC_GEMM_BODY_##KIND(FLUSH, OFF)                                                          \
        }                                                                                             \
    }

#define RFC_GEMM_BODY_offset(FLUSH, OFF)                                                             \
    __m256i s = rfc_gemm_block_u8(p->qs + (size_t)256 * b, y, FLUSH);                                \
    s = _mm256_sub_epi32(s, _mm256_set1_epi32((OFF) * a->isum[i]));                                  \
    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(p->d + 8 * b), dy), _mm256_cvtepi32_ps(s), acc[t]);

#define RFC_GEMM_BODY_min(FLUSH, OFF)                                                                \
    const __m256i s = rfc_gemm_block_u8(p->qs + (size_t)256 * b, y, FLUSH);                          \
    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(p->d + 8 * b), dy), _mm256_cvtepi32_ps(s), acc[t]); \
    acc[t] = _mm256_fmadd_ps(_mm256_loadu_ps(p->m + 8 * b), _mm256_broadcast_ss(a->ds + i), acc[t]);

#define RFC_GEMM_BODY_signed(FLUSH, OFF)                                                             \
    const uint8_t *qs = p->qs + (size_t)512 * b;                                                      \
    __m256i s = _mm256_setzero_si256();                                                               \
    for (int j = 0; j < 8; j++) {                                                                     \
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(qs + 256 + 32 * j));                 \
        const __m256i prod = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(qs + 32 * j)), \
                                                  _mm256_sign_epi8(rfc_bcast4(y + 4 * j), wv));      \
        s = _mm256_add_epi32(s, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)));                       \
    }                                                                                                 \
    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(p->d + 8 * b), dy), _mm256_cvtepi32_ps(s), acc[t]);

/* Q6_K: halves of 16 with their own scales; values are q + 32 (subtract 32 * half sums).
 * With VNNI a half is one chain of 4 vpdpbusd started from -32 * its sum (maddubs needed an
 * int16 add and a madd on top, and a subtraction after). */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define RFC_GEMM_BODY_q6k(FLUSH, OFF)                                                                \
    const uint8_t *qs = p->qs + (size_t)256 * b;                                                      \
    const int16_t *bs = a->bsums + (t0 + t) * (a->K / 16) + 2 * (size_t)b;                            \
    for (int h = 0; h < 2; h++) {                                                                     \
        __m256i s = _mm256_set1_epi32(-32 * (int32_t)bs[h]);                                          \
        for (int j = 4 * h; j < 4 * h + 4; j++)                                                       \
            s = _mm256_dpbusd_epi32(s, _mm256_loadu_si256((const __m256i *)(qs + 32 * j)), rfc_bcast4(y + 4 * j)); \
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(p->d + 16 * b + 8 * h), dy), _mm256_cvtepi32_ps(s), acc[t]); \
    }
#else
#define RFC_GEMM_BODY_q6k(FLUSH, OFF)                                                                \
    const uint8_t *qs = p->qs + (size_t)256 * b;                                                      \
    const __m256i ones = _mm256_set1_epi16(1);                                                        \
    const int16_t *bs = a->bsums + (t0 + t) * (a->K / 16) + 2 * (size_t)b;                            \
    for (int h = 0; h < 2; h++) {                                                                     \
        __m256i s = _mm256_setzero_si256();                                                           \
        for (int j = 4 * h; j < 4 * h + 4; j += 2) {                                                  \
            const __m256i s16 = _mm256_add_epi16(                                                     \
                _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(qs + 32 * j)), rfc_bcast4(y + 4 * j)), \
                _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(qs + 32 * j + 32)), rfc_bcast4(y + 4 * j + 4))); \
            s = _mm256_add_epi32(s, _mm256_madd_epi16(s16, ones));                                    \
        }                                                                                             \
        s = _mm256_sub_epi32(s, _mm256_set1_epi32(32 * bs[h]));                                       \
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(p->d + 16 * b + 8 * h), dy), _mm256_cvtepi32_ps(s), acc[t]); \
    }
#endif

/* Step functions rfc_gemm_step_<kind>_<flush>_<offset>. FLUSH: steps (of 4 weights) summed
 * in int16 before widening; int16 holds 2 |w| |y| <= 32767 per step, so 15-valued formats
 * could take 8 steps and 31-valued ones 4, but 4 measured fastest for both (a shorter
 * dependency chain). OFF: the offset of the offset formats. */
RFC_GEMM_STEP(offset, 4, 8)
RFC_GEMM_STEP(offset, 4, 16)
RFC_GEMM_STEP(min, 4, 0)
RFC_GEMM_STEP(signed, 1, 0)
RFC_GEMM_STEP(q6k, 2, 0)

/* the step function of weight format FMT */
#define RFC_GEMM_STEP_Q4_0 rfc_gemm_step_offset_4_8
#define RFC_GEMM_STEP_Q5_0 rfc_gemm_step_offset_4_16
#define RFC_GEMM_STEP_Q4_1 rfc_gemm_step_min_4_0
#define RFC_GEMM_STEP_Q4_K rfc_gemm_step_min_4_0
#define RFC_GEMM_STEP_Q5_1 rfc_gemm_step_min_4_0
#define RFC_GEMM_STEP_Q8_0 rfc_gemm_step_signed_1_0
#define RFC_GEMM_STEP_Q6_K rfc_gemm_step_q6k_2_0
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* Q6_K on AVX-512 VNNI: two packs of 8 rows dotted together, 16 rows in the int32 lanes of a zmm
 * (a zmm vpdpbusd retires as often as a ymm one on the Xeon measured: twice the multiply-adds
 * per cycle; see rfc_x8colt_q4_k). The template packs rows n0..n0+7 into p0 and n0+8..n0+15 into
 * p1 (rfc_pack16_q6_k_init) and steps both. Each row's sums are those of the 8-row step. */
#define RFC_GEMM16_Q6_K 1
static inline void rfc_pack16_q6_k_init(rfc_pack8 *p0, rfc_pack8 *p1, void *mem, int nb) {
    /* a Q6_K pack needs 256 quant bytes and 16 scales per block, no minimums */
    p0->qs = (uint8_t *)mem;
    p1->qs = p0->qs + (size_t)256 * nb;
    p0->d = (float *)(p1->qs + (size_t)256 * nb);
    p1->d = p0->d + (size_t)16 * nb;
    p0->m = p1->m = NULL;
}

static inline __attribute__((always_inline)) void rfc_gemm16_step_q6_k(__m512 *acc, const rfc_pack8 *p0, const rfc_pack8 *p1,
        int b, const rfc_act *a, size_t t0, int ntok) {
    const size_t nb = a->K / 32;
    __m512i w[8];
    for (int j = 0; j < 8; j++)
        w[j] = rfc_x16_load(p0->qs + (size_t)256 * b + 32 * j, p1->qs + (size_t)256 * b + 32 * j);
    __m512 dw[2];
    for (int h = 0; h < 2; h++)
        dw[h] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(p0->d + 16 * b + 8 * h)), _mm256_loadu_ps(p1->d + 16 * b + 8 * h), 1);
    for (int t = 0; t < ntok; t++) {
        const int8_t *y = a->qs + (t0 + t) * a->K + 32 * (size_t)b;
        const int16_t *bs = a->bsums + (t0 + t) * (a->K / 16) + 2 * (size_t)b;
        const __m512 dy = _mm512_set1_ps(a->d[(t0 + t) * nb + (size_t)b]);
        for (int h = 0; h < 2; h++) {
            __m512i s = _mm512_set1_epi32(-32 * (int32_t)bs[h]);
            for (int j = 4 * h; j < 4 * h + 4; j++) {
                int32_t y4;
                memcpy(&y4, y + 4 * j, 4);
                s = _mm512_dpbusd_epi32(s, w[j], _mm512_set1_epi32(y4));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[h], dy), _mm512_cvtepi32_ps(s), acc[t]);
        }
    }
}
#endif
/* how the packed matmul rounds the activations of FMT: k-quants like their decode (q8_k) */
#define RFC_GEMM_ACT_Q4_0 rfc_quantize_row_q8_32s
#define RFC_GEMM_ACT_Q5_0 rfc_quantize_row_q8_32s
#define RFC_GEMM_ACT_Q4_1 rfc_quantize_row_q8_32s
#define RFC_GEMM_ACT_Q5_1 rfc_quantize_row_q8_32s
#define RFC_GEMM_ACT_Q8_0 rfc_quantize_row_q8_32s
#define RFC_GEMM_ACT_Q4_K rfc_quantize_row_q8_ks
#define RFC_GEMM_ACT_Q6_K rfc_quantize_row_q8_ks
#define RFC_HAS_GEMM_Q4_0 1
#define RFC_HAS_GEMM_Q5_0 1
#define RFC_HAS_GEMM_Q4_1 1
#define RFC_HAS_GEMM_Q5_1 1
#define RFC_HAS_GEMM_Q8_0 1
#define RFC_HAS_GEMM_Q4_K 1
#define RFC_HAS_GEMM_Q6_K 1

#endif /* RFC_AVX2 */

#endif /* RFC_CPU_GEMM_H */
