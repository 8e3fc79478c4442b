/* util/: checked arithmetic, the growable buffer and arrays, the hash index, errors
 * (messages, prefixes, errno mapping). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/buf.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/vec.h"

static void test_checked(void **state)
{
    (void)state;
    uint64_t r;
    assert_true(fz_add_u64(1, 2, &r) && r == 3);
    assert_false(fz_add_u64(UINT64_MAX, 1, &r));
    assert_true(fz_mul_u64(1ull << 31, 1ull << 32, &r) && r == 1ull << 63);
    assert_false(fz_mul_u64(1ull << 32, 1ull << 32, &r));
    assert_true(fz_mul_u64(0, UINT64_MAX, &r) && r == 0);
    uint64_t dims[] = {3, 5, 7};
    assert_true(fz_prod_u64(dims, 3, &r) && r == 105);
    assert_true(fz_prod_u64(dims, 0, &r) && r == 1); /* a scalar has one element */
    uint64_t big[] = {1ull << 40, 1ull << 30};
    assert_false(fz_prod_u64(big, 2, &r));
}

static void test_buf(void **state)
{
    (void)state;
    fz_buf b = FZ_BUF_INIT;
    assert_int_equal(fz_buf_puts(&b, "ab"), 0);
    assert_int_equal(fz_buf_putc(&b, 'c'), 0);
    assert_int_equal(fz_buf_printf(&b, "%d-%s", 42, "x"), 0);
    assert_int_equal(fz_buf_put_u16le(&b, 0x0102), 0);
    assert_int_equal(fz_buf_put_u32le(&b, 0x03040506), 0);
    assert_int_equal(fz_buf_put_u64le(&b, 0x0708090a0b0c0d0eull), 0);
    const uint8_t want[] = {'a',  'b',  'c',  '4',  '2',  '-',  'x',  0x02, 0x01, 0x06, 0x05,
                            0x04, 0x03, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 0x09, 0x08, 0x07};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    /* growth across many appends keeps every byte */
    for (int i = 0; i < 100000; i++)
        assert_int_equal(fz_buf_putc(&b, (char)('a' + i % 26)), 0);
    assert_int_equal(b.len, sizeof want + 100000);
    assert_int_equal(b.data[sizeof want + 99999], 'a' + 99999 % 26);
    size_t len;
    uint8_t *p = fz_buf_steal(&b, &len);
    assert_int_equal(len, sizeof want + 100000);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    free(p);
    fz_buf_free(&b);
}

static void test_vec(void **state)
{
    (void)state;
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    for (uint64_t i = 0; i < 10000; i++) {
        assert_int_equal(FZ_VEC_RESERVE(v, cap, n + 1), 0);
        assert_true(cap >= n + 1);
        v[n++] = i * i;
    }
    for (uint64_t i = 0; i < n; i++)
        assert_true(v[i] == i * i); /* every element survives the moves */
    assert_true(cap < 2 * n);       /* doubling, not one allocation per append */
    /* room already there: nothing moves */
    uint64_t *before = v;
    size_t had = cap;
    assert_int_equal(FZ_VEC_RESERVE(v, cap, 10), 0);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, had);
    /* a size that overflows is refused, and the array is still the caller's */
    assert_int_equal(FZ_VEC_RESERVE(v, cap, SIZE_MAX / 4), FZ_ENOMEM);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, had);
    assert_true(v[n - 1] == (n - 1) * (n - 1));
    free(v);
    /* any element type: an array of strings */
    char **s = NULL;
    size_t ns = 0, caps = 0;
    assert_int_equal(FZ_VEC_RESERVE(s, caps, 3), 0);
    s[ns++] = "a";
    assert_true(caps >= 3);
    free(s);
}

static const char *const *words;

static bool eq_word(const void *ctx, uint32_t val)
{
    return strcmp(words[val], ctx) == 0;
}

static void test_hindex(void **state)
{
    (void)state;
    enum { N = 5000 };
    static char store[N][16];
    static const char *ptrs[N];
    for (int i = 0; i < N; i++) {
        snprintf(store[i], sizeof store[i], "w%d", i * 7919 % 100003);
        ptrs[i] = store[i];
    }
    words = ptrs;
    fz_hindex h;
    assert_int_equal(fz_hindex_init(&h, N), 0);
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(fz_hindex_put(&h, fz_hindex_hash(ptrs[i], strlen(ptrs[i])), i), 0);
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(
            fz_hindex_find(&h, fz_hindex_hash(ptrs[i], strlen(ptrs[i])), eq_word, ptrs[i]), i);
    assert_int_equal(fz_hindex_find(&h, fz_hindex_hash("nope", 4), eq_word, "nope"), UINT32_MAX);
    /* full: one more is refused, not an overflow */
    assert_int_equal(fz_hindex_put(&h, 1, 0), FZ_ENOMEM);
    fz_hindex_free(&h);
    /* the same bytes hash the same; different bytes (almost surely) do not */
    assert_true(fz_hindex_hash("abc", 3) == fz_hindex_hash("abc", 3));
    assert_true(fz_hindex_hash("abc", 3) != fz_hindex_hash("abd", 3));
}

static void test_errors(void **state)
{
    (void)state;
    assert_int_equal(fz_error_set(FZ_EFORMAT, "%s: bad %d", "f.bin", 3), FZ_EFORMAT);
    assert_string_equal(fz_error_msg(), "f.bin: bad 3");
    assert_int_equal(fz_error_prefix(FZ_EFORMAT, "reading %s", "out.bin"), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "reading out.bin"));
    assert_non_null(strstr(fz_error_msg(), "f.bin: bad 3"));
    fz_error_clear();
    assert_string_equal(fz_error_msg(), "");
    /* a very long message is cut, not overflowed */
    char big[8192];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    fz_error_set(FZ_EIO, "%s", big);
    assert_true(strlen(fz_error_msg()) < sizeof big);
    /* the FUSE edge: codes to errno */
    assert_int_equal(fz_error_errno(FZ_EIO), EIO);
    assert_int_equal(fz_error_errno(FZ_ENOMEM), ENOMEM);
    assert_int_equal(fz_error_errno(FZ_ENOTFOUND), ENOENT);
    assert_true(fz_error_errno(FZ_EFORMAT) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checked), cmocka_unit_test(test_buf),    cmocka_unit_test(test_vec),
        cmocka_unit_test(test_hindex),  cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
