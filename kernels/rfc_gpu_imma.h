/* Int8 matrix instructions for the prefill matmul over quantized weights
 * (templates/gpu_matmul_imma.hip.j2): C[16 x 16] += A[16 x 32] * B[32 x 16] with int8 operands
 * and int32 sums, per wave.
 *
 *   rfc_imma_a, rfc_imma_b           a wave's operands, loaded from shared memory: A's 16 rows
 *                                    of 32 int8 (row-major, `ld` bytes apart) and B's 16
 *                                    columns of 32 int8 (each column's 32 bytes contiguous,
 *                                    `ld` bytes apart), 4-byte aligned
 *   rfc_imma_load_a / _b(f, p, ld)
 *   rfc_imma_mma(c, a, b)            c[e] += the int32 dot of A's row and B's column of this
 *                                    lane's element e (RFC_IMMA_ELEMS = 256 / wave of them)
 *   rfc_imma_mma_half(c, a, b, half) c[e] += the dot over one k-half (0: k 0..15, 1: 16..31) alone
 *   rfc_imma_row(lane, e), rfc_imma_col(lane, e)   that element's place in the 16 x 16 tile
 *   RFC_IMMA_KERNEL_ATTRS            after RFC_KERNEL(threads): the target's register budget
 *
 * int8 x int8 products summed in int32 are exact (|sum| <= 32 * 128 * 128) in any order, so
 * every instruction below gives the same integers and the kernel's float epilogue the same
 * bits. The generated source defines which instruction (Target.imma, gpu_prelude.hip.j2):
 *
 * RFC_IMMA_MMA_M16N8K32 (sm_80 and newer): two `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`
 *   per tile (columns 0..7, 8..15). With g = lane / 4, t = lane % 4: A's rows g and g + 8 at
 *   columns 4t..4t+3 and 16+4t..16+4t+3, B's column g at the same k, C's rows g and g + 8 at
 *   columns 2t and 2t + 1 of each half. A k-half alone: two m16n8k16 on that half's registers.
 * RFC_IMMA_MFMA_16X16X16 (gfx908, gfx90a; wave 64): two `v_mfma_i32_16x16x16i8` (k 0..15, 16..31).
 *   With q = lane / 16: A's row lane % 16 and B's column lane % 16 at k 4q..4q+3 of each
 *   half; C's rows 4q..4q+3 at column lane % 16.
 * RFC_IMMA_WMMA_16X16X16_W32 (gfx11; wave 32): two `v_wmma_i32_16x16x16_iu8` (k 0..15, 16..31),
 *   signed operands. Lanes l and l + 16 both hold A's row l % 16 and B's column l % 16, all 16
 *   k of each half; C's rows 2v + lane / 16 (v = 0..7) at column lane % 16.
 *
 * The emulator (tests/kernels/gpu_emu.h, RFC_GPU_EMULATED) runs this same code with a portable
 * form of each instruction: the lanes trade the registers they loaded, the emulator reads
 * each operand where the instruction's fragment layout puts it and sums each lane's elements
 * with a scalar loop (exact: the hardware's integers), so a fragment loaded or an element
 * placed wrongly here fails there. Targets without an instruction have no kernel that
 * includes this header (the compiler keeps their existing prefill path).
 */
#ifndef RFC_GPU_IMMA_H
#define RFC_GPU_IMMA_H

#if defined(RFC_IMMA_MMA_M16N8K32)
/* ---- NVIDIA mma.sync m16n8k32 ------------------------------------------------------------- */
#if RFC_WAVE != 32
#error "rfc_gpu_imma.h: mma.sync fragments are laid out over a warp of 32 lanes"
#endif
#define RFC_IMMA_ELEMS 8
typedef struct { int r[4]; } rfc_imma_a;
typedef struct { int r[4]; } rfc_imma_b; /* columns 0..7: r[0], r[1]; 8..15: r[2], r[3] */

RFC_DEVICE_FN int rfc_imma_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 1) & 1); }
RFC_DEVICE_FN int rfc_imma_col(int lane, int e) { return 8 * (e >> 2) + 2 * (lane & 3) + (e & 1); }

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
#elif defined(RFC_GPU_EMULATED)
        rfc_emu_mma_m16n8k32_s8(&c[4 * h], a.r, &b.r[2 * h]);
#else
#error "rfc_gpu_imma.h: mma.sync is an NVIDIA instruction"
#endif
    }
}

/* one k-half: `mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32` per 8 columns, its A the k32
 * fragment's registers of that half (rows g and g + 8 at k 4t..4t+3 of it: the k16 layout) and its
 * B the half's register of those columns; the products of the other half are not computed (the
 * k32 instruction with A's other half zeroed gave the same integers for twice the work) */
