/* formats/jsonout.c: Python json.dump layout, repr floats, parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "formats/jsonout.h"
#include "util/error.h"

static const struct {
    uint64_t bits;
    const char *repr;
} table[] = {
#include "data/float_repr_table.inc"
};

static void test_repr_table(void **state)
{
    (void)state;
    char buf[40];
    for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
        double d;
        memcpy(&d, &table[i].bits, 8);
        fz_json_format_real(d, buf);
        assert_string_equal(buf, table[i].repr);
    }
}

static void test_repr_specials(void **state)
{
    (void)state;
    char buf[40];
    fz_json_format_real(1e-05, buf);
    assert_string_equal(buf, "1e-05");
    fz_json_format_real(1e16, buf);
    assert_string_equal(buf, "1e+16");
    fz_json_format_real(8.0, buf);
    assert_string_equal(buf, "8.0");
    fz_json_format_real(0.0 / 0.0, buf);
    assert_string_equal(buf, "NaN");
    fz_json_format_real(-1.0 / 0.0, buf);
    assert_string_equal(buf, "-Infinity");
    /* serde_json (tokenizers) style */
    fz_json_format_real_rust(-1e-7, buf);
    assert_string_equal(buf, "-1e-7");
    fz_json_format_real_rust(1e-5, buf);
    assert_string_equal(buf, "0.00001");
    fz_json_format_real_rust(1.5e16, buf);
    assert_string_equal(buf, "1.5e+16");
    fz_json_format_real_rust(9999999999999998.0, buf);
    assert_string_equal(buf, "9999999999999998.0");
    fz_json_format_real_rust(-5e-324, buf);
    assert_string_equal(buf, "-5e-324");
}

static char *emit(const char *text, fz_json_style st)
{
    static char out[4096];
    json_t *v = fz_json_parse(text, strlen(text), "t.json");
    assert_non_null(v);
    fz_buf b = FZ_BUF_INIT;
    assert_int_equal(fz_json_emit(v, &st, &b), 0);
    assert_true(b.len < sizeof out);
    memcpy(out, b.data, b.len);
    out[b.len] = '\0';
    fz_buf_free(&b);
    json_decref(v);
    return out;
}

static void test_layout(void **state)
{
    (void)state;
    const char *src = "{\"b\": [1, 2.0, {}], \"a\": {\"y\": null, \"x\": true}, \"c\": []}";
    assert_string_equal(
        emit(src, FZ_JSON_PY(2)),
        "{\n  \"b\": [\n    1,\n    2.0,\n    {}\n  ],\n  \"a\": {\n    \"y\": null,\n"
        "    \"x\": true\n  },\n  \"c\": []\n}");
    assert_string_equal(
        emit(src, FZ_JSON_HF(true)),
        "{\n  \"a\": {\n    \"x\": true,\n    \"y\": null\n  },\n  \"b\": [\n    1,\n"
        "    2.0,\n    {}\n  ],\n  \"c\": []\n}\n");
    fz_json_style compact = {0, false, true, false};
    assert_string_equal(emit(src, compact),
                        "{\"b\": [1, 2.0, {}], \"a\": {\"y\": null, \"x\": true}, \"c\": []}");
    fz_json_style tight = {-1, true, true, false};
    assert_string_equal(emit(src, tight),
                        "{\"a\":{\"x\":true,\"y\":null},\"b\":[1,2.0,{}],\"c\":[]}");
}

static void test_ints(void **state)
{
    (void)state;
    fz_json_style compact = {0, false, true, false};
    assert_string_equal(
        emit("[9223372036854775807, -9223372036854775808, 0, -0, 8.0, -0.0]", compact),
        "[9223372036854775807, -9223372036854775808, 0, 0, 8.0, -0.0]");
}

/* transformers writes model_max_length = int(1e30) when a tokenizer has none:
 * such integers must survive parse + emit exactly, strings that merely look
 * like numbers must not be touched, and 64-bit integers stay integers. */
static void test_big_integers(void **state)
{
    (void)state;
    fz_json_style compact = {0, false, true, false};
    const char *src = "{\"m\": 1000000000000000019884624838656, \"n\": -99999999999999999999,"
                      " \"s\": \"12345678901234567890123\", \"r\": 1.5e300,"
                      " \"i\": 9223372036854775807}";
    assert_string_equal(emit(src, compact),
                        "{\"m\": 1000000000000000019884624838656, \"n\": -99999999999999999999, "
                        "\"s\": \"12345678901234567890123\", \"r\": 1.5e+300, "
                        "\"i\": 9223372036854775807}");
    json_t *v = fz_json_parse(src, strlen(src), "t");
    assert_true(json_is_integer(json_object_get(v, "i")));
    assert_true(json_is_string(json_object_get(v, "s")));
    json_decref(v);
}

/* A string that begins like fzfs's old in-band big integer tag is a string:
 * it is written escaped (never raw, which let a tokenizer_config.json value
 * add members such as auto_map) and reads back the same. */
