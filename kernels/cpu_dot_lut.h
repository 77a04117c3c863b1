/* The AVX2 int8 dots of the formats whose row in the format table says cpu_unpack (the
 * i-quants, the fp4 and ternary formats): every 32-element sub-block of a block unpacks to 32
 * int8 values in element order and the float scales of its two 16-element halves,
 *
 *   rfc_u32_<fmt>(const uint8_t *block, int sub, rfc_u32 *out)     sub in 0 .. QK/32 - 1
 *
 * (w_e = scale of e's half * q_e exactly: the lattice values, signs and the IQ1 deltas are all
 * small integers at a scale, see each unpacker), so that one generic kernel serves them all
 * against q8_32 activations: |q| . sign(y, q) in maddubs/madd (every |q| <= 128, so a pair of
 * products stays within int16), the 8 int32 lanes (0-3: half 0, 4-7: half 1) converted and
 * scaled by the halves' scales times the activation's. templates/cpu_formats.h.j2 instantiates
 * per row the step (RFC_DEFINE_U32_DOT: rfc_w_/rfc_wload_/rfc_wdot_, the multi-token
 * rfc_wdotn_) and the prefill pack (rfc_pack8_<fmt>, the "halves" GEMM step below).
 * Requires cpu_dot.h and cpu_gemm.h; AVX2 only (without it the float steps run).
 */
#ifndef RFC_CPU_DOT_LUT_H
#define RFC_CPU_DOT_LUT_H

#ifdef RFC_AVX2

typedef struct {
    __m256i q; /* 32 int8 values, element order */
    __m256 d;  /* lanes 0-3: half 0's scale, 4-7: half 1's */
} rfc_u32;

static inline __m256 rfc_halves_ps(float d0, float d1) { return _mm256_setr_m128(_mm_set1_ps(d0), _mm_set1_ps(d1)); }

/* a 16-byte table in both 128-bit lanes (for _mm256_shuffle_epi8 lookups) */
static inline __m256i rfc_lut16(const int8_t *table) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)table));
}

/* acc += the sub-block . 32 activations y (their scale dy) */
static inline __attribute__((always_inline)) rfc_acc rfc_u32_dot(rfc_acc acc, const rfc_u32 *w, const int8_t *y, float dy) {
    const __m256i yv = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y), w->q);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w->q, w->q), yv);
#else
    const __m256i p = rfc_dot_u8s8(_mm256_sign_epi8(w->q, w->q), yv);
#endif
    return _mm256_fmadd_ps(_mm256_mul_ps(w->d, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(p), acc);
}

/* ---- the unpackers --------------------------------------------------------------------- */

/* IQ4_NL: the nibbles (low: elements 0-15, high: 16-31) looked up in the non-linear levels */
static inline void rfc_u32_iq4_nl(const uint8_t *blk, int sub, rfc_u32 *o) {
    const rfc_block_iq4_nl *b = (const rfc_block_iq4_nl *)blk;
    (void)sub;
    o->q = _mm256_shuffle_epi8(rfc_lut16(rfc_kvalues_iq4nl), rfc_nibbles32(b->qs));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

/* IQ4_XS: sub-block ib is 16 bytes of IQ4_NL nibbles at its 6-bit scale */
static inline void rfc_u32_iq4_xs(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq4_xs *b = (const rfc_block_iq4_xs *)blk;
    o->q = _mm256_shuffle_epi8(rfc_lut16(rfc_kvalues_iq4nl), rfc_nibbles32(b->qs + 16 * ib));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d) * (float)rfc_iq4_xs_scale(b, ib));
}

/* MXFP4 (17-byte blocks): IQ4_NL's layout with the fp4 levels and an E8M0 scale */
static inline void rfc_u32_mxfp4(const uint8_t *blk, int sub, rfc_u32 *o) {
    (void)sub;
    o->q = _mm256_shuffle_epi8(rfc_lut16(rfc_kvalues_fp4), rfc_nibbles32(blk + 1));
    o->d = _mm256_set1_ps(rfc_e8m0_half(blk[0]));
}

