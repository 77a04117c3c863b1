/* gemma3n's AltUp ops and its activation sparsity (artifacts/plan.py OPS; numpy reference:
 * runtime/devices/altup.py). n streams of E values side by side in a row: stream i of a token at
 * i * E. Each op is a row function the step program calls per token (rfc_<op>_row: input rows,
 * output rows, a weight vector or NULL, then the op's constants) and an export over T rows (the
 * kernel tests). Sums are in double, as ggml's row sums (ggml_vec_sum_f32) accumulate. The row
 * functions are not inlined: a gemma3n step calls them at five places in each of its layers, and
 * one copy of each keeps the single step function, which the compiler optimizes whole, smaller.
 *
 * Requires the prelude's RFC_OP_EXPORT. */
#ifndef RFC_CPU_ALTUP_H
#define RFC_CPU_ALTUP_H

static inline double rfc_altup_sumsq(const float *x, int e) {
    double s = 0.0;
    for (int i = 0; i < e; i++) s += (double)(x[i] * x[i]);
    return s;
}

/* out = [x, y_0 * |x| / |y_0|, ...]: the n - 1 projections of x brought to its magnitude */
static __attribute__((noinline)) void rfc_altup_stack_row(const float *x, const float *y, float *out, const float *w, int n, int e) {
    (void)w;
    const float target = sqrtf((float)rfc_altup_sumsq(x, e));
    memmove(out, x, (size_t)e * sizeof(float));
    for (int s = 1; s < n; s++) {
        const float *ys = y + (size_t)(s - 1) * e;
        const float mag = sqrtf((float)rfc_altup_sumsq(ys, e));
        for (int i = 0; i < e; i++) out[(size_t)s * e + i] = ys[i] * target / mag;
    }
}

/* pred_i = hs_i + sum_k coefs[i n + k] hs_k; act = pred_active */
static __attribute__((noinline)) void rfc_altup_predict_row(const float *hs, const float *coefs, float *pred, float *act, const float *w, int n,
                                         int e, int active) {
    (void)w;
    for (int i = 0; i < n; i++) {
        const float *c = coefs + (size_t)i * n;
        for (int j = 0; j < e; j++) {
            double s = 0.0;
            for (int k = 0; k < n; k++) s += (double)(c[k] * hs[(size_t)k * e + j]);
            pred[(size_t)i * e + j] = hs[(size_t)i * e + j] + (float)s;
        }
    }
    memcpy(act, pred + (size_t)active * e, (size_t)e * sizeof(float));
}

/* out_i = (x - pred_active) (coefs_i + 1) + pred_i; gate = out_active * scale */
static __attribute__((noinline)) void rfc_altup_correct_row(const float *pred, const float *x, const float *coefs, float *out, float *gate,
                                         const float *scale, int n, int e, int active) {
    const float *pa = pred + (size_t)active * e;
    for (int i = 0; i < n; i++) {
        const float c = coefs[i] + 1.0f;
        for (int j = 0; j < e; j++) out[(size_t)i * e + j] = (x[j] - pa[j]) * c + pred[(size_t)i * e + j];
    }
    for (int j = 0; j < e; j++) gate[j] = out[(size_t)active * e + j] * scale[j];
}

/* out = hs with x added to streams 1 .. n-1 (out may be hs), sub = out's streams first .. first + m - 1 */
static __attribute__((noinline)) void rfc_altup_add_row(const float *hs, const float *x, float *out, float *sub, const float *w, int n, int e, int first,
                                     int m) {
    (void)w;
    if (out != hs) memcpy(out, hs, (size_t)e * sizeof(float));
    for (int s = 1; s < n; s++)
        for (int j = 0; j < e; j++) out[(size_t)s * e + j] = hs[(size_t)s * e + j] + x[j];
    memcpy(sub, out + (size_t)first * e, (size_t)m * e * sizeof(float));
}

/* out = (hs_0 + sum_i u_i |hs_active| / |u_i|) / n */
static __attribute__((noinline)) void rfc_altup_merge_row(const float *hs, const float *u, float *out, const float *w, int n, int e, int active) {
    (void)w;
    const float target = sqrtf((float)rfc_altup_sumsq(hs + (size_t)active * e, e));
    memmove(out, hs, (size_t)e * sizeof(float));
    for (int s = 0; s < n - 1; s++) {
        const float *us = u + (size_t)s * e;
        const float mag = sqrtf((float)rfc_altup_sumsq(us, e));
        for (int j = 0; j < e; j++) out[j] += us[j] * target / mag;
    }
    const float inv = 1.0f / (float)n;
    for (int j = 0; j < e; j++) out[j] *= inv;
}

/* out = max(x - (mean + std_mul * std), 0), the unbiased std over the row (out may be x) */
static __attribute__((noinline)) void rfc_gaussian_topk_row(const float *x, float *out, const float *w, int width, float std_mul) {
    (void)w;
    double sum = 0.0;
    for (int i = 0; i < width; i++) sum += (double)x[i];
    const float mean = (float)(sum / width);
    double ss = 0.0;
    for (int i = 0; i < width; i++) ss += (double)((x[i] - mean) * (x[i] - mean));
    const float std = sqrtf((float)ss * (1.0f / (float)(width - 1)));
    const float cutoff = mean + std * std_mul;
    for (int i = 0; i < width; i++) out[i] = x[i] - cutoff > 0.0f ? x[i] - cutoff : 0.0f;
}

RFC_OP_EXPORT void rfc_altup_stack(int T, const float *x, const float *y, float *out, const float *w, int n, int e) {
    for (int t = 0; t < T; t++)
        rfc_altup_stack_row(x + (size_t)t * e, y + (size_t)t * (n - 1) * e, out + (size_t)t * n * e, w, n, e);
}

RFC_OP_EXPORT void rfc_altup_predict(int T, const float *hs, const float *coefs, float *pred, float *act, const float *w, int n, int e,
                                  int active) {
    for (int t = 0; t < T; t++)
        rfc_altup_predict_row(hs + (size_t)t * n * e, coefs + (size_t)t * n * n, pred + (size_t)t * n * e, act + (size_t)t * e, w, n,
                              e, active);
}

RFC_OP_EXPORT void rfc_altup_correct(int T, const float *pred, const float *x, const float *coefs, float *out, float *gate,
                                  const float *scale, int n, int e, int active) {
    for (int t = 0; t < T; t++)
        rfc_altup_correct_row(pred + (size_t)t * n * e, x + (size_t)t * e, coefs + (size_t)t * n, out + (size_t)t * n * e,
                              gate + (size_t)t * e, scale, n, e, active);
}

RFC_OP_EXPORT void rfc_altup_add(int T, const float *hs, const float *x, float *out, float *sub, const float *w, int n, int e, int first,
                              int m) {
    for (int t = 0; t < T; t++)
        rfc_altup_add_row(hs + (size_t)t * n * e, x + (size_t)t * e, out + (size_t)t * n * e, sub + (size_t)t * m * e, w, n, e, first, m);
}

RFC_OP_EXPORT void rfc_altup_merge(int T, const float *hs, const float *u, float *out, const float *w, int n, int e, int active) {
    for (int t = 0; t < T; t++)
        rfc_altup_merge_row(hs + (size_t)t * n * e, u + (size_t)t * (n - 1) * e, out + (size_t)t * e, w, n, e, active);
}

RFC_OP_EXPORT void rfc_gaussian_topk(int T, const float *x, float *out, const float *w, int width, float std_mul) {
    for (int t = 0; t < T; t++) rfc_gaussian_topk_row(x + (size_t)t * width, out + (size_t)t * width, w, width, std_mul);
}

#endif
