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

#include "fs/pidfile.h"
#include "util/error.h"
#include "util/log.h"

extern char **environ;

/* Undo /proc/self/mountinfo's octal escapes (\040 for a space...). */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

/* The topmost mount at `path`: its device, filesystem type and source
 * (both of at most 255 bytes, into fstype[256] and source[256]). */
static bool find_mount(const char *path, unsigned *maj, unsigned *min, char *fstype,
                       char *source)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return false;
    char *line = NULL;
    size_t cap = 0;
    bool found = false;
    while (getline(&line, &cap, f) > 0) {
        unsigned ma, mi;
        char mp[PATH_MAX], *sep;
        if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &ma, &mi, mp) != 3)
            continue;
        unescape(mp);
        if (strcmp(mp, path) || !(sep = strstr(line, " - ")))
            continue;
        char ty[256], so[256];
        if (sscanf(sep + 3, "%255s %255s", ty, so) != 2)
            continue;
        unescape(so);
        *maj = ma;
        *min = mi;
        snprintf(fstype, 256, "%s", ty);
        snprintf(source, 256, "%s", so);
        found = true; /* keep going: the last one listed is on top */
    }
    free(line);
    fclose(f);
    return found;
}

/* Absolute path of `mnt` without following the last component (whose
 * daemon may be dead: stat on it fails with ENOTCONN). */
static int mount_path(const char *mnt, char *out, size_t n)
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

static int run_fusermount(const char *path, bool lazy)
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
        return fz_error_set(FZ_EIO, "%s: fusermount3 -u failed", path);
    return 0;
}

int fz_umount(const char *mnt)
{
    char path[PATH_MAX], fstype[256], source[256], pidpath[PATH_MAX] = "";
    unsigned maj, min;
    int rc = mount_path(mnt, path, sizeof path);
    if (rc)
        return rc;
    if (!find_mount(path, &maj, &min, fstype, source))
        return fz_error_set(FZ_ENOTFOUND, "%s: not mounted", mnt);
    pid_t pid = fz_pidfile_daemon(maj, min, pidpath, sizeof pidpath);
    /* Ours: a FUSE mount of type fuse.fzfs, or, whatever -o subtype= made
     * the type, one whose daemon (alive or dead) left our pid file. */
    bool fuse = strcmp(fstype, "fuse") == 0 || strncmp(fstype, "fuse.", 5) == 0;
    bool pidfile = pid > 0 || (pidpath[0] && access(pidpath, F_OK) == 0);
    if (!fuse || (strcmp(fstype, "fuse.fzfs") && !pidfile))
        return fz_error_set(FZ_EINVAL, "%s: not an fzfs mount (filesystem type %s, source %s)",
                            mnt, fstype, source);
    unsigned long long start = fz_proc_start(pid);
    bool alive = pid > 0;

    if (umount2(path, 0) != 0) {
        int e = errno;
        if (e == EPERM && geteuid() != 0) {
            if ((rc = run_fusermount(path, !alive)))
                return rc;
        } else if (e == EBUSY && !alive) {
            /* The daemon died ("Transport endpoint is not connected") and
             * something still holds the mount: detach it. */
            if (umount2(path, MNT_DETACH) != 0)
                return fz_error_set(FZ_EIO, "%s: cannot detach: %s", mnt, strerror(errno));
        } else if (e == EBUSY) {
            return fz_error_set(FZ_EIO, "%s: target is busy (files open on the mount?)", mnt);
        } else {
            return fz_error_set(FZ_EIO, "%s: cannot unmount: %s", mnt, strerror(e));
        }
    }
    /* The daemon sees the unmount, finishes queued reads and closes the
     * cache (which syncs it): wait for that, so the cache is complete when
     * we return. */
    for (int i = 0; alive && i < 300; i++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        alive = fz_proc_start(pid) == start;
    }
    if (alive)
        fz_warn("%s: unmounted, but the daemon (pid %ld) is still running", mnt, (long)pid);
    else if (pid == 0 && pidpath[0])
        unlink(pidpath); /* a dead daemon's file; a live one removes its own */
    return 0;
}
