/* Intel AMX int8 tiles for the x8 layouts' multi-token matmuls (the cpu-amx target, whose
 * -mamx-tile -mamx-int8 define __AMX_TILE__ and __AMX_INT8__; every other build skips this).
 *
 * A block column of an x8 group (artifacts/formats.py: 8 rows, chunks of 32 bytes holding 4
 * consecutive quant bytes of each row) is already a B tile of 8 rows x 32 bytes: K 32 x 8
 * output rows in the tile unit's 4-byte VNNI order. Q8_0x8's quant bytes are read in place;
 * Q4_0x8 / Q4_1x8 unpack their 4 chunks of nibbles into 8 chunks of int8 (low nibbles are
 * elements 0-15, high ones 16-31: the same B tile order). An A tile is up to 16 tokens x the
 * block's 32 int8 activations, read straight from the q8_32 rows (stride K). TDPBSSD gives
 * each (token, row) block dot in int32, exactly the integer the AVX2/VNNI kernels compute;
 * it is rescaled into float accumulators after every block with the x8 kernel's very
 * operations in its order (cpu_matmul_x8.c.j2: acc = fma(dw * dx, dot, acc), then Q4_1's
 * minimum term), so outputs are bit for bit those of the cpu-avx512 kernel at every token
 * count, and a row does not depend on which path ran (docs/determinism.md).
 * Two groups (16 rows) a pass, their int32 tiles stored side by side so that the rescale runs
 * 16 rows per zmm; blocks go two at a time on separate tiles so that one block's rescale
 * overlaps the next one's tile products (tools/amx/amx_bench.c measured the layouts).
 *
 * Linux grants the tile data state per process on request (arch_prctl ARCH_REQ_XCOMP_PERM):
 * rfc_amx_request, which the library's rfc_kernels_init exports and the runtime calls once
 * after loading it. Each thread loads its tile configuration per matmul tile and releases the
 * tiles after it (a thread that was preempted with tiles in use costs a larger XSAVE).
 * Q4_Kx8 / Q5_Kx8 (a product per 32-value sub-block, rfc_amx_k_tile) follow below.
 * Requires cpu_simd.h and cpu_act.h first.
 */
#ifndef RFC_CPU_AMX_H
#define RFC_CPU_AMX_H

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512BW__) && defined(__AVX512F__)
#define RFC_AMX 1
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RFC_ARCH_REQ_XCOMP_PERM 0x1023 /* asm/prctl.h */
#define RFC_XFEATURE_XTILEDATA 18

/* How an x8 layout's quant bytes become B tiles, and what its rescale adds. */
#define RFC_AMX_I8 0  /* Q8_0x8: int8 in place */
#define RFC_AMX_Q4 1  /* Q4_0x8: nibble - 8 */
#define RFC_AMX_Q4M 2 /* Q4_1x8: nibble, plus the minimum's term */

/* 0, or the errno of the kernel's refusal (EINVAL: a kernel before Linux 5.16). Idempotent. */
static inline int rfc_amx_request(void) {
    static int state = -1; /* -1: not asked yet */
    if (state < 0) state = syscall(SYS_arch_prctl, RFC_ARCH_REQ_XCOMP_PERM, RFC_XFEATURE_XTILEDATA) ? errno : 0;
    return state;
}

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) rfc_amx_config;

/* Tiles: 0 and 7 A (mt tokens x 32 bytes), 1-2 B (8 x 32 bytes), 3-4 the int32 dots of the
 * even block, 5-6 of the odd one (mt x 8 rows). */
static inline void rfc_amx_configure(int mt) {
    rfc_amx_config c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = (uint8_t)(t == 1 || t == 2 ? 8 : mt);
        c.colsb[t] = 32;
    }
    _tile_loadconfig(&c);
}

