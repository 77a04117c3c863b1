/* Host emulation of rfc_gpu.h, for testing the GPU kernels on a machine without a GPU.
 *
 * Each GPU thread of a block runs as a fiber (its own stack, switched by a few lines of
 * x86-64 assembly: glibc's swapcontext makes a syscall per switch, far too slow here).
 * Blocks run one after another; a barrier suspends the calling fiber until every live
 * fiber of the block has reached it. Shuffles are barrier + exchange through a table, so
 * they assume, like CUDA's full-mask shuffles, that the whole block calls them.
 * Shared memory is `static` (one block at a time), constant memory `static const`.
 *
 * Usage: g++ -std=c++17 -include gpu_emu.h -DRFC_GPU_EMULATED generated.hip launchers.cpp
 * where each launcher calls rfc_emu::launch(kernel, grid_x, grid_y, grid_z, threads, params).
 */
#ifndef RFC_GPU_EMU_H
#define RFC_GPU_EMU_H

#if !defined(__x86_64__)
#error "the GPU emulator's fiber switch is x86-64 only"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>

#define RFC_KERNEL(threads) extern "C"
#define RFC_KERNEL_BLOCKS(threads, blocks) extern "C"
#define RFC_DEVICE_FN static inline
#define RFC_SHARED static
#define RFC_CONSTANT static const
#define RFC_TABLE static const /* the formats' lookup tables (templates/rfc_tables.h.j2) */
#define RFC_TID (rfc_emu::cur)
#define RFC_BID_X (rfc_emu::bid_x)
#define RFC_BID_Y (rfc_emu::bid_y)
#define RFC_BID_Z (rfc_emu::bid_z)
#define RFC_EXPF(x) expf(x)
#define RFC_SQRTF(x) sqrtf(x)
#define RFC_RINT(x) rint(x)
#define RFC_RINTF(x) rintf(x)
#define RFC_FMAXF(a, b) fmaxf(a, b)
/* GCC 12 converts _Float16 in software, rounding to nearest even like the GPUs */
#define RFC_HALF_TO_FLOAT(h) ((float)__builtin_bit_cast(_Float16, (unsigned short)(h)))
#define RFC_FLOAT_TO_HALF(f) __builtin_bit_cast(unsigned short, (_Float16)(f))
#define RFC_BITS_TO_FLOAT(u) __builtin_bit_cast(float, (unsigned)(u))
/* 128-bit and 64-bit vectors: plain structs (x86-64 loads them unaligned as well) */
struct rfc_i4 { int x, y, z, w; };
struct rfc_f4 { float x, y, z, w; };
struct rfc_i2 { int x, y; };
struct rfc_f2 { float x, y; };
/* dp4a as the GPUs define it: c + four sign-extended byte products */
static inline int rfc_emu_dp4a(int a, int b, int c) {
    for (int i = 0; i < 32; i += 8) c += (int)(signed char)(a >> i) * (int)(signed char)(b >> i);
    return c;
}
#define RFC_DP4A(a, b, c) rfc_emu_dp4a((a), (b), (c))

/* save callee-saved registers on the current stack, store its pointer in *from, switch to
 * the stack `to` and restore the registers saved there */
extern "C" void rfc_emu_switch(void **from, void *to);
__asm__(
    ".text\n"
    ".globl rfc_emu_switch\n"
    ".type rfc_emu_switch,@function\n"
    "rfc_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size rfc_emu_switch, .-rfc_emu_switch\n");

