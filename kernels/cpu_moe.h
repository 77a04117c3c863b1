/* rfc_act_bytes(a) + rfc_act_bytes(b) <= rfc_act_bytes(a + b) + 5 * 63: per-expert
 * activations placed at rfc_act_bytes(first row, K) + e * RFC_MOE_ACT_PAD never overlap. */
#define RFC_MOE_ACT_PAD 320

/* A step's slots (token t, choice j: slot t * n_used + j) grouped by expert. */
typedef struct {
    int32_t *start;  /* [E + 1]: expert e's grouped rows are [start[e], start[e + 1]) */
    int32_t *slot;   /* [S]: grouped row -> slot; rows from start[E] on hold slots whose id is out of range */
    int32_t *expert; /* [S]: grouped row -> expert */
    float *xg;       /* [S][K]: the gathered input rows, grouped */
    float *yg;       /* [SEGS][S][N]: the grouped outputs */
    uint8_t *act;    /* the experts' quantized activations */
    int S;
} rfc_moe;

static inline size_t rfc_moe_scratch_bytes(int T) {
    const size_t S = (size_t)T * RFC_MOE_USED;
    return rfc_align64((RFC_MOE_EXPERTS + 1) * 4) + 2 * rfc_align64(S * 4) + rfc_align64(S * RFC_MOE_MAX_K * 4) +
           rfc_align64((size_t)RFC_MOE_SEGS * S * RFC_MOE_MAX_N * 4) + rfc_act_bytes((int)S, RFC_MOE_MAX_K) +
           (size_t)(RFC_MOE_EXPERTS + 1) * RFC_MOE_ACT_PAD + 64;
}

static inline void rfc_moe_init(rfc_moe *m, void *mem, int T) {
    const size_t S = (size_t)T * RFC_MOE_USED;
    uint8_t *p = (uint8_t *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    m->start = (int32_t *)p;
    p += rfc_align64((RFC_MOE_EXPERTS + 1) * 4);
    m->slot = (int32_t *)p;
    p += rfc_align64(S * 4);
    m->expert = (int32_t *)p;
    p += rfc_align64(S * 4);
    m->xg = (float *)p;
    p += rfc_align64(S * RFC_MOE_MAX_K * 4);
    m->yg = (float *)p;
    p += rfc_align64((size_t)RFC_MOE_SEGS * S * RFC_MOE_MAX_N * 4);
    m->act = p;
    m->S = (int)S;
}

/* moe_route's `gating`, numbered as artifacts/plan.py's MOE_GATINGS lists them. */
enum { RFC_GATE_SOFTMAX = 0, RFC_GATE_SIGMOID = 1, RFC_GATE_SOFTMAX_WEIGHT = 2 };

/* The index of the largest s[e] not yet taken (equal: the lower index); taken[e] is then set. */
static inline int rfc_moe_take_best(const double *s, unsigned char *taken, int n) {
    int best = -1;
    for (int e = 0; e < n; e++)
        if (!taken[e] && (best < 0 || s[e] > s[best])) best = e; /* strict: equal keeps the lower index */
    taken[best] = 1;
    return best;
}

/* One token's router: ids and weights of its n_used experts, best first. Scores p by the
 * gating (softmax, sigmoid, or the logits themselves); chosen by p + bias (NULL: none), among
 * the experts of the groups_used groups whose two best sum highest when groups > 1; weights
 * p of the chosen (softmax_weight: a softmax over them), over max(sum, 2^-14) when norm, times
 * scale, times the chosen expert's output scale escale[e] (NULL: none; gemma4's ffn_down_exps.scale,
 * which scales the expert's output: the same product). The planner validated every argument
 * (artifacts/validate.py _moe_route). */
static void rfc_moe_route_row(const float *logits, const float *bias, const float *escale, int n_expert, int n_used,
                              int gating, int norm, double scale, int groups, int groups_used, int id_div, int32_t *ids,
                              float *w) {
    double p[RFC_MOE_EXPERTS], s[RFC_MOE_EXPERTS], wj[RFC_MOE_EXPERTS];
    unsigned char taken[RFC_MOE_EXPERTS]; /* chosen, or in a group left out */
    if (gating == RFC_GATE_SOFTMAX) {
        double mx = logits[0], sum = 0.0;
        for (int e = 1; e < n_expert; e++) mx = logits[e] > mx ? logits[e] : mx;
        for (int e = 0; e < n_expert; e++) {
            p[e] = exp((double)logits[e] - mx);
            sum += p[e];
        }
        for (int e = 0; e < n_expert; e++) p[e] /= sum;
    } else {
        for (int e = 0; e < n_expert; e++)
            p[e] = gating == RFC_GATE_SIGMOID ? 1.0 / (1.0 + exp(-(double)logits[e])) : (double)logits[e];
    }
    for (int e = 0; e < n_expert; e++) {
        s[e] = bias ? p[e] + (double)bias[e] : p[e]; /* the bias chooses, it does not weigh */
        taken[e] = 0;
    }
    if (groups > 1) {
        const int per = n_expert / groups;
        double score[RFC_MOE_EXPERTS];
        unsigned char kept[RFC_MOE_EXPERTS];
        for (int g = 0; g < groups; g++) {
            double a = -INFINITY, b = -INFINITY; /* the group's two largest */
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (s[e] > a) {
                    b = a;
                    a = s[e];
                } else if (s[e] > b) {
                    b = s[e];
                }
            }
            score[g] = a + b;
            kept[g] = 0;
        }
        for (int k = 0; k < groups_used; k++) rfc_moe_take_best(score, kept, groups);
        for (int e = 0; e < n_expert; e++) taken[e] = !kept[e / per];
    }
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j < n_used; j++) {
        ids[j] = rfc_moe_take_best(s, taken, n_expert);
        if (id_div > 1) /* grovemoe's adjugate experts: llama.cpp scales the id by 1 / d in float, then truncates */
            ids[j] = (int32_t)((float)ids[j] * (1.0f / (float)id_div));
        wj[j] = p[ids[j]];
        mx = wj[j] > mx ? wj[j] : mx;
    }
    if (gating == RFC_GATE_SOFTMAX_WEIGHT) {
        double total = 0.0;
        for (int j = 0; j < n_used; j++) total += wj[j] = exp(wj[j] - mx);
        for (int j = 0; j < n_used; j++) wj[j] /= total;
    }
    for (int j = 0; j < n_used; j++) sum += wj[j];
    const double denom = !norm ? 1.0 : sum > 0x1p-14 ? sum : 0x1p-14;
    for (int j = 0; j < n_used; j++) w[j] = (float)(wj[j] / denom * scale * (escale ? (double)escale[ids[j]] : 1.0));
}

