/* Unit tests for util/error.c: strict UTF-8 validation and the escaping of
 * bytes from files in messages (a NUL or an invalid byte is shown, never
 * dropped or passed through). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/error.h"

static void test_utf8_valid(void **state)
{
    (void)state;
    assert_true(fz_utf8_valid("", 0));
    assert_true(fz_utf8_valid("model.norm.weight", 17));
    assert_true(fz_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9)); /* é € 😀 */
    assert_true(fz_utf8_valid("a\0b", 3));                                 /* NUL is UTF-8 */
    assert_false(fz_utf8_valid("\xff", 1));
    assert_false(fz_utf8_valid("\xc3", 1));             /* truncated */
    assert_false(fz_utf8_valid("\xc0\xae", 2));         /* overlong '.' */
    assert_false(fz_utf8_valid("\xe0\x80\xae", 3));     /* overlong, 3 bytes */
    assert_false(fz_utf8_valid("\xed\xa0\x80", 3));     /* surrogate U+D800 */
    assert_false(fz_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    assert_false(fz_utf8_valid("\xf0\x80\x80\xaf", 4)); /* overlong, 4 bytes */
    /* the length bounds the read: a valid lead byte at the end is incomplete */
    assert_false(fz_utf8_valid("ab\xe2\x82\xac", 4));
}

static void test_escape(void **state)
{
    (void)state;
    char out[64];
    assert_string_equal(fz_escape("torch._utils\0evil", 17, out, sizeof out),
                        "torch._utils\\x00evil");
    assert_string_equal(fz_escape("a\xff\n\xc3\xa9", 5, out, sizeof out), "a\\xFF\\x0A\xc3\xa9");
    assert_string_equal(fz_escape("\xed\xa0\x80", 3, out, sizeof out), "\\xED\\xA0\\x80");
    /* too long: cut at a character boundary and marked */
    char small[12];
    assert_string_equal(fz_escape("\x01\x02\x03\x04", 4, small, sizeof small), "\\x01\\x02...");
    assert_string_equal(fz_escape("abcdefghijklmnop", 16, small, sizeof small), "abcdefgh...");
    assert_string_equal(fz_escape("abc", 3, small, 0 + 4), "...");
}

static void test_messages_are_escaped(void **state)
{
    (void)state;
    assert_int_equal(fz_error_set(FZ_EFORMAT, "f: name '%s'", "x\xff\x1b[31m"), FZ_EFORMAT);
    assert_string_equal(fz_error_msg(), "f: name 'x\\xFF\\x1B[31m'");
    /* a surrogate encoded in UTF-8 is not UTF-8: escaped too */
    fz_error_set(FZ_EFORMAT, "%s", "\xed\xa0\x80");
    assert_string_equal(fz_error_msg(), "\\xED\\xA0\\x80");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_messages_are_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
