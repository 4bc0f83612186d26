/* Weight-only quantized matmuls for decode-sized steps (local_engine/kernels.py builds and loads this).
 *
 * y[m, n] = sum_k x[m, k] * w[n, k] with x float32 and w read in its packed form, dequantized in
 * registers: a decode step reads every weight once, so its speed is the rate the weights stream
 * in, and these loops keep that rate near the memory's (torch's packed int8/int4 kernels convert
 * at a third of it on this machine). No activation is rounded: x stays float32.
 *
 * int8: w[n, k] = q[n, k] * scale[n], q int8 [N, K] row-major, scale bf16 [N].
 * int4: each row is K / 32 blocks of 20 bytes: scale (bf16), zero (bf16), then 16 bytes whose
 *       byte j holds q[j] in its low nibble and q[j + 16] in its high one (GGUF's Q4 order);
 *       w = (q - 8) * scale + zero = q * scale + (zero - 8 * scale). The scale is applied once
 *       per block to the block's dot product, the offset through the block's sum of x.
 *
 * int8 blocks: GGUF's Q8_0 as it is, w[n, k] = q[n, k] * d[n, k / 32], q int8 [N, K], d fp16 [N, K / 32].
 *
 * Needs AVX2, FMA and F16C (built with -march=native; the loader falls back to torch without them); where
 * the compiler targets AVX-512 the int8 and int4 loops run 16 lanes wide.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "qkernels needs AVX2, FMA and F16C"
#endif

#define INLINE static inline __attribute__((always_inline))
/* Weights (bytes of int8, values of int4) from which a matmul is split across OpenMP's threads:
 * built with -fopenmp, the library shares torch's OpenMP runtime (the same libgomp.so.1, loaded
 * by torch first), so torch.set_num_threads sets its threads too. */
#define PARALLEL_MIN (1L << 16)

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

INLINE __m256 load8_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

#if defined(__AVX512F__)
/* R output rows by MB activation rows, 16 lanes (32 zmm registers): the R rows' weights are converted
 * once per 16 inputs and used by all MB rows; inputs past the last 16 go 8 at a time, then one by one. */
INLINE void i8_tile(int R, int MB, long K, const float *x, long ldx, const int8_t *w,
                    const uint16_t *scale, float *y, long ldy) {
    __m512 acc[4][8];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
    long k = 0;
    const char *next = (const char *)(w + R * K);
    for (; k + 16 <= K; k += 16) {
        if ((k & 63) == 0)
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) _mm_prefetch(next + (k * R + r * 64), _MM_HINT_T0);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + r * K + k))));
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float s = _mm512_reduce_add_ps(acc[m][r]);
            for (long j = k; j < K; j++) s += x[m * ldx + j] * (float)w[r * K + j];
            y[m * ldy + r] = s * bf16(scale[r]);
        }
}
#else
/* R output rows by MB activation rows: the R rows' weights are converted once per 8 inputs and
 * used by all MB rows (R * MB accumulators, within the 16 ymm registers). */
INLINE void i8_tile(int R, int MB, long K, const float *x, long ldx, const int8_t *w,
                    const uint16_t *scale, float *y, long ldy) {
    __m256 acc[4][8];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) acc[m][r] = _mm256_setzero_ps();
    long k = 0;
    /* The next tile's R * K bytes (consecutive rows) are prefetched a line per row every 64
     * inputs: short rows in R streams keep the hardware prefetcher from running far enough ahead. */
    const char *next = (const char *)(w + R * K);
    for (; k + 8 <= K; k += 8) {
        if ((k & 63) == 0)
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) _mm_prefetch(next + (k * R + r * 64), _MM_HINT_T0);
        __m256 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = load8_i8(w + r * K + k);
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float s = hsum(acc[m][r]);
            for (long j = k; j < K; j++) s += x[m * ldx + j] * (float)w[r * K + j];
            y[m * ldy + r] = s * bf16(scale[r]);
        }
}

#endif

