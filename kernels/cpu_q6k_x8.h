/* The row-interleaved layout of Q6_K (artifacts/formats.py Q6_Kx8): rows in groups of 8, a
 * column holds one super-block of each of the 8 rows: 8 d (f16), the 16 int8 sub-block scales
 * [sub-block][row], then GGUF's ql bytes in 32 chunks and its qh bytes in 16, chunk j holding
 * 4 bytes of every row (Q4_0x8's chunks). One 32-byte ql load is then 4 low and 4 high nibbles
 * of each row in its own int32 lane, and the qh chunk beside it their top 2 bits: the unsigned
 * 6-bit values q (weight d * scale * (q - 32)) dot 4 activation bytes broadcast, with no
 * horizontal sums.
 *
 *   ql chunk m = 16 h + i (half h of the super-block, i in 0..15): low nibbles elements
 *   128 h + 4 i .. +3 (sub-block 8 h + i / 4), high nibbles 128 h + 64 + 4 i .. (sub-block
 *   8 h + 4 + i / 4); qh chunk 8 h + i % 8: their top 2 bits at bits 2 u and 4 + 2 u, u = i / 8.
 *
 * Activations q8_k (one scale per 256, int8 at most 127 in magnitude, sums per 16). Every
 * kernel here sums a row's super-block in integers: per sub-block the dot of q (0..63) with
 * the activations, less 32 x their 16-value sum, times the row's int8 scale (at most
 * 16 x 16 x 32 x 127 x 128 in all: exact in int32), then one float multiply-add
 * acc += (d_w d_y) isum per super-block. The AVX2 single-token (rfc_x8col_q6_k) and 4-token
 * (rfc_x8col4_q6_k) dots and the cpu-avx512 16-row kernel (rfc_x8colt_q6_k) compute the same
 * integers and the same float operations in the same order, so a row's output is the same bits
 * whatever the step's token count, on either build (docs/determinism.md). The GGUF Q6_K kernels
 * (rfc_dot_q6_k, rfc_wdotn, the packed GEMM) scale every sub-block in float and order those
 * sums differently per path.
 *
 * AVX2: maddubs' int16 pairs (2 x 63 x 127) are summed over two chunks (32004 fits an int16),
 * then madd against the sub-block's scale in both int16 halves of each lane widens and scales
 * them at once; the -32 comes off once per super-block as 32 x sum_s scale_s bsum_s (madd of
 * the scales of sub-blocks 2k, 2k+1 against the two bsums). cpu-avx512: vpdpbusd sums a
 * sub-block in int32, less 32 x its bsum, times the scales (vpmulld).
 *
 * rfc_x8col_q6_k(acc, col, a, t, b): lane r of acc += row r's super-block b . token t;
 * rfc_x8col4_q6_k: the same for tokens t0..t0+3, the values decoded once (prefill);
 * without AVX2, rfc_x8col_q6_k(float acc[8], col, x) over float activations.
 * templates/cpu_matmul_x8.c.j2 (its column path) drives them. Requires cpu_dot.h.
 */
#ifndef RFC_CPU_Q6K_X8_H
#define RFC_CPU_Q6K_X8_H

#define RFC_X8COL_Q6_K 1680
#define RFC_Q6X8_SC 16    /* int8 scales [sub-block][row] */
#define RFC_Q6X8_QL 144   /* 32 chunks of ql bytes */
#define RFC_Q6X8_QH 1168  /* 16 chunks of qh bytes */

#ifdef RFC_AVX2
/* ql chunk v and its qh chunk hb as the 6-bit values of the low (*lo) and high (*hi) nibbles;
 * u (constant once inlined) picks the crumbs: bits 2u (low) and 4 + 2u (high), moved to 4-5 */
static inline __attribute__((always_inline)) void rfc_q6x8_decode(__m256i v, __m256i hb, const int u, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const __m256i l = _mm256_and_si256(v, m4), h = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (u == 0) {
        *lo = _mm256_or_si256(l, _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
        *hi = _mm256_or_si256(h, _mm256_and_si256(hb, m30));
    } else {
        *lo = _mm256_or_si256(l, _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
        *hi = _mm256_or_si256(h, _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
    }
}

/* the 8 rows' scale of sub-block s in both int16 halves of each row's lane (madd) */
static inline __m256i rfc_q6x8_scale16(const uint8_t *col, int s) {
    const __m128i v = _mm_loadl_epi64((const __m128i *)(col + RFC_Q6X8_SC + 8 * s));
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, v));
}

/* the scales of sub-blocks 2k and 2k + 1 as each row's int16 pair */
static inline __m256i rfc_q6x8_scale_pair(const uint8_t *col, int k) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(col + RFC_Q6X8_SC + 16 * k));
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, _mm_unpackhi_epi64(v, v)));
}