namespace rfc_emu {

constexpr int kMaxThreads = 1024;
constexpr size_t kStack = 32 * 1024;

static int cur, bid_x, bid_y, bid_z;
static int n_threads;
static void *sched_sp;
static void *sp[kMaxThreads];
static bool done[kMaxThreads];
static char *stacks;
static float exchange[kMaxThreads];
static std::function<void()> body;
/* rfc_copy16_async's copies a thread has issued and not waited for (below) */
constexpr int kMaxCopies = 16;
struct Copy {
    void *dst;
    unsigned char bytes[16];
};
static Copy copies[kMaxThreads][kMaxCopies];
static int n_copies[kMaxThreads];

/* Suspends the current fiber (at a barrier, or finished) and runs the next live fiber of
 * this pass, or returns to the scheduler when the pass is complete. */
static void yield_to_scheduler() {
    const int from = cur;
    int next = from + 1;
    while (next < n_threads && done[next]) next++;
    if (next < n_threads) {
        cur = next;
        rfc_emu_switch(&sp[from], sp[next]);
    } else {
        rfc_emu_switch(&sp[from], sched_sp);
    }
}

[[noreturn]] static void fiber_main() {
    body();
    if (n_copies[cur]) {
        fprintf(stderr, "rfc_emu: thread %d ended with %d asynchronous copies not waited for\n", cur, n_copies[cur]);
        abort();
    }
    done[cur] = true;
    yield_to_scheduler();
    abort();  // a finished fiber is never resumed
}

static void start_fiber(int i) {
    // Stack top: the six callee-saved registers rfc_emu_switch pops, then fiber_main as
    // its return address, 16-byte aligned so fiber_main starts like a called function.
    char *top = stacks + (size_t)(i + 1) * kStack;
    void **s = (void **)((uintptr_t)top & ~(uintptr_t)15) - 2;
    s[0] = (void *)&fiber_main;
    s -= 6;
    for (int r = 0; r < 6; r++) s[r] = nullptr;
    sp[i] = s;
    done[i] = false;
}

static void run_block(int threads) {
    n_threads = threads;
    for (int i = 0; i < threads; i++) start_fiber(i);
    // Each pass runs every live fiber to its next barrier or its end, in order.
    for (;;) {
        int first = 0;
        while (first < threads && done[first]) first++;
        if (first == threads) break;
        cur = first;
        rfc_emu_switch(&sched_sp, sp[first]);
    }
}

template <typename... A, size_t... I>
static void call(void (*kernel)(A...), void **params, std::index_sequence<I...>) {
    kernel(*static_cast<A *>(params[I])...);
}

template <typename... A>
static void launch(void (*kernel)(A...), int grid_x, int grid_y, int grid_z, int threads, void **params) {
    if (threads > kMaxThreads) {
        fprintf(stderr, "rfc_emu: %d threads per block\n", threads);
        abort();
    }
    if (stacks == nullptr) stacks = (char *)malloc(kStack * kMaxThreads);
    body = [&] { call(kernel, params, std::index_sequence_for<A...>{}); };
    for (bid_z = 0; bid_z < grid_z; bid_z++)
        for (bid_y = 0; bid_y < grid_y; bid_y++)
            for (bid_x = 0; bid_x < grid_x; bid_x++) run_block(threads);
}

/* RFC_GRID_WAIT (rfc_gpu.h) counted: an overlapped launch's every thread must pass it once
 * (EmulatedDriver checks the count after the launch) */
static long grid_waits;

}  // namespace rfc_emu

#define RFC_GRID_WAIT() ((void)++rfc_emu::grid_waits)
extern "C" long rfc_emu_grid_waits(void) {
    const long n = rfc_emu::grid_waits;
    rfc_emu::grid_waits = 0;
    return n;
}

static inline void rfc_sync(void) { rfc_emu::yield_to_scheduler(); }

/* rfc_gpu.h's asynchronous 16-byte copies to shared memory: the source is read when the copy is
 * issued, the destination filled with 0xff bytes then (a read before the wait, or a copy into a
 * buffer other threads still read, goes wrong: a NaN scale, a -1 quant) and with the source's
 * bytes at the issuing thread's rfc_copy_wait */
static inline void rfc_copy16_async(void *dst, const void *src) {
    if (((uintptr_t)dst | (uintptr_t)src) % 16 || rfc_emu::n_copies[rfc_emu::cur] == rfc_emu::kMaxCopies) {
        fprintf(stderr, "rfc_emu: an unaligned copy, or more than %d copies before a wait\n", rfc_emu::kMaxCopies);
        abort();
    }
    rfc_emu::Copy &c = rfc_emu::copies[rfc_emu::cur][rfc_emu::n_copies[rfc_emu::cur]++];
    c.dst = dst;
    memcpy(c.bytes, src, 16);
    memset(dst, 0xff, 16);
}
static inline int rfc_opaque(int x) { return x; }
static inline void rfc_copy_wait(void) {
    for (int i = 0; i < rfc_emu::n_copies[rfc_emu::cur]; i++)
        memcpy(rfc_emu::copies[rfc_emu::cur][i].dst, rfc_emu::copies[rfc_emu::cur][i].bytes, 16);
    rfc_emu::n_copies[rfc_emu::cur] = 0;
}

