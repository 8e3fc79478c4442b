/* The mounts of this machine as /proc/self/mountinfo lists them (read
 * without touching any mount, so a mount whose daemon died is listed too).
 * No shared state; safe from any thread. */
#ifndef FZ_FS_MOUNTINFO_H
#define FZ_FS_MOUNTINFO_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *mnt;     /* mount point, unescaped */
    char *fstype;  /* "fuse.fzfs", "ext4", ... */
    char *source;  /* the mount's source (fzfs: the absolute SRC path) */
    char *options; /* per-mount options, then the superblock's, comma-joined */
    unsigned maj, min;
} fz_mountent;

/* Every mount, in mountinfo order (a later entry on the same point is on
 * top). Errors: FZ_EIO (cannot read /proc/self/mountinfo), FZ_ENOMEM. */
int fz_mounts_read(fz_mountent **out, size_t *n);
void fz_mounts_free(fz_mountent *m, size_t n);
/* The topmost entry at `path` (absolute, as mountinfo spells it), or NULL. */
const fz_mountent *fz_mounts_at(const fz_mountent *m, size_t n, const char *path);
/* Whether the entry is an fzfs mount: type fuse.fzfs, or a FUSE mount
 * whose daemon left an fzfs pid file (-o subtype= renames the type). */
bool fz_mount_is_fzfs(const fz_mountent *e);

#endif