/* The 4-bit layouts' B tile of one block column's quant bytes qs, unpacked into dst (256 bytes). */
static inline __attribute__((always_inline)) void rfc_amx_unpack(const uint8_t *qs, uint8_t *dst, const int kind) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i v0 = _mm512_loadu_si512(qs), v1 = _mm512_loadu_si512(qs + 64);
    __m512i l0 = _mm512_and_si512(v0, m4), l1 = _mm512_and_si512(v1, m4);
    __m512i h0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4), h1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
    if (kind == RFC_AMX_Q4) {
        const __m512i e = _mm512_set1_epi8(8);
        l0 = _mm512_sub_epi8(l0, e);
        l1 = _mm512_sub_epi8(l1, e);
        h0 = _mm512_sub_epi8(h0, e);
        h1 = _mm512_sub_epi8(h1, e);
    }
    _mm512_store_si512(dst, l0);
    _mm512_store_si512(dst + 64, l1);
    _mm512_store_si512(dst + 128, h0);
    _mm512_store_si512(dst + 192, h1);
}

/* Unpacked tiles run RFC_AMX_AHEAD blocks ahead of the products that read them: a tile load of
 * bytes still in the store buffer stalls (unpacking each block right before its product
 * measured 0.43x the VNNI kernel at 4 tokens, 1.0x at 64). */
#define RFC_AMX_AHEAD 8

static inline __attribute__((always_inline)) void rfc_amx_unpack2(const uint8_t *g0, const uint8_t *g1, int b, const int col,
        const int head, const int kind, uint8_t ring[RFC_AMX_AHEAD][2][256]) {
    rfc_amx_unpack(g0 + (size_t)b * col + head, ring[b % RFC_AMX_AHEAD][0], kind);
    rfc_amx_unpack(g1 + (size_t)b * col + head, ring[b % RFC_AMX_AHEAD][1], kind);
}

/* Tile products of one block: A (tile TA) from activation bytes y, B from b0 / b1 (the two
 * groups), into int32 tiles TC0 / TC1, zeroed first (one block per product: the scales
 * differ per block). */
#define RFC_AMX_PRODUCT(TA, TC0, TC1, y, K, b0, b1) \
    do {                                            \
        _tile_zero(TC0);                            \
        _tile_zero(TC1);                            \
        _tile_loadd(TA, (y), (K));                  \
        _tile_loadd(1, (b0), 32);                   \
        _tile_dpbssd(TC0, TA, 1);                   \
        _tile_loadd(2, (b1), 32);                   \
        _tile_dpbssd(TC1, TA, 2);                   \
    } while (0)
/* ... stored as mt rows of 16 int32: group 0's 8 rows, then group 1's */
#define RFC_AMX_STORE(TC0, TC1, c) \
    do {                           \
        _tile_stored(TC0, (c), 64); \
        _tile_stored(TC1, (c) + 8, 64); \
    } while (0)

/* acc[m] (16 rows) += block b of tokens m < mt, as cpu_matmul_x8.c.j2 sums it */
static inline __attribute__((always_inline)) void rfc_amx_rescale(__m512 *acc, const int32_t *c, const uint8_t *col0,
        const uint8_t *col1, const float *d, const float *ds, size_t nb, int b, const int mt, const int kind) {
    const __m512 dw = _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)col0)), _mm_loadu_si128((const __m128i *)col1), 1));
    __m512 mw = _mm512_setzero_ps();
    if (kind == RFC_AMX_Q4M)
        mw = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(col0 + 16))),
                                                     _mm_loadu_si128((const __m128i *)(col1 + 16)), 1));
    for (int m = 0; m < mt; m++) {
        const size_t bi = (size_t)m * nb + (size_t)b;
        acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(d[bi])), _mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * m)), acc[m]);
        if (kind == RFC_AMX_Q4M) acc[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(ds[bi]), acc[m]);
    }
}

/* v[m][r] = row r of the 16 rows of groups g0, g1 . token t0 + m, for m < mt (<= 16).
 * col: bytes per block column; head: its scale bytes before the quant bytes. */
