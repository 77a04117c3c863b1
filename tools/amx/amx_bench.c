/* Does Intel AMX pay for rfc's Q8_0 blocks? A standalone microbenchmark.
 *
 * tools/amx/bench_amx.py prepends the cpu-avx512 kernels (cpu_prelude.c.j2 and the Q8_0x8
 * rendering of cpu_matmul_x8.c.j2) to this file and builds one executable, so the VNNI side
 * is rfc's own exported matmul (rfc_matmul_q8_0x8), not a copy of it.
 *
 * Both sides compute out[T, N] = x[T, K] @ W[N, K]^T with W in Q8_0 (32-element blocks, an
 * f16 scale per block per row) and x quantized by rfc_quantize_row_q8_32 (int8, a float scale
 * per 32 values per token: rfc's own activation rounding), so a block's product is
 * (dw * dx) * int_dot, summed over blocks in order. The AMX kernels do exactly that with the
 * int dots from TDPBSSD (signed x signed: no sign trick needed), one 32-value block per tile
 * product, rescaled into float accumulators after every block -- the same operations in the
 * same order as the x8 kernel, so their outputs are expected to be bit for bit equal.
 *
 * Layouts tried:
 *   x8   the existing Q8_0x8 bytes (artifacts/formats.py): a block column of a group of 8
 *        rows is 8 f16 scales, then 8 chunks of 32 bytes holding 4 consecutive values of each
 *        row -- exactly a B tile of 8 rows x 32 bytes (K 32 x 8 output rows). Two groups
 *        (16 rows) a pass: two TDPBSSD per block, stored side by side (stride 64) so the
 *        rescale runs 16 rows per zmm.
 *   x16  a new layout: groups of 16 rows, a block column = 16 f16 scales + 8 x 64 bytes, one
 *        B tile of 8 rows x 64 bytes (K 32 x 16 output rows): one TDPBSSD per block.
 * Tokens go 16 at a time (an A tile of mt <= 16 rows x 32 bytes read straight from the
 * activation's int8 rows with stride K).
 *
 * Timing: CLOCK_THREAD_CPUTIME_ID of one thread, samples interleaved across kernels, medians.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) amx_cfg;

/* Tiles: 0 A (mt x 32 B), 1-2 B, 3-4 C of blocks b, 5-6 C of blocks b+1 (x16: 3 and 5 only),
 * 7 the second A. */
static void amx_configure(int mt, int x16) {
    amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        const int is_a = t == 0 || t == 7, is_b = t == 1 || t == 2;
        c.rows[t] = is_b ? 8 : (uint8_t)mt;
        c.colsb[t] = is_a ? 32 : (x16 ? 64 : 32);
    }
    _tile_loadconfig(&c);
}

static int amx_request(void) {
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

/* ---- x8: the existing Q8_0x8 bytes, two groups of 8 rows a pass ---- */
#define X8_COL 272 /* 16 bytes of scales + 256 quant bytes */

static inline __attribute__((always_inline)) void x8_rescale(__m512 *acc, const int32_t *buf, const uint8_t *c0,
        const uint8_t *c1, const float *d, size_t nb, int b, const int mt) {
    const __m512 ws = _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)c0)), _mm_loadu_si128((const __m128i *)c1), 1));
    for (int m = 0; m < mt; m++) {
        const __m512 s = _mm512_mul_ps(ws, _mm512_set1_ps(d[(size_t)m * nb + (size_t)b]));
        acc[m] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_load_si512(buf + 16 * m)), acc[m]);
    }
}

