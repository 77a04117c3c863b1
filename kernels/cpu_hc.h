/* hy_v4's hyper-connections and Kimi-K3's cross-layer residual attention (artifacts/ops/hc.py; numpy reference: runtime/devices/reference.py
 * op_hc_*). n streams of E values side by side in a row: stream i of a token at i * E. Each op is a
 * row function the step program calls per token (rfc_<op>_row: input rows, output rows, a weight
 * vector or NULL, then the op's constants), float32 in ggml's order. */
#ifndef RFC_CPU_HC_H
#define RFC_CPU_HC_H

#include <math.h>
#include <string.h>

/* No fma may fuse a product with the add after it: ggml multiplies and adds in separate ops. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

/* gates_j = sigmoid(mixes_j * scale + base_j) (x magnitude for j >= n) + eps; m = n or 2 n */
static __attribute__((noinline)) void rfc_hc_gates_row(const float *mixes, float *gates, const float *base, int n, int m,
                                                       float scale_pre, float scale_post, float magnitude, float eps,
                                                       int post_eps) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int j = 0; j < m; j++) {
        const float s = mixes[j] * (j < n ? scale_pre : scale_post) + base[j];
        float g = 1.0f / (1.0f + expf(-s));
        if (j >= n) g = g * magnitude;
        gates[j] = j >= n && !post_eps ? g : g * 1.0f + eps;
    }
}

/* out = sum_i hs_i * gates_i, added in order (gw: the gates' row width, n or 2 n) */
static __attribute__((noinline)) void rfc_hc_reduce_row(const float *hs, const float *gates, float *out, const float *w, int n, int e,
                                                        int gw) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    (void)w;
    (void)gw;
    for (int j = 0; j < e; j++) {
        float acc = hs[j] * gates[0];
        for (int i = 1; i < n; i++) {
            const float p = hs[(size_t)i * e + j] * gates[i];
            acc = acc + p;
        }
        out[j] = acc;
    }
}

/* out_i = residual_i + y * gates_{n + i} (out may be residual) */
static __attribute__((noinline)) void rfc_hc_post_row(const float *y, const float *residual, const float *gates, float *out,
                                                      const float *w, int n, int e) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    (void)w;
    for (int i = 0; i < n; i++) {
        const float g = gates[n + i];
        for (int j = 0; j < e; j++) {
            const float p = y[j] * g;
            out[(size_t)i * e + j] = residual[(size_t)i * e + j] + p;
        }
    }
}

/* mHC's mixing matrix (comb[s n + d]: from stream s to d): c = mix * scale + base, a softmax over d per s, + eps,
 * the columns (each d over s) normalized, then iters - 1 times the rows (each s over d) and the columns; every sum
 * added in double and rounded, as ggml_soft_max and ggml_sum_rows */
static __attribute__((noinline)) void rfc_hc_comb_row(const float *mix, float *comb, const float *base, int n,
                                                      float scale, float eps, int iters) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int s = 0; s < n; s++) {
        float *c = comb + (size_t)s * n;
        float mx = -INFINITY;
        for (int d = 0; d < n; d++) {
            c[d] = mix[s * n + d] * scale + base[s * n + d];
            mx = c[d] > mx ? c[d] : mx;
        }
        double sum = 0.0;
        for (int d = 0; d < n; d++) {
            c[d] = expf(c[d] - mx);
            sum += (double)c[d];
        }
        const float inv = (float)(1.0 / sum);
        for (int d = 0; d < n; d++) c[d] = c[d] * inv + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0)
            for (int s = 0; s < n; s++) { /* the rows: each source over its destinations */
                double sum = 0.0;
                for (int d = 0; d < n; d++) sum += (double)comb[s * n + d];
                const float div = (float)sum + eps;
                for (int d = 0; d < n; d++) comb[s * n + d] = comb[s * n + d] / div;
            }
        for (int d = 0; d < n; d++) { /* the columns: each destination over its sources */
            double sum = 0.0;
            for (int s = 0; s < n; s++) sum += (double)comb[s * n + d];
            const float div = (float)sum + eps;
            for (int s = 0; s < n; s++) comb[s * n + d] = comb[s * n + d] / div;
        }
    }
}

/* mHC's post: stream d = y * gates_{n + d} + sum_s residual_s * comb[s n + d], added in order */
static __attribute__((noinline)) void rfc_hc_mix_post_row(const float *y, const float *residual, const float *gates,
                                                          const float *comb, float *out, const float *w, int n, int e) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    (void)w;
    for (int d = 0; d < n; d++)
        for (int j = 0; j < e; j++) {
            float acc = y[j] * gates[n + d];
            for (int s = 0; s < n; s++) {
                const float p = residual[(size_t)s * e + j] * comb[s * n + d];
                acc = acc + p;
            }
            out[(size_t)d * e + j] = acc;
        }
}

