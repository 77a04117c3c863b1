/* The row-interleaved layouts of the IQ4 formats (artifacts/formats.py IQ4_XSx8, IQ4_NLx8):
 * rows in groups of 8, a column holds one block of each of the 8 rows, its 4-bit indices in
 * Q4_0x8's chunks: per 32-element sub-block, 4 chunks of 32 bytes, chunk j holding bytes
 * 4j..4j+3 of every row's 16 index bytes (low nibbles: elements 4j..4j+3, high: 16+4j..).
 * One 32-byte load is then 4 indices of each row in its own int32 lane: a byte lookup
 * (_mm256_shuffle_epi8 through the 16 IQ4_NL levels) gives int8 weights that an int8 dot
 * against 4 activation bytes broadcast sums per row, with no horizontal sums; the 8 rows'
 * scales apply in one instruction. The GGUF kernels (cpu_dot_lut.h) unpack one row's
 * sub-block at a time and scale it in float per 16 values: a decode of a 1.1B IQ4_XS model
 * ran at 0.30 of the read bandwidth on them.
 *
 *   IQ4_XSx8 column (1104 bytes, one super-block): 8 d (f16), the 64 sub-block scales
 *            ls - 32 as int8 [sub-block][row], then 8 sub-blocks x 4 chunks. Activations q8_k
 *            (one scale per 256, as llama.cpp's IQ4_XS dot): every sub-block sum is integer.
 *   IQ4_NLx8 column (144 bytes, one block): 8 d (f16), 4 chunks. Activations q8_32.
 *
 * With VNNI the levels are looked up plus 128 (unsigned, at most 241) for vpdpbusd, which sums
 * in int32; the 128 sum(y) that adds per sub-block comes from the activations' block sums.
 * Plain AVX2's maddubs would saturate its int16 pairs on 241 x 127 x 2, so it dots |w| with
 * y carrying w's sign (each pair at most 2 x 127 x 127) and widens with madd at once.
 *
 * rfc_x8col_<base>(acc, col, a, t, b): lane r of acc += row r's block b . token t;
 * rfc_x8col4_<base>: the same for tokens t0..t0+3, the indices looked up once (prefill);
 * without AVX2, rfc_x8col_<base>(float acc[8], col, x) over float activations.
 * templates/cpu_matmul_x8.c.j2 (its column path) drives them. Requires cpu_dot.h.
 */
#ifndef RFC_CPU_IQ_X8_H
#define RFC_CPU_IQ_X8_H

#define RFC_X8COL_IQ4_XS 1104
#define RFC_X8COL_IQ4_NL 144

#ifdef RFC_AVX2
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define RFC_IQ4X8_VNNI 1
#endif

/* the 16 levels in both 128-bit lanes, plus 128 for vpdpbusd's unsigned operand */
static inline __m256i rfc_iq4x8_lut(void) {
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)rfc_kvalues_iq4nl));
#ifdef RFC_IQ4X8_VNNI
    return _mm256_xor_si256(lut, _mm256_set1_epi8((char)0x80));
#else
    return lut;
#endif
}

/* The int8 weights of chunk v for its 4 activation bytes y (broadcast), summed per row. With
 * VNNI: (w + 128) . y added to s. Without: |w| . (y signed by w), each row's pair of int16
 * sums times its scale (sc16: the row's scale in both int16 lanes of its int32 lane) added to s. */
static inline __attribute__((always_inline)) __m256i rfc_iq4x8_dot(__m256i s, __m256i w, const int8_t *y, __m256i sc16) {
#ifdef RFC_IQ4X8_VNNI
    (void)sc16;
    return _mm256_dpbusd_epi32(s, w, rfc_bcast4(y));
#else
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(rfc_bcast4(y), w));
    return _mm256_add_epi32(s, _mm256_madd_epi16(p, sc16));
#endif
}

/* One sub-block (4 chunks at q) of the 8 rows . the 32 activations y: lane r = row r's sum
 * (VNNI: of (w + 128) y, unscaled; AVX2: of w y times the row's scale). */
static inline __attribute__((always_inline)) __m256i rfc_iq4x8_sub(const uint8_t *q, const int8_t *y, __m256i lut, __m256i sc16) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(q + 32 * j));
        s0 = rfc_iq4x8_dot(s0, _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4)), y + 4 * j, sc16);
        s1 = rfc_iq4x8_dot(s1, _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)), y + 16 + 4 * j, sc16);
    }
    return _mm256_add_epi32(s0, s1);
}

