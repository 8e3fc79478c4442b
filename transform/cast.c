#include "transform/cast.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Everything here assumes a little-endian host (x86_64, aarch64), IEEE-754
 * binary32/binary64, the default round-to-nearest mode, and no flush-to-zero
 * or denormals-are-zero (the subnormal paths below use the FPU to round).
 *
 * Facts about torch 2.13 on CPU that this file reproduces (checked with the
 * real library, see tests/fixtures/make_cast_vectors.py):
 * - every non-NaN result is the IEEE round-to-nearest-even result;
 * - f64 -> bf16/f16/f8 goes through f32 first (double rounding: 1 + 2^-8 +
 *   2^-40 becomes bf16 1.0, not the nearer 1 + 2^-7), and so do we;
 * - NaN is not reproduced bit for bit: torch's vector kernels give 0xFFFF for
 *   any bf16 NaN and keep f16 payloads. We give the canonical values of the
 *   c10 scalar routines (FORMATS.md §9): bf16 0x7FC0, f16 0x7E00 | sign, and
 *   float8 0x7F. */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Branch-free select (c is 0 or 1). Written with masks rather than ?: so GCC
 * if-converts and vectorises the loops that call it. */
static inline uint32_t sel32(uint32_t c, uint32_t x, uint32_t y)
{
    uint32_t m = 0u - c;
    return (x & m) | (y & ~m);
}

/* f32 -> bf16: add 0x7FFF plus the lowest kept bit, then truncate. That is
 * round-to-nearest-even on the raw bits; it carries into the exponent
 * correctly (up to Inf for values above the largest bf16), and f32
 * subnormals round like any other value (no flush). */
static inline uint16_t f32_to_bf16_i(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)sel32((u & 0x7FFFFFFFu) > 0x7F800000u, 0x7FC0u, r);
}

