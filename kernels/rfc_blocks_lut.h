/* GGUF blocks of the formats newer than the k-quants: ggml's i-quants and fp4 formats, decoded
 * through tables, and the ternary and binary formats. Portable C / C++ / HIP / CUDA like
 * rfc_blocks.h (RFC_FN), after the tables (templates/rfc_tables.h.j2: rfc_kvalues_*,
 * rfc_ksigns_iq2xs, rfc_<grid>_grid).
 *
 * The decoders follow ggml's dequantize_row_* operation by operation, as runtime/model/quants_iq.py
 * does (which tests/unit/test_quants.py holds to gguf-py bit for bit). Names as in rfc_blocks.h:
 *   rfc_block_<fmt>, rfc_dequant_block_<fmt>(const void *block, float *out)
 */
#ifndef RFC_BLOCKS_LUT_H
#define RFC_BLOCKS_LUT_H

/* IQ4_NL: 32 values, one f16 scale, 4-bit indices into the non-linear levels rfc_kvalues_iq4nl
 * (elements j and j + 16 in the low and high nibble of byte j). */
typedef struct { uint16_t d; uint8_t qs[16]; } rfc_block_iq4_nl;
/* IQ4_XS: 256 values in 8 sub-blocks of 32 with 6-bit scales (low 4 bits in scales_l, high 2
 * in scales_h), the IQ4_NL levels. */
typedef struct { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } rfc_block_iq4_xs;

RFC_FN void rfc_dequant_block_iq4_nl(const void *block, float *out) {
    const rfc_block_iq4_nl *b = (const rfc_block_iq4_nl *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int j = 0; j < 16; j++) {
        out[j] = d * (float)rfc_kvalues_iq4nl[b->qs[j] & 0xF];
        out[j + 16] = d * (float)rfc_kvalues_iq4nl[b->qs[j] >> 4];
    }
}

