/* Mount lifecycle: session setup, daemonizing with a readiness handshake,
 * shutdown. The per-request work lives in fs/ops.c, unmounting in
 * fs/umount.c. */
#include "fs/mount.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs/mountinfo.h"
#include "fs/keep.h"
#include "fs/ops.h"
#include "fs/pidfile.h"
#include "fs/status.h"
#include "fs/watch.h"
#include "util/error.h"
#include "util/log.h"
#include "verify/verify.h"

#define FZ_FUSE_SUPER_MAGIC 0x65735546
#define FZ_READY_TIMEOUT_MS 30000
#define FZ_READAHEAD_KB 4096

/* /dev/fuse must exist and be readable and writable (containers often lack
 * it); the message says how to get it. */
static int check_dev_fuse(void)
{
    if (access("/dev/fuse", R_OK | W_OK) == 0)
        return 0;
    int e = errno;
    return fz_error_set(FZ_EIO,
                        "/dev/fuse: %s: fzfs mount needs the FUSE device. In a "
                        "container, start it with `--device /dev/fuse --cap-add SYS_ADMIN` "
                        "(docker/podman run); elsewhere load the module (`modprobe fuse`)%s; "
                        "or use `fzfs materialize`, which needs no FUSE",
                        e == ENOENT ? "does not exist" : strerror(e),
                        e == ENOENT ? "" : " and check the device's permissions");
}

