/* Portability header: one HIP-dialect kernel source builds for AMD (hipcc --genco) and
 * NVIDIA (nvcc -cubin -x cu).
 *
 * Kernels use only the RFC_* names below, never HIP or CUDA spellings directly. On AMD
 * the source is built with -nogpuinc -nogpulib: no HIP headers and no device libraries
 * (gfx1100 has none in this toolchain), so thread indices, barriers, shuffles and math map
 * to clang builtins that lower to instructions, never to ocml/ockl calls.
 *
 * The generated source defines RFC_WAVE (threads per wavefront/warp, from the target)
 * before including this file; a toolchain that disagrees fails the build here.
 */
#ifndef RFC_GPU_H
#define RFC_GPU_H

#ifndef RFC_WAVE
#error "RFC_WAVE (the target's wave size) must be defined before rfc_gpu.h"
#endif

#if defined(__HIP__) && defined(__AMDGCN__)
/* ---- AMD: clang HIP device compile, no HIP headers ---------------------------------- */
#define RFC_HIP 1
#if __AMDGCN_WAVEFRONT_SIZE != RFC_WAVE
#error "the target's wave size differs from the compiler's __AMDGCN_WAVEFRONT_SIZE"
#endif
#define RFC_KERNEL(threads) extern "C" __attribute__((global)) __attribute__((amdgpu_flat_work_group_size(1, threads)))
/* a kernel that asks for `blocks` resident blocks per multiprocessor (RFC_KERNEL on AMD: occupancy
 * follows from the work-group size there) */
#define RFC_KERNEL_BLOCKS(threads, blocks) RFC_KERNEL(threads)
#define RFC_DEVICE_FN __attribute__((device)) inline __attribute__((always_inline))
#define RFC_SHARED __attribute__((shared))
#define RFC_CONSTANT __attribute__((constant))
#define RFC_TABLE static const RFC_CONSTANT /* the formats' lookup tables (rfc_tables.h.j2) */
#define RFC_TID ((int)__builtin_amdgcn_workitem_id_x())
#define RFC_BID_X ((int)__builtin_amdgcn_workgroup_id_x())
#define RFC_BID_Y ((int)__builtin_amdgcn_workgroup_id_y())
#define RFC_BID_Z ((int)__builtin_amdgcn_workgroup_id_z())

RFC_DEVICE_FN void rfc_sync(void) {
    __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
    __builtin_amdgcn_s_barrier();
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}

/* A wave's lanes see each other's shared-memory accesses before what follows: a wave runs in
 * lockstep on AMD, so this only keeps the compiler from moving loads and stores across it. */
RFC_DEVICE_FN void rfc_sync_wave(void) { __builtin_amdgcn_wave_barrier(); }

/* Value of `v` in lane (this lane ^ mask) of the wave (ds_bpermute addresses bytes). */
RFC_DEVICE_FN float rfc_shfl_xor(float v, int mask) {
    const int lane = RFC_TID & (RFC_WAVE - 1);
    return __builtin_bit_cast(float, __builtin_amdgcn_ds_bpermute((lane ^ mask) << 2, __builtin_bit_cast(int, v)));
}

/* llvm.exp / llvm.sqrt lower to v_exp_f32 / v_sqrt_f32 on amdgcn: no library call. */
#define RFC_EXPF(x) __builtin_expf(x)
#define RFC_SQRTF(x) __builtin_sqrtf(x)
#define RFC_RINT(x) __builtin_rint(x)
#define RFC_RINTF(x) __builtin_rintf(x)
#define RFC_FMAXF(a, b) __builtin_fmaxf(a, b)
/* IEEE half <-> float in hardware (v_cvt_f32_f16 / v_cvt_f16_f32, round to nearest even) */
#define RFC_HALF_TO_FLOAT(h) ((float)__builtin_bit_cast(_Float16, (unsigned short)(h)))
#define RFC_FLOAT_TO_HALF(f) __builtin_bit_cast(unsigned short, (_Float16)(f))
#define RFC_BITS_TO_FLOAT(u) __builtin_bit_cast(float, (unsigned)(u))