static void test_bigint_tag_is_a_string(void **state)
{
    (void)state;
    fz_json_style compact = {0, false, true, false};
    const char *src =
        "{\"m\": \"\\u0001fz-bigint:1, \\\"auto_map\\\": {\\\"AutoConfig\\\": \\\"x.Y\\\"}\","
        " \"k\": [\"\\u0001fz-bigint:12345678901234567890123\"]}";
    const char *want =
        "{\"m\": \"\\u0001fz-bigint:1, \\\"auto_map\\\": {\\\"AutoConfig\\\": \\\"x.Y\\\"}\", "
        "\"k\": [\"\\u0001fz-bigint:12345678901234567890123\"]}";
    assert_string_equal(emit(src, compact), want);
    fz_json_style raw = {2, true, false, true};
    json_t *v = fz_json_parse(src, strlen(src), "t");
    assert_non_null(v);
    for (int serde = 0; serde < 2; serde++) {
        fz_buf b = FZ_BUF_INIT;
        assert_int_equal(serde ? fz_json_emit_tokenizers(v, &b) : fz_json_emit(v, &raw, &b), 0);
        json_t *back = fz_json_parse((const char *)b.data, b.len, "back");
        assert_non_null(back);
        assert_true(json_equal(v, back));
        assert_null(json_object_get(back, "auto_map"));
        assert_string_equal(json_string_value(json_object_get(back, "m")),
                            "\001fz-bigint:1, \"auto_map\": {\"AutoConfig\": \"x.Y\"}");
        assert_null(fz_json_bigint_digits(json_object_get(back, "m")));
        json_decref(back);
        fz_buf_free(&b);
    }
    json_decref(v);
}

/* Big integers anywhere (arrays, nested objects, after keys and strings that
 * hold digits and colons) come back in place; copies keep them; nothing but
 * an integer literal can be a big integer node. */
static void test_big_integers_placed(void **state)
{
    (void)state;
    fz_json_style compact = {0, false, true, false};
    const char *src =
        "[\"a:\", 99999999999999999999, {\"12345678901234567890123\" : -9223372036854775809,"
        " \"b\": [true, null, 1.5, \"x\\\"\", 9223372036854775808]}, false,"
        " 123456789012345678901234567890]";
    const char *want =
        "[\"a:\", 99999999999999999999, {\"12345678901234567890123\": -9223372036854775809,"
        " \"b\": [true, null, 1.5, \"x\\\"\", 9223372036854775808]}, false,"
        " 123456789012345678901234567890]";
    assert_string_equal(emit(src, compact), want);
    json_t *v = fz_json_parse(src, strlen(src), "t");
    assert_non_null(v);
    assert_string_equal(fz_json_bigint_digits(json_array_get(v, 1)), "99999999999999999999");
    json_t *c = json_deep_copy(v);
    fz_buf b = FZ_BUF_INIT;
    assert_int_equal(fz_json_emit(c, &compact, &b), 0);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    fz_buf_free(&b);
    json_decref(c);
    json_decref(v);
    assert_null(fz_json_bigint("1, \"auto_map\": {}"));
    assert_null(fz_json_bigint("0123"));
    assert_null(fz_json_bigint("-"));
    assert_null(fz_json_bigint(""));
    json_t *n = fz_json_bigint("-1000000000000000019884624838656");
    assert_non_null(n);
    assert_string_equal(fz_json_bigint_digits(n), "-1000000000000000019884624838656");
    json_decref(n);
    /* an object a source file can write never is one */
    const char *look = "{\"\\u00fffz-bigint\": \"1\"}";
    assert_string_equal(emit(look, compact), "{\"\\u00fffz-bigint\": \"1\"}");
    /* not integer literals: still refused, with the file's own position */
    const char *zeros = "{\"a\": 000000000000000000000001}";
    assert_null(fz_json_parse(zeros, strlen(zeros), "z.json"));
    const char *late = "{\"a\": 100000000000000000000000000,\n \"b\": }";
    assert_null(fz_json_parse(late, strlen(late), "late.json"));
    assert_non_null(strstr(fz_error_msg(), "late.json: invalid JSON at line 2 column 7"));
}

static void test_escapes(void **state)
{
    (void)state;
    fz_json_style ascii = {0, false, true, false};
    fz_json_style raw = {0, false, false, false};
    const char *src = "[\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f u\\u0001 \\u001f \\u007f caf\\u00e9 "
                      "\\u6771 \\ud83d\\ude00 /\"]";
    assert_string_equal(
        emit(src, ascii),
        "[\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f u\\u0001 \\u001f \x7f caf\\u00e9 \\u6771 "
        "\\ud83d\\ude00 /\"]");
    assert_string_equal(emit(src, raw),
                        "[\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f u\\u0001 \\u001f \x7f caf\xc3\xa9 "
                        "\xe6\x9d\xb1 \xf0\x9f\x98\x80 /\"]");
}

static void test_parse_errors(void **state)
{
    (void)state;
    const char *dup = "{\"a\": 1,\n \"a\": 2}";
    assert_null(fz_json_parse(dup, strlen(dup), "SRC/config.json"));
    assert_non_null(strstr(fz_error_msg(), "SRC/config.json: invalid JSON at line 2"));
    const char *bad = "{\"a\": }";
    assert_null(fz_json_parse(bad, strlen(bad), "x.json"));
    assert_non_null(strstr(fz_error_msg(), "x.json: invalid JSON at line 1 column"));
    /* ints stay ints, reals stay reals */
    json_t *v = fz_json_parse("{\"i\": 8, \"r\": 8.0}", 18, "t");
    assert_true(json_is_integer(json_object_get(v, "i")));
    assert_true(json_is_real(json_object_get(v, "r")));
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repr_table),
        cmocka_unit_test(test_repr_specials),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_ints),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_big_integers),
        cmocka_unit_test(test_bigint_tag_is_a_string),
        cmocka_unit_test(test_big_integers_placed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