static inline float rfc_shfl_xor(float v, int mask) {
    rfc_emu::exchange[rfc_emu::cur] = v;
    rfc_sync();
    const float r = rfc_emu::exchange[rfc_emu::cur ^ mask];
    rfc_sync();
    return r;
}

/* ---- int8 matrix instructions (kernels/rfc_gpu_imma.h) ----------------------------------------
 * Each as its ISA lays out its fragments, over the lanes of the calling wave, each lane passing
 * its own registers: the lanes trade them through a table between two barriers (every lane of
 * the block calls, as every lane of a wave must), then each lane sums its own D elements
 * exactly in int32 (the hardware's result). The emulator reads the operands where the hardware
 * would, so the kernel's fragment loads and its reading of D are what this checks. */
namespace rfc_emu {
static int mma_regs[kMaxThreads][16];

/* the wave's registers in the table, after the barrier; returns the wave's first thread */
static inline int trade_registers(const int *a, int na, const int *b, int nb, int wave) {
    int *mine = mma_regs[cur];
    for (int i = 0; i < na; i++) mine[i] = a[i];
    for (int i = 0; i < nb; i++) mine[8 + i] = b[i];
    rfc_sync();
    return cur - cur % wave;
}

static inline int byte_of(int v, int i) { return (int)(signed char)(v >> (8 * i)); }
}  // namespace rfc_emu

/* mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA): g = lane / 4, t = lane % 4; A
 * (16 x 32, row-major) rows g, g + 8 at columns 4t..4t+3 (registers 0, 1) and 16+4t..16+4t+3
 * (registers 2, 3); B (32 x 8) column g at rows 4t..4t+3 (register 0), 16+4t..16+4t+3
 * (register 1); bytes in element order; D rows g, g + 8 (elements 0-1, 2-3), columns 2t, 2t + 1. */
static inline void rfc_emu_mma_m16n8k32_s8(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    const int w0 = trade_registers(a, 4, b, 2, 32), lane = cur - w0;
    auto a_at = [&](int row, int col) {
        return byte_of(mma_regs[w0 + 4 * (row % 8) + (col % 16) / 4][(row >= 8) + 2 * (col >= 16)], col % 4);
    };
    auto b_at = [&](int k, int n) { return byte_of(mma_regs[w0 + 4 * n + (k % 16) / 4][8 + (k >= 16)], k % 4); };
    int out[4];
    for (int i = 0; i < 4; i++) {
        const int row = lane / 4 + 8 * (i / 2), col = 2 * (lane % 4) + i % 2;
        int s = 0;
        for (int k = 0; k < 32; k++) s += a_at(row, k) * b_at(k, col);
        out[i] = d[i] + s;
    }
    rfc_sync();  // every lane has read the table before the next call writes it
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

/* two v_mfma_i32_16x16x16i8 (CDNA, wave 64), register h the h-th: A (16 x 16) element (i, k) in
 * lane i + 16 * (k / 4), byte k % 4; B (16 x 16) element (k, j) in lane j + 16 * (k / 4), byte
 * k % 4; D element (i, j) in lane j + 16 * (i / 4), element i % 4. */
static inline void rfc_emu_mfma_i32_16x16x16i8(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    const int w0 = trade_registers(a, 2, b, 2, 64), lane = cur - w0;
    int out[4];
    for (int e = 0; e < 4; e++) {
        const int i = 4 * (lane / 16) + e, j = lane % 16;
        int s = 0;
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 16; k++)
                s += byte_of(mma_regs[w0 + i + 16 * (k / 4)][h], k % 4) * byte_of(mma_regs[w0 + j + 16 * (k / 4)][8 + h], k % 4);
        out[e] = d[e] + s;
    }
    rfc_sync();
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

/* two v_wmma_i32_16x16x16_iu8 (RDNA3, wave 32, signed operands), registers 4h..4h+3 the h-th:
 * A element (i, k) in lane i and lane i + 16 (both must hold it), register k / 4, byte k % 4;
 * B element (k, j) likewise in lanes j and j + 16; D element (i, j) in lane j + 16 * (i % 2),
 * element i / 2. */
static inline void rfc_emu_wmma_i32_16x16x16_iu8_w32(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    const int w0 = trade_registers(a, 8, b, 8, 32), lane = cur - w0;
    for (int l = 0; l < 16; l++)
        for (int r = 0; r < 16; r++)
            if (mma_regs[w0 + l][r] != mma_regs[w0 + l + 16][r]) {
                fprintf(stderr, "rfc_emu: v_wmma_i32_16x16x16_iu8: lanes %d and %d hold different operands\n", l, l + 16);
                abort();
            }
    int out[8];
    for (int e = 0; e < 8; e++) {
        const int i = 2 * e + lane / 16, j = lane % 16;
        int s = 0;
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 16; k++)
                s += byte_of(mma_regs[w0 + i][4 * h + k / 4], k % 4) * byte_of(mma_regs[w0 + j][8 + 4 * h + k / 4], k % 4);
        out[e] = d[e] + s;
    }
    rfc_sync();
    for (int e = 0; e < 8; e++) d[e] = out[e];
}

