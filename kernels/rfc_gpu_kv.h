/* ---- quantized KV caches on GPU targets (--cache-type-k/-v, artifacts/kv_cache_type.py) ----
 *
 * How K and V rows are stored is chosen when the server loads the model, and the runtime never
 * compiles, so kv_write and the attention kernels take the type as a runtime number (k_type,
 * v_type: CacheType.code) and branch on it, uniformly for the whole launch:
 *   RFC_KV_PLAIN  the plan's KV dtype (f16, or f32 where the plan asks): "f16"
 *   RFC_KV_Q8_0   ggml's q8_0: blocks of 32 values along head_dim, an f16 scale then 32 int8
 *   RFC_KV_Q4_0   ggml's q4_0: an f16 scale then 16 bytes, value j low nibble, j + 16 high
 * Blocks are 34 and 18 bytes, so rows and blocks are only 2-byte aligned: quants are read and
 * written in 16-bit words. kv_write rotates (llama.cpp's Hadamard rotation of quantized rows)
 * and quantizes exactly as runtime/model/kv_quant.py and the cpu step program do; attention
 * reads the blocks directly (d * q, one product per value, as kv_quant.py dequantizes). */
#ifndef RFC_GPU_KV_H
#define RFC_GPU_KV_H

#define RFC_KV_PLAIN 0
#define RFC_KV_Q8_0 1
#define RFC_KV_Q4_0 2

/* bytes of n cached values of a type (n a multiple of 32 when quantized); `item`: bytes of
 * one value of the plain type */
RFC_DEVICE_FN long long rfc_kv_bytes(int type, long long n, int item) {
    return type == RFC_KV_Q8_0 ? n / 32 * 34 : type == RFC_KV_Q4_0 ? n / 32 * 18 : n * item;
}

template <int N>
RFC_DEVICE_FN void rfc_kv_plain_load_n(const rfc_kv_f16_t *p, float *f) { rfc_kv_f16_load_n<N>(p, f); }
template <int N>
RFC_DEVICE_FN void rfc_kv_plain_load_n(const rfc_kv_f32_t *p, float *f) { rfc_kv_f32_load_n<N>(p, f); }
RFC_DEVICE_FN void rfc_kv_plain_store(rfc_kv_f16_t *p, float f) { *p = rfc_kv_f16_store(f); }
RFC_DEVICE_FN void rfc_kv_plain_store(rfc_kv_f32_t *p, float f) { *p = rfc_kv_f32_store(f); }

/* A cache type as a compile-time constant: rfc_kv_dispatch(type, f) calls f(rfc_kv_type<TYPE>())
 * for the runtime type, so a loop of loads is compiled once per type with its branch outside:
 * a branch per load inside an unrolled loop costs registers (gfx90a's split decode kernel at
 * 16 x 8 x 64 took 236 VGPRs that way, 112 without quantized types). */
template <int TYPE>
struct rfc_kv_type {
    static constexpr int value = TYPE;
};

template <typename F>
RFC_DEVICE_FN void rfc_kv_dispatch(int type, F f) {
    if (type == RFC_KV_Q8_0)
        f(rfc_kv_type<RFC_KV_Q8_0>());
    else if (type == RFC_KV_Q4_0)
        f(rfc_kv_type<RFC_KV_Q4_0>());
    else
        f(rfc_kv_type<RFC_KV_PLAIN>());
}

/* N consecutive values of a cached head row (`row`: its first byte) stored as TYPE, from value
 * e on, as floats. N divides 32 and e is a multiple of N, so they lie in one block. */
template <typename T, int N, int TYPE>
RFC_DEVICE_FN void rfc_kv_load(const unsigned char *row, int e, float *f) {
    if constexpr (TYPE == RFC_KV_PLAIN) {
        rfc_kv_plain_load_n<N>((const T *)row + e, f);
    } else {
        const unsigned char *b = row + (e / 32) * (TYPE == RFC_KV_Q8_0 ? 34 : 18);
        const float d = RFC_HALF_TO_FLOAT(*(const unsigned short *)b);
        const int j = e % 32;
        if constexpr (TYPE == RFC_KV_Q8_0) {
            const unsigned char *q = b + 2 + j;
            if constexpr (N % 2 == 0) {
#pragma unroll
                for (int i = 0; i < N; i += 2) {
                    const unsigned w = *(const unsigned short *)(q + i);
                    f[i] = d * (float)(signed char)(w & 0xffu);
                    f[i + 1] = d * (float)(signed char)(w >> 8);
                }
            } else {
#pragma unroll
                for (int i = 0; i < N; i++) f[i] = d * (float)(signed char)q[i];
            }
        } else {
            const unsigned char *q = b + 2 + j % 16;
            const int shift = j < 16 ? 0 : 4;
            if constexpr (N % 2 == 0) {
#pragma unroll
                for (int i = 0; i < N; i += 2) {
                    const unsigned w = *(const unsigned short *)(q + i);
                    f[i] = d * (float)((int)((w >> shift) & 15u) - 8);
                    f[i + 1] = d * (float)((int)((w >> (8 + shift)) & 15u) - 8);
                }
            } else {
#pragma unroll
                for (int i = 0; i < N; i++) f[i] = d * (float)((int)((q[i] >> shift) & 15) - 8);
            }
        }
    }
}