#define I8_TILE(R, MB)                                                                          \
    static void i8_##R##x##MB(long K, const float *x, long ldx, const int8_t *w,                \
                              const uint16_t *scale, float *y, long ldy) {                      \
        i8_tile(R, MB, K, x, ldx, w, scale, y, ldy);                                            \
    }
I8_TILE(8, 1)
I8_TILE(1, 1)
I8_TILE(4, 2)
I8_TILE(1, 2)
I8_TILE(2, 4)
I8_TILE(1, 4)

typedef void (*i8_fn)(long, const float *, long, const int8_t *, const uint16_t *, float *, long);

/* y [M, N] (row stride ldy) = x [M, K] (row stride ldx) @ (q * scale)^T. */
void qk_int8_mm(long M, long N, long K, const float *x, long ldx, const int8_t *q,
                const uint16_t *scale, float *y, long ldy) {
    /* Blocks of 8 output rows outer, chunks of activation rows inner: a block's weights (8 * K
     * bytes) stay in L1 while every chunk passes over them, so each weight comes from memory once
     * per call. A chunk of MB rows covers the block in tiles of 8 / MB rows. */
    long blocks = N / 8 + N % 8; /* 8-row blocks, then single rows */
#pragma omp parallel for schedule(static) if (N * K >= PARALLEL_MIN)
    for (long i = 0; i < blocks; i++) {
        long n = i < N / 8 ? 8 * i : N / 8 * 8 + (i - N / 8);
        int block = i < N / 8 ? 8 : 1;
        for (long m = 0; m < M;) {
            long left = M - m;
            int MB = left >= 4 ? 4 : left >= 2 ? 2 : 1;
            const float *xm = x + m * ldx;
            float *ym = y + m * ldy + n;
            if (block == 8) {
                if (MB == 1) {
                    i8_8x1(K, xm, ldx, q + n * K, scale + n, ym, ldy);
                } else if (MB == 2) {
                    for (int r = 0; r < 8; r += 4)
                        i8_4x2(K, xm, ldx, q + (n + r) * K, scale + n + r, ym + r, ldy);
                } else {
                    for (int r = 0; r < 8; r += 2)
                        i8_2x4(K, xm, ldx, q + (n + r) * K, scale + n + r, ym + r, ldy);
                }
            } else {
                i8_fn f = MB == 1 ? i8_1x1 : MB == 2 ? i8_1x2 : i8_1x4;
                f(K, xm, ldx, q + n * K, scale + n, ym, ldy);
            }
            m += MB;
        }
    }
}

#define I4_PREFETCH 1024 /* bytes ahead in the (row-contiguous) nibbles: ~3.5 rows of SmolLM2's 576 inputs */

#if defined(__AVX512F__)
/* One output row by MB activation rows, 16 lanes: a block's 16 bytes widen to 16 int32 lanes whose low
 * nibbles are inputs 0..15 and high nibbles inputs 16..31, two conversions and two products a block
 * where 8 lanes need four of each (an int4 step's matmuls were bound by this arithmetic). sf and off as
 * in the 8-lane version below. */
INLINE void i4_row(int MB, long G, const float *x, long ldx, const uint8_t *nib, const float *sf,
                   const float *off, float *y, long ldy) {
    const __m512i low = _mm512_set1_epi32(15);
    __m512 acc[4];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++) acc[m] = _mm512_setzero_ps();
    for (long g = 0; g < G; g++) {
        const uint8_t *b = nib + g * 16;
        if ((g & 3) == 0) _mm_prefetch((const char *)b + I4_PREFETCH, _MM_HINT_T0);
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
        __m512 q0 = _mm512_cvtepi32_ps(_mm512_and_si512(v, low)); /* inputs 0..15 */
        __m512 q1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));  /* 16..31 */
        __m512 sv = _mm512_set1_ps(sf[g]);
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            const float *xg = x + m * ldx + g * 32;
            __m512 t = _mm512_mul_ps(q0, _mm512_loadu_ps(xg));
            t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xg + 16), t);
            acc[m] = _mm512_fmadd_ps(t, sv, acc[m]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++) y[m * ldy] = _mm512_reduce_add_ps(acc[m]) + off[m];
}
#else
/* One output row by MB activation rows. A block's 32 values are unpacked and converted once and
 * used by every activation row; sf holds the row's scales as float32, off[m] starts as the row's
 * offsets already applied to activation row m (sum over blocks of (zero - 8 scale) * block sum). */
