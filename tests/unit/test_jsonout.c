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
    assert_string_equal(emit(src, FZ_JSON_PY(2)),
                        "{\n  \"b\": [\n    1,\n    2.0,\n    {}\n  ],\n  \"a\": {\n    \"y\": null,\n"
                        "    \"x\": true\n  },\n  \"c\": []\n}");
    assert_string_equal(emit(src, FZ_JSON_HF(true)),
                        "{\n  \"a\": {\n    \"x\": true,\n    \"y\": null\n  },\n  \"b\": [\n    1,\n"
                        "    2.0,\n    {}\n  ],\n  \"c\": []\n}\n");
    fz_json_style compact = {0, false, true, false};
    assert_string_equal(emit(src, compact), "{\"b\": [1, 2.0, {}], \"a\": {\"y\": null, \"x\": true}, \"c\": []}");
    fz_json_style tight = {-1, true, true, false};
    assert_string_equal(emit(src, tight), "{\"a\":{\"x\":true,\"y\":null},\"b\":[1,2.0,{}],\"c\":[]}");
}

static void test_ints(void **state)
{
    (void)state;
    fz_json_style compact = {0, false, true, false};
    assert_string_equal(emit("[9223372036854775807, -9223372036854775808, 0, -0, 8.0, -0.0]", compact),
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

static void test_escapes(void **state)
{
    (void)state;
    fz_json_style ascii = {0, false, true, false};
    fz_json_style raw = {0, false, false, false};
    const char *src = "[\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f u\\u0001 \\u001f \\u007f caf\\u00e9 \\u6771 \\ud83d\\ude00 /\"]";
    assert_string_equal(emit(src, ascii),
                        "[\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f u\\u0001 \\u001f \x7f caf\\u00e9 \\u6771 "
                        "\\ud83d\\ude00 /\"]");
    assert_string_equal(emit(src, raw), "[\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f u\\u0001 \\u001f \x7f caf\xc3\xa9 "
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
        cmocka_unit_test(test_repr_table), cmocka_unit_test(test_repr_specials), cmocka_unit_test(test_layout),
        cmocka_unit_test(test_ints),       cmocka_unit_test(test_escapes),       cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_big_integers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
