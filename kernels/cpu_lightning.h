/* MiniMax-01's lightning attention (artifacts/ops/recurrent.py lightning_attention; numpy reference:
 * runtime/devices/reference.py lightning_chunk): linear attention with a constant decay per head, in
 * its recurrent form. Per token and head, with the head's state M [D, D] (row j: value index j, over
 * the key index i): M = exp(-s) M + v k^T, out_j = M_j . q. Each works on one sequence's chunk with its
 * state (NULL: no slot, it starts from zeros and its end state is not kept); `fresh` (the chunk starts
 * at position 0) starts from zeros whatever the slot held. */
#ifndef RFC_CPU_LIGHTNING_H
#define RFC_CPU_LIGHTNING_H

/* head h of one chunk: qkv [n, 3 H D] (head h's q, k, v at 3 h D), out [n, H D], lambda = exp(-s_h) */
static void rfc_lightning_head(const float *qkv, float *out, int n, int H, int D, int h, float lambda, float *RFC_RESTRICT M) {
    for (int t = 0; t < n; t++) {
        const float *q = qkv + (size_t)t * 3 * H * D + (size_t)h * 3 * D, *k = q + D, *v = q + 2 * D;
        float *o = out + (size_t)t * H * D + (size_t)h * D;
        for (int j = 0; j < D; j++) {
            float *m = M + (size_t)j * D;
            float acc = 0.0f;
            for (int i = 0; i < D; i++) {
                m[i] = m[i] * lambda + v[j] * k[i];
                acc += m[i] * q[i];
            }
            o[j] = acc;
        }
    }
}

/* the team's share of one lightning_attention op: items (sequence, head) from a counter */
static void rfc_lightning_team(const float *qkv, float *out, const int32_t *positions, const int32_t *seq_start, int S_seqs,
                               int H, int D, const float *decay, float *const *states, int *counter) {
    const int items = S_seqs * H;
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / H, h = it % H;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        float *own;
        float *M = rfc_item_state(states[s], (size_t)D * D, h, positions[lo] == 0, &own);
        if (!M) continue;
        rfc_lightning_head(qkv + (size_t)lo * 3 * H * D, out + (size_t)lo * H * D, n, H, D, h, expf(-decay[h]), M);
        free(own);
    }
}

RFC_OP_EXPORT void rfc_lightning_attention(const float *qkv, float *out, const int32_t *positions, const int32_t *seq_start,
                                        int S, int H, int D, const float *decay, float *const *states) {
    int counter = 0;
    rfc_lightning_team(qkv, out, positions, seq_start, S, H, D, decay, states, &counter);
}

#endif