/* The signed 6-bit scale of sub-block ib (0..7) of an IQ4_XS block, minus 32. */
RFC_FN int rfc_iq4_xs_scale(const rfc_block_iq4_xs *b, int ib) {
    return (((b->scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((b->scales_h >> (2 * ib)) & 3) << 4)) - 32;
}

RFC_FN void rfc_dequant_block_iq4_xs(const void *block, float *out) {
    const rfc_block_iq4_xs *b = (const rfc_block_iq4_xs *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const float dl = d * (float)rfc_iq4_xs_scale(b, ib);
        const uint8_t *qs = b->qs + 16 * ib;
        for (int j = 0; j < 16; j++) {
            out[32 * ib + j] = dl * (float)rfc_kvalues_iq4nl[qs[j] & 0xF];
            out[32 * ib + j + 16] = dl * (float)rfc_kvalues_iq4nl[qs[j] >> 4];
        }
    }
}

/* ---- fp4: MXFP4 (OCP microscaling, gpt-oss's experts) and NVFP4 ------------------------- */

/* MXFP4: 32 E2M1 values (rfc_kvalues_fp4, doubled) at an E8M0 scale, halved to match. */
typedef struct { uint8_t e; uint8_t qs[16]; } rfc_block_mxfp4;
/* NVFP4: 64 E2M1 values in 4 sub-blocks of 16, each at an unsigned E4M3 scale; sub-block s is
 * 8 bytes, its elements 0-7 in the low nibbles and 8-15 in the high ones. */
typedef struct { uint8_t d[4]; uint8_t qs[32]; } rfc_block_nvfp4;

/* ggml_e8m0_to_fp32_half: 2^(x - 128), exponents 0 and 1 as subnormals */
RFC_FN float rfc_e8m0_half(uint8_t x) {
    return rfc_f32_from_bits(x < 2 ? 0x00200000u << x : (uint32_t)(x - 1) << 23);
}

/* ggml_ue4m3_to_fp32: unsigned E4M3 (bias 7) times 0.5; codes 0 and 0x7F are 0 */
RFC_FN float rfc_ue4m3_half(uint8_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int e = (x >> 3) & 0xF, m = x & 7;
    const float raw = e == 0 ? (float)m * (1.0f / 512.0f) : (1.0f + (float)m / 8.0f) * rfc_f32_from_bits((uint32_t)(e + 120) << 23);
    return raw * 0.5f;
}

RFC_FN void rfc_dequant_block_mxfp4(const void *block, float *out) {
    const rfc_block_mxfp4 *b = (const rfc_block_mxfp4 *)block;
    const float d = rfc_e8m0_half(b->e);
    for (int j = 0; j < 16; j++) {
        out[j] = (float)rfc_kvalues_fp4[b->qs[j] & 0xF] * d;
        out[j + 16] = (float)rfc_kvalues_fp4[b->qs[j] >> 4] * d;
    }
}

RFC_FN void rfc_dequant_block_nvfp4(const void *block, float *out) {
    const rfc_block_nvfp4 *b = (const rfc_block_nvfp4 *)block;
    for (int s = 0; s < 4; s++) {
        const float d = rfc_ue4m3_half(b->d[s]);
        for (int j = 0; j < 8; j++) {
            out[16 * s + j] = (float)rfc_kvalues_fp4[b->qs[8 * s + j] & 0xF] * d;
            out[16 * s + j + 8] = (float)rfc_kvalues_fp4[b->qs[8 * s + j] >> 4] * d;
        }
    }
}

/* ---- ternary and binary: TQ1_0, TQ2_0 (BitNet b1.58), Q1_0, Q2_0 ---------------------- */

/* TQ1_0: 256 digits -1..1 at one f16 scale, 5 base-3 digits per byte of qs (digit n of a byte q
 * is (q * 3^n mod 256) * 3 >> 8; the digits of all bytes come n by n), 4 per byte of qh. */
typedef struct { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; } rfc_block_tq1_0;
/* TQ2_0: 256 values 0..3 meaning -1..2, four per byte (per 32 bytes: bits 0-1 of each, then 2-3, ...). */
typedef struct { uint8_t qs[64]; uint16_t d; } rfc_block_tq2_0;
/* Q1_0: 128 signs, bit j of the little-endian bit string set for +d, clear for -d. */
typedef struct { uint16_t d; uint8_t qs[16]; } rfc_block_q1_0;
/* Q2_0: 64 values 0..3 meaning -1..2, element j in bits 2 (j % 4) of byte j / 4. */
typedef struct { uint16_t d; uint8_t qs[16]; } rfc_block_q2_0;

/* base-3 digit n of a TQ1_0 byte, 0..2 */
RFC_FN int rfc_trit(uint8_t q, int n) {
    const uint8_t p = (uint8_t)(q * (n == 0 ? 1 : n == 1 ? 3 : n == 2 ? 9 : n == 3 ? 27 : 81));
    return ((int)p * 3) >> 8;
}

/* element e of a TQ1_0 block as its byte and digit: 160 from qs[0..31] (5 digits of 32),
 * 80 from qs[32..47] (5 of 16), 16 from qh (4 of 4) */
RFC_FN int rfc_tq1_0_digit(const rfc_block_tq1_0 *b, int e) {
    if (e < 160) return rfc_trit(b->qs[e % 32], e / 32);
    if (e < 240) return rfc_trit(b->qs[32 + (e - 160) % 16], (e - 160) / 16);
    return rfc_trit(b->qh[(e - 240) % 4], (e - 240) / 4);
}

RFC_FN void rfc_dequant_block_tq1_0(const void *block, float *out) {
    const rfc_block_tq1_0 *b = (const rfc_block_tq1_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int e = 0; e < 256; e++) out[e] = (float)(rfc_tq1_0_digit(b, e) - 1) * d;
}

RFC_FN void rfc_dequant_block_tq2_0(const void *block, float *out) {
    const rfc_block_tq2_0 *b = (const rfc_block_tq2_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int n = 0; n < 2; n++)
        for (int l = 0; l < 4; l++)
            for (int m = 0; m < 32; m++) *out++ = (float)(((b->qs[32 * n + m] >> (2 * l)) & 3) - 1) * d;
}

RFC_FN void rfc_dequant_block_q1_0(const void *block, float *out) {
    const rfc_block_q1_0 *b = (const rfc_block_q1_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d), neg_d = -d;
    for (int j = 0; j < 128; j++) out[j] = ((b->qs[j / 8] >> (j % 8)) & 1) ? d : neg_d;
}

RFC_FN void rfc_dequant_block_q2_0(const void *block, float *out) {
    const rfc_block_q2_0 *b = (const rfc_block_q2_0 *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int j = 0; j < 64; j++) out[j] = (float)(((b->qs[j / 4] >> (2 * (j % 4))) & 3) - 1) * d;
}

/* ---- lattice i-quants: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M ------------- *
 * Values come 8 (4 for IQ3) at a time from a grid entry (rfc_<grid>_grid, byte j = value j)
 * with signs (bit j set: value j negative; 7 stored bits through rfc_ksigns_iq2xs, or 8), at a
 * scale per 32 or per 16. */

typedef struct { uint16_t d; uint8_t qs[64]; } rfc_block_iq2_xxs;  /* per 32: 4 index bytes, u32 signs | scale << 28 */
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t scales[8]; } rfc_block_iq2_xs;  /* u16: index 9 bits | signs 7 */
typedef struct { uint16_t d; uint8_t qs[32]; uint8_t signs[32]; uint8_t qh[8]; uint8_t scales[8]; } rfc_block_iq2_s;
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t scales_signs[32]; } rfc_block_iq3_xxs;
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; } rfc_block_iq3_s;
typedef struct { uint16_t d; uint8_t qs[32]; uint8_t qh[16]; } rfc_block_iq1_s;  /* qh: 8 little-endian u16 */
typedef struct { uint8_t qs[32]; uint8_t qh[16]; uint8_t scales[8]; } rfc_block_iq1_m;  /* scales: 4 u16 */

