/* Private to fs/: the status file a mount daemon keeps for `fzfs status`
 * (next to its pid file; fs/pidfile.h): what is mounted with which
 * options, where it logs, its cache and read counters, and which sources
 * changed under it. Written whole (temp file + rename) when the daemon is
 * ready, then by a thread every ~2 s (or at once when poked) only when
 * something changed (it also checks the sources, so a change shows, and is
 * logged, without a read),
 * and removed when the daemon stops. */
#ifndef FZ_FS_STATUS_H
#define FZ_FS_STATUS_H

#include <sys/types.h>

#include "fs/ops.h"

typedef struct {
    const char *src, *mnt; /* absolute */
    const char *view_args; /* view options as given, or NULL */
    const char *fuse_opts; /* the FUSE options of the session */
    const char *log_file;  /* absolute, or NULL (no log) */
    const char *cwd;       /* to make relative source paths absolute */
} fz_status_info;

typedef struct fz_status fz_status;

/* Write the status file of mount `dev` and start its refresher. Strings in
 * `info` are copied. NULL (logged at DEBUG) when it cannot: status is an
 * aid, never a reason to fail a mount. */
fz_status *fz_status_start(fz_fs *fs, dev_t dev, const fz_status_info *info);
/* Refresh the file now rather than at the next period (the source watcher
 * saw a source change). Returns at once. */
void fz_status_poke(fz_status *s);
/* Stop the refresher and remove the file. NULL is accepted. */
void fz_status_stop(fz_status *s);

#endif
