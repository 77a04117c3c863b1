/* LFM2's gated short convolution (short_conv), as artifacts/plan.py OPS says and
 * runtime/devices/reference.py computes: per sequence and channel, u = b * x, a causal
 * depthwise conv over the last K values of u (the first K - 1 from the sequence's state),
 * times c. `state` is the sequence's StateTensor [K-1, C] in its slot, or NULL for a chunk with
 * no slot (it then starts from zeros and its end state is not kept); `fresh` (the chunk starts
 * at position 0) starts from zeros whatever the slot held. Sums in float, taps in order (as
 * ggml_ssm_conv).
 *
 * Requires cpu_simd.h, the prelude's RFC_OP_EXPORT, and RFC_MAX_CONV_KERNEL (a bound of
 * artifacts/limits.py that templates/cpu_arch_ops.c.j2 defines). */
#ifndef RFC_CPU_SHORT_CONV_H
#define RFC_CPU_SHORT_CONV_H

/* channels [c0, c1) of one chunk: bcx [n, 3C] (b, c, x), out [n, C]; w [C, K]; state [K-1, C] */
static void rfc_short_conv_chunk(const float *bcx, float *out, int n, int C, const float *RFC_RESTRICT w, int K,
                                 float *state, int fresh, int c0, int c1) {
    for (int ch = c0; ch < c1; ch++) {
        float win[RFC_MAX_CONV_KERNEL];
        for (int i = 0; i < K - 1; i++) win[i] = state && !fresh ? state[(size_t)i * C + ch] : 0.0f;
        const float *wc = w + (size_t)ch * K;
        for (int t = 0; t < n; t++) {
            const float *row = bcx + (size_t)t * 3 * C;
            const float u = row[ch] * row[2 * C + ch];
            float acc = 0.0f;
            for (int i = 0; i < K - 1; i++) acc += wc[i] * win[i];
            acc += wc[K - 1] * u;
            for (int i = 0; i + 1 < K - 1; i++) win[i] = win[i + 1];
            if (K > 1) win[K - 2] = u;
            out[(size_t)t * C + ch] = row[C + ch] * acc;
        }
        if (state)
            for (int i = 0; i < K - 1; i++) state[(size_t)i * C + ch] = win[i];
    }
}

/* The op on its own (tests/kernels/kit/cpu.py): `states[s]` is sequence s's state tensor (NULL: none). */
RFC_OP_EXPORT void rfc_short_conv(const float *bcx, float *out, const int32_t *positions, const int32_t *seq_start, int S,
                               int C, const float *w, int K, float *const *states) {
    if (K < 1 || K > RFC_MAX_CONV_KERNEL) return;
    for (int s = 0; s < S; s++) {
        const int lo = seq_start[s];
        rfc_short_conv_chunk(bcx + (size_t)lo * 3 * C, out + (size_t)lo * C, seq_start[s + 1] - lo, C, w, K, states[s],
                             positions[lo] == 0, 0, C);
    }
}

#endif
