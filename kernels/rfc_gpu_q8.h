/* Integer dot products of GGUF weight blocks with int8 activations, for the GPU matmuls.
 *
 * The unit is a 32-element sub-block: a lane decodes one sub-block of a weight row into
 * registers (8 ints of 4 bytes; no local array) and applies it to the activation rows of its
 * tile with dp4a. Every format is written as w = a_h * u + b_h over the two 16-element
 * halves h of the sub-block, u an unsigned integer in 0..63 (Q8_0: the signed int8 itself,
 * b = 0). Activations are rounded per 32 elements with a float32 scale (xd, tests/oracle.py
 * kind "q8_32"), and the sums of their integers per half (xs) carry the b_h terms:
 *
 *   sum_e w_e x_e = xd * sum_h (a_h * dot(u_h, xq_h) + b_h * xs_h)
 *
 * The bit fields follow rfc_blocks.h's decoders (ggml's dequantize_row_*), element for
 * element. Loads are as wide as the format's alignment allows: 16 bytes for Q4_K/Q5_K
 * quants (blocks of 144/176 bytes, quants at 16-byte offsets; tensors are 256-aligned in
 * weights.bin), 4 bytes for Q4_1/Q5_1/Q2_K, two 2-byte halves for the rest.
 */
#ifndef RFC_GPU_Q8_H
#define RFC_GPU_Q8_H

typedef struct {
    int u[8];  /* 32 quants, 4 per int, element order */
    float a0, a1, b0, b1;  /* per 16-element half: w = a * u + b */
} rfc_wsub;

RFC_DEVICE_FN int rfc_ld_i32_a2(const uint8_t *p) {
    const uint16_t *h = (const uint16_t *)p;
    return (int)((uint32_t)h[0] | ((uint32_t)h[1] << 16));
}

RFC_DEVICE_FN int rfc_ld_i32_a4(const uint8_t *p) { return *(const int *)p; }

RFC_DEVICE_FN float rfc_ld_half(const uint8_t *p) { return RFC_HALF_TO_FLOAT(*(const uint16_t *)p); }

/* 32 bytes at a 16-byte aligned address into u[0..7] */
RFC_DEVICE_FN void rfc_ld_32b(const uint8_t *p, int *u) {
    const rfc_i4 lo = ((const rfc_i4 *)p)[0], hi = ((const rfc_i4 *)p)[1];
    u[0] = lo.x, u[1] = lo.y, u[2] = lo.z, u[3] = lo.w;
    u[4] = hi.x, u[5] = hi.y, u[6] = hi.z, u[7] = hi.w;
}

/* bits 0..3 of h into bit 4 of bytes 0..3 (Q5_0/Q5_1's fifth bits) */
RFC_DEVICE_FN int rfc_spread4_bit4(int h) {
    return ((h << 4) & 0x10) | ((h << 11) & 0x1000) | ((h << 18) & 0x100000) | ((h << 25) & 0x10000000);
}

RFC_DEVICE_FN void rfc_same_halves(rfc_wsub *w, float a, float b) { w->a0 = w->a1 = a, w->b0 = w->b1 = b; }

/* ---- 32-element blocks: sub is always 0 ------------------------------------------------ */

RFC_DEVICE_FN void rfc_wsub_q8_0(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] = rfc_ld_i32_a2(blk + 2 + 4 * i);
    rfc_same_halves(w, rfc_ld_half(blk), 0.0f);
}

RFC_DEVICE_FN void rfc_wsub_q4_0(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a2(blk + 2 + 4 * i);
        w->u[i] = q & 0x0F0F0F0F, w->u[i + 4] = (q >> 4) & 0x0F0F0F0F;
    }
    const float d = rfc_ld_half(blk);
    rfc_same_halves(w, d, -8.0f * d);
}

RFC_DEVICE_FN void rfc_wsub_q4_1(const uint8_t *blk, int sub, rfc_wsub *w) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a4(blk + 4 + 4 * i);
        w->u[i] = q & 0x0F0F0F0F, w->u[i + 4] = (q >> 4) & 0x0F0F0F0F;
    }
    rfc_same_halves(w, rfc_ld_half(blk), rfc_ld_half(blk + 2));
}

