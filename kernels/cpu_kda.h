/* Kimi Delta Attention (kimi-linear, bailingmoe3): gated_delta_net with `decay` 'key', a decay per value
 * head and key channel: g_i = softplus(alpha[h S + i] + dt[h S + i]) * a[h] (or with 'key_sigmoid' and
 * lb = lower_bound != 0: lb * sigmoid((alpha + dt) * a[h])), M[j][i] *= exp(g_i) (M[j][i]:
 * value index j, key index i), as artifacts/ops/recurrent.py says and runtime/devices/reference.py
 * computes; otherwise rfc_gdn_head's pass (cpu_delta_net.h, which this header follows). */
#ifndef RFC_CPU_KDA_H
#define RFC_CPU_KDA_H

/* value head h of one chunk: qkv [n, (2 hk + hv) S], alpha [n, hv S], beta [n, hv], out [n, hv S];
 * scratch [3 S]: q, k and the token's decays */
static void rfc_kda_head(const float *qkv, const float *alpha, const float *beta, float *out, int n, int hk, int hv,
                         int S, int h, float a, const float *dt, float eps, float lb, float *RFC_RESTRICT M,
                         float *RFC_RESTRICT qk) {
    const size_t W = (size_t)(2 * hk + hv) * S;
    const int kh = h % hk;
    const float scale = 1.0f / sqrtf((float)S);
    float *q = qk, *k = qk + S, *dec = qk + 2 * S;
    for (int t = 0; t < n; t++) {
        const float *row = qkv + (size_t)t * W;
        rfc_l2_norm(row + (size_t)kh * S, q, S, eps);
        rfc_l2_norm(row + (size_t)(hk + kh) * S, k, S, eps);
        const float *v = row + (size_t)(2 * hk + h) * S;
        const float *al = alpha + (size_t)t * hv * S + (size_t)h * S;
        if (lb != 0.0f) /* bailingmoe3's safe gate: lb * sigmoid((alpha + dt) * a) */
            for (int i = 0; i < S; i++) dec[i] = expf(lb / (1.0f + expf(-((al[i] + dt[i]) * a))));
        else
            for (int i = 0; i < S; i++) dec[i] = expf(rfc_softplus(al[i] + dt[i]) * a);
        const float b = 1.0f / (1.0f + expf(-beta[(size_t)t * hv + h]));
        float *o = out + (size_t)t * hv * S + (size_t)h * S;
        for (int j = 0; j < S; j++) {
            float *m = M + (size_t)j * S;
            float mk = 0.0f, mq = 0.0f;
            for (int i = 0; i < S; i++) {
                m[i] *= dec[i];
                mk += m[i] * k[i];
            }
            const float d = b * (v[j] - mk);
            for (int i = 0; i < S; i++) {
                m[i] += d * k[i];
                mq += m[i] * q[i];
            }
            o[j] = mq * scale;
        }
    }
}

/* the team's share of one KDA op: items (sequence, value head) from a counter */
static void rfc_kda_team(const float *qkv, const float *alpha, const float *beta, float *out, const int32_t *positions,
                         const int32_t *seq_start, int S_seqs, int hk, int hv, int S, const float *a, const float *dt,
                         float eps, float lb, float *const *states, int *counter) {
    const int items = S_seqs * hv;
    float qk[3 * RFC_MAX_DELTA_STATE];
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / hv, h = it % hv;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        float *own;
        float *M = rfc_item_state(states[s], (size_t)S * S, h, positions[lo] == 0, &own);
        if (!M) continue;
        rfc_kda_head(qkv + (size_t)lo * (2 * hk + hv) * S, alpha + (size_t)lo * hv * S, beta + (size_t)lo * hv,
                     out + (size_t)lo * hv * S, n, hk, hv, S, h, a[h], dt + (size_t)h * S, eps, lb, M, qk);
        free(own);
    }
}

RFC_OP_EXPORT void rfc_kda(const float *qkv, const float *alpha, const float *beta, float *out, const int32_t *positions,
                        const int32_t *seq_start, int S, int hk, int hv, int s_dim, const float *a, const float *dt, float eps,
                        float lb, float *const *states) {
    int counter = 0;
    rfc_kda_team(qkv, alpha, beta, out, positions, seq_start, S, hk, hv, s_dim, a, dt, eps, lb, states, &counter);
}

#endif
