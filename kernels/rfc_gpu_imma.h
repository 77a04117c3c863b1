/* Int8 tensor-core tiles for the prefill matmul over quantized weights
 * (templates/gpu_matmul_imma.hip.j2): C[16 x 16] += A[16 x 32] * B[32 x 16] with int8 operands
 * and int32 sums, per wave.
 *
 *   rfc_imma_a, rfc_imma_b           a wave's operands: A's 16 rows of 32 int8 (row-major,
 *                                    `ld` bytes apart) and B's 16 columns of 32 int8 (each
 *                                    column's 32 bytes contiguous, `ld` bytes apart), both
 *                                    loaded from shared memory, 4-byte aligned
 *   rfc_imma_load_a / _b(f, p, ld)
 *   rfc_imma_mma(c, a, b)            c[e] += the int32 dot of A's row and B's column of
 *                                    element e of this lane (RFC_IMMA_ELEMS of them)
 *   rfc_imma_row(lane, e), rfc_imma_col(lane, e)   that element's place in the 16 x 16 tile
 *
 * int8 x int8 products summed in int32 are exact (|sum| <= 32 * 128 * 128), so every form
 * below gives the same bits: the kernel's float epilogue sees the same integers everywhere.
 *
 * CUDA (sm_80 and newer, Target.imma_i8): two `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`
 * per 16 x 16 tile (columns 0..7 and 8..15), the PTX ISA's fragment layout: lane = 4 * g + t
 * holds A's rows g and g + 8 at columns 4t..4t+3 and 16+4t..16+4t+3, B's column g at the same
 * k, and C's rows g and g + 8 at columns 2t and 2t + 1 of each half.
 * The emulator (tests/kernels/gpu_emu.h, RFC_GPU_EMULATED) runs this same code with a portable
 * form of the instruction: the lanes trade the registers they loaded, as the instruction's
 * fragment layout defines them, and each sums its elements with a scalar loop (exact, so the
 * hardware's bits); a fragment load or an element's place read wrongly here fails there too.
 * Other targets have no kernel that includes this header (the compiler keeps their existing
 * prefill path), so they get an error, not a slow fallback.
 */
#ifndef RFC_GPU_IMMA_H
#define RFC_GPU_IMMA_H

#if RFC_WAVE != 32
#error "rfc_gpu_imma.h: the fragment layout is a warp of 32 lanes"
#endif
#define RFC_IMMA_ELEMS 8 /* C elements per lane: 256 over a wave of 32 */

RFC_DEVICE_FN int rfc_imma_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 1) & 1); }
RFC_DEVICE_FN int rfc_imma_col(int lane, int e) { return 8 * (e >> 2) + 2 * (lane & 3) + (e & 1); }

#if defined(RFC_CUDA) || defined(RFC_GPU_EMULATED)
typedef struct { int r[4]; } rfc_imma_a;
typedef struct { int r[4]; } rfc_imma_b; /* columns 0..7: r[0], r[1]; 8..15: r[2], r[3] */

RFC_DEVICE_FN void rfc_imma_load_a(rfc_imma_a *f, const signed char *p, int ld) {
    const int lane = RFC_TID & 31, g = lane >> 2, t = lane & 3;
    f->r[0] = *(const int *)(p + g * ld + 4 * t);
    f->r[1] = *(const int *)(p + (g + 8) * ld + 4 * t);
    f->r[2] = *(const int *)(p + g * ld + 16 + 4 * t);
    f->r[3] = *(const int *)(p + (g + 8) * ld + 16 + 4 * t);
}

RFC_DEVICE_FN void rfc_imma_load_b(rfc_imma_b *f, const signed char *p, int ld) {
    const int lane = RFC_TID & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        f->r[2 * h] = *(const int *)(p + (8 * h + g) * ld + 4 * t);
        f->r[2 * h + 1] = *(const int *)(p + (8 * h + g) * ld + 16 + 4 * t);
    }
}

RFC_DEVICE_FN void rfc_imma_mma(int *c, const rfc_imma_a &a, const rfc_imma_b &b) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
#if defined(RFC_CUDA)
        /* "{ %": this header is rendered by Jinja, where a brace and a percent sign open a tag */
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 { %0, %1, %2, %3 }, { %4, %5, %6, %7 }, { %8, %9 }, "
            "{ %0, %1, %2, %3 };"
            : "+r"(c[4 * h]), "+r"(c[4 * h + 1]), "+r"(c[4 * h + 2]), "+r"(c[4 * h + 3])
            : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[2 * h]), "r"(b.r[2 * h + 1]));
#else
        rfc_emu_mma_m16n8k32_s8(&c[4 * h], a.r, &b.r[2 * h]);  /* tests/kernels/gpu_emu.h */
#endif
    }
}

#else
#error "rfc_gpu_imma.h: int8 tensor-core kernels are built for sm_80 and newer only"
#endif

#endif /* RFC_GPU_IMMA_H */
