/* Mamba-1 layers (mamba, falcon-mamba, jamba): ssm_scan with a decay per channel and state (llama.cpp's
 * ggml_ssm_scan, Mamba-1 branch: A [H, N]) plus the D skip, as artifacts/ops/recurrent.py says and
 * runtime/devices/reference.py ssm_scan_chunk computes. Each channel is a head of one row (P = 1); its
 * state is a row of N. `state`, `fresh` and the team as cpu_ssm_scan.h's.
 *
 * Requires the prelude's RFC_OP_EXPORT. */
#ifndef RFC_CPU_SSM_SCAN1_H
#define RFC_CPU_SSM_SCAN1_H

/* channels [c0, c1) of one chunk: xbc [n, H + 2 G N], dt [n, H], out [n, H]; M [H, N] the state */
static void rfc_ssm_scan1_channels(const float *xbc, const float *dt, float *out, int n, int H, int G, int N, int c0,
                                   int c1, const float *a, const float *d, const float *dt_bias, float *RFC_RESTRICT M) {
    const size_t W = (size_t)H + (size_t)2 * G * N;
    for (int t = 0; t < n; t++) {
        const float *row = xbc + (size_t)t * W;
        for (int h = c0; h < c1; h++) {
            const int g = h / (H / G); /* ggml's repeat_interleave */
            const float *B = row + (size_t)H + (size_t)g * N;
            const float *C = row + (size_t)H + (size_t)(G + g) * N;
            const float z = dt[(size_t)t * H + h] + dt_bias[h];
            const float dts = z > 20.0f ? z : log1pf(expf(z));
            const float x = row[h], xdt = x * dts;
            const float *ah = a + (size_t)h * N;
            float *m = M + (size_t)h * N, y = 0.0f;
            for (int j = 0; j < N; j++) {
                const float mj = m[j] * expf(dts * ah[j]) + B[j] * xdt;
                m[j] = mj;
                y += mj * C[j];
            }
            out[(size_t)t * H + h] = y + d[h] * x;
        }
    }
}

/* the team's share: items (sequence, block of 64 channels) from a counter */
static void rfc_ssm_scan1_team(const float *xbc, const float *dt, float *out, const int32_t *positions,
                               const int32_t *seq_start, int S_seqs, int H, int G, int N, const float *a, const float *d,
                               const float *dt_bias, float *const *states, int *counter) {
    const int blocks = (H + 63) / 64, items = S_seqs * blocks;
    const size_t W = (size_t)H + (size_t)2 * G * N;
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / blocks, c0 = (it % blocks) * 64, c1 = c0 + 64 < H ? c0 + 64 : H;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        /* no slot (kernel tests, teacher forcing without a pool): a zero state of its own, dropped after */
        float *own = states[s] ? NULL : (float *)calloc((size_t)H * N, sizeof(float));
        float *M = own ? own : states[s];
        if (!M) continue; /* out of memory: the output rows stay as they were */
        if (!own && positions[lo] == 0) memset(M + (size_t)c0 * N, 0, (size_t)(c1 - c0) * N * sizeof(float));
        rfc_ssm_scan1_channels(xbc + (size_t)lo * W, dt + (size_t)lo * H, out + (size_t)lo * H, n, H, G, N, c0, c1, a, d,
                               dt_bias, M);
        free(own);
    }
}

RFC_OP_EXPORT void rfc_ssm_scan1(const float *xbc, const float *dt, float *out, const int32_t *positions,
                              const int32_t *seq_start, int S, int H, int G, int N, const float *a, const float *d,
                              const float *dt_bias, float *const *states) {
    int counter = 0;
    rfc_ssm_scan1_team(xbc, dt, out, positions, seq_start, S, H, G, N, a, d, dt_bias, states, &counter);
}

#endif