/* NVFP4: sub-block sub is 16 bytes, two groups of 8 (low nibbles: elements 0-7 of the group,
 * high: 8-15), each at its own UE4M3 scale: the halves' scales */
static inline void rfc_u32_nvfp4(const uint8_t *blk, int sub, rfc_u32 *o) {
    const rfc_block_nvfp4 *b = (const rfc_block_nvfp4 *)blk;
    const __m128i v = _mm_loadu_si128((const __m128i *)(b->qs + 16 * sub)), m4 = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    const __m256i idx = _mm256_setr_m128i(_mm_unpacklo_epi64(lo, hi), _mm_unpackhi_epi64(lo, hi));
    o->q = _mm256_shuffle_epi8(rfc_lut16(rfc_kvalues_fp4), idx);
    o->d = rfc_halves_ps(rfc_ue4m3_half(b->d[2 * sub]), rfc_ue4m3_half(b->d[2 * sub + 1]));
}

/* byte j = 0xFF where bit j of the 32 bits at p (little-endian) is set, else 0 */
static inline __m256i rfc_bitmask32(uint32_t bits) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

/* Q1_0: sub-block sub is 4 bytes of signs: +1 where set, -1 where clear, at the f16 scale */
static inline void rfc_u32_q1_0(const uint8_t *blk, int sub, rfc_u32 *o) {
    const rfc_block_q1_0 *b = (const rfc_block_q1_0 *)blk;
    const __m256i set = rfc_bitmask32(rfc_read_u32(b->qs + 4 * sub));
    o->q = _mm256_or_si256(set, _mm256_set1_epi8(1)); /* 0xFF | 1 = -1 ... */
    o->q = _mm256_sub_epi8(_mm256_setzero_si256(), o->q); /* ... negated: set +1, clear -1 */
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

/* 2-bit values minus 1, 32 of them: element j is bits 2 (j % 4) of byte j / 4 of the 8 bytes at p */
static inline __m256i rfc_crumbs32_m1(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    const __m256i x = _mm256_shuffle_epi8(_mm256_set1_epi64x((long long)v),
                                          _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                                           4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7));
    const __m256i m3 = _mm256_set1_epi8(3);
    /* each byte shifted right by 2 (j % 4): per 16-bit lane, bits shifted in from the neighbour are masked */
    const __m256i s1 = _mm256_srli_epi16(x, 2), s2 = _mm256_srli_epi16(x, 4), s3 = _mm256_srli_epi16(x, 6);
    const __m256i pos = _mm256_set1_epi32(0x03020100);
    __m256i q = _mm256_blendv_epi8(x, s1, _mm256_cmpeq_epi8(pos, _mm256_set1_epi8(1)));
    q = _mm256_blendv_epi8(q, s2, _mm256_cmpeq_epi8(pos, _mm256_set1_epi8(2)));
    q = _mm256_blendv_epi8(q, s3, _mm256_cmpeq_epi8(pos, _mm256_set1_epi8(3)));
    return _mm256_sub_epi8(_mm256_and_si256(q, m3), _mm256_set1_epi8(1));
}

/* Q2_0: sub-block sub is 8 bytes of 2-bit values (0..3 meaning -1..2) */
static inline void rfc_u32_q2_0(const uint8_t *blk, int sub, rfc_u32 *o) {
    const rfc_block_q2_0 *b = (const rfc_block_q2_0 *)blk;
    o->q = rfc_crumbs32_m1(b->qs + 8 * sub);
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

/* TQ2_0: sub-block j is bits 2 (j % 4) of the 32 bytes qs[32 (j / 4) ..], minus 1 */
static inline void rfc_u32_tq2_0(const uint8_t *blk, int j, rfc_u32 *o) {
    const rfc_block_tq2_0 *b = (const rfc_block_tq2_0 *)blk;
    const __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * (j / 4)));
    const __m256i v = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * (j % 4))), _mm256_set1_epi8(3));
    o->q = _mm256_sub_epi8(v, _mm256_set1_epi8(1));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

