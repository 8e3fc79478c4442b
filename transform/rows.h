/* How one row of a resized embedding (or head) is made. One type on the
 * whole way: finalize's token_inits (addtokens.c, insertion order), the row
 * plan fz_meta_build hands the view (fz_meta_out.inits, sorted by row) and
 * the rules a recipe follows (fz_recipe_init). Pure data. */
#ifndef FZ_TRANSFORM_ROWS_H
#define FZ_TRANSFORM_ROWS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { FZ_INIT_MEAN, FZ_INIT_ZERO, FZ_INIT_COPY } fz_init_kind;

typedef struct {
    uint64_t row; /* the token id, i.e. the output row */
    fz_init_kind kind;
    uint64_t copy_from; /* FZ_INIT_COPY: the source row */
    bool new_token;     /* the row is a new token's (row plan only; else false) */
} fz_row_init;

#endif