RFC_DEVICE_FN void rfc_wsub_q5_0(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int qh = rfc_ld_i32_a2(blk + 2);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a2(blk + 6 + 4 * i);
        w->u[i] = (q & 0x0F0F0F0F) | rfc_spread4_bit4(qh >> (4 * i));
        w->u[i + 4] = ((q >> 4) & 0x0F0F0F0F) | rfc_spread4_bit4(qh >> (4 * i + 16));
    }
    const float d = rfc_ld_half(blk);
    rfc_same_halves(w, d, -16.0f * d);
}

RFC_DEVICE_FN void rfc_wsub_q5_1(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int qh = rfc_ld_i32_a4(blk + 4);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = rfc_ld_i32_a4(blk + 8 + 4 * i);
        w->u[i] = (q & 0x0F0F0F0F) | rfc_spread4_bit4(qh >> (4 * i));
        w->u[i + 4] = ((q >> 4) & 0x0F0F0F0F) | rfc_spread4_bit4(qh >> (4 * i + 16));
    }
    rfc_same_halves(w, rfc_ld_half(blk), rfc_ld_half(blk + 2));
}

/* ---- 256-element k-quant blocks: sub 0..7 ---------------------------------------------- */

RFC_DEVICE_FN void rfc_wsub_q2_k(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int nh = sub >> 2, shift = 2 * (sub & 3);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] = (rfc_ld_i32_a4(blk + 16 + nh * 32 + 4 * i) >> shift) & 0x03030303;
    const float d = rfc_ld_half(blk + 80), dmin = rfc_ld_half(blk + 82);
    const int s0 = blk[nh * 8 + (sub & 3) * 2], s1 = blk[nh * 8 + (sub & 3) * 2 + 1];
    w->a0 = d * (float)(s0 & 0xF), w->b0 = -(dmin * (float)(s0 >> 4));
    w->a1 = d * (float)(s1 & 0xF), w->b1 = -(dmin * (float)(s1 >> 4));
}

/* scale i (0..15) of a Q3_K block, as rfc_q3_k_scales unpacks them (minus 32) */
RFC_DEVICE_FN int rfc_q3_k_scale(const uint8_t *packed, int i) {
    const int low = i < 8 ? (packed[i] & 0xF) : (packed[i - 8] >> 4);
    const int high = (packed[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return (low | (high << 4)) - 32;
}

RFC_DEVICE_FN void rfc_wsub_q3_k(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int nh = sub >> 2, j = sub & 3;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int low = (rfc_ld_i32_a2(blk + 32 + nh * 32 + 4 * i) >> (2 * j)) & 0x03030303;
        const int high = (rfc_ld_i32_a2(blk + 4 * i) >> (nh * 4 + j)) & 0x01010101;
        w->u[i] = low | (high << 2);  /* u = low + 4 * hbit; w = dl * (u - 4) */
    }
    const float d = rfc_ld_half(blk + 108);
    w->a0 = d * (float)rfc_q3_k_scale(blk + 96, nh * 8 + j * 2), w->b0 = -4.0f * w->a0;
    w->a1 = d * (float)rfc_q3_k_scale(blk + 96, nh * 8 + j * 2 + 1), w->b1 = -4.0f * w->a1;
}

/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (ggml's get_scale_min_k4) */
RFC_DEVICE_FN void rfc_k4_scale_min(const uint8_t *q, int j, float d, float dmin, rfc_wsub *w) {
    int sc, m;
    if (j < 4) {
        sc = q[j] & 63, m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    rfc_same_halves(w, d * (float)sc, -(dmin * (float)m));
}

RFC_DEVICE_FN void rfc_wsub_q4_k(const uint8_t *blk, int sub, rfc_wsub *w) {
    rfc_ld_32b(blk + 16 + 32 * (sub >> 1), w->u);
    const int shift = 4 * (sub & 1);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] = (w->u[i] >> shift) & 0x0F0F0F0F;
    rfc_k4_scale_min(blk + 4, sub, rfc_ld_half(blk), rfc_ld_half(blk + 2), w);
}

RFC_DEVICE_FN void rfc_wsub_q5_k(const uint8_t *blk, int sub, rfc_wsub *w) {
    int qh[8];
    rfc_ld_32b(blk + 48 + 32 * (sub >> 1), w->u);
    rfc_ld_32b(blk + 16, qh);
    const int shift = 4 * (sub & 1);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] = ((w->u[i] >> shift) & 0x0F0F0F0F) | (((qh[i] >> sub) & 0x01010101) << 4);
    rfc_k4_scale_min(blk + 4, sub, rfc_ld_half(blk), rfc_ld_half(blk + 2), w);
}

RFC_DEVICE_FN void rfc_wsub_q6_k(const uint8_t *blk, int sub, rfc_wsub *w) {
    const int nh = sub >> 2, k = sub & 3;
    const uint8_t *ql = blk + nh * 64 + (k & 1) * 32, *qh = blk + 128 + nh * 32;
    const int nshift = 4 * (k >> 1);
#pragma unroll
    for (int i = 0; i < 8; i++)
        w->u[i] = ((rfc_ld_i32_a2(ql + 4 * i) >> nshift) & 0x0F0F0F0F) | (((rfc_ld_i32_a2(qh + 4 * i) >> (2 * k)) & 0x03030303) << 4);
    const float d = rfc_ld_half(blk + 208);
    const signed char *sc = (const signed char *)(blk + 192) + nh * 8 + 2 * k;
    w->a0 = d * (float)sc[0], w->b0 = -32.0f * w->a0;  /* u - 32 */
    w->a1 = d * (float)sc[1], w->b1 = -32.0f * w->a1;
}

/* sum over the sub-block of w_e * x_e for one activation row: xq its 8 packed ints, xd its
 * scale, xs0/xs1 the sums of its integers per half */
RFC_DEVICE_FN float rfc_wsub_dot(const rfc_wsub *w, const int *xq, float xd, int xs0, int xs1) {
    int d0 = 0, d1 = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) d0 = RFC_DP4A(w->u[i], xq[i], d0);
#pragma unroll
    for (int i = 4; i < 8; i++) d1 = RFC_DP4A(w->u[i], xq[i], d1);
    return xd * (w->a0 * (float)d0 + w->b0 * (float)xs0 + w->a1 * (float)d1 + w->b1 * (float)xs1);
}

