/* transform/cast.c against torch: the expected bits in data/cast_vectors.h
 * were produced by torch's tensor.to(dtype) (tests/fixtures/make_cast_vectors.py).
 * NaN inputs only need a NaN result, plus fzfs's documented canonical NaN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "data/cast_vectors.h"
#include "transform/cast.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int f32_isnan(uint32_t u)
{
    return (u & 0x7FFFFFFFu) > 0x7F800000u;
}

static int f64_isnan(uint64_t u)
{
    return (u & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull;
}

static int bf16_isnan(uint16_t h)
{
    return (h & 0x7FFF) > 0x7F80;
}

static int f16_isnan(uint16_t h)
{
    return (h & 0x7FFF) > 0x7C00;
}

static int f8_isnan(uint8_t b)
{
    return (b & 0x7F) == 0x7F;
}

/* Compare one f32 row; on mismatch print the row so a failure is readable. */
static int check_f32_row(const fzv_f32_row *r, uint16_t bf, uint16_t hf, uint8_t f8)
{
    int ok;
    if (f32_isnan(r->in))
        ok = bf == 0x7FC0 && hf == (uint16_t)(0x7E00 | ((r->in >> 16) & 0x8000)) && f8 == 0x7F;
    else
        ok = bf == r->bf16 && hf == r->f16 && f8 == r->f8;
    if (!ok)
        print_error("f32 0x%08X: got bf16 0x%04X f16 0x%04X f8 0x%02X, "
                    "torch 0x%04X 0x%04X 0x%02X\n",
                    r->in, bf, hf, f8, r->bf16, r->f16, r->f8);
    return ok;
}

static void scalar_table(const fzv_f32_row *rows, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float f = f32_of(rows[i].in);
        if (!check_f32_row(&rows[i], fz_f32_to_bf16(f), fz_f32_to_f16(f), fz_f32_to_f8e4m3(f)))
            bad++;
    }
    assert_int_equal(bad, 0);
}

static void test_edge_scalar(void **state)
{
    (void)state;
    scalar_table(fzv_edge_f32, N_OF(fzv_edge_f32));
}

static void test_random_scalar(void **state)
{
    (void)state;
    scalar_table(fzv_rand_f32, N_OF(fzv_rand_f32));
}

/* The array path (fz_cast) on an unaligned buffer gives the same bits. */
static void test_random_array(void **state)
{
    (void)state;
    size_t n = N_OF(fzv_rand_f32), bad = 0;
    uint8_t *src = malloc(4 * n + 1), *bf = malloc(2 * n + 1), *hf = malloc(2 * n + 1);
    uint8_t *f8 = malloc(n);
    assert_non_null(src);
    assert_non_null(bf);
    assert_non_null(hf);
    assert_non_null(f8);
    for (size_t i = 0; i < n; i++)
        memcpy(src + 1 + 4 * i, &fzv_rand_f32[i].in, 4);
    fz_cast(FZ_DT_F32, src + 1, FZ_DT_BF16, bf + 1, n);
    fz_cast(FZ_DT_F32, src + 1, FZ_DT_F16, hf + 1, n);
    fz_cast(FZ_DT_F32, src + 1, FZ_DT_F8_E4M3, f8, n);
    for (size_t i = 0; i < n; i++) {
        uint16_t b, h;
        memcpy(&b, bf + 1 + 2 * i, 2);
        memcpy(&h, hf + 1 + 2 * i, 2);
        if (!check_f32_row(&fzv_rand_f32[i], b, h, f8[i]))
            bad++;
    }
    assert_int_equal(bad, 0);
    free(src);
    free(bf);
    free(hf);
    free(f8);
}

