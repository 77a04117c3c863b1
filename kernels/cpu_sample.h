/* Host sampling over one row of logits, for the cpu targets: top_k, min_p, top_p, the
 * temperature draw and logprobs of rfc.runtime.sampling.sampler, at a cost of a few passes over the row.
 *
 * rfc.runtime.sampling.sampling_kernels calls the two exported functions (rfc_sample_row,
 * rfc_sample_logprobs) through ctypes; the numpy sampler (rfc.runtime.sampling.sampler) is what a
 * bundle without a cpu target samples with, and tests/kernels/test_cpu_sample.py checks both
 * against float64 math. A 128k-token row in numpy costs 0.3 ms per exp and ~0.15 ms per
 * boolean selection, and top_p needs a cut through the middle of the distribution (6-12 ms
 * measured; the budget is 0.5 ms); here an exp pass is ~0.07 ms, and what is sorted is a
 * sample of 1,024 values and lists of at most 2,048 (radix sorts).
 *
 * Conventions, shared with the numpy sampler:
 * - weights are exp(x - peak) (temperature 1) for top_p and, with top_p, min_p; min_p alone
 *   compares logits (x - peak >= log(min_p)); the draw weighs exp((x - peak) / T)
 *   (llama.cpp's order: top_k -> top_p -> min_p -> temperature -> dist);
 * - a "head" is a prefix of the candidates sorted by value, descending, ties by lowest index;
 * - sums of weights are double (a top_p cut deep in a flat tail needs better than float32),
 *   taken as float lanes over blocks of RFC_SAMPLE_BLOCK values and added as doubles.
 *
 * Requires cpu_simd.h (rfc_exp_ps) and RFC_EXPORT.
 */
#ifndef RFC_CPU_SAMPLE_H
#define RFC_CPU_SAMPLE_H

#define RFC_SAMPLE_BLOCK 1024 /* float lanes sum this many weights before a double add */
#define RFC_SAMPLE_SORT_MAX 2048 /* a list this short is sorted outright */
#define RFC_SAMPLE_GUESS 1024 /* strided sample that guesses where a cut lies */

#define RFC_SAMPLE_BAD_LOGITS (-1) /* a NaN, or no finite largest logit */
#define RFC_SAMPLE_NO_MEMORY (-2)

/* The end of the block of RFC_SAMPLE_BLOCK values starting at b, in a row of n. */
static inline int64_t rfc_block_end(int64_t b, int64_t n) { return n - b < RFC_SAMPLE_BLOCK ? n : b + RFC_SAMPLE_BLOCK; }

/* The end of the whole 8-lane steps from `start` to `end` (a bound gcc can see through:
 * `i + 8 <= n` made it warn of undefined behaviour in the scalar tail after inlining). */
static inline int64_t rfc_vec_end(int64_t start, int64_t end) { return end - (end - start) % 8; }

typedef struct {
    uint32_t key; /* descending value order as ascending unsigned order */
    int32_t pos;
} rfc_kp;

/* Unsigned keys that sort like the floats, descending (NaN never reaches here; -0 is +0, as
 * the comparisons that keep a head see them). */
static inline uint32_t rfc_desc_key(float f) {
    uint32_t b;
    f = f == 0.0f ? 0.0f : f;
    memcpy(&b, &f, 4);
    const uint32_t asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ~asc;
}

static inline float rfc_key_value(uint32_t key) {
    const uint32_t asc = ~key;
    const uint32_t b = (asc & 0x80000000u) ? (asc & 0x7fffffffu) : ~asc;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* Stable LSD radix sort of a[0..n) by key (tmp: n more): descending values, and ties keep
 * their order, which is position order for every list here. */
static void rfc_sort_kp(rfc_kp *a, rfc_kp *tmp, int64_t n) {
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; i++) count[((a[i].key >> shift) & 255) + 1]++;
        if (count[((a[0].key >> shift) & 255) + 1] == n) continue; /* one bucket: order unchanged */
        for (int b = 0; b < 256; b++) count[b + 1] += count[b];
        for (int64_t i = 0; i < n; i++) tmp[count[(a[i].key >> shift) & 255]++] = a[i];
        memcpy(a, tmp, (size_t)n * sizeof(rfc_kp));
    }
}

/* The largest of x[0..n); *nan is set when any value is a NaN (max_ps drops NaNs). */
static float rfc_sample_max(const float *x, int64_t n, int *nan) {
    int64_t i = 0;
    float m = -INFINITY;
    int bad = 0;
#ifdef RFC_AVX2
    __m256 mv = _mm256_set1_ps(-INFINITY), un = _mm256_setzero_ps();
    for (const int64_t ve = rfc_vec_end(i, n); i < ve; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        mv = _mm256_max_ps(mv, v);
        un = _mm256_or_ps(un, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    for (int j = 0; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    bad = _mm256_movemask_ps(un) != 0;
#endif
    for (; i < n; i++) {
        if (x[i] != x[i]) bad = 1;
        m = x[i] > m ? x[i] : m;
    }
    *nan = bad;
    return m;
}

/* w[i] = exp((v[i] - peak) * scale) for i < m; returns their sum. */
static double rfc_exp_row(const float *v, int64_t m, float peak, float scale, float *w) {
    double total = 0.0;
    for (int64_t b = 0; b < m; b += RFC_SAMPLE_BLOCK) {
        const int64_t e = rfc_block_end(b, m);
        int64_t i = b;
        float s = 0.0f;
#ifdef RFC_AVX2
        const __m256 p = _mm256_set1_ps(peak), sc = _mm256_set1_ps(scale);
        __m256 acc = _mm256_setzero_ps();
        for (const int64_t ve = rfc_vec_end(i, e); i < ve; i += 8) {
            const __m256 y = rfc_exp_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + i), p), sc));
            _mm256_storeu_ps(w + i, y);
            acc = _mm256_add_ps(acc, y);
        }
        s = rfc_hsum_ps(acc);
#endif
        for (; i < e; i++) {
            w[i] = expf((v[i] - peak) * scale);
            s += w[i];
        }
        total += (double)s;
    }
    return total;
}

