/* Write a view into a real directory, atomically: everything goes into a
 * temporary sibling of DEST, files are fsynced, and the sibling is renamed
 * onto DEST (which must not exist) only when complete. On any error or
 * SIGINT/SIGTERM the sibling is removed and DEST never appears. The
 * sibling is checked with verify/ before the rename: a model that fails a
 * check is not published (FZ_EFORMAT, the problems logged).
 *
 * Bytes come only from fz_view_read. Chunks are produced by a pool of
 * worker threads and written with pwrite; memory stays bounded by workers
 * x chunk size whatever the model size. Not reentrant: one materialize per
 * process at a time (it installs signal handlers for its duration). */
#ifndef FZ_MATERIALIZE_H
#define FZ_MATERIALIZE_H

#include <stdbool.h>

#include "view/view.h"

typedef struct {
    int workers;   /* 0 = one per online CPU */
    bool progress; /* draw a progress line on stderr */
} fz_mat_opts;

/* Errors: FZ_EEXIST (DEST exists), FZ_ENOTFOUND (DEST's parent missing),
 * FZ_EFORMAT (the written model fails verification),
 * FZ_EIO, FZ_EINTR (interrupted by a signal), or any fz_view_read error. */
int fz_materialize(fz_view *v, const char *dest, const fz_mat_opts *o);

#endif
