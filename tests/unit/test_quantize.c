/* transform/quantize.c on hand-checked vectors. The expected values were
 * worked out from the rules in quantize.h and confirmed with torch 2.13
 * (tests/integration/quant_ref.py); the random-weight comparison against
 * that reference is tests/fixtures/check_quant_kernels.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "transform/quantize.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const char *const RECIPES[] = {
    "int8-dynamic-act-int4-weight",
    "int4-weight-only",
    "int8-weight-only",
    "int8-dynamic-act-int8-weight",
    "float8-dynamic-act-float8-weight",
};

static const fz_qscheme *find(const char *name)
{
    const fz_qscheme *q = fz_qscheme_find(name);
    assert_non_null(q);
    return q;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Scales and quantized bytes of one row, into fixed-size buffers. */
static void quant(const fz_qscheme *q, fz_dtype dt, const float *w, uint64_t in, uint8_t *scales,
                  uint8_t *out)
{
    fz_quant_row_scales(q, dt, w, in, scales);
    fz_quant_row(q, dt, w, in, scales, out);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_OF(RECIPES); i++) {
        const fz_qscheme *q = find(RECIPES[i]);
        assert_string_equal(q->recipe, RECIPES[i]);
        assert_non_null(strstr(fz_qscheme_names(), RECIPES[i]));
    }
    assert_null(fz_qscheme_find("int4"));
    assert_null(fz_qscheme_find(""));
    assert_null(fz_qscheme_find(NULL));

    const fz_qscheme *w4a8 = find("int8-dynamic-act-int4-weight");
    assert_string_equal(w4a8->format, "int-quantized");
    assert_int_equal(w4a8->fmt, FZ_QFMT_INT8);
    assert_int_equal(w4a8->bits, 4);
    assert_int_equal(w4a8->group, 32);
    assert_true(w4a8->act_dynamic && w4a8->act_bits == 8 && !w4a8->act_float);

    const fz_qscheme *w4 = find("int4-weight-only");
    assert_string_equal(w4->format, "pack-quantized");
    assert_int_equal(w4->fmt, FZ_QFMT_PACKED);
    assert_int_equal(w4->bits, 4);
    assert_int_equal(w4->group, 128);
    assert_false(w4->act_dynamic);

    const fz_qscheme *w8 = find("int8-weight-only");
    assert_string_equal(w8->format, "pack-quantized");
    assert_int_equal(w8->bits, 8);
    assert_int_equal(w8->group, 0);
    assert_false(w8->act_dynamic);

    const fz_qscheme *w8a8 = find("int8-dynamic-act-int8-weight");
    assert_string_equal(w8a8->format, "int-quantized");
    assert_int_equal(w8a8->fmt, FZ_QFMT_INT8);
    assert_int_equal(w8a8->bits, 8);
    assert_int_equal(w8a8->group, 0);
    assert_true(w8a8->act_dynamic && !w8a8->act_float);

    const fz_qscheme *fp8 = find("float8-dynamic-act-float8-weight");
    assert_string_equal(fp8->format, "float-quantized");
    assert_int_equal(fp8->fmt, FZ_QFMT_FP8);
    assert_true(fp8->is_float && fp8->bits == 8 && fp8->group == 0);
    assert_true(fp8->act_dynamic && fp8->act_float && fp8->act_bits == 8);
}

static void test_shapes(void **state)
{
    (void)state;
    const fz_qscheme *w4a8 = find("int8-dynamic-act-int4-weight");
    const fz_qscheme *w4 = find("int4-weight-only");
    const fz_qscheme *w8 = find("int8-weight-only");
    const fz_qscheme *fp8 = find("float8-dynamic-act-float8-weight");
    /* groups: ceil(in / group), the last one shorter */
    assert_int_equal(fz_quant_ngroups(w4a8, 32), 1);
    assert_int_equal(fz_quant_ngroups(w4a8, 40), 2);
    assert_int_equal(fz_quant_ngroups(w4, 128), 1);
    assert_int_equal(fz_quant_ngroups(w4, 200), 2);
    assert_int_equal(fz_quant_ngroups(w4, 64), 1);
    assert_int_equal(fz_quant_ngroups(w8, 4096), 1);
    assert_int_equal(fz_quant_ngroups(fp8, 7), 1);
    /* packed: ceil(in * bits / 32) int32 words */
    assert_int_equal(fz_quant_row_bytes(w4, 200), 100);
    assert_int_equal(fz_quant_row_bytes(w4, 8), 4);
    assert_int_equal(fz_quant_row_bytes(w4, 13), 8);
    assert_int_equal(fz_quant_row_bytes(w4, 1), 4);
    assert_int_equal(fz_quant_row_bytes(w8, 4), 4);
    assert_int_equal(fz_quant_row_bytes(w8, 5), 8);
    /* unpacked: one byte per value */
    assert_int_equal(fz_quant_row_bytes(w4a8, 40), 40);
    assert_int_equal(fz_quant_row_bytes(fp8, 13), 13);
}