/* The sum of w[0..m) over the values >= floor. */
static double rfc_sum_at_least(const float *w, int64_t m, float floor_w) {
    double total = 0.0;
    for (int64_t b = 0; b < m; b += RFC_SAMPLE_BLOCK) {
        const int64_t e = rfc_block_end(b, m);
        int64_t i = b;
        float s = 0.0f;
#ifdef RFC_AVX2
        const __m256 f = _mm256_set1_ps(floor_w);
        __m256 acc = _mm256_setzero_ps();
        for (const int64_t ve = rfc_vec_end(i, e); i < ve; i += 8) {
            const __m256 x = _mm256_loadu_ps(w + i);
            acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_cmp_ps(x, f, _CMP_GE_OQ), x));
        }
        s = rfc_hsum_ps(acc);
#endif
        for (; i < e; i++) s += w[i] >= floor_w ? w[i] : 0.0f;
        total += (double)s;
    }
    return total;
}

#ifdef RFC_AVX2
/* For each 8-bit mask, the lanes whose bit is set, in order, 4 bits each from the lowest:
 * the permutation that packs the kept lanes of a vector to its front. */
static const uint32_t rfc_pack_lanes[256] = {
    0x00000000u, 0x00000000u, 0x00000001u, 0x00000010u, 0x00000002u, 0x00000020u, 0x00000021u, 0x00000210u,
    0x00000003u, 0x00000030u, 0x00000031u, 0x00000310u, 0x00000032u, 0x00000320u, 0x00000321u, 0x00003210u,
    0x00000004u, 0x00000040u, 0x00000041u, 0x00000410u, 0x00000042u, 0x00000420u, 0x00000421u, 0x00004210u,
    0x00000043u, 0x00000430u, 0x00000431u, 0x00004310u, 0x00000432u, 0x00004320u, 0x00004321u, 0x00043210u,
    0x00000005u, 0x00000050u, 0x00000051u, 0x00000510u, 0x00000052u, 0x00000520u, 0x00000521u, 0x00005210u,
    0x00000053u, 0x00000530u, 0x00000531u, 0x00005310u, 0x00000532u, 0x00005320u, 0x00005321u, 0x00053210u,
    0x00000054u, 0x00000540u, 0x00000541u, 0x00005410u, 0x00000542u, 0x00005420u, 0x00005421u, 0x00054210u,
    0x00000543u, 0x00005430u, 0x00005431u, 0x00054310u, 0x00005432u, 0x00054320u, 0x00054321u, 0x00543210u,
    0x00000006u, 0x00000060u, 0x00000061u, 0x00000610u, 0x00000062u, 0x00000620u, 0x00000621u, 0x00006210u,
    0x00000063u, 0x00000630u, 0x00000631u, 0x00006310u, 0x00000632u, 0x00006320u, 0x00006321u, 0x00063210u,
    0x00000064u, 0x00000640u, 0x00000641u, 0x00006410u, 0x00000642u, 0x00006420u, 0x00006421u, 0x00064210u,
    0x00000643u, 0x00006430u, 0x00006431u, 0x00064310u, 0x00006432u, 0x00064320u, 0x00064321u, 0x00643210u,
    0x00000065u, 0x00000650u, 0x00000651u, 0x00006510u, 0x00000652u, 0x00006520u, 0x00006521u, 0x00065210u,
    0x00000653u, 0x00006530u, 0x00006531u, 0x00065310u, 0x00006532u, 0x00065320u, 0x00065321u, 0x00653210u,
    0x00000654u, 0x00006540u, 0x00006541u, 0x00065410u, 0x00006542u, 0x00065420u, 0x00065421u, 0x00654210u,
    0x00006543u, 0x00065430u, 0x00065431u, 0x00654310u, 0x00065432u, 0x00654320u, 0x00654321u, 0x06543210u,
    0x00000007u, 0x00000070u, 0x00000071u, 0x00000710u, 0x00000072u, 0x00000720u, 0x00000721u, 0x00007210u,
    0x00000073u, 0x00000730u, 0x00000731u, 0x00007310u, 0x00000732u, 0x00007320u, 0x00007321u, 0x00073210u,
    0x00000074u, 0x00000740u, 0x00000741u, 0x00007410u, 0x00000742u, 0x00007420u, 0x00007421u, 0x00074210u,
    0x00000743u, 0x00007430u, 0x00007431u, 0x00074310u, 0x00007432u, 0x00074320u, 0x00074321u, 0x00743210u,
    0x00000075u, 0x00000750u, 0x00000751u, 0x00007510u, 0x00000752u, 0x00007520u, 0x00007521u, 0x00075210u,
    0x00000753u, 0x00007530u, 0x00007531u, 0x00075310u, 0x00007532u, 0x00075320u, 0x00075321u, 0x00753210u,
    0x00000754u, 0x00007540u, 0x00007541u, 0x00075410u, 0x00007542u, 0x00075420u, 0x00075421u, 0x00754210u,
    0x00007543u, 0x00075430u, 0x00075431u, 0x00754310u, 0x00075432u, 0x00754320u, 0x00754321u, 0x07543210u,
    0x00000076u, 0x00000760u, 0x00000761u, 0x00007610u, 0x00000762u, 0x00007620u, 0x00007621u, 0x00076210u,
    0x00000763u, 0x00007630u, 0x00007631u, 0x00076310u, 0x00007632u, 0x00076320u, 0x00076321u, 0x00763210u,
    0x00000764u, 0x00007640u, 0x00007641u, 0x00076410u, 0x00007642u, 0x00076420u, 0x00076421u, 0x00764210u,
    0x00007643u, 0x00076430u, 0x00076431u, 0x00764310u, 0x00076432u, 0x00764320u, 0x00764321u, 0x07643210u,
    0x00000765u, 0x00007650u, 0x00007651u, 0x00076510u, 0x00007652u, 0x00076520u, 0x00076521u, 0x00765210u,
    0x00007653u, 0x00076530u, 0x00076531u, 0x00765310u, 0x00076532u, 0x00765320u, 0x00765321u, 0x07653210u,
    0x00007654u, 0x00076540u, 0x00076541u, 0x00765410u, 0x00076542u, 0x00765420u, 0x00765421u, 0x07654210u,
    0x00076543u, 0x00765430u, 0x00765431u, 0x07654310u, 0x00765432u, 0x07654320u, 0x07654321u, 0x76543210u,
};

