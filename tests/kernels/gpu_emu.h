/* Host emulation of rfc_gpu.h, for testing the GPU kernels on a machine without a GPU.
 *
 * Each GPU thread of a block runs as a fiber (its own stack, switched by a few lines of
 * x86-64 assembly: glibc's swapcontext makes a syscall per switch, far too slow here).
 * Blocks run one after another, and a block's threads one after another up to a barrier:
 * rfc_sync suspends the calling fiber until every live fiber of the block has reached it;
 * the wave-level ones (a shuffle's partners, a matrix instruction's wave, rfc_sync_wave)
 * until the lanes concerned have, so a missing block barrier shows wherever the hardware
 * gives no other. Run in reverse (rfc_emu_set_order), a racing kernel gives other bits.
 * Shared memory is `static` (one block at a time, 0xff bytes as each block starts: RFC_SHARED),
 * constant memory `static const`.
 *
 * Usage: one translation unit of `#define RFC_GPU_EMULATED 1`, `#include "gpu_emu.h"`, the generated
 * source and a launcher per kernel that calls rfc_emu::launch(kernel, grid_x, grid_y, grid_z,
 * threads, params) (kernels are internal functions: tests/kernels/gpu_emulator.py builds it).
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

/* internal: g++ builds only the kernels a library's launchers name (gpu_emulator.py) */
#define RFC_KERNEL(threads) static
#define RFC_KERNEL_BLOCKS(threads, blocks) static
#define RFC_DEVICE_FN static inline
/* every kernel's shared arrays in one section, which each block starts with 0xff bytes in (NaN as floats,
 * -1 as ints), as a GPU's shared memory holds what an earlier block left: a read of what the block has
 * not written shows */
#define RFC_SHARED static __attribute__((section("rfc_emu_shared"), aligned(16)))
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
/* where a fiber is: running (or runnable), waiting at a barrier of its wave or of its block, ended */
enum State : char { kRun, kAtWave, kAtBlock, kDone };
static State state[kMaxThreads];
static char *stacks;
static std::function<void()> body;
/* rfc_copy16_async's copies a thread has issued and not waited for (below) */
constexpr int kMaxCopies = 16;
struct Copy {
    void *dst;
    unsigned char bytes[16];
};
static Copy copies[kMaxThreads][kMaxCopies];
static int n_copies[kMaxThreads];

/* +1: blocks run in index order, and a block's threads in index order between barriers; -1: both
 * reversed (rfc_emu_set_order). A kernel whose result depends on the order has a race: a thread
 * that reads what another writes between the same two barriers (or overwrites what another
 * still reads), or a block that reads what another block of the launch writes. */
static int order = 1;

[[noreturn]] static void fail(const char *what) {
    fprintf(stderr, "rfc_emu: block (%d, %d, %d) thread %d: %s\n", bid_x, bid_y, bid_z, cur, what);
    abort();
}

/* the first fiber of [lo, hi) in this pass's order that is in state `s`, or -1 */
static int first_in(int lo, int hi, State s) {
    for (int k = 0; k < hi - lo; k++) {
        const int i = order > 0 ? lo + k : hi - 1 - k;
        if (state[i] == s) return i;
    }
    return -1;
}

static void switch_to(int next) {
    const int from = cur;
    if (next == from) return;
    cur = next;
    rfc_emu_switch(&sp[from], next < 0 ? sched_sp : sp[next]);
}

/* The current fiber has stopped (state[cur] says why): runs the next runnable fiber. A wave's
 * lanes all at its barrier go on together, from its first lane in order; the block's threads
 * all at its barrier (or ended) end the pass: the scheduler starts the next one. A fiber
 * resumes after its barrier when it is switched back to. */
