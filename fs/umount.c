/* `fzfs umount`: unmount an fzfs mount, live or with a dead daemon, and
 * wait until its daemon has flushed the cache. */
#include "fs/mount.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs/mountinfo.h"
#include "fs/pidfile.h"
#include "util/error.h"
#include "util/log.h"

extern char **environ;

/* Absolute path of `mnt` without following the last component (whose
 * daemon may be dead: stat on it fails with ENOTCONN). */
int fz_mount_path(const char *mnt, char *out, size_t n)
{
    char tmp[PATH_MAX], parent[PATH_MAX];
    if (strlen(mnt) >= sizeof tmp)
        return fz_error_set(FZ_ERANGE, "%s: path too long", mnt);
    snprintf(tmp, sizeof tmp, "%s", mnt);
    size_t l = strlen(tmp);
    while (l > 1 && tmp[l - 1] == '/')
        tmp[--l] = 0;
    char *slash = strrchr(tmp, '/');
    const char *base = tmp, *dir = ".";
    if (slash) {
        *slash = 0;
        dir = slash == tmp ? "/" : tmp;
        base = slash + 1;
    }
    if (!realpath(dir, parent))
        return fz_error_set(FZ_ENOTFOUND, "%s: %s", mnt, strerror(errno));
    if (!strcmp(base, ".") || !strcmp(base, "..") || !*base) {
        if (!realpath(mnt, out))
            return fz_error_set(FZ_ENOTFOUND, "%s: %s", mnt, strerror(errno));
        return 0;
    }
    if ((size_t)snprintf(out, n, "%s%s%s", parent, strcmp(parent, "/") ? "/" : "", base) >= n)
        return fz_error_set(FZ_ERANGE, "%s: path too long", mnt);
    return 0;
}

static int run_fusermount(const char *mnt, const char *path, bool lazy)
{
    char *argv[] = {"fusermount3", "-u", lazy ? "-z" : NULL, (char *)path, NULL};
    if (!lazy) {
        argv[2] = (char *)path;
        argv[3] = NULL;
    }
    pid_t pid;
    int status;
    if (posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ) != 0)
        return fz_error_set(FZ_EIO, "%s: cannot run fusermount3", path);
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return fz_error_set(FZ_EIO,
                            "%s: fusermount3 -u failed (its message is above); if the "
                            "target is busy, list the holders with `fuser -vm %s` or detach it "
                            "now with `fzfs umount --lazy %s`",
                            path, mnt, mnt);
    return 0;
}

/* The busy-unmount message: who holds it and what to do. */
static int busy(const char *mnt)
{
    return fz_error_set(FZ_EIO,
                        "%s: target is busy: a process has a file or its working "
                        "directory on the mount (list them with `fuser -vm %s`); close them, "
                        "or detach the mount now with `fzfs umount --lazy %s` (it goes away "
                        "when the last one is closed)",
                        mnt, mnt, mnt);
}

int fz_umount(const char *mnt, bool lazy)
{
    char path[PATH_MAX], pidpath[PATH_MAX] = "";
    fz_mountent *ms = NULL;
    size_t nm = 0;
    int rc = fz_mount_path(mnt, path, sizeof path);
    if (rc || (rc = fz_mounts_read(&ms, &nm)))
        return rc;
    const fz_mountent *e = fz_mounts_at(ms, nm, path);
    if (!e) {
        fz_mounts_free(ms, nm);
        return fz_error_set(FZ_ENOTFOUND, "%s: not mounted", mnt);
    }
    if (!fz_mount_is_fzfs(e)) {
        rc = fz_error_set(FZ_EINVAL, "%s: not an fzfs mount (filesystem type %s, source %s)", mnt,
                          e->fstype, e->source);
        fz_mounts_free(ms, nm);
        return rc;
    }
    unsigned maj = e->maj, min = e->min;
    fz_mounts_free(ms, nm);
    pid_t pid = fz_pidfile_daemon(maj, min, pidpath, sizeof pidpath);
    unsigned long long start = fz_proc_start(pid);
    bool alive = pid > 0;

    if (umount2(path, lazy ? MNT_DETACH : 0) != 0) {
        int e = errno;
        if (e == EPERM && geteuid() != 0) {
            if ((rc = run_fusermount(mnt, path, lazy || !alive)))
                return rc;
        } else if (e == EBUSY && !alive) {
            /* The daemon died ("Transport endpoint is not connected") and
             * something still holds the mount: detach it. */
            if (umount2(path, MNT_DETACH) != 0)
                return fz_error_set(FZ_EIO, "%s: cannot detach: %s", mnt, strerror(errno));
        } else if (e == EBUSY) {
            return busy(mnt);
        } else {
            return fz_error_set(FZ_EIO, "%s: cannot unmount: %s", mnt, strerror(e));
        }
    }
    /* The daemon sees the unmount, finishes queued reads and closes the
     * cache (which syncs it): wait for that, so the cache is complete when
     * we return. */
    if (lazy && alive) {
        /* Detached: the daemon serves the files still open and exits when
         * the last one is closed. */
        fz_info("%s: detached; its daemon (pid %ld) exits when the last open file on it is "
                "closed",
                mnt, (long)pid);
        return 0;
    }
    for (int i = 0; alive && i < 300; i++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        alive = fz_proc_start(pid) == start;
    }
    if (alive)
        fz_warn("%s: unmounted, but the daemon (pid %ld) is still running", mnt, (long)pid);
    else if (pid == 0 && pidpath[0]) {
        /* A dead daemon's files; a live one removes its own. */
        char statpath[PATH_MAX];
        unlink(pidpath);
        if (fz_statusfile_path(statpath, sizeof statpath, maj, min, false) == 0)
            unlink(statpath);
    }
    return 0;
}
