#include "materialize/materialize.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <pthread.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "verify/verify.h"

#define FZ_CHUNK (4u << 20)

typedef struct {
    fz_view *v;
    const fz_extent *ext; /* the extents this pool writes */
    size_t njobs;
    const int *fds; /* per node */
    atomic_size_t next;
    atomic_uint_fast64_t done_bytes;
    atomic_int failed;
    fz_first_error err;
    const char *tmp;
} fz_pool;

/* The caller's stop flag (fz_mat_opts.stop): non-zero = the signal that
 * asks to stop; checked between chunks. */
static volatile sig_atomic_t no_stop;
static volatile sig_atomic_t *fz_stop = &no_stop;
#define fz_stop_signal (*fz_stop)

static void pool_fail(fz_pool *p, int rc)
{
    fz_first_error_note(&p->err, rc);
    atomic_store(&p->failed, 1);
}

static void *worker(void *arg)
{
    fz_pool *p = arg;
    uint8_t *buf = malloc(FZ_CHUNK);
    if (!buf) {
        pool_fail(p, fz_error_set(FZ_ENOMEM, "out of memory"));
        return NULL;
    }
    for (;;) {
        if (atomic_load(&p->failed) || fz_stop_signal)
            break;
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->njobs)
            break;
        const fz_extent *e = &p->ext[i];
        int rc = fz_view_read_extent(p->v, e, buf);
        if (rc == 0)
            rc = fz_pwrite_full(p->fds[e->node], buf, (size_t)e->len, e->off,
                                fz_view_node(p->v, e->node)->path);
        if (rc) {
            pool_fail(p, rc);
            break;
        }
        atomic_fetch_add(&p->done_bytes, e->len);
    }
    free(buf);
    return NULL;
}

/* Test hook (tests/integration/test_mount_trust.py): with
 * FZFS_TEST_PAUSE_BEFORE_PUBLISH=FIFO, block after every byte is written
 * and before the last source check until a byte is read from FIFO, so a
 * test can change a source at exactly that point. */
