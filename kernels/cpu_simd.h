/* CPU SIMD helpers: the accumulator abstraction the matmul tiles are written against,
 * fp16 conversion of vectors, horizontal sums and a vectorized exp.
 *
 * RFC_AVX2 selects the AVX2 + FMA + F16C paths; without it every helper has a portable scalar
 * version (auto-vectorized where the compiler can). Requires rfc_blocks.h first.
 */
#ifndef RFC_CPU_SIMD_H
#define RFC_CPU_SIMD_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define RFC_AVX2 1
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define RFC_RESTRICT __restrict__
#else
#define RFC_RESTRICT
#endif

/* ---- accumulator: 8 float lanes whose sum is the value -------------------------------- */
#ifdef RFC_AVX2
typedef __m256 rfc_acc;

static inline rfc_acc rfc_acc_zero(void) { return _mm256_setzero_ps(); }

static inline float rfc_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float rfc_acc_sum(rfc_acc a) { return rfc_hsum_ps(a); }

/* 4 activation bytes broadcast to every int32 lane, loaded as one int32 straight from
 * memory: a memcpy of a whole block into a local array instead made gcc route every
 * broadcast through a general register (2 uops each), and VNNI cannot fold it. */
static inline __attribute__((always_inline)) __m256i rfc_bcast4(const int8_t *y) {
    int32_t v;
    memcpy(&v, y, 4);
    return _mm256_set1_epi32(v);
}

#else
typedef float rfc_acc;

static inline rfc_acc rfc_acc_zero(void) { return 0.0f; }

static inline float rfc_acc_sum(rfc_acc a) { return a; }
#endif

#ifdef RFC_AVX2
/* r[j] <- dword j of every row: a transpose of 8 x 8 int32 */
static inline void rfc_transpose8_epi32(__m256i r[8]) {
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}
#endif

/* ---- fp16 / bf16 rows ------------------------------------------------------------------ */
#ifdef RFC_AVX2
static inline __m256 rfc_load8_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline void rfc_store8_f16(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline __m256 rfc_load8_bf16(const uint16_t *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif

static inline float rfc_fp16_scalar(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return rfc_fp16_to_fp32(h);
#endif
}

/* ---- exp ------------------------------------------------------------------------------- */
#ifdef RFC_AVX2
/* exp(x) for float lanes, relative error ~2 ulp over the normal range (Cephes expf:
 * range reduction by ln 2 in two parts, degree-5 polynomial). Inputs below -87.3 give 0. */
static inline __m256 rfc_exp_ps(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447505531f);
    x = _mm256_min_ps(x, hi);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(under, y);
}
#endif

#if defined(RFC_AVX2) && defined(__AVX512F__)
/* The 32 bytes at c0 and at c1 as one zmm, c0's in the low half: the same chunk of two x8
 * groups (rows 0-7, then 8-15), which the cpu-avx512 and AMX kernels dot 16 rows at a time. */
static inline __attribute__((always_inline)) __m512i rfc_x16_load(const uint8_t *c0, const uint8_t *c1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)c0)),
                              _mm256_loadu_si256((const __m256i *)c1), 1);
}

/* rfc_exp_ps 16 lanes wide: each lane the same operations, so the same bits */
static inline __m512 rfc_exp_ps16(__m512 x) {
    x = _mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f));
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365447505531f), _CMP_LT_OQ);
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    y = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
    return _mm512_maskz_mov_ps((__mmask16)~under, y);
}
#endif

#endif /* RFC_CPU_SIMD_H */