static inline float bf16_to_f32_i(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

/* f32 -> f16, IEEE round-to-nearest-even.
 * - |x| >= 65520 (the tie between 65504 and 2^16, which rounds to the even
 *   "2^16") and Inf: Inf. NaN: 0x7E00 with the sign.
 * - |x| >= 2^-14 (f16 normal range): rebias the exponent (127 -> 15, i.e.
 *   subtract 112 << 23) and round the 13 dropped mantissa bits on the integer
 *   bits as for bf16; a carry moves into the exponent as it should.
 * - |x| < 2^-14 (f16 subnormals and zero): add 0.5f. The sum lies in [0.5, 1)
 *   where one f32 ulp is 2^-24, the f16 subnormal step, so the FPU rounds |x|
 *   to a multiple of 2^-24 (ties to even) and the sum's low mantissa bits are
 *   the f16 result (up to 0x400, the smallest normal, when it rounds up).
 * All three candidates are computed and one selected, so loops vectorise. */
static inline uint16_t f32_to_f16_i(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    uint32_t norm = (a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13;
    uint32_t sub = f32_bits(bits_f32(a) + 0.5f) - 0x3F000000u;
    uint32_t r = sel32(a >= 0x38800000u, norm, sub);
    r = sel32(a >= 0x477FF000u, 0x7C00u, r);
    r = sel32(a > 0x7F800000u, 0x7E00u, r);
    return (uint16_t)(sign | r);
}

/* f16 -> f32, exact. Normal and Inf/NaN: shift exponent and mantissa into
 * place and rebias (15 -> 127, or 31 -> 255); subnormals: mantissa × 2^-24,
 * exact in f32. A NaN keeps its payload and is made quiet. */
static inline float f16_to_f32_i(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    uint32_t body = (uint32_t)(h & 0x7FFFu) << 13;
    uint32_t norm = body + 0x38000000u;
    uint32_t special = (body + 0x70000000u) | (m ? 0x400000u : 0u);
    uint32_t sub = f32_bits((float)(int32_t)m * 0x1p-24f);
    uint32_t r = sel32(e == 0x1F, special, sel32(e != 0, norm, sub));
    return bits_f32(sign | r);
}

/* f32 -> float8_e4m3fn (bias 7, 3 mantissa bits, max 448, no Inf, NaN 0x7F).
 * The clamp to ±448 comes first (compressed-tensors clamps before casting;
 * torch's own cast would turn |x| > 464 into NaN). Then:
 * - |x| >= 2^-6 (e4m3 normal): rebias 127 -> 7 and round off 20 mantissa bits
 *   on the integer bits, ties to even.
 * - |x| < 2^-6: add 2^14, whose f32 ulp is 2^-9 (the e4m3 subnormal step), so
 *   the FPU does the rounding and the low bits of the sum are the result.
 * NaN (of either sign) gives 0x7F. */
static inline uint8_t f32_to_f8e4m3_i(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 24) & 0x80u, a = u & 0x7FFFFFFFu;
    uint32_t c = sel32(a > 0x43E00000u, 0x43E00000u, a); /* 448.0f; also catches Inf */
    uint32_t norm = (c - (120u << 23) + 0x7FFFFu + ((c >> 20) & 1u)) >> 20;
    uint32_t sub = f32_bits(bits_f32(c) + 16384.0f) - 0x46800000u;
    uint32_t r = sign | sel32(c >= 0x3C800000u, norm, sub);
    return (uint8_t)sel32(a > 0x7F800000u, 0x7Fu, r);
}

static inline float f8e4m3_to_f32_i(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t e = (b >> 3) & 0xFu, m = b & 7u;
    uint32_t norm = ((e + 120u) << 23) | (m << 20);
    uint32_t sub = f32_bits((float)(int32_t)m * 0x1p-9f);
    uint32_t r = sel32((b & 0x7Fu) == 0x7Fu, 0x7FC00000u, sel32(e != 0, norm, sub));
    return bits_f32(sign | r);
}

/* float8_e5m2 is the top byte of an f16, so widening is a shift. */
static inline float f8e5m2_to_f32(uint8_t b)
{
    return f16_to_f32_i((uint16_t)(b << 8));
}

/* The public scalar conversions; the loops below use the inline bodies. */
uint16_t fz_f32_to_bf16(float f)
{
    return f32_to_bf16_i(f);
}

float fz_bf16_to_f32(uint16_t h)
{
    return bf16_to_f32_i(h);
}

uint16_t fz_f32_to_f16(float f)
{
    return f32_to_f16_i(f);
}

float fz_f16_to_f32(uint16_t h)
{
    return f16_to_f32_i(h);
}

uint8_t fz_f32_to_f8e4m3(float f)
{
    return f32_to_f8e4m3_i(f);
}

float fz_f8e4m3_to_f32(uint8_t b)
{
    return f8e4m3_to_f32_i(b);
}

int fz_cast_supported(fz_dtype src, fz_dtype dst)
{
    if (src == dst)
        return (unsigned)src < FZ_DT_COUNT;
    if (!fz_dtype_is_float(src))
        return 0;
    switch (dst) {
    case FZ_DT_F64:
    case FZ_DT_F32:
    case FZ_DT_F16:
    case FZ_DT_BF16:
    case FZ_DT_F8_E4M3:
        return 1;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Array conversion goes through a small f32 block: every source widens to
 * f32 (exactly; f64 is rounded to f32 here, as torch does), then narrows to the
 * destination. Each stage is a plain loop per dtype (the switch is outside
 * the loop), loads and stores use memcpy so unaligned buffers are fine, and
 * the compiler vectorises the bodies. */

#define FZ_CAST_BLOCK 1024

/* Every inner loop runs exactly FZ_CAST_BLOCK times over local, aligned
 * arrays (a short last block is zero-padded and only m results are kept):
 * with a constant trip count GCC vectorises them even at -O2. */
typedef union {
    double f64[FZ_CAST_BLOCK];
    float f32[FZ_CAST_BLOCK];
    uint16_t u16[FZ_CAST_BLOCK];
    uint8_t u8[FZ_CAST_BLOCK];
} cast_stage;

static void bf16_to_f32_blk(const uint16_t *restrict in, float *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = bf16_to_f32_i(in[i]);
}

static void f16_to_f32_blk(const uint16_t *restrict in, float *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = f16_to_f32_i(in[i]);
}

static void f8e4m3_to_f32_blk(const uint8_t *restrict in, float *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = f8e4m3_to_f32_i(in[i]);
}

static void f8e5m2_to_f32_blk(const uint8_t *restrict in, float *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = f8e5m2_to_f32(in[i]);
}

static void f64_to_f32_blk(const double *restrict in, float *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = (float)in[i];
}

static void f32_to_f64_blk(const float *restrict in, double *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = in[i];
}

static void f32_to_bf16_blk(const float *restrict in, uint16_t *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = f32_to_bf16_i(in[i]);
}

static void f32_to_f16_blk(const float *restrict in, uint16_t *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = f32_to_f16_i(in[i]);
}

static void f32_to_f8e4m3_blk(const float *restrict in, uint8_t *restrict out)
{
    for (size_t i = 0; i < FZ_CAST_BLOCK; i++)
        out[i] = f32_to_f8e4m3_i(in[i]);
}

/* Widen m (<= FZ_CAST_BLOCK) elements at p to f32 in out[]. */
static void block_to_f32(fz_dtype s, const uint8_t *p, float *out, size_t m)
{
    cast_stage st;
    size_t bytes = m * fz_dtype_size(s);

    if (s == FZ_DT_F32) {
        memcpy(out, p, bytes);
        return;
    }
    memcpy(&st, p, bytes);
    if (m < FZ_CAST_BLOCK)
        memset((uint8_t *)&st + bytes, 0, sizeof st - bytes);
    switch (s) {
    case FZ_DT_F64:
        f64_to_f32_blk(st.f64, out);
        break;
    case FZ_DT_BF16:
        bf16_to_f32_blk(st.u16, out);
        break;
    case FZ_DT_F16:
        f16_to_f32_blk(st.u16, out);
        break;
    case FZ_DT_F8_E4M3:
        f8e4m3_to_f32_blk(st.u8, out);
        break;
    case FZ_DT_F8_E5M2:
        f8e5m2_to_f32_blk(st.u8, out);
        break;
    default: /* not a floating dtype: callers check fz_cast_supported */
        memset(out, 0, FZ_CAST_BLOCK * sizeof *out);
        break;
    }
}

/* Narrow FZ_CAST_BLOCK f32 values and store the first m at p. */
static void block_from_f32(fz_dtype d, const float *in, uint8_t *p, size_t m)
{
    cast_stage st;
    switch (d) {
    case FZ_DT_F32:
        memcpy(p, in, m * 4);
        return;
    case FZ_DT_F64:
        f32_to_f64_blk(in, st.f64);
        break;
    case FZ_DT_BF16:
        f32_to_bf16_blk(in, st.u16);
        break;
    case FZ_DT_F16:
        f32_to_f16_blk(in, st.u16);
        break;
    case FZ_DT_F8_E4M3:
        f32_to_f8e4m3_blk(in, st.u8);
        break;
    default:
        return;
    }
    memcpy(p, &st, m * fz_dtype_size(d));
}

/* ------------------------------------------------------------------------ */
/* f32 -> bf16, the cast that matters most (fp32 training outputs released as
 * bf16), goes straight from the source bytes to the destination with no
 * staging block, on the widest vector unit the CPU has. Every kernel gives
 * the bytes of f32_to_bf16_i, NaN included: the integer rounding above, one
 * lane per element. Two facts make the narrowing exact without SSE4.1's
 * unsigned pack: for non-NaN input the 32-bit sum never wraps (the largest,
 * -Inf 0xFF800000, plus 0x8000 fits), and an arithmetic shift by 16 leaves a
 * value in [-32768, 32767] whose low 16 bits are the result, which the
 * signed-saturating pack keeps as they are. NaN lanes (whose sum may wrap)
 * are replaced by 0x7FC0 before packing. Tails go through the scalar kernel.
 * Not used: the hardware conversion (AVX512_BF16 flushes denormals and keeps
 * NaN payloads), and an AVX-512F kernel (measured 10% faster than AVX2 on
 * the loop alone, under 2% of a materialize: not worth a third path). */

static void bf16_run_scalar(const void *from, void *to, size_t n)
{
    const uint8_t *src = from;
    uint8_t *dst = to;
    for (size_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, src + 4 * i, 4);
        uint16_t h = f32_to_bf16_i(f);
        memcpy(dst + 2 * i, &h, 2);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FZ_CAST_X86 1
#include <immintrin.h>

/* Four f32 bit patterns to their bf16 results in the low halves of the lanes
 * (sign-extended, ready for _mm_packs_epi32). */
static inline __m128i bf16x4_sse2(__m128i u)
{
    __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
    __m128i r = _mm_add_epi32(_mm_add_epi32(u, _mm_set1_epi32(0x7FFF)), lsb);
    __m128i nan =
        _mm_cmpgt_epi32(_mm_and_si128(u, _mm_set1_epi32(0x7FFFFFFF)), _mm_set1_epi32(0x7F800000));
    r = _mm_srai_epi32(r, 16);
    return _mm_or_si128(_mm_andnot_si128(nan, r), _mm_and_si128(nan, _mm_set1_epi32(0x7FC0)));
}

static void bf16_run_sse2(const void *from, void *to, size_t n)
{
    const uint8_t *src = from;
    uint8_t *dst = to;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i a = bf16x4_sse2(_mm_loadu_si128((const __m128i *)(src + 4 * i)));
        __m128i b = bf16x4_sse2(_mm_loadu_si128((const __m128i *)(src + 4 * i + 16)));
        _mm_storeu_si128((__m128i *)(dst + 2 * i), _mm_packs_epi32(a, b));
    }
    bf16_run_scalar(src + 4 * i, dst + 2 * i, n - i);
}

__attribute__((target("avx2"))) static inline __m256i bf16x8_avx2(__m256i u)
{
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                     _mm256_set1_epi32(0x7F800000));
    r = _mm256_srai_epi32(r, 16);
    return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
}

/* The pack works within 128-bit lanes; the permute puts the four 64-bit
 * quarters back in element order. */
__attribute__((target("avx2"))) static void bf16_run_avx2(const void *from, void *to, size_t n)
{
    const uint8_t *src = from;
    uint8_t *dst = to;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = bf16x8_avx2(_mm256_loadu_si256((const __m256i *)(src + 4 * i)));
        __m256i b = bf16x8_avx2(_mm256_loadu_si256((const __m256i *)(src + 4 * i + 32)));
        __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
        _mm256_storeu_si256((__m256i *)(dst + 2 * i), p);
    }
    bf16_run_scalar(src + 4 * i, dst + 2 * i, n - i);
}

#endif

/* The kernels this CPU runs, chosen once (x86-64: SSE2 always, AVX2 when
 * the CPU and the OS have it). */
static fz_cast_kernel bf16_avail[2];
static size_t bf16_navail;
static const fz_cast_kernel *bf16_used;
static pthread_once_t bf16_once = PTHREAD_ONCE_INIT;

static void bf16_pick(void)
{
#ifdef FZ_CAST_X86
    __builtin_cpu_init();
    bf16_avail[bf16_navail++] = (fz_cast_kernel){"sse2", bf16_run_sse2};
    if (__builtin_cpu_supports("avx2"))
        bf16_avail[bf16_navail++] = (fz_cast_kernel){"avx2", bf16_run_avx2};
#else
    bf16_avail[bf16_navail++] = (fz_cast_kernel){"scalar", bf16_run_scalar};
#endif
    const char *e = getenv("FZFS_CAST_BASELINE");
    bool base = e && *e && strcmp(e, "0") != 0;
    bf16_used = &bf16_avail[base ? 0 : bf16_navail - 1];
}

size_t fz_cast_bf16_kernels(const fz_cast_kernel **out)
{
    pthread_once(&bf16_once, bf16_pick);
    *out = bf16_avail;
    return bf16_navail;
}

const fz_cast_kernel *fz_cast_bf16_kernel(void)
{
    pthread_once(&bf16_once, bf16_pick);
    return bf16_used;
}

void fz_cast(fz_dtype s, const void *src, fz_dtype d, void *dst, size_t n)
{
    const uint8_t *sp = src;
    uint8_t *dp = dst;
    size_t ss = fz_dtype_size(s), ds = fz_dtype_size(d);
    float buf[FZ_CAST_BLOCK];

    if (s == d) {
        if (n)
            memcpy(dst, src, n * ss);
        return;
    }
    if (!fz_cast_supported(s, d))
        return;
    if (s == FZ_DT_F32 && d == FZ_DT_BF16) {
        fz_cast_bf16_kernel()->run(src, dst, n);
        return;
    }
    while (n) {
        size_t m = n < FZ_CAST_BLOCK ? n : FZ_CAST_BLOCK;
        block_to_f32(s, sp, buf, m);
        block_from_f32(d, buf, dp, m);
        sp += m * ss;
        dp += m * ds;
        n -= m;
    }
}

void fz_to_f64(fz_dtype s, const void *src, double *dst, size_t n)
{
    const uint8_t *p = src;
    size_t i;
    float buf[FZ_CAST_BLOCK];

    switch (s) {
    case FZ_DT_F64:
        if (n)
            memcpy(dst, src, n * 8);
        return;
    case FZ_DT_I64:
        for (i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (double)v;
        }
        return;
    case FZ_DT_I32:
        for (i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = v;
        }
        return;
    case FZ_DT_I16:
        for (i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            dst[i] = v;
        }
        return;
    case FZ_DT_I8:
        for (i = 0; i < n; i++)
            dst[i] = (int8_t)p[i];
        return;
    case FZ_DT_U8:
    case FZ_DT_BOOL:
        for (i = 0; i < n; i++)
            dst[i] = p[i];
        return;
    default:
        break;
    }
    /* Floating: widen through f32, which is exact for every narrower dtype. */
    while (n) {
        size_t m = n < FZ_CAST_BLOCK ? n : FZ_CAST_BLOCK;
        block_to_f32(s, p, buf, m);
        if (m == FZ_CAST_BLOCK) {
            f32_to_f64_blk(buf, dst);
        } else {
            for (i = 0; i < m; i++)
                dst[i] = buf[i];
        }
        p += m * fz_dtype_size(s);
        dst += m;
        n -= m;
    }
}
