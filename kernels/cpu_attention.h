/* cpu-avx512: scores, softmax and the weighted values 16 lanes wide. Every lane computes what
 * the 8-wide path's lane does, in the same order (scores: lanes are cache positions, each summed
 * over head_dim as two even/odd chains; values: lanes are head_dim outputs, summed over
 * positions in order; the exp sum keeps the 8-wide path's 8 partial sums), so both targets
 * give the same bits, whatever the batch. */
#if defined(RFC_AVX2) && defined(__AVX512F__) && RFC_ATT_CHUNK % 16 == 0
#define RFC_ATT_ZMM 1
#define RFC_ATT_ROWS (RFC_ATT_CHUNK == 16 ? 12 : RFC_ATT_CHUNK == 32 ? 6 : 3) /* scores' accumulators: 24 of 32 registers */
#else
#define RFC_ATT_ROWS 1
#endif

/* One layer's K and V caches as the step sees them. A block of bs slots keeps each piece of
 * RFC_KV_PIECE values (the head_dim, or what every layer's head_dim is a multiple of) of its
 * slots together: piece c of slot o at c * bs + o, in units of the piece's bytes. A kv head's
 * values over a block's positions are then one run of memory (bs x 128 bytes for an F16
 * head_dim of 64) rather than a third of every row: a decode step's attention read the rows'
 * strided thirds at ~6 GB/s a core, the runs at ~10 (a C model of the SmolLM2 cache, 650
 * positions, one thread). */
typedef struct {
    uint8_t *k, *v;
    int kt, vt;             /* RFC_KV_* */
    size_t k_row, v_row;    /* bytes per slot */
    size_t k_piece, v_piece; /* bytes of one piece of a slot */
    int bs;                 /* slots per block */
    int k_rot, v_rot;       /* Hadamard rotation sizes of quantized rows (0: none; rfc_kv_rotations) */
} rfc_kv;

/* bytes of n cached values of a type (n a multiple of 32 when quantized) */
static inline size_t rfc_kv_bytes(int type, size_t n) {
    return type == RFC_KV_Q8_0 ? n / 32 * 34 : type == RFC_KV_Q4_0 ? n / 32 * 18 : n * 2;
}

/* llama.cpp rotates quantized K and V rows by a Hadamard matrix first (artifacts/kv_cache_type.py
 * KvCacheTypes.rotations): K (and Q with it) in the largest power of two >= 64 dividing head_dim,
 * V in 64s; none unless head_dim is a multiple of 64 */
static inline void rfc_kv_rotations(int kt, int vt, int *k_rot, int *v_rot) {
    int k = 0;
    if (RFC_HEAD_DIM % 64 == 0)
        for (k = 64; RFC_HEAD_DIM % (2 * k) == 0; k *= 2) {}
    *k_rot = kt != RFC_KV_F16 ? k : 0;
    *v_rot = vt != RFC_KV_F16 && k ? 64 : 0;
}

/* x[0:n] rotated in blocks of `size` (a power of two, <= head_dim) by the orthonormal Sylvester
 * Hadamard matrix: a fast Walsh-Hadamard transform in double, then 1/sqrt(size), rounded to
 * float once, as runtime/model/kv_quant.py rotate does its float64 product (so that both
 * quantize the same floats; float sums here would flip a rounding now and then) */
static void rfc_rotate(float *x, int n, int size) {
    const double norm = 1.0 / sqrt((double)size);
    double y[RFC_HEAD_DIM];
    for (int b = 0; b < n; b += size) {
        for (int j = 0; j < size; j++) y[j] = x[b + j];
        for (int len = 1; len < size; len *= 2)
            for (int i = 0; i < size; i += 2 * len)
                for (int j = i; j < i + len; j++) {
                    const double u = y[j], w = y[j + len];
                    y[j] = u + w;
                    y[j + len] = u - w;
                }
        for (int j = 0; j < size; j++) x[b + j] = (float)(y[j] * norm);
    }
}

static inline rfc_kv rfc_kv_layer(void *k_cache, void *v_cache, int kt, int vt, int64_t kv_slots, int block_size, int layer) {
    rfc_kv c;
    rfc_kv_rotations(kt, vt, &c.k_rot, &c.v_rot);
    c.kt = kt;
    c.vt = vt;
    c.k_row = rfc_kv_bytes(kt, RFC_KV_WIDTH);
    c.v_row = rfc_kv_bytes(vt, RFC_KV_WIDTH);
    c.k_piece = rfc_kv_bytes(kt, RFC_KV_PIECE);
    c.v_piece = rfc_kv_bytes(vt, RFC_KV_PIECE);
    c.bs = block_size;
    c.k = (uint8_t *)k_cache + (size_t)layer * (size_t)kv_slots * c.k_row;
    c.v = (uint8_t *)v_cache + (size_t)layer * (size_t)kv_slots * c.v_row;
    return c;
}