/* absmax 7.5 -> scale exactly 1, so w / scale = w and every .5 is a tie:
 * 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, -2.5 -> -2,
 * 7.5 -> 8 clamped to 7, -7.5 -> -8. u = q + 8 = 15 8 10 10 8 6 6 0, packed
 * low nibble first: bytes 8F AA 68 06, the LE word 0x0668AA8F (torch agrees). */
static void test_int4_ties_and_packing(void **state)
{
    (void)state;
    const fz_qscheme *w4 = find("int4-weight-only");
    const float w[8] = {7.5f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, -7.5f};
    uint8_t s[4], out[4];
    quant(w4, FZ_DT_F32, w, 8, s, out);
    assert_true(f32_of(le32(s)) == 1.0f);
    assert_int_equal(le32(out), 0x0668AA8Fu);

    /* The same row as I8 codes (W4A8, group 32, one short group of 8). */
    const fz_qscheme *w4a8 = find("int8-dynamic-act-int4-weight");
    const int8_t want[8] = {7, 0, 2, 2, 0, -2, -2, -8};
    int8_t q[8];
    quant(w4a8, FZ_DT_F32, w, 8, s, (uint8_t *)q);
    assert_memory_equal(q, want, 8);

    /* Scale dtypes: 1.0 in bf16 and f16. */
    uint8_t s2[2];
    quant(w4, FZ_DT_BF16, w, 8, s2, out);
    assert_int_equal(le16(s2), 0x3F80);
    assert_int_equal(le32(out), 0x0668AA8Fu);
    quant(w4, FZ_DT_F16, w, 8, s2, out);
    assert_int_equal(le16(s2), 0x3C00);
    assert_int_equal(le32(out), 0x0668AA8Fu);
}

/* The scale is rounded to the model dtype before dividing, which moves codes:
 * absmax 1 -> 1/7.5 = 0x3E088889 in f32; bf16 rounds it up to 0x3E09
 * (0.13379), f16 down to 0x3044 (0.13330). So -1 becomes -7 with a bf16
 * scale (-7.47) but -8 with an f16 one (-7.502 -> clamp); the f32 scale is
 * itself rounded up a little, so -1 gives -7.4999995 -> -7. */
static void test_scale_dtypes(void **state)
{
    (void)state;
    const fz_qscheme *w4a8 = find("int8-dynamic-act-int4-weight");
    const float w[4] = {1.0f, -1.0f, 0.5f, 0.25f};
    uint8_t s[4];
    int8_t q[4];

    quant(w4a8, FZ_DT_BF16, w, 4, s, (uint8_t *)q);
    assert_int_equal(le16(s), 0x3E09);
    const int8_t want_bf16[4] = {7, -7, 4, 2};
    assert_memory_equal(q, want_bf16, 4);

    quant(w4a8, FZ_DT_F16, w, 4, s, (uint8_t *)q);
    assert_int_equal(le16(s), 0x3044);
    const int8_t want_f16[4] = {7, -8, 4, 2};
    assert_memory_equal(q, want_f16, 4);

    quant(w4a8, FZ_DT_F32, w, 4, s, (uint8_t *)q);
    assert_int_equal(le32(s), 0x3E088889u);
    const int8_t want_f32[4] = {7, -7, 4, 2}; /* 0x3E088889 > 2/15: -1 -> -7.4999995 */
    assert_memory_equal(q, want_f32, 4);
}

/* An all-zero row: scale = torch.finfo(dtype).eps (bf16 2^-7, f16 2^-10,
 * f32 2^-23, as compressed-tensors' calculate_qparams), every code 0. */
static void test_zero_row(void **state)
{
    (void)state;
    float z[40] = {0};
    uint8_t s[8], out[64];
    const fz_dtype dts[3] = {FZ_DT_BF16, FZ_DT_F16, FZ_DT_F32};

    for (size_t r = 0; r < N_OF(RECIPES); r++) {
        const fz_qscheme *q = find(RECIPES[r]);
        uint64_t rb = fz_quant_row_bytes(q, 40), ng = fz_quant_ngroups(q, 40);
        for (size_t d = 0; d < 3; d++) {
            memset(out, 0xAA, sizeof(out));
            quant(q, dts[d], z, 40, s, out);
            for (uint64_t g = 0; g < ng; g++) {
                if (dts[d] == FZ_DT_BF16)
                    assert_int_equal(le16(s + 2 * g), 0x3C00);
                else if (dts[d] == FZ_DT_F16)
                    assert_int_equal(le16(s + 2 * g), 0x1400);
                else
                    assert_int_equal(le32(s + 4 * g), 0x34000000u);
            }
            /* q = 0: packed u = 8 (int4, nibbles 0x88) or 128 (int8) */
            uint8_t b = q->fmt != FZ_QFMT_PACKED ? 0x00 : q->bits == 4 ? 0x88 : 0x80;
            for (uint64_t i = 0; i < rb; i++)
                assert_int_equal(out[i], b);
        }
    }
}