INLINE void i4_row(int MB, long G, const float *x, long ldx, const uint8_t *nib, const float *sf,
                   const float *off, float *y, long ldy) {
    const __m256i low = _mm256_set1_epi32(15);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++) acc[m] = _mm256_setzero_ps();
    for (long g = 0; g < G; g++) {
        const uint8_t *b = nib + g * 16;
        if ((g & 3) == 0) _mm_prefetch((const char *)b + I4_PREFETCH, _MM_HINT_T0);
        /* Byte j holds inputs j (low nibble) and j + 16 (high nibble). */
        __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
        __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8)));
        __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(v0, low)); /* inputs 0..7 */
        __m256 q1 = _mm256_cvtepi32_ps(_mm256_and_si256(v1, low)); /* 8..15 */
        __m256 q2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4));  /* 16..23 */
        __m256 q3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4));  /* 24..31 */
        __m256 sv = _mm256_broadcast_ss(sf + g);
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            const float *xg = x + m * ldx + g * 32;
            __m256 t = _mm256_mul_ps(q0, _mm256_loadu_ps(xg));
            t = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xg + 8), t);
            t = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xg + 16), t);
            t = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xg + 24), t);
            acc[m] = _mm256_fmadd_ps(t, sv, acc[m]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++) y[m * ldy] = hsum(acc[m]) + off[m];
}

#endif

#define I4_ROW(MB)                                                                               \
    static void i4_row##MB(long G, const float *x, long ldx, const uint8_t *nib, const float *sf, \
                           const float *off, float *y, long ldy) {                               \
        i4_row(MB, G, x, ldx, nib, sf, off, y, ldy);                                             \
    }
I4_ROW(1)
I4_ROW(2)
I4_ROW(4)

INLINE __m256 load8_bf16(const uint16_t *p) {
    __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

/* qk_int4_mm: y [M, N] (row stride ldy) = x [M, K] (row stride ldx, K a multiple of 32) @ W^T with
 * W[n, 32 g + j] = (q - 8) * scale[n, g] + zero[n, g]: nib [N, K / 2] (16 bytes a block), sz
 * [N, 2, K / 32] bf16 (a row's scales, then its zeros). */
static void i4_mm(long M, long N, long K, const float *x, long ldx, const uint8_t *nib,
                  const uint16_t *sz, float *y, long ldy) {
    long G = K / 32;
    float xs[M * G]; /* each activation row's sums of its blocks (M <= I4_ROWS) */
    for (long m = 0; m < M; m++)
        for (long g = 0; g < G; g++) {
            const float *xg = x + m * ldx + g * 32;
            __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xg), _mm256_loadu_ps(xg + 8)),
                                     _mm256_add_ps(_mm256_loadu_ps(xg + 16), _mm256_loadu_ps(xg + 24)));
            xs[m * G + g] = hsum(t);
        }
    const __m256 eight = _mm256_set1_ps(8.0f);