static inline __attribute__((always_inline)) void x8_pass(const uint8_t *g0, const uint8_t *g1, int nb, const rfc_act *a,
        int t0, const int mt, float *out, int N, int n0) {
    __m512 acc[16];
    int32_t buf0[256] __attribute__((aligned(64))), buf1[256] __attribute__((aligned(64)));
    for (int m = 0; m < mt; m++) acc[m] = _mm512_setzero_ps();
    const int8_t *y = a->qs + (size_t)t0 * a->K;
    const float *d = a->d + (size_t)t0 * (size_t)nb;
    const size_t K = a->K;
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        const uint8_t *p0 = g0 + (size_t)b * X8_COL, *p1 = g1 + (size_t)b * X8_COL;
        _tile_zero(3);
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_loadd(0, y + 32 * b, K);
        _tile_loadd(1, p0 + 16, 32);
        _tile_loadd(2, p1 + 16, 32);
        _tile_dpbssd(3, 0, 1);
        _tile_dpbssd(4, 0, 2);
        _tile_loadd(7, y + 32 * (b + 1), K);
        _tile_loadd(1, p0 + X8_COL + 16, 32);
        _tile_loadd(2, p1 + X8_COL + 16, 32);
        _tile_dpbssd(5, 7, 1);
        _tile_dpbssd(6, 7, 2);
        _tile_stored(3, buf0, 64);
        _tile_stored(4, buf0 + 8, 64);
        _tile_stored(5, buf1, 64);
        _tile_stored(6, buf1 + 8, 64);
        x8_rescale(acc, buf0, p0, p1, d, (size_t)nb, b, mt);
        x8_rescale(acc, buf1, p0 + X8_COL, p1 + X8_COL, d, (size_t)nb, b + 1, mt);
    }
    for (; b < nb; b++) {
        const uint8_t *p0 = g0 + (size_t)b * X8_COL, *p1 = g1 + (size_t)b * X8_COL;
        _tile_zero(3);
        _tile_zero(4);
        _tile_loadd(0, y + 32 * b, K);
        _tile_loadd(1, p0 + 16, 32);
        _tile_loadd(2, p1 + 16, 32);
        _tile_dpbssd(3, 0, 1);
        _tile_dpbssd(4, 0, 2);
        _tile_stored(3, buf0, 64);
        _tile_stored(4, buf0 + 8, 64);
        x8_rescale(acc, buf0, p0, p1, d, (size_t)nb, b, mt);
    }
    for (int m = 0; m < mt; m++) _mm512_storeu_ps(out + (size_t)(t0 + m) * N + n0, acc[m]);
}

static void amx_matmul_x8(const uint8_t *w, int N, int K, const float *x, int T, float *out, void *scratch) {
    rfc_act a;
    rfc_act_init(&a, scratch, x, T, K);
    for (int t = 0; t < T; t++) rfc_quantize_row_q8_32(&a, t);
    const int nb = K / 32;
    const size_t group = (size_t)nb * X8_COL;
    int cfg = -1;
    for (int n0 = 0; n0 < N; n0 += 16) { /* N a multiple of 16 here */
        const uint8_t *g0 = w + (size_t)(n0 / 8) * group, *g1 = g0 + group;
        for (int t0 = 0; t0 < T; t0 += 16) {
            const int mt = rfc_min(16, T - t0);
            if (mt != cfg) amx_configure(cfg = mt, 0);
            if (mt == 16)
                x8_pass(g0, g1, nb, &a, t0, 16, out, N, n0);
            else
                x8_pass(g0, g1, nb, &a, t0, mt, out, N, n0);
        }
    }
    _tile_release();
}

/* ---- x16: groups of 16 rows, one B tile of 8 x 64 bytes per block ---- */
#define X16_COL 544 /* 32 bytes of scales + 512 quant bytes */

static inline __attribute__((always_inline)) void x16_rescale(__m512 *acc, const int32_t *buf, const uint8_t *c,
        const float *d, size_t nb, int b, const int mt) {
    const __m512 ws = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
    for (int m = 0; m < mt; m++) {
        const __m512 s = _mm512_mul_ps(ws, _mm512_set1_ps(d[(size_t)m * nb + (size_t)b]));
        acc[m] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_load_si512(buf + 16 * m)), acc[m]);
    }
}