int fz_mount_check_dir(const char *mnt)
{
    char path[PATH_MAX];
    fz_mountent *ms = NULL;
    size_t nm = 0;
    struct stat st;
    /* mountinfo first: a stat of a mount whose daemon died fails (ENOTCONN). */
    int rc = check_dev_fuse();
    if (rc)
        return rc;
    rc = fz_mount_path(mnt, path, sizeof path);
    if (rc == 0 && fz_mounts_read(&ms, &nm) == 0) {
        const fz_mountent *e = fz_mounts_at(ms, nm, path);
        if (e && fz_mount_is_fzfs(e))
            rc = fz_error_set(FZ_EEXIST,
                              "Mount point %s: already an fzfs mount (of %s); "
                              "unmount it first with `fzfs umount %s`",
                              mnt, e->source, mnt);
        fz_mounts_free(ms, nm);
        if (rc)
            return rc;
    }
    if (stat(mnt, &st) != 0)
        return fz_error_set(errno == ENOENT ? FZ_ENOTFOUND : FZ_EIO, "Mount point %s: %s", mnt,
                            errno == ENOENT ? "does not exist" : strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fz_error_set(FZ_ENOTFOUND, "Mount point %s: not a directory", mnt);
    DIR *d = opendir(mnt);
    if (!d)
        return fz_error_set(FZ_EIO, "Mount point %s: %s", mnt, strerror(errno));
    struct dirent *e;
    unsigned long n = 0;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    if (n)
        fz_info("Mount point %s is not empty: its %lu entr%s hidden while the view is mounted", mnt,
                n, n == 1 ? "y is" : "ies are");
    return 0;
}

/* ---- serving ------------------------------------------------------- */

/* libfuse's own messages (e.g. why a mount failed): keep the last one so a
 * daemon can hand it to the parent, and pass them to our log. libfuse logs
 * from any of its threads: each thread assembles its own line, and the last
 * error is shared under a lock (fuse_last copies it out). */
static pthread_mutex_t fz_fuse_lock = PTHREAD_MUTEX_INITIALIZER;
static char fz_fuse_last[512];
static _Thread_local char fz_fuse_line[512];

/* The last libfuse error ("" if none) into out[n]. */
static const char *fuse_last(char *out, size_t n)
{
    pthread_mutex_lock(&fz_fuse_lock);
    snprintf(out, n, "%s", fz_fuse_last);
    pthread_mutex_unlock(&fz_fuse_lock);
    return out;
}

static void fuse_log_hook(enum fuse_log_level level, const char *fmt, va_list ap)
{
    /* libfuse may print one line in several calls: collect up to '\n'. */
    size_t used = strlen(fz_fuse_line);
    vsnprintf(fz_fuse_line + used, sizeof fz_fuse_line - used, fmt, ap);
    size_t l = strlen(fz_fuse_line);
    if (l == 0 || (fz_fuse_line[l - 1] != '\n' && l < sizeof fz_fuse_line - 1))
        return;
    while (l && fz_fuse_line[l - 1] == '\n')
        fz_fuse_line[--l] = 0;
    const char *msg = strncmp(fz_fuse_line, "fuse: ", 6) ? fz_fuse_line : fz_fuse_line + 6;
    /* A failed passthrough registration is not an error of the mount: fs/ops.c
     * falls back and says so once, with the reason. */
    if (strncmp(msg, "passthrough_open: ", 18) == 0)
        level = FUSE_LOG_DEBUG;
    if (level <= FUSE_LOG_ERR) {
        pthread_mutex_lock(&fz_fuse_lock);
        snprintf(fz_fuse_last, sizeof fz_fuse_last, "%s", msg);
        pthread_mutex_unlock(&fz_fuse_lock);
    }
    fz_log(level <= FUSE_LOG_ERR ? FZ_LOG_ERROR : FZ_LOG_DEBUG, "fuse: %s", msg);
    fz_fuse_line[0] = 0;
}

typedef struct {
    const char *mnt;
    int ready_fd; /* -1 in the foreground */
    const char *src;
    dev_t dev; /* the mount's device once it answered (names the pid file) */
    bool pidfile;
    fz_fs *fs;
    const fz_status_info *info; /* for the status file */
    fz_status *status;
    fz_watch *watch;
} fz_ready;

static void ready_reply(fz_ready *r, const char *msg)
{
    if (r->ready_fd < 0)
        return;
    size_t n = strlen(msg);
    ssize_t w;
    do
        w = write(r->ready_fd, msg, n);
    while (w < 0 && errno == EINTR);
    close(r->ready_fd);
    r->ready_fd = -1;
}

/* Runs beside the session loop: the first stat of MNT waits for the
 * kernel's INIT to be answered, so when it returns our root the mount
 * answers. Then raise the mount's readahead (root only) and tell the parent. */
static void *ready_main(void *arg)
{
    fz_ready *r = arg;
    struct stat st;
    struct statfs sf;
    char msg[PATH_MAX + 128];
    if (stat(r->mnt, &st) != 0 || statfs(r->mnt, &sf) != 0) {
        snprintf(msg, sizeof msg, "E%s: mount does not answer: %s", r->mnt, strerror(errno));
        ready_reply(r, msg);
        return NULL;
    }
    if (st.st_ino != FUSE_ROOT_ID || sf.f_type != FZ_FUSE_SUPER_MAGIC) {
        snprintf(msg, sizeof msg, "E%s: mounted, but a stat does not see the fzfs root", r->mnt);
        ready_reply(r, msg);
        return NULL;
    }
    if (geteuid() == 0) {
        char bdi[128];
        snprintf(bdi, sizeof bdi, "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev),
                 minor(st.st_dev));
        FILE *f = fopen(bdi, "w");
        if (!f || fprintf(f, "%d\n", FZ_READAHEAD_KB) < 0)
            fz_debug("%s: cannot raise readahead: %s", bdi, strerror(errno));
        if (f)
            fclose(f);
    }
    fz_pidfile_write(st.st_dev);
    r->dev = st.st_dev;
    r->pidfile = true;
    r->status = fz_status_start(r->fs, st.st_dev, r->info);
    fz_watch_serving(r->watch, r->status);
    fz_info("Mounted %s at %s (pid %ld)", r->src, r->mnt, (long)getpid());
    ready_reply(r, "0");
    return NULL;
}

/* The mount options every fzfs mount has; user -o options come after.
 * fsname is the absolute source path, so findmnt, df and mount(8) show which
 * run is mounted (commas and backslashes escaped for libfuse's -o parser). */
#define FZ_FUSE_BASE_OPTS "ro,nodev,nosuid,default_permissions,subtype=fzfs,fsname="

static char *base_opts(const char *src)
{
    char *abs = realpath(src, NULL);
    const char *s = abs ? abs : src;
    size_t n = strlen(FZ_FUSE_BASE_OPTS) + 2 * strlen(s) + 1;
    char *out = malloc(n), *p;
    if (out) {
        p = out + sprintf(out, "%s", FZ_FUSE_BASE_OPTS);
        for (; *s; s++) {
            if (*s == ',' || *s == '\\')
                *p++ = '\\';
            *p++ = *s;
        }
        *p = 0;
    }
    free(abs);
    return out;
}

/* User -o options libfuse would accept but fzfs cannot honour. */
static int check_fuse_opts(const char *opts)
{
    for (const char *p = opts; p && *p;) {
        size_t n = strcspn(p, ",");
        if (n == 2 && strncmp(p, "rw", 2) == 0)
            return fz_error_set(FZ_EUSAGE,
                                "-o rw: an fzfs mount is read-only (its files are "
                                "generated from SRC); drop -o rw, or use fzfs materialize for "
                                "a writable copy");
        p += n + (p[n] == ',');
    }
    return 0;
}

static int session_new(fz_fs *fs, const fz_mount_opts *o, struct fuse_session **out)
{
    char *base = base_opts(o->src);
    if (!base)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    char *argv[] = {"fzfs", "-o", base, "-o", (char *)o->fuse_opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(o->fuse_opts && *o->fuse_opts ? 5 : 3, argv);
    char last[sizeof fz_fuse_last];
    pthread_mutex_lock(&fz_fuse_lock);
    fz_fuse_last[0] = 0;
    pthread_mutex_unlock(&fz_fuse_lock);
    fz_fuse_line[0] = 0;
    *out = fuse_session_new(&args, &fz_fs_ops, sizeof fz_fs_ops, fs);
    fuse_opt_free_args(&args);
    free(base);
    if (!*out)
        return fz_error_set(FZ_EUSAGE, "cannot set up the FUSE session%s%s",
                            fuse_last(last, sizeof last)[0] ? ": " : "", last);
    fs->se = *out;
    return 0;
}

int fz_fs_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return e;
}

/* Mount `se` and serve until unmounted or signalled. */
static int serve(fz_fs *fs, struct fuse_session *se, const char *mnt, const char *src,
                 const fz_mount_opts *o, int ready_fd, const fz_status_info *si)
{
    int rc = 0;
    bool mounted = false, handlers = false, ready_started = false;
    pthread_t ready_th;
    fz_status_info info = *si;
    fz_ready ready = {mnt, ready_fd, src, 0, false, fs, &info, NULL, NULL};
    struct fuse_loop_config *cfg = NULL;
    char msg[1100];

#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD) && defined(M_ARENA_MAX)
    /* Memory for chunks (4 MiB values, LMDB's page buffers: up to 24 MiB a
     * write transaction, freed at its commit): by default glibc maps and
     * unmaps buffers that large, or trims them from its heaps once freed,
     * so each is taken again from the kernel, zeroed; a cold mount spent
     * more time there than computing. Kept for reuse instead, in two
     * arenas shared by all threads (one per thread would each keep its
     * own): measured on a 1 GB model, faster, and a lower peak. */
    mallopt(M_ARENA_MAX, 2);
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
#endif
    /* Opened here, after the fork (an LMDB environment must not cross it);
     * owned by the view. One that cannot be opened is a warning. */
    if (o->use_cache &&
        fz_view_open_cache(fs->v, o->cache_dir, o->cache_size, FZ_VIEW_CACHE_STORE) != 0)
        fz_warn("cache unavailable, serving without it: %s", fz_error_msg());
    int nthreads = o->compute_threads;
    if (nthreads <= 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = ncpu < 2 ? 2 : (int)ncpu;
    }
    if ((rc = fz_fs_pool_start(fs, nthreads)))
        goto done;
    fz_fs_use_pool_for_tasks(fs);
    fs->keep = fz_keep_start(fs);
    ready.watch = fz_watch_start(fs, info.cwd);
    if (fuse_set_signal_handlers(se) != 0) {
        rc = fz_error_set(FZ_EIO, "cannot install signal handlers");
        goto done;
    }
    handlers = true;
    if (fuse_session_mount(se, mnt) != 0) {
        char last[sizeof fz_fuse_last];
        rc = fz_error_set(FZ_EIO, "cannot mount on %s%s%s", mnt,
                          fuse_last(last, sizeof last)[0] ? ": " : "", last);
        goto done;
    }
    mounted = true;
    if (fz_fs_thread_start(&ready_th, ready_main, &ready) != 0) {
        rc = fz_error_set(FZ_EIO, "cannot start a thread");
        goto done;
    }
    ready_started = true;

    cfg = fuse_loop_cfg_create();
    if (!cfg) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    /* Workers >= max_background + a few for lookup/getattr (B.3); each
     * worker its own /dev/fuse fd, idle ones kept around. */
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_max_threads(cfg, 72);
    fuse_loop_cfg_set_idle_threads(cfg, 16);
    /* Returns 0 when unmounted, the signal number after SIGINT/SIGTERM/
     * SIGHUP (a clean stop too), a negative errno on failure. */
    int lr = fuse_session_loop_mt(se, cfg);
    if (lr == -ECONNABORTED) {
        /* The kernel tore the connection down while a worker was reading a
         * request off it (a lazy unmount whose last file just closed races
         * its final RELEASE this way, and so does an abort through
         * /sys/fs/fuse/connections): libfuse reports it as a read error,
         * but the mount is gone either way, as with ENODEV. */
        fz_info("%s: the kernel ended the FUSE connection (unmounted, or aborted)", mnt);
        lr = 0;
    }
    if (lr < 0) {
        rc = fz_error_set(FZ_EIO, "%s: FUSE session loop failed: %s", mnt, strerror(-lr));
        fz_log(FZ_LOG_ERROR, "%s", fz_error_msg()); /* the parent may be long gone */
    }

done:
    fz_watch_quiesce(ready.watch); /* no notice races the unmount closing the device */
    if (mounted)
        fuse_session_unmount(se);
    if (ready_started)
        pthread_join(ready_th, NULL);
    fz_watch_stop(ready.watch); /* a lookup it made on the mount has returned by now */
    fz_status_stop(ready.status);
    if (rc) {
        snprintf(msg, sizeof msg, "E%s", fz_error_msg());
        ready_reply(&ready, msg);
    } else {
        ready_reply(&ready, "E: unmounted before the mount answered");
    }
    if (handlers)
        fuse_remove_signal_handlers(se);
    fz_keep_stop(fs->keep); /* before the pool: a file being kept may use it */
    fz_fs_pool_stop(fs);
    uint64_t whole = fz_keep_computed(fs->keep);
    fz_keep_free(fs->keep);
    fs->keep = NULL;
    if (mounted && fz_view_cache_dir(fs->v)) {
        uint64_t hits, misses, fills, dropped;
        fz_view_cache_counters(fs->v, &hits, &misses, &fills, &dropped);
        char more[96] = "";
        if (whole) /* (their chunks are misses, computed into the file, not fills) */
            snprintf(more, sizeof more, "; %llu files computed whole at their first open",
                     (unsigned long long)whole);
        fz_info("cache: %llu hits, %llu misses, %llu chunks computed (%llu ahead of their "
                "reads), %llu not stored (write queue full)%s",
                (unsigned long long)hits, (unsigned long long)misses, (unsigned long long)fills,
                (unsigned long long)atomic_load(&fs->computed_ahead), (unsigned long long)dropped,
                more);
    }
    if (cfg)
        fuse_loop_cfg_destroy(cfg);
    fuse_session_destroy(se);
    fz_view_close_cache(fs->v); /* flushed before the pid file goes: umount waits for it */
    if (ready.pidfile) {
        char pidpath[PATH_MAX];
        if (fz_pidfile_path(pidpath, sizeof pidpath, major(ready.dev), minor(ready.dev), false) ==
            0)
            unlink(pidpath);
    }
    if (rc == 0)
        fz_info("Unmounted %s", mnt);
    return rc;
}

/* Parent side of the handshake: "0" = mounted, "E<message>" = failed,
 * EOF = the child died. */
static int wait_ready(int fd, pid_t child)
{
    char msg[2048];
    size_t got = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long waited = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (waited >= FZ_READY_TIMEOUT_MS) {
            kill(child, SIGTERM);
            return fz_error_set(FZ_EIO, "the mount did not answer within %d s; daemon stopped",
                                FZ_READY_TIMEOUT_MS / 1000);
        }
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, (int)(FZ_READY_TIMEOUT_MS - waited));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            continue;
        ssize_t r = read(fd, msg + got, sizeof msg - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r > 0) {
            got += (size_t)r;
            if (got < sizeof msg - 1)
                continue;
        }
        break; /* EOF, error, or full */
    }
    msg[got] = 0;
    if (got > 0 && msg[0] == '0')
        return 0;
    if (got > 0 && msg[0] == 'E') {
        waitpid(child, NULL, 0);
        return fz_error_set(FZ_EIO, "%s", msg + 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    return fz_error_set(FZ_EIO, "the mount daemon exited before the mount answered (%s %d)",
                        WIFSIGNALED(status) ? "signal" : "status",
                        WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

static void redirect_stdio(const char *log_file)
{
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = log_file ? open(log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : -1;
    if (out < 0)
        out = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (in >= 0) {
        dup2(in, 0);
        close(in);
    }
    if (out >= 0) {
        dup2(out, 1);
        dup2(out, 2);
        close(out);
    }
}

/* `path` made absolute against the working directory (the daemon leaves
 * it), into out[PATH_MAX]; NULL stays NULL. */
static const char *absolute(const char *path, char *out)
{
    char cwd[PATH_MAX];
    if (!path || path[0] == '/' || !getcwd(cwd, sizeof cwd) ||
        (size_t)snprintf(out, PATH_MAX, "%s/%s", cwd, path) >= PATH_MAX)
        return path;
    return out;
}

/* A mount point as a file name, as `systemd-escape -p` spells it: the
 * slashes around it dropped, "/" -> "-", every byte but [A-Za-z0-9_] (and
 * "." not first) as \xNN; "/" itself is "-". */
static bool escape_path(const char *p, char *out, size_t n)
{
    size_t w = 0;
    while (*p == '/')
        p++;
    size_t len = strlen(p);
    while (len && p[len - 1] == '/')
        len--;
    if (!len)
        return snprintf(out, n, "-") < (int)n;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        int k;
        if (c == '/')
            k = snprintf(out + w, n - w, "-");
        else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || (c == '.' && i))
            k = snprintf(out + w, n - w, "%c", c);
        else
            k = snprintf(out + w, n - w, "\\x%02x", c);
        if (k < 0 || (size_t)k >= n - w)
            return false;
        w += (size_t)k;
    }
    return true;
}

/* Where a daemon logs when --log-file is not given: one file per mount
 * point, $XDG_STATE_HOME/fzfs (default ~/.local/state/fzfs)/mnt-<escaped
 * MNT>.log, directories created. NULL when no home is known or the name
 * does not fit (the daemon then logs nowhere). */
static const char *default_log_file(const char *mnt, char *out)
{
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char dir[PATH_MAX], name[NAME_MAX - 7];
    if (state && state[0] == '/')
        snprintf(dir, sizeof dir, "%s/fzfs", state);
    else if (home && home[0] == '/')
        snprintf(dir, sizeof dir, "%s/.local/state/fzfs", home);
    else
        return NULL;
    if (!escape_path(mnt, name, sizeof name))
        return NULL;
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0755);
            *p = '/';
        }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return NULL;
    if ((size_t)snprintf(out, PATH_MAX, "%s/mnt-%s.log", dir, name) >= PATH_MAX)
        return NULL;
    return out;
}