static inline __attribute__((always_inline)) void rfc_amx_x8_pass(const uint8_t *g0, const uint8_t *g1, int nb,
        const int col, const int head, const int kind, const rfc_act *a, int t0, const int mt, float v[16][16]) {
    __m512 acc[16];
    int32_t c0[256] __attribute__((aligned(64))), c1[256] __attribute__((aligned(64)));
    uint8_t ring[RFC_AMX_AHEAD][2][256] __attribute__((aligned(64)));
    for (int m = 0; m < mt; m++) acc[m] = _mm512_setzero_ps();
    const size_t K = a->K;
    const int8_t *y = a->qs + (size_t)t0 * K;
    const float *d = a->d + (size_t)t0 * (size_t)nb;
    const float *ds = a->ds + (size_t)t0 * (size_t)nb; /* d x the block sum: Q4_1's minimum */
    if (kind != RFC_AMX_I8)
        for (int j = 0; j < RFC_AMX_AHEAD && j < nb; j++) rfc_amx_unpack2(g0, g1, j, col, head, kind, ring);
/* block bb's B tile of group gi: the quant bytes in place (int8) or its unpacked ring slot */
#define RFC_AMX_B(gp, gi, bb) (kind == RFC_AMX_I8 ? (gp) + (size_t)(bb) * col + head : ring[(bb) % RFC_AMX_AHEAD][gi])
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        const uint8_t *p0 = g0 + (size_t)b * col, *p1 = g1 + (size_t)b * col;
        RFC_AMX_PRODUCT(0, 3, 4, y + 32 * b, K, RFC_AMX_B(g0, 0, b), RFC_AMX_B(g1, 1, b));
        RFC_AMX_PRODUCT(7, 5, 6, y + 32 * (b + 1), K, RFC_AMX_B(g0, 0, b + 1), RFC_AMX_B(g1, 1, b + 1));
        if (kind != RFC_AMX_I8) /* the slots just read (program order keeps these stores after the loads) */
            for (int j = b + RFC_AMX_AHEAD; j < b + RFC_AMX_AHEAD + 2 && j < nb; j++)
                rfc_amx_unpack2(g0, g1, j, col, head, kind, ring);
        RFC_AMX_STORE(3, 4, c0);
        RFC_AMX_STORE(5, 6, c1);
        rfc_amx_rescale(acc, c0, p0, p1, d, ds, (size_t)nb, b, mt, kind);
        rfc_amx_rescale(acc, c1, p0 + col, p1 + col, d, ds, (size_t)nb, b + 1, mt, kind);
    }
    if (b < nb) {
        const uint8_t *p0 = g0 + (size_t)b * col, *p1 = g1 + (size_t)b * col;
        RFC_AMX_PRODUCT(0, 3, 4, y + 32 * b, K, RFC_AMX_B(g0, 0, b), RFC_AMX_B(g1, 1, b));
        RFC_AMX_STORE(3, 4, c0);
        rfc_amx_rescale(acc, c0, p0, p1, d, ds, (size_t)nb, b, mt, kind);
    }
#undef RFC_AMX_B
    for (int m = 0; m < mt; m++) _mm512_storeu_ps(v[m], acc[m]);
}

/* A tile pass's mt x nr results to out (plus bias) and, where accum is given, added to it: the
 * x8 kernels' own epilogue, shared by the x8 and k-quant tile loops. */
static inline void rfc_amx_store(float v[16][16], int mt, int nr, int t0, int n0, int N, const float *bias,
                                 float *out, float *accum) {
    for (int ti = 0; ti < mt; ti++) {
        float *o = out + (size_t)(t0 + ti) * N + n0;
        float *ac = accum ? accum + (size_t)(t0 + ti) * N + n0 : NULL;
        for (int r = 0; r < nr; r++) {
            const float yv = v[ti][r] + (bias ? bias[n0 + r] : 0.0f);
            o[r] = yv;
            if (ac) ac[r] += yv;
        }
    }
}

/* Rows [lo, hi) (lo a whole group) of a matmul over all T tokens of a, out/accum rows of N,
 * as rfc_mm_<fmt>_tile writes them. A pass with one group left dots it twice (g1 = g0). */