static inline __m256i rfc_pack_perm(int mask) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)rfc_pack_lanes[mask]), shifts), _mm256_set1_epi32(7));
}
#endif

/* Which elements a pass keeps, by value: > a, >= a, < a, or in [a, b). */
enum { RFC_KEEP_GT, RFC_KEEP_GE, RFC_KEEP_LT, RFC_KEEP_IN };

static inline int rfc_keeps(int how, float x, float a, float b) {
    return how == RFC_KEEP_GT ? x > a : how == RFC_KEEP_GE ? x >= a : how == RFC_KEEP_LT ? x < a : (x >= a && x < b);
}

/* Keeps, in order, the elements of v[0..m) that `how` selects: their values to out_v (when
 * not NULL), companions to out_c (when c), positions to out_p (ids[i], or i when ids is
 * NULL). Any output may be its own input (next <= i). Returns how many were kept. Blocks of
 * 8 are packed with a permutation (a lane-by-lane copy mispredicted most of its branches over
 * a flat row: 40% of a top_p draw); the outputs take up to 8 junk values past the kept ones,
 * all below m. */
static int64_t rfc_keep(int how, float a, float b, const float *v, const float *c, const int32_t *ids, int64_t m,
                        float *out_v, float *out_c, int32_t *out_p) {
    int64_t next = 0, i = 0;
#ifdef RFC_AVX2
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (const int64_t ve = rfc_vec_end(i, m); i < ve; i += 8) {
        const __m256 x = _mm256_loadu_ps(v + i);
        __m256 k;
        if (how == RFC_KEEP_GT) k = _mm256_cmp_ps(x, va, _CMP_GT_OQ);
        else if (how == RFC_KEEP_GE) k = _mm256_cmp_ps(x, va, _CMP_GE_OQ);
        else if (how == RFC_KEEP_LT) k = _mm256_cmp_ps(x, va, _CMP_LT_OQ);
        else k = _mm256_and_ps(_mm256_cmp_ps(x, va, _CMP_GE_OQ), _mm256_cmp_ps(x, vb, _CMP_LT_OQ));
        const int mask = _mm256_movemask_ps(k);
        if (mask == 0) continue;
        /* every load before the stores: an output may overlap this block of its input */
        __m256i p = ids ? _mm256_loadu_si256((const __m256i *)(ids + i)) : _mm256_add_epi32(_mm256_set1_epi32((int32_t)i), iota);
        __m256 xv = x, cv = c ? _mm256_loadu_ps(c + i) : x;
        if (mask != 0xff) { /* pack the kept lanes to the front; the lanes after them are junk
                               that the next stores overwrite (they stay below i + 8 <= m) */
            const __m256i perm = rfc_pack_perm(mask);
            p = _mm256_permutevar8x32_epi32(p, perm);
            xv = _mm256_permutevar8x32_ps(xv, perm);
            cv = _mm256_permutevar8x32_ps(cv, perm);
        }
        if (out_v) _mm256_storeu_ps(out_v + next, xv);
        if (out_c) _mm256_storeu_ps(out_c + next, cv);
        _mm256_storeu_si256((__m256i *)(out_p + next), p);
        next += __builtin_popcount((unsigned)mask);
    }
#endif
    for (; i < m; i++) {
        if (!rfc_keeps(how, v[i], a, b)) continue;
        const float cj = c ? c[i] : 0.0f;
        const int32_t pj = ids ? ids[i] : (int32_t)i;
        if (out_v) out_v[next] = v[i];
        if (out_c) out_c[next] = cj;
        out_p[next++] = pj;
    }
    return next;
}