/* Rounds 32 values to int8: d = max|v| / 127, q = rint(v / d), clamped to +-127; writes the 8
 * packed ints, the scale and the two half sums. */
RFC_DEVICE_FN void rfc_round32(const float *v, int *xq, float *xd, int *xs) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) amax = RFC_FMAXF(amax, v[i] < 0.0f ? -v[i] : v[i]);
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int packed = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float r = RFC_RINTF(v[4 * i + k] * inv);
            r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
            const int q = (int)r;
            if (i < 4) s0 += q; else s1 += q;
            packed |= (q & 0xFF) << (8 * k);
        }
        xq[i] = packed;
    }
    *xd = d;
    xs[0] = s0, xs[1] = s1;
}

/* Rounds 32 activations (16-byte aligned) to int8 (rfc_round32). */
RFC_DEVICE_FN void rfc_quantize32(const float *x, int *xq, float *xd, int *xs) {
    float v[32];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const rfc_f4 f = ((const rfc_f4 *)x)[i];
        v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
    rfc_round32(v, xq, xd, xs);
}

/* rfc_quantize32 by 32 adjacent lanes at once, each holding one of the sub-block's values (v,
 * element `lane` = its lane in the group of 32): the same scale, integers and half sums
 * (max and integer sums are exact in any order), for a kernel that has the values in registers
 * already. Every lane of the group must call it (shuffles). Writes the lane's int8 to xq[lane],
 * the scale (lane 0) and the half sums (lanes 0 and 16). */
RFC_DEVICE_FN void rfc_quantize32_lanes(float v, int lane, signed char *xq, float *xd, int *xs) {
    const float amax = rfc_group_max(v < 0.0f ? -v : v, 32);
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    float r = RFC_RINTF(v * inv);
    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
    const int q = (int)r;
    xq[lane] = (signed char)q;
    const float half = rfc_group_sum((float)q, 16);  /* |sum| <= 16 * 127: exact in float */
    if (lane == 0) *xd = d;
    if ((lane & 15) == 0) xs[lane >> 4] = (int)half;
}

#endif /* RFC_GPU_Q8_H */