/* Counting sort of the T * n_used slots by expert (one thread; slots keep their order). */
static void rfc_moe_group(rfc_moe *m, const int32_t *ids, int T, int n_used) {
    const int S = T * n_used;
    int32_t cursor[RFC_MOE_EXPERTS + 1];
    memset(m->start, 0, (RFC_MOE_EXPERTS + 1) * sizeof(int32_t));
    for (int s = 0; s < S; s++)
        if ((unsigned)ids[s] < RFC_MOE_EXPERTS) m->start[ids[s] + 1]++;
    for (int e = 0; e < RFC_MOE_EXPERTS; e++) m->start[e + 1] += m->start[e];
    memcpy(cursor, m->start, sizeof cursor);
    for (int s = 0; s < S; s++) {
        const int e = (unsigned)ids[s] < RFC_MOE_EXPERTS ? ids[s] : RFC_MOE_EXPERTS;
        const int i = cursor[e]++;
        m->slot[i] = s;
        m->expert[i] = e;
    }
    m->S = S;
}

/* out[0:N] = sum_j w[j] * y[j * N : (j + 1) * N] (in double, as the reference sums) */
static inline void rfc_moe_combine_row(const float *y, const float *w, int n_used, int N, float *out) {
    for (int n = 0; n < N; n++) {
        double acc = 0.0;
        for (int j = 0; j < n_used; j++) acc += (double)w[j] * (double)y[(size_t)j * N + n];
        out[n] = (float)acc;
    }
}

/* The kernel tests' entry: moe_route over T tokens, its attributes as arguments (checked). */
RFC_OP_EXPORT int rfc_moe_route(const float *logits, const float *bias, const float *escale, int T, int n_expert, int n_used,
                             int gating, int norm, double scale, int groups, int groups_used, int id_div, int32_t *ids,
                             float *w) {
    if (id_div < 1 || n_expert % id_div || (id_div > 1 && escale)) return -1;
    if (n_expert < 1 || n_expert > RFC_MOE_EXPERTS || n_used < 1 || n_used > n_expert) return -1;
    if (gating < RFC_GATE_SOFTMAX || gating > RFC_GATE_SOFTMAX_WEIGHT || !(scale > 0.0)) return -1;
    if (groups < 1 || n_expert % groups || groups_used < 1 || groups_used > groups ||
        (groups > 1 && (n_expert / groups < 2 || n_used > groups_used * (n_expert / groups))))
        return -1;
    for (int t = 0; t < T; t++)
        rfc_moe_route_row(logits + (size_t)t * n_expert, bias, escale, n_expert, n_used, gating, norm, scale, groups, groups_used,
                          id_div, ids + (size_t)t * n_used, w + (size_t)t * n_used);
    return 0;
}

RFC_OP_EXPORT void rfc_moe_combine(const float *y, const float *w, int T, int n_used, int N, float *out) {
#pragma omp parallel for schedule(static) if (T >= 16)
    for (int t = 0; t < T; t++)
        rfc_moe_combine_row(y + (size_t)t * n_used * N, w + (size_t)t * n_used, n_used, N, out + (size_t)t * N);
}

/* Scratch of rfc_moe_matmul_<fmt>: the grouping and activations, then a weight pack per thread. */
RFC_OP_EXPORT size_t rfc_moe_scratch_bytes_kernel(int T) {
#ifdef _OPENMP
    const int n = omp_get_max_threads();
#else
    const int n = 1;
#endif
    return rfc_align64(rfc_moe_scratch_bytes(T)) + (size_t)n * rfc_pack_scratch_bytes() + 64;
}
