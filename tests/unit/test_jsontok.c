/* formats/jsontok.c: the flat-token JSON reader accepts exactly what
 * jansson accepts (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY) and reads the
 * same values: on hand-picked edge cases (escapes, surrogates, UTF-8,
 * numbers at the int64 and double limits, duplicate keys in small and large
 * objects, nesting at the depth limit) and on 30k mutants of a document;
 * the token layout (next, members, lookups); integers beyond 64 bits with
 * FZ_JTOK_BIGINT; the error message names the line and column. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "formats/jsonout.h"
#include "formats/jsontok.h"
#include "util/error.h"

/* The reader and jansson agree on text[0..len): both refuse it, or both
 * accept it and read equal trees. */
static void agree(const char *text, size_t len)
{
    json_error_t e;
    json_t *want = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    fz_jdoc d;
    size_t at = 0;
    const char *why = NULL;
    int rc = fz_jtok_parse(&d, text, len, 0, &at, &why);
    if (!want) {
        if (rc != FZ_EFORMAT)
            fail_msg("jansson refuses (%s) what the reader accepts: %.*s", e.text, (int)len, text);
        assert_non_null(why);
        assert_true(at <= len);
    } else {
        if (rc != 0)
            fail_msg("the reader refuses (%s at %zu) what jansson accepts: %.*s", why, at, (int)len,
                     text);
        assert_int_equal(d.t[0].next, d.n);
        json_t *got = fz_jtok_to_json(&d, 0);
        assert_non_null(got);
        if (!json_equal(want, got))
            fail_msg("the reader reads another value than jansson: %.*s", (int)len, text);
        json_decref(got);
    }
    json_decref(want);
    fz_jtok_free(&d);
}

static void agree_s(const char *text)
{
    agree(text, strlen(text));
}

