/* Pid files: let `fzfs umount` find the daemon of a mount and wait until it
 * has flushed its cache. */
#include "fs/pidfile.h"

#include <errno.h>
#include <stdbool.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Pid files are keyed by the mount's device number, which `fzfs umount`
 * reads from /proc/self/mountinfo without touching the (maybe dead) mount. */
int fz_pidfile_path(char *out, size_t n, unsigned maj, unsigned min, bool mkdirs)
{
    char dir[PATH_MAX];
    const char *rt = getenv("XDG_RUNTIME_DIR");
    if (geteuid() == 0)
        snprintf(dir, sizeof dir, "/run/fzfs");
    else if (rt && *rt)
        snprintf(dir, sizeof dir, "%s/fzfs", rt);
    else
        snprintf(dir, sizeof dir, "/tmp/fzfs-%u", (unsigned)geteuid());
    if (mkdirs && mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -1;
    return (size_t)snprintf(out, n, "%s/%u:%u.pid", dir, maj, min) < n ? 0 : -1;
}

int fz_statusfile_path(char *out, size_t n, unsigned maj, unsigned min, bool mkdirs)
{
    if (fz_pidfile_path(out, n, maj, min, mkdirs) != 0)
        return -1;
    size_t l = strlen(out); /* ends in ".pid": same length as "json" */
    if (l + 1 >= n)
        return -1;
    strcpy(out + l - 3, "json");
    return 0;
}

/* Start time of a process (clock ticks since boot, /proc/PID/stat field
 * 22), 0 if it does not exist or is a zombie: with the pid it names one
 * process, whatever the binary is called. */
unsigned long long fz_proc_start(pid_t pid)
{
    char p[64], buf[1024];
    if (pid <= 0)
        return 0;
    snprintf(p, sizeof p, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *r = strrchr(buf, ')'); /* the name may contain spaces */
    if (!r)
        return 0;
    char state = 0;
    unsigned long long start = 0;
    if (sscanf(r + 1,
               " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d "
               "%*d %llu",
               &state, &start) != 2 ||
        state == 'Z')
        return 0;
    return start;
}

void fz_pidfile_write(dev_t dev)
{
    char path[PATH_MAX];
    if (fz_pidfile_path(path, sizeof path, major(dev), minor(dev), true) != 0)
        return;
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%ld %llu\n", (long)getpid(), fz_proc_start(getpid()));
        fclose(f);
    }
}

/* The daemon serving mount maj:min, if it is still alive; else 0. */
pid_t fz_pidfile_daemon(unsigned maj, unsigned min, char *path, size_t n)
{
    if (fz_pidfile_path(path, n, maj, min, false) != 0)
        return 0;
    FILE *f = fopen(path, "r");
    long pid = 0;
    unsigned long long start = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %llu", &pid, &start) != 2)
        pid = 0;
    fclose(f);
    return pid > 0 && start && fz_proc_start((pid_t)pid) == start ? (pid_t)pid : 0;
}
