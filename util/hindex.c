#include "util/hindex.h"

#include <stdlib.h>
#include <xxhash.h>

#include "util/error.h"

int fz_hindex_init(fz_hindex *h, size_t max)
{
    size_t cap = 16;
    while (cap < 2 * max) {
        if (cap > SIZE_MAX / 4 / sizeof *h->hash)
            return fz_error_set(FZ_ENOMEM, "out of memory");
        cap *= 2;
    }
    h->hash = malloc(cap * sizeof *h->hash);
    h->val = malloc(cap * sizeof *h->val);
    if (!h->hash || !h->val) {
        fz_hindex_free(h);
        return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < cap; i++)
        h->val[i] = UINT32_MAX;
    h->mask = cap - 1;
    h->n = 0;
    h->max = max;
    return 0;
}

void fz_hindex_free(fz_hindex *h)
{
    free(h->hash);
    free(h->val);
    h->hash = NULL;
    h->val = NULL;
    h->mask = h->n = h->max = 0;
}

uint32_t fz_hindex_find(const fz_hindex *h, uint64_t hash, fz_hindex_eq_fn eq, const void *ctx)
{
    if (!h->val)
        return UINT32_MAX;
    /* At most half full, so an empty slot ends every probe sequence. */
    for (size_t i = hash & h->mask; h->val[i] != UINT32_MAX; i = (i + 1) & h->mask)
        if (h->hash[i] == hash && eq(ctx, h->val[i]))
            return h->val[i];
    return UINT32_MAX;
}

int fz_hindex_put(fz_hindex *h, uint64_t hash, uint32_t val)
{
    if (!h->val || h->n >= h->max || val == UINT32_MAX)
        return fz_error_set(FZ_ENOMEM, "hash index full");
    size_t i = hash & h->mask;
    while (h->val[i] != UINT32_MAX)
        i = (i + 1) & h->mask;
    h->hash[i] = hash;
    h->val[i] = val;
    h->n++;
    return 0;
}

uint64_t fz_hindex_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}
