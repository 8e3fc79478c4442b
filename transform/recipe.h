/* Tensor recipes: how one output tensor's bytes are made from a source
 * tensor, and the kernel that produces any byte range of them.
 *
 * A recipe is a source tensor (file descriptor, dtype, strides, storage
 * offset) plus an op list applied in this order: gather (strided source ->
 * contiguous), resize rows (dim 0 grows or shrinks; each output row is a
 * source row, the column mean, zeros, or a copy of another source row),
 * cast (to the output dtype, bit-exact with torch). A recipe with no ops on a
 * contiguous source is served as a span by the view and never reaches the
 * kernel.
 *
 * fz_recipe_produce reads only the source ranges the requested bytes need,
 * with pread, so memory stays bounded by the request size. The column mean
 * for `mean` rows is a reduction over the whole source matrix; it is computed
 * once per recipe on first need and memoised: one thread computes it with
 * no lock held while others needing it wait; it is published under the
 * recipe's own lock. Thread-safe otherwise:
 * a recipe is immutable after fz_recipe_init. */
#ifndef FZ_TRANSFORM_RECIPE_H
#define FZ_TRANSFORM_RECIPE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/tensor.h"
#include "transform/quantize.h"
#include "transform/rows.h"
#include "util/buf.h"

/* What part of the output a recipe makes. */
typedef enum {
    FZ_PART_PLAIN,   /* the tensor itself (gather / resize / cast) */
    FZ_PART_QWEIGHT, /* quantized weight: packed I32, I8 or F8 rows */
    FZ_PART_QSCALE,  /* the per-channel / per-group scales of a quantized weight */
    FZ_PART_CONST,   /* fixed bytes (e.g. weight_shape) */
} fz_part;

typedef struct {
    fz_part part;
    const fz_qscheme *q; /* QWEIGHT / QSCALE */
    fz_dtype val_dtype;  /* dtype the source values are cast to before any op (the model dtype) */
    uint8_t *const_data; /* CONST: owned */
    /* source */
    int fd;               /* borrowed; held open by the view */
    const char *src_path; /* borrowed; for messages */
    fz_tensor src;        /* name borrowed (not freed by the recipe) */
    /* output */
    fz_dtype out_dtype;
    int ndim;
    uint64_t shape[FZ_MAX_DIMS]; /* output shape (dim 0 differs from src when resized) */
    uint64_t nbytes;
    /* ops */
    bool gather; /* source is not a contiguous whole: read element by element runs */
    bool resize;
    fz_row_init *rules; /* owned; rows whose content is not "source row r" (sorted by row) */
    size_t n_rules;
    bool cast;
    /* memo for FZ_INIT_MEAN: one output row in out_dtype */
    pthread_mutex_t mean_lock;
    pthread_cond_t mean_cond; /* signalled when a computation ends */
    bool mean_busy;           /* a thread is computing it (no lock held) */
    bool mean_done;
    uint8_t *mean_row; /* owned */
    bool inited;       /* mean_lock initialised */
} fz_recipe;

/* Initialise r for source tensor *src (copied; name borrowed) read from fd,
 * to be emitted as out_dtype with out_rows rows in dim 0 (== src rows when
 * not resizing). rules (may be NULL) are copied. Rows >= the source row
 * count not named in rules become FZ_INIT_MEAN.
 * Errors: FZ_EINVAL (cast not supported, resize of a 0-d tensor, a rule
 * naming a source row out of range), FZ_ERANGE, FZ_ENOMEM. */
int fz_recipe_init(fz_recipe *r, int fd, const char *src_path, const fz_tensor *src,
                   fz_dtype out_dtype, uint64_t out_rows, const fz_row_init *rules, size_t n_rules);
/* A quantized part (QWEIGHT or QSCALE) of 2-D source weight *src, whose
 * values are first cast to val_dtype (the model dtype; scales are stored in
 * it). Errors: FZ_EINVAL (not 2-D, not floating point), FZ_ERANGE. */
int fz_recipe_init_quant(fz_recipe *r, int fd, const char *src_path, const fz_tensor *src,
                         fz_dtype val_dtype, const fz_qscheme *q, fz_part part);
/* Fixed bytes: takes ownership of data (nbytes = numel(shape) x dtype size). */
int fz_recipe_init_const(fz_recipe *r, const char *name, fz_dtype dtype, int ndim,
                         const uint64_t *shape, uint8_t *data);
/* Release what the recipe owns. Also safe after a failed init. */
void fz_recipe_free(fz_recipe *r);

/* True when the output bytes are exactly the source's bytes in place: no
 * op at all. Then they can be served from (fd, span_offset). */
bool fz_recipe_is_span(const fz_recipe *r, uint64_t *span_offset);

/* Produce output bytes [off, off+len) into out. off and len need not be
 * element aligned. Errors: FZ_EIO (short read: the source changed or
 * vanished), FZ_ENOMEM. Thread-safe. */
int fz_recipe_produce(fz_recipe *r, uint64_t off, uint64_t len, uint8_t *out);

/* Canonical text form of the recipe (for cache keys and `plan`), appended to *out. */
int fz_recipe_describe(const fz_recipe *r, fz_buf *out);

#endif
