/* A hash index of uint32 values (items the caller keeps in its own
 * arrays): open addressing with linear probing, sized once for at most n
 * values. It stores each value with its 64-bit hash; a lookup asks the
 * caller's eq to confirm a candidate. View building uses it wherever it
 * would otherwise scan every earlier tensor for one like this one, so that
 * building is linear in the tensor count. */
#ifndef FZ_UTIL_HINDEX_H
#define FZ_UTIL_HINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *hash;
    uint32_t *val; /* UINT32_MAX = empty */
    size_t mask;
    size_t n, max;
} fz_hindex;

/* Does value `val` stand for the item ctx describes? */
typedef bool (*fz_hindex_eq_fn)(const void *ctx, uint32_t val);

/* Room for up to `max` values. 0 or FZ_ENOMEM; free with fz_hindex_free. */
int fz_hindex_init(fz_hindex *h, size_t max);
void fz_hindex_free(fz_hindex *h);
/* The stored value v with hash `hash` and eq(ctx, v), or UINT32_MAX. */
uint32_t fz_hindex_find(const fz_hindex *h, uint64_t hash, fz_hindex_eq_fn eq, const void *ctx);
/* Store val under hash (no check for an equal one; at most `max` values:
 * FZ_ENOMEM beyond). */
int fz_hindex_put(fz_hindex *h, uint64_t hash, uint32_t val);
/* A 64-bit hash of n bytes. */
uint64_t fz_hindex_hash(const void *p, size_t n);

#endif