/* lane r: sum_s scale_s,r bsum_s over the super-block (bs: its 16 activation sums) */
static inline __m256i rfc_q6x8_offset(const __m256i pair[8], const int16_t *bs) {
    __m256i off = _mm256_setzero_si256();
    for (int k = 0; k < 8; k++) {
        int32_t b2;
        memcpy(&b2, bs + 2 * k, 4);
        off = _mm256_add_epi32(off, _mm256_madd_epi16(pair[k], _mm256_set1_epi32(b2)));
    }
    return off;
}

/* the 4 chunks of (h, u, q) for one token: sums of the low nibbles' sub-block (8h + 2u + q)
 * and the high nibbles' (8h + 4 + 2u + q), scaled, added to s */
static inline __attribute__((always_inline)) __m256i rfc_q6x8_quad(__m256i s, const uint8_t *col, const int8_t *y, int h,
        const int u, int q) {
    const int sl = 8 * h + 2 * u + q;
    __m256i pl = _mm256_setzero_si256(), ph = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        const int i = 8 * u + 4 * q + k;
        __m256i lo, hi;
        rfc_q6x8_decode(_mm256_loadu_si256((const __m256i *)(col + RFC_Q6X8_QL + 32 * (16 * h + i))),
                        _mm256_loadu_si256((const __m256i *)(col + RFC_Q6X8_QH + 32 * (8 * h + 4 * q + k))), u, &lo, &hi);
        const int8_t *yc = y + 128 * h + 32 * u + 16 * q + 4 * k;
        pl = _mm256_add_epi16(pl, _mm256_maddubs_epi16(lo, rfc_bcast4(yc)));
        ph = _mm256_add_epi16(ph, _mm256_maddubs_epi16(hi, rfc_bcast4(yc + 64)));
        if (k & 1) { /* two chunks' pairs fit an int16: widen */
            s = _mm256_add_epi32(s, _mm256_add_epi32(_mm256_madd_epi16(pl, rfc_q6x8_scale16(col, sl)),
                                                     _mm256_madd_epi16(ph, rfc_q6x8_scale16(col, sl + 4))));
            pl = ph = _mm256_setzero_si256();
        }
    }
    return s;
}

static inline __m256 rfc_x8col_q6_k(__m256 acc, const uint8_t *col, const rfc_act *a, size_t t, int b) {
    const int8_t *y = a->qs + t * a->K + 256 * (size_t)b;
    __m256i pair[8];
    for (int k = 0; k < 8; k++) pair[k] = rfc_q6x8_scale_pair(col, k);
    __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(),
                                    _mm256_slli_epi32(rfc_q6x8_offset(pair, a->bsums + t * (a->K / 16) + 16 * (size_t)b), 5));
    for (int h = 0; h < 2; h++)
        for (int q = 0; q < 2; q++) {
            /* the column two ahead, 7 of its 27 lines a step (as rfc_x8col_iq4_xs) */
            const char *p = (const char *)col + 2 * RFC_X8COL_Q6_K + 448 * (2 * h + q);
            for (int l = 0; l < 448; l += 64) _mm_prefetch(p + l, _MM_HINT_T0);
            sumi = rfc_q6x8_quad(sumi, col, y, h, 0, q);
            sumi = rfc_q6x8_quad(sumi, col, y, h, 1, q);
        }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)col));
    return _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(a->d[t * (a->K / 256) + (size_t)b])), _mm256_cvtepi32_ps(sumi), acc);
}

