/* Private to fs/: the mount daemon's watcher of its source files.
 *
 * The view checks a source file's identity wherever the daemon serves its
 * bytes, but a file open in FUSE passthrough mode is read by the kernel
 * without asking the daemon. The watcher closes that gap as far as Linux
 * allows: one inotify watch per distinct directory holding a source file
 * (after symlinks are resolved), and on an event naming a source (or a
 * queue overflow, or the directory itself going away) the view's check of
 * that source runs at once (fz_view_source_changed: a change is marked,
 * sticky, and logged once at ERROR naming the source). `fzfs status` is
 * refreshed right away.
 *
 * A file made from a changed source is then revoked in the kernel: the
 * mount answers lookups of it with a new inode generation (fs/ops.c), the
 * watcher asks the kernel to drop every cached name (FUSE_NOTIFY_INC_EPOCH,
 * Linux 6.16+, libfuse 3.18+) and looks the file up on the mount, so the
 * kernel takes the inode it had for a reused one and marks it bad: every
 * later read(2) of a file already open fails with EIO, passthrough or not.
 * What the kernel cannot take back: a memory map made before the change
 * (and mmap(2) or splice of an fd opened before it) reads the changed
 * source (docs/design.md, "FUSE passthrough").
 *
 * Without inotify (none, out of watches, or a directory that cannot be
 * watched), a DEBUG line says so and changes are found as before: on open,
 * on reads through the daemon, and by the status refresh every 2 s.
 * inotify sees changes made through this kernel only (not those made by
 * another NFS client, say) and, for a directory watch, only through that
 * directory's name of the file (not through another hard link); the
 * status refresh still finds those within 2 s.
 *
 * Threading: one thread, started before the mount and joined after it is
 * gone. It shares the sticky flags of the view (atomics) and, under its
 * own lock, the state set by fz_watch_serving and fz_watch_quiesce. */
#ifndef FZ_FS_WATCH_H
#define FZ_FS_WATCH_H

#include "fs/ops.h"
#include "fs/status.h"

typedef struct fz_watch fz_watch;

/* Start watching the sources of fs->v (cwd: what relative source paths are
 * relative to, or NULL). The watches are set up on the watcher's thread.
 * NULL (logged at DEBUG) only when out of memory or no thread starts: the
 * watcher is an aid, never a reason to fail a mount. */
fz_watch *fz_watch_start(fz_fs *fs, const char *cwd);

/* The mount answers: the watcher may now send the kernel notices and look
 * files up on the mount, and refresh status `s` (NULL: none) on a change.
 * No-op after fz_watch_quiesce, and with w NULL. */
void fz_watch_serving(fz_watch *w, fz_status *s);

/* The session loop ended: no more notices to the kernel, no more status
 * refreshes. Call before fuse_session_unmount and fz_status_stop; returns
 * at once (the watcher never holds its lock across anything that waits).
 * NULL is accepted. */
void fz_watch_quiesce(fz_watch *w);

/* Stop the thread, wait for it and free the watcher. Call after
 * fuse_session_unmount: a lookup the watcher is making on the mount returns
 * once the connection is gone. Before the view is freed. NULL is accepted. */
void fz_watch_stop(fz_watch *w);

#endif