/* base-3 digits minus 1 of 32 bytes: digit = (byte * mult mod 256) * 3 >> 8, mult = 3^n per byte */
static inline __m256i rfc_trits32_m1(__m256i bytes, __m256i mult) {
    const __m256i m8 = _mm256_set1_epi16(0xFF), three = _mm256_set1_epi16(3);
    const __m256i lo = _mm256_mullo_epi16(_mm256_and_si256(bytes, m8), _mm256_and_si256(mult, m8));
    const __m256i hi = _mm256_mullo_epi16(_mm256_srli_epi16(bytes, 8), _mm256_srli_epi16(mult, 8));
    const __m256i dlo = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_and_si256(lo, m8), three), 8);
    const __m256i dhi = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_and_si256(hi, m8), three), 8);
    return _mm256_sub_epi8(_mm256_or_si256(dlo, _mm256_slli_epi16(dhi, 8)), _mm256_set1_epi8(1));
}

/* TQ1_0: sub-blocks 0-4 are digit j of qs[0..31]; 5 and 6 digits 2 (j - 5) and 2 (j - 5) + 1
 * of qs[32..47]; 7 digit 4 of qs[32..47], then digits 0-3 of qh[0..3] */
static inline void rfc_u32_tq1_0(const uint8_t *blk, int j, rfc_u32 *o) {
    const rfc_block_tq1_0 *b = (const rfc_block_tq1_0 *)blk;
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    __m256i bytes, mult;
    if (j < 5) {
        bytes = _mm256_loadu_si256((const __m256i *)b->qs);
        mult = _mm256_set1_epi8((char)pow3[j]);
    } else {
        const __m128i mid = _mm_loadu_si128((const __m128i *)(b->qs + 32));
        if (j < 7) {
            bytes = _mm256_setr_m128i(mid, mid);
            mult = _mm256_setr_m128i(_mm_set1_epi8((char)pow3[2 * (j - 5)]), _mm_set1_epi8((char)pow3[2 * (j - 5) + 1]));
        } else {
            bytes = _mm256_setr_m128i(mid, _mm_set1_epi32((int)rfc_read_u32(b->qh)));
            mult = _mm256_setr_m128i(_mm_set1_epi8(81), _mm_setr_epi8(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27));
        }
    }
    o->q = rfc_trits32_m1(bytes, mult);
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d));
}

/* The 32 sign bits of 4 groups of 8 from 4 x 7 bits through ksigns (the eighth: parity). */
static inline uint32_t rfc_ksigns4(uint32_t aux) {
    return (uint32_t)rfc_ksigns_iq2xs[aux & 127] | ((uint32_t)rfc_ksigns_iq2xs[(aux >> 7) & 127] << 8) |
           ((uint32_t)rfc_ksigns_iq2xs[(aux >> 14) & 127] << 16) | ((uint32_t)rfc_ksigns_iq2xs[(aux >> 21) & 127] << 24);
}

/* q with the sign of every byte whose bit is set in `signs` flipped */
static inline __m256i rfc_apply_signs(__m256i q, uint32_t signs) {
    return _mm256_sign_epi8(q, _mm256_or_si256(rfc_bitmask32(signs), _mm256_set1_epi8(1)));
}

static inline __m256i rfc_grid8x4(const uint64_t *grid, int i0, int i1, int i2, int i3) {
    return _mm256_setr_epi64x((long long)grid[i0], (long long)grid[i1], (long long)grid[i2], (long long)grid[i3]);
}

