/* GGUF weight block layouts and scalar dequantization, portable C / C++ / HIP / CUDA.
 *
 * Every function is qualified with RFC_FN, which defaults to `static inline`; GPU code
 * includes this header after `#define RFC_FN __device__ __forceinline__`. Nothing here
 * needs an ISA extension: fp16 is decoded by bit manipulation, not F16C.
 *
 * The decoders follow ggml's dequantize_row_* operation by operation (the same float32
 * products in the same order), so they agree bit for bit with runtime/model/quants.py.
 *
 * Names are stable (other targets include this file):
 *   rfc_block_<fmt>                                              a quantized format's block
 *   rfc_dequant_block_<fmt>(const void *block, float *out)       one block
 * for every GGUF format of the format table (artifacts/formats.py). The table's rows give
 * the rest, rendered after this file by every prelude (templates/rfc_formats.h.j2):
 *   RFC_QK_<FMT>   elements per block        RFC_TS_<FMT>   bytes per block
 *   sizeof(rfc_block_<fmt>) == RFC_TS_<FMT>, checked at compile time
 *   rfc_dequant_row_<fmt>(const void *row, float *out, int n)    n elements (whole blocks)
 */
#ifndef RFC_BLOCKS_H
#define RFC_BLOCKS_H

#ifndef RFC_FN
#define RFC_FN static inline
#endif

/* The tables of the formats decoded through them (templates/rfc_tables.h.j2): static const
 * arrays unless the GPU header chose where they live. */
#ifndef RFC_TABLE
#define RFC_TABLE static const
#endif

#ifndef RFC_NO_STDINT
#include <stdint.h>
#endif

#ifdef __cplusplus
#define RFC_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define RFC_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define RFC_QK_K 256

/* fp16 fields are kept as raw uint16_t so the structs need no half type. qh of Q5_0/Q5_1
 * is a byte array (ggml: uint8_t[4]) so that no field forces 4-byte alignment. */
typedef struct { uint16_t d; int8_t qs[32]; } rfc_block_q8_0;
typedef struct { uint16_t d; uint8_t qs[16]; } rfc_block_q4_0;
typedef struct { uint16_t d; uint16_t m; uint8_t qs[16]; } rfc_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } rfc_block_q5_0;
typedef struct { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[16]; } rfc_block_q5_1;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d; uint16_t dmin; } rfc_block_q2_k;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } rfc_block_q3_k;
typedef struct { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[128]; } rfc_block_q4_k;
typedef struct { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } rfc_block_q5_k;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } rfc_block_q6_k;

/* ---- scalar conversions ------------------------------------------------------------- */

RFC_FN float rfc_f32_from_bits(uint32_t bits) {
    union { uint32_t u; float f; } v;
    v.u = bits;
    return v.f;
}

RFC_FN uint32_t rfc_f32_to_bits(float f) {
    union { float f; uint32_t u; } v;
    v.f = f;
    return v.u;
}

/* IEEE half -> float, exact for every input (subnormals, inf, NaN included). */
RFC_FN float rfc_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return rfc_f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return rfc_f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in float */
    float v = (float)mant * 5.9604644775390625e-08f;
    return sign ? -v : v;
}

