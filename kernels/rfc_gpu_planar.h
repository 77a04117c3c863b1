/* Sub-block decoders of the planar GPU layouts (artifacts/formats.py PLANAR_FORMATS), for
 * the int8 matmuls: the same rfc_wsub (w = a_h * u + b_h per 16-element half) that
 * rfc_gpu_q8.h's GGUF decoders produce, element for element, from a row split into planes.
 *
 * A decoder takes the row, the row's 32-element sub-block g and the row offsets of the
 * planes after the first (the planner computes them from the format table; plane 0 is at
 * the row's start). Every plane starts 16-byte aligned, so a sub-block's pieces load whole:
 * nib16 (16 bytes) and q32 (32) as 128-bit loads, crumb8 (8) as one 64-bit load, bit4 (4)
 * and f16 pairs as 32-bit loads. Adjacent lanes walk adjacent sub-blocks, so a wave's loads
 * of a plane are one contiguous run of memory. RFC_QK_<FMT>/RFC_TS_<FMT> (elements and
 * bytes of all planes per base block) come from the format table (rfc_formats.h.j2).
 */
#ifndef RFC_GPU_PLANAR_H
#define RFC_GPU_PLANAR_H

/* nib16 piece (16-byte aligned): u[i] = elements 4i..4i+3, low nibbles then high */
RFC_DEVICE_FN void rfc_pl_nib16(const uint8_t *p, int *u) {
    const rfc_i4 q = *(const rfc_i4 *)p;
    u[0] = q.x & 0x0F0F0F0F, u[1] = q.y & 0x0F0F0F0F, u[2] = q.z & 0x0F0F0F0F, u[3] = q.w & 0x0F0F0F0F;
    u[4] = (q.x >> 4) & 0x0F0F0F0F, u[5] = (q.y >> 4) & 0x0F0F0F0F;
    u[6] = (q.z >> 4) & 0x0F0F0F0F, u[7] = (q.w >> 4) & 0x0F0F0F0F;
}

/* crumb8 piece (8-byte aligned): c[i] = 2-bit values of elements 4i..4i+3 */
RFC_DEVICE_FN void rfc_pl_crumb8(const uint8_t *p, int *c) {
    const unsigned long long v = *(const unsigned long long *)p;
    const int h[2] = {(int)(unsigned)v, (int)(unsigned)(v >> 32)};
#pragma unroll
    for (int i = 0; i < 8; i++) c[i] = (h[i & 1] >> (2 * (i >> 1))) & 0x03030303;
}

/* bit4 piece (4-byte aligned): bit i of each byte is element 4i + byte */
RFC_DEVICE_FN int rfc_pl_bit4(const uint8_t *p) { return *(const int *)p; }

/* two f16 at a 4-byte aligned address (d, m or d, dmin) */
RFC_DEVICE_FN void rfc_pl_half2(const uint8_t *p, float *a, float *b) {
    const unsigned v = *(const unsigned *)p;
    *a = RFC_HALF_TO_FLOAT(v & 0xFFFF), *b = RFC_HALF_TO_FLOAT(v >> 16);
}

/* ---- 32-element blocks: sub-block g is block g ------------------------------------------ */

/* planes: d (2) | nib16 at pq */
RFC_DEVICE_FN void rfc_wsub_q4_0p(const uint8_t *row, int g, int pq, rfc_wsub *w) {
    rfc_pl_nib16(row + pq + 16 * g, w->u);
    const float d = rfc_ld_half(row + 2 * g);
    rfc_same_halves(w, d, -8.0f * d);
}

/* planes: d, m (4) | nib16 at pq */
RFC_DEVICE_FN void rfc_wsub_q4_1p(const uint8_t *row, int g, int pq, rfc_wsub *w) {
    rfc_pl_nib16(row + pq + 16 * g, w->u);
    float d, m;
    rfc_pl_half2(row + 4 * g, &d, &m);
    rfc_same_halves(w, d, m);
}

/* planes: d (2) | q32 at pq */
RFC_DEVICE_FN void rfc_wsub_q8_0p(const uint8_t *row, int g, int pq, rfc_wsub *w) {
    rfc_ld_32b(row + pq + 32 * g, w->u);
    rfc_same_halves(w, rfc_ld_half(row + 2 * g), 0.0f);
}

/* nib16 low bits at q, bit4 fifth bits at h, into u (Q5_0p / Q5_1p) */
RFC_DEVICE_FN void rfc_pl_q5(const uint8_t *q, const uint8_t *h, int *u) {
    rfc_pl_nib16(q, u);
    const int hb = rfc_pl_bit4(h);
#pragma unroll
    for (int i = 0; i < 8; i++) u[i] |= ((hb >> i) & 0x01010101) << 4;
}

