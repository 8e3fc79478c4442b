/* Write a view into a real directory, atomically: everything goes into a
 * temporary sibling of DEST, files are fsynced, and the sibling is renamed
 * onto DEST (which must not exist) only when complete. On any error or
 * stop request (a signal, see below) the sibling is removed and DEST never appears; a
 * sibling left by a materialize that could not clean up (kill -9, a crash)
 * is removed by the next materialize to the same DEST, once its process is
 * gone. The sibling is checked with verify/ before the rename: a model that
 * fails a check is not published (FZ_EFORMAT, the problems logged).
 *
 * Bytes come only from fz_view_read. Chunks are produced by a pool of
 * worker threads and written with pwrite; memory stays bounded by workers
 * x chunk size whatever the model size. Not reentrant: one materialize per
 * process at a time. Signals are the caller's: its handlers set the flag
 * `stop` points to, and materialize stops between chunks (cli/ does this
 * for SIGINT, SIGTERM and SIGHUP). */
#ifndef FZ_MATERIALIZE_H
#define FZ_MATERIALIZE_H

#include <signal.h>
#include <stdbool.h>

#include "view/view.h"

typedef struct {
    int workers;   /* 0 = one per online CPU */
    bool progress; /* draw a progress line on stderr */
    /* set non-zero (to the signal number) by the caller's signal handler to
     * stop: the sibling is removed, FZ_EINTR. NULL: never stopped. */
    volatile sig_atomic_t *stop;
} fz_mat_opts;

/* Check DEST before any work is done: a non-empty path that does not exist
 * (or is an empty directory, which is replaced), in an existing directory we
 * may write into. 0, or FZ_EUSAGE (empty),
 * FZ_EEXIST (DEST exists), FZ_ENOTFOUND (parent missing or not a directory),
 * FZ_EIO (parent not writable), each naming DEST. fz_materialize checks it
 * again. */
int fz_materialize_check_dest(const char *dest);

/* Errors: those of fz_materialize_check_dest, FZ_EFORMAT (the written model
 * fails verification), FZ_EIO, FZ_EINTR (interrupted by a signal), or any
 * fz_view_read error. */
int fz_materialize(fz_view *v, const char *dest, const fz_mat_opts *o);

#endif