/* byte j of a grid entry */
#define RFC_GRID8(grid, i, j) ((uint8_t)((grid)[i] >> (8 * (j))))
#define RFC_SIGN(s, j) (((s) >> (j)) & 1 ? -1.0f : 1.0f)

RFC_FN void rfc_dequant_block_iq2_xxs(const void *block, float *out) {
    const rfc_block_iq2_xxs *b = (const rfc_block_iq2_xxs *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *idx = b->qs + 8 * ib;
        const uint32_t aux = rfc_read_u32(b->qs + 8 * ib + 4);
        const float db = d * (0.5f + (float)(aux >> 28)) * 0.25f;
        for (int l = 0; l < 4; l++) {
            const uint8_t signs = rfc_ksigns_iq2xs[(aux >> (7 * l)) & 127];
            for (int j = 0; j < 8; j++) *out++ = db * (float)RFC_GRID8(rfc_iq2xxs_grid, idx[l], j) * RFC_SIGN(signs, j);
        }
    }
}

RFC_FN void rfc_dequant_block_iq2_xs(const void *block, float *out) {
    const rfc_block_iq2_xs *b = (const rfc_block_iq2_xs *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const float db[2] = {d * (0.5f + (float)(b->scales[ib] & 0xF)) * 0.25f, d * (0.5f + (float)(b->scales[ib] >> 4)) * 0.25f};
        for (int l = 0; l < 4; l++) {
            const uint16_t q = rfc_read_u16(b->qs + 2 * (4 * ib + l));
            const uint8_t signs = rfc_ksigns_iq2xs[q >> 9];
            for (int j = 0; j < 8; j++) *out++ = db[l / 2] * (float)RFC_GRID8(rfc_iq2xs_grid, q & 511, j) * RFC_SIGN(signs, j);
        }
    }
}

/* the 10-bit grid index of group l (0..3) of sub-block ib of an IQ2_S block */
RFC_FN int rfc_iq2_s_index(const rfc_block_iq2_s *b, int ib, int l) {
    return b->qs[4 * ib + l] | ((b->qh[ib] << (8 - 2 * l)) & 0x300);
}

RFC_FN void rfc_dequant_block_iq2_s(const void *block, float *out) {
    const rfc_block_iq2_s *b = (const rfc_block_iq2_s *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const float db[2] = {d * (0.5f + (float)(b->scales[ib] & 0xF)) * 0.25f, d * (0.5f + (float)(b->scales[ib] >> 4)) * 0.25f};
        for (int l = 0; l < 4; l++) {
            const int i = rfc_iq2_s_index(b, ib, l);
            const uint8_t signs = b->signs[4 * ib + l];
            for (int j = 0; j < 8; j++) *out++ = db[l / 2] * (float)RFC_GRID8(rfc_iq2s_grid, i, j) * RFC_SIGN(signs, j);
        }
    }
}