/* Named edge facts, readable on their own (also in the torch table). */
static void test_named_edges(void **state)
{
    (void)state;
    /* bf16: ties to even both ways, no denormal flush, overflow to Inf */
    assert_int_equal(fz_f32_to_bf16(f32_of(0x3F808000)), 0x3F80);
    assert_int_equal(fz_f32_to_bf16(f32_of(0x3F818000)), 0x3F82);
    assert_int_equal(fz_f32_to_bf16(f32_of(0x00018000)), 0x0002);
    assert_int_equal(fz_f32_to_bf16(f32_of(0x7F7FFFFF)), 0x7F80);
    assert_int_equal(fz_f32_to_bf16(f32_of(0xFFC00000)), 0x7FC0);
    /* f16: 65504 stays, 65520 is Inf, subnormal tie at 2^-25 goes to 0 */
    assert_int_equal(fz_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(fz_f32_to_f16(f32_of(0x477FEFFF)), 0x7BFF);
    assert_int_equal(fz_f32_to_f16(65520.0f), 0x7C00);
    assert_int_equal(fz_f32_to_f16(-65520.0f), 0xFC00);
    assert_int_equal(fz_f32_to_f16(f32_of(0x33000000)), 0x0000);
    assert_int_equal(fz_f32_to_f16(f32_of(0x33000001)), 0x0001);
    assert_int_equal(fz_f32_to_f16(f32_of(0x387FC000)), 0x03FF);
    assert_int_equal(fz_f32_to_f16(f32_of(0x3F808000)), 0x3C04);
    assert_int_equal(fz_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(fz_f32_to_f16(f32_of(0xFFC00000)), 0xFE00);
    /* float8 e4m3fn: clamp first, max 448, smallest subnormal 2^-9 */
    assert_int_equal(fz_f32_to_f8e4m3(448.0f), 0x7E);
    assert_int_equal(fz_f32_to_f8e4m3(470.0f), 0x7E);
    assert_int_equal(fz_f32_to_f8e4m3(-1e30f), 0xFE);
    assert_int_equal(fz_f32_to_f8e4m3(f32_of(0x7F800000)), 0x7E);
    assert_int_equal(fz_f32_to_f8e4m3(0x1p-9f), 0x01);
    assert_int_equal(fz_f32_to_f8e4m3(0x1p-10f), 0x00);
    assert_int_equal(fz_f32_to_f8e4m3(1.0625f), 0x38);
    assert_int_equal(fz_f32_to_f8e4m3(1.1875f), 0x3A);
    assert_int_equal(fz_f32_to_f8e4m3(f32_of(0xFFC00000)), 0x7F);
}

static void test_f64_sources(void **state)
{
    (void)state;
    size_t n = N_OF(fzv_f64), bad = 0;
    uint32_t *f32 = malloc(4 * n);
    uint16_t *bf = malloc(2 * n), *hf = malloc(2 * n);
    uint8_t *f8 = malloc(n), *src = malloc(8 * n + 3);
    assert_non_null(f32);
    assert_non_null(bf);
    assert_non_null(hf);
    assert_non_null(f8);
    assert_non_null(src);
    for (size_t i = 0; i < n; i++)
        memcpy(src + 3 + 8 * i, &fzv_f64[i].in, 8);
    fz_cast(FZ_DT_F64, src + 3, FZ_DT_F32, f32, n);
    fz_cast(FZ_DT_F64, src + 3, FZ_DT_BF16, bf, n);
    fz_cast(FZ_DT_F64, src + 3, FZ_DT_F16, hf, n);
    fz_cast(FZ_DT_F64, src + 3, FZ_DT_F8_E4M3, f8, n);
    for (size_t i = 0; i < n; i++) {
        const fzv_f64_row *r = &fzv_f64[i];
        int ok;
        if (f64_isnan(r->in))
            ok = f32_isnan(f32[i]) && bf16_isnan(bf[i]) && f16_isnan(hf[i]) && f8_isnan(f8[i]);
        else
            ok = f32[i] == r->f32 && bf[i] == r->bf16 && hf[i] == r->f16 && f8[i] == r->f8;
        if (!ok) {
            print_error("f64 0x%016llX: got 0x%08X 0x%04X 0x%04X 0x%02X, torch 0x%08X 0x%04X "
                        "0x%04X 0x%02X\n",
                        (unsigned long long)r->in, f32[i], bf[i], hf[i], f8[i], r->f32, r->bf16,
                        r->f16, r->f8);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    /* the double-rounding fact: 1 + 2^-8 + 2^-40 -> bf16 1.0 (via f32), not 1 + 2^-7 */
    double d = 1.0 + 0x1p-8 + 0x1p-40;
    uint16_t one;
    fz_cast(FZ_DT_F64, &d, FZ_DT_BF16, &one, 1);
    assert_int_equal(one, 0x3F80);
    free(f32);
    free(bf);
    free(hf);
    free(f8);
    free(src);
}

static void u16_table(const fzv_u16_row *rows, size_t n, fz_dtype s, fz_dtype d)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t out;
        fz_cast(s, &rows[i].in, d, &out, 1);
        int in_nan = s == FZ_DT_F16 ? f16_isnan(rows[i].in) : bf16_isnan(rows[i].in);
        int ok = in_nan ? (d == FZ_DT_F16 ? f16_isnan(out) : out == 0x7FC0) : out == rows[i].out;
        if (!ok) {
            print_error("0x%04X: got 0x%04X, torch 0x%04X\n", rows[i].in, out, rows[i].out);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

static void test_bf16_f16(void **state)
{
    (void)state;
    u16_table(fzv_bf16_to_f16, N_OF(fzv_bf16_to_f16), FZ_DT_BF16, FZ_DT_F16);
    u16_table(fzv_f16_to_bf16, N_OF(fzv_f16_to_bf16), FZ_DT_F16, FZ_DT_BF16);
}

static void test_f8_widen(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        uint32_t got = bits_of(fz_f8e4m3_to_f32((uint8_t)b));
        if (f32_isnan(fzv_f8_to_f32[b]))
            assert_true(f32_isnan(got));
        else
            assert_int_equal(got, fzv_f8_to_f32[b]);
        /* every finite byte survives a round trip */
        if ((b & 0x7F) != 0x7F)
            assert_int_equal(fz_f32_to_f8e4m3(fz_f8e4m3_to_f32((uint8_t)b)), b);
    }
}

/* Widenings are exact: every bf16 is its f32 top half; every non-NaN f16
 * round-trips through f32 and f64; where the compiler has _Float16 it is a
 * second, independent oracle for the f16 <-> f32 conversions. */
static void test_exhaustive_16bit(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint16_t x = (uint16_t)h;
        float bf = fz_bf16_to_f32(x), hf = fz_f16_to_f32(x);
        assert_int_equal(bits_of(bf), h << 16);
        if (f16_isnan(x)) {
            assert_true(hf != hf);
            continue;
        }
        assert_int_equal(fz_f32_to_f16(hf), x);
        if (!bf16_isnan(x))
            assert_int_equal(fz_f32_to_bf16(bf), x);
        double d[2];
        uint16_t pair[2] = {x, x};
        fz_to_f64(FZ_DT_F16, pair, d, 2);
        assert_true(d[0] == (double)hf && d[1] == (double)hf);
#ifdef __FLT16_MAX__
        _Float16 ref;
        memcpy(&ref, &x, 2);
        assert_int_equal(bits_of((float)ref), bits_of(hf));
#endif
    }
}

#ifdef __FLT16_MAX__
/* f32 -> f16 over a wide sweep of bit patterns against the compiler's IEEE
 * conversion (non-NaN only). */
static void test_f16_sweep_vs_compiler(void **state)
{
    (void)state;
    for (uint64_t u = 0; u < 0x100000000ull; u += 0x1357) {
        if (f32_isnan((uint32_t)u))
            continue;
        float f = f32_of((uint32_t)u);
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        if (fz_f32_to_f16(f) != rb)
            fail_msg("0x%08X: got 0x%04X, compiler 0x%04X", (unsigned)u, fz_f32_to_f16(f), rb);
    }
}
#endif

static void test_supported_and_identity(void **state)
{
    (void)state;
    assert_true(fz_cast_supported(FZ_DT_F32, FZ_DT_BF16));
    assert_true(fz_cast_supported(FZ_DT_BF16, FZ_DT_F16));
    assert_true(fz_cast_supported(FZ_DT_F64, FZ_DT_F8_E4M3));
    assert_true(fz_cast_supported(FZ_DT_F8_E4M3, FZ_DT_F32));
    assert_true(fz_cast_supported(FZ_DT_I64, FZ_DT_I64));
    assert_true(fz_cast_supported(FZ_DT_BOOL, FZ_DT_BOOL));
    assert_false(fz_cast_supported(FZ_DT_I32, FZ_DT_F32));
    assert_false(fz_cast_supported(FZ_DT_F32, FZ_DT_I32));
    assert_false(fz_cast_supported(FZ_DT_BOOL, FZ_DT_F16));
    assert_false(fz_cast_supported(FZ_DT_F32, FZ_DT_F8_E5M2));

    int64_t a[3] = {1, -2, INT64_MAX}, b[3] = {0};
    fz_cast(FZ_DT_I64, a, FZ_DT_I64, b, 3);
    assert_memory_equal(a, b, sizeof a);

    /* widen to f64 for reductions: floats exactly, integers by value */
    float fs[3] = {0.1f, -3.5f, 1e-40f};
    double ds[3];
    fz_to_f64(FZ_DT_F32, fs, ds, 3);
    for (int i = 0; i < 3; i++)
        assert_true(ds[i] == (double)fs[i]);
    int8_t is[2] = {-128, 127};
    fz_to_f64(FZ_DT_I8, is, ds, 2);
    assert_true(ds[0] == -128.0 && ds[1] == 127.0);

    /* f32 -> f64 is exact, and long arrays cross the internal block size */
    size_t n = 5000;
    float *big = malloc(n * sizeof *big);
    double *wide = malloc(n * sizeof *wide);
    uint16_t *h = malloc(n * sizeof *h);
    assert_non_null(big);
    assert_non_null(wide);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++)
        big[i] = (float)i * 0.37f - 900.0f;
    fz_cast(FZ_DT_F32, big, FZ_DT_F64, wide, n);
    fz_cast(FZ_DT_F32, big, FZ_DT_BF16, h, n);
    for (size_t i = 0; i < n; i++) {
        assert_true(wide[i] == (double)big[i]);
        assert_int_equal(h[i], fz_f32_to_bf16(big[i]));
    }
    free(big);
    free(wide);
    free(h);
}

/* Every f32 -> bf16 kernel this CPU runs gives the scalar conversion's bytes
 * (itself checked against torch above), and writes nothing past the end:
 * every sign, exponent and top mantissa half combined with the low halves
 * that decide the rounding (zero, one, below / at / above the tie, all ones;
 * Inf, NaNs and subnormals among them), then random bit patterns; at four
 * source and two destination alignments, and at every length up to 40
 * (the vector loops' tails). */
static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void test_bf16_kernels(void **state)
{
    (void)state;
    static const uint16_t lows[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF};
    size_t nsweep = 0x10000 * N_OF(lows), n = nsweep + 0x10000;
    uint32_t *in = malloc(4 * n), seed = 0x9E3779B9u;
    uint16_t *want = malloc(2 * n);
    uint8_t *src = malloc(4 * n + 3), *dst = malloc(2 * n + 3);
    assert_non_null(in);
    assert_non_null(want);
    assert_non_null(src);
    assert_non_null(dst);
    for (size_t i = 0; i < n; i++) {
        in[i] =
            i < nsweep ? (uint32_t)(i / N_OF(lows)) << 16 | lows[i % N_OF(lows)] : next_rand(&seed);
        want[i] = fz_f32_to_bf16(f32_of(in[i]));
    }
    const fz_cast_kernel *k;
    size_t nk = fz_cast_bf16_kernels(&k);
    for (size_t j = 0; j < nk; j++) {
        for (size_t a = 0; a < 4; a++) {
            size_t len = n - a, d = a & 1, bad = 0;
            memcpy(src + a, in, 4 * len);
            memset(dst, 0xA5, 2 * n + 3);
            k[j].run(src + a, dst + d, len);
            for (size_t i = 0; i < len; i++) {
                uint16_t got;
                memcpy(&got, dst + d + 2 * i, 2);
                if (got != want[i] && bad++ < 8)
                    print_error("%s: f32 0x%08X: got 0x%04X, scalar 0x%04X\n", k[j].name, in[i],
                                got, want[i]);
            }
            assert_int_equal(bad, 0);
            assert_int_equal(dst[d + 2 * len], 0xA5);
        }
        for (size_t len = 0; len <= 40; len++) {
            memset(dst, 0xA5, 2 * n + 3);
            k[j].run(in + 1000, dst, len);
            assert_memory_equal(dst, want + 1000, 2 * len);
            assert_int_equal(dst[2 * len], 0xA5);
        }
    }
    free(in);
    free(want);
    free(src);
    free(dst);
}

/* fz_cast uses the best kernel, or the baseline under FZFS_CAST_BASELINE
 * (meson runs this program both ways). On x86-64 the baseline is SSE2 and
 * AVX2 is offered exactly when the CPU has it. */
static void test_bf16_kernel_choice(void **state)
{
    (void)state;
    const fz_cast_kernel *k;
    size_t n = fz_cast_bf16_kernels(&k);
    const char *e = getenv("FZFS_CAST_BASELINE");
    int base = e && *e && strcmp(e, "0") != 0;
    assert_true(n >= 1);
    assert_ptr_equal(fz_cast_bf16_kernel(), &k[base ? 0 : n - 1]);
#if defined(__x86_64__) && defined(__GNUC__)
    assert_string_equal(k[0].name, "sse2");
    assert_int_equal(n, __builtin_cpu_supports("avx2") ? 2 : 1);
#endif
    print_message("fz_cast f32 -> bf16 uses %s\n", fz_cast_bf16_kernel()->name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_edges),
        cmocka_unit_test(test_edge_scalar),
        cmocka_unit_test(test_random_scalar),
        cmocka_unit_test(test_random_array),
        cmocka_unit_test(test_f64_sources),
        cmocka_unit_test(test_bf16_f16),
        cmocka_unit_test(test_f8_widen),
        cmocka_unit_test(test_exhaustive_16bit),
#ifdef __FLT16_MAX__
        cmocka_unit_test(test_f16_sweep_vs_compiler),
#endif
        cmocka_unit_test(test_supported_and_identity),
        cmocka_unit_test(test_bf16_kernels),
        cmocka_unit_test(test_bf16_kernel_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
