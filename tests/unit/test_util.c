/* util/: checked arithmetic, the growable buffer and arrays, the hash index,
 * errors (messages, prefixes, errno mapping, strict UTF-8 and the escaping
 * of file bytes in messages: a NUL or an invalid byte is shown, never
 * dropped or passed through) and input files (fz_open_input /
 * fz_check_input accept regular files only, never block on a FIFO, and name
 * the path and what it is; fz_read_file goes through the same checks). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/buf.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/io.h"
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
    assert_int_equal(fz_error_errno(FZ_EBUSY), EBUSY);
    assert_int_equal(fz_error_errno(FZ_ENOSPC), ENOSPC);
    assert_int_equal(fz_error_errno(FZ_ECANCELED), ECANCELED);
    assert_string_equal(fz_error_name(FZ_ECANCELED), "canceled");
    assert_true(fz_error_errno(FZ_EFORMAT) > 0);
}

/* ---- util/error.c: UTF-8 and escaping ---- */

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

/* ---- util/io.c: input files (one directory for the group) ---- */

static char dir[64];

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static int io_setup(void **state)
{
    (void)state;
    char p[128];
    snprintf(dir, sizeof dir, "/tmp/fz-test-io-XXXXXX");
    assert_non_null(mkdtemp(dir));
    path_of(p, sizeof p, "regular");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("hello", f);
    fclose(f);
    path_of(p, sizeof p, "fifo");
    assert_int_equal(mkfifo(p, 0600), 0);
    path_of(p, sizeof p, "subdir");
    assert_int_equal(mkdir(p, 0700), 0);
    path_of(p, sizeof p, "link");
    assert_int_equal(symlink("regular", p), 0);
    path_of(p, sizeof p, "link-to-fifo");
    assert_int_equal(symlink("fifo", p), 0);
    return 0;
}

static int io_teardown(void **state)
{
    (void)state;
    const char *names[] = {"regular", "fifo", "subdir", "link", "link-to-fifo", "sock"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        path_of(p, sizeof p, names[i]);
        (void)remove(p);
    }
    rmdir(dir);
    return 0;
}

/* The call returned the code and a message naming the path and the words. */
static void expect_refused(int rc, int code, const char *path, const char *words)
{
    assert_int_equal(rc, code);
    assert_non_null(strstr(fz_error_msg(), path));
    assert_non_null(strstr(fz_error_msg(), words));
}

static void test_regular_file_opens_blocking(void **state)
{
    (void)state;
    char p[128];
    struct stat st;
    int fd = -1;
    path_of(p, sizeof p, "regular");
    assert_int_equal(fz_open_input(p, 0, &fd, &st), 0);
    assert_true(fd >= 0);
    assert_int_equal(st.st_size, 5);
    int fl = fcntl(fd, F_GETFL);
    assert_int_equal(fl & O_NONBLOCK, 0); /* cleared again after the check */
    assert_int_not_equal(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    assert_int_equal(fl & O_ACCMODE, O_RDONLY);
    char buf[8];
    assert_int_equal(read(fd, buf, sizeof buf), 5);
    close(fd);
    assert_int_equal(fz_check_input(p, FZ_OPEN_NOFOLLOW, &st), 0);
}

static void test_fifo_is_refused_without_blocking(void **state)
{
    (void)state;
    char p[128];
    int fd = -1;
    path_of(p, sizeof p, "fifo");
    alarm(10); /* a blocking open would hang here: the alarm kills the test instead */
    expect_refused(fz_open_input(p, 0, &fd, NULL), FZ_EINVAL, p, "is a FIFO, not a regular file");
    assert_int_equal(fd, -1);
    expect_refused(fz_check_input(p, 0, NULL), FZ_EINVAL, p, "is a FIFO");
    char *data = NULL;
    size_t len = 0;
    expect_refused(fz_read_file(p, 1 << 20, &data, &len), FZ_EINVAL, p, "is a FIFO");
    assert_null(data);
    /* reached through a symlink: still the FIFO that is refused */
    path_of(p, sizeof p, "link-to-fifo");
    expect_refused(fz_open_input(p, 0, &fd, NULL), FZ_EINVAL, p, "is a FIFO");
    alarm(0);
}

static void test_other_kinds_are_named(void **state)
{
    (void)state;
    char p[128];
    int fd = -1;
    path_of(p, sizeof p, "subdir");
    expect_refused(fz_open_input(p, 0, &fd, NULL), FZ_EINVAL, p, "is a directory");
    expect_refused(fz_open_input("/dev/null", 0, &fd, NULL), FZ_EINVAL, "/dev/null",
                   "is a character device");
    path_of(p, sizeof p, "sock");
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    assert_true(strlen(p) < sizeof a.sun_path);
    memcpy(a.sun_path, p, strlen(p) + 1);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    expect_refused(fz_open_input(p, 0, &fd, NULL), FZ_EINVAL, p, "is a socket");
    close(s);
    assert_int_equal(fd, -1);
}

static void test_symlinks(void **state)
{
    (void)state;
    char p[128];
    int fd = -1;
    path_of(p, sizeof p, "link");
    assert_int_equal(fz_open_input(p, 0, &fd, NULL), 0); /* followed by default */
    close(fd);
    fd = -1;
    expect_refused(fz_open_input(p, FZ_OPEN_NOFOLLOW, &fd, NULL), FZ_EINVAL, p,
                   "is a symbolic link");
    expect_refused(fz_check_input(p, FZ_OPEN_NOFOLLOW, NULL), FZ_EINVAL, p, "is a symbolic link");
    assert_int_equal(fd, -1);
}

static void test_missing_file(void **state)
{
    (void)state;
    char p[128];
    int fd = -1;
    path_of(p, sizeof p, "nope");
    expect_refused(fz_open_input(p, 0, &fd, NULL), FZ_ENOTFOUND, p, "no such file");
    expect_refused(fz_check_input(p, 0, NULL), FZ_ENOTFOUND, p, "no such file");
    char *data = NULL;
    size_t len;
    expect_refused(fz_read_file(p, 16, &data, &len), FZ_ENOTFOUND, p, "no such file");
}

static void test_read_file(void **state)
{
    (void)state;
    char p[128], *data = NULL;
    size_t len = 0;
    path_of(p, sizeof p, "regular");
    assert_int_equal(fz_read_file(p, 16, &data, &len), 0);
    assert_int_equal(len, 5);
    assert_string_equal(data, "hello");
    free(data);
    data = NULL;
    expect_refused(fz_read_file(p, 4, &data, &len), FZ_ERANGE, p, "too large");
    assert_null(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checked), cmocka_unit_test(test_buf),
        cmocka_unit_test(test_vec),     cmocka_unit_test(test_hindex),
        cmocka_unit_test(test_errors),  cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_escape),  cmocka_unit_test(test_messages_are_escaped),
    };
    const struct CMUnitTest io_tests[] = {
        cmocka_unit_test(test_regular_file_opens_blocking),
        cmocka_unit_test(test_fifo_is_refused_without_blocking),
        cmocka_unit_test(test_other_kinds_are_named),
        cmocka_unit_test(test_symlinks),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_read_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) +
           cmocka_run_group_tests(io_tests, io_setup, io_teardown);
}