/* 128-bit vectors (one global_load_dwordx4 when the address is 16-byte aligned), and 64-bit ones */
typedef int rfc_i4 __attribute__((ext_vector_type(4)));
typedef float rfc_f4 __attribute__((ext_vector_type(4)));
typedef int rfc_i2 __attribute__((ext_vector_type(2)));
typedef float rfc_f2 __attribute__((ext_vector_type(2)));

/* c + the dot product of four signed bytes of a and b. gfx11 has v_dot4_i32_iu8 (dot8-insts),
 * gfx906/908/90a/94x and gfx1011/1012/103x v_dot4(c)_i32_i8 (dot1-insts); clang 15 accepts
 * sdot4 for gfx11 and then crashes in the backend, so the choice is by processor, not by
 * __has_builtin. Other processors take the portable fallback below. */
#if defined(__GFX11__)
#define RFC_DP4A(a, b, c) __builtin_amdgcn_sudot4(true, (a), true, (b), (c), false)
#elif defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || \
    defined(__gfx941__) || defined(__gfx942__) || defined(__gfx1011__) || defined(__gfx1012__) || \
    defined(__gfx1030__) || defined(__gfx1031__) || defined(__gfx1032__) || defined(__gfx1033__) || \
    defined(__gfx1034__) || defined(__gfx1035__) || defined(__gfx1036__)
#define RFC_DP4A(a, b, c) __builtin_amdgcn_sdot4((a), (b), (c), false)
#endif

#elif defined(__CUDACC__)
/* ---- NVIDIA: nvcc -x cu ---------------------------------------------------------------- */
#define RFC_CUDA 1
#if RFC_WAVE != 32
#error "NVIDIA warps have 32 threads"
#endif
/* minBlocksPerSM 1: with the block size alone ptxas kept some int8 matmuls to 64 registers
 * and spilled 8 bytes (tests/kernels/test_gpu_resources.py); they need ~70-90 */
#define RFC_KERNEL(threads) extern "C" __global__ __launch_bounds__(threads, 1)
/* `blocks` resident blocks per SM: ptxas keeps registers to 64K / (threads x blocks) */
#define RFC_KERNEL_BLOCKS(threads, blocks) extern "C" __global__ __launch_bounds__(threads, blocks)
#define RFC_DEVICE_FN __device__ __forceinline__
#define RFC_SHARED __shared__
#define RFC_CONSTANT __constant__
/* the formats' lookup tables (rfc_tables.h.j2) in global memory: lanes index them divergently,
 * which __constant__ memory serializes */
#define RFC_TABLE static const __device__
#define RFC_TID ((int)threadIdx.x)
#define RFC_BID_X ((int)blockIdx.x)
#define RFC_BID_Y ((int)blockIdx.y)
#define RFC_BID_Z ((int)blockIdx.z)

RFC_DEVICE_FN void rfc_sync(void) { __syncthreads(); }
/* A warp's lanes see each other's shared-memory accesses before what follows: lanes of one warp
 * are scheduled independently (sm_70 and later), so a shuffle between a lane's read and
 * another lane's write of the same word does not order them; this does. */
RFC_DEVICE_FN void rfc_sync_wave(void) { __syncwarp(); }

RFC_DEVICE_FN float rfc_shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

#define RFC_EXPF(x) expf(x)
#define RFC_SQRTF(x) sqrtf(x)
#define RFC_RINT(x) rint(x)
#define RFC_RINTF(x) rintf(x)
#define RFC_FMAXF(a, b) fmaxf(a, b)