#define RFC_CUT_STEPS 5 /* thresholds per pass of a cut */

/* s[j] = the sum over v[0..len) of c(value) for values >= t[j], where c is the value itself
 * (mass) or 1 (count). */
static void rfc_step_sums(const float *v, int64_t len, const float t[RFC_CUT_STEPS], int mass, double s[RFC_CUT_STEPS]) {
    for (int j = 0; j < RFC_CUT_STEPS; j++) s[j] = 0.0;
    for (int64_t b = 0; b < len; b += RFC_SAMPLE_BLOCK) {
        const int64_t e = rfc_block_end(b, len);
        int64_t i = b;
        float f[RFC_CUT_STEPS] = {0};
#ifdef RFC_AVX2
        __m256 th[RFC_CUT_STEPS], acc[RFC_CUT_STEPS];
        for (int j = 0; j < RFC_CUT_STEPS; j++) {
            th[j] = _mm256_set1_ps(t[j]);
            acc[j] = _mm256_setzero_ps();
        }
        const __m256 one = _mm256_set1_ps(1.0f);
        for (const int64_t ve = rfc_vec_end(i, e); i < ve; i += 8) {
            const __m256 x = _mm256_loadu_ps(v + i);
            const __m256 c = mass ? x : one;
            for (int j = 0; j < RFC_CUT_STEPS; j++)
                acc[j] = _mm256_add_ps(acc[j], _mm256_and_ps(_mm256_cmp_ps(x, th[j], _CMP_GE_OQ), c));
        }
        for (int j = 0; j < RFC_CUT_STEPS; j++) f[j] = rfc_hsum_ps(acc[j]);
#endif
        for (; i < e; i++)
            for (int j = 0; j < RFC_CUT_STEPS; j++) f[j] += v[i] >= t[j] ? (mass ? v[i] : 1.0f) : 0.0f;
        for (int j = 0; j < RFC_CUT_STEPS; j++) s[j] += f[j];
    }
}

/* The cut of the smallest head of v[0..m) (descending, ties by lowest position) whose
 * contributions c(value) -- the value for mass, 1 for count -- sum to >= need: the head is
 * every value > *cut plus the first *ties positions whose value == *cut (*ties = INT64_MAX:
 * all of them; when the whole array sums to less than need, the head is all of it). `whole`
 * is the sum of all of v (mass; unused for count).
 *
 * A weighted quickselect. A sorted strided sample proposes thresholds: two around the rank
 * where the sample's scaled sum reaches need (the cut, when the sample is representative;
 * what the sample's sum lacks of the list's exact sum counts as lying above it all) and
 * three at the top 1/32, 1/8 and 1/2 of it, for when it is not: a few heavy weights the
 * sample missed (a peaked row) put the cut near the top, where these brackets are small.
 * One pass sums the contributions at or above every threshold; the search goes on between
 * the two thresholds whose sums straddle need -- always the values of one interval, so a
 * list's ties are never split from values outside it. The lists live in lv/lp (m floats and int32 of scratch,
 * values beside positions, so every pass runs over contiguous floats). Returns 0 or
 * RFC_SAMPLE_NO_MEMORY. */