static void test_edge_cases(void **state)
{
    (void)state;
    static const char *const cases[] = {
        /* structure */
        "",
        " ",
        "{}",
        "[]",
        " { } ",
        "[ ]",
        "{",
        "[",
        "}",
        "]",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{,}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\" 1}",
        "{1:2}",
        "[1 2]",
        "[1][2]",
        "{} x",
        "[]  \n\t\r",
        "[\"a\",{\"b\":[null,true,false]},{}]",
        "{\"a\":{\"a\":{\"a\":[]}}}",
        /* scalars at the top */
        "1",
        "-1",
        "\"s\"",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "nulls",
        "TRUE",
        "True",
        "truefalse",
        "[true false]",
        "[truex]",
        /* numbers */
        "0",
        "-0",
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "-.5",
        "1.5",
        "1e",
        "1e+",
        "1E5",
        "1e-5",
        "-",
        "-a",
        "+1",
        "1.0e+2",
        "0.0",
        "1x",
        "[1.5e3]",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999",
        "1e400",
        "-1e400",
        "1e-400",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "0e0",
        "0E-0",
        "123456789.123456789e-20",
        /* strings */
        "\"\"",
        "\"abc\"",
        "\"a\\\"b\"",
        "\"\\\\\\/\\b\\f\\n\\r\\t\"",
        "\"\\x\"",
        "\"\\u0041\"",
        "\"\\u00e9\\u4e2d\"",
        "\"\\uD83D\\uDE00\"",
        "\"\\ud83d\\ude00\"",
        "\"\\uD83D\"",
        "\"\\uD83Dx\"",
        "\"\\uD83D\\u0041\"",
        "\"\\uDE00\"",
        "\"\\uDC00\"",
        "\"\\uDFFF\"",
        "\"\\uDBFF\\uDFFF\"",
        "\"\\uD800\\uDC00\"",
        "\"\\uDBFF\\uE000\"",
        "\"\\uD7FF\\uE000\\uFFFF\"",
        "\"\\u0000\"",
        "\"\\u00\"",
        "\"\\u00G1\"",
        "\"\\",
        "\"abc",
        "\"a\tb\"",
        "\"a\nb\"",
        "\"\x7f\"",
        "\"\x1f\"",
        "\"\xc3\xa9\"",
        "\"\xe4\xb8\xad\"",
        "\"\xf0\x9f\x98\x80\"",
        "\"\xc0\x80\"",
        "\"\xc3\"",
        "\"\x80\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xf5\x80\x80\x80\"",
        "\"\xe0\x80\x80\"",
        "\"\xf0\x80\x80\x80\"",
        "\"\xff\"",
        "\xc3\xa9",
        "[\"\xc3\xa9\", 1]",
        /* keys */
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"b\":2}",
        "{\"a\":1,\"\\u0061\":2}",
        "{\"\":1,\"\":2}",
        "{\"\\u00e9\":1,\"\xc3\xa9\":2}",
        "{\"a\":{\"a\":1},\"b\":{\"a\":1}}",
        "{\"x\":{\"y\":1,\"y\":2}}",
        "{\"\\u0000\":1}",
        "{\"a\\nb\":1}",
        "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9,\"j\":10}",
        "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9,\"a\":10}",
        "{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,\"g\":7,\"h\":8,\"i\":9,\"\\u0069\":0}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        agree_s(cases[i]);
    /* a NUL byte inside and outside a string */
    agree("[\"a\0b\"]", 7);
    agree("[1,\0 2]", 7);
    agree("[1]\0", 4);
    /* jansson skips a NUL right after a number or literal; the reader refuses it */
    static const char *const nul_after[] = {"[1\0]", "[true\0]", "{\"a\":1\0}", "1\0"};
    static const size_t nul_len[] = {4, 7, 8, 2};
    for (size_t i = 0; i < 4; i++) {
        fz_jdoc d;
        size_t at;
        const char *why;
        assert_int_equal(fz_jtok_parse(&d, nul_after[i], nul_len[i], 0, &at, &why), FZ_EFORMAT);
        fz_jtok_free(&d);
    }
}

/* n arrays nested, with `inner` (or nothing) in the innermost. */
static void nested(size_t n, const char *inner)
{
    size_t il = strlen(inner), len = 2 * n + il;
    char *t = malloc(len);
    assert_non_null(t);
    memset(t, '[', n);
    memcpy(t + n, inner, il);
    memset(t + n + il, ']', n);
    agree(t, len);
    free(t);
}

static void test_depth_limit(void **state)
{
    (void)state;
    for (size_t n = FZ_JTOK_MAX_DEPTH - 2; n <= FZ_JTOK_MAX_DEPTH + 1; n++) {
        nested(n, "");
        nested(n, "1");
        nested(n, "{}");
        nested(n, "{\"a\":1}");
    }
}

/* Objects large enough for the hash check of duplicate keys. */
static void test_large_objects(void **state)
{
    (void)state;
    char *t = malloc(64 * 1000 + 16);
    assert_non_null(t);
    for (int dup = 0; dup < 3; dup++) {
        size_t o = 0;
        t[o++] = '{';
        for (int i = 0; i < 1000; i++) {
            /* dup 1: the last key repeats k3; dup 2: the same through an escape */
            char key[16];
            snprintf(key, sizeof key, dup == 2 && i == 999 ? "\\u006b3" : "k%d",
                     dup && i == 999 ? 3 : i);
            o += (size_t)sprintf(t + o, "%s\"%s\":[%d]", i ? "," : "", key, i);
        }
        t[o++] = '}';
        agree(t, o);
        fz_jdoc d;
        size_t at;
        const char *why;
        int rc = fz_jtok_parse(&d, t, o, 0, &at, &why);
        assert_int_equal(rc, dup ? FZ_EFORMAT : 0);
        if (dup)
            assert_string_equal(why, "duplicate object key");
        fz_jtok_free(&d);
    }
    free(t);
}

/* 30k mutants of a document that has every kind of value: the reader and
 * jansson agree on each (a fixed generator: the same mutants every run). */
static void test_mutants(void **state)
{
    (void)state;
    static const char base[] =
        "{\"__metadata__\":{\"format\":\"pt\"},\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,"
        "3],\"data_offsets\":[0,24]},\"b\\u00e9\\n\":[-1.5e3,true,false,null,\"\\uD83D\\uDE00"
        "\"],\"c\":{\"d\":{}},\"e\":[[]],\"f\":-9223372036854775808,\"g\":\"\xc3\xa9\"}";
    static const char alphabet[] = "{}[]\",:\\u0123456789.eE+-tfnalrsx \n\x80\xc3\xed\xf4";
    uint64_t x = 0x9E3779B97F4A7C15u;
    char buf[sizeof base + 8];
    for (int m = 0; m < 30000; m++) {
        size_t len = sizeof base - 1;
        memcpy(buf, base, len);
        int edits = 1 + (int)(m % 3);
        for (int e = 0; e < edits; e++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t at = (size_t)(x % len);
            char c = alphabet[(x >> 32) % (sizeof alphabet - 1)];
            switch ((x >> 48) % 3) {
            case 0: /* replace */
                buf[at] = c;
                break;
            case 1: /* delete */
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
                break;
            default: /* insert */
                if (len < sizeof buf) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = c;
                    len++;
                }
            }
        }
        agree(buf, len);
    }
}

