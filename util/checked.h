/* Checked size arithmetic for anything computed from file contents.
 * Each returns false (and leaves *out unspecified) on overflow. */
#ifndef FZ_UTIL_CHECKED_H
#define FZ_UTIL_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

static inline bool fz_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

static inline bool fz_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

/* Product of n dimensions; false on overflow. An empty product is 1. */
static inline bool fz_prod_u64(const uint64_t *v, int n, uint64_t *out)
{
    uint64_t p = 1;
    for (int i = 0; i < n; i++)
        if (!fz_mul_u64(p, v[i], &p))
            return false;
    *out = p;
    return true;
}

#endif