/* IQ2_XXS: 4 index bytes, then 4 x 7 sign bits and the scale (top 4 bits) */
static inline void rfc_u32_iq2_xxs(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq2_xxs *b = (const rfc_block_iq2_xxs *)blk;
    const uint8_t *idx = b->qs + 8 * ib;
    const uint32_t aux = rfc_read_u32(idx + 4);
    o->q = rfc_apply_signs(rfc_grid8x4(rfc_iq2xxs_grid, idx[0], idx[1], idx[2], idx[3]), rfc_ksigns4(aux));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d) * (0.5f + (float)(aux >> 28)) * 0.25f);
}

/* IQ2_XS: per 8 values a u16 (9-bit index, 7 sign bits), a 4-bit scale per half */
static inline void rfc_u32_iq2_xs(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq2_xs *b = (const rfc_block_iq2_xs *)blk;
    uint16_t q[4];
    memcpy(q, b->qs + 8 * ib, 8);
    const uint32_t signs = (uint32_t)rfc_ksigns_iq2xs[q[0] >> 9] | ((uint32_t)rfc_ksigns_iq2xs[q[1] >> 9] << 8) |
                           ((uint32_t)rfc_ksigns_iq2xs[q[2] >> 9] << 16) | ((uint32_t)rfc_ksigns_iq2xs[q[3] >> 9] << 24);
    o->q = rfc_apply_signs(rfc_grid8x4(rfc_iq2xs_grid, q[0] & 511, q[1] & 511, q[2] & 511, q[3] & 511), signs);
    const float d = rfc_fp16_scalar(b->d);
    o->d = rfc_halves_ps(d * (0.5f + (float)(b->scales[ib] & 0xF)) * 0.25f, d * (0.5f + (float)(b->scales[ib] >> 4)) * 0.25f);
}

/* IQ2_S: 10-bit indices, 8 explicit sign bits per 8 values, a 4-bit scale per half */
static inline void rfc_u32_iq2_s(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq2_s *b = (const rfc_block_iq2_s *)blk;
    o->q = rfc_apply_signs(rfc_grid8x4(rfc_iq2s_grid, rfc_iq2_s_index(b, ib, 0), rfc_iq2_s_index(b, ib, 1),
                                       rfc_iq2_s_index(b, ib, 2), rfc_iq2_s_index(b, ib, 3)), rfc_read_u32(b->signs + 4 * ib));
    const float d = rfc_fp16_scalar(b->d);
    o->d = rfc_halves_ps(d * (0.5f + (float)(b->scales[ib] & 0xF)) * 0.25f, d * (0.5f + (float)(b->scales[ib] >> 4)) * 0.25f);
}

/* IQ3_XXS: 8 index bytes of 4-value entries, 4 x 7 sign bits and the scale in a u32 */
static inline void rfc_u32_iq3_xxs(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq3_xxs *b = (const rfc_block_iq3_xxs *)blk;
    const uint8_t *q = b->qs + 8 * ib;
    const uint32_t aux = rfc_read_u32(b->scales_signs + 4 * ib);
    const __m256i v = _mm256_setr_epi32((int)rfc_iq3xxs_grid[q[0]], (int)rfc_iq3xxs_grid[q[1]], (int)rfc_iq3xxs_grid[q[2]],
                                        (int)rfc_iq3xxs_grid[q[3]], (int)rfc_iq3xxs_grid[q[4]], (int)rfc_iq3xxs_grid[q[5]],
                                        (int)rfc_iq3xxs_grid[q[6]], (int)rfc_iq3xxs_grid[q[7]]);
    o->q = rfc_apply_signs(v, rfc_ksigns4(aux));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d) * (0.5f + (float)(aux >> 28)) * 0.5f);
}

/* IQ3_S: 9-bit indices of 4-value entries, 8 explicit sign bits per 8, an odd scale per 32 */
static inline void rfc_u32_iq3_s(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq3_s *b = (const rfc_block_iq3_s *)blk;
    int v[8];
    for (int k = 0; k < 8; k++) v[k] = (int)rfc_iq3s_grid[rfc_iq3_s_index(b, ib, k)];
    o->q = rfc_apply_signs(_mm256_loadu_si256((const __m256i *)v), rfc_read_u32(b->signs + 4 * ib));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d) * (float)(1 + 2 * ((b->scales[ib / 2] >> (4 * (ib % 2))) & 0xF)));
}