/* Zeros among values stay 0 (and +-0 both give code 0), and an absmax
 * taken from a negative value puts -absmax exactly on q_min. */
static void test_zeros_and_negative_max(void **state)
{
    (void)state;
    const fz_qscheme *w8a8 = find("int8-dynamic-act-int8-weight");
    const float w[5] = {0.0f, -0.0f, -127.5f, 126.5f, 2.5f};
    uint8_t s[4];
    int8_t q[5];
    quant(w8a8, FZ_DT_F32, w, 5, s, (uint8_t *)q);
    assert_true(f32_of(le32(s)) == 1.0f);
    const int8_t want[5] = {0, 0, -128, 126, 2}; /* 126.5 and 2.5: ties to even */
    assert_memory_equal(q, want, 5);
}

/* in = 40 with group 32: the second group is columns 32..39 and its absmax is
 * over those 8 only. Group 0: w[0] = 15 -> scale 2, w[i] = i%16 - 8 gives
 * w/2 = -4 -3.5 -3 -2.5 -2 -1.5 -1 -.5 0 .5 1 1.5 2 2.5 3 3.5 -> the table
 * below (ties to even). Group 1: absmax 3.75 -> scale 0.5. */
static void test_group_remainder_40(void **state)
{
    (void)state;
    const fz_qscheme *w4a8 = find("int8-dynamic-act-int4-weight");
    static const int8_t by_k[16] = {-4, -4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4};
    float w[40];
    int8_t want[40];
    w[0] = 15.0f;
    want[0] = 7; /* 7.5 -> 8 -> 7 */
    for (int i = 1; i < 32; i++) {
        w[i] = (float)(i % 16) - 8.0f;
        want[i] = by_k[i % 16];
    }
    const float tail[8] = {3.75f, -3.75f, 0.25f, 0.75f, 1.25f, -0.25f, 1.0f, 0.0f};
    const int8_t tail_q[8] = {7, -8, 0, 2, 2, 0, 2, 0};
    memcpy(w + 32, tail, sizeof(tail));
    memcpy(want + 32, tail_q, sizeof(tail_q));

    uint8_t s[8];
    int8_t q[40];
    quant(w4a8, FZ_DT_F32, w, 40, s, (uint8_t *)q);
    assert_true(f32_of(le32(s)) == 2.0f);
    assert_true(f32_of(le32(s + 4)) == 0.5f);
    assert_memory_equal(q, want, 40);

    quant(w4a8, FZ_DT_BF16, w, 40, s, (uint8_t *)q);
    assert_int_equal(le16(s), 0x4000);
    assert_int_equal(le16(s + 2), 0x3F00);
    assert_memory_equal(q, want, 40);
}

/* in = 200 with group 128: group 1 is columns 128..199 (72 values). Packed
 * into 25 words = 100 bytes, no padding. */
static void test_group_remainder_200(void **state)
{
    (void)state;
    const fz_qscheme *w4 = find("int4-weight-only");
    float w[200];
    for (int i = 0; i < 200; i++)
        w[i] = i < 128 ? 1.0f : 0.0f;
    w[0] = 7.5f;     /* group 0 scale 1: q = 7, then 1s (u = 15, 9, 9, ...) */
    w[198] = 0.25f;  /* group 1 scale 0.5: 0.5 -> 0, u = 8 */
    w[199] = -3.75f; /* -7.5 -> -8, u = 0 */
    uint8_t s[4], out[100];
    quant(w4, FZ_DT_F16, w, 200, s, out);
    assert_int_equal(le16(s), 0x3C00);     /* 1.0 */
    assert_int_equal(le16(s + 2), 0x3800); /* 0.5 */
    assert_int_equal(out[0], 0x9F);
    for (int i = 1; i < 64; i++)
        assert_int_equal(out[i], 0x99);
    for (int i = 64; i < 99; i++)
        assert_int_equal(out[i], 0x88);
    assert_int_equal(out[99], 0x08);
    assert_int_equal(le32(out + 96), 0x08888888u);
}

/* Zero padding at the end of a row: int4 in = 13 -> 2 words, nibbles 13..15
 * are u = 0; int8 in = 5 -> 2 words, bytes 5..7 are 0. 8-bit packing is
 * u = q + 128, least significant byte first (compressed-tensors'
 * pack_to_int32 with num_bits = 8). */