/* out = (hs_0 + ... + hs_{n-1}) * (1 / n), added in order (mHC's final collapse) */
static __attribute__((noinline)) void rfc_hc_mean_row(const float *hs, float *out, const float *w, int n, int e) {
    (void)w;
    const float inv = 1.0f / (float)n;
    for (int j = 0; j < e; j++) {
        float acc = hs[j];
        for (int i = 1; i < n; i++) acc = acc + hs[(size_t)i * e + j];
        out[j] = acc * inv;
    }
}

/* Kimi-K3's res_mix: the first n streams of a stack row scored (rmsnorm(stream) . w, the squares and the
 * sum added in double as ggml's rms_norm and sum_rows), softmaxed, and added in order times their weights */
static __attribute__((noinline)) void rfc_res_mix_row(const float *stack, float *out, const float *w, int n, int e,
                                                      float eps, int stride) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    (void)stride; /* the stack's row width: the T-row export's step */
    float p[RFC_MAX_RES_STREAMS];
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        const float *x = stack + (size_t)i * e;
        double ss = 0.0;
        for (int j = 0; j < e; j++) ss += (double)(x[j] * x[j]);
        const float scale = 1.0f / sqrtf((float)(ss / e) + eps);
        double dot = 0.0;
        for (int j = 0; j < e; j++) {
            const float y = x[j] * scale;
            dot += (double)(y * w[j]);
        }
        p[i] = (float)dot;
        mx = p[i] > mx ? p[i] : mx;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        p[i] = expf(p[i] - mx);
        sum += (double)p[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) p[i] = p[i] * inv;
    for (int j = 0; j < e; j++) {
        float acc = stack[j] * p[0];
        for (int i = 1; i < n; i++) {
            const float q = stack[(size_t)i * e + j] * p[i];
            acc = acc + q;
        }
        out[j] = acc;
    }
}

/* out[offset .. offset + W) = x (a residual banked into its slot of res_mix's stack) */
static void rfc_put_cols_row(const float *x, float *out, const float *w, int width, int offset, int n_out) {
    (void)w;
    (void)n_out; /* out's row width: the T-row export's step */
    memcpy(out + offset, x, (size_t)width * sizeof(float));
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* the same over T rows (the kernel tests) */
RFC_OP_EXPORT void rfc_hc_gates(int T, const float *mixes, float *gates, const float *base, int n, int m, float scale_pre,
                             float scale_post, float magnitude, float eps, int post_eps) {
    for (int t = 0; t < T; t++)
        rfc_hc_gates_row(mixes + (size_t)t * m, gates + (size_t)t * m, base, n, m, scale_pre, scale_post, magnitude, eps,
                         post_eps);
}

RFC_OP_EXPORT void rfc_hc_reduce(int T, const float *hs, const float *gates, float *out, const float *w, int n, int e, int gw) {
    for (int t = 0; t < T; t++) rfc_hc_reduce_row(hs + (size_t)t * n * e, gates + (size_t)t * gw, out + (size_t)t * e, w, n, e, gw);
}

RFC_OP_EXPORT void rfc_hc_comb(int T, const float *mix, float *comb, const float *base, int n, float scale, float eps,
                            int iters) {
    for (int t = 0; t < T; t++) rfc_hc_comb_row(mix + (size_t)t * n * n, comb + (size_t)t * n * n, base, n, scale, eps, iters);
}

RFC_OP_EXPORT void rfc_hc_mix_post(int T, const float *y, const float *residual, const float *gates, const float *comb,
                                float *out, const float *w, int n, int e) {
    for (int t = 0; t < T; t++)
        rfc_hc_mix_post_row(y + (size_t)t * e, residual + (size_t)t * n * e, gates + (size_t)t * 2 * n,
                            comb + (size_t)t * n * n, out + (size_t)t * n * e, w, n, e);
}

RFC_OP_EXPORT void rfc_hc_mean(int T, const float *hs, float *out, const float *w, int n, int e) {
    for (int t = 0; t < T; t++) rfc_hc_mean_row(hs + (size_t)t * n * e, out + (size_t)t * e, w, n, e);
}

RFC_OP_EXPORT void rfc_res_mix(int T, const float *stack, float *out, const float *w, int n, int e, float eps, int stride) {
    for (int t = 0; t < T; t++) rfc_res_mix_row(stack + (size_t)t * stride, out + (size_t)t * e, w, n, e, eps, stride);
}

RFC_OP_EXPORT void rfc_put_cols(int T, const float *x, float *out, const float *w, int width, int offset, int n_out) {
    for (int t = 0; t < T; t++) rfc_put_cols_row(x + (size_t)t * width, out + (size_t)t * n_out, w, width, offset, n_out);
}

RFC_OP_EXPORT void rfc_hc_post(int T, const float *y, const float *residual, const float *gates, float *out, const float *w, int n,
                            int e) {
    for (int t = 0; t < T; t++)
        rfc_hc_post_row(y + (size_t)t * e, residual + (size_t)t * n * e, gates + (size_t)t * 2 * n, out + (size_t)t * n * e, w, n, e);
}

#endif
