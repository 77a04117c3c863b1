/* Int8 matrix operands straight from global memory, for the batch matmuls
 * (templates/gpu_matmul_bmma.hip.j2), beside rfc_gpu_imma.h's loads from shared memory:
 *
 *   rfc_imma_load_a_rows(f, p, ld, rows)   rfc_imma_load_a, A's rows from `rows` on read as zeros and
 *                                          never loaded (past a step's tokens)
 *
 * Each form reads the rows its instruction's fragment layout gives the lane (rfc_gpu_imma.h).
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
#elif defined(RFC_IMMA_MFMA_16X16X16)
RFC_DEVICE_FN void rfc_imma_load_a_rows(rfc_imma_a *f, const signed char *p, int ld, int rows) {
    const int lane = RFC_TID & 63;
    const signed char *row = p + (lane & 15) * ld + 4 * (lane >> 4);
    const bool in = (lane & 15) < rows;
    f->r[0] = in ? *(const int *)row : 0, f->r[1] = in ? *(const int *)(row + 16) : 0;
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
