/* The source watcher of a mount daemon (fs/watch.h). */
#include "fs/watch.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

/* How often the thread wakes without an event, to revoke files made from a
 * source someone else found changed (a read, an open, the status refresh). */
#define FZ_WATCH_TICK_MS 1000
/* Changes of a source's inode, then its name (news for status: replaced
 * sources), then the directory itself. */
#define FZ_WATCH_MASK                                                                              \
    (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM |              \
     IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#define FZ_WATCH_GONE (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)

/* A source file by name: path[dirlen] is the slash before its base name. */
typedef struct {
    const char *path; /* resolved absolute path (w->paths) */
    size_t dirlen;
    uint32_t src;
} fz_wname;

/* A watched directory: names[first, first + n) are its source files,
 * sorted by base name. */
typedef struct {
    char *path;
    uint32_t first, n;
    bool watched;
} fz_wdir;

typedef struct {
    int wd;
    uint32_t dir;
} fz_wwd;

struct fz_watch {
    fz_fs *fs;
    char *cwd;
    int ifd, stop_fd;
    char **paths;
    fz_wname *names;
    uint32_t nnames;
    fz_wdir *dirs;
    uint32_t ndirs;
    fz_wwd *wds; /* by wd */
    uint32_t nwds;
    bool *revoked; /* per node: already revoked (the thread's own) */
    bool epoch_told;
    pthread_t th;
    pthread_mutex_t lock; /* guards serving, closed, status */
    bool serving, closed;
    fz_status *status;
};

/* ---- the name table ------------------------------------------------ */

static const char *base_of(const fz_wname *n)
{
    return n->path + n->dirlen + 1;
}

static int cmp_dir(const fz_wname *a, const fz_wname *b)
{
    size_t l = a->dirlen < b->dirlen ? a->dirlen : b->dirlen;
    int c = memcmp(a->path, b->path, l);
    return c ? c : (a->dirlen > b->dirlen) - (a->dirlen < b->dirlen);
}

static int cmp_name(const void *x, const void *y)
{
    const fz_wname *a = x, *b = y;
    int c = cmp_dir(a, b);
    return c ? c : strcmp(base_of(a), base_of(b));
}

static int cmp_wd(const void *x, const void *y)
{
    const fz_wwd *a = x, *b = y;
    return (a->wd > b->wd) - (a->wd < b->wd);
}

/* Source i's path, absolute (against cwd) and with symlinks resolved: where
 * a write to it shows as an event. The unresolved path when it is gone. */
static char *resolved(const char *p, const char *cwd)
{
    char abs[PATH_MAX];
    if (p[0] != '/' && cwd && (size_t)snprintf(abs, sizeof abs, "%s/%s", cwd, p) < sizeof abs)
        p = abs;
    char *r = realpath(p, NULL);
    return r ? r : strdup(p);
}

/* Fill names and dirs (sorted). False when out of memory. */
static bool build_table(fz_watch *w)
{
    fz_view *v = w->fs->v;
    uint32_t n = fz_view_source_count(v);
    w->paths = calloc(n ? n : 1, sizeof *w->paths);
    w->names = calloc(n ? n : 1, sizeof *w->names);
    w->dirs = calloc(n ? n : 1, sizeof *w->dirs);
    if (!w->paths || !w->names || !w->dirs)
        return false;
    for (uint32_t i = 0; i < n; i++) {
        char *p = w->paths[i] = resolved(fz_view_source_path(v, i), w->cwd);
        if (!p)
            return false;
        char *slash = strrchr(p, '/');
        if (!slash || !slash[1])
            continue; /* not a file name: nothing to watch it by */
        w->names[w->nnames++] = (fz_wname){p, (size_t)(slash - p), i};
    }
    qsort(w->names, w->nnames, sizeof *w->names, cmp_name);
    for (uint32_t i = 0; i < w->nnames; i++) {
        const fz_wname *e = &w->names[i];
        if (i && cmp_dir(e, &w->names[i - 1]) == 0) {
            w->dirs[w->ndirs - 1].n++;
            continue;
        }
        char *d = e->dirlen ? strndup(e->path, e->dirlen) : strdup("/");
        if (!d)
            return false;
        w->dirs[w->ndirs++] = (fz_wdir){d, i, 1, false};
    }
    return true;
}

/* One watch per directory; each one that cannot be watched is said at
 * DEBUG (its sources are then found changed as without a watcher). */
static void add_watches(fz_watch *w)
{
    w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->ifd < 0) {
        fz_debug("source watcher: no inotify (%s); source changes are found on open, on reads "
                 "through the daemon and by the status refresh",
                 strerror(errno));
        return;
    }
    w->wds = calloc(w->ndirs ? w->ndirs : 1, sizeof *w->wds);
    for (uint32_t d = 0; w->wds && d < w->ndirs; d++) {
        int wd = inotify_add_watch(w->ifd, w->dirs[d].path, FZ_WATCH_MASK);
        if (wd < 0) {
            fz_debug("source watcher: cannot watch %s (%s); changes of its %u source file%s are "
                     "found on open, on reads through the daemon and by the status refresh",
                     w->dirs[d].path, strerror(errno), w->dirs[d].n, w->dirs[d].n == 1 ? "" : "s");
            continue;
        }
        w->dirs[d].watched = true;
        w->wds[w->nwds++] = (fz_wwd){wd, d};
    }
    qsort(w->wds, w->nwds, sizeof *w->wds, cmp_wd);
    fz_debug("source watcher: %u source file%s in %u of %u director%s watched", w->nnames,
             w->nnames == 1 ? "" : "s", w->nwds, w->ndirs, w->ndirs == 1 ? "y" : "ies");
}