static int rfc_cut(const float *v, int64_t m, double need, double whole, int mass, float *lv, int32_t *lp, float *cut,
                   int64_t *ties) {
    const float *cv = v; /* the list's values */
    const int32_t *cp = NULL; /* its positions (NULL: 0..len) */
    int64_t len = m;
    double list_sum = mass ? whole : (double)m; /* the contributions of the list, exactly */
    rfc_kp guess[2 * RFC_SAMPLE_GUESS];
    for (;;) {
        if (len == 0) { /* everything left was below need: the whole array is the head */
            *cut = -INFINITY;
            *ties = INT64_MAX;
            return 0;
        }
        if (len > RFC_SAMPLE_SORT_MAX) {
            const int S = RFC_SAMPLE_GUESS;
            const int64_t stride = len / S;
            for (int j = 0; j < S; j++) {
                guess[j].key = rfc_desc_key(cv[j * stride]);
                guess[j].pos = j;
            }
            rfc_sort_kp(guess, guess + S, S);
            const double scale = (double)len / S;
            /* What the sample's scaled sum lacks of the list's (heavy weights it missed, as
             * in a peaked row) is counted as lying above it all. */
            double est = 0.0;
            for (int j = 0; j < S; j++) est += (mass ? (double)rfc_key_value(guess[j].key) : 1.0) * scale;
            est = list_sum > est ? list_sum - est : 0.0;
            int r = S - 1;
            for (int j = 0; j < S; j++) {
                est += (mass ? (double)rfc_key_value(guess[j].key) : 1.0) * scale;
                if (est >= need) {
                    r = j;
                    break;
                }
            }
            /* three deviations of the sampled rank (binomial: a fraction r / S of the list lies
             * above the cut), plus two for the mass estimate's own error */
            const int spread = 3 * (int)sqrt((double)r * (S - r) / S + 1.0) + 2;
            int ranks[RFC_CUT_STEPS] = {r - spread, r + spread, S / 32, S / 8, S / 2};
            for (int a = 1; a < RFC_CUT_STEPS; a++) /* ascending rank: descending thresholds */
                for (int b = a; b > 0 && ranks[b] < ranks[b - 1]; b--) {
                    const int k = ranks[b];
                    ranks[b] = ranks[b - 1];
                    ranks[b - 1] = k;
                }
            float t[RFC_CUT_STEPS];
            for (int j = 0; j < RFC_CUT_STEPS; j++)
                t[j] = rfc_key_value(guess[ranks[j] < 0 ? 0 : ranks[j] > S - 1 ? S - 1 : ranks[j]].key);
            double sums[RFC_CUT_STEPS];
            rfc_step_sums(cv, len, t, mass, sums);
            int j = 0;
            while (j < RFC_CUT_STEPS && sums[j] < need) j++;
            int64_t next;
            if (j == 0) { /* at or above the highest threshold */
                list_sum = sums[0];
                next = rfc_keep(RFC_KEEP_GE, t[0], 0.0f, cv, NULL, cp, len, lv, NULL, lp);
            } else if (j == RFC_CUT_STEPS) { /* below the lowest */
                need -= sums[RFC_CUT_STEPS - 1];
                list_sum -= sums[RFC_CUT_STEPS - 1];
                next = rfc_keep(RFC_KEEP_LT, t[RFC_CUT_STEPS - 1], 0.0f, cv, NULL, cp, len, lv, NULL, lp);
            } else { /* in [t[j], t[j-1]): sums[j] > sums[j-1], so not empty */
                need -= sums[j - 1];
                list_sum = sums[j] - sums[j - 1];
                next = rfc_keep(RFC_KEEP_IN, t[j], t[j - 1], cv, NULL, cp, len, lv, NULL, lp);
            }
            if (next < len) {
                len = next;
                cv = lv;
                cp = lp;
                continue;
            }
            /* no progress: every value is at least the highest threshold, or below the lowest
             * (equal values, or the sample saw too few); sort them all */
        }
        rfc_kp *items = (rfc_kp *)malloc(2 * (size_t)len * sizeof(rfc_kp));
        if (!items) return RFC_SAMPLE_NO_MEMORY;
        for (int64_t j = 0; j < len; j++) {
            items[j].key = rfc_desc_key(cv[j]);
            items[j].pos = cp ? cp[j] : (int32_t)j;
        }
        rfc_sort_kp(items, items + len, len);
        double s = 0.0;
        int64_t j = 0;
        for (; j < len; j++) {
            s += mass ? (double)rfc_key_value(items[j].key) : 1.0;
            if (s >= need) break;
        }
        if (j == len) { /* rounding between the block sums and this walk: all of the list */
            *cut = rfc_key_value(items[len - 1].key);
            *ties = INT64_MAX;
        } else {
            int64_t t = 0;
            for (int64_t i = j; i >= 0 && items[i].key == items[j].key; i--) t++;
            *cut = rfc_key_value(items[j].key);
            *ties = t;
        }
        free(items);
        return 0;
    }
}

/* The end of the tied part of a head: before it, every value == cut is in the head (the
 * first `ties` of them), from it on none is. */
static int64_t rfc_ties_end(const float *key, int64_t m, float cut, int64_t ties) {
    if (ties == INT64_MAX) return m;
    int64_t end = 0, t = 0, i = 0;
#ifdef RFC_AVX2
    const __m256 vc = _mm256_set1_ps(cut);
    for (const int64_t ve = rfc_vec_end(i, m); i < ve && t < ties; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(key + i), vc, _CMP_EQ_OQ));
        for (; mask && t < ties; mask &= mask - 1, t++) end = i + __builtin_ctz((unsigned)mask) + 1;
    }
#endif
    for (; i < m && t < ties; i++)
        if (key[i] == cut) end = i + 1, t++;
    return end;
}

/* How many of key[0..m) a head holds: >= cut before `end`, > cut from it on. */
static int64_t rfc_head_count(const float *key, int64_t m, float cut, int64_t end) {
    int64_t count = 0, i = 0;
#ifdef RFC_AVX2
    const __m256 vc = _mm256_set1_ps(cut);
    for (const int64_t ve = rfc_vec_end(i, m); i < ve; i += 8) {
        const __m256 x = _mm256_loadu_ps(key + i);
        count += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(x, vc, i + 8 <= end ? _CMP_GE_OQ : _CMP_GT_OQ)));
        if (i < end && end < i + 8) /* the block holding `end`: its lanes before end count ties too */
            for (int64_t j = i; j < end; j++) count += key[j] == cut;
    }
#endif
    for (; i < m; i++) count += key[i] > cut || (key[i] == cut && i < end);
    return count;
}

/* Keeps the head of key[0..m) that a cut and its ties' end describe (>= cut before end, >
 * cut from it on), in order, with companions c and ids as rfc_keep does. */
