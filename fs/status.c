/* Status files (the daemon side) and `fzfs status` (the reader). */
#include "fs/status.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "fs/keep.h"
#include "fs/mount.h"
#include "fs/mountinfo.h"
#include "fs/pidfile.h"
#include "util/error.h"
#include "util/log.h"

#define FZ_STATUS_PERIOD_S 2
/* The status file is ours, but read it as any input: bounded. */
#define FZ_STATUS_MAX_BYTES (4u << 20)

struct fz_status {
    fz_fs *fs;
    json_t *fixed; /* the fields that never change */
    char path[PATH_MAX];
    char *cwd;
    char *last; /* the last JSON written */
    pthread_t th;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop, started, poke;
};

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* The changing part: counters, stale sources (checked now). */
static char *render(fz_status *s)
{
    json_t *o = json_deep_copy(s->fixed), *stale = json_array(), *replaced = json_array();
    json_t *cache = NULL;
    char *out = NULL;
    if (!o || !stale || !replaced)
        goto done;
    fz_view *v = s->fs->v;
    for (uint32_t i = 0; i < fz_view_source_count(v); i++) {
        const char *p = fz_view_source_path(v, i);
        char abs[PATH_MAX];
        if (p[0] != '/' && s->cwd &&
            (size_t)snprintf(abs, sizeof abs, "%s/%s", s->cwd, p) < sizeof abs)
            p = abs;
        if (fz_view_source_changed(v, i, true))
            json_array_append_new(stale, json_string(p));
        else if (fz_view_source_replaced(v, i, p))
            json_array_append_new(replaced, json_string(p));
    }
    json_object_set_new(o, "stale_sources", stale);
    json_object_set_new(o, "replaced_sources", replaced);
    stale = replaced = NULL;
    if (fz_view_cache_dir(v)) {
        uint64_t hits, misses, fills, dropped;
        fz_view_cache_counters(v, &hits, &misses, &fills, &dropped);
        cache = json_pack(
            "{s:I,s:I,s:I,s:I,s:I}", "hits", (json_int_t)hits, "misses", (json_int_t)misses,
            "fills", (json_int_t)fills, "not_stored", (json_int_t)dropped, "computed_ahead",
            (json_int_t)atomic_load_explicit(&s->fs->computed_ahead, memory_order_relaxed));
        json_t *c = json_object_get(o, "cache");
        if (cache && json_is_object(c))
            json_object_update(c, cache);
        json_decref(cache);
    }
    json_object_set_new(
        o, "bytes_served",
        json_integer((json_int_t)atomic_load_explicit(&s->fs->bytes_served, memory_order_relaxed)));
    json_object_set_new(
        o, "reads",
        json_integer((json_int_t)atomic_load_explicit(&s->fs->reads, memory_order_relaxed)));
    bool pt = atomic_load(&s->fs->passthrough);
    json_object_set_new(
        o, "passthrough",
        json_pack("{s:b,s:o,s:I,s:I,s:I}", "on", pt, "why_off",
                  pt ? json_null() : json_string(s->fs->pt_why), "opens",
                  (json_int_t)atomic_load_explicit(&s->fs->pt_opens, memory_order_relaxed),
                  "kept_opens",
                  (json_int_t)atomic_load_explicit(&s->fs->kept_opens, memory_order_relaxed),
                  "kept_files", (json_int_t)fz_keep_stored(s->fs->keep)));
    out = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
done:
    json_decref(stale);
    json_decref(replaced);
    json_decref(o);
    return out;
}