/* the 8 rows' scales of sub-block s (int8 at sc + 8 s): int32 lanes (VNNI) or int16 pairs */
static inline __m256i rfc_iq4x8_scales(const uint8_t *sc, int s) {
    const __m128i v = _mm_loadl_epi64((const __m128i *)(sc + 8 * s));
#ifdef RFC_IQ4X8_VNNI
    return _mm256_cvtepi8_epi32(v);
#else
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, v));
#endif
}

/* VNNI: a sub-block's sum of (w + 128) y less 128 sum(y), times the rows' scales */
static inline __attribute__((always_inline)) __m256i rfc_iq4x8_scaled(__m256i p, __m256i sc, int ysum) {
#ifdef RFC_IQ4X8_VNNI
    return _mm256_mullo_epi32(_mm256_sub_epi32(p, _mm256_set1_epi32(128 * ysum)), sc);
#else
    (void)sc;
    (void)ysum;
    return p;
#endif
}

#ifdef RFC_IQ4X8_VNNI
#define RFC_IQ4X8_SC16(sc, s) _mm256_setzero_si256()
#else
#define RFC_IQ4X8_SC16(sc, s) rfc_iq4x8_scales((sc), (s))
#endif

static inline __m256 rfc_x8col_iq4_xs(__m256 acc, const uint8_t *col, const rfc_act *a, size_t t, int b) {
    const int8_t *y = a->qs + t * a->K + 256 * (size_t)b;
    const int16_t *bs = a->bsums + t * (a->K / 16) + 16 * (size_t)b;
    const uint8_t *sc = col + 16, *qs = col + 80;
    const __m256i lut = rfc_iq4x8_lut();
    __m256i sumi = _mm256_setzero_si256();
    for (int s = 0; s < 8; s++) {
        /* every line of the column two ahead (as rfc_x8colt_iq4_xs): with only the template's
         * one line a column, a thread streamed a decode's weights from memory at ~0.8x Q4_Kx8's
         * bytes per second, with these ~1.2x */
        _mm_prefetch((const char *)col + 2 * RFC_X8COL_IQ4_XS + 128 * s, _MM_HINT_T0);
        _mm_prefetch((const char *)col + 2 * RFC_X8COL_IQ4_XS + 128 * s + 64, _MM_HINT_T0);
        if (s == 7) {
            _mm_prefetch((const char *)col + 2 * RFC_X8COL_IQ4_XS + 1024, _MM_HINT_T0);
            _mm_prefetch((const char *)col + 2 * RFC_X8COL_IQ4_XS + 1088, _MM_HINT_T0);
        }
        const __m256i p = rfc_iq4x8_sub(qs + 128 * s, y + 32 * s, lut, RFC_IQ4X8_SC16(sc, s));
        sumi = _mm256_add_epi32(sumi, rfc_iq4x8_scaled(p, rfc_iq4x8_scales(sc, s), bs[2 * s] + bs[2 * s + 1]));
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)col));
    return _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(a->d[t * (a->K / 256) + (size_t)b])), _mm256_cvtepi32_ps(sumi), acc);
}

static inline void rfc_x8col4_iq4_xs(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0, int b) {
    const size_t K = a->K;
    const uint8_t *sc = col + 16, *qs = col + 80;
    const __m256i lut = rfc_iq4x8_lut(), m4 = _mm256_set1_epi8(0x0F);
    __m256i sumi[4];
    for (int i = 0; i < 4; i++) sumi[i] = _mm256_setzero_si256();
    for (int s = 0; s < 8; s++) {
        const __m256i sc16 = RFC_IQ4X8_SC16(sc, s);
        __m256i p[4];
        for (int i = 0; i < 4; i++) p[i] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 128 * s + 32 * j));
            const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
            const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            for (int i = 0; i < 4; i++) {
                const int8_t *y = a->qs + (t0 + (size_t)i) * K + 256 * (size_t)b + 32 * (size_t)s + 4 * (size_t)j;
                p[i] = rfc_iq4x8_dot(rfc_iq4x8_dot(p[i], lo, y, sc16), hi, y + 16, sc16);
            }
        }
        const __m256i scs = rfc_iq4x8_scales(sc, s);
        for (int i = 0; i < 4; i++) {
            const int16_t *bs = a->bsums + (t0 + (size_t)i) * (K / 16) + 16 * (size_t)b + 2 * (size_t)s;
            sumi[i] = _mm256_add_epi32(sumi[i], rfc_iq4x8_scaled(p[i], scs, bs[0] + bs[1]));
        }
    }
    rfc_x8col4_scale(acc, col, a, t0, b, sumi);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* cpu-avx512: two groups (16 rows, one per int32 lane of a zmm) and nt <= RFC_X8_TT tokens a
 * pass, the same kernel for every token count (templates/cpu_matmul_x8.c.j2's pair path, as
 * rfc_x8colt_q4_k): acc[i][l] += row l's super-block b . token t0 + i, rows 0-7 from c0, 8-15
 * from c1. A vpdpbusd on a zmm costs what one on a ymm does here (cpu_dot.h), so 16 rows a
 * pass halve the instructions per weight byte of rfc_x8col_iq4_xs, whose single-token dot
 * took ~1.25x Q4_Kx8's time per byte (weights in L2; streamed from memory both are bound by
 * the bandwidth). The arithmetic is rfc_x8col_iq4_xs's, integer up to one float
 * multiply-add per super-block, so the sums are the same bit for bit: per sub-block
 * the (w + 128) . y of the low and high nibbles in two chains per token, less 128 sum(y), times
 * the rows' int8 scales (int32, at most 8 x 32 x 241 x 127 x 32 in all).
 * Every line of the column two ahead is prefetched (18 a group, 2 per sub-block): the pair
 * reads two streams 8 rows apart, which with only the template's one line per column a
 * thread streamed from memory at ~0.9x Q4_Kx8's bytes per second (400 MB of weights rotated);
 * with these ~1.3x Q4_Kx8's, and 1.07-1.27x faster than without from L3. */
