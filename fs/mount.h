/* fzfs mount: a built view served as a read-only FUSE filesystem (libfuse3
 * low-level API, multithreaded), and its lifecycle: mount-point checks,
 * daemonizing with a readiness handshake, clean shutdown on signals, and
 * `fzfs umount`. This header includes no FUSE header; only fs/ does.
 *
 * Threading: fz_mount_serve runs the FUSE session loop on the calling
 * thread plus libfuse worker threads and a fixed compute pool; it returns
 * when the filesystem is unmounted or a SIGINT/SIGTERM/SIGHUP arrives (it
 * installs libfuse's handlers for its duration). One mount per process. */
#ifndef FZ_FS_MOUNT_H
#define FZ_FS_MOUNT_H

#include <stdbool.h>
#include <stdint.h>

#include "view/view.h"

typedef struct {
    const char *src;         /* SRC, for log lines and the nodes' mtime */
    bool foreground;         /* stay attached (no fork), log to stderr */
    const char *fuse_opts;   /* extra "-o" options for libfuse, or NULL */
    int compute_threads;     /* threads computing tensor chunks; 0 = one per core (>= 2) */
    const char *log_file;    /* daemon's log (stderr) destination; NULL = /dev/null */
    /* Cache (borrowed strings). The cache is opened in the serving process
     * (after the fork: an LMDB environment must not cross fork()). */
    bool use_cache;
    const char *cache_dir;   /* NULL = fz_cache_default_dir() */
    uint64_t cache_size;     /* LMDB map size, 0 = default */
} fz_mount_opts;

/* Check that `mnt` exists, is a directory, and is empty. Errors:
 * FZ_ENOTFOUND (missing / not a directory), FZ_EEXIST (not empty), FZ_EIO. */
int fz_mount_check_dir(const char *mnt);

/* Mount view `v` (borrowed; must outlive the call) on `mnt` and serve it.
 *
 * foreground: serve on this process until unmounted or signalled, then
 * unmount, flush and close the cache, and return 0 (or an error if the mount
 * failed). Otherwise fork: the child serves and then _exits (status 0 or 1)
 * without returning; the parent returns 0 only once the child's mount
 * answers a stat of `mnt` with the fzfs root, or the child's error (FZ_EIO
 * with its message) if the mount failed or did not answer in 30 s. Call
 * with no other threads running (fork).
 *
 * The view is checked with verify/ first; one that fails is not mounted
 * (FZ_EFORMAT, the problems logged).
 *
 * Errors: FZ_EIO (fuse_session_new / mount failed, readiness not reached
 * within 30 s), FZ_EUSAGE (bad -o option), FZ_ENOMEM. */
int fz_mount_serve(fz_view *v, const char *mnt, const fz_mount_opts *o);

/* Unmount an fzfs mount at `mnt` (fusermount3 -u semantics): umount2 as
 * root, fusermount3 -u otherwise; a mount whose daemon died (ENOTCONN) is
 * detached lazily. Waits (up to 30 s) for the serving daemon to finish
 * flushing its cache. Errors: FZ_ENOTFOUND (not a mount point),
 * FZ_EINVAL (mounted, but not by fzfs), FZ_EIO (busy, permission, ...). */
int fz_umount(const char *mnt);

#endif