static inline __attribute__((always_inline)) void rfc_amx_x8_tile(const rfc_act *a, int T, int K, const uint8_t *w,
        size_t row_bytes, int N, float *out, const float *bias, float *accum, int lo, int hi, const int col,
        const int head, const int kind) {
    const int nb = K / 32;
    int configured = 0;
    for (int n0 = lo; n0 < hi; n0 += 16) {
        const uint8_t *g0 = w + (size_t)n0 * row_bytes;
        const uint8_t *g1 = hi - n0 > 8 ? g0 + 8 * row_bytes : g0;
        const int nr = hi - n0 < 16 ? hi - n0 : 16;
        for (int t0 = 0; t0 < T; t0 += 16) {
            const int mt = T - t0 < 16 ? T - t0 : 16;
            float v[16][16];
            if (mt != configured) rfc_amx_configure(configured = mt);
            if (mt == 16)
                rfc_amx_x8_pass(g0, g1, nb, col, head, kind, a, t0, 16, v);
            else
                rfc_amx_x8_pass(g0, g1, nb, col, head, kind, a, t0, mt, v);
            rfc_amx_store(v, mt, nr, t0, n0, N, bias, out, accum);
        }
    }
    _tile_release();
}

/* ---- Q4_Kx8 / Q5_Kx8 (artifacts/formats.py: a column is one super-block of 8 rows) ----
 * One tile product per 32-value sub-block (its scale differs per row and sub-block): A is mt
 * tokens x the sub-block's 32 q8_k bytes, B 8 K-quads x 16 rows (the two groups' chunks side
 * by side, 64 bytes a tile row: unpacked anyway, so one product covers 16 rows), C mt x 16
 * int32, the exact integer sums of cpu_dot.h's rfc_x8colt_k45 (nibbles, with Q5_K's +16,
 * fit int8: TDPBSSD). They are combined as rfc_x8colt_k45 does, in its order: f = -dmin x the
 * minimums' sum (the same vpdpwssd), then f = fma(d sc_s, sum_s, f) for s = 0..7, then
 * acc = fma(dy, f, acc): bit for bit the cpu-avx512 kernel at every token count.
 * Tiles: 0-1 A, 2-3 B, 4-5 and 6-7 C of alternate sub-block pairs. A super-block's B tiles are unpacked one
 * super-block ahead (a tile load of bytes still in the store buffer stalls). */
#define RFC_AMX_K_COL(q5) ((q5) ? 1184 + 256 : 1184)

static inline void rfc_amx_k_configure(int mt) {
    rfc_amx_config c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = (uint8_t)(t == 2 || t == 3 ? 8 : mt);
        c.colsb[t] = (uint16_t)(t < 2 ? 32 : 64);
    }
    _tile_loadconfig(&c);
}

/* Pair c (sub-blocks 2c, 2c + 1) of the columns c0 / c1 as two B tiles of 8 x 64 bytes */
static inline __attribute__((always_inline)) void rfc_amx_k_unpack(const uint8_t *c0, const uint8_t *c1, const int c,
        const int q5, uint8_t *lo_dst, uint8_t *hi_dst) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m16 = _mm512_set1_epi8(0x10);
    for (int j = 0; j < 8; j++) {
        const int at = 160 + 256 * c + 32 * j;
        const __m512i v = rfc_x16_load(c0 + at, c1 + at);
        __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        if (q5) {
            const int at5 = 1184 + 32 * j;
            const __m512i h = rfc_x16_load(c0 + at5, c1 + at5);
            lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(h, _mm512_set1_epi8((char)(1 << (2 * c)))), lo, m16);
            hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(h, _mm512_set1_epi8((char)(2 << (2 * c)))), hi, m16);
        }
        _mm512_store_si512(lo_dst + 64 * j, lo);
        _mm512_store_si512(hi_dst + 64 * j, hi);
    }
}