/* ---- checking ------------------------------------------------------ */

/* Check sources names[from, to): true if one is newly found changed (the
 * view logs it). */
static bool check_names(fz_watch *w, uint32_t from, uint32_t to)
{
    fz_view *v = w->fs->v;
    bool found = false;
    for (uint32_t i = from; i < to; i++) {
        uint32_t s = w->names[i].src;
        if (!fz_view_source_changed(v, s, false) && fz_view_source_changed(v, s, true))
            found = true;
    }
    return found;
}

/* The sources called `name` in directory d, checked; false if none. */
static bool check_name(fz_watch *w, const fz_wdir *d, const char *name)
{
    uint32_t lo = d->first, hi = d->first + d->n;
    while (lo < hi) { /* first entry >= name */
        uint32_t mid = lo + (hi - lo) / 2;
        if (strcmp(base_of(&w->names[mid]), name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint32_t end = lo;
    while (end < d->first + d->n && strcmp(base_of(&w->names[end]), name) == 0)
        end++;
    if (end == lo)
        return false;
    check_names(w, lo, end);
    return true;
}

/* One event; true if it concerns a source (status is then refreshed). */
static bool on_event(fz_watch *w, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW) {
        fz_debug("source watcher: event queue overflowed; checking every source");
        check_names(w, 0, w->nnames);
        return true;
    }
    uint32_t lo = 0, hi = w->nwds;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (w->wds[mid].wd < ev->wd)
            lo = mid + 1;
        else
            hi = mid;
    }
    bool ours = false;
    /* Two names of one directory (a bind mount) share a watch. */
    for (; lo < w->nwds && w->wds[lo].wd == ev->wd; lo++) {
        fz_wdir *d = &w->dirs[w->wds[lo].dir];
        if (!d->watched)
            continue;
        if (ev->mask & FZ_WATCH_GONE) {
            check_names(w, d->first, d->first + d->n);
            ours = true;
            if (ev->mask & IN_IGNORED) {
                d->watched = false;
                fz_debug("source watcher: %s is no longer watched (removed or unmounted)", d->path);
            }
        } else if (ev->len && check_name(w, d, ev->name)) {
            ours = true;
        }
    }
    return ours;
}

/* Read every pending event; true if one concerned a source. */
static bool drain_events(fz_watch *w)
{
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool ours = false;
    for (;;) {
        ssize_t n = read(w->ifd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return ours;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            ours |= on_event(w, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

/* ---- revoking ------------------------------------------------------ */

static int notify_epoch(struct fuse_session *se)
{
#if FUSE_VERSION >= FUSE_MAKE_VERSION(3, 18)
    return se ? fuse_lowlevel_notify_increment_epoch(se) : -EINVAL;
#else
    (void)se;
    return -ENOSYS;
#endif
}

/* Whether node i has opens in passthrough mode. */
static bool passthrough_open(fz_fs *fs, uint32_t i)
{
    if (!fs->backing)
        return false;
    pthread_mutex_lock(&fs->pt_lock);
    bool open = fs->backing[i].nopen > 0;
    pthread_mutex_unlock(&fs->pt_lock);
    return open;
}

/* Files made from a source found changed since the last call: every name
 * the kernel cached is dropped, and each such file is looked up on the
 * mount, which answers with a new generation: the kernel marks the inode
 * it had bad, so reads of files already open fail with EIO. */
static bool newly_stale(fz_watch *w, uint32_t i)
{
    return !w->revoked[i] && fz_view_node(w->fs->v, i)->kind == FZ_NODE_FILE &&
           fz_view_node_stale(w->fs->v, i);
}

static void revoke_stale(fz_watch *w)
{
    fz_fs *fs = w->fs;
    uint32_t first = 0;
    while (first < fs->nnodes && !newly_stale(w, first))
        first++;
    if (first == fs->nnodes)
        return;
    pthread_mutex_lock(&w->lock);
    bool serving = w->serving;
    int rc = serving ? notify_epoch(fs->se) : 0;
    pthread_mutex_unlock(&w->lock);
    if (!serving)
        return; /* not yet: again at the next tick */
    if (rc && !w->epoch_told) {
        w->epoch_told = true;
        fz_debug("source watcher: the kernel cannot be told to drop cached names (%s; needs "
                 "Linux 6.16 and libfuse 3.18): files already open when their source changed "
                 "keep reading it",
                 strerror(-rc));
    }
    for (uint32_t i = first; i < fs->nnodes; i++) {
        if (!newly_stale(w, i))
            continue;
        const fz_node *n = fz_view_node(fs->v, i);
        w->revoked[i] = true;
        bool pt = passthrough_open(fs, i);
        char p[PATH_MAX];
        struct stat st;
        if (rc) {
            if (pt)
                fz_warn("%s/%s was open in FUSE passthrough mode when its source changed: the "
                        "kernel reads the changed source for that open until it is closed",
                        fs->mnt, n->path);
        } else if ((size_t)snprintf(p, sizeof p, "%s/%s", fs->mnt, n->path) >= sizeof p ||
                   (stat(p, &st) != 0 && errno != ENOENT)) {
            fz_debug("source watcher: cannot look up %s/%s to revoke it: %s", fs->mnt, n->path,
                     strerror(errno));
        } else if (pt) {
            fz_warn("%s/%s was open in FUSE passthrough mode when its source changed: reads of "
                    "it now fail with an I/O error, but a memory map of it made before shows "
                    "the changed source until unmapped",
                    fs->mnt, n->path);
        }
    }
}

/* ---- the thread ---------------------------------------------------- */

static void refresh_status(fz_watch *w)
{
    pthread_mutex_lock(&w->lock);
    if (w->serving && w->status)
        fz_status_poke(w->status);
    pthread_mutex_unlock(&w->lock);
}

static void *watch_main(void *arg)
{
    fz_watch *w = arg;
    /* Changes made before the watches were up are checked for first. */
    bool changed = false, table = build_table(w);
    if (!table)
        fz_debug("source watcher: out of memory; not watching sources");
    else
        add_watches(w);
    if (table)
        changed = check_names(w, 0, w->nnames);
    for (;;) {
        /* Revoked before status says so: once `fzfs status` lists a stale
         * source, files already open made from it fail. */
        revoke_stale(w);
        if (changed)
            refresh_status(w);
        struct pollfd p[2] = {{w->stop_fd, POLLIN, 0}, {w->ifd, POLLIN, 0}};
        int n = poll(p, w->ifd >= 0 ? 2 : 1, FZ_WATCH_TICK_MS);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && (p[0].revents & POLLIN))
            break;
        changed = n > 0 && (p[1].revents & POLLIN) && drain_events(w);
    }
    return NULL;
}

fz_watch *fz_watch_start(fz_fs *fs, const char *cwd)
{
    fz_watch *w = calloc(1, sizeof *w);
    if (!w || !(w->revoked = calloc(fs->nnodes ? fs->nnodes : 1, sizeof *w->revoked)) ||
        (cwd && !(w->cwd = strdup(cwd)))) {
        fz_debug("source watcher: out of memory; not watching sources");
        goto fail;
    }
    w->fs = fs;
    w->ifd = -1;
    pthread_mutex_init(&w->lock, NULL);
    if ((w->stop_fd = eventfd(0, EFD_CLOEXEC)) < 0) {
        fz_debug("source watcher: eventfd: %s; not watching sources", strerror(errno));
        goto fail_lock;
    }
    int e = fz_fs_thread_start(&w->th, watch_main, w);
    if (e == 0)
        return w;
    fz_debug("source watcher: cannot start a thread: %s", strerror(e));
    close(w->stop_fd);
fail_lock:
    pthread_mutex_destroy(&w->lock);
fail:
    if (w) {
        free(w->revoked);
        free(w->cwd);
    }
    free(w);
    return NULL;
}

void fz_watch_serving(fz_watch *w, fz_status *s)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    if (!w->closed) {
        w->serving = true;
        w->status = s;
    }
    pthread_mutex_unlock(&w->lock);
}

void fz_watch_quiesce(fz_watch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->closed = true;
    w->serving = false;
    w->status = NULL;
    pthread_mutex_unlock(&w->lock);
}

void fz_watch_stop(fz_watch *w)
{
    if (!w)
        return;
    fz_watch_quiesce(w);
    uint64_t one = 1;
    while (write(w->stop_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    pthread_join(w->th, NULL);
    close(w->stop_fd);
    if (w->ifd >= 0)
        close(w->ifd);
    for (uint32_t i = 0; w->paths && i < fz_view_source_count(w->fs->v); i++)
        free(w->paths[i]);
    for (uint32_t d = 0; d < w->ndirs; d++)
        free(w->dirs[d].path);
    free(w->paths);
    free(w->names);
    free(w->dirs);
    free(w->wds);
    free(w->revoked);
    free(w->cwd);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