static int64_t rfc_keep_until(const float *key, const float *c, const int32_t *ids, int64_t m, float cut, int64_t end,
                              float *out_key, float *out_c, int32_t *out_p) {
    const int64_t next = rfc_keep(RFC_KEEP_GE, cut, cut, key, c, ids, end, out_key, out_c, out_p);
    if (end == m) return next;
    const int64_t rest = rfc_keep(RFC_KEEP_GT, cut, cut, key + end, c ? c + end : NULL, ids ? ids + end : NULL, m - end,
                                  out_key ? out_key + next : NULL, out_c ? out_c + next : NULL, out_p + next);
    if (!ids)
        for (int64_t j = next; j < next + rest; j++) out_p[j] += (int32_t)end;
    return next + rest;
}

#define RFC_TOPK_BLOCK 64 /* block of the block-maxima bound of a small top_k */
#define RFC_TOPK_SMALL 64 /* up to this k the bound comes by insertion */

/* The k largest of x[0..n) (0 < k < n, no NaN; ties by lowest id) in id order: ids to ids,
 * values to vals. lv, lp: n float and int32 of scratch. Returns k or RFC_SAMPLE_NO_MEMORY.
 *
 * A small k (the common top_k = 40, top logprobs <= 20) first bounds the k-th largest from
 * below by the k-th largest block maximum (k blocks reach it, so k values do) and looks only
 * inside the blocks whose maximum reaches the bound: one pass over the row, then a few
 * blocks. */
static int64_t rfc_top_k(const float *x, int64_t n, int64_t k, int32_t *ids, float *vals, float *lv, int32_t *lp) {
    const int64_t nb = n / RFC_TOPK_BLOCK;
    const float *cand = x;
    int64_t c = n;
    int32_t *cids = NULL;
    if (nb >= 4 * k && nb > RFC_SAMPLE_SORT_MAX / 4) {
        float *bm = lv;
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + b * RFC_TOPK_BLOCK;
            float mx = -INFINITY;
            int64_t j = 0;
#ifdef RFC_AVX2
            __m256 mv = _mm256_loadu_ps(xb);
            for (j = 8; j < RFC_TOPK_BLOCK; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(xb + j));
            float lanes[8];
            _mm256_storeu_ps(lanes, mv);
            for (int l = 0; l < 8; l++) mx = lanes[l] > mx ? lanes[l] : mx;
#endif
            for (; j < RFC_TOPK_BLOCK; j++) mx = xb[j] > mx ? xb[j] : mx;
            bm[b] = mx;
        }
        float bound;
        if (k <= RFC_TOPK_SMALL) { /* the k-th largest maximum by insertion: most never enter */
            float best[RFC_TOPK_SMALL];
            int64_t have = 0;
            for (int64_t b = 0; b < nb; b++) {
                const float v = bm[b];
                if (have == k && v <= best[k - 1]) continue;
                int64_t j = have < k ? have++ : k - 1;
                for (; j > 0 && best[j - 1] < v; j--) best[j] = best[j - 1];
                best[j] = v;
            }
            bound = best[k - 1];
        } else {
            int64_t bties;
            if (rfc_cut(bm, nb, (double)k, 0.0, 0, vals, lp, &bound, &bties)) return RFC_SAMPLE_NO_MEMORY;
        }
        c = 0; /* candidates in id order; the junk rfc_keep leaves past them stays below n */
        for (int64_t b = 0; b < nb; b++) {
            if (bm[b] < bound) continue;
            const int64_t got = rfc_keep(RFC_KEEP_GE, bound, 0.0f, x + b * RFC_TOPK_BLOCK, NULL, NULL, RFC_TOPK_BLOCK,
                                         vals + c, NULL, ids + c);
            for (int64_t j = c; j < c + got; j++) ids[j] += (int32_t)(b * RFC_TOPK_BLOCK);
            c += got;
        }
        const int64_t tail = nb * RFC_TOPK_BLOCK;
        const int64_t got = rfc_keep(RFC_KEEP_GE, bound, 0.0f, x + tail, NULL, NULL, n - tail, vals + c, NULL, ids + c);
        for (int64_t j = c; j < c + got; j++) ids[j] += (int32_t)tail;
        c += got;
        if (c == k) return k;
        cand = vals;
        cids = ids;
    }
    float cut;
    int64_t ties;
    if (rfc_cut(cand, c, (double)k, 0.0, 0, lv, lp, &cut, &ties)) return RFC_SAMPLE_NO_MEMORY;
    return rfc_keep_until(cand, NULL, cids, c, cut, rfc_ties_end(cand, c, cut, ties), vals, NULL, ids);
}

/* log(sum(exp(x))) over x[0..n), and with 0 < k < n the ids of the k largest (ties by lowest
 * id) into ids, in id order; vals, lv (float) and lp (int32) are n each of scratch. NaN for
 * a NaN anywhere (ids untouched), the largest value when that is not finite. */
