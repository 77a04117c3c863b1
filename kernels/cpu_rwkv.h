/* RWKV's ops (artifacts/ops/rwkv.py; numpy reference: runtime/devices/reference.py op_token_shift,
 * op_lerp, op_lerp_data, wkv6_chunk, wkv7_chunk). A head's WKV state is S x S floats, M[j][i] at
 * j * S + i (value index j, key index i). The recurrences work on one sequence's chunk with its
 * state (NULL: no slot, from zeros and not kept); `fresh` (the chunk starts at position 0) starts
 * from zeros whatever the slot held. */
#ifndef RFC_CPU_RWKV_H
#define RFC_CPU_RWKV_H

/* No fma may fuse a product with the add after it: ggml subtracts, multiplies and adds in separate ops. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

/* out = (b - a) * mu[part * c ..] + a (lerp: the token shift's mixes) */
static __attribute__((noinline)) void rfc_lerp_row(const float *a, const float *b, float *out, const float *mu, int c,
                                                   int part) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    mu += (size_t)part * c;
    for (int i = 0; i < c; i++) {
        const float d = b[i] - a[i];
        const float p = d * mu[i];
        out[i] = p + a[i];
    }
}

/* out = (b - a) * m[part * c ..] + a (lerp_data: RWKV-6's data-dependent mixes, RWKV-7's value residual) */
static __attribute__((noinline)) void rfc_lerp_data_row(const float *a, const float *b, const float *m, float *out,
                                                        const float *unused, int c, int part) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    (void)unused;
    m += (size_t)part * c;
    for (int i = 0; i < c; i++) {
        const float d = b[i] - a[i];
        const float p = d * m[i];
        out[i] = p + a[i];
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* token_shift over channels [c0, c1) of one sequence's chunk of n rows of C: out[t] = x[t - 1], out[0] =
 * the state (zeros when fresh); the state keeps x[n - 1] */
static void rfc_token_shift_chunk(const float *x, float *out, int n, int C, float *state, int fresh, int c0, int c1) {
    for (int c = c0; c < c1; c++) {
        out[c] = state && !fresh ? state[c] : 0.0f;
        for (int t = 1; t < n; t++) out[(size_t)t * C + c] = x[(size_t)(t - 1) * C + c];
        if (state && n > 0) state[c] = x[(size_t)(n - 1) * C + c];
    }
}

/* wkv6 / gla, head h of one chunk: r, w, out [n, H S], k, v [n, Hkv S] (head h reads kv head h / (H / Hkv)) */
static void rfc_wkv6_head(const float *r, const float *k, const float *v, const float *w, float *out, int n, int H,
                          int Hkv, int S, int h, const float *u, const float *decay, int gla, float scale,
                          float *RFC_RESTRICT M) {
    const int kh = h / (H / Hkv);
    float wd[RFC_MAX_DELTA_STATE], kk[RFC_MAX_DELTA_STATE];
    for (int t = 0; t < n; t++) {
        const float *rt = r + (size_t)t * H * S + (size_t)h * S, *wt = w + (size_t)t * H * S + (size_t)h * S;
        const float *kt = k + (size_t)t * Hkv * S + (size_t)kh * S, *vt = v + (size_t)t * Hkv * S + (size_t)kh * S;
        float *o = out + (size_t)t * H * S + (size_t)h * S;
        for (int i = 0; i < S; i++) {
            wd[i] = expf(-expf(wt[i] + decay[h * S + i]));
            kk[i] = gla ? kt[i] - kt[i] * wd[i] : kt[i];
        }
        for (int j = 0; j < S; j++) {
            float *m = M + (size_t)j * S;
            float acc = 0.0f;
            if (gla) {
                for (int i = 0; i < S; i++) {
                    m[i] = m[i] * wd[i] + kk[i] * vt[j];
                    acc += m[i] * (rt[i] * scale);
                }
            } else {
                const float *uh = u + (size_t)h * S;
                for (int i = 0; i < S; i++) {
                    const float kv = kk[i] * vt[j];
                    acc += rt[i] * (uh[i] * kv + m[i]);
                    m[i] = m[i] * wd[i] + kv;
                }
            }
            o[j] = acc;
        }
    }
}

/* wkv7, head h of one chunk (the op's doc): inputs and outputs [n, H S], the five weights [H S] */
static void rfc_wkv7_head(const float *r, const float *w, const float *k, const float *v, const float *a, float *out,
                          float *bonus, int n, int H, int S, int h, const float *w0, const float *a0, const float *k_k,
                          const float *k_a, const float *r_k, float *RFC_RESTRICT M) {
    float wd[RFC_MAX_DELTA_STATE], kn[RFC_MAX_DELTA_STATE], k2[RFC_MAX_DELTA_STATE], b[RFC_MAX_DELTA_STATE];
    const size_t o = (size_t)h * S;
    for (int t = 0; t < n; t++) {
        const size_t row = (size_t)t * H * S + o;
        float norm = 0.0f, rk = 0.0f;
        for (int i = 0; i < S; i++) {
            wd[i] = expf(-0.606531f * (1.0f / (1.0f + expf(-(w[row + i] + w0[o + i])))));
            const float ai = 1.0f / (1.0f + expf(-(a[row + i] + a0[o + i])));
            kn[i] = k[row + i] * k_k[o + i];
            norm += kn[i] * kn[i];
            const float ka = k[row + i] * k_a[o + i];
            k2[i] = k[row + i] + (ai * ka - ka);
            b[i] = ai; /* times kn once it is normalized */
            rk += k2[i] * r[row + i] * r_k[o + i];
        }
        const float sc = 1.0f / fmaxf(sqrtf(norm), 1e-12f);
        for (int i = 0; i < S; i++) {
            kn[i] *= sc;
            b[i] *= kn[i];
        }
        for (int j = 0; j < S; j++) {
            float *m = M + (size_t)j * S;
            float sa = 0.0f, acc = 0.0f;
            for (int i = 0; i < S; i++) sa -= kn[i] * m[i];
            const float vj = v[row + j];
            for (int i = 0; i < S; i++) {
                m[i] = m[i] * wd[i] + vj * k2[i] + sa * b[i];
                acc += m[i] * r[row + i];
            }
            out[row + j] = acc;
            bonus[row + j] = vj * rk;
        }
    }
}

/* the team's share of one wkv6 op: items (sequence, head) from a counter */
static void rfc_wkv6_team(const float *r, const float *k, const float *v, const float *w, float *out,
                          const int32_t *positions, const int32_t *seq_start, int S_seqs, int H, int Hkv, int S,
                          const float *u, const float *decay, int gla, float scale, float *const *states, int *counter) {
    const int items = S_seqs * H;
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / H, h = it % H;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        float *own;
        float *M = rfc_item_state(states[s], (size_t)S * S, h, positions[lo] == 0, &own);
        if (!M) continue; /* out of memory: the output rows stay as they were */
        rfc_wkv6_head(r + (size_t)lo * H * S, k + (size_t)lo * Hkv * S, v + (size_t)lo * Hkv * S, w + (size_t)lo * H * S,
                      out + (size_t)lo * H * S, n, H, Hkv, S, h, u, decay, gla, scale, M);
        free(own);
    }
}