RFC_DEVICE_FN void rfc_imma_mma_half(int *c, const rfc_imma_a &a, const rfc_imma_b &b, int half) {
    const int a0 = half ? a.r[2] : a.r[0], a1 = half ? a.r[3] : a.r[1];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int b0 = half ? b.r[2 * h + 1] : b.r[2 * h];
#if defined(RFC_CUDA)
        asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 { %0, %1, %2, %3 }, { %4, %5 }, { %6 }, { %0, %1, %2, %3 };"
            : "+r"(c[4 * h]), "+r"(c[4 * h + 1]), "+r"(c[4 * h + 2]), "+r"(c[4 * h + 3])
            : "r"(a0), "r"(a1), "r"(b0));
#elif defined(RFC_GPU_EMULATED)
        const int ah[2] = {a0, a1};
        rfc_emu_mma_m16n8k16_s8(&c[4 * h], ah, &b0);
#else
#error "rfc_gpu_imma.h: mma.sync is an NVIDIA instruction"
#endif
    }
}

#elif defined(RFC_IMMA_MFMA_16X16X16)
/* ---- AMD CDNA v_mfma_i32_16x16x16i8 ------------------------------------------------------- */
#if RFC_WAVE != 64
#error "rfc_gpu_imma.h: MFMA fragments are laid out over a wave of 64 lanes"
#endif
#define RFC_IMMA_ELEMS 4
typedef struct { int r[2]; } rfc_imma_a; /* k 0..15, 16..31 */
typedef struct { int r[2]; } rfc_imma_b;

RFC_DEVICE_FN int rfc_imma_row(int lane, int e) { return 4 * (lane >> 4) + e; }
RFC_DEVICE_FN int rfc_imma_col(int lane, int e) { return lane & 15; }

RFC_DEVICE_FN void rfc_imma_load_a(rfc_imma_a *f, const signed char *p, int ld) {
    const int lane = RFC_TID & 63;
    const signed char *row = p + (lane & 15) * ld + 4 * (lane >> 4);
    f->r[0] = *(const int *)row, f->r[1] = *(const int *)(row + 16);
}

RFC_DEVICE_FN void rfc_imma_load_b(rfc_imma_b *f, const signed char *p, int ld) {
    rfc_imma_load_a((rfc_imma_a *)f, p, ld); /* B's columns are stored as A's rows are */
}

RFC_DEVICE_FN void rfc_imma_mma(int *c, const rfc_imma_a &a, const rfc_imma_b &b) {
#if defined(RFC_HIP)
    typedef int rfc_v4i __attribute__((ext_vector_type(4)));
    rfc_v4i acc = {c[0], c[1], c[2], c[3]};
    acc = __builtin_amdgcn_mfma_i32_16x16x16i8(a.r[0], b.r[0], acc, 0, 0, 0);
    acc = __builtin_amdgcn_mfma_i32_16x16x16i8(a.r[1], b.r[1], acc, 0, 0, 0);
    c[0] = acc[0], c[1] = acc[1], c[2] = acc[2], c[3] = acc[3];
#elif defined(RFC_GPU_EMULATED)
    rfc_emu_mfma_i32_16x16x16i8(c, a.r, b.r);
#else
#error "rfc_gpu_imma.h: MFMA is an AMD instruction"
#endif
}

/* one of the two instructions (the emulator: both, the other half's operand zeroed) */
RFC_DEVICE_FN void rfc_imma_mma_half(int *c, const rfc_imma_a &a, const rfc_imma_b &b, int half) {
#if defined(RFC_HIP)
    typedef int rfc_v4i __attribute__((ext_vector_type(4)));
    rfc_v4i acc = {c[0], c[1], c[2], c[3]};
    acc = __builtin_amdgcn_mfma_i32_16x16x16i8(a.r[half], b.r[half], acc, 0, 0, 0);
    c[0] = acc[0], c[1] = acc[1], c[2] = acc[2], c[3] = acc[3];
#else
    rfc_imma_a h;
    h.r[0] = half ? 0 : a.r[0], h.r[1] = half ? a.r[1] : 0;
    rfc_imma_mma(c, h, b);
#endif
}

#elif defined(RFC_IMMA_WMMA_16X16X16_W32)
/* ---- AMD RDNA3 v_wmma_i32_16x16x16_iu8 (wave 32) ------------------------------------------ */
#if RFC_WAVE != 32
#error "rfc_gpu_imma.h: RDNA3 WMMA is built for waves of 32"
#endif
#define RFC_IMMA_ELEMS 8
#if defined(RFC_HIP)
/* a register budget for one wave per SIMD: by default clang (ROCm 5.2) keeps the kernel to 128
 * VGPRs and spills 12-100 bytes to scratch; with it, 104-124 VGPRs and no scratch
 * (tests/kernels/test_gpu_resources.py). The hardware's occupancy still follows the registers
 * used and the 38-42 KiB of LDS. */
