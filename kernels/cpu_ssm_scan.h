/* Mamba2 layers (granitehybrid, nemotron_h): ssm_scan, the selective scan with a scalar decay per
 * head (llama.cpp's ggml_ssm_scan, Mamba-2 branch) plus the D skip, as artifacts/plan.py OPS says
 * and runtime/devices/reference.py ssm_scan_chunk computes. The conv before it is ssm_conv
 * (cpu_delta_net.h) with its bias. `state` is the sequence's [H, P, N] StateTensor in its slot,
 * or NULL for a chunk with no slot (zeros, its end state dropped); `fresh` (the chunk starts at
 * position 0) starts from zeros whatever the slot held.
 *
 * Requires cpu_simd.h and the prelude's RFC_OP_EXPORT. */
#ifndef RFC_CPU_SSM_SCAN_H
#define RFC_CPU_SSM_SCAN_H

/* head h of one chunk: xbc [n, H P + 2 G N], dt [n, H], out [n, H P]; M [P, N] the head's state.
 * Per token one pass over M: each row is decayed, takes dt' x_i B and is read against C. */
static void rfc_ssm_scan_head(const float *xbc, const float *dt, float *out, int n, int H, int P, int G, int N, int h,
                              float a, float d, float dt_bias, float *RFC_RESTRICT M) {
    const size_t W = (size_t)H * P + (size_t)2 * G * N;
    const int g = h / (H / G); /* ggml's repeat_interleave: consecutive heads share a group */
    for (int t = 0; t < n; t++) {
        const float *row = xbc + (size_t)t * W;
        const float *x = row + (size_t)h * P;
        const float *B = row + (size_t)H * P + (size_t)g * N;
        const float *C = row + (size_t)H * P + (size_t)(G + g) * N;
        const float z = dt[(size_t)t * H + h] + dt_bias;
        const float dts = z > 20.0f ? z : log1pf(expf(z));
        const float dA = expf(dts * a);
        float *o = out + (size_t)t * H * P + (size_t)h * P;
        for (int i = 0; i < P; i++) {
            float *m = M + (size_t)i * N;
            const float xdt = x[i] * dts;
            int j = 0;
            float y = 0.0f;
#ifdef RFC_AVX2
            const __m256 vda = _mm256_set1_ps(dA), vx = _mm256_set1_ps(xdt);
            __m256 acc = _mm256_setzero_ps();
            for (; j + 8 <= N; j += 8) {
                const __m256 mj = _mm256_fmadd_ps(_mm256_loadu_ps(m + j), vda, _mm256_mul_ps(_mm256_loadu_ps(B + j), vx));
                _mm256_storeu_ps(m + j, mj);
                acc = _mm256_fmadd_ps(mj, _mm256_loadu_ps(C + j), acc);
            }
            y = rfc_hsum_ps(acc);
#endif
            for (; j < N; j++) {
                const float mj = m[j] * dA + B[j] * xdt;
                m[j] = mj;
                y += mj * C[j];
            }
            o[i] = y + d * x[i];
        }
    }
}

/* the team's share of one ssm_scan op: items (sequence, head) from a counter */
static void rfc_ssm_scan_team(const float *xbc, const float *dt, float *out, const int32_t *positions,
                              const int32_t *seq_start, int S_seqs, int H, int P, int G, int N, const float *a,
                              const float *d, const float *dt_bias, float *const *states, int *counter) {
    const int items = S_seqs * H;
    const size_t W = (size_t)H * P + (size_t)2 * G * N;
    for (int it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); it < items; it = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)) {
        const int s = it / H, h = it % H;
        const int lo = seq_start[s], n = seq_start[s + 1] - lo;
        float *own;
        float *M = rfc_item_state(states[s], (size_t)P * N, h, positions[lo] == 0, &own);
        if (!M) continue;
        rfc_ssm_scan_head(xbc + (size_t)lo * W, dt + (size_t)lo * H, out + (size_t)lo * H * P, n, H, P, G, N, h, a[h], d[h],
                          dt_bias[h], M);
        free(own);
    }
}

/* The op on its own (tests/kernels/test_cpu_ssm_scan.py, the kernel kit): `states[s]` is
 * sequence s's state tensor (NULL: none), as the step program passes them. */
RFC_OP_EXPORT void rfc_ssm_scan(const float *xbc, const float *dt, float *out, const int32_t *positions, const int32_t *seq_start,
                             int S, int H, int P, int G, int N, const float *a, const float *d, const float *dt_bias,
                             float *const *states) {
    int counter = 0;
    rfc_ssm_scan_team(xbc, dt, out, positions, seq_start, S, H, P, G, N, a, d, dt_bias, states, &counter);
}

#endif