/* Seconds between progress lines: FZFS_PROGRESS_SECONDS, or 3. */
static int progress_interval(double *out)
{
    const char *e = getenv("FZFS_PROGRESS_SECONDS");
    char *end = NULL;
    *out = 3.0;
    if (!e || !*e)
        return 0;
    errno = 0;
    double s = strtod(e, &end);
    if (errno || end == e || *end || !(s > 0 && s <= 3600))
        return fz_error_set(FZ_EUSAGE,
                            "FZFS_PROGRESS_SECONDS must be a number of seconds in (0, 3600] "
                            "(the interval between progress lines in the mount's log), got '%s'",
                            e);
    *out = s;
    return 0;
}

int fz_mount_serve(fz_view *v, const char *mnt_in, const fz_mount_opts *o_in)
{
    char mnt[PATH_MAX], logpath[PATH_MAX], cachepath[PATH_MAX], srcpath[PATH_MAX], cwd[PATH_MAX];
    struct stat st;
    struct fuse_session *se = NULL;
    int rc;
    if (!realpath(mnt_in, mnt))
        return fz_error_set(FZ_ENOTFOUND, "Mount point %s: %s", mnt_in, strerror(errno));
    /* What is mounted must pass `fzfs verify` (headers only: no tensor is computed). */
    double progress_s;
    if ((rc = fz_verify_gate_view(v, mnt_in)) || (rc = progress_interval(&progress_s)))
        return rc;
    fz_mount_opts opts = *o_in, *o = &opts;
    const char *log_file = o->log_file || o->foreground ? absolute(o->log_file, logpath)
                                                        : default_log_file(mnt, logpath);
    if (!o->log_file && log_file)
        fz_info("the mount daemon logs to %s", log_file);
    o->cache_dir = absolute(o->cache_dir, cachepath);
    /* The daemon leaves the working directory: its log and status name
     * absolute paths. */
    if (o->src && realpath(o->src, srcpath))
        o->src = srcpath;

    fz_fs *fs = calloc(1, sizeof *fs);
    if (!fs)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    fs->v = v;
    fz_view_log_changes(v); /* the daemon log says which source changed */
    fs->nnodes = fz_view_node_count(v);
    fs->uid = getuid();
    fs->gid = getgid();
    fs->mnt = mnt;
    fs->progress = calloc(fs->nnodes ? fs->nnodes : 1, sizeof *fs->progress);
    fs->ahead = calloc(fs->nnodes ? fs->nnodes : 1, sizeof *fs->ahead);
    pthread_mutex_init(&fs->ahead_lock, NULL);
    /* FUSE passthrough, unless forced off (op_init decides the rest). */
    const char *no_pt = getenv("FZFS_NO_PASSTHROUGH");
    if (o->no_passthrough || (no_pt && *no_pt && strcmp(no_pt, "0") != 0)) {
        fs->no_passthrough = true;
        snprintf(fs->pt_why, sizeof fs->pt_why, "forced off by %s",
                 o->no_passthrough ? "--no-passthrough" : "FZFS_NO_PASSTHROUGH");
    }
    fs->progress_s = progress_s;
    const char *on_read = getenv("FZFS_COMPUTE_ON_READ");
    fs->compute_on_read = o->compute_on_read || (on_read && *on_read && strcmp(on_read, "0") != 0);
    pthread_mutex_init(&fs->pt_lock, NULL);
    pthread_cond_init(&fs->pt_cond, NULL);
    fs->backing = calloc(fs->nnodes ? fs->nnodes : 1, sizeof *fs->backing);
    char *base = base_opts(o->src ? o->src : "");
    char *fuse_all = NULL;
    if (base && asprintf(&fuse_all, "%s%s%s", base, o->fuse_opts && *o->fuse_opts ? "," : "",
                         o->fuse_opts && *o->fuse_opts ? o->fuse_opts : "") < 0)
        fuse_all = NULL;
    free(base);
    fz_status_info si = {.src = o->src,
                         .mnt = mnt,
                         .view_args = o->view_args,
                         .fuse_opts = fuse_all,
                         .log_file = o->foreground ? NULL : log_file,
                         .cwd = getcwd(cwd, sizeof cwd)};
    /* Every node carries SRC's mtime: stable across remounts of the same
     * source, and it moves when training writes a new checkpoint. */
    fs->mtime.tv_sec = 0;
    fs->mtime.tv_nsec = 0;
    if (o->src && stat(o->src, &st) == 0)
        fs->mtime = st.st_mtim;

    fuse_set_log_func(fuse_log_hook);
    /* Created before any fork so a bad -o option is reported here. */
    if ((rc = check_fuse_opts(o->fuse_opts)) || (rc = session_new(fs, o, &se)))
        goto done;

    if (o->foreground) {
        rc = serve(fs, se, mnt, o->src ? o->src : "", o, -1, &si);
        se = NULL;
        goto done;
    }

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        rc = fz_error_set(FZ_EIO, "pipe: %s", strerror(errno));
        goto done;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        rc = fz_error_set(FZ_EIO, "fork: %s", strerror(errno));
        goto done;
    }
    if (pid == 0) {
        close(pfd[0]);
        setsid();
        redirect_stdio(log_file);
        fz_log_set_timestamps(true);
        if (chdir("/") != 0)
            fz_debug("chdir /: %s", strerror(errno));
        rc = serve(fs, se, mnt, o->src ? o->src : "", o, pfd[1], &si);
        se = NULL;
        free(fs->progress);
        free(fs->ahead);
        free(fs->backing);
        free(fs);
        free(fuse_all);
        /* The child never returns into the caller's command: its exit
         * status is the daemon's. */
        fflush(stdout);
        fflush(stderr);
        _exit(rc ? 1 : 0);
    }
    close(pfd[1]);
    rc = wait_ready(pfd[0], pid);
    close(pfd[0]);

done:
    if (se)
        fuse_session_destroy(se);
    free(fs->progress);
    free(fs->ahead);
    free(fs->backing);
    pthread_mutex_destroy(&fs->pt_lock);
    pthread_cond_destroy(&fs->pt_cond);
    free(fs);
    free(fuse_all);
    return rc;
}
