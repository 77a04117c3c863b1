/* Gated DeltaNet layers (qwen35): ssm_conv (causal depthwise conv + SiLU) and gated_delta_net
 * (the delta rule, recurrent form: one pass over the state per token), as artifacts/plan.py
 * OPS says and runtime/devices/reference.py computes. Each works on one sequence's chunk with
 * its state: `state` is the sequence's StateTensor in its slot, or NULL for a chunk with no
 * slot (it then starts from zeros and its end state is not kept); `fresh` (the chunk starts at
 * position 0) starts from zeros whatever the slot held.
 *
 * Requires cpu_simd.h, the prelude's RFC_OP_EXPORT, and RFC_MAX_CONV_KERNEL and RFC_MAX_DELTA_STATE
 * (bounds of artifacts/limits.py that templates/cpu_arch_ops.c.j2 defines). */
#ifndef RFC_CPU_DELTA_NET_H
#define RFC_CPU_DELTA_NET_H

/* channels [c0, c1) of one chunk: x, out [n, C]; w [C, K]; bias [C] or NULL (Mamba2's); state [K-1, C] */
static void rfc_ssm_conv_chunk(const float *x, float *out, int n, int C, const float *RFC_RESTRICT w, int K,
                               const float *bias, float *state, int fresh, int c0, int c1) {
    for (int c = c0; c < c1; c++) {
        float win[RFC_MAX_CONV_KERNEL];
        for (int i = 0; i < K - 1; i++) win[i] = state && !fresh ? state[(size_t)i * C + c] : 0.0f;
        const float *wc = w + (size_t)c * K;
        for (int t = 0; t < n; t++) {
            const float xt = x[(size_t)t * C + c];
            float acc = 0.0f;
            for (int i = 0; i < K - 1; i++) acc += wc[i] * win[i];
            acc += wc[K - 1] * xt;
            if (bias) acc += bias[c];
            for (int i = 0; i + 1 < K - 1; i++) win[i] = win[i + 1];
            if (K > 1) win[K - 2] = xt;
            out[(size_t)t * C + c] = acc / (1.0f + expf(-acc));
        }
        if (state)
            for (int i = 0; i < K - 1; i++) state[(size_t)i * C + c] = win[i];
    }
}

static inline float rfc_softplus(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

/* x scaled to unit length: x / sqrt(sum x^2 + eps) (llama.cpp's build_gdn_l2_norm: its rms_norm
 * sums in double); any n */
static inline void rfc_l2_norm(const float *x, float *o, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)ss + eps);
    for (int i = 0; i < n; i++) o[i] = x[i] * scale;
}

/* value head h of one chunk: qkv [n, (2 hk + hv) S], alpha/beta [n, hv], out [n, hv S];
 * M [S, S] the head's state (row j: value index j, over the key index i); qk scratch [2 S].
 * Per token, each row of M is decayed, read against k (its delta), updated and read against q
 * in one pass: a row's delta depends on that row alone. */