/* Write text to s->path atomically (temp file + rename). */
static int write_file(fz_status *s, const char *text)
{
    char tmp[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", s->path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t n = strlen(text), off = 0;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    if (close(fd) != 0 || off < n || rename(tmp, s->path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void refresh(fz_status *s)
{
    char *text = render(s);
    if (!text)
        return;
    if (s->last && !strcmp(s->last, text)) {
        free(text);
        return;
    }
    if (write_file(s, text) != 0)
        fz_debug("status file %s: %s", s->path, strerror(errno));
    free(s->last);
    s->last = text;
}

static void *status_main(void *arg)
{
    fz_status *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += FZ_STATUS_PERIOD_S;
        while (!s->stop && !s->poke && pthread_cond_timedwait(&s->cond, &s->lock, &ts) != ETIMEDOUT)
            ;
        if (s->stop)
            break;
        s->poke = false;
        pthread_mutex_unlock(&s->lock);
        refresh(s);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

fz_status *fz_status_start(fz_fs *fs, dev_t dev, const fz_status_info *in)
{
    fz_status *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fs = fs;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (fz_statusfile_path(s->path, sizeof s->path, major(dev), minor(dev), true) != 0 ||
        (in->cwd && !(s->cwd = strdup(in->cwd))))
        goto fail;
    char started[40];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", &tm);
    s->fixed =
        json_pack("{s:I,s:o,s:o,s:{s:o,s:o},s:o,s:o,s:s}", "pid", (json_int_t)getpid(), "source",
                  str_or_null(in->src), "mountpoint", str_or_null(in->mnt), "options", "view",
                  json_string(in->view_args ? in->view_args : ""), "fuse",
                  str_or_null(in->fuse_opts), "log_file", str_or_null(in->log_file), "cache",
                  fz_view_cache_dir(fs->v) ? json_pack("{s:s}", "dir", fz_view_cache_dir(fs->v))
                                           : json_null(),
                  "started", started);
    if (!s->fixed)
        goto fail;
    refresh(s);
    if (!s->last)
        goto fail;
    s->started = fz_fs_thread_start(&s->th, status_main, s) == 0;
    return s;
fail:
    fz_debug("no status file for this mount (%s)", s->path[0] ? s->path : "no runtime dir");
    fz_status_stop(s);
    return NULL;
}

void fz_status_poke(fz_status *s)
{
    if (!s || !s->started)
        return;
    pthread_mutex_lock(&s->lock);
    s->poke = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void fz_status_stop(fz_status *s)
{
    if (!s)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->th, NULL);
    }
    if (s->last)
        unlink(s->path);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    json_decref(s->fixed);
    free(s->last);
    free(s->cwd);
    free(s);
}

/* ---- fzfs status ------------------------------------------------------ */

/* The status file of mount maj:min as a JSON object, or NULL (absent,
 * unreadable or not an object: the mount is then shown from mountinfo). */
static json_t *load_status(unsigned maj, unsigned min)
{
    char path[PATH_MAX];
    struct stat st;
    if (fz_statusfile_path(path, sizeof path, maj, min, false) != 0 || stat(path, &st) != 0 ||
        st.st_size > FZ_STATUS_MAX_BYTES)
        return NULL;
    json_error_t err;
    json_t *o = json_load_file(path, 0, &err);
    if (o && !json_is_object(o)) {
        json_decref(o);
        o = NULL;
    }
    if (!o)
        fz_warn("status file %s is not readable JSON (%s); showing the mount without it", path,
                err.text);
    return o;
}

/* One mount's entry: mountinfo's facts, the daemon's status file, and
 * whether the daemon is alive. */
static json_t *mount_entry(const fz_mountent *e)
{
    char pidpath[PATH_MAX] = "";
    pid_t pid = fz_pidfile_daemon(e->maj, e->min, pidpath, sizeof pidpath);
    json_t *st = pid > 0 ? load_status(e->maj, e->min) : NULL;
    /* Dead: its pid file names a gone process, or, without one (another
     * user's mount keeps its pid file where we cannot look), the mount says
     * so itself (a dead FUSE mount answers ENOTCONN at once; ECONNABORTED for
     * a request the kernel ended as the connection went). */
    struct stat sb;
    bool dead =
        pid <= 0 && ((pidpath[0] && access(pidpath, F_OK) == 0) ||
                     (stat(e->mnt, &sb) != 0 && (errno == ENOTCONN || errno == ECONNABORTED)));
    json_t *o = json_object();
    if (!o) {
        json_decref(st);
        return NULL;
    }
    static const char *const keys[] = {"options",       "log_file",         "cache",
                                       "stale_sources", "replaced_sources", "bytes_served",
                                       "reads",         "passthrough",      "started"};
    json_object_set_new(o, "mountpoint", json_string(e->mnt));
    json_object_set_new(o, "source", json_string(e->source));
    json_object_set_new(o, "device", json_sprintf("%u:%u", e->maj, e->min));
    json_object_set_new(o, "mount_options", json_string(e->options));
    json_object_set_new(o, "daemon_pid", pid > 0 ? json_integer(pid) : json_null());
    json_object_set_new(o, "daemon_alive",
                        pid > 0 ? json_true()
                        : dead  ? json_false()
                                : json_null());
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = st ? json_object_get(st, keys[i]) : NULL;
        json_object_set(o, keys[i], v ? v : json_null());
    }
    if (pid <= 0 && !dead)
        json_object_set_new(o, "problem",
                            json_string("no daemon found: mounted by another user, whose pid "
                                        "file this user cannot see"));
    else if (pid <= 0)
        json_object_set_new(o, "problem",
                            json_sprintf("the daemon is not running (files on the mount fail "
                                         "with 'Transport endpoint is not connected'); run "
                                         "`fzfs umount %s`",
                                         e->mnt));
    else if (!st)
        json_object_set_new(o, "problem",
                            json_string("the daemon keeps no status file (an "
                                        "older fzfs?)"));
    else
        json_object_set_new(o, "problem", json_null());
    json_decref(st);
    return o;
}

static const char *jstr(json_t *o, const char *k, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : dflt;
}

static unsigned long long jnum(json_t *o, const char *k)
{
    json_int_t n = json_integer_value(json_object_get(o, k));
    return n > 0 ? (unsigned long long)n : 0;
}

static void print_text(FILE *f, json_t *all)
{
    size_t i;
    json_t *m;
    if (json_array_size(all) == 0)
        fprintf(f, "No fzfs mounts.\n");
    json_array_foreach(all, i, m)
    {
        json_t *opts = json_object_get(m, "options"), *cache = json_object_get(m, "cache");
        json_t *stale = json_object_get(m, "stale_sources");
        json_t *replaced = json_object_get(m, "replaced_sources");
        fprintf(f, "%s%s\n", i ? "\n" : "", jstr(m, "mountpoint", "?"));
        fprintf(f, "  source:        %s\n", jstr(m, "source", "?"));
        if (json_is_object(opts)) {
            const char *va = jstr(opts, "view", "");
            fprintf(f, "  options:       %s\n", *va ? va : "(defaults)");
            fprintf(f, "  fuse options:  %s\n", jstr(opts, "fuse", "?"));
        } else {
            fprintf(f, "  mount options: %s\n", jstr(m, "mount_options", "?"));
        }
        json_t *alive = json_object_get(m, "daemon_alive");
        if (json_is_true(alive))
            fprintf(f, "  daemon:        pid %lld\n",
                    (long long)json_integer_value(json_object_get(m, "daemon_pid")));
        else
            fprintf(f, "  daemon:        %s\n", json_is_false(alive) ? "not running" : "unknown");
        if (json_object_get(m, "log_file") && !json_is_null(json_object_get(m, "log_file")))
            fprintf(f, "  log:           %s\n", jstr(m, "log_file", "?"));
        if (json_is_object(cache))
            fprintf(f, "  cache:         %s (hits %llu, misses %llu, fills %llu)\n",
                    jstr(cache, "dir", "?"), jnum(cache, "hits"), jnum(cache, "misses"),
                    jnum(cache, "fills"));
        else if (json_is_object(opts))
            fprintf(f, "  cache:         none\n");
        if (json_is_object(opts))
            fprintf(f, "  served:        %llu bytes in %llu reads\n", jnum(m, "bytes_served"),
                    jnum(m, "reads"));
        json_t *pt = json_object_get(m, "passthrough");
        if (json_is_object(pt) && json_is_true(json_object_get(pt, "on")))
            fprintf(
                f,
                "  passthrough:   on (%llu opens read by the kernel: %llu of them from computed "
                "files kept whole in the cache; %llu files kept by this mount)\n",
                jnum(pt, "opens"), jnum(pt, "kept_opens"), jnum(pt, "kept_files"));
        else if (json_is_object(pt))
            fprintf(f, "  passthrough:   off: %s\n", jstr(pt, "why_off", "?"));
        if (json_is_array(stale)) {
            size_t k;
            json_t *p;
            fprintf(f, "  stale sources: %s\n", json_array_size(stale) ? "" : "none");
            json_array_foreach(stale, k, p)
                fprintf(f,
                        "    %s (changed after mounting: files made from it fail with EIO; "
                        "remount)\n",
                        json_string_value(p) ? json_string_value(p) : "?");
        }
        if (json_array_size(replaced)) {
            size_t k;
            json_t *p;
            fprintf(f, "  replaced sources: \n");
            json_array_foreach(replaced, k, p)
                fprintf(f,
                        "    %s (removed or replaced after mounting: the mount still serves the "
                        "file it opened; remount to use the new one)\n",
                        json_string_value(p) ? json_string_value(p) : "?");
        }
        if (json_string_value(json_object_get(m, "problem")))
            fprintf(f, "  problem:       %s\n", jstr(m, "problem", ""));
    }
}

int fz_status_print(FILE *out, bool json)
{
    fz_mountent *ms = NULL;
    size_t n = 0;
    int rc = fz_mounts_read(&ms, &n);
    if (rc)
        return rc;
    json_t *all = json_array();
    for (size_t i = 0; all && i < n; i++) {
        if (!fz_mount_is_fzfs(&ms[i]) || fz_mounts_at(ms, n, ms[i].mnt) != &ms[i])
            continue; /* not ours, or covered by a later mount */
        json_t *e = mount_entry(&ms[i]);
        if (!e || json_array_append_new(all, e) != 0) {
            json_decref(all);
            all = NULL;
        }
    }
    fz_mounts_free(ms, n);
    if (!all)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (json) {
        char *s = json_dumps(all, JSON_INDENT(2));
        if (!s)
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
        else
            fprintf(out, "%s\n", s);
        free(s);
    } else {
        print_text(out, all);
    }
    json_decref(all);
    return rc;
}