RFC_EXPORT double rfc_sample_logprobs(const float *x, int64_t n, int64_t k, int32_t *ids, float *vals, float *lv,
                                      int32_t *lp) {
    int nan;
    const float peak = rfc_sample_max(x, n, &nan);
    if (nan) return NAN;
    if (k > 0 && k < n && rfc_top_k(x, n, k, ids, vals, lv, lp) != k) return NAN;
    if (!isfinite(peak)) return peak;
    return (double)peak + log(rfc_exp_row(x, n, peak, 1.0f, lv));
}

/* The draw's weights in place: w[i] = exp((v[i] - peak) * scale) (recompute) or w[i] as it
 * is, for the kept i -- key[i] >= cut before `end`, > cut from it on: a top_p head of the
 * weights, or min_p's floor of the logits with end = m -- and 0 for the rest (`filtered` 0:
 * all kept). Returns their sum; cum[b] is the sum up to the end of block b. */
static double rfc_draw_weights(const float *v, float *w, const float *key, int64_t m, float peak, float scale,
                               int recompute, int filtered, float cut, int64_t end, double *cum) {
    double total = 0.0;
    for (int64_t b = 0; b < m; b += RFC_SAMPLE_BLOCK) {
        const int64_t e = rfc_block_end(b, m);
        int64_t i = b;
        float s = 0.0f;
#ifdef RFC_AVX2
        const __m256 p = _mm256_set1_ps(peak), sc = _mm256_set1_ps(scale), vc = _mm256_set1_ps(cut);
        const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vend = _mm256_set1_epi32((int32_t)end);
        __m256 acc = _mm256_setzero_ps();
        for (const int64_t ve = rfc_vec_end(i, e); i < ve; i += 8) {
            __m256 keep = _mm256_setzero_ps();
            if (filtered) { /* read before w is written: key may be w */
                const __m256 k = _mm256_loadu_ps(key + i);
                const __m256i at = _mm256_add_epi32(_mm256_set1_epi32((int32_t)i), iota);
                keep = _mm256_blendv_ps(_mm256_cmp_ps(k, vc, _CMP_GT_OQ), _mm256_cmp_ps(k, vc, _CMP_GE_OQ),
                                        _mm256_castsi256_ps(_mm256_cmpgt_epi32(vend, at)));
            }
            __m256 y = recompute ? rfc_exp_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + i), p), sc))
                                 : _mm256_loadu_ps(w + i);
            if (filtered) y = _mm256_and_ps(y, keep);
            _mm256_storeu_ps(w + i, y);
            acc = _mm256_add_ps(acc, y);
        }
        s = rfc_hsum_ps(acc);
#endif
        for (; i < e; i++) {
            const int keep = !filtered || key[i] > cut || (key[i] == cut && i < end);
            w[i] = keep ? (recompute ? expf((v[i] - peak) * scale) : w[i]) : 0.0f;
            s += w[i];
        }
        total += (double)s;
        cum[b / RFC_SAMPLE_BLOCK] = total;
    }
    return total;
}

/* The inverse-CDF pick over w[0..m) with cum[] its cumulative block sums (rfc_draw_weights)
 * and u in [0, 1): the first index whose cumulative weight passes u * total, so a zero
 * weight is never picked. */
static int64_t rfc_pick(const float *w, int64_t m, const double *cum, double u) {
    const int64_t nb = (m + RFC_SAMPLE_BLOCK - 1) / RFC_SAMPLE_BLOCK;
    const double total = cum[nb - 1];
    double target = u * total;
    const double below = nextafter(total, 0.0);
    if (target > below) target = below;
    int64_t lo = 0, hi = nb - 1; /* the first block whose cumulative sum passes target */
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (cum[mid] > target) hi = mid;
        else lo = mid + 1;
    }
    const int64_t b = lo * RFC_SAMPLE_BLOCK, e = rfc_block_end(b, m);
    double c = lo ? cum[lo - 1] : 0.0;
    int64_t last = -1;
    for (int64_t i = b; i < e; i++) {
        if (w[i] > 0.0f) {
            last = i;
            c += w[i];
            if (c > target) return i;
        }
    }
    return last; /* the rounding gap between the block's float sum and this walk */
}

/* A uniform double in [0, 1) from a splitmix64 stream: the rejection draw's proposals,
 * seeded from the caller's one uniform. */
