/* Unit tests for util/io.c: fz_open_input / fz_check_input accept regular
 * files only, never block on a FIFO, and name the path and what it is;
 * fz_read_file goes through the same checks. */
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
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/error.h"
#include "util/io.h"

static char dir[64];

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static int setup(void **state)
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

static int teardown(void **state)
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
        cmocka_unit_test(test_regular_file_opens_blocking),
        cmocka_unit_test(test_fifo_is_refused_without_blocking),
        cmocka_unit_test(test_other_kinds_are_named),
        cmocka_unit_test(test_symlinks),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_read_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
