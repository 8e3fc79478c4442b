#include "materialize/materialize.h"

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
#include <zlib.h>

#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "verify/verify.h"

#define FZ_CHUNK (4u << 20)

/* One unit of work: a chunk of one segment of one file. */
typedef struct {
    uint32_t node;
    int fd;
    uint64_t off, len;
    int32_t zip; /* zip layout index or -1 */
    int32_t zrec;
    uint32_t crc;
} fz_job;

typedef struct {
    fz_view *v;
    fz_job *jobs;
    size_t njobs;
    atomic_size_t next;
    atomic_uint_fast64_t done_bytes;
    atomic_int failed;
    pthread_mutex_t err_lock;
    int err_code;
    char err_msg[1024];
    const char *tmp;
} fz_pool;

static volatile sig_atomic_t fz_stop_signal;

static void on_signal(int sig)
{
    fz_stop_signal = sig;
}

static void pool_fail(fz_pool *p, int rc)
{
    pthread_mutex_lock(&p->err_lock);
    if (!p->err_code) {
        p->err_code = rc;
        snprintf(p->err_msg, sizeof p->err_msg, "%s", fz_error_msg());
    }
    pthread_mutex_unlock(&p->err_lock);
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
        fz_job *j = &p->jobs[i];
        int rc = fz_view_read(p->v, j->node, j->off, j->len, buf);
        if (rc == 0)
            rc = fz_pwrite_full(j->fd, buf, (size_t)j->len, j->off,
                                fz_view_node(p->v, j->node)->path);
        if (rc) {
            pool_fail(p, rc);
            break;
        }
        if (j->zrec >= 0)
            j->crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)j->len);
        atomic_fetch_add(&p->done_bytes, j->len);
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

static void remove_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
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

/* Split every non-deferred segment into chunk jobs, in file order. */
static int plan_jobs(fz_view *v, const int *fds, fz_job **out, size_t *nout)
{
    size_t cap = 256, n = 0;
    fz_job *jobs = malloc(cap * sizeof *jobs);
    if (!jobs)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < fz_view_node_count(v); i++) {
        const fz_node *nd = fz_view_node(v, i);
        if (nd->kind != FZ_NODE_FILE)
            continue;
        for (uint32_t s = 0; s < nd->nsegs; s++) {
            const fz_seg *sg = &nd->segs[s];
            if (sg->kind == FZ_SEG_DEFERRED)
                continue;
            for (uint64_t o = 0; o < sg->len; o += FZ_CHUNK) {
                if (n == cap) {
                    fz_job *nj = realloc(jobs, 2 * cap * sizeof *jobs);
                    if (!nj) {
                        free(jobs);
                        return fz_error_set(FZ_ENOMEM, "out of memory");
                    }
                    jobs = nj;
                    cap *= 2;
                }
                uint64_t len = sg->len - o < FZ_CHUNK ? sg->len - o : FZ_CHUNK;
                jobs[n++] = (fz_job){i,
                                     fds[i],
                                     sg->off + o,
                                     len,
                                     nd->zip ? (int32_t)nd->zip - 1 : -1,
                                     nd->zip ? sg->zrec : -1,
                                     0};
            }
        }
    }
    *out = jobs;
    *nout = n;
    return 0;
}

/* Zip record CRCs from the chunk CRCs (crc32_combine, in order), handed to
 * the view so that the headers it generates need no second read. */
static void note_crcs(fz_view *v, const fz_job *jobs, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (jobs[i].zrec < 0) {
            i++;
            continue;
        }
        uint32_t crc = jobs[i].crc;
        size_t k = i + 1;
        for (; k < n && jobs[k].node == jobs[i].node && jobs[k].zrec == jobs[i].zrec; k++)
            crc = (uint32_t)crc32_combine(crc, jobs[k].crc, (z_off_t)jobs[k].len);
        fz_view_note_crc(v, (uint32_t)jobs[i].zip, jobs[i].zrec, crc);
        i = k;
    }
}

static int write_deferred(fz_view *v, const int *fds)
{
    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (uint32_t i = 0; i < fz_view_node_count(v) && rc == 0; i++) {
        const fz_node *nd = fz_view_node(v, i);
        if (nd->kind != FZ_NODE_FILE)
            continue;
        for (uint32_t s = 0; s < nd->nsegs && rc == 0; s++) {
            const fz_seg *sg = &nd->segs[s];
            if (sg->kind != FZ_SEG_DEFERRED)
                continue;
            if (sg->len > cap) {
                free(buf);
                cap = (size_t)sg->len;
                if (!(buf = malloc(cap)))
                    return fz_error_set(FZ_ENOMEM, "out of memory");
            }
            rc = fz_view_read(v, i, sg->off, sg->len, buf);
            if (rc == 0)
                rc = fz_pwrite_full(fds[i], buf, (size_t)sg->len, sg->off, nd->path);
        }
    }
    free(buf);
    return rc;
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
    if (p->err_code)
        return fz_error_set(p->err_code, "%s", p->err_msg);
    if (fz_stop_signal)
        return fz_error_set(FZ_EINTR, "interrupted by signal %d; nothing was written",
                            (int)fz_stop_signal);
    return 0;
}