/* rfc_q6x8_quad for 4 tokens, the chunks decoded once */
static inline __attribute__((always_inline)) void rfc_q6x8_quad4(__m256i s[4], const uint8_t *col, const int8_t *y, size_t K,
        int h, const int u, int q) {
    const int sl = 8 * h + 2 * u + q;
    __m256i pl[4], ph[4];
    for (int i = 0; i < 4; i++) pl[i] = ph[i] = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        const int c = 8 * u + 4 * q + k;
        __m256i lo, hi;
        rfc_q6x8_decode(_mm256_loadu_si256((const __m256i *)(col + RFC_Q6X8_QL + 32 * (16 * h + c))),
                        _mm256_loadu_si256((const __m256i *)(col + RFC_Q6X8_QH + 32 * (8 * h + 4 * q + k))), u, &lo, &hi);
        for (int i = 0; i < 4; i++) {
            const int8_t *yc = y + (size_t)i * K + 128 * h + 32 * u + 16 * q + 4 * k;
            pl[i] = _mm256_add_epi16(pl[i], _mm256_maddubs_epi16(lo, rfc_bcast4(yc)));
            ph[i] = _mm256_add_epi16(ph[i], _mm256_maddubs_epi16(hi, rfc_bcast4(yc + 64)));
        }
        if (k & 1) {
            const __m256i scl = rfc_q6x8_scale16(col, sl), sch = rfc_q6x8_scale16(col, sl + 4);
            for (int i = 0; i < 4; i++) {
                s[i] = _mm256_add_epi32(s[i], _mm256_add_epi32(_mm256_madd_epi16(pl[i], scl), _mm256_madd_epi16(ph[i], sch)));
                pl[i] = ph[i] = _mm256_setzero_si256();
            }
        }
    }
}

static inline void rfc_x8col4_q6_k(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0, int b) {
    const size_t K = a->K;
    const int8_t *y = a->qs + t0 * K + 256 * (size_t)b;
    __m256i pair[8], sumi[4];
    for (int k = 0; k < 8; k++) pair[k] = rfc_q6x8_scale_pair(col, k);
    for (int i = 0; i < 4; i++)
        sumi[i] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_slli_epi32(rfc_q6x8_offset(pair, a->bsums + (t0 + (size_t)i) * (K / 16) + 16 * (size_t)b), 5));
    for (int h = 0; h < 2; h++)
        for (int q = 0; q < 2; q++) {
            rfc_q6x8_quad4(sumi, col, y, K, h, 0, q);
            rfc_q6x8_quad4(sumi, col, y, K, h, 1, q);
        }
    rfc_x8col4_scale(acc, col, a, t0, b, sumi);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* cpu-avx512: two groups (16 rows, one per int32 lane of a zmm) and nt <= RFC_X8_TT tokens a
 * pass, the same kernel for every token count (templates/cpu_matmul_x8.c.j2's pair path, as
 * rfc_x8colt_iq4_xs): acc[i][l] += row l's super-block b . token t0 + i, rows 0-7 from c0,
 * 8-15 from c1. Per 4 chunks, the low and high nibbles' sub-blocks run as two vpdpbusd chains
 * per token (16 for 8 tokens); each sub-block's sum less 32 x its bsum is scaled (vpmulld) into
 * the token's int32 total: rfc_x8col_q6_k's integers, and its float operations. */
#define RFC_X8COLT_Q6_K 1

/* the 16 rows' int8 scales of sub-block s as int32 lanes */
static inline __m512i rfc_q6x8_scale32(const uint8_t *c0, const uint8_t *c1, int s) {
    const int at = RFC_Q6X8_SC + 8 * s;
    return _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(c0 + at)), _mm_loadl_epi64((const __m128i *)(c1 + at))));
}