static void yield_to_scheduler() {
    const int me = cur;
    const int after = order > 0 ? me + 1 : me;  // the fibers after this one in order: [after, n) or [0, after)
    int next = order > 0 ? first_in(after, n_threads, kRun) : first_in(0, after, kRun);
    if (next < 0) next = first_in(0, n_threads, kRun);  // a wave released mid-pass may have some before
    if (next >= 0) return switch_to(next);
    if (first_in(0, n_threads, kAtWave) >= 0) fail("a wave's barrier that lanes of the wave never reach");
    switch_to(-1);  // every thread at the block's barrier or ended
}

/* the lanes waiting at a barrier of an aligned group of 2^w lanes, by w and the group's first
 * lane (a group of each width has its own count: lanes 0-1 may wait at a shuffle's barrier of
 * two lanes while lanes 2-3 wait at one of four) */
constexpr int kWidths = 11;  // 2^10 = kMaxThreads
static short arrived[kWidths][kMaxThreads];
/* how many times each group has filled (its barriers passed), by the same index: a trade
 * through a table between lanes of a group uses the table of this count's parity (below) */
static unsigned char generation[kWidths][kMaxThreads];

/* a barrier of the `wave` lanes holding the current thread (aligned: a wave, or the lanes a
 * shuffle trades between; matrix instructions' register trades, rfc_sync_wave): they wait for
 * each other, not for the rest of the block. A group with a lane at the block's barrier or
 * ended never fills: yield_to_scheduler fails when nothing else can run. */
static inline int wave_width(int wave) {
    if (wave <= 0 || wave > kMaxThreads || (wave & (wave - 1))) fail("a wave's barrier of a width not a power of two");
    return __builtin_ctz(wave);
}

/* The table of a trade between the `wave` lanes holding the current thread: each lane writes its
 * own entry, passes the group's barrier, then reads its partners'. One barrier is enough: a lane
 * writes the same table again only two barriers of its group later, when every lane of the
 * group has passed the one between (and read what it traded before it); groups of another width
 * have their own tables. */
template <typename T, size_t N>
static inline T *trade_table(T (&tables)[kWidths][2][N], int wave) {
    const int w = wave_width(wave);
    return tables[w][generation[w][cur & -wave] & 1];
}

static void wave_sync(int wave) {
    const int w = wave_width(wave), lo = cur & -wave, hi = lo + wave < n_threads ? lo + wave : n_threads;
    short &waiting = arrived[w][lo];
    state[cur] = kAtWave;
    if (++waiting < hi - lo) return yield_to_scheduler();  // a lane of the group has yet to arrive
    waiting = 0;
    generation[w][lo]++;
    for (int i = lo; i < hi; i++) state[i] = kRun;
    switch_to(order > 0 ? lo : hi - 1);  // the group goes on from its first lane in order
}

[[noreturn]] static void fiber_main() {
    body();
    if (n_copies[cur]) fail("ended with asynchronous copies not waited for");
    state[cur] = kDone;
    yield_to_scheduler();
    abort();  // a finished fiber is never resumed
}