RFC_FN void rfc_dequant_block_iq3_xxs(const void *block, float *out) {
    const rfc_block_iq3_xxs *b = (const rfc_block_iq3_xxs *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *idx = b->qs + 8 * ib;
        const uint32_t aux = rfc_read_u32(b->scales_signs + 4 * ib);
        const float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
        for (int l = 0; l < 4; l++) {
            const uint8_t signs = rfc_ksigns_iq2xs[(aux >> (7 * l)) & 127];
            for (int j = 0; j < 4; j++) {
                out[j] = db * (float)RFC_GRID8(rfc_iq3xxs_grid, idx[2 * l], j) * RFC_SIGN(signs, j);
                out[j + 4] = db * (float)RFC_GRID8(rfc_iq3xxs_grid, idx[2 * l + 1], j) * RFC_SIGN(signs, j + 4);
            }
            out += 8;
        }
    }
}

/* the 9-bit grid index of value group k (0..7, 4 values each) of sub-block ib of an IQ3_S block */
RFC_FN int rfc_iq3_s_index(const rfc_block_iq3_s *b, int ib, int k) {
    return b->qs[8 * ib + k] | (((b->qh[ib] >> k) & 1) << 8);
}

RFC_FN void rfc_dequant_block_iq3_s(const void *block, float *out) {
    const rfc_block_iq3_s *b = (const rfc_block_iq3_s *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const float db = d * (float)(1 + 2 * ((b->scales[ib / 2] >> (4 * (ib % 2))) & 0xF));
        for (int l = 0; l < 4; l++) {
            const uint8_t signs = b->signs[4 * ib + l];
            for (int j = 0; j < 4; j++) {
                out[j] = db * (float)RFC_GRID8(rfc_iq3s_grid, rfc_iq3_s_index(b, ib, 2 * l), j) * RFC_SIGN(signs, j);
                out[j + 4] = db * (float)RFC_GRID8(rfc_iq3s_grid, rfc_iq3_s_index(b, ib, 2 * l + 1), j) * RFC_SIGN(signs, j + 4);
            }
            out += 8;
        }
    }
}

#define RFC_IQ1_DELTA 0.125f

RFC_FN void rfc_dequant_block_iq1_s(const void *block, float *out) {
    const rfc_block_iq1_s *b = (const rfc_block_iq1_s *)block;
    const float d = rfc_fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ib++) {
        const int qh = rfc_read_u16(b->qh + 2 * ib);
        const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -RFC_IQ1_DELTA : RFC_IQ1_DELTA;
        for (int l = 0; l < 4; l++) {
            const int i = b->qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8);
            for (int j = 0; j < 8; j++) *out++ = dl * ((float)(int8_t)RFC_GRID8(rfc_iq1s_grid, i, j) + delta);
        }
    }
}

/* The f16 scale of an IQ1_M block: the top nibbles of its four u16 scale words. */
RFC_FN float rfc_iq1_m_d(const rfc_block_iq1_m *b) {
    const uint8_t *sc = b->scales;
    return rfc_fp16_to_fp32((uint16_t)((rfc_read_u16(sc) >> 12) | ((rfc_read_u16(sc + 2) >> 8) & 0x00F0) |
                                       ((rfc_read_u16(sc + 4) >> 4) & 0x0F00) | (rfc_read_u16(sc + 6) & 0xF000)));
}

/* the 3-bit scale of half h (0, 1) of sub-block ib of an IQ1_M block */
RFC_FN int rfc_iq1_m_scale(const rfc_block_iq1_m *b, int ib, int h) {
    return (rfc_read_u16(b->scales + 2 * (ib / 2)) >> (6 * (ib % 2) + 3 * h)) & 7;
}

RFC_FN void rfc_dequant_block_iq1_m(const void *block, float *out) {
    const rfc_block_iq1_m *b = (const rfc_block_iq1_m *)block;
    const float d = rfc_iq1_m_d(b);
    for (int ib = 0; ib < 8; ib++) {
        const float dl[2] = {d * (float)(2 * rfc_iq1_m_scale(b, ib, 0) + 1), d * (float)(2 * rfc_iq1_m_scale(b, ib, 1) + 1)};
        for (int l = 0; l < 4; l++) {
            const uint8_t h = b->qh[2 * ib + l / 2];
            const int i = b->qs[4 * ib + l] | ((l % 2 ? h << 4 : h << 8) & 0x700);
            const float delta = (l % 2 ? h & 0x80 : h & 0x08) ? -RFC_IQ1_DELTA : RFC_IQ1_DELTA;
            for (int j = 0; j < 8; j++) *out++ = dl[l / 2] * ((float)(int8_t)RFC_GRID8(rfc_iq1s_grid, i, j) + delta);
        }
    }
}

#endif /* RFC_BLOCKS_LUT_H */