/* 8 g + delta per byte, g in -1..1 (an IQ1 grid value), delta +-1 per 8-byte group: the IQ1
 * values dl (g +- 1/8) are (dl / 8) (8 g +- 1), small integers at a scale */
static inline __m256i rfc_iq1_values(__m256i g, __m256i delta) {
    const __m256i g2 = _mm256_add_epi8(g, g), g4 = _mm256_add_epi8(g2, g2);
    return _mm256_add_epi8(_mm256_add_epi8(g4, g4), delta);
}

/* IQ1_S: 11-bit indices (8 bits in qs, 3 in the sub-block's u16), a 3-bit odd scale and the sign
 * of the delta in that u16 */
static inline void rfc_u32_iq1_s(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq1_s *b = (const rfc_block_iq1_s *)blk;
    const int qh = rfc_read_u16(b->qh + 2 * ib);
    const uint8_t *qs = b->qs + 4 * ib;
    const __m256i g = rfc_grid8x4(rfc_iq1s_grid, qs[0] | ((qh << 8) & 0x700), qs[1] | ((qh << 5) & 0x700),
                                  qs[2] | ((qh << 2) & 0x700), qs[3] | ((qh >> 1) & 0x700));
    o->q = rfc_iq1_values(g, _mm256_set1_epi8(qh & 0x8000 ? -1 : 1));
    o->d = _mm256_set1_ps(rfc_fp16_scalar(b->d) * (float)(2 * ((qh >> 12) & 7) + 1) * 0.125f);
}

/* IQ1_M: the same grid, 3-bit scales per half, a delta sign per 8 values */
static inline void rfc_u32_iq1_m(const uint8_t *blk, int ib, rfc_u32 *o) {
    const rfc_block_iq1_m *b = (const rfc_block_iq1_m *)blk;
    const uint8_t *qs = b->qs + 4 * ib, h0 = b->qh[2 * ib], h1 = b->qh[2 * ib + 1];
    const __m256i g = rfc_grid8x4(rfc_iq1s_grid, qs[0] | ((h0 << 8) & 0x700), qs[1] | ((h0 << 4) & 0x700),
                                  qs[2] | ((h1 << 8) & 0x700), qs[3] | ((h1 << 4) & 0x700));
    const __m256i delta = _mm256_setr_epi64x(h0 & 0x08 ? -1LL : 0x0101010101010101LL, h0 & 0x80 ? -1LL : 0x0101010101010101LL,
                                             h1 & 0x08 ? -1LL : 0x0101010101010101LL, h1 & 0x80 ? -1LL : 0x0101010101010101LL);
    o->q = rfc_iq1_values(g, delta);
    const float d = rfc_iq1_m_d(b) * 0.125f;
    o->d = rfc_halves_ps(d * (float)(2 * rfc_iq1_m_scale(b, ib, 0) + 1), d * (float)(2 * rfc_iq1_m_scale(b, ib, 1) + 1));
}

/* ---- the kernels, per format (templates/cpu_formats.h.j2) ---------------------------------- */

/* One step is one block of QK elements: rfc_wload unpacks its sub-blocks once (a tile dots them
 * with several tokens), rfc_wdotn does the same for a few tokens of one row (decode batches). */