/* IEEE half <-> float with PTX cvt (round to nearest even), no cuda_fp16.h needed */
RFC_DEVICE_FN float rfc_half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
RFC_DEVICE_FN unsigned short rfc_float_to_half(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#define RFC_HALF_TO_FLOAT(h) rfc_half_to_float(h)
#define RFC_FLOAT_TO_HALF(f) rfc_float_to_half(f)
#define RFC_BITS_TO_FLOAT(u) __uint_as_float((unsigned)(u))

/* 128-bit vectors (ld.global.v4 when the address is 16-byte aligned), and 64-bit ones (v2) */
typedef int4 rfc_i4;
typedef float4 rfc_f4;
typedef int2 rfc_i2;
typedef float2 rfc_f2;

/* c + the dot product of four signed bytes of a and b (dp4a, sm_61 and later) */
#define RFC_DP4A(a, b, c) __dp4a((a), (b), (c))

#elif defined(RFC_GPU_EMULATED)
/* ---- host emulation for kernel tests without a GPU: tests/kernels/gpu_emu.h, included
 * before this file, defines the names above with one fiber per GPU thread. */

#else
#error "rfc_gpu.h: compile with hipcc (amdgcn) or nvcc"
#endif

#ifndef RFC_DP4A
/* Portable dp4a: four sign-extended byte products (the emulator, and GPUs without a dot
 * instruction). */
RFC_DEVICE_FN int rfc_dp4a_portable(int a, int b, int c) {
    for (int i = 0; i < 32; i += 8) c += (int)(signed char)(a >> i) * (int)(signed char)(b >> i);
    return c;
}
#define RFC_DP4A(a, b, c) rfc_dp4a_portable((a), (b), (c))
#endif

/* A hint to bring the 128-byte line holding p into L2 ahead of its loads (prefetch.global.L2
 * on NVIDIA); nothing on AMD and in the emulator. */
/* Programmatic dependent launch (the step program's launches on sm_90 and later when the source
 * defines RFC_PROGRAMMATIC, compiler/codegen/gpu.py): a kernel may start while the kernel before
 * it in the stream still runs. Every kernel calls RFC_GRID_WAIT() once, at its top level, before
 * it reads or writes anything but its weights (the compiler checks the source): it waits until
 * the kernel before has finished and its writes are visible, then lets the kernel after it be
 * launched. What comes before it may only ask weights into L2. Elsewhere nothing: launches
 * there follow one another. */
#if defined(RFC_CUDA) && defined(RFC_PROGRAMMATIC) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define RFC_GRID_WAIT() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#endif
#ifndef RFC_GRID_WAIT
#define RFC_GRID_WAIT() ((void)0)
#endif

#if defined(RFC_CUDA)
#define RFC_PREFETCH_L2(p) asm volatile("prefetch.global.L2 [%0];" ::"l"((const void *)(p)))
#elif !defined(RFC_PREFETCH_L2) /* (the emulator records them: tests/kernels/gpu_emu.h) */
#define RFC_PREFETCH_L2(p) ((void)(p))
#endif

/* Copies of 16 bytes from global to shared memory that hold no register on their way (cp.async,
 * NVIDIA sm_80 and later): rfc_copy16_async(dst, src) issues one (both 16-byte aligned),
 * rfc_copy_wait() waits until every copy this thread issued has landed; a barrier after it makes
 * every thread's visible to the block. The planner uses them where the target has them
 * (compiler/codegen/gpu_bmma.py ASYNC_COPY_INSTRUCTIONS); elsewhere a load and a store, done when
 * issued. The emulator defines its own (tests/kernels/gpu_emu.h). */
#if defined(RFC_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
RFC_DEVICE_FN void rfc_copy16_async(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src)
                 : "memory");
}
RFC_DEVICE_FN void rfc_copy_wait(void) { asm volatile("cp.async.wait_all;" ::: "memory"); }
#elif !defined(RFC_GPU_EMULATED)
RFC_DEVICE_FN void rfc_copy16_async(void *dst, const void *src) { *(rfc_i4 *)dst = *(const rfc_i4 *)src; }
RFC_DEVICE_FN void rfc_copy_wait(void) {}
#endif

/* x, which the compiler cannot see through: a loop bounded by it is never unrolled whole (cicc
 * unrolled some loops whole past their `#pragma unroll 1`). */