/* where piece `piece` of row o of block `block` starts in a layer's cache of `row` bytes per slot */
static inline uint8_t *rfc_kv_at_block(uint8_t *cache, size_t row, size_t piece_bytes, int bs, size_t block, int o, int piece) {
    return cache + block * (size_t)bs * row + ((size_t)piece * (size_t)bs + (size_t)o) * piece_bytes;
}

/* the same for slot `slot` (block slot / bs, row slot % bs) */
static inline uint8_t *rfc_kv_at(uint8_t *cache, size_t row, size_t piece_bytes, int bs, size_t slot, int piece) {
    return rfc_kv_at_block(cache, row, piece_bytes, bs, slot / (size_t)bs, (int)(slot % (size_t)bs), piece);
}

static inline void rfc_f16_to_f32_row(const uint16_t *src, float *dst, int n) {
#ifdef RFC_AVX2
    int i = 0;
#ifdef RFC_ATT_ZMM
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#endif
    for (; i < n; i += 8) _mm256_storeu_ps(dst + i, rfc_load8_f16(src + i));
#else
    for (int i = 0; i < n; i++) dst[i] = rfc_fp16_to_fp32(src[i]);
#endif
}

static inline void rfc_f32_to_f16_row(const float *src, uint16_t *dst, int n) {
#ifdef RFC_AVX2
    for (int i = 0; i < n; i += 8) rfc_store8_f16(dst + i, _mm256_loadu_ps(src + i));
#else
    for (int i = 0; i < n; i++) dst[i] = rfc_fp32_to_fp16(src[i]);
#endif
}

static inline float rfc_kv_scale(const uint8_t *block) {
    uint16_t h;
    memcpy(&h, block, 2);
    return rfc_fp16_to_fp32(h);
}

/* Quantizing a row. No fma may fuse x * id with the + 8.5 (numpy rounds the product first). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
static void rfc_quantize_q8_0_row(const float *x, uint8_t *y, int n) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int b = 0; b < n / 32; b++, x += 32, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t h = rfc_fp32_to_fp16(d);
        memcpy(y, &h, 2);
        for (int j = 0; j < 32; j++) ((int8_t *)y)[2 + j] = (int8_t)nearbyintf(x[j] * id); /* half to even */
    }
}

static void rfc_quantize_q4_0_row(const float *x, uint8_t *y, int n) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int b = 0; b < n / 32; b++, x += 32, y += 18) {
        float amax = 0.0f, mx = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); mx = x[j]; } /* the first of equal magnitudes */
        const float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t h = rfc_fp32_to_fp16(d);
        memcpy(y, &h, 2);
        for (int j = 0; j < 16; j++) {
            const float a = x[j] * id, c = x[16 + j] * id;
            const int qa = (int)(a + 8.5f), qc = (int)(c + 8.5f);
            y[2 + j] = (uint8_t)((qa < 15 ? qa : 15) | (qc < 15 ? qc : 15) << 4);
        }
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* n values of q8_0 / q4_0 blocks to floats: d * q, one product each (as kv_quant.py) */
static inline void rfc_q8_0_to_f32(const uint8_t *src, float *dst, int n) {
    for (int b = 0; b < n / 32; b++, src += 34, dst += 32) {
        const float d = rfc_kv_scale(src);
        const int8_t *q = (const int8_t *)(src + 2);
#ifdef RFC_AVX2
        const __m256 dv = _mm256_set1_ps(d);
        for (int k = 0; k < 4; k++)
            _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * k))))));
#else
        for (int j = 0; j < 32; j++) dst[j] = d * (float)q[j];
#endif
    }
}