int fz_materialize(fz_view *v, const char *dest, const fz_mat_opts *o)
{
    int rc = 0;
    struct stat st;
    char tmp[PATH_MAX], dcopy[PATH_MAX], bcopy[PATH_MAX];
    uint32_t n = fz_view_node_count(v);
    int *fds = NULL;
    fz_job *jobs = NULL;
    size_t njobs = 0;
    bool made = false;
    struct sigaction sa, old_int, old_term;

    if (lstat(dest, &st) == 0)
        return fz_error_set(FZ_EEXIST, "Destination already exists: %s", dest);
    if (strlen(dest) >= sizeof dcopy)
        return fz_error_set(FZ_ERANGE, "%s: path too long", dest);
    snprintf(dcopy, sizeof dcopy, "%s", dest);
    snprintf(bcopy, sizeof bcopy, "%s", dest);
    const char *parent = dirname(dcopy), *base = basename(bcopy);
    if (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode))
        return fz_error_set(FZ_ENOTFOUND, "%s: parent directory %s does not exist", dest, parent);
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.fzfs-tmp-%ld", parent, base, (long)getpid()) >=
        sizeof tmp)
        return fz_error_set(FZ_ERANGE, "%s: path too long", dest);

    fz_stop_signal = 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    if (mkdir(tmp, fz_view_node(v, 0)->mode) != 0) {
        rc = fz_error_set(FZ_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    made = true;
    fds = malloc(n * sizeof *fds);
    if (!fds) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < n; i++)
        fds[i] = -1;
    if ((rc = make_tree(v, tmp, fds)) || (rc = plan_jobs(v, fds, &jobs, &njobs)))
        goto done;

    int workers = o && o->workers > 0 ? o->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (workers < 1)
        workers = 1;
    fz_pool p = {.v = v, .jobs = jobs, .njobs = njobs, .tmp = tmp};
    atomic_init(&p.next, 0);
    atomic_init(&p.done_bytes, 0);
    atomic_init(&p.failed, 0);
    pthread_mutex_init(&p.err_lock, NULL);
    rc = run_pool(&p, workers, o && o->progress, fz_view_total_bytes(v));
    pthread_mutex_destroy(&p.err_lock);
    if (rc)
        goto done;
    note_crcs(v, jobs, njobs);
    if ((rc = write_deferred(v, fds)))
        goto done;
    for (uint32_t i = 0; i < n; i++)
        if (fds[i] >= 0) {
            if (fsync(fds[i]) != 0) {
                rc = fz_error_set(FZ_EIO, "%s: fsync: %s", fz_view_node(v, i)->path,
                                  strerror(errno));
                goto done;
            }
            close(fds[i]);
            fds[i] = -1;
        }
    for (uint32_t i = 0; i < n; i++) {
        const fz_node *nd = fz_view_node(v, i);
        char path[PATH_MAX];
        if (nd->kind != FZ_NODE_DIR)
            continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", tmp, nd->path) >= sizeof path) {
            rc = fz_error_set(FZ_ERANGE, "%s/%s: path too long", tmp, nd->path);
            goto done;
        }
        if ((rc = fsync_path(path, O_RDONLY | O_DIRECTORY)))
            goto done;
    }
    if (fz_stop_signal) {
        rc = fz_error_set(FZ_EINTR, "interrupted by signal %d; nothing was written",
                          (int)fz_stop_signal);
        goto done;
    }
    /* What is published must pass `fzfs verify`. */
    if ((rc = fz_verify_gate_dir(tmp, v, dest)))
        goto done;
    test_pause();
    /* Every read was checked against its source; a source changed after
     * its last read would still make DEST disagree with SRC: look again. */
    if ((rc = fz_view_check_sources(v))) {
        rc = fz_error_prefix(rc, "%s: not written", dest);
        goto done;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_NOREPLACE) != 0) {
        rc = fz_error_set(errno == EEXIST ? FZ_EEXIST : FZ_EIO, "%s: cannot rename into place: %s",
                          dest, strerror(errno));
        goto done;
    }
    made = false;
    rc = fsync_path(parent, O_RDONLY | O_DIRECTORY);
done:
    if (fds) {
        for (uint32_t i = 0; i < n; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        free(fds);
    }
    free(jobs);
    if (made)
        remove_tree(tmp);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