static inline __attribute__((always_inline)) void rfc_q6x8_quadt(__m512i sumi[], const uint8_t *c0, const uint8_t *c1,
        const int8_t *y0, const int16_t *bs0, size_t K, const int nt, int h, const int u, int q) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const int sl = 8 * h + 2 * u + q;
    {   /* the column two ahead in both groups, 4 of its 27 lines a step (8 steps a column),
         * into L2 only: into L1 as well (T0) the two streams' lines got 29 GB/s from memory on a
         * Zen 4 at one token, 34 into L2 (tools/bench_x8_stream.py, 2 threads) */
        const int at = 2 * RFC_X8COL_Q6_K + 256 * (4 * h + 2 * q + u);
        for (int l = 0; l < 256; l += 64) {
            _mm_prefetch((const char *)c0 + at + l, _MM_HINT_T1);
            _mm_prefetch((const char *)c1 + at + l, _MM_HINT_T1);
        }
    }
    __m512i sa[RFC_X8_TT], sb[RFC_X8_TT];
    for (int i = 0; i < nt; i++) sa[i] = sb[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const int c = 8 * u + 4 * q + k;
        const int ql = RFC_Q6X8_QL + 32 * (16 * h + c), qh = RFC_Q6X8_QH + 32 * (8 * h + 4 * q + k);
        const __m512i v = rfc_x16_load(c0 + ql, c1 + ql), hb = rfc_x16_load(c0 + qh, c1 + qh);
        __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        if (u == 0) {
            lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30));
            hi = _mm512_or_si512(hi, _mm512_and_si512(hb, m30));
        } else {
            lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30));
            hi = _mm512_or_si512(hi, _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30));
        }
        for (int i = 0; i < nt; i++) {
            const int8_t *yc = y0 + (size_t)i * K + 128 * h + 32 * u + 16 * q + 4 * k;
            int32_t yl, yh;
            memcpy(&yl, yc, 4);
            memcpy(&yh, yc + 64, 4);
            sa[i] = _mm512_dpbusd_epi32(sa[i], lo, _mm512_set1_epi32(yl));
            sb[i] = _mm512_dpbusd_epi32(sb[i], hi, _mm512_set1_epi32(yh));
        }
    }
    const __m512i scl = rfc_q6x8_scale32(c0, c1, sl), sch = rfc_q6x8_scale32(c0, c1, sl + 4);
    for (int i = 0; i < nt; i++) {
        const int16_t *bs = bs0 + (size_t)i * (K / 16);
        const __m512i pl = _mm512_mullo_epi32(_mm512_sub_epi32(sa[i], _mm512_set1_epi32(32 * bs[sl])), scl);
        const __m512i ph = _mm512_mullo_epi32(_mm512_sub_epi32(sb[i], _mm512_set1_epi32(32 * bs[sl + 4])), sch);
        sumi[i] = _mm512_add_epi32(sumi[i], _mm512_add_epi32(pl, ph));
    }
}

static inline __attribute__((always_inline)) void rfc_x8colt_q6_k(float acc[][16], const uint8_t *c0, const uint8_t *c1,
        const rfc_act *a, size_t t0, const int nt, int b) {
    const size_t K = a->K;
    const int8_t *y0 = a->qs + t0 * K + 256 * (size_t)b;
    const int16_t *bs0 = a->bsums + t0 * (K / 16) + 16 * (size_t)b;
    __m512i sumi[RFC_X8_TT];
    for (int i = 0; i < nt; i++) sumi[i] = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++)
        for (int q = 0; q < 2; q++) {
            rfc_q6x8_quadt(sumi, c0, c1, y0, bs0, K, nt, h, 0, q);
            rfc_q6x8_quadt(sumi, c0, c1, y0, bs0, K, nt, h, 1, q);
        }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu2_m128i((const __m128i *)c1, (const __m128i *)c0));
    for (int i = 0; i < nt; i++) {
        const __m512 dy = _mm512_set1_ps(a->d[(t0 + (size_t)i) * (K / 256) + (size_t)b]);
        _mm512_storeu_ps(acc[i], _mm512_fmadd_ps(_mm512_mul_ps(dw, dy), _mm512_cvtepi32_ps(sumi[i]), _mm512_loadu_ps(acc[i])));
    }
}
#endif
#else
/* float activations: acc[r] += row r's super-block . x[0..255] */
static inline void rfc_x8col_q6_k(float acc[8], const uint8_t *col, const float *x) {
    for (int r = 0; r < 8; r++) {
        const float d = rfc_fp16_to_fp32((uint16_t)(col[2 * r] | col[2 * r + 1] << 8));
        float s = 0.0f;
        for (int sb = 0; sb < 16; sb++) {
            const float ds = d * (float)(int8_t)col[RFC_Q6X8_SC + 8 * sb + r];
            for (int e = 0; e < 16; e++) {
                const int el = 16 * sb + e, h = el / 128, w = el % 128, high = w >= 64, l = high ? w - 64 : w, i = l / 4;
                const int at = 32 * i + 4 * r + (l & 3);
                const uint8_t ql = col[RFC_Q6X8_QL + 32 * 16 * h + at], qh = col[RFC_Q6X8_QH + 32 * (8 * h + i % 8) + 4 * r + (l & 3)];
                const int qv = (high ? ql >> 4 : ql & 0xF) | ((qh >> (4 * high + 2 * (i / 8))) & 3) << 4;
                s += ds * (float)(qv - 32) * x[el];
            }
        }
        acc[r] += s;
    }
}
#endif /* RFC_AVX2 */

#endif /* RFC_CPU_Q6K_X8_H */