static inline __attribute__((always_inline)) void x16_pass(const uint8_t *g, int nb, const rfc_act *a, int t0,
        const int mt, float *out, int N, int n0) {
    __m512 acc[16];
    int32_t buf0[256] __attribute__((aligned(64))), buf1[256] __attribute__((aligned(64)));
    for (int m = 0; m < mt; m++) acc[m] = _mm512_setzero_ps();
    const int8_t *y = a->qs + (size_t)t0 * a->K;
    const float *d = a->d + (size_t)t0 * (size_t)nb;
    const size_t K = a->K;
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        const uint8_t *p = g + (size_t)b * X16_COL;
        _tile_zero(3);
        _tile_zero(5);
        _tile_loadd(0, y + 32 * b, K);
        _tile_loadd(1, p + 32, 64);
        _tile_dpbssd(3, 0, 1);
        _tile_loadd(7, y + 32 * (b + 1), K);
        _tile_loadd(2, p + X16_COL + 32, 64);
        _tile_dpbssd(5, 7, 2);
        _tile_stored(3, buf0, 64);
        _tile_stored(5, buf1, 64);
        x16_rescale(acc, buf0, p, d, (size_t)nb, b, mt);
        x16_rescale(acc, buf1, p + X16_COL, d, (size_t)nb, b + 1, mt);
    }
    for (; b < nb; b++) {
        const uint8_t *p = g + (size_t)b * X16_COL;
        _tile_zero(3);
        _tile_loadd(0, y + 32 * b, K);
        _tile_loadd(1, p + 32, 64);
        _tile_dpbssd(3, 0, 1);
        _tile_stored(3, buf0, 64);
        x16_rescale(acc, buf0, p, d, (size_t)nb, b, mt);
    }
    for (int m = 0; m < mt; m++) _mm512_storeu_ps(out + (size_t)(t0 + m) * N + n0, acc[m]);
}

static void amx_matmul_x16(const uint8_t *w, int N, int K, const float *x, int T, float *out, void *scratch) {
    rfc_act a;
    rfc_act_init(&a, scratch, x, T, K);
    for (int t = 0; t < T; t++) rfc_quantize_row_q8_32(&a, t);
    const int nb = K / 32;
    int cfg = -1;
    for (int n0 = 0; n0 < N; n0 += 16) {
        const uint8_t *g = w + (size_t)(n0 / 16) * nb * X16_COL;
        for (int t0 = 0; t0 < T; t0 += 16) {
            const int mt = rfc_min(16, T - t0);
            if (mt != cfg) amx_configure(cfg = mt, 1);
            if (mt == 16)
                x16_pass(g, nb, &a, t0, 16, out, N, n0);
            else
                x16_pass(g, nb, &a, t0, mt, out, N, n0);
        }
    }
    _tile_release();
}

/* ---- data ---- */
static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
static float next_unit(void) { return (float)(next_u32() & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f; }

/* raw Q8_0 rows: per block a float scale (kept as its f16 bits) and 32 int8 */
typedef struct {
    uint16_t *d; /* [N][nb] */
    int8_t *q;   /* [N][K] */
} q8_raw;

static uint16_t f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, 0); }

static q8_raw make_weights(int N, int K) {
    q8_raw r = {malloc(sizeof(uint16_t) * (size_t)N * (K / 32)), malloc((size_t)N * K)};
    for (size_t i = 0; i < (size_t)N * (K / 32); i++) r.d[i] = f32_to_f16(0.002f + 0.01f * (next_unit() + 1.0f));
    for (size_t i = 0; i < (size_t)N * K; i++) r.q[i] = (int8_t)(next_u32() % 255 - 127);
    return r;
}

static uint8_t *pack_x8(q8_raw r, int N, int K) {
    const int nb = K / 32;
    uint8_t *w = aligned_alloc(64, rfc_align64((size_t)N * nb * 34));
    for (int g = 0; g < N / 8; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *col = w + ((size_t)g * nb + b) * X8_COL;
            for (int rr = 0; rr < 8; rr++) {
                const size_t row = (size_t)8 * g + rr;
                memcpy(col + 2 * rr, &r.d[row * nb + b], 2);
                for (int j = 0; j < 8; j++) memcpy(col + 16 + 32 * j + 4 * rr, r.q + row * K + 32 * b + 4 * j, 4);
            }
        }
    return w;
}

static uint8_t *pack_x16(q8_raw r, int N, int K) {
    const int nb = K / 32;
    uint8_t *w = aligned_alloc(64, rfc_align64((size_t)N * nb * 34));
    for (int g = 0; g < N / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *col = w + ((size_t)g * nb + b) * X16_COL;
            for (int rr = 0; rr < 16; rr++) {
                const size_t row = (size_t)16 * g + rr;
                memcpy(col + 2 * rr, &r.d[row * nb + b], 2);
                for (int j = 0; j < 8; j++) memcpy(col + 32 + 64 * j + 4 * rr, r.q + row * K + 32 * b + 4 * j, 4);
            }
        }
    return w;
}

static double now_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define KERNELS 3
#define SAMPLES 7