#define RFC_IMMA_KERNEL_ATTRS __attribute__((amdgpu_waves_per_eu(1, 1)))
#endif
typedef struct { int r[8]; } rfc_imma_a; /* k 0..15: r[0..3]; 16..31: r[4..7] */
typedef struct { int r[8]; } rfc_imma_b;

RFC_DEVICE_FN int rfc_imma_row(int lane, int e) { return 2 * e + ((lane >> 4) & 1); }
RFC_DEVICE_FN int rfc_imma_col(int lane, int e) { return lane & 15; }

RFC_DEVICE_FN void rfc_imma_load_a(rfc_imma_a *f, const signed char *p, int ld) {
    const int *row = (const int *)(p + (RFC_TID & 15) * ld);
#pragma unroll
    for (int i = 0; i < 8; i++) f->r[i] = row[i];
}

RFC_DEVICE_FN void rfc_imma_load_b(rfc_imma_b *f, const signed char *p, int ld) {
    rfc_imma_load_a((rfc_imma_a *)f, p, ld); /* B's columns are stored as A's rows are */
}

RFC_DEVICE_FN void rfc_imma_mma(int *c, const rfc_imma_a &a, const rfc_imma_b &b) {
#if defined(RFC_HIP)
    typedef int rfc_v4i __attribute__((ext_vector_type(4)));
    typedef int rfc_v8i __attribute__((ext_vector_type(8)));
    rfc_v8i acc = {c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const rfc_v4i av = {a.r[4 * h], a.r[4 * h + 1], a.r[4 * h + 2], a.r[4 * h + 3]};
        const rfc_v4i bv = {b.r[4 * h], b.r[4 * h + 1], b.r[4 * h + 2], b.r[4 * h + 3]};
        acc = __builtin_amdgcn_wmma_i32_16x16x16_iu8_w32(true, av, true, bv, acc, false);
    }
#pragma unroll
    for (int e = 0; e < 8; e++) c[e] = acc[e];
#elif defined(RFC_GPU_EMULATED)
    rfc_emu_wmma_i32_16x16x16_iu8_w32(c, a.r, b.r);
#else
#error "rfc_gpu_imma.h: WMMA iu8 is an AMD instruction"
#endif
}

/* one of the two instructions (the emulator: both, the other half's operand zeroed) */
RFC_DEVICE_FN void rfc_imma_mma_half(int *c, const rfc_imma_a &a, const rfc_imma_b &b, int half) {
#if defined(RFC_HIP)
    typedef int rfc_v4i __attribute__((ext_vector_type(4)));
    typedef int rfc_v8i __attribute__((ext_vector_type(8)));
    rfc_v8i acc = {c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]};
    const rfc_v4i av = {a.r[4 * half], a.r[4 * half + 1], a.r[4 * half + 2], a.r[4 * half + 3]};
    const rfc_v4i bv = {b.r[4 * half], b.r[4 * half + 1], b.r[4 * half + 2], b.r[4 * half + 3]};
    acc = __builtin_amdgcn_wmma_i32_16x16x16_iu8_w32(true, av, true, bv, acc, false);
#pragma unroll
    for (int e = 0; e < 8; e++) c[e] = acc[e];
#else
    rfc_imma_a h;
#pragma unroll
    for (int i = 0; i < 4; i++) h.r[i] = half ? 0 : a.r[i], h.r[4 + i] = half ? a.r[4 + i] : 0;
    rfc_imma_mma(c, h, b);
#endif
}

#else
#error "rfc_gpu_imma.h: the target has no int8 matrix instruction (Target.imma)"
#endif

#ifndef RFC_IMMA_KERNEL_ATTRS
#define RFC_IMMA_KERNEL_ATTRS /* the kernel's attributes beyond RFC_KERNEL's: none */
#endif

/* each byte of u (0..127) minus `off` (<= 128), as a signed byte: the high bit set first keeps
 * each byte's subtraction from borrowing from the next */
RFC_DEVICE_FN int rfc_imma_sub_bytes(int u, int off) {
    return (int)((((unsigned)u | 0x80808080u) - (unsigned)off * 0x01010101u) ^ 0x80808080u);
}

/* two floats the kernel's epilogue reads together (a token's scale and int8 sum, a row's a and b):
 * one 8-byte shared-memory load */
typedef struct __attribute__((aligned(8))) {
    float d, s;
} rfc_imma_pair;

#endif /* RFC_GPU_IMMA_H */