#if defined(RFC_CUDA)
RFC_DEVICE_FN int rfc_opaque(int x) {
    int y;
    asm("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}
#elif !defined(RFC_GPU_EMULATED)
RFC_DEVICE_FN int rfc_opaque(int x) { return x; }
#endif

/* ---- for the sampling kernel: log, bit casts, shared-memory atomics, an unfused multiply ---- */
#if defined(RFC_CUDA)
#define RFC_LOGF(x) logf(x)
#define RFC_FLOAT_BITS(f) __float_as_uint(f)
#define RFC_BITS_FLOAT(u) __uint_as_float(u)
#define RFC_ATOMIC_ADD(p, v) atomicAdd((p), (v))
/* a * b rounded on its own: never contracted into an fma with a following add */
#define RFC_FMUL_RN(a, b) __fmul_rn((a), (b))
#else
/* llvm.log lowers to v_log_f32 on amdgcn; the host (emulator) calls logf */
#define RFC_LOGF(x) __builtin_logf(x)
#define RFC_FLOAT_BITS(f) __builtin_bit_cast(unsigned, (float)(f))
#define RFC_BITS_FLOAT(u) __builtin_bit_cast(float, (unsigned)(u))
/* relaxed atomics on shared memory (ds_add on amdgcn); the emulator's fibers never
 * interleave between barriers, so there they are plain adds in effect */
#define RFC_ATOMIC_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
RFC_DEVICE_FN float rfc_fmul_rn(float a, float b) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    return a * b;
}
#define RFC_FMUL_RN(a, b) rfc_fmul_rn((a), (b))
#endif

/* GGUF block decoders (kernels/rfc_blocks.h) as device functions. */
#define RFC_FN RFC_DEVICE_FN

/* ---- KV cache elements: rfc_kv_<dtype>_t, loaded and stored as float ------------------ */

typedef unsigned short rfc_kv_f16_t;
typedef float rfc_kv_f32_t;
RFC_DEVICE_FN float rfc_kv_f16_load(rfc_kv_f16_t h) { return RFC_HALF_TO_FLOAT(h); }
RFC_DEVICE_FN rfc_kv_f16_t rfc_kv_f16_store(float f) { return RFC_FLOAT_TO_HALF(f); }
RFC_DEVICE_FN float rfc_kv_f32_load(rfc_kv_f32_t v) { return v; }
RFC_DEVICE_FN rfc_kv_f32_t rfc_kv_f32_store(float f) { return f; }

/* N consecutive KV elements at p as floats, in the widest loads that N divides: 16 bytes,
 * 8 bytes, 4 bytes (a half2), else one element at a time. p must be aligned to the load
 * (the planner picks N so that head_dim is a multiple of it: rows start aligned). */
RFC_DEVICE_FN void rfc_half2_unpack(unsigned w, float *f) {
    f[0] = RFC_HALF_TO_FLOAT((unsigned short)(w & 0xffffu));
    f[1] = RFC_HALF_TO_FLOAT((unsigned short)(w >> 16));
}

template <int N>
RFC_DEVICE_FN void rfc_kv_f16_load_n(const rfc_kv_f16_t *p, float *f) {
    if constexpr (N % 8 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 8) {
            const rfc_i4 w = *(const rfc_i4 *)(p + i);
            rfc_half2_unpack((unsigned)w.x, f + i), rfc_half2_unpack((unsigned)w.y, f + i + 2);
            rfc_half2_unpack((unsigned)w.z, f + i + 4), rfc_half2_unpack((unsigned)w.w, f + i + 6);
        }
    } else if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            const unsigned long long w = *(const unsigned long long *)(p + i);
            rfc_half2_unpack((unsigned)w, f + i), rfc_half2_unpack((unsigned)(w >> 32), f + i + 2);
        }
    } else if constexpr (N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) rfc_half2_unpack(*(const unsigned *)(p + i), f + i);
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) f[i] = rfc_kv_f16_load(p[i]);
    }
}

template <int N>
RFC_DEVICE_FN void rfc_kv_f32_load_n(const rfc_kv_f32_t *p, float *f) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            const rfc_f4 w = *(const rfc_f4 *)(p + i);
            f[i] = w.x, f[i + 1] = w.y, f[i + 2] = w.z, f[i + 3] = w.w;
        }
    } else if constexpr (N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) {
            const unsigned long long w = *(const unsigned long long *)(p + i);
            f[i] = RFC_BITS_TO_FLOAT((unsigned)w), f[i + 1] = RFC_BITS_TO_FLOAT((unsigned)(w >> 32));
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) f[i] = p[i];
    }
}