/* One block of 32 floats to q8_0 / q4_0 at y (2-byte aligned), float32 arithmetic in
 * kv_quant.py's order: q8_0 d = amax / 127, q = nearest (half to even) of x * (1 / d); q4_0
 * d = (the first value of largest magnitude) / -8, q = min(15, floor(x * (1 / d) + 8.5)), the
 * product rounded before the add (no fma). */
RFC_DEVICE_FN void rfc_kv_quantize_block(const float *x, unsigned char *y, int type) {
    float amax = 0.0f, mx = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float a = x[j] < 0.0f ? -x[j] : x[j];
        if (a > amax) amax = a, mx = x[j];  /* strict: the first of equal magnitudes */
    }
    unsigned short *w = (unsigned short *)y;
    if (type == RFC_KV_Q8_0) {
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        w[0] = RFC_FLOAT_TO_HALF(d);
        for (int j = 0; j < 32; j += 2) {
            const int q0 = (int)RFC_RINTF(x[j] * id), q1 = (int)RFC_RINTF(x[j + 1] * id);
            w[1 + j / 2] = (unsigned short)((q0 & 0xff) | (q1 & 0xff) << 8);
        }
    } else {
        const float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        w[0] = RFC_FLOAT_TO_HALF(d);
        for (int j = 0; j < 16; j += 2) {
            int q[4];
            const float v[4] = {x[j], x[j + 16], x[j + 1], x[j + 17]};
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int n = (int)(RFC_FMUL_RN(v[u], id) + 8.5f);  /* >= 0: truncation is floor */
                q[u] = n < 15 ? n : 15;
            }
            w[1 + j / 2] = (unsigned short)((q[0] | q[1] << 4) | (q[2] | q[3] << 4) << 8);
        }
    }
}

/* In-place fast Walsh-Hadamard transform of x[0:n] in blocks of `size` (a power of two
 * dividing n) by a block of THREADS threads, unnormalized; it starts after the caller's
 * barrier and ends with one. The butterflies are the cpu step program's (rfc_rotate), stage by
 * stage, so in double they give its sums exactly. */
template <int THREADS, typename F>
RFC_DEVICE_FN void rfc_fwht(F *x, int n, int size) {
    for (int lg = 0; (1 << lg) < size; lg++) {
        const int len = 1 << lg;
        for (int p = RFC_TID; p < n / 2; p += THREADS) {
            const int i = ((p >> lg) << (lg + 1)) + (p & (len - 1));
            const F u = x[i], w = x[i + len];
            x[i] = u + w, x[i + len] = u - w;
        }
        rfc_sync();
    }
}

/* One token's cache row: `width` floats at x (global) into dst as `type`: plain values, or,
 * rotated first in blocks of `rot` (0: not) and scaled by `norm` (1 / sqrt(rot)), q8_0 / q4_0
 * blocks. The rotation is llama.cpp's (KvCacheTypes.rotations), done as the cpu step program
 * does it (a fast Walsh-Hadamard transform in double, then one rounding to float) so that the
 * same floats are quantized. Chunks of CHUNK values (a multiple of rot and of 32) go through
 * shared y_s (double) and x_s (float). Every thread of the block calls it. */
template <typename T, int THREADS, int CHUNK>
RFC_DEVICE_FN void rfc_kv_store_row(unsigned char *dst, const float *x, int width, int type, int rot, double norm,
                                    double *y_s, float *x_s) {
    const int tid = RFC_TID;
    if (type == RFC_KV_PLAIN) {
        for (int i = tid; i < width; i += THREADS) rfc_kv_plain_store((T *)dst + i, x[i]);
        return;
    }
    const int block_bytes = type == RFC_KV_Q8_0 ? 34 : 18;
    for (int c0 = 0; c0 < width; c0 += CHUNK) {
        const int n = width - c0 < CHUNK ? width - c0 : CHUNK;
        if (rot) {
            for (int i = tid; i < n; i += THREADS) y_s[i] = (double)x[c0 + i];
            rfc_sync();
            rfc_fwht<THREADS>(y_s, n, rot);
            for (int i = tid; i < n; i += THREADS) x_s[i] = (float)(y_s[i] * norm);
        } else {
            for (int i = tid; i < n; i += THREADS) x_s[i] = x[c0 + i];
        }
        rfc_sync();
        for (int b = tid; b < n / 32; b += THREADS) rfc_kv_quantize_block(x_s + 32 * b, dst + (long long)(c0 / 32 + b) * block_bytes, type);
        rfc_sync();  /* before the next chunk overwrites y_s and x_s */
    }
}

/* Rows of head_dim floats in shared memory (x[0:n]) turned by the rotation of blocks of
 * `size` (float arithmetic: attention's side of the rotation is held to float rounding, not
 * bits), each value then multiplied by `scale`. Starts after the caller's barrier, ends with one. */
template <int THREADS>
RFC_DEVICE_FN void rfc_rotate_shared(float *x, int n, int size, float scale) {
    rfc_fwht<THREADS>(x, n, size);
    for (int i = RFC_TID; i < n; i += THREADS) x[i] *= scale;
    rfc_sync();
}

#endif
