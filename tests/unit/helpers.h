/* Helpers shared by the unit tests that need a scratch directory or a
 * cache: one copy instead of one per test file. Include after <cmocka.h>. */
#ifndef FZ_TESTS_UNIT_HELPERS_H
#define FZ_TESTS_UNIT_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"

/* Deterministic bytes for (seed, i): data that a wrong seed or offset changes. */
static inline uint8_t fz_test_byte_at(uint64_t seed, uint64_t i)
{
    uint64_t x = (seed + 1) * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return (uint8_t)(x ^ x >> 17);
}

/* A new empty directory /tmp/<prefix>_XXXXXX (caller frees the name). */
static inline char *fz_test_tmpdir(const char *prefix)
{
    char *d = malloc(strlen(prefix) + 16);
    if (!d) /* (not only assert_non_null: gcc with -fsanitize cannot see that it stops) */
        abort();
    sprintf(d, "/tmp/%s_XXXXXX", prefix);
    assert_non_null(mkdtemp(d));
    return d;
}

/* Remove a directory tree the test made. */
static inline void fz_test_rmtree(const char *d)
{
    char cmd[1024];
    assert_true((size_t)snprintf(cmd, sizeof cmd, "rm -rf '%s'", d) < sizeof cmd);
    assert_int_equal(system(cmd), 0);
}

/* Write `text` to dir/name (replacing it). */
static inline void fz_test_put(const char *dir, const char *name, const char *text)
{
    char p[1024];
    assert_true((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) < sizeof p);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A cache's counters (the call must succeed). */
static inline fz_cache_stats fz_test_cache_stats(fz_cache *c)
{
    fz_cache_stats s;
    assert_int_equal(fz_cache_get_stats(c, &s), 0);
    return s;
}

#endif