/* float -> IEEE half, round to nearest even; overflow gives inf, NaN stays NaN. */
RFC_FN uint16_t rfc_fp32_to_fp16(float f) {
    uint32_t x = rfc_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                   /* below the smallest normal */
        if (ax < 0x33000000u) return (uint16_t)sign;          /* < 2^-25: rounds to zero */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((ax - 0x38000000u) >> 13);
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

RFC_FN float rfc_bf16_to_fp32(uint16_t h) { return rfc_f32_from_bits((uint32_t)h << 16); }

RFC_FN uint16_t rfc_read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

RFC_FN uint32_t rfc_read_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* ggml's get_scale_min_k4: 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block. */
RFC_FN void rfc_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* The 16 signed 6-bit scales of a Q3_K block (ggml's kmask unpacking), minus 32 applied. */
RFC_FN void rfc_q3_k_scales(const uint8_t *packed, int8_t *scales) {
    for (int i = 0; i < 16; i++) {
        int low = (i < 8) ? (packed[i] & 0xF) : (packed[i - 8] >> 4);
        int high = (packed[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        scales[i] = (int8_t)((low | (high << 4)) - 32);
    }
}

/* ---- per-block decoders -------------------------------------------------------------- */

RFC_FN void rfc_dequant_block_f32(const void *block, float *out) {
    const uint8_t *p = (const uint8_t *)block;
    out[0] = rfc_f32_from_bits(rfc_read_u32(p));
}

RFC_FN void rfc_dequant_block_f16(const void *block, float *out) {
    out[0] = rfc_fp16_to_fp32(rfc_read_u16((const uint8_t *)block));
}

RFC_FN void rfc_dequant_block_bf16(const void *block, float *out) {
    out[0] = rfc_bf16_to_fp32(rfc_read_u16((const uint8_t *)block));
}

RFC_FN void rfc_dequant_block_q8_0(const void *block, float *out) {
    const rfc_block_q8_0 *b = (const rfc_block_q8_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int j = 0; j < 32; j++) out[j] = (float)b->qs[j] * d;
}

RFC_FN void rfc_dequant_block_q4_0(const void *block, float *out) {
    const rfc_block_q4_0 *b = (const rfc_block_q4_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int j = 0; j < 16; j++) {
        out[j] = (float)((b->qs[j] & 0x0F) - 8) * d;
        out[j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
    }
}

RFC_FN void rfc_dequant_block_q4_1(const void *block, float *out) {
    const rfc_block_q4_1 *b = (const rfc_block_q4_1 *)block;
    const float d = rfc_fp16_to_fp32(b->d), m = rfc_fp16_to_fp32(b->m);
    for (int j = 0; j < 16; j++) {
        out[j] = (float)(b->qs[j] & 0x0F) * d + m;
        out[j + 16] = (float)(b->qs[j] >> 4) * d + m;
    }
}

RFC_FN void rfc_dequant_block_q5_0(const void *block, float *out) {
    const rfc_block_q5_0 *b = (const rfc_block_q5_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    const uint32_t qh = rfc_read_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        const int xh0 = (int)(((qh >> j) << 4) & 0x10);
        const int xh1 = (int)((qh >> (j + 12)) & 0x10);
        out[j] = (float)(((b->qs[j] & 0x0F) | xh0) - 16) * d;
        out[j + 16] = (float)(((b->qs[j] >> 4) | xh1) - 16) * d;
    }
}

RFC_FN void rfc_dequant_block_q5_1(const void *block, float *out) {
    const rfc_block_q5_1 *b = (const rfc_block_q5_1 *)block;
    const float d = rfc_fp16_to_fp32(b->d), m = rfc_fp16_to_fp32(b->m);
    const uint32_t qh = rfc_read_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        const int xh0 = (int)(((qh >> j) << 4) & 0x10);
        const int xh1 = (int)((qh >> (j + 12)) & 0x10);
        out[j] = (float)((b->qs[j] & 0x0F) | xh0) * d + m;
        out[j + 16] = (float)((b->qs[j] >> 4) | xh1) * d + m;
    }
}

RFC_FN void rfc_dequant_block_q2_k(const void *block, float *out) {
    const rfc_block_q2_k *b = (const rfc_block_q2_k *)block;
    const float d = rfc_fp16_to_fp32(b->d), dmin = rfc_fp16_to_fp32(b->dmin);
    const uint8_t *q = b->qs;
    int is = 0;
    for (int n = 0; n < RFC_QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                const uint8_t sc = b->scales[is++];
                const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
                for (int l = 0; l < 16; l++) *out++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}

RFC_FN void rfc_dequant_block_q3_k(const void *block, float *out) {
    const rfc_block_q3_k *b = (const rfc_block_q3_k *)block;
    const float d_all = rfc_fp16_to_fp32(b->d);
    int8_t scales[16];
    rfc_q3_k_scales(b->scales, scales);
    const uint8_t *q = b->qs;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < RFC_QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                const float dl = d_all * (float)scales[is++];
                for (int l = 16 * half; l < 16 * half + 16; l++)
                    *out++ = dl * (float)((int)((q[l] >> shift) & 3) - ((b->hmask[l] & m) ? 0 : 4));
            }
            m = (uint8_t)(m << 1);
        }
        q += 32;
    }
}

RFC_FN void rfc_dequant_block_q4_k(const void *block, float *out) {
    const rfc_block_q4_k *b = (const rfc_block_q4_k *)block;
    const float d = rfc_fp16_to_fp32(b->d), dmin = rfc_fp16_to_fp32(b->dmin);
    const uint8_t *q = b->qs;
    for (int j = 0; j < 4; j++) {
        uint8_t sc, mn;
        rfc_scale_min_k4(2 * j, b->scales, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        rfc_scale_min_k4(2 * j + 1, b->scales, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *out++ = d1 * (float)(q[l] & 0xF) - m1;
        for (int l = 0; l < 32; l++) *out++ = d2 * (float)(q[l] >> 4) - m2;
        q += 32;
    }
}

RFC_FN void rfc_dequant_block_q5_k(const void *block, float *out) {
    const rfc_block_q5_k *b = (const rfc_block_q5_k *)block;
    const float d = rfc_fp16_to_fp32(b->d), dmin = rfc_fp16_to_fp32(b->dmin);
    const uint8_t *ql = b->qs;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 4; j++) {
        uint8_t sc, mn;
        rfc_scale_min_k4(2 * j, b->scales, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        rfc_scale_min_k4(2 * j + 1, b->scales, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *out++ = d1 * (float)((ql[l] & 0xF) + ((b->qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++) *out++ = d2 * (float)((ql[l] >> 4) + ((b->qh[l] & u2) ? 16 : 0)) - m2;
        ql += 32;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

RFC_FN void rfc_dequant_block_q6_k(const void *block, float *out) {
    const rfc_block_q6_k *b = (const rfc_block_q6_k *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    const uint8_t *ql = b->ql, *qh = b->qh;
    const int8_t *sc = b->scales;
    for (int n = 0; n < RFC_QK_K; n += 128) {
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            out[l] = d * (float)sc[is] * (float)q1;
            out[l + 32] = d * (float)sc[is + 2] * (float)q2;
            out[l + 64] = d * (float)sc[is + 4] * (float)q3;
            out[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        out += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

/* ---- per-row decoders (one per format: templates/rfc_formats.h.j2) ---------------------- */

#define RFC_DEFINE_DEQUANT_ROW(fmt, QK, TS)                                           \
    RFC_FN void rfc_dequant_row_##fmt(const void *row, float *out, int n) {           \
        const uint8_t *p = (const uint8_t *)row;                                      \
        for (int i = 0; i < n / (QK); i++) rfc_dequant_block_##fmt(p + (TS) * i, out + (QK) * i); \
    }

#endif /* RFC_BLOCKS_H */