/* planes: d (2) | bit4 at ph | nib16 at pq */
RFC_DEVICE_FN void rfc_wsub_q5_0p(const uint8_t *row, int g, int ph, int pq, rfc_wsub *w) {
    rfc_pl_q5(row + pq + 16 * g, row + ph + 4 * g, w->u);
    const float d = rfc_ld_half(row + 2 * g);
    rfc_same_halves(w, d, -16.0f * d);
}

/* planes: d, m (4) | bit4 at ph | nib16 at pq */
RFC_DEVICE_FN void rfc_wsub_q5_1p(const uint8_t *row, int g, int ph, int pq, rfc_wsub *w) {
    rfc_pl_q5(row + pq + 16 * g, row + ph + 4 * g, w->u);
    float d, m;
    rfc_pl_half2(row + 4 * g, &d, &m);
    rfc_same_halves(w, d, m);
}

/* ---- 256-element k-quant blocks: sub-block g is sub-block g % 8 of block g / 8 ----------- */

/* planes: d, dmin (4) | 16 scale bytes at ps | crumb8 at pq */
RFC_DEVICE_FN void rfc_wsub_q2_kp(const uint8_t *row, int g, int ps, int pq, rfc_wsub *w) {
    rfc_pl_crumb8(row + pq + 8 * g, w->u);
    float d, dmin;
    rfc_pl_half2(row + 4 * (g >> 3), &d, &dmin);
    const uint8_t *sc = row + ps + 16 * (g >> 3) + 2 * (g & 7);
    const int s0 = sc[0], s1 = sc[1];
    w->a0 = d * (float)(s0 & 0xF), w->b0 = -(dmin * (float)(s0 >> 4));
    w->a1 = d * (float)(s1 & 0xF), w->b1 = -(dmin * (float)(s1 >> 4));
}

/* planes: d (2) | 12 packed scale bytes at ps | crumb8 low bits at pq | bit4 high bits at ph */
RFC_DEVICE_FN void rfc_wsub_q3_kp(const uint8_t *row, int g, int ps, int pq, int ph, rfc_wsub *w) {
    rfc_pl_crumb8(row + pq + 8 * g, w->u);
    const int hb = rfc_pl_bit4(row + ph + 4 * g);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] |= ((hb >> i) & 0x01010101) << 2;  /* u = low + 4 * hbit; w = dl * (u - 4) */
    const float d = rfc_ld_half(row + 2 * (g >> 3));
    const uint8_t *sc = row + ps + 12 * (g >> 3);
    w->a0 = d * (float)rfc_q3_k_scale(sc, 2 * (g & 7)), w->b0 = -4.0f * w->a0;
    w->a1 = d * (float)rfc_q3_k_scale(sc, 2 * (g & 7) + 1), w->b1 = -4.0f * w->a1;
}

/* planes: d (2) | 16 int8 scales at ps | nib16 low bits at pq | crumb8 high bits at ph */
RFC_DEVICE_FN void rfc_wsub_q6_kp(const uint8_t *row, int g, int ps, int pq, int ph, rfc_wsub *w) {
    int hi[8];
    rfc_pl_nib16(row + pq + 16 * g, w->u);
    rfc_pl_crumb8(row + ph + 8 * g, hi);
#pragma unroll
    for (int i = 0; i < 8; i++) w->u[i] |= hi[i] << 4;
    const float d = rfc_ld_half(row + 2 * (g >> 3));
    const signed char *sc = (const signed char *)(row + ps + 16 * (g >> 3) + 2 * (g & 7));
    w->a0 = d * (float)sc[0], w->b0 = -32.0f * w->a0;  /* u - 32 */
    w->a1 = d * (float)sc[1], w->b1 = -32.0f * w->a1;
}

/* planes: d, dmin (4) | 12 packed scale bytes at ps | nib16 at pq (one 128-bit load a lane,
 * where the GGUF block's sub-block is half the nibbles of 32 bytes) */
RFC_DEVICE_FN void rfc_wsub_q4_kp(const uint8_t *row, int g, int ps, int pq, rfc_wsub *w) {
    rfc_pl_nib16(row + pq + 16 * g, w->u);
    float d, dmin;
    rfc_pl_half2(row + 4 * (g >> 3), &d, &dmin);
    rfc_k4_scale_min(row + ps + 12 * (g >> 3), g & 7, d, dmin, w);
}

/* planes: d, dmin (4) | 12 packed scale bytes at ps | bit4 fifth bits at ph | nib16 low bits at pq */
RFC_DEVICE_FN void rfc_wsub_q5_kp(const uint8_t *row, int g, int ps, int ph, int pq, rfc_wsub *w) {
    rfc_pl_q5(row + pq + 16 * g, row + ph + 4 * g, w->u);
    float d, dmin;
    rfc_pl_half2(row + 4 * (g >> 3), &d, &dmin);
    rfc_k4_scale_min(row + ps + 12 * (g >> 3), g & 7, d, dmin, w);
}

#endif /* RFC_GPU_PLANAR_H */