#pragma omp parallel for schedule(static) if (N * K >= PARALLEL_MIN)
    for (long n = 0; n < N; n++) {
        float sf[G + 8], off[M]; /* this row's scales, and its offsets per activation row */
        const uint16_t *sc = sz + n * 2 * G, *zr = sc + G;
        /* The row's scales as float32, and its offsets (zero - 8 scale) against each activation
         * row's block sums. */
        long g8 = G & ~7L;
        for (long g = 0; g < g8; g += 8) _mm256_storeu_ps(sf + g, load8_bf16(sc + g));
        for (long g = g8; g < G; g++) sf[g] = bf16(sc[g]);
        for (long m = 0; m < M; m++) {
            const float *xsm = xs + m * G;
            __m256 a = _mm256_setzero_ps();
            for (long g = 0; g < g8; g += 8) {
                __m256 o = _mm256_fnmadd_ps(eight, _mm256_loadu_ps(sf + g), load8_bf16(zr + g));
                a = _mm256_fmadd_ps(o, _mm256_loadu_ps(xsm + g), a);
            }
            float t = hsum(a);
            for (long g = g8; g < G; g++) t += (bf16(zr[g]) - 8.0f * sf[g]) * xsm[g];
            off[m] = t;
        }
        const uint8_t *row = nib + n * (K / 2);
        for (long m = 0; m < M;) {
            long left = M - m;
            const float *xm = x + m * ldx;
            float *ym = y + m * ldy + n;
            if (left >= 4) {
                i4_row4(G, xm, ldx, row, sf, off + m, ym, ldy);
                m += 4;
            } else if (left >= 2) {
                i4_row2(G, xm, ldx, row, sf, off + m, ym, ldy);
                m += 2;
            } else {
                i4_row1(G, xm, ldx, row, sf, off + m, ym, ldy);
                m += 1;
            }
        }
    }
}

#define I4_ROWS 32 /* activation rows per pass (bounds the stack's block sums) */

void qk_int4_mm(long M, long N, long K, const float *x, long ldx, const uint8_t *nib,
                const uint16_t *sz, float *y, long ldy) {
    for (long m = 0; m < M; m += I4_ROWS)
        i4_mm(M - m < I4_ROWS ? M - m : I4_ROWS, N, K, x + m * ldx, ldx, nib, sz, y + m * ldy, ldy);
}

/* ---- int8 in blocks of 32 (GGUF's Q8_0, served as the file holds it) ----
 * w[n, 32 g + j] = q[n, 32 g + j] * d[n, g]: q int8 [N, K] row-major, d fp16 [N, K / 32] (GGUF's own
 * scales, converted in registers: F16C). Each weight is read once a call, its 32-input block converted
 * once and used by up to four activation rows; a block's scale is applied once to its dot product. */

#define I8B_PREFETCH 512 /* bytes ahead in the row-contiguous weights */

/* One output row by MB activation rows. (Four rows a pass, each row's x loaded once for the four, with
 * the block sums scaled at each block's end, was measured slower on the 49152-row LM head: 1.9 against
 * 1.5 ms, one thread.) */
INLINE void i8b_row(int MB, long G, const float *x, long ldx, const int8_t *q, const uint16_t *d,
                    float *y, long ldy) {
    __m256 acc[4];
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++) acc[m] = _mm256_setzero_ps();
    for (long g = 0; g < G; g++) {
        const int8_t *b = q + g * 32;
        if ((g & 1) == 0) _mm_prefetch((const char *)b + I8B_PREFETCH, _MM_HINT_T0);
        __m256 w0 = load8_i8(b), w1 = load8_i8(b + 8), w2 = load8_i8(b + 16), w3 = load8_i8(b + 24);
        __m256 sv = _mm256_set1_ps(_cvtsh_ss(d[g]));
#pragma GCC unroll 4
        for (int m = 0; m < MB; m++) {
            const float *xg = x + m * ldx + g * 32;
            __m256 t = _mm256_mul_ps(w0, _mm256_loadu_ps(xg));
            t = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg + 8), t);
            t = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xg + 16), t);
            t = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xg + 24), t);
            acc[m] = _mm256_fmadd_ps(t, sv, acc[m]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; m++) y[m * ldy] = hsum(acc[m]);
}

#define I8B_ROW(MB)                                                                               \
    static void i8b_row##MB(long G, const float *x, long ldx, const int8_t *q, const uint16_t *d, \
                            float *y, long ldy) {                                                 \
        i8b_row(MB, G, x, ldx, q, d, y, ldy);                                                     \
    }
I8B_ROW(1)
I8B_ROW(2)
I8B_ROW(4)

