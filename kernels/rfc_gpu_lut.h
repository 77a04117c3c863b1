/* GPU sub-block decoders (rfc_gpu_q8.h's rfc_wsub: w = a_h * u + b_h per 16-element half) of
 * the formats of rfc_blocks_lut.h: u holds each element's int8 value (a lattice value with its
 * sign, a codebook level, a binary or ternary digit), which dp4a takes signed as it takes
 * Q8_0's, a_h the scale of the half and b_h a constant term (the ternary digits' -1, IQ1_S's
 * delta) that the activations' sums carry. A lane decodes one 32-element
 * sub-block into registers, looking its values up in the tables (templates/rfc_tables.h.j2).
 * Loads are as wide as the block's alignment allows (tensors are 256-aligned in weights.bin).
 */
#ifndef RFC_GPU_LUT_H
#define RFC_GPU_LUT_H

/* the table bytes of the 4 nibbles at bits 0, 8, 16 and 24 of q, packed into an int */
RFC_DEVICE_FN int rfc_lut4(const int8_t *table, int q) {
    return (int)((uint32_t)(uint8_t)table[q & 0xF] | ((uint32_t)(uint8_t)table[(q >> 8) & 0xF] << 8) |
                 ((uint32_t)(uint8_t)table[(q >> 16) & 0xF] << 16) | ((uint32_t)(uint8_t)table[(q >> 24) & 0xF] << 24));
}

/* IQ4_NL (18-byte blocks, 2-byte aligned): low nibbles are elements 0-15, high 16-31 */
RFC_DEVICE_FN void rfc_wsub_iq4_nl(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a2(blk + 2 + 4 * i);
        w->u[i] = rfc_lut4(rfc_kvalues_iq4nl, q), w->u[i + 4] = rfc_lut4(rfc_kvalues_iq4nl, q >> 4);
    }
    rfc_same_halves(w, rfc_ld_half(blk), 0.0f);
}

/* IQ4_XS (136-byte blocks, 8-byte aligned): sub-block sub is 16 bytes of IQ4_NL nibbles */
RFC_DEVICE_FN void rfc_wsub_iq4_xs(const uint8_t *blk, int sub, rfc_wsub *w) {
    const rfc_block_iq4_xs *b = (const rfc_block_iq4_xs *)blk;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a4(blk + 8 + 16 * sub + 4 * i);
        w->u[i] = rfc_lut4(rfc_kvalues_iq4nl, q), w->u[i + 4] = rfc_lut4(rfc_kvalues_iq4nl, q >> 4);
    }
    rfc_same_halves(w, rfc_ld_half(blk) * (float)rfc_iq4_xs_scale(b, sub), 0.0f);
}

RFC_DEVICE_FN int rfc_ld_i32_a1(const uint8_t *p) {
    return (int)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
}

/* MXFP4 (17-byte blocks: byte loads): IQ4_NL's layout, the fp4 levels, an E8M0 scale */
RFC_DEVICE_FN void rfc_wsub_mxfp4(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a1(blk + 1 + 4 * i);
        w->u[i] = rfc_lut4(rfc_kvalues_fp4, q), w->u[i + 4] = rfc_lut4(rfc_kvalues_fp4, q >> 4);
    }
    rfc_same_halves(w, rfc_e8m0_half(blk[0]), 0.0f);
}

/* NVFP4 (36-byte blocks, 4-byte aligned): two groups of 8 bytes, low nibbles elements 0-7 of a
 * group, high 8-15, each group (a half) at its UE4M3 scale */
RFC_DEVICE_FN void rfc_wsub_nvfp4(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int q0 = rfc_ld_i32_a4(blk + 4 + 16 * sub + 8 * h), q1 = rfc_ld_i32_a4(blk + 8 + 16 * sub + 8 * h);
        w->u[4 * h] = rfc_lut4(rfc_kvalues_fp4, q0), w->u[4 * h + 1] = rfc_lut4(rfc_kvalues_fp4, q1);
        w->u[4 * h + 2] = rfc_lut4(rfc_kvalues_fp4, q0 >> 4), w->u[4 * h + 3] = rfc_lut4(rfc_kvalues_fp4, q1 >> 4);
    }
    w->a0 = rfc_ue4m3_half(blk[2 * sub]), w->a1 = rfc_ue4m3_half(blk[2 * sub + 1]), w->b0 = w->b1 = 0.0f;
}

/* 4 bits (bits 0..3 of b) spread to bytes 0..3 as 0 or 1 */
RFC_DEVICE_FN int rfc_spread4(int b) { return (int)(((uint32_t)(b & 0xF) * 0x00204081u) & 0x01010101u); }

