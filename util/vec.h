/* Growable arrays: any `T *v` with a `size_t cap` (its room, in elements)
 * beside it. The element count stays with the caller:
 *
 *     if ((rc = FZ_VEC_RESERVE(l->v, l->cap, l->n + 1)))
 *         return rc;
 *     l->v[l->n++] = x;
 *
 * FZ_VEC_RESERVE(v, cap, need) makes room for at least `need` elements; the
 * room at least doubles (8 elements first), so n appends copy O(n) elements.
 * It returns 0, or FZ_ENOMEM with the error set (out of memory, or `need`
 * elements overflow size_t), leaving v and cap as they were: the caller
 * still owns the elements it had. `v` must be an lvalue pointer (not an
 * array), `cap` a size_t lvalue; both are evaluated more than once.
 * Not thread-safe. */
#ifndef FZ_UTIL_VEC_H
#define FZ_UTIL_VEC_H

#include <stddef.h>

/* `pv` is the address of the array pointer (any object pointer type). */
int fz_vec_reserve_(void *pv, size_t *cap, size_t need, size_t elsz);

/* `(v) = NULL` (never evaluated) refuses an array where a pointer is meant. */
#define FZ_VEC_RESERVE(v, cap, need)                                                               \
    fz_vec_reserve_(&(v), &(cap), (need), sizeof *(v) + 0 * sizeof((v) = NULL))

#endif
