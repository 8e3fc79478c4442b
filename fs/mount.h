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
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "view/view.h"

typedef struct {
    const char *src;       /* SRC, for log lines and the nodes' mtime */
    bool foreground;       /* stay attached (no fork), log to stderr */
    const char *fuse_opts; /* extra "-o" options for libfuse, or NULL */
    int compute_threads;   /* threads computing tensor chunks; 0 = one per core (>= 2) */
    const char *log_file;  /* daemon's log (stderr) destination; NULL = one file per
                            * mount under $XDG_STATE_HOME/fzfs (mnt-<escaped MNT>.log) */
    const char *view_args; /* the view options as given (for fzfs status), or NULL */
    bool no_passthrough;   /* never use FUSE passthrough (also: FZFS_NO_PASSTHROUGH=1) */
    bool compute_on_read;  /* never compute a file whole at its open (fs/keep.h; also:
                            * FZFS_COMPUTE_ON_READ=1) */
    /* Cache (borrowed strings). The cache is opened in the serving process
     * (after the fork: an LMDB environment must not cross fork()). */
    bool use_cache;
    const char *cache_dir; /* NULL = fz_cache_default_dir() */
    uint64_t cache_size;   /* LMDB map size, 0 = default */
} fz_mount_opts;

/* Check that /dev/fuse is usable (else the message explains the container
 * case), that `mnt` exists, is a directory and is not already an fzfs mount
 * (the message names the source mounted there and `fzfs umount`). A
 * non-empty directory is accepted, as FUSE 3 does (an INFO line says its
 * entries are hidden while mounted). Errors: FZ_ENOTFOUND (missing / not a
 * directory), FZ_EEXIST (an fzfs mount), FZ_EIO. */
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
 * detached lazily, and so is any mount when `lazy` (its daemon keeps
 * serving the files still open and exits after the last close). Otherwise
 * waits (up to 30 s) for the serving daemon to finish flushing its cache.
 * Errors: FZ_ENOTFOUND (not a mount point), FZ_EINVAL (mounted, but not by
 * fzfs), FZ_EIO (busy: the message says how to find the holders and offers
 * --lazy; permission, ...). */
int fz_umount(const char *mnt, bool lazy);

/* Absolute path of `mnt` into out[n] without following its last component
 * (a mount whose daemon died fails a stat with ENOTCONN). Errors:
 * FZ_ENOTFOUND, FZ_ERANGE. */
int fz_mount_path(const char *mnt, char *out, size_t n);

/* `fzfs status`: the fzfs mounts of this machine (source, mount point,
 * options, daemon, log, cache, stale sources) as text or JSON on `out`,
 * from /proc/self/mountinfo joined with the status files the daemons keep
 * next to their pid files. Errors: FZ_EIO, FZ_ENOMEM. */
int fz_status_print(FILE *out, bool json);

#endif
