/* Helpers shared by the libFuzzer harnesses in tests/fuzz/ (one program per
 * target, built with -Dfuzz=true; see run.sh).
 *
 * A harness runs one parser on the fuzzer's bytes and then checks what the
 * parser promised: on success the result is self-consistent (and, where the
 * project writes the format too, survives a write and a re-read unchanged);
 * on failure an error code and a message are set. A broken promise aborts,
 * which libFuzzer reports as a crash with the input saved. Memory errors,
 * undefined behaviour, leaks and timeouts are caught by the sanitizers and
 * libFuzzer themselves. */
#ifndef FZ_TESTS_FUZZ_COMMON_H
#define FZ_TESTS_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/error.h"
#include "util/log.h"

/* Abort with a message: the harness found a broken promise. */
#define FZ_FUZZ_CHECK(cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A failed call must say why: a negative FZ_E* code and a message. */
static inline void fz_fuzz_check_error(int rc)
{
    FZ_FUZZ_CHECK(rc < 0 && rc >= FZ_EINTR, "unexpected return code %d", rc);
    FZ_FUZZ_CHECK(fz_error_msg()[0] != '\0', "error %d without a message", rc);
}

/* Quiet logging: warnings about odd inputs are expected by the thousand. */
static inline void fz_fuzz_quiet(void)
{
    fz_log_set_level(FZ_LOG_CRITICAL);
}

/* One in-memory file reused for every input (the readers take an fd). */
static inline int fz_fuzz_memfile(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0) {
        fd = memfd_create("fzfs-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) {
        perror("memfd write");
        abort();
    }
    return fd;
}

/* A NUL-terminated copy of the input (the fuzzer's buffer is not). */
static inline char *fz_fuzz_strdup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* A whole file from the test data directory (FZ_FUZZ_DATA, set by meson):
 * the fixed half of a harness's input. NULL if it does not exist. */
static inline char *fz_fuzz_read_data(const char *rel, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", FZ_FUZZ_DATA, rel);
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (size_t got; b && (got = fread(b + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap && !(b = realloc(b, cap *= 2)))
            break;
    }
    fclose(f);
    if (!b)
        abort();
    b[n < cap ? n : cap - 1] = '\0';
    *len = n;
    return b;
}

#endif
