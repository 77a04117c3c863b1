/* Int8 matrix operands straight from global memory, for the batch matmuls
 * (templates/gpu_matmul_bmma.hip.j2), beside rfc_gpu_imma.h's loads from shared memory:
 *
 *   rfc_imma_load_a_rows(f, p, ld, rows)   rfc_imma_load_a, A's rows from `rows` on read as zeros and
 *                                          never loaded (past a step's tokens)
 *   rfc_imma_load_a_rows_paired(...)       the same with k in the paired order: the two 4-byte pieces
 *                                          of a row a lane holds (rfc_imma_load_a's k 4j..4j+3 and
 *                                          16+4j..16+4j+3) are the row's bytes 8j..8j+7, one 8-byte load
 *
 * Each form reads the rows its instruction's fragment layout gives the lane (rfc_gpu_imma.h). The
 * paired order permutes k; the dot of A's row and B's column is the same integer when B's columns
 * are permuted alike: stored with a row's even 4-byte words first, then its odd ones
 * (rfc_imma_load_b then reads bytes 8j..8j+3 where it reads k 4j.., and 8j+4..8j+7 for 16+4j..).
 * An instruction run on one k-half alone (rfc_imma_mma_half) needs the natural order.
 */
#ifndef RFC_GPU_BMMA_H
#define RFC_GPU_BMMA_H

#if defined(RFC_IMMA_MMA_M16N8K32)
RFC_DEVICE_FN void rfc_imma_load_a_rows(rfc_imma_a *f, const signed char *p, int ld, int rows) {
    const int lane = RFC_TID & 31, g = lane >> 2, t = lane & 3;
    f->r[0] = g < rows ? *(const int *)(p + g * ld + 4 * t) : 0;
    f->r[1] = g + 8 < rows ? *(const int *)(p + (g + 8) * ld + 4 * t) : 0;
    f->r[2] = g < rows ? *(const int *)(p + g * ld + 16 + 4 * t) : 0;
    f->r[3] = g + 8 < rows ? *(const int *)(p + (g + 8) * ld + 16 + 4 * t) : 0;
}
RFC_DEVICE_FN void rfc_imma_load_a_rows_paired(rfc_imma_a *f, const signed char *p, int ld, int rows) {
    const int lane = RFC_TID & 31, g = lane >> 2, t = lane & 3;
    rfc_i2 lo, hi;
    lo.x = lo.y = hi.x = hi.y = 0;
    if (g < rows) lo = *(const rfc_i2 *)(p + g * ld + 8 * t);
    if (g + 8 < rows) hi = *(const rfc_i2 *)(p + (g + 8) * ld + 8 * t);
    f->r[0] = lo.x, f->r[2] = lo.y, f->r[1] = hi.x, f->r[3] = hi.y;
}
#elif defined(RFC_IMMA_MFMA_16X16X16)
RFC_DEVICE_FN void rfc_imma_load_a_rows(rfc_imma_a *f, const signed char *p, int ld, int rows) {
    const int lane = RFC_TID & 63;
    const signed char *row = p + (lane & 15) * ld + 4 * (lane >> 4);
    const bool in = (lane & 15) < rows;
    f->r[0] = in ? *(const int *)row : 0, f->r[1] = in ? *(const int *)(row + 16) : 0;
}
RFC_DEVICE_FN void rfc_imma_load_a_rows_paired(rfc_imma_a *f, const signed char *p, int ld, int rows) {
    const int lane = RFC_TID & 63;
    rfc_i2 w;
    w.x = w.y = 0;
    if ((lane & 15) < rows) w = *(const rfc_i2 *)(p + (lane & 15) * ld + 8 * (lane >> 4));
    f->r[0] = w.x, f->r[1] = w.y;
}
#elif defined(RFC_IMMA_WMMA_16X16X16_W32)
RFC_DEVICE_FN void rfc_imma_load_a_rows(rfc_imma_a *f, const signed char *p, int ld, int rows) {
    const int *row = (const int *)(p + (RFC_TID & 15) * ld);
    const bool in = (RFC_TID & 15) < rows;
#pragma unroll
    for (int i = 0; i < 8; i++) f->r[i] = in ? row[i] : 0;
}
#else
#error "rfc_gpu_bmma.h: the target has no int8 matrix instruction (Target.imma)"
#endif

#endif /* RFC_GPU_BMMA_H */