/* Q1_0 (18-byte blocks, 2-byte aligned): 4 bytes of signs, +1 set, -1 clear */
RFC_DEVICE_FN void rfc_wsub_q1_0(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int bits = rfc_ld_i32_a2(blk + 2 + 4 * sub);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] = ~(rfc_spread4(bits >> (4 * i)) * 0xFE);  /* bytes 0x01 (set) or 0xFF */
    rfc_same_halves(w, rfc_ld_half(blk), 0.0f);
}

/* Q2_0 (18-byte blocks, 2-byte aligned): element 4i + t is bits 2t of byte i; u = 0..3, w = d u - d */
RFC_DEVICE_FN void rfc_wsub_q2_0(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int b = blk[2 + 8 * sub + i];
        w->u[i] = (b & 3) | ((b & 0xC) << 6) | ((b & 0x30) << 12) | ((b & 0xC0) << 18);
    }
    const float d = rfc_ld_half(blk);
    rfc_same_halves(w, d, -d);
}

/* TQ2_0 (66-byte blocks, 2-byte aligned): sub-block j is bits 2 (j % 4) of qs[32 (j / 4) ..] */
RFC_DEVICE_FN void rfc_wsub_tq2_0(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int shift = 2 * (sub & 3);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] = (rfc_ld_i32_a2(blk + 32 * (sub >> 2) + 4 * i) >> shift) & 0x03030303;
    const float d = rfc_ld_half(blk + 64);
    rfc_same_halves(w, d, -d);
}

/* TQ1_0 (54-byte blocks): each element's base-3 digit (rfc_tq1_0_digit); u = 0..2, w = d u - d */
RFC_DEVICE_FN void rfc_wsub_tq1_0(const uint8_t *blk, int sub, rfc_wsub *w) {
    const rfc_block_tq1_0 *b = (const rfc_block_tq1_0 *)blk;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int u = 0;
#pragma unroll
        for (int t = 0; t < 4; t++) u |= rfc_tq1_0_digit(b, 32 * sub + 4 * i + t) << (8 * t);
        w->u[i] = u;
    }
    const float d = rfc_ld_half(blk + 52);
    rfc_same_halves(w, d, -d);
}

/* 4 grid bytes (all non-zero) with the signs of set bits in bits 0..3 of s flipped: x ^ m
 * (m = 0xFF per negative byte) plus one per negative byte, which cannot carry */
RFC_DEVICE_FN int rfc_signed4(uint32_t x, int s) {
    const uint32_t one = (uint32_t)rfc_spread4(s), m = one * 0xFFu;
    return (int)((x ^ m) + one);
}

/* 8 values of a 64-bit grid entry into u[0], u[1], signs from the 8 bits of s */
RFC_DEVICE_FN void rfc_grid8_signed(uint64_t g, int s, int *u) {
    u[0] = rfc_signed4((uint32_t)g, s), u[1] = rfc_signed4((uint32_t)(g >> 32), s >> 4);
}

/* IQ2_XXS (66-byte blocks, 2-byte aligned) */
RFC_DEVICE_FN void rfc_wsub_iq2_xxs(const uint8_t *blk, int sub, rfc_wsub *w) {
    const uint32_t idx = (uint32_t)rfc_ld_i32_a2(blk + 2 + 8 * sub), aux = (uint32_t)rfc_ld_i32_a2(blk + 6 + 8 * sub);
#pragma unroll
    for (int l = 0; l < 4; l++)
        rfc_grid8_signed(rfc_iq2xxs_grid[(idx >> (8 * l)) & 0xFF], rfc_ksigns_iq2xs[(aux >> (7 * l)) & 127], w->u + 2 * l);
    rfc_same_halves(w, rfc_ld_half(blk) * (0.5f + (float)(aux >> 28)) * 0.25f, 0.0f);
}

/* IQ2_XS (74-byte blocks, 2-byte aligned) */
RFC_DEVICE_FN void rfc_wsub_iq2_xs(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const int q = *(const uint16_t *)(blk + 2 + 8 * sub + 2 * l);
        rfc_grid8_signed(rfc_iq2xs_grid[q & 511], rfc_ksigns_iq2xs[q >> 9], w->u + 2 * l);
    }
    const float d = rfc_ld_half(blk);
    const int sc = blk[66 + sub];
    w->a0 = d * (0.5f + (float)(sc & 0xF)) * 0.25f, w->a1 = d * (0.5f + (float)(sc >> 4)) * 0.25f, w->b0 = w->b1 = 0.0f;
}