#define RFC_DEFINE_U32_DOT(fmt, QK, TS)                                                               \
    typedef struct { rfc_u32 v[(QK) / 32]; } rfc_w_##fmt;                                           \
    static inline void rfc_wload_##fmt(rfc_w_##fmt *w, const uint8_t *p) {                          \
        for (int s = 0; s < (QK) / 32; s++) rfc_u32_##fmt(p, s, &w->v[s]);                          \
    }                                                                                               \
    static inline rfc_acc rfc_wdot_##fmt(rfc_acc acc, const rfc_w_##fmt *w, const rfc_act *a, size_t t, int u) { \
        const size_t i = t * (a->K / 32) + (size_t)u * ((QK) / 32);                                 \
        const int8_t *y = a->qs + t * a->K + (size_t)u * (QK);                                      \
        for (int s = 0; s < (QK) / 32; s++) acc = rfc_u32_dot(acc, &w->v[s], y + 32 * s, a->d[i + s]); \
        return acc;                                                                                 \
    }                                                                                               \
    static inline __attribute__((always_inline)) void rfc_wdotn_##fmt(__m256 acc[RFC_DOTN_TT], const uint8_t *p, \
            const rfc_act *a, size_t t0, const int nt, int u) {                                     \
        for (int s = 0; s < (QK) / 32; s++) {                                                       \
            rfc_u32 v;                                                                              \
            rfc_u32_##fmt(p, s, &v);                                                                \
            for (int i = 0; i < nt; i++) {                                                          \
                const size_t t = t0 + (size_t)i, b = (size_t)u * ((QK) / 32) + (size_t)s;           \
                acc[i] = rfc_u32_dot(acc[i], &v, a->qs + t * a->K + 32 * b, a->d[t * (a->K / 32) + b]); \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    static inline void rfc_pack8_##fmt(rfc_pack8 *p, const uint8_t *w, size_t row_bytes, int rows, int nb) { \
        for (int b = 0; b < nb; b++) {                                                              \
            __m256i r[8], s[8];                                                                     \
            for (int i = 0; i < 8; i++) {                                                           \
                rfc_u32 v;                                                                          \
                if (i < rows) {                                                                     \
                    rfc_u32_##fmt(w + (size_t)i * row_bytes + (size_t)(b / ((QK) / 32)) * (TS), b %      ((QK) / 32), &v); \
                } else {                                                                            \
                    v.q = _mm256_setzero_si256();                                                   \
                    v.d = _mm256_setzero_ps();                                                      \
                }                                                                                   \
                r[i] = _mm256_sign_epi8(v.q, v.q);                                                  \
                s[i] = v.q;                                                                         \
                p->d[16 * b + i] = _mm256_cvtss_f32(v.d);                                           \
                p->d[16 * b + 8 + i] = _mm_cvtss_f32(_mm256_extractf128_ps(v.d, 1));                \
            }                                                                                       \
            rfc_pack8_store(p->qs + (size_t)512 * b, r);                                            \
            rfc_pack8_store(p->qs + (size_t)512 * b + 256, s);                                      \
        }                                                                                           \
    }

/* The packed prefill step of these formats: signed values (|w| and w, as Q8_0's), a scale per
 * 16-element half (as Q6_K's): lane r = row r's sum over 32-block b, for each token. */
#define RFC_GEMM_BODY_halves(FLUSH, OFF)                                                             \
    const uint8_t *qs = p->qs + (size_t)512 * b;                                                      \
    for (int h = 0; h < 2; h++) {                                                                     \
        __m256i s = _mm256_setzero_si256();                                                           \
        for (int j = 4 * h; j < 4 * h + 4; j++) {                                                     \
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(qs + 256 + 32 * j));             \
            const __m256i yv = _mm256_sign_epi8(rfc_bcast4(y + 4 * j), wv);                           \
            s = RFC_U32_DPBUSD(s, _mm256_loadu_si256((const __m256i *)(qs + 32 * j)), yv);            \
        }                                                                                             \
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(p->d + 16 * b + 8 * h), dy), _mm256_cvtepi32_ps(s), acc[t]); \
    }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define RFC_U32_DPBUSD(s, u, v) _mm256_dpbusd_epi32((s), (u), (v))
#else
#define RFC_U32_DPBUSD(s, u, v) _mm256_add_epi32((s), rfc_dot_u8s8((u), (v)))
#endif
RFC_GEMM_STEP(halves, 1, 0)

#endif /* RFC_AVX2 */

#endif /* RFC_CPU_DOT_LUT_H */