static void test_pause(void)
{
    const char *fifo = getenv("FZFS_TEST_PAUSE_BEFORE_PUBLISH");
    char c;
    if (!fifo || !*fifo)
        return;
    int fd = open(fifo, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        while (read(fd, &c, 1) < 0 && errno == EINTR)
            ;
        close(fd);
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int remove_tree(const char *path)
{
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return fz_error_set(FZ_EIO, "%s: cannot open for sync: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : fz_error_set(FZ_EIO, "%s: fsync: %s", path, strerror(errno));
    close(fd);
    return rc;
}

/* Create the directories and symlinks, and open every file at full size. */
static int make_tree(fz_view *v, const char *tmp, int *fds)
{
    uint32_t n = fz_view_node_count(v);
    char path[PATH_MAX];
    for (uint32_t i = 1; i < n; i++) {
        const fz_node *nd = fz_view_node(v, i);
        if ((size_t)snprintf(path, sizeof path, "%s/%s", tmp, nd->path) >= sizeof path)
            return fz_error_set(FZ_ERANGE, "%s/%s: path too long", tmp, nd->path);
        if (nd->kind == FZ_NODE_DIR) {
            if (mkdir(path, nd->mode) != 0)
                return fz_error_set(FZ_EIO, "%s: mkdir: %s", path, strerror(errno));
        } else if (nd->kind == FZ_NODE_SYMLINK) {
            if (symlink(nd->target, path) != 0)
                return fz_error_set(FZ_EIO, "%s: symlink: %s", path, strerror(errno));
        } else {
            fds[i] = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, nd->mode);
            if (fds[i] < 0)
                return fz_error_set(FZ_EIO, "%s: create: %s", path, strerror(errno));
            if (ftruncate(fds[i], (off_t)nd->size) != 0)
                return fz_error_set(FZ_EIO, "%s: cannot size to %llu bytes: %s", path,
                                    (unsigned long long)nd->size, strerror(errno));
        }
    }
    return 0;
}

static void draw_progress(uint64_t done, uint64_t total, bool final)
{
    double pct = total ? 100.0 * (double)done / (double)total : 100.0;
    fprintf(stderr, "\r  %8.1f / %.1f MiB  %5.1f%%%s", (double)done / 1048576.0,
            (double)total / 1048576.0, pct, final ? "\n" : "");
    fflush(stderr);
}

static int run_pool(fz_pool *p, int workers, bool progress, uint64_t total)
{
    pthread_t *th = calloc((size_t)workers, sizeof *th);
    if (!th)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int started = 0;
    for (; started < workers; started++)
        if (pthread_create(&th[started], NULL, worker, p) != 0)
            break;
    if (started == 0) {
        free(th);
        return fz_error_set(FZ_EIO, "cannot start worker threads");
    }
    if (progress) {
        while (atomic_load(&p->next) < p->njobs && !atomic_load(&p->failed) && !fz_stop_signal) {
            draw_progress(atomic_load(&p->done_bytes), total, false);
            usleep(200000);
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    if (progress)
        draw_progress(atomic_load(&p->done_bytes), total, true);
    int rc = fz_first_error_raise(&p->err);
    if (rc)
        return rc;
    if (fz_stop_signal)
        return fz_error_set(FZ_EINTR, "interrupted by signal %d; nothing was written",
                            (int)fz_stop_signal);
    return 0;
}

/* DEST's parent and base name (into buffers of PATH_MAX). */
static int split_dest(const char *dest, char *dcopy, char *bcopy, const char **parent,
                      const char **base)
{
    if (strlen(dest) >= PATH_MAX)
        return fz_error_set(FZ_ERANGE, "%s: path too long", dest);
    snprintf(dcopy, PATH_MAX, "%s", dest);
    snprintf(bcopy, PATH_MAX, "%s", dest);
    *parent = dirname(dcopy);
    *base = basename(bcopy);
    return 0;
}

/* An existing empty directory (not a symlink) may be DEST: finalize's rule
 * is never to overwrite content, and an empty directory has none. */
static bool empty_dir(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return false;
    DIR *d = opendir(path);
    if (!d)
        return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

int fz_materialize_check_dest(const char *dest)
{
    struct stat st;
    char dcopy[PATH_MAX], bcopy[PATH_MAX];
    const char *parent, *base;
    int rc;
    if (!dest || !*dest)
        return fz_error_set(FZ_EUSAGE, "materialize: DEST is empty; give the path of the "
                                       "directory to create");
    if (lstat(dest, &st) == 0 && !empty_dir(dest))
        return fz_error_set(FZ_EEXIST,
                            "Destination already exists: %s (fzfs never writes into "
                            "an existing path that has content: remove it or choose another "
                            "DEST)",
                            dest);
    if ((rc = split_dest(dest, dcopy, bcopy, &parent, &base)))
        return rc;
    if (stat(parent, &st) != 0)
        return fz_error_set(FZ_ENOTFOUND,
                            "%s: parent directory %s does not exist: %s (create "
                            "it first)",
                            dest, parent, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fz_error_set(FZ_ENOTFOUND, "%s: %s is not a directory", dest, parent);
    if (faccessat(AT_FDCWD, parent, W_OK | X_OK, AT_EACCESS) != 0)
        return fz_error_set(FZ_EIO, "%s: cannot create it in %s: %s", dest, parent,
                            strerror(errno));
    return 0;
}

/* ".<base>.fzfs-tmp-<pid>" -> pid, or 0 if `name` is not such a name. */
static long temp_pid(const char *name, const char *base)
{
    size_t bl = strlen(base);
    if (name[0] != '.' || strncmp(name + 1, base, bl) || strncmp(name + 1 + bl, ".fzfs-tmp-", 10))
        return 0;
    const char *d = name + 1 + bl + 10;
    long pid = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9' || pid > (INT_MAX - 9) / 10)
            return 0;
        pid = pid * 10 + (*d - '0');
    }
    return pid;
}

/* Temporary siblings of DEST left by a materialize that was killed (kill -9,
 * a crash, a power cut): a directory named like ours, owned by us, whose
 * process no longer exists. A live process's temp is never touched, nor
 * anything not ours. Each removal is reported on stderr. */
static void remove_stale_temps(const char *parent, const char *base)
{
    DIR *d = opendir(parent);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d))) {
        char path[PATH_MAX];
        struct stat st;
        long pid = temp_pid(e->d_name, base);
        if (pid <= 0 || pid == (long)getpid() ||
            (size_t)snprintf(path, sizeof path, "%s/%s", parent, e->d_name) >= sizeof path ||
            lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* running (or not ours to ask): in use */
        if (remove_tree(path) == 0)
            fz_warn("removed %s, left by an fzfs materialize (pid %ld) that no longer runs", path,
                    pid);
        else
            fz_warn("%s, left by an fzfs materialize (pid %ld) that no longer runs, could not "
                    "be removed: %s",
                    path, pid, strerror(errno));
    }
    closedir(d);
}

/* Write every file of the view under `tmp` (its directories and symlinks
 * made, its files opened at full size) and fsync each file: the extents
 * through the pool, then the late ones (their bytes follow from what the
 * first pass read). */
static int write_files(fz_view *v, const char *tmp, const fz_mat_opts *o)
{
    uint32_t n = fz_view_node_count(v);
    fz_extent *ext = NULL;
    size_t next = 0, nlate = 0;
    int rc = 0;
    int *fds = malloc(n * sizeof *fds);
    if (!fds)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        fds[i] = -1;
    if ((rc = make_tree(v, tmp, fds)) || (rc = fz_view_extents(v, FZ_CHUNK, &ext, &next)))
        goto done;
    /* The view lists the late extents (zip headers) last. */
    for (size_t i = next; i > 0 && ext[i - 1].late; i--)
        nlate++;

    int workers = o && o->workers > 0 ? o->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (workers < 1)
        workers = 1;
    fz_pool p = {.v = v, .ext = ext, .njobs = next - nlate, .fds = fds, .tmp = tmp};
    atomic_init(&p.done_bytes, 0);
    atomic_init(&p.failed, 0);
    fz_first_error_init(&p.err);
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        if (pass == 1) {
            p.ext = ext + (next - nlate);
            p.njobs = nlate;
        }
        atomic_init(&p.next, 0);
        rc = run_pool(&p, workers, o && o->progress && pass == 0, fz_view_total_bytes(v));
    }
    fz_first_error_destroy(&p.err);
    for (uint32_t i = 0; i < n && rc == 0; i++)
        if (fds[i] >= 0 && fsync(fds[i]) != 0)
            rc = fz_error_set(FZ_EIO, "%s: fsync: %s", fz_view_node(v, i)->path, strerror(errno));
done:
    for (uint32_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    free(ext);
    return rc;
}

/* fsync every directory under `tmp`, so the entries are durable before the
 * rename publishes them. */
static int sync_dirs(fz_view *v, const char *tmp)
{
    uint32_t n = fz_view_node_count(v);
    for (uint32_t i = 0; i < n; i++) {
        const fz_node *nd = fz_view_node(v, i);
        char path[PATH_MAX];
        int rc;
        if (nd->kind != FZ_NODE_DIR)
            continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", tmp, nd->path) >= sizeof path)
            return fz_error_set(FZ_ERANGE, "%s/%s: path too long", tmp, nd->path);
        if ((rc = fsync_path(path, O_RDONLY | O_DIRECTORY)))
            return rc;
    }
    return 0;
}

/* The atomic directory: DEST is written as a temporary sibling
 * ".<base>.fzfs-tmp-<pid>" and renamed into place only when complete. */
typedef struct {
    const char *dest, *parent, *base;
    char tmp[PATH_MAX], dcopy[PATH_MAX], bcopy[PATH_MAX];
    bool made; /* tmp exists and is ours to remove */
} fz_stage;

/* Check DEST, clear stale siblings of killed runs, create the sibling. */
static int stage_open(fz_stage *s, const char *dest, mode_t mode)
{
    int rc;
    s->dest = dest;
    s->made = false;
    if ((rc = fz_materialize_check_dest(dest)) ||
        (rc = split_dest(dest, s->dcopy, s->bcopy, &s->parent, &s->base)))
        return rc;
    if ((size_t)snprintf(s->tmp, sizeof s->tmp, "%s/.%s.fzfs-tmp-%ld", s->parent, s->base,
                         (long)getpid()) >= sizeof s->tmp)
        return fz_error_set(FZ_ERANGE, "%s: path too long", dest);
    remove_stale_temps(s->parent, s->base);
    if (mkdir(s->tmp, mode) != 0)
        return fz_error_set(FZ_EIO, "%s: cannot create: %s", s->tmp, strerror(errno));
    s->made = true;
    return 0;
}

/* Rename the sibling onto nothing, or onto an empty directory (rename(2)
 * replaces one atomically and fails if it has gained an entry meanwhile),
 * then make the rename durable. */
static int stage_publish(fz_stage *s)
{
    struct stat dst;
    bool onto_empty = lstat(s->dest, &dst) == 0 && S_ISDIR(dst.st_mode);
    if (renameat2(AT_FDCWD, s->tmp, AT_FDCWD, s->dest, onto_empty ? 0 : RENAME_NOREPLACE) != 0) {
        int e = errno;
        return fz_error_set(e == EEXIST || e == ENOTEMPTY ? FZ_EEXIST : FZ_EIO,
                            "%s: cannot rename into place: %s%s", s->dest, strerror(e),
                            e == ENOTEMPTY ? " (DEST gained content while fzfs was writing)" : "");
    }
    s->made = false;
    return fsync_path(s->parent, O_RDONLY | O_DIRECTORY);
}

/* Remove the sibling unless it was published. */
static void stage_close(fz_stage *s)
{
    if (s->made)
        remove_tree(s->tmp);
    s->made = false;
}

int fz_materialize(fz_view *v, const char *dest, const fz_mat_opts *o)
{
    fz_stage st;
    int rc = stage_open(&st, dest, fz_view_node(v, 0)->mode);
    fz_stop = o && o->stop ? o->stop : &no_stop;
    if (rc || (rc = write_files(v, st.tmp, o)) || (rc = sync_dirs(v, st.tmp)))
        goto done;
    if (fz_stop_signal) {
        rc = fz_error_set(FZ_EINTR, "interrupted by signal %d; nothing was written",
                          (int)fz_stop_signal);
        goto done;
    }
    /* What is published must pass `fzfs verify`. */
    if ((rc = fz_verify_gate_dir(st.tmp, v, dest)))
        goto done;
    test_pause();
    /* Every read was checked against its source; a source changed after
     * its last read would still make DEST disagree with SRC: look again. */
    if ((rc = fz_view_check_sources(v))) {
        rc = fz_error_prefix(rc, "%s: not written", dest);
        goto done;
    }
    rc = stage_publish(&st);
done:
    stage_close(&st);
    fz_stop = &no_stop;
    return rc;
}