/* ---- the nvcuda::wmma subset of kernels/rfc_gpu_mma.h ------------------------------------
 * A fragment holds its whole tile in every lane (WMMA leaves the lane layout opaque, and
 * the kernels only move whole tiles through memory), so each fiber loads, multiplies and
 * stores the full tile itself: every lane computes the same values, and stores from the
 * lanes of a wave write the same values. Numerics as the tensor cores': halves rounded to
 * nearest even on the way in (RFC_MMA_HALF), half x half products exact in float, summed in
 * float onto the accumulator in k order. (The hardware's order and internal precision of
 * that sum are its own; the difference is float rounding noise.) */
typedef _Float16 rfc_mma_half;
#define RFC_MMA_HALF(f) ((_Float16)(float)(f))
/* a barrier of the whole block: fibers run one after another, so lanes that trade values through
 * shared memory (rfc_wmma_scale_rows) need one; kernels call it uniformly across the block */
static inline void rfc_sync_wave(void) { rfc_sync(); }

namespace rfc_wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/* half -> float without GCC's software conversion call per element: a table of all 65536 */
struct HalfTable {
    float v[65536];
    HalfTable() {
        for (int i = 0; i < 65536; i++) v[i] = (float)__builtin_bit_cast(_Float16, (unsigned short)i);
    }
};
static const HalfTable half_table;
static inline float to_float(_Float16 h) { return half_table.v[__builtin_bit_cast(unsigned short, h)]; }

/* x[r * 16 + c]: row r, column c of the fragment's tile (A: m x k, B: k x n, C: m x n) */
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has 16 x 16 x 16 fragments only");
    float x[256];
};

template <typename Use, typename T, typename L>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float v) {
    for (int i = 0; i < 256; i++) f.x[i] = v;
}

static inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, rfc_mma_half, row_major> &f, const rfc_mma_half *p,
                                    unsigned ldm) {
    for (int m = 0; m < 16; m++)
        for (int k = 0; k < 16; k++) f.x[m * 16 + k] = to_float(p[m * ldm + k]);
}

/* column-major B: element (k, n) at p[n * ldm + k] */
static inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, rfc_mma_half, col_major> &f, const rfc_mma_half *p,
                                    unsigned ldm) {
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 16; n++) f.x[k * 16 + n] = to_float(p[n * ldm + k]);
}

/* row-major B: element (k, n) at p[k * ldm + n] */
static inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, rfc_mma_half, row_major> &f, const rfc_mma_half *p,
                                    unsigned ldm) {
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 16; n++) f.x[k * 16 + n] = to_float(p[k * ldm + n]);
}

static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                                    layout_t layout) {
    if (layout != mem_row_major) {
        fprintf(stderr, "rfc_emu: load_matrix_sync supports mem_row_major only\n");
        abort();
    }
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) f.x[m * 16 + n] = p[m * ldm + n];
}

template <typename LayoutB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, rfc_mma_half, row_major> &a,
                            const fragment<matrix_b, 16, 16, 16, rfc_mma_half, LayoutB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c) {
    float t[256];
    for (int i = 0; i < 256; i++) t[i] = c.x[i];
    for (int m = 0; m < 16; m++)
        for (int k = 0; k < 16; k++) {
            const float am = a.x[m * 16 + k];
            for (int n = 0; n < 16; n++) t[m * 16 + n] += am * b.x[k * 16 + n];
        }
    for (int i = 0; i < 256; i++) d.x[i] = t[i];
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                                     layout_t layout) {
    if (layout != mem_row_major) {
        fprintf(stderr, "rfc_emu: store_matrix_sync supports mem_row_major only\n");
        abort();
    }
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) p[m * ldm + n] = f.x[m * 16 + n];
}
}  // namespace rfc_wmma

#endif /* RFC_GPU_EMU_H */