static void test_layout_and_lookups(void **state)
{
    (void)state;
    const char *t = "{\"a\": [1, [2, 3], {}], \"b\\u00e9\": {\"x\": \"y\"}, \"c\": -7}";
    fz_jdoc d;
    size_t at;
    const char *why;
    assert_int_equal(fz_jtok_parse(&d, t, strlen(t), 0, &at, &why), 0);
    assert_int_equal(d.t[0].type, FZ_JT_OBJECT);
    assert_int_equal(d.t[0].n, 3);
    uint32_t a = fz_jtok_get(&d, 0, "a");
    assert_int_equal(d.t[a].type, FZ_JT_ARRAY);
    assert_int_equal(d.t[a].n, 3);
    assert_int_equal(fz_jtok_int(&d, a + 1), 1);
    assert_int_equal(d.t[a + 2].type, FZ_JT_ARRAY);
    assert_int_equal(d.t[d.t[a + 2].next].type, FZ_JT_OBJECT); /* past [2, 3] */
    uint32_t b = fz_jtok_get(&d, 0, "b\xc3\xa9");
    assert_int_not_equal(b, UINT32_MAX);
    assert_true(d.t[b - 1].decoded);
    uint32_t y = fz_jtok_get(&d, b, "x");
    assert_true(fz_jtok_streq(&d, y, "y"));
    assert_false(fz_jtok_streq(&d, y, "yy"));
    char *s = fz_jtok_strdup(&d, b - 1);
    assert_string_equal(s, "b\xc3\xa9");
    free(s);
    assert_int_equal(fz_jtok_int(&d, fz_jtok_get(&d, 0, "c")), -7);
    assert_int_equal(fz_jtok_get(&d, 0, "d"), UINT32_MAX);
    assert_int_equal(fz_jtok_get(&d, a, "a"), UINT32_MAX); /* not an object */
    fz_jtok_free(&d);
}

static void test_bigint(void **state)
{
    (void)state;
    const char *t = "{\"n\": 123456789012345678901234567890, \"m\": -9223372036854775809}";
    fz_jdoc d;
    size_t at;
    const char *why;
    assert_int_equal(fz_jtok_parse(&d, t, strlen(t), 0, &at, &why), FZ_EFORMAT);
    assert_string_equal(why, "too big integer");
    fz_jtok_free(&d);
    assert_int_equal(fz_jtok_parse(&d, t, strlen(t), FZ_JTOK_BIGINT, &at, &why), 0);
    uint32_t n = fz_jtok_get(&d, 0, "n"), m = fz_jtok_get(&d, 0, "m");
    assert_int_equal(d.t[n].type, FZ_JT_BIGINT);
    assert_int_equal(d.t[m].type, FZ_JT_BIGINT);
    json_t *j = fz_jtok_to_json(&d, 0), *ref = fz_json_parse(t, strlen(t), "t.json");
    assert_string_equal(fz_json_bigint_digits(json_object_get(j, "n")),
                        "123456789012345678901234567890");
    assert_string_equal(fz_json_bigint_digits(json_object_get(j, "m")), "-9223372036854775809");
    assert_string_equal(fz_json_bigint_digits(json_object_get(ref, "n")),
                        "123456789012345678901234567890");
    json_decref(j);
    json_decref(ref);
    fz_jtok_free(&d);
}

static void test_error_message(void **state)
{
    (void)state;
    const char *t = "{\n  \"a\": 1,\n  \"b\": tru\n}";
    fz_jdoc d;
    size_t at;
    const char *why;
    assert_int_equal(fz_jtok_parse(&d, t, strlen(t), 0, &at, &why), FZ_EFORMAT);
    fz_jtok_free(&d);
    assert_int_equal(fz_jtok_error(t, at, why, "x/index.json"), FZ_EFORMAT);
    assert_string_equal(fz_error_msg(), "x/index.json: invalid JSON at line 3 column 8: "
                                        "invalid token");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_cases),         cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_large_objects),      cmocka_unit_test(test_mutants),
        cmocka_unit_test(test_layout_and_lookups), cmocka_unit_test(test_bigint),
        cmocka_unit_test(test_error_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