#define RFC_X8COLT_IQ4_XS 1
static inline __attribute__((always_inline)) void rfc_x8colt_iq4_xs(float acc[][16], const uint8_t *c0, const uint8_t *c1,
        const rfc_act *a, size_t t0, const int nt, int b) {
    const size_t K = a->K;
    const int8_t *y0 = a->qs + t0 * K + 256 * (size_t)b;
    const int16_t *bs0 = a->bsums + t0 * (K / 16) + 16 * (size_t)b;
    const __m512i lut = _mm512_broadcast_i32x4(
        _mm_xor_si128(_mm_loadu_si128((const __m128i *)rfc_kvalues_iq4nl), _mm_set1_epi8((char)0x80)));
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i sumi[RFC_X8_TT];
    for (int i = 0; i < nt; i++) sumi[i] = _mm512_setzero_si512();
    for (int s = 0; s < 8; s++) {
        {   /* the column 2 ahead in both groups, 2 of its 18 lines each a sub-block (see above) */
            const uint8_t *p0 = c0 + 2 * RFC_X8COL_IQ4_XS + 128 * s, *p1 = c1 + 2 * RFC_X8COL_IQ4_XS + 128 * s;
            _mm_prefetch((const char *)p0, _MM_HINT_T0);
            _mm_prefetch((const char *)p0 + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)p1, _MM_HINT_T0);
            _mm_prefetch((const char *)p1 + 64, _MM_HINT_T0);
            if (s == 7) {
                _mm_prefetch((const char *)p0 + 128, _MM_HINT_T0);
                _mm_prefetch((const char *)p0 + 192, _MM_HINT_T0);
                _mm_prefetch((const char *)p1 + 128, _MM_HINT_T0);
                _mm_prefetch((const char *)p1 + 192, _MM_HINT_T0);
            }
        }
        __m512i sl[RFC_X8_TT], sh[RFC_X8_TT];
        for (int i = 0; i < nt; i++) sl[i] = sh[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const int at = 80 + 128 * s + 32 * j;
            const __m512i v = rfc_x16_load(c0 + at, c1 + at);
            const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
            const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
            for (int i = 0; i < nt; i++) {
                const int8_t *y = y0 + (size_t)i * K + 32 * s + 4 * j;
                int32_t yl, yh;
                memcpy(&yl, y, 4);
                memcpy(&yh, y + 16, 4);
                sl[i] = _mm512_dpbusd_epi32(sl[i], lo, _mm512_set1_epi32(yl));
                sh[i] = _mm512_dpbusd_epi32(sh[i], hi, _mm512_set1_epi32(yh));
            }
        }
        const __m128i sc8 = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(c0 + 16 + 8 * s)),
                                               _mm_loadl_epi64((const __m128i *)(c1 + 16 + 8 * s)));
        const __m512i sc = _mm512_cvtepi8_epi32(sc8);
        for (int i = 0; i < nt; i++) {
            const int16_t *bs = bs0 + (size_t)i * (K / 16) + 2 * s;
            const __m512i p = _mm512_sub_epi32(_mm512_add_epi32(sl[i], sh[i]), _mm512_set1_epi32(128 * (bs[0] + bs[1])));
            sumi[i] = _mm512_add_epi32(sumi[i], _mm512_mullo_epi32(p, sc));
        }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu2_m128i((const __m128i *)c1, (const __m128i *)c0));
    for (int i = 0; i < nt; i++) {
        const __m512 dy = _mm512_set1_ps(a->d[(t0 + (size_t)i) * (K / 256) + (size_t)b]);
        _mm512_storeu_ps(acc[i], _mm512_fmadd_ps(_mm512_mul_ps(dw, dy), _mm512_cvtepi32_ps(sumi[i]), _mm512_loadu_ps(acc[i])));
    }
}
#endif