static void test_padding(void **state)
{
    (void)state;
    const fz_qscheme *w4 = find("int4-weight-only");
    float w[13];
    w[0] = 7.5f;
    for (int i = 1; i < 13; i++)
        w[i] = 1.0f;
    uint8_t s[4], out[8];
    memset(out, 0xEE, sizeof(out));
    quant(w4, FZ_DT_F32, w, 13, s, out);
    const uint8_t want4[8] = {0x9F, 0x99, 0x99, 0x99, 0x99, 0x99, 0x09, 0x00};
    assert_memory_equal(out, want4, 8);

    const fz_qscheme *w8 = find("int8-weight-only");
    const float w8v[5] = {127.5f, -127.5f, 0.5f, 1.5f, -2.5f};
    memset(out, 0xEE, sizeof(out));
    quant(w8, FZ_DT_F32, w8v, 5, s, out);
    assert_true(f32_of(le32(s)) == 1.0f);
    /* q = 127 (128 clamped), -128, 0, 2, -2 -> u = FF 00 80 82 7E, then pad */
    assert_int_equal(le32(out), 0x828000FFu);
    assert_int_equal(le32(out + 4), 0x0000007Eu);
}

/* fp8: a scale that rounds far down in its dtype pushes w / scale past 448.
 * f16 model, absmax 627 * 2^-24 (an f16 subnormal): 627/448 * 2^-24 rounds
 * to 2^-24 (f16 0x0001), so the codes would be 627 and 470 without the clamp.
 * They must clamp to 448 (0x7E / 0xFE). 1 * 2^-24 -> 1.0 = 0x38. */
static void test_fp8_beyond_range(void **state)
{
    (void)state;
    const fz_qscheme *fp8 = find("float8-dynamic-act-float8-weight");
    const float u = 0x1p-24f;
    const float w[5] = {627 * u, -627 * u, 470 * u, 1 * u, 0.0f};
    uint8_t s[2], out[5];
    quant(fp8, FZ_DT_F16, w, 5, s, out);
    assert_int_equal(le16(s), 0x0001);
    const uint8_t want[5] = {0x7E, 0xFE, 0x7E, 0x38, 0x00};
    assert_memory_equal(out, want, 5);

    /* In range: absmax 448 -> scale 1 (bf16 0x3F80); 448 -> 0x7E, 1 -> 0x38,
     * 1.0625 (exactly between 1 and 1.125) -> even 0x38, -0.5 -> 0xB0. */
    const float v[4] = {448.0f, 1.0f, 1.0625f, -0.5f};
    uint8_t o2[4];
    quant(fp8, FZ_DT_BF16, v, 4, s, o2);
    assert_int_equal(le16(s), 0x3F80);
    const uint8_t want2[4] = {0x7E, 0x38, 0x38, 0xB0};
    assert_memory_equal(o2, want2, 4);
}

/* NaN: ignored by absmax; an int code of NaN is 0; fp8 keeps NaN. An
 * all-NaN row has absmax 0 -> eps scale. */
static void test_nan(void **state)
{
    (void)state;
    const float nan = __builtin_nanf("");
    const float w[4] = {nan, 7.5f, 1.5f, -3.0f};
    uint8_t s[4];
    int8_t q[4];
    quant(find("int8-dynamic-act-int4-weight"), FZ_DT_F32, w, 4, s, (uint8_t *)q);
    assert_true(f32_of(le32(s)) == 1.0f);
    const int8_t want[4] = {0, 7, 2, -3};
    assert_memory_equal(q, want, 4);

    uint8_t out[4];
    quant(find("int4-weight-only"), FZ_DT_BF16, w, 4, s, out);
    assert_int_equal(le16(s), 0x3F80);
    /* u = 8 15 10 5 -> bytes F8 5A, then padding */
    assert_int_equal(le32(out), 0x00005AF8u);

    const float f[3] = {nan, 448.0f, 1.0f};
    quant(find("float8-dynamic-act-float8-weight"), FZ_DT_F32, f, 3, s, out);
    assert_true(f32_of(le32(s)) == 1.0f);
    assert_int_equal(out[0] & 0x7F, 0x7F);
    assert_int_equal(out[1], 0x7E);
    assert_int_equal(out[2], 0x38);

    const float all[3] = {nan, nan, nan};
    quant(find("int8-weight-only"), FZ_DT_F16, all, 3, s, out);
    assert_int_equal(le16(s), 0x1400);
    assert_int_equal(le32(out), 0x00808080u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_int4_ties_and_packing),
        cmocka_unit_test(test_scale_dtypes),
        cmocka_unit_test(test_zero_row),
        cmocka_unit_test(test_zeros_and_negative_max),
        cmocka_unit_test(test_group_remainder_40),
        cmocka_unit_test(test_group_remainder_200),
        cmocka_unit_test(test_padding),
        cmocka_unit_test(test_fp8_beyond_range),
        cmocka_unit_test(test_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
