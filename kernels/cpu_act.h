/* Activation quantization for the integer matmuls: each input row of K floats becomes int8
 * values with one float scale per block (symmetric, round to nearest, |q| <= 127).
 *
 *   q8_32 (for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 weights): blocks of 32, plus the sum of each
 *         block's int8 values (for the weight formats' offsets and minimums);
 *   q8_k  (for the k-quants): blocks of 256, plus the sum of every 16 values (ggml's Q8_K).
 *
 * Arrays are structure-of-arrays so the int8 rows are contiguous and 32-byte aligned.
 * Requires rfc_blocks.h and cpu_simd.h.
 */
#ifndef RFC_CPU_ACT_H
#define RFC_CPU_ACT_H

typedef struct {
    const float *x;   /* [T][K] the float activations (float weight formats read these) */
    int8_t *qs;       /* [T][K] */
    float *d;         /* [T][K / block]: one scale per block */
    int32_t *isum;    /* [T][K / 32]: sum of each 32 values (q8_32) */
    int16_t *bsums;   /* [T][K / 16]: sum of each 16 values (q8_k) */
    float *ds;        /* [T][K / 32]: scale x sum of each 32 values (packed matmul) */
    size_t K;         /* unsigned, so that the block index arithmetic is shifts */
} rfc_act;

static inline size_t rfc_align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Bytes of scratch an activation of T rows of K values needs (either kind). */
static inline size_t rfc_act_bytes(int T, int K) {
    size_t t = (size_t)T, k = (size_t)K;
    return rfc_align64(t * k) + rfc_align64(t * (k / 32) * 4) * 3 + rfc_align64(t * (k / 16) * 2);
}

static inline void rfc_act_init(rfc_act *a, void *scratch, const float *x, int T, int K) {
    size_t t = (size_t)T, k = (size_t)K;
    uint8_t *p = (uint8_t *)scratch;
    a->x = x;
    a->K = (size_t)K;
    a->qs = (int8_t *)p;
    p += rfc_align64(t * k);
    a->d = (float *)p;
    p += rfc_align64(t * (k / 32) * 4);
    a->isum = (int32_t *)p;
    p += rfc_align64(t * (k / 32) * 4);
    a->bsums = (int16_t *)p;
    p += rfc_align64(t * (k / 16) * 2);
    a->ds = (float *)p;
}

/* One block of n (a multiple of 32) floats: returns the scale, writes q. */
static inline float rfc_quantize_block(const float *RFC_RESTRICT x, int8_t *RFC_RESTRICT q, int n) {
#ifdef RFC_AVX2
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float m = _mm_cvtss_f32(m4);
    const float d = m / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 127.0f / m : 0.0f);
    for (int i = 0; i < n; i += 32) {
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), id));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), id));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), id));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), id));
        i0 = _mm256_packs_epi32(i0, i1);
        i2 = _mm256_packs_epi32(i2, i3);
        i0 = _mm256_packs_epi16(i0, i2);
        /* the packs interleave 128-bit lanes: restore element order */
        i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + i), i0);
    }
    return d;
#else
    float m = 0.0f;
    for (int i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    const float d = m / 127.0f;
    const float id = d != 0.0f ? 127.0f / m : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (int8_t)lrintf(x[i] * id);
    return d;
#endif
}

static inline int rfc_sum_i8(const int8_t *q, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += q[i];
    return s;
}

/* Row t of a q8_32 activation. */
static inline void rfc_quantize_row_q8_32(rfc_act *a, int t) {
    const int K = (int)a->K, nb = K / 32;
    const float *x = a->x + (size_t)t * K;
    int8_t *q = a->qs + (size_t)t * K;
    for (int b = 0; b < nb; b++) {
        a->d[(size_t)t * nb + b] = rfc_quantize_block(x + 32 * b, q + 32 * b, 32);
        a->isum[(size_t)t * nb + b] = rfc_sum_i8(q + 32 * b, 32);
        a->ds[(size_t)t * nb + b] = a->d[(size_t)t * nb + b] * (float)a->isum[(size_t)t * nb + b];
    }
}