/* f[m] = -dmin x (sum over sub-blocks of min x activation sum): rfc_x8colt_k45's first part */
static inline __attribute__((always_inline)) void rfc_amx_k_mins(__m512 *f, const uint8_t *c0, const uint8_t *c1,
        const int16_t *bs0, size_t K, const int mt) {
    const __m512i low16 = _mm512_set1_epi32(0xFFFF);
    __m512i mm[16];
    for (int i = 0; i < mt; i++) mm[i] = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
        const __m512i mp = _mm512_cvtepu8_epi16(_mm256_loadu2_m128i((const __m128i *)(c1 + 96 + 16 * c), (const __m128i *)(c0 + 96 + 16 * c)));
        __m512i me = _mm512_and_si512(mp, low16), mo = _mm512_srli_epi32(mp, 16);
        me = _mm512_or_si512(me, _mm512_slli_epi32(me, 16));
        mo = _mm512_or_si512(mo, _mm512_slli_epi32(mo, 16));
        for (int i = 0; i < mt; i++) {
            const int16_t *bs = bs0 + (size_t)i * (K / 16) + 4 * c;
            int32_t p0, p1;
            memcpy(&p0, bs, 4);
            memcpy(&p1, bs + 2, 4);
            mm[i] = _mm512_dpwssd_epi32(mm[i], me, _mm512_set1_epi32(p0));
            mm[i] = _mm512_dpwssd_epi32(mm[i], mo, _mm512_set1_epi32(p1));
        }
    }
    const __m512 nmw = _mm512_sub_ps(_mm512_setzero_ps(),
        _mm512_cvtph_ps(_mm256_loadu2_m128i((const __m128i *)(c1 + 16), (const __m128i *)(c0 + 16))));
    for (int i = 0; i < mt; i++) f[i] = _mm512_mul_ps(nmw, _mm512_cvtepi32_ps(mm[i]));
}

/* f[m] = fma(dw sc_s, C[m], f[m]) for sub-block s of the columns */
static inline __attribute__((always_inline)) void rfc_amx_k_rescale(__m512 *f, const int32_t *cbuf, __m512 dw,
        const uint8_t *c0, const uint8_t *c1, const int s, const int mt) {
    const __m128i sc = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(c0 + 32 + 8 * s)), _mm_loadl_epi64((const __m128i *)(c1 + 32 + 8 * s)));
    const __m512 fs = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
    for (int i = 0; i < mt; i++) f[i] = _mm512_fmadd_ps(fs, _mm512_cvtepi32_ps(_mm512_load_si512(cbuf + 16 * i)), f[i]);
}

/* v[m][r] = row r of the 16 rows of groups g0, g1 . token t0 + m, for m < mt (<= 16).
 * Software pipelined over the sub-block pairs (b, c) of the whole row: step (b, c) issues its
 * products into C tiles 4-5 or 6-7, then rescales the previous pair from its stored sums (and
 * ends super-block b - 1 there), unpacks pair c of super-block b + 1, and only then stores its
 * own C tiles: a product's latency and the tile store's trip through memory are covered by
 * other work instead of waited for. */