/* y [M, N] (row stride ldy) = x [M, K] (row stride ldx, K a multiple of 32) @ W^T, W as above. */
void qk_int8b_mm(long M, long N, long K, const float *x, long ldx, const int8_t *q, const uint16_t *d,
                 float *y, long ldy) {
    long G = K / 32;
#pragma omp parallel for schedule(static) if (N * K >= PARALLEL_MIN)
    for (long n = 0; n < N; n++) {
        const int8_t *row = q + n * K;
        const uint16_t *dn = d + n * G;
        for (long m = 0; m < M;) {
            long left = M - m;
            const float *xm = x + m * ldx;
            float *ym = y + m * ldy + n;
            if (left >= 4) {
                i8b_row4(G, xm, ldx, row, dn, ym, ldy);
                m += 4;
            } else if (left >= 2) {
                i8b_row2(G, xm, ldx, row, dn, ym, ldy);
                m += 2;
            } else {
                i8b_row1(G, xm, ldx, row, dn, ym, ldy);
                m += 1;
            }
        }
    }
}

/* ---- The decode step's small ops, fused (local_engine/kernels.py checks each against torch once,
 * bit for bit, before using it). Every product and sum is rounded as torch's separate ops round it:
 * no contraction into FMAs here. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

#define SUM_LEVELS 4
#define SUM_ILP 4

static long ceil_log2(long x) { return x <= 1 ? 0 : 64 - __builtin_clzl((unsigned long)(x - 1)); }

/* The sum of squares of a row as torch sums a float32 row (aten's cascade_sum over a contiguous
 * row): 8-lane vectors into 4 accumulators, cascaded every 2^level_power vectors over 4 levels,
 * the accumulators added in order, then the scalar tail and the lanes one by one. */
static float torch_sumsq(const float *a, long n) {
    long vecs = n / 8, size = vecs / SUM_ILP;
    long power = ceil_log2(size) / SUM_LEVELS;
    if (power < 4) power = 4;
    long step = 1L << power, mask = step - 1;
    float acc[SUM_LEVELS][SUM_ILP][8];
    memset(acc, 0, sizeof acc);
    long i = 0;
    for (; i + step <= size;) {
        for (long j = 0; j < step; j++, i++)
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < 8; l++) {
                    float v = a[(i * SUM_ILP + k) * 8 + l];
                    acc[0][k][l] += v * v;
                }
        for (int j = 1; j < SUM_LEVELS; j++) {
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < 8; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if (i & (mask << (j * power))) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < 8; l++) {
                float v = a[(i * SUM_ILP + k) * 8 + l];
                acc[0][k][l] += v * v;
            }
    for (int j = 1; j < SUM_LEVELS; j++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < 8; l++) acc[0][k][l] += acc[j][k][l];
    float *ps = acc[0][0]; /* accumulator 0, into which the vectors left over go */
    for (long v = size * SUM_ILP; v < vecs; v++)
        for (int l = 0; l < 8; l++) ps[l] += a[v * 8 + l] * a[v * 8 + l];
    for (int k = 1; k < SUM_ILP; k++)
        for (int l = 0; l < 8; l++) ps[l] += acc[0][k][l];
    float s = 0.0f;
    for (long k = vecs * 8; k < n; k++) s += a[k] * a[k];
    for (int l = 0; l < 8; l++) s += ps[l];
    return s;
}

/* qk_add_rms_norm: for each of T rows, sum = x + d (x alone where d is NULL) and
 * norm = sum * rsqrt(mean(sum^2) + eps) * w, as F.rms_norm computes it in float32 (pow, mean = sum
 * divided by n, add eps, 1 / sqrt, then two products). sum [T, n] may be x itself. */
void qk_add_rms_norm(long T, long n, const float *x, long ldx, const float *d, long ldd, const float *w,
                     float eps, float *sum, float *norm) {
    for (long t = 0; t < T; t++) {
        const float *xt = x + t * ldx;
        float *st = sum + t * n, *nt = norm + t * n;
        if (d != NULL) {
            const float *dt = d + t * ldd;
            for (long j = 0; j < n; j++) st[j] = xt[j] + dt[j];
        } else if (st != xt) {
            memcpy(st, xt, n * sizeof(float));
        }
        float mean = torch_sumsq(st, n) / (float)n;
        float r = 1.0f / __builtin_sqrtf(mean + eps);
        for (long j = 0; j < n; j++) nt[j] = st[j] * r * w[j];
    }
}