/* the team's share of one wkv7 op: items (sequence, head) from a counter */
static void rfc_wkv7_team(const float *r, const float *w, const float *k, const float *v, const float *a, float *out,
                          float *bonus, const int32_t *positions, const int32_t *seq_start, int S_seqs, int H, int S,
                          const float *w0, const float *a0, const float *k_k, const float *k_a, const float *r_k,
                          float *const *states, int *counter) {
    const int items = S_seqs * H;
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / H, h = it % H;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        const size_t at = (size_t)lo * H * S;
        float *own;
        float *M = rfc_item_state(states[s], (size_t)S * S, h, positions[lo] == 0, &own);
        if (!M) continue;
        rfc_wkv7_head(r + at, w + at, k + at, v + at, a + at, out + at, bonus + at, n, H, S, h, w0, a0, k_k, k_a, r_k, M);
        free(own);
    }
}

/* Whole-op entry points for the kernel tests (tests/kernels/kit/cpu.py): one thread does all. */
RFC_OP_EXPORT void rfc_wkv6(const float *r, const float *k, const float *v, const float *w, float *out, const int32_t *positions,
                         const int32_t *seq_start, int S_seqs, int H, int Hkv, int S, const float *u, const float *decay,
                         int gla, float scale, float *const *states) {
    int counter = 0;
    rfc_wkv6_team(r, k, v, w, out, positions, seq_start, S_seqs, H, Hkv, S, u, decay, gla, scale, states, &counter);
}

RFC_OP_EXPORT void rfc_wkv7(const float *r, const float *w, const float *k, const float *v, const float *a, float *out,
                         float *bonus, const int32_t *positions, const int32_t *seq_start, int S_seqs, int H, int S,
                         const float *w0, const float *a0, const float *k_k, const float *k_a, const float *r_k,
                         float *const *states) {
    int counter = 0;
    rfc_wkv7_team(r, w, k, v, a, out, bonus, positions, seq_start, S_seqs, H, S, w0, a0, k_k, k_a, r_k, states, &counter);
}

RFC_OP_EXPORT void rfc_token_shift(const float *x, float *out, const int32_t *positions, const int32_t *seq_start, int S_seqs,
                                int C, float *const *states) {
    for (int s = 0; s < S_seqs; s++) {
        const int lo = seq_start[s];
        rfc_token_shift_chunk(x + (size_t)lo * C, out + (size_t)lo * C, seq_start[s + 1] - lo, C, states[s],
                              positions[lo] == 0, 0, C);
    }
}

RFC_OP_EXPORT void rfc_lerp(const float *a, const float *b, float *out, const float *mu, int rows, int c, int part) {
    for (int t = 0; t < rows; t++) rfc_lerp_row(a + (size_t)t * c, b + (size_t)t * c, out + (size_t)t * c, mu, c, part);
}

RFC_OP_EXPORT void rfc_lerp_data(const float *a, const float *b, const float *m, float *out, int rows, int c, int mw, int part) {
    for (int t = 0; t < rows; t++)
        rfc_lerp_data_row(a + (size_t)t * c, b + (size_t)t * c, m + (size_t)t * mw, out + (size_t)t * c, NULL, c, part);
}

#endif