static inline __attribute__((always_inline)) void rfc_amx_k_pass(const uint8_t *g0, const uint8_t *g1, int nb, const int q5,
        const rfc_act *a, int t0, const int mt, float v[16][16]) {
    const int col = RFC_AMX_K_COL(q5);
    const size_t K = a->K;
    const int8_t *y0 = a->qs + (size_t)t0 * K;
    const int16_t *bsum = a->bsums + (size_t)t0 * (K / 16);
    const float *dy = a->d + (size_t)t0 * (size_t)nb;
    __m512 acc[16], f[16];
    int32_t cbuf[2][2][256] __attribute__((aligned(64))); /* [pair parity][low / high sub-block] */
    uint8_t ring[2][8][512] __attribute__((aligned(64)));
    for (int i = 0; i < mt; i++) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < 4; c++) rfc_amx_k_unpack(g0, g1, c, q5, ring[0][2 * c], ring[0][2 * c + 1]);
    __m512 dw = _mm512_setzero_ps(), dw_prev = dw;
    for (int b = 0; b < nb; b++) {
        const uint8_t *c0 = g0 + (size_t)b * col, *c1 = g1 + (size_t)b * col;
        uint8_t (*cur)[512] = ring[b & 1], (*next)[512] = ring[(b + 1) & 1];
        const int8_t *y = y0 + 256 * (size_t)b;
        dw_prev = dw;
        dw = _mm512_cvtph_ps(_mm256_loadu2_m128i((const __m128i *)(c1), (const __m128i *)(c0)));
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            if (c & 1) {
                _tile_zero(6);
                _tile_zero(7);
                _tile_loadd(0, y + 64 * c, K);
                _tile_loadd(2, cur[2 * c], 64);
                _tile_dpbssd(6, 0, 2);
                _tile_loadd(1, y + 64 * c + 32, K);
                _tile_loadd(3, cur[2 * c + 1], 64);
                _tile_dpbssd(7, 1, 3);
            } else {
                _tile_zero(4);
                _tile_zero(5);
                _tile_loadd(0, y + 64 * c, K);
                _tile_loadd(2, cur[2 * c], 64);
                _tile_dpbssd(4, 0, 2);
                _tile_loadd(1, y + 64 * c + 32, K);
                _tile_loadd(3, cur[2 * c + 1], 64);
                _tile_dpbssd(5, 1, 3);
            }
            if (c > 0) { /* the previous pair of this super-block */
                rfc_amx_k_rescale(f, cbuf[(c - 1) & 1][0], dw, c0, c1, 2 * (c - 1), mt);
                rfc_amx_k_rescale(f, cbuf[(c - 1) & 1][1], dw, c0, c1, 2 * (c - 1) + 1, mt);
            } else if (b > 0) { /* the last pair of the previous one, which it ends */
                const uint8_t *p0 = c0 - col, *p1 = c1 - col;
                rfc_amx_k_rescale(f, cbuf[1][0], dw_prev, p0, p1, 6, mt);
                rfc_amx_k_rescale(f, cbuf[1][1], dw_prev, p0, p1, 7, mt);
                for (int i = 0; i < mt; i++)
                    acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(dy[(size_t)i * nb + (size_t)(b - 1)]), f[i], acc[i]);
            }
            if (c == 0) rfc_amx_k_mins(f, c0, c1, bsum + 16 * (size_t)b, K, mt);
            if (b + 1 < nb) rfc_amx_k_unpack(c0 + col, c1 + col, c, q5, next[2 * c], next[2 * c + 1]);
            if (c & 1) {
                _tile_stored(6, cbuf[1][0], 64);
                _tile_stored(7, cbuf[1][1], 64);
            } else {
                _tile_stored(4, cbuf[0][0], 64);
                _tile_stored(5, cbuf[0][1], 64);
            }
        }
    }
    {
        const uint8_t *p0 = g0 + (size_t)(nb - 1) * col, *p1 = g1 + (size_t)(nb - 1) * col;
        rfc_amx_k_rescale(f, cbuf[1][0], dw, p0, p1, 6, mt);
        rfc_amx_k_rescale(f, cbuf[1][1], dw, p0, p1, 7, mt);
        for (int i = 0; i < mt; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(dy[(size_t)i * nb + (size_t)(nb - 1)]), f[i], acc[i]);
    }
    for (int m = 0; m < mt; m++) _mm512_storeu_ps(v[m], acc[m]);
}

/* rfc_amx_x8_tile for Q4_Kx8 (q5 0) / Q5_Kx8 (q5 1) */
static inline __attribute__((always_inline)) void rfc_amx_k_tile(const rfc_act *a, int T, int K, const uint8_t *w,
        size_t row_bytes, int N, float *out, const float *bias, float *accum, int lo, int hi, const int q5) {
    const int nb = K / 256;
    int configured = 0;
    /* token tiles outside: one tile's activations (16 x K bytes) stay in L1 for all the row
     * pairs, read by strided tile loads the prefetcher does not follow; the weights stream */
    for (int t0 = 0; t0 < T; t0 += 16) {
        const int mt = T - t0 < 16 ? T - t0 : 16;
        if (mt != configured) rfc_amx_k_configure(configured = mt);
        for (int n0 = lo; n0 < hi; n0 += 16) {
            const uint8_t *g0 = w + (size_t)n0 * row_bytes;
            const uint8_t *g1 = hi - n0 > 8 ? g0 + 8 * row_bytes : g0;
            const int nr = hi - n0 < 16 ? hi - n0 : 16;
            float v[16][16];
            if (mt == 16)
                rfc_amx_k_pass(g0, g1, nb, q5, a, t0, 16, v);
            else
                rfc_amx_k_pass(g0, g1, nb, q5, a, t0, mt, v);
            rfc_amx_store(v, mt, nr, t0, n0, N, bias, out, accum);
        }
    }
    _tile_release();
}

#else
static inline int rfc_amx_request(void) { return 0; }
#endif

#endif