static double rfc_uniform(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

#define RFC_SAMPLE_TRIES 32 /* rejection proposals before the exact pass */

/* One token drawn from logits x[0..n) after top_k (0: off), min_p (0: off) and top_p (1:
 * off) at temperature (> 0), with u uniform in [0, 1): the inverse-CDF draw over the kept
 * tokens in id order, or a rejection draw of the same distribution (see below). ids, lp
 * (int32) and vals, w, lv (float) are n each of scratch. Returns the token id,
 * RFC_SAMPLE_BAD_LOGITS or RFC_SAMPLE_NO_MEMORY.
 *
 * With lse not NULL, also what rfc_sample_logprobs gives for the same row (*lse, and the
 * lp_k top ids into lp_ids when 0 < lp_k < n), sharing its passes: the largest logit, and
 * the temperature-1 weights when top_p computes them over the whole row. */
RFC_EXPORT int64_t rfc_sample_row(const float *x, int64_t n, double temperature, int64_t top_k, double min_p,
                                  double top_p, double u, int32_t *ids, float *vals, float *w, float *lv, int32_t *lp,
                                  int64_t lp_k, int32_t *lp_ids, double *lse) {
    int nan;
    const float peak = rfc_sample_max(x, n, &nan);
    if (nan || !isfinite(peak)) return RFC_SAMPLE_BAD_LOGITS;
    /* the normalizer comes from top_p's weights when they cover the row, else from here */
    const int lse_from_top_p = top_p < 1.0 && !(top_k > 0 && top_k < n);
    if (lse) {
        if (lp_k > 0 && lp_k < n) {
            const int64_t got = rfc_top_k(x, n, lp_k, ids, vals, lv, lp);
            if (got < 0) return got;
            memcpy(lp_ids, ids, (size_t)lp_k * sizeof(int32_t));
        }
        if (!lse_from_top_p) *lse = (double)peak + log(rfc_exp_row(x, n, peak, 1.0f, w));
    }
    /* the candidates: cv[0..m), their ids in ids (or 0..m while `listed` is 0) */
    const float *cv = x;
    int listed = 0;
    int64_t m = n;
    if (top_k > 0 && top_k < n) {
        m = rfc_top_k(x, n, top_k, ids, vals, lv, lp);
        if (m < 0) return m;
        cv = vals;
        listed = 1;
    }
    /* what min_p and top_p keep of them: key >= cut before `end`, > cut from it on */
    int filtered = 0, w_at_one = 0;
    const float *key = w;
    float cut = 0.0f;
    int64_t end = m;
    if (top_p < 1.0) {
        const double total = rfc_exp_row(cv, m, peak, 1.0f, w); /* temperature 1: the peak weighs 1 */
        w_at_one = 1;
        if (lse && lse_from_top_p) *lse = (double)peak + log(total);
        double kept = total;
        if (min_p > 0.0) { /* p >= min_p * p_max: w >= min_p */
            filtered = 1;
            cut = (float)min_p;
            kept = rfc_sum_at_least(w, m, cut);
        }
        /* top_p runs on the mass of every candidate; when min_p kept less than that, its set
         * is the shorter head and top_p changes nothing (the result of top_p -> min_p); else
         * top_p's head lies inside min_p's set, and is the kept set. */
        const double target = top_p * total;
        if (kept >= target) {
            int64_t ties;
            if (rfc_cut(w, m, target, total, 1, lv, lp, &cut, &ties)) return RFC_SAMPLE_NO_MEMORY;
            end = rfc_ties_end(w, m, cut, ties);
            filtered = 1;
        }
    } else if (min_p > 0.0) { /* alone, min_p needs no weights: x - peak >= log(min_p) */
        filtered = 1;
        key = cv;
        cut = peak + (float)log(min_p);
    }
    /* A small kept set is drawn from as a list, a large one in place, masked: compacting
     * three arrays costs more than masking (with rejection below, no second exp either). */
    if (filtered && rfc_head_count(key, m, cut, end) * 16 < m) {
        if (key == w) m = rfc_keep_until(w, cv, listed ? ids : NULL, m, cut, end, w, vals, ids);
        else m = rfc_keep_until(cv, NULL, listed ? ids : NULL, m, cut, end, vals, NULL, ids);
        cv = vals;
        listed = 1;
        filtered = 0;
    }
    /* the block sums of the draw go where the cut kept its lists (free now) */
    double *cum = (double *)(void *)lv;
    const float scale = (float)(1.0 / temperature);
    if (filtered && w_at_one && temperature < 1.0) {
        /* A large top_p head below temperature 1: rejection instead of a second exp pass.
         * Propose by the temperature-1 weights w (masked to the head) and accept with
         * w^(1/T - 1) = exp((x - peak)(1/T - 1)) <= 1: the draw follows w^(1/T), exactly.
         * After RFC_SAMPLE_TRIES refusals (a low temperature over a flat head) the exact
         * pass draws instead, so the result is exact either way. */
        rfc_draw_weights(cv, w, key, m, peak, 1.0f, 0, 1, cut, end, cum);
        uint64_t state;
        memcpy(&state, &u, sizeof state);
        const double k = 1.0 / temperature - 1.0;
        for (int t = 0; t < RFC_SAMPLE_TRIES; t++) {
            const int64_t i = rfc_pick(w, m, cum, rfc_uniform(&state));
            if (i >= 0 && rfc_uniform(&state) < exp((double)(cv[i] - peak) * k)) return listed ? ids[i] : i;
        }
        /* the head is where w > 0 now (a weight that underflowed at temperature 1 does at T too) */
        rfc_draw_weights(cv, w, w, m, peak, scale, 1, 1, 0.0f, 0, cum);
        const int64_t i = rfc_pick(w, m, cum, rfc_uniform(&state));
        return i < 0 ? RFC_SAMPLE_BAD_LOGITS : listed ? ids[i] : i;
    }
    const int recompute = !(temperature == 1.0 && w_at_one);
    rfc_draw_weights(cv, w, key, m, peak, scale, recompute, filtered, cut, end, cum);
    const int64_t i = rfc_pick(w, m, cum, u);
    return i < 0 ? RFC_SAMPLE_BAD_LOGITS : listed ? ids[i] : i; /* < 0: every weight zero, not with a finite peak */
}

#endif /* RFC_CPU_SAMPLE_H */