/* IQ4_NLx8: one sub-block per column, the rows' f16 scales applied in float per block */
#ifdef RFC_IQ4X8_VNNI
#define RFC_IQ4X8_ONES _mm256_setzero_si256()
#define RFC_IQ4X8_NL_SUM(p, isum) _mm256_sub_epi32((p), _mm256_set1_epi32(128 * (isum)))
#else
#define RFC_IQ4X8_ONES _mm256_set1_epi16(1)
#define RFC_IQ4X8_NL_SUM(p, isum) (p)
#endif

static inline __m256 rfc_x8col_iq4_nl(__m256 acc, const uint8_t *col, const rfc_act *a, size_t t, int b) {
    const size_t i = t * (a->K / 32) + (size_t)b;
    const __m256i p = rfc_iq4x8_sub(col + 16, a->qs + t * a->K + 32 * (size_t)b, rfc_iq4x8_lut(), RFC_IQ4X8_ONES);
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)col));
    return _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(a->d[i])), _mm256_cvtepi32_ps(RFC_IQ4X8_NL_SUM(p, a->isum[i])), acc);
}

static inline void rfc_x8col4_iq4_nl(__m256 acc[4], const uint8_t *col, const rfc_act *a, size_t t0, int b) {
    const size_t K = a->K, nb = K / 32;
    const __m256i lut = rfc_iq4x8_lut(), m4 = _mm256_set1_epi8(0x0F), ones = RFC_IQ4X8_ONES;
    __m256i p[4];
    for (int i = 0; i < 4; i++) p[i] = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(col + 16 + 32 * j));
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        for (int i = 0; i < 4; i++) {
            const int8_t *y = a->qs + (t0 + (size_t)i) * K + 32 * (size_t)b + 4 * (size_t)j;
            p[i] = rfc_iq4x8_dot(rfc_iq4x8_dot(p[i], lo, y, ones), hi, y + 16, ones);
        }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)col));
    for (int i = 0; i < 4; i++) {
        const size_t bi = (t0 + (size_t)i) * nb + (size_t)b;
        acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(a->d[bi])), _mm256_cvtepi32_ps(RFC_IQ4X8_NL_SUM(p[i], a->isum[bi])),
                                 acc[i]);
    }
}
#else
/* float activations: acc[r] += row r's block . x (n_sub sub-blocks from qs, scale(r, s)) */
static inline float rfc_iq4x8_row(const uint8_t *qs, int r, int n_sub, const float *ds, const float *x) {
    float s = 0.0f;
    for (int sb = 0; sb < n_sub; sb++)
        for (int e = 0; e < 32; e++) {
            const uint8_t q = qs[128 * sb + 32 * ((e & 15) / 4) + 4 * r + (e & 3)];
            s += ds[sb] * (float)rfc_kvalues_iq4nl[e < 16 ? q & 0xF : q >> 4] * x[32 * sb + e];
        }
    return s;
}

static inline void rfc_x8col_iq4_xs(float acc[8], const uint8_t *col, const float *x) {
    for (int r = 0; r < 8; r++) {
        const float d = rfc_fp16_to_fp32((uint16_t)(col[2 * r] | col[2 * r + 1] << 8));
        float ds[8];
        for (int sb = 0; sb < 8; sb++) ds[sb] = d * (float)(int8_t)col[16 + 8 * sb + r];
        acc[r] += rfc_iq4x8_row(col + 80, r, 8, ds, x);
    }
}

static inline void rfc_x8col_iq4_nl(float acc[8], const uint8_t *col, const float *x) {
    for (int r = 0; r < 8; r++) {
        const float d = rfc_fp16_to_fp32((uint16_t)(col[2 * r] | col[2 * r + 1] << 8));
        acc[r] += rfc_iq4x8_row(col + 16, r, 1, &d, x);
    }
}
#endif /* RFC_AVX2 */

#endif /* RFC_CPU_IQ_X8_H */