static inline void rfc_q4_0_to_f32(const uint8_t *src, float *dst, int n) {
    for (int b = 0; b < n / 32; b++, src += 18, dst += 32) {
        const float d = rfc_kv_scale(src);
        const uint8_t *q = src + 2;
#ifdef RFC_AVX2
        const __m256 dv = _mm256_set1_ps(d);
        const __m128i raw = _mm_loadu_si128((const __m128i *)q), m = _mm_set1_epi8(15), e = _mm_set1_epi8(8);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, m), e), hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m), e);
        _mm256_storeu_ps(dst, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
        _mm256_storeu_ps(dst + 8, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
        _mm256_storeu_ps(dst + 16, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
        _mm256_storeu_ps(dst + 24, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
#else
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((int)(q[j] & 15) - 8);
            dst[16 + j] = d * (float)((int)(q[j] >> 4) - 8);
        }
#endif
    }
}

/* the first n <= RFC_KV_WIDTH values of slot `slot` (a whole number of pieces): a layer narrower
 * than the widest (Gemma 4) leaves the rest unused; a quantized cache is whole rows (one
 * geometry: KvCacheTypes.check). Rotated as a row, then stored piece by piece. */
static inline void rfc_kv_store_row(const float *src, uint8_t *cache, size_t row, size_t piece_bytes, int bs, int32_t slot,
        int type, int rot, int n) {
    float rotated[RFC_KV_WIDTH];
    const float *x = src;
    if (rot) {
        memcpy(rotated, src, (size_t)n * sizeof(float));
        rfc_rotate(rotated, n, rot);
        x = rotated;
    }
    for (int c = 0; c < n / RFC_KV_PIECE; c++) {
        uint8_t *dst = rfc_kv_at(cache, row, piece_bytes, bs, (size_t)slot, c);
        const float *xc = x + (size_t)c * RFC_KV_PIECE;
        if (type == RFC_KV_Q8_0)
            rfc_quantize_q8_0_row(xc, dst, RFC_KV_PIECE);
        else if (type == RFC_KV_Q4_0)
            rfc_quantize_q4_0_row(xc, dst, RFC_KV_PIECE);
        else
            rfc_f32_to_f16_row(xc, (uint16_t *)dst, RFC_KV_PIECE);
    }
}

/* x[0:n] = exp(x[0:n] - m); returns their sum (8 partial sums, each in order of i, then their
 * horizontal sum and the scalar tail: the same on both AVX targets) */
static inline float rfc_exp_shift(float *x, int n, float m) {
    float s = 0.0f;
    int i = 0;
#ifdef RFC_AVX2
    __m256 sv = _mm256_setzero_ps();
    const __m256 mv = _mm256_set1_ps(m);
#ifdef RFC_ATT_ZMM
    const __m512 mw = _mm512_set1_ps(m);
    for (; i + 16 <= n; i += 16) {
        const __m512 e = rfc_exp_ps16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mw));
        _mm512_storeu_ps(x + i, e);
        sv = _mm256_add_ps(sv, _mm512_castps512_ps256(e));
        sv = _mm256_add_ps(sv, _mm512_extractf32x8_ps(e, 1));
    }
#endif
    for (; i + 8 <= n; i += 8) {
        const __m256 e = rfc_exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(x + i, e);
        sv = _mm256_add_ps(sv, e);
    }
    s = rfc_hsum_ps(sv);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - m);
        s += x[i];
    }
    return s;
}

/* Token i's keys: positions lo..hi of its sequence. pos[i] is the last one it may see (its own
 * position; an encoder's: its sequence's last in the step); `lows` (NULL: pos) the positions a
 * window is measured from. A window keeps the keys less than `window` positions before that (and,
 * where `lows` is given, the encoder's symmetric window, as many after it). */
static inline int rfc_att_hi(const int32_t *pos, const int32_t *lows, int i, int window) {
    return lows && window > 0 && lows[i] + window - 1 < pos[i] ? lows[i] + window - 1 : pos[i];
}
static inline int rfc_att_lo(const int32_t *pos, const int32_t *lows, int i, int window) {
    const int lo = window > 0 ? (lows ? lows[i] : pos[i]) - window + 1 : 0;
    return lo > 0 ? lo : 0;
}

/* the largest of m and x[0:n] (exact in any order; a NaN score is passed over, as m stays) */
static inline float rfc_max_span(const float *x, int n, float m) {
    int i = 0;
#ifdef RFC_ATT_ZMM
    __m512 mv = _mm512_set1_ps(m);
    for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(_mm512_loadu_ps(x + i), mv);
    if (i < n) mv = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), (__mmask16)((1u << (n - i)) - 1), x + i), mv);
    return _mm512_reduce_max_ps(mv);
#elif defined(RFC_AVX2)
    __m256 mv = _mm256_set1_ps(m);
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + i), mv);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    m = _mm_cvtss_f32(h);
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* a token's k and v rows of n values each (its layer's kv heads x head_dim) */
static inline void rfc_kv_write_token(const float *k, const float *v, rfc_kv c, int32_t slot, int n) {
    rfc_kv_store_row(k, c.k, c.k_row, c.k_piece, c.bs, slot, c.kt, c.k_rot, n);
    rfc_kv_store_row(v, c.v, c.v_row, c.v_piece, c.bs, slot, c.vt, c.v_rot, n);
}

/* the per-op export (kernel tests): F16 caches of one layer, blocks of block_size slots */
RFC_OP_EXPORT void rfc_kv_write(const float *k, const float *v, uint16_t *k_cache, uint16_t *v_cache,
        const int32_t *slots, int T, int block_size) {
    const rfc_kv c = rfc_kv_layer(k_cache, v_cache, RFC_KV_F16, RFC_KV_F16, 0, block_size, 0);
#pragma omp parallel for schedule(static) if (T >= 64)
    for (int t = 0; t < T; t++)
        rfc_kv_write_token(k + (size_t)t * RFC_KV_WIDTH, v + (size_t)t * RFC_KV_WIDTH, c, slots[t], RFC_KV_WIDTH);
}