/* qk_rope_kv: rotary embedding of a step's query and key heads and the K/V cache's writes, from the
 * fused projection's output qkv [T, (H + 2 Hkv) * D] (row stride ldqkv): each head's
 * x * cos + roll(x, D / 2) * sin (sin signed as RotaryEmbedding keeps it; cos, sin [T, D]), the
 * queries into q [T, H, D], the keys and the values into k_cache and v_cache ([slots, Hkv, D]) at
 * the tokens' slots. */
void qk_rope_kv(long T, long H, long Hkv, long D, const float *qkv, long ldqkv, const float *cos,
                const float *sin, const long *slots, float *q, float *k_cache, float *v_cache) {
    long half = D / 2;
    for (long t = 0; t < T; t++) {
        const float *row = qkv + t * ldqkv, *c = cos + t * D, *s = sin + t * D;
        for (long h = 0; h < H + Hkv; h++) {
            const float *x = row + h * D;
            float *o = h < H ? q + (t * H + h) * D : k_cache + (slots[t] * Hkv + (h - H)) * D;
            for (long j = 0; j < half; j++) o[j] = x[j] * c[j] + x[j + half] * s[j];
            for (long j = half; j < D; j++) o[j] = x[j] * c[j] + x[j - half] * s[j];
        }
        memcpy(v_cache + slots[t] * Hkv * D, row + (H + Hkv) * D, Hkv * D * sizeof(float));
    }
}

#pragma GCC pop_options

/* qk_decode_attention: one decode token's attention over its paged context, read in place through its
 * block table (no gather): out [H, D] = softmax(scale * q k^T) v per head, q [H, D], the caches
 * [blocks, block_size, Hkv, D], table [ceil(L / block_size)] block ids, L the context length; head h
 * reads key/value head h / (H / Hkv). Scores in float32, the softmax with its maximum subtracted, exp
 * from libm; not bit-identical to torch's SDPA (its order of summation differs), close to it. */
void qk_decode_attention(long H, long Hkv, long D, long L, long block_size, const float *q,
                         const float *k_cache, const float *v_cache, const long *table, float scale,
                         float *out) {
    long group = H / Hkv, row = Hkv * D; /* a token's stride in the cache */
    long d8 = D & ~7L;
    float s[group * L]; /* the group's scores, head by head */
    for (long g = 0; g < Hkv; g++) {
        /* The group's heads share each key and value row: read once for all of them. */
        for (long l = 0; l < L; l++) {
            const float *k = k_cache + (table[l / block_size] * block_size + l % block_size) * row + g * D;
            for (long i = 0; i < group; i++) {
                const float *qh = q + (g * group + i) * D;
                __m256 acc = _mm256_setzero_ps();
                for (long j = 0; j < d8; j += 8)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qh + j), _mm256_loadu_ps(k + j), acc);
                float dot = hsum(acc);
                for (long j = d8; j < D; j++) dot += qh[j] * k[j];
                s[i * L + l] = dot * scale;
            }
        }
        for (long i = 0; i < group; i++) {
            float *si = s + i * L, best = -__builtin_inff(), total = 0.0f;
            for (long l = 0; l < L; l++)
                if (si[l] > best) best = si[l];
            for (long l = 0; l < L; l++) {
                si[l] = __builtin_expf(si[l] - best);
                total += si[l];
            }
            float *o = out + (g * group + i) * D;
            for (long j = 0; j < D; j++) o[j] = 0.0f;
            for (long l = 0; l < L; l++) {
                const float *v = v_cache + (table[l / block_size] * block_size + l % block_size) * row + g * D;
                __m256 p = _mm256_set1_ps(si[l]);
                for (long j = 0; j < d8; j += 8)
                    _mm256_storeu_ps(o + j, _mm256_fmadd_ps(p, _mm256_loadu_ps(v + j), _mm256_loadu_ps(o + j)));
                for (long j = d8; j < D; j++) o[j] += si[l] * v[j];
            }
            float inv = 1.0f / total;
            for (long j = 0; j < D; j++) o[j] *= inv;
        }
    }
}