/* ---- split-KV attention ------------------------------------------------------------------ */

/* Keys per split of a row's n keys: ceil(n / splits) rounded up to a multiple of granule, so
 * no split is empty and short rows take fewer splits. A step of more than split_rows rows
 * does not split (one slice of all n keys; the kernels take their tiled path there, and the
 * reduce kernel has nothing to merge): it has blocks enough, and the partials' scratch holds
 * split_rows rows. The split attention kernels, their reduction and the per-op kernel
 * all cut rows with this one function. */
RFC_DEVICE_FN int rfc_attention_slice(int n, int n_rows, int splits, int granule, int split_rows) {
    if (n_rows > split_rows) return n;
    const int per = (n + splits - 1) / splits;
    return (per + granule - 1) / granule * granule;
}

/* Tiled prefill attention: does step row r begin a tile of at most `tile_rows` rows? Tiles
 * hold consecutive positions of one sequence and are aligned to multiples of tile_rows in
 * position, so a row starts one at a sequence's first row in the step, after a gap in
 * positions, or at a position multiple of tile_rows. Every tile is found by its own first
 * row (one block per step row, the rest exit), so the grid stays static per row count, no
 * tile spans two sequences, and a decode row in a mixed step is a tile of its own. */
RFC_DEVICE_FN bool rfc_attention_tile_starts(const int *positions, const int *seq_of_token, int r, int tile_rows) {
    return r == 0 || seq_of_token[r] != seq_of_token[r - 1] || positions[r] != positions[r - 1] + 1 ||
           positions[r] % tile_rows == 0;
}

/* An encoder's attention (non-causal): the last position of row r's sequence in the step, up to
 * which every row of it attends. A step holds a sequence's rows together and in order (the
 * engine runs an encoder's input whole), so they end where seq_of_token changes. */
RFC_DEVICE_FN int rfc_attention_seq_last(const int *positions, const int *seq_of_token, int r, int n_rows) {
    int e = r;
    while (e + 1 < n_rows && seq_of_token[e + 1] == seq_of_token[r]) e++;
    return positions[e];
}

/* Folds one softmax partial (its max m, sum l and weighted value a) into the running (M, L, O):
 * the exact log-sum-exp merge. The reduction kernel and the per-op kernel merge the same
 * partials in the same order with it, so the two agree bit for bit. */
RFC_DEVICE_FN void rfc_softmax_merge(float *M, float *L, float *O, float m, float l, float a) {
    const float m_new = RFC_FMAXF(*M, m);
    const float alpha = RFC_EXPF(*M - m_new), beta = RFC_EXPF(m - m_new);
    *L = *L * alpha + l * beta;
    *O = *O * alpha + a * beta;
    *M = m_new;
}

/* ---- reductions ------------------------------------------------------------------------ */

/* Sum over groups of `width` adjacent lanes (width a power of two <= RFC_WAVE); every lane
 * of the group gets the total. */
RFC_DEVICE_FN float rfc_group_sum(float v, int width) {
    for (int mask = width >> 1; mask > 0; mask >>= 1) v += rfc_shfl_xor(v, mask);
    return v;
}

/* Maximum over groups of `width` adjacent lanes, like rfc_group_sum. */
RFC_DEVICE_FN float rfc_group_max(float v, int width) {
    for (int mask = width >> 1; mask > 0; mask >>= 1) v = RFC_FMAXF(v, rfc_shfl_xor(v, mask));
    return v;
}

RFC_DEVICE_FN float rfc_wave_max(float v) {
    for (int mask = RFC_WAVE >> 1; mask > 0; mask >>= 1) v = RFC_FMAXF(v, rfc_shfl_xor(v, mask));
    return v;
}