/* IQ2_S (82-byte blocks, 2-byte aligned) */
RFC_DEVICE_FN void rfc_wsub_iq2_s(const uint8_t *blk, int sub, rfc_wsub *w) {
    const rfc_block_iq2_s *b = (const rfc_block_iq2_s *)blk;
#pragma unroll
    for (int l = 0; l < 4; l++) rfc_grid8_signed(rfc_iq2s_grid[rfc_iq2_s_index(b, sub, l)], b->signs[4 * sub + l], w->u + 2 * l);
    const float d = rfc_ld_half(blk);
    const int sc = b->scales[sub];
    w->a0 = d * (0.5f + (float)(sc & 0xF)) * 0.25f, w->a1 = d * (0.5f + (float)(sc >> 4)) * 0.25f, w->b0 = w->b1 = 0.0f;
}

/* IQ3_XXS (98-byte blocks, 2-byte aligned): 4-value entries, one per int */
RFC_DEVICE_FN void rfc_wsub_iq3_xxs(const uint8_t *blk, int sub, rfc_wsub *w) {
    const uint8_t *q = blk + 2 + 8 * sub;
    const uint32_t aux = (uint32_t)rfc_ld_i32_a2(blk + 66 + 4 * sub);
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const int s = rfc_ksigns_iq2xs[(aux >> (7 * l)) & 127];
        w->u[2 * l] = rfc_signed4(rfc_iq3xxs_grid[q[2 * l]], s), w->u[2 * l + 1] = rfc_signed4(rfc_iq3xxs_grid[q[2 * l + 1]], s >> 4);
    }
    rfc_same_halves(w, rfc_ld_half(blk) * (0.5f + (float)(aux >> 28)) * 0.5f, 0.0f);
}

/* IQ3_S (110-byte blocks, 2-byte aligned) */
RFC_DEVICE_FN void rfc_wsub_iq3_s(const uint8_t *blk, int sub, rfc_wsub *w) {
    const rfc_block_iq3_s *b = (const rfc_block_iq3_s *)blk;
#pragma unroll
    for (int k = 0; k < 8; k++) w->u[k] = rfc_signed4(rfc_iq3s_grid[rfc_iq3_s_index(b, sub, k)], b->signs[4 * sub + k / 2] >> (4 * (k & 1)));
    rfc_same_halves(w, rfc_ld_half(blk) * (float)(1 + 2 * ((b->scales[sub / 2] >> (4 * (sub % 2))) & 0xF)), 0.0f);
}

/* IQ1_S (50-byte blocks, 2-byte aligned): u = the grid's -1..1 as they are; the delta, the same
 * for the whole sub-block, is the b term: w = dl g + dl delta */
RFC_DEVICE_FN void rfc_wsub_iq1_s(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int qh = *(const uint16_t *)(blk + 34 + 2 * sub);
    const uint8_t *qs = blk + 2 + 4 * sub;
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const uint64_t g = rfc_iq1s_grid[qs[l] | (((qh >> (3 * l)) & 7) << 8)];
        w->u[2 * l] = (int)(uint32_t)g, w->u[2 * l + 1] = (int)(uint32_t)(g >> 32);
    }
    const float dl = rfc_ld_half(blk) * (float)(2 * ((qh >> 12) & 7) + 1);
    rfc_same_halves(w, dl, dl * (qh & 0x8000 ? -RFC_IQ1_DELTA : RFC_IQ1_DELTA));
}

/* 8 g + delta per byte of a 64-bit IQ1 grid entry (bytes -1..1), into u[0], u[1] */
RFC_DEVICE_FN void rfc_iq1_values8(uint64_t g, int delta, int *u) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int v = 0;
#pragma unroll
        for (int t = 0; t < 4; t++) v |= ((8 * (int)(int8_t)(g >> (8 * (4 * h + t))) + delta) & 0xFF) << (8 * t);
        u[h] = v;
    }
}

/* IQ1_M (56-byte blocks, 8-byte aligned): deltas per 8 values, so u = 8 g +- 1 at dl / 8 */
RFC_DEVICE_FN void rfc_wsub_iq1_m(const uint8_t *blk, int sub, rfc_wsub *w) {
    const rfc_block_iq1_m *b = (const rfc_block_iq1_m *)blk;
    const uint8_t *qs = b->qs + 4 * sub;
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const int h = b->qh[2 * sub + l / 2];
        const int i = qs[l] | ((l % 2 ? h << 4 : h << 8) & 0x700);
        rfc_iq1_values8(rfc_iq1s_grid[i], (l % 2 ? h & 0x80 : h & 0x08) ? -1 : 1, w->u + 2 * l);
    }
    const float d = rfc_iq1_m_d(b) * 0.125f;
    w->a0 = d * (float)(2 * rfc_iq1_m_scale(b, sub, 0) + 1), w->a1 = d * (float)(2 * rfc_iq1_m_scale(b, sub, 1) + 1);
    w->b0 = w->b1 = 0.0f;
}

#endif /* RFC_GPU_LUT_H */