/* Row t of a q8_32 activation plus the sums of every 16 values (for the packed matmul). */
static inline void rfc_quantize_row_q8_32s(rfc_act *a, int t) {
    rfc_quantize_row_q8_32(a, t);
    const int K = (int)a->K;
    const int8_t *q = a->qs + (size_t)t * a->K;
    for (int g = 0; g < K / 16; g++) a->bsums[(size_t)t * (K / 16) + g] = (int16_t)rfc_sum_i8(q + 16 * g, 16);
}

/* Row t rounded like q8_k (one scale per 256 values), laid out like q8_32s: the scale
 * repeated for each of its 32-value blocks, sums per 32 and per 16. The packed matmul of
 * the k-quants reads this, so that prefill rounds activations exactly as decode does. */
static inline void rfc_quantize_row_q8_ks(rfc_act *a, int t) {
    const int K = (int)a->K, nb = K / 32;
    const float *x = a->x + (size_t)t * a->K;
    int8_t *q = a->qs + (size_t)t * a->K;
    for (int b = 0; b < K / 256; b++) {
        const float d = rfc_quantize_block(x + 256 * b, q + 256 * b, 256);
        for (int j = 0; j < 8; j++) a->d[(size_t)t * nb + 8 * b + j] = d;
    }
    for (int b = 0; b < nb; b++) {
        a->isum[(size_t)t * nb + b] = rfc_sum_i8(q + 32 * b, 32);
        a->ds[(size_t)t * nb + b] = a->d[(size_t)t * nb + b] * (float)a->isum[(size_t)t * nb + b];
    }
    for (int g = 0; g < K / 16; g++) a->bsums[(size_t)t * (K / 16) + g] = (int16_t)rfc_sum_i8(q + 16 * g, 16);
}

/* Row t of a q8_32p activation: q8_32 with the int8 values of each pair of blocks (2j, 2j+1)
 * interleaved by halves: block 2j's first 16, block 2j+1's first 16, then both second
 * halves. The 4-bit formats unpack two blocks' low nibbles into one register, which this
 * order matches. A last unpaired block keeps its plain order. */
static inline void rfc_quantize_row_q8_32p(rfc_act *a, int t) {
    rfc_quantize_row_q8_32(a, t);
    const int nb = (int)(a->K / 32);
    int8_t *q = a->qs + (size_t)t * a->K;
    for (int b = 0; b + 1 < nb; b += 2) {
        int8_t tmp[64];
        memcpy(tmp, q + 32 * b, 64);
        memcpy(q + 32 * b + 16, tmp + 32, 16);
        memcpy(q + 32 * b + 32, tmp + 16, 16);
    }
}

/* Row t of a q8_k activation. */
static inline void rfc_quantize_row_q8_k(rfc_act *a, int t) {
    const int K = (int)a->K, nb = K / 256;
    const float *x = a->x + (size_t)t * K;
    int8_t *q = a->qs + (size_t)t * K;
    for (int b = 0; b < nb; b++) a->d[(size_t)t * nb + b] = rfc_quantize_block(x + 256 * b, q + 256 * b, 256);
    for (int g = 0; g < K / 16; g++) a->bsums[(size_t)t * (K / 16) + g] = (int16_t)rfc_sum_i8(q + 16 * g, 16);
}

/* Elements per activation scale for each kind (0: float activations, not quantized). */
#define RFC_ACT_BLOCK_q8_32 32
#define RFC_ACT_BLOCK_q8_32p 32
#define RFC_ACT_BLOCK_q8_k 256
#define RFC_ACT_BLOCK_f32 0

/* Float activations need no preparation. */
static inline void rfc_quantize_row_f32(rfc_act *a, int t) {
    (void)a;
    (void)t;
}

#endif /* RFC_CPU_ACT_H */