/* Block-wide sum / max for a block of THREADS threads (a multiple of RFC_WAVE); every
 * thread gets the result. `scratch` holds THREADS / RFC_WAVE floats of shared memory.
 * With more than one wave they begin with a barrier, so consecutive calls may share
 * scratch; with one wave they use no shared memory and no barrier at all. */
template <int THREADS>
RFC_DEVICE_FN float rfc_block_sum(float v, float *scratch) {
    constexpr int waves = THREADS / RFC_WAVE;
    v = rfc_group_sum(v, RFC_WAVE);
    if (waves == 1) return v;
    rfc_sync();
    if ((RFC_TID & (RFC_WAVE - 1)) == 0) scratch[RFC_TID / RFC_WAVE] = v;
    rfc_sync();
    float total = 0.0f;
    for (int w = 0; w < waves; w++) total += scratch[w];
    return total;
}

template <int THREADS>
RFC_DEVICE_FN float rfc_block_max(float v, float *scratch) {
    constexpr int waves = THREADS / RFC_WAVE;
    v = rfc_wave_max(v);
    if (waves == 1) return v;
    rfc_sync();
    if ((RFC_TID & (RFC_WAVE - 1)) == 0) scratch[RFC_TID / RFC_WAVE] = v;
    rfc_sync();
    float m = scratch[0];
    for (int w = 1; w < waves; w++) m = RFC_FMAXF(m, scratch[w]);
    return m;
}

/* ---- math without device libraries ------------------------------------------------------ */

/* sin and cos of an angle of any size. The reduction to [-pi/4, pi/4] is done in double
 * (rotary angles reach position * 1 rad, thousands of radians), the polynomials in float
 * (cephes sinf/cosf coefficients, error ~1e-7 on the reduced range). */
RFC_DEVICE_FN void rfc_sincos(double theta, float *s, float *c) {
    const double two_over_pi = 0.63661977236758134308;
    const double pio2_hi = 1.57079632679489655800, pio2_lo = 6.12323399573676603587e-17;
    const double k = RFC_RINT(theta * two_over_pi);
    const float y = (float)((theta - k * pio2_hi) - k * pio2_lo);
    const float z = y * y;
    const float sy = y + y * z * (-1.6666654611e-1f + z * (8.3321608736e-3f + z * -1.9515295891e-4f));
    const float cy = 1.0f - 0.5f * z + z * z * (4.166664568298827e-2f + z * (-1.388731625493765e-3f + z * 2.443315711809948e-5f));
    const int q = (int)((long long)k & 3);
    *s = q == 0 ? sy : q == 1 ? cy : q == 2 ? -sy : -cy;
    *c = q == 0 ? cy : q == 1 ? -sy : q == 2 ? -cy : sy;
}

/* tanh without device libraries: an odd polynomial near 0 (relative error < 1e-7 there),
 * else 1 - 2 / (exp(2x) + 1) (absolute error ~1e-7; saturates to +-1 without overflow
 * trouble: exp(2x) = inf gives 1, exp(2x) = 0 gives -1). For soft-capping and GELU. */
RFC_DEVICE_FN float rfc_tanhf(float x) {
    if (x > -0.125f && x < 0.125f) {
        const float z = x * x;
        return x * (1.0f + z * (-0.33333333333f + z * (0.13333333333f + z * (-0.05396825397f + z * 0.02186948854f))));
    }
    return 1.0f - 2.0f / (RFC_EXPF(2.0f * x) + 1.0f);
}

/* expm1 without device libraries: a Taylor polynomial for |x| < 0.25 (relative error < 1e-7
 * there, where exp(x) - 1 would cancel), else exp(x) - 1 (absolute error ~1e-7, |result| > 0.22).
 * For xIELU's negative side. */
RFC_DEVICE_FN float rfc_expm1f(float x) {
    if (x > -0.25f && x < 0.25f)
        return x * (1.0f + x * (0.5f + x * (1.6666667e-1f + x * (4.1666668e-2f + x * (8.3333338e-3f + x * 1.3888889e-3f)))));
    return RFC_EXPF(x) - 1.0f;
}

#endif /* RFC_GPU_H */
