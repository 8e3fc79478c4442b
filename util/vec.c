#include "util/vec.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

int fz_vec_reserve_(void *pv, size_t *cap, size_t need, size_t elsz)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 8, bytes;
    while (c < need)
        c = c > SIZE_MAX / 2 ? need : 2 * c;
    if (__builtin_mul_overflow(c, elsz, &bytes)) {
        c = need; /* doubling overflowed; exactly `need` may still fit */
        if (__builtin_mul_overflow(c, elsz, &bytes))
            return fz_error_set(FZ_ENOMEM, "out of memory (%zu elements of %zu bytes)", need, elsz);
    }
    /* pv points to a T *: copied in and out with memcpy (no aliasing of a
     * T * as a void *), as every object pointer has the representation of a
     * void * on the POSIX systems fzfs builds for. */
    void *old, *grown;
    memcpy(&old, pv, sizeof old);
    if (!(grown = realloc(old, bytes)))
        return fz_error_set(FZ_ENOMEM, "out of memory (%zu bytes)", bytes);
    memcpy(pv, &grown, sizeof grown);
    *cap = c;
    return 0;
}