static void run_kernel(int k, const uint8_t *wx8, const uint8_t *wx16, int N, int K, const float *x, int T, float *out,
        void *scratch) {
    if (k == 0)
        rfc_matmul_q8_0x8(wx8, (size_t)(K / 32) * 34, N, K, x, T, out, NULL, NULL, scratch);
    else if (k == 1)
        amx_matmul_x8(wx8, N, K, x, T, out, scratch);
    else
        amx_matmul_x16(wx16, N, K, x, T, out, scratch);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    if (amx_request() != 0) {
        perror("arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)");
        return 2;
    }
    static const int shapes[][2] = {{576, 1536}, {2048, 5632}};
    static const int ms[] = {1, 2, 4, 8, 16, 32, 128};
    static const char *names[KERNELS] = {"vnni-x8", "amx-x8", "amx-x16"};
    printf("N,K,M,kernel,ms_median,ms_min,gmacs,vs_vnni,max_rel_err_vs_f64,bitwise_eq_vnni\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], K = shapes[s][1], nb = K / 32;
        q8_raw raw = make_weights(N, K);
        uint8_t *wx8 = pack_x8(raw, N, K), *wx16 = pack_x16(raw, N, K);
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            const int T = ms[mi];
            float *x = malloc(sizeof(float) * (size_t)T * K);
            for (size_t i = 0; i < (size_t)T * K; i++) x[i] = next_unit() * (1.0f + (float)(i % 7));
            void *scratch = aligned_alloc(64, rfc_align64(rfc_scratch_bytes_n(T, 1)));
            float *outs[KERNELS];
            for (int k = 0; k < KERNELS; k++) {
                outs[k] = malloc(sizeof(float) * (size_t)T * N);
                run_kernel(k, wx8, wx16, N, K, x, T, outs[k], scratch);
            }
            /* float64 oracle over the same quantized activations */
            rfc_act a;
            rfc_act_init(&a, scratch, x, T, K);
            for (int t = 0; t < T; t++) rfc_quantize_row_q8_32(&a, t);
            double err[KERNELS] = {0}, scale = 0;
            for (int t = 0; t < T; t++)
                for (int n = 0; n < N; n++) {
                    double ref = 0;
                    for (int b = 0; b < nb; b++) {
                        long dot = 0;
                        for (int e = 0; e < 32; e++) dot += (long)raw.q[(size_t)n * K + 32 * b + e] * a.qs[(size_t)t * K + 32 * b + e];
                        ref += (double)_cvtsh_ss(raw.d[(size_t)n * nb + b]) * (double)a.d[(size_t)t * nb + b] * (double)dot;
                    }
                    scale = fmax(scale, fabs(ref));
                    for (int k = 0; k < KERNELS; k++) err[k] = fmax(err[k], fabs(outs[k][(size_t)t * N + n] - ref));
                }
            /* repetitions so one sample is >= ~20 ms of the VNNI kernel */
            double t1 = now_cpu();
            run_kernel(0, wx8, wx16, N, K, x, T, outs[0], scratch);
            t1 = now_cpu() - t1;
            const int reps = t1 > 0.02 ? 1 : (int)(0.02 / (t1 + 1e-9)) + 1;
            double samples[KERNELS][SAMPLES];
            for (int i = 0; i < SAMPLES; i++)
                for (int k = 0; k < KERNELS; k++) {
                    const double t0 = now_cpu();
                    for (int r = 0; r < reps; r++) run_kernel(k, wx8, wx16, N, K, x, T, outs[k], scratch);
                    samples[k][i] = (now_cpu() - t0) / reps;
                }
            double med[KERNELS];
            for (int k = 0; k < KERNELS; k++) {
                qsort(samples[k], SAMPLES, sizeof(double), cmp_double);
                med[k] = samples[k][SAMPLES / 2];
            }
            for (int k = 0; k < KERNELS; k++) {
                const int same = memcmp(outs[k], outs[0], sizeof(float) * (size_t)T * N) == 0;
                printf("%d,%d,%d,%s,%.4f,%.4f,%.2f,%.2f,%.2e,%s\n", N, K, T, names[k], 1e3 * med[k], 1e3 * samples[k][0],
                       (double)N * K * T / med[k] * 1e-9, med[0] / med[k], err[k] / scale, same ? "yes" : "no");
            }
            fflush(stdout);
            for (int k = 0; k < KERNELS; k++) free(outs[k]);
            free(x);
            free(scratch);
        }
        free(wx8);
        free(wx16);
        free(raw.d);
        free(raw.q);
    }
    return 0;
}