static void start_fiber(int i) {
    // Stack top: the six callee-saved registers rfc_emu_switch pops, then fiber_main as
    // its return address, 16-byte aligned so fiber_main starts like a called function.
    // Staggered by a few cache lines and pages per fiber: stack tops a power of two apart fall
    // in the same cache sets, and a switch from one to the next would evict the last.
    char *top = stacks + (size_t)(i + 1) * kStack - (size_t)(i % 64) * 64 - (size_t)(i / 64 % 4) * 4096;
    void **s = (void **)((uintptr_t)top & ~(uintptr_t)15) - 2;
    s[0] = (void *)&fiber_main;
    s -= 6;
    for (int r = 0; r < 6; r++) s[r] = nullptr;
    sp[i] = s;
    state[i] = kRun;
}

}  // namespace rfc_emu
/* the linker's bounds of the section (null where a library has no shared arrays) */
extern "C" char __start_rfc_emu_shared[] __attribute__((weak));
extern "C" char __stop_rfc_emu_shared[] __attribute__((weak));
namespace rfc_emu {

static void run_block(int threads) {
    if (__start_rfc_emu_shared != nullptr) memset(__start_rfc_emu_shared, 0xff, __stop_rfc_emu_shared - __start_rfc_emu_shared);
    n_threads = threads;
    for (int i = 0; i < threads; i++) start_fiber(i);
    // Each pass runs every live fiber to the block's next barrier or its end, in order.
    for (;;) {
        for (int i = 0; i < threads; i++)
            if (state[i] == kAtBlock) state[i] = kRun;
        const int first = first_in(0, threads, kRun);
        if (first < 0) break;
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
    const long blocks = (long)grid_x * grid_y * grid_z;
    for (long i = 0; i < blocks; i++) {
        const long b = order > 0 ? i : blocks - 1 - i;
        bid_x = (int)(b % grid_x);
        bid_y = (int)(b / grid_x % grid_y);
        bid_z = (int)(b / ((long)grid_x * grid_y));
        run_block(threads);
    }
}

/* RFC_GRID_WAIT (rfc_gpu.h) counted: an overlapped launch's every thread must pass it once
 * (EmulatedDriver checks the count after the launch) */
static long grid_waits;

}  // namespace rfc_emu

#define RFC_GRID_WAIT() ((void)++rfc_emu::grid_waits)

/* RFC_PREFETCH_L2 (rfc_gpu.h: a hint, nothing here) recorded while rfc_emu_record_prefetches(1):
 * the addresses asked, in order, up to kMaxPrefetches of them */
namespace rfc_emu {
constexpr long kMaxPrefetches = 1L << 22;
static unsigned long long *prefetched;
static long n_prefetched, prefetches_dropped;
static bool recording;
static inline void prefetch(const void *p) {
    if (!recording) return;
    if (n_prefetched < kMaxPrefetches) prefetched[n_prefetched++] = (unsigned long long)p;
    else prefetches_dropped++;
}
}  // namespace rfc_emu
#define RFC_PREFETCH_L2(p) rfc_emu::prefetch((const void *)(p))
extern "C" void rfc_emu_record_prefetches(int on) {
    if (on && rfc_emu::prefetched == nullptr)
        rfc_emu::prefetched = (unsigned long long *)malloc(sizeof(unsigned long long) * rfc_emu::kMaxPrefetches);
    rfc_emu::recording = on != 0;
    rfc_emu::n_prefetched = rfc_emu::prefetches_dropped = 0;
}
/* the addresses recorded (at most `cap` into `out`), then none; -1 if some were dropped. With no
 * `out`: how many there are, the record kept */
extern "C" long rfc_emu_prefetches(unsigned long long *out, long cap) {
    if (out == nullptr) return rfc_emu::n_prefetched;
    const long n = rfc_emu::n_prefetched < cap ? rfc_emu::n_prefetched : cap;
    for (long i = 0; i < n; i++) out[i] = rfc_emu::prefetched[i];
    const long r = rfc_emu::prefetches_dropped ? -1 : n;
    rfc_emu::n_prefetched = rfc_emu::prefetches_dropped = 0;
    return r;
}
/* 1: threads and blocks in index order (the default); -1: reversed */
extern "C" void rfc_emu_set_order(int order) { rfc_emu::order = order < 0 ? -1 : 1; }
extern "C" long rfc_emu_grid_waits(void) {
    const long n = rfc_emu::grid_waits;
    rfc_emu::grid_waits = 0;
    return n;
}

static inline void rfc_sync(void) {
    rfc_emu::state[rfc_emu::cur] = rfc_emu::kAtBlock;
    rfc_emu::yield_to_scheduler();
}

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

namespace rfc_emu {
static float exchange[kWidths][2][kMaxThreads];
}  // namespace rfc_emu

/* the value of `v` in lane (this lane ^ mask) of the wave: a trade through a table (trade_table)
 * at a barrier of the 2 x mask lanes that trade with each other (an AMD wave's lanes may shuffle
 * in groups narrower than the wave while the others skip it; a shuffle orders no memory) */
static inline float rfc_shfl_xor(float v, int mask) {
    using namespace rfc_emu;
    const int me = cur;
    float *table = trade_table(exchange, 2 * mask);
    table[me] = v;
    wave_sync(2 * mask);
    return table[me ^ mask];
}

/* ---- int8 matrix instructions (kernels/rfc_gpu_imma.h) ----------------------------------------
 * Each as its ISA lays out its fragments, over the lanes of the calling wave, each lane passing
 * its own registers: the lanes trade them through a table at a barrier (trade_table; every lane of
 * the block calls, as every lane of a wave must), then each lane sums its own D elements
 * exactly in int32 (the hardware's result). The emulator reads the operands where the hardware
 * would, so the kernel's fragment loads and its reading of D are what this checks. */
namespace rfc_emu {
using Regs = int[16];  // a lane's A registers, then from 8 its B registers
static Regs mma_tables[kWidths][2][kMaxThreads];

/* the wave's registers in `regs` (a trade_table), after the barrier; returns the wave's first thread */
static inline int trade_registers(const int *a, int na, const int *b, int nb, int wave, Regs *&regs) {
    regs = trade_table(mma_tables, wave);
    int *mine = regs[cur];
    for (int i = 0; i < na; i++) mine[i] = a[i];
    for (int i = 0; i < nb; i++) mine[8 + i] = b[i];
    wave_sync(wave);
    return cur & -wave;
}

}  // namespace rfc_emu

/* mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA): g = lane / 4, t = lane % 4; A
 * (16 x 32, row-major) rows g, g + 8 at columns 4t..4t+3 (registers 0, 1) and 16+4t..16+4t+3
 * (registers 2, 3); B (32 x 8) column g at rows 4t..4t+3 (register 0), 16+4t..16+4t+3
 * (register 1); bytes in element order; D rows g, g + 8 (elements 0-1, 2-3), columns 2t, 2t + 1. */
static inline void rfc_emu_mma_m16n8k32_s8(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    Regs *mma_regs;
    const int w0 = trade_registers(a, 4, b, 2, 32, mma_regs), lane = cur - w0, g = lane / 4, t = lane % 4;
    // the four bytes at k = 4q..4q+3 of A's rows g and g + 8 and of B's columns 2t and 2t + 1: one
    // register of one lane each, bytes in element order, so that a dp4a sums their products
    int arow[2][8], bcol[2][8];
    for (int q = 0; q < 8; q++) {
        for (int r = 0; r < 2; r++) arow[r][q] = mma_regs[w0 + 4 * g + q % 4][r + 2 * (q >= 4)];
        for (int c = 0; c < 2; c++) bcol[c][q] = mma_regs[w0 + 4 * (2 * t + c) + q % 4][8 + (q >= 4)];
    }
    int out[4];
    for (int i = 0; i < 4; i++) {
        int s = 0;
        for (int q = 0; q < 8; q++) s = rfc_emu_dp4a(arow[i / 2][q], bcol[i % 2][q], s);
        out[i] = d[i] + s;
    }
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

/* mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 (PTX ISA): g = lane / 4, t = lane % 4; A
 * (16 x 16, row-major) rows g, g + 8 at columns 4t..4t+3 (registers 0, 1); B (16 x 8) column g at
 * rows 4t..4t+3 (register 0); bytes in element order; D as m16n8k32's. */
static inline void rfc_emu_mma_m16n8k16_s8(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    Regs *mma_regs;
    const int w0 = trade_registers(a, 2, b, 1, 32, mma_regs), lane = cur - w0, g = lane / 4, t = lane % 4;
    int out[4];
    for (int i = 0; i < 4; i++) {
        // k = 4q..4q+3: A's row in register i / 2 of lane 4g + q, B's column 2t + i % 2 in register 0 of
        // lane 4 (2t + i % 2) + q
        int s = 0;
        for (int q = 0; q < 4; q++) s = rfc_emu_dp4a(mma_regs[w0 + 4 * g + q][i / 2], mma_regs[w0 + 4 * (2 * t + i % 2) + q][8], s);
        out[i] = d[i] + s;
    }
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

/* two v_mfma_i32_16x16x16i8 (CDNA, wave 64), register h the h-th: A (16 x 16) element (i, k) in
 * lane i + 16 * (k / 4), byte k % 4; B (16 x 16) element (k, j) in lane j + 16 * (k / 4), byte
 * k % 4; D element (i, j) in lane j + 16 * (i / 4), element i % 4. */
static inline void rfc_emu_mfma_i32_16x16x16i8(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    Regs *mma_regs;
    const int w0 = trade_registers(a, 2, b, 2, 64, mma_regs), lane = cur - w0;
    int out[4];
    for (int e = 0; e < 4; e++) {
        const int i = 4 * (lane / 16) + e, j = lane % 16;
        int s = 0;
        for (int h = 0; h < 2; h++)
            for (int q = 0; q < 4; q++) s = rfc_emu_dp4a(mma_regs[w0 + i + 16 * q][h], mma_regs[w0 + j + 16 * q][8 + h], s);
        out[e] = d[e] + s;
    }
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

/* two v_wmma_i32_16x16x16_iu8 (RDNA3, wave 32, signed operands), registers 4h..4h+3 the h-th:
 * A element (i, k) in lane i and lane i + 16 (both must hold it), register k / 4, byte k % 4;
 * B element (k, j) likewise in lanes j and j + 16; D element (i, j) in lane j + 16 * (i % 2),
 * element i / 2. */
static inline void rfc_emu_wmma_i32_16x16x16_iu8_w32(int *d, const int *a, const int *b) {
    using namespace rfc_emu;
    Regs *mma_regs;
    const int w0 = trade_registers(a, 8, b, 8, 32, mma_regs), lane = cur - w0;
    for (int l = 0; l < 16 && lane == 0; l++)  // the wave's first lane checks for all
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
            for (int q = 0; q < 4; q++) s = rfc_emu_dp4a(mma_regs[w0 + i][4 * h + q], mma_regs[w0 + j][8 + 4 * h + q], s);
        out[e] = d[e] + s;
    }
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
/* a barrier of the calling wave (__syncwarp): lanes that trade values through shared memory
 * (rfc_wmma_scale_rows) need one; a macro, as rfc_shfl_xor */
#define rfc_sync_wave() rfc_emu::wave_sync(RFC_WAVE)

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
    // The lanes of a wave hold the same tiles and so multiply them one after another: the last
    // operands' bytes and product are kept, and a lane whose operands are the same bytes takes
    // that product (the same bits as multiplying again).
    // (all zero at first: zero operands, whose product is zero)
    static float last_a[256], last_b[256], last_c[256], last_d[256];
    if (!memcmp(a.x, last_a, sizeof last_a) && !memcmp(b.x, last_b, sizeof last_b) &&
        !memcmp(c.x, last_c, sizeof last_c)) {
        memcpy(d.x, last_d, sizeof last_d);
        return;
    }
    float t[256];
    for (int i = 0; i < 256; i++) t[i] = c.x[i];
    for (int m = 0; m < 16; m++)
        for (int k = 0; k < 16; k++) {
            const float am = a.x[m * 16 + k];
            for (int n = 0; n < 16; n++) t[m * 16 + n] += am * b.x[k * 16 + n];
        }
    memcpy(last_a, a.x, sizeof last_a);
    memcpy(last_b, b.x, sizeof last_b);
    memcpy(last_c, c.x, sizeof last_c);
    memcpy(last_d, t, sizeof last_d);
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