static void rfc_gdn_head(const float *qkv, const float *alpha, const float *beta, float *out, int n, int hk, int hv,
                         int S, int h, float a, float dt, float eps, float *RFC_RESTRICT M, float *RFC_RESTRICT qk) {
    const size_t W = (size_t)(2 * hk + hv) * S;
    const int kh = h % hk;
    const float scale = 1.0f / sqrtf((float)S);
    float *q = qk, *k = qk + S;
    for (int t = 0; t < n; t++) {
        const float *row = qkv + (size_t)t * W;
        rfc_l2_norm(row + (size_t)kh * S, q, S, eps);
        rfc_l2_norm(row + (size_t)(hk + kh) * S, k, S, eps);
        const float *v = row + (size_t)(2 * hk + h) * S;
        const float decay = expf(rfc_softplus(alpha[(size_t)t * hv + h] + dt) * a);
        const float b = 1.0f / (1.0f + expf(-beta[(size_t)t * hv + h]));
        float *o = out + (size_t)t * hv * S + (size_t)h * S;
        for (int j = 0; j < S; j++) {
            float *m = M + (size_t)j * S;
            int i = 0;
            float mk = 0.0f, mq = 0.0f;
#ifdef RFC_AVX2
            const __m256 vdecay = _mm256_set1_ps(decay);
            __m256 acc = _mm256_setzero_ps();
            for (; i + 8 <= S; i += 8) {
                const __m256 mi = _mm256_mul_ps(_mm256_loadu_ps(m + i), vdecay);
                _mm256_storeu_ps(m + i, mi);
                acc = _mm256_fmadd_ps(mi, _mm256_loadu_ps(k + i), acc);
            }
            mk = rfc_hsum_ps(acc);
#endif
            for (; i < S; i++) {
                m[i] *= decay;
                mk += m[i] * k[i];
            }
            const float d = b * (v[j] - mk);
            i = 0;
#ifdef RFC_AVX2
            const __m256 vd = _mm256_set1_ps(d);
            acc = _mm256_setzero_ps();
            for (; i + 8 <= S; i += 8) {
                const __m256 mi = _mm256_fmadd_ps(vd, _mm256_loadu_ps(k + i), _mm256_loadu_ps(m + i));
                _mm256_storeu_ps(m + i, mi);
                acc = _mm256_fmadd_ps(mi, _mm256_loadu_ps(q + i), acc);
            }
            mq = rfc_hsum_ps(acc);
#endif
            for (; i < S; i++) {
                m[i] += d * k[i];
                mq += m[i] * q[i];
            }
            o[j] = mq * scale;
        }
    }
}

/* the team's share of one gated_delta_net op: items (sequence, value head) from a counter */
static void rfc_gdn_team(const float *qkv, const float *alpha, const float *beta, float *out, const int32_t *positions,
                         const int32_t *seq_start, int S_seqs, int hk, int hv, int S, const float *a, const float *dt,
                         float eps, float *const *states, int *counter) {
    const int items = S_seqs * hv;
    float qk[2 * RFC_MAX_DELTA_STATE];
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / hv, h = it % hv;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        float *own;
        float *M = rfc_item_state(states[s], (size_t)S * S, h, positions[lo] == 0, &own);
        if (!M) continue;
        rfc_gdn_head(qkv + (size_t)lo * (2 * hk + hv) * S, alpha + (size_t)lo * hv, beta + (size_t)lo * hv,
                     out + (size_t)lo * hv * S, n, hk, hv, S, h, a[h], dt[h], eps, M, qk);
        free(own);
    }
}

/* The ops on their own (tests/kernels/test_cpu_delta_net.py): `states[s]` is sequence s's
 * state tensor (NULL: none), as the step program passes them. */
RFC_OP_EXPORT void rfc_ssm_conv(const float *x, float *out, const int32_t *positions, const int32_t *seq_start, int S, int C,
                             const float *w, int K, float *const *states) {
    for (int s = 0; s < S; s++) {
        const int lo = seq_start[s];
        rfc_ssm_conv_chunk(x + (size_t)lo * C, out + (size_t)lo * C, seq_start[s + 1] - lo, C, w, K, NULL, states[s],
                           positions[lo] == 0, 0, C);
    }
}

/* ssm_conv with its bias (Mamba2's conv1d bias) */
RFC_OP_EXPORT void rfc_ssm_conv_bias(const float *x, float *out, const int32_t *positions, const int32_t *seq_start, int S,
                                  int C, const float *w, int K, const float *bias, float *const *states) {
    for (int s = 0; s < S; s++) {
        const int lo = seq_start[s];
        rfc_ssm_conv_chunk(x + (size_t)lo * C, out + (size_t)lo * C, seq_start[s + 1] - lo, C, w, K, bias, states[s],
                           positions[lo] == 0, 0, C);
    }
}

RFC_OP_EXPORT void rfc_gated_delta_net(const float *qkv, const float *alpha, const float *beta, float *out,
                                    const int32_t *positions, const int32_t *seq_start, int S, int hk, int hv, int s_dim,
                                    const float *a, const float *dt, float eps, float *const *states) {
    int counter = 0;
    rfc_gdn_team(qkv, alpha, beta, out, positions, seq_start, S, hk, hv, s_dim, a, dt, eps, states, &counter);
}

#endif
