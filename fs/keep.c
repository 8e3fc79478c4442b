/* Computed files kept whole in the cache directory (fs/keep.h). */
#include "fs/keep.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cache/cache.h"
#include "util/error.h"
#include "util/log.h"
#include "util/vec.h"

/* The keeping thread's niceness: it uses what the readers leave. */
#define FZ_KEEP_NICE 10

/* A node's state (fz_fs_keep.state). */
enum { KEEP_NO, KEEP_CANDIDATE, KEEP_KEYED };

/* The thread's work: keep node (w NULL), or commit w, node's file computed
 * at its open. */
typedef struct {
    uint32_t node;
    fz_cache_file_writer *w;
} keep_item;

struct fz_fs_keep {
    fz_fs *fs;
    struct fz_cache *cache;
    /* Per node: whether it is a candidate and, once asked (the key is made
     * at its first open or read, not at mount), whether it has a key
     * (KEEP_*; written under key_lock, read without it); its key, written
     * before state says KEEP_KEYED; bytes answered; whether it was queued. */
    _Atomic uint8_t *state;
    pthread_mutex_t key_lock;
    fz_cache_key *keys;
    _Atomic uint64_t *served;
    atomic_bool *queued;
    /* Whether an open may compute the node whole (fz_keep_compute): cleared
     * for good when that failed for a reason that would recur. */
    atomic_bool *no_eager;
    /* Per node: a descriptor of the file computed at its open, until the
     * thread has committed it (opens meanwhile use it), or -1; under lock. */
    int *fresh;
    /* Work for the thread, in order, under lock: nodes to keep, and files
     * computed at open to commit. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    keep_item *q;
    size_t nq, capq, head;
    _Atomic bool stop;
    bool started;
    pthread_t th;
    _Atomic uint64_t stored;
    _Atomic uint64_t computed; /* files computed whole at their open */
};

typedef struct {
    fz_fs *fs;
    uint32_t node;
} keep_read;

/* Seconds on the monotonic clock. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int read_node(void *arg, uint64_t off, uint64_t len, uint8_t *buf)
{
    keep_read *r = arg;
    return fz_view_read(r->fs->v, r->node, off, len, buf);
}

/* Keep one node: nothing when the file is kept already (another mount of
 * the same cache, or an earlier one). */
static void keep_node(fz_fs_keep *k, uint32_t node)
{
    fz_fs *fs = k->fs;
    const fz_node *n = fz_view_node(fs->v, node);
    if (fz_view_node_stale(fs->v, node) || !atomic_load(&fs->passthrough))
        return;
    int fd;
    if (fz_cache_file_open(k->cache, &k->keys[node], n->size, &fd) == 0) {
        close(fd);
        return;
    }
    keep_read r = {fs, node};
    double t0 = now_s();
    int rc = fz_cache_file_store(k->cache, &k->keys[node], n->size, read_node, &r, &k->stop);
    double secs = now_s() - t0;
    if (rc == 0) {
        atomic_fetch_add(&k->stored, 1);
        fz_info("kept %s/%s whole in the cache (%.1f MB in %.1f s): later opens are read by the "
                "kernel",
                fs->mnt, n->path, (double)n->size / 1e6, secs);
    } else if (rc == FZ_ECANCELED) {
        fz_debug("keeping %s/%s: abandoned at unmount", fs->mnt, n->path);
    } else if (rc == FZ_EBUSY) {
        fz_debug("keeping %s/%s: another process is writing it", fs->mnt, n->path);
    } else {
        fz_info("not keeping %s/%s whole in the cache: %s", fs->mnt, n->path, fz_error_msg());
    }
}

/* Queue work for the thread: 0, or FZ_ENOMEM (w is then the caller's). */
static int enqueue(fz_fs_keep *k, uint32_t node, fz_cache_file_writer *w)
{
    pthread_mutex_lock(&k->lock);
    if (k->head == k->nq)
        k->head = k->nq = 0;
    int rc = FZ_VEC_RESERVE(k->q, k->capq, k->nq + 1);
    if (rc == 0) {
        k->q[k->nq++] = (keep_item){node, w};
        pthread_cond_signal(&k->cond);
    }
    pthread_mutex_unlock(&k->lock);
    return rc;
}

/* Forget node's descriptor of the file computed at its open. */
static void drop_fresh(fz_fs_keep *k, uint32_t node)
{
    pthread_mutex_lock(&k->lock);
    if (k->fresh[node] >= 0)
        close(k->fresh[node]);
    k->fresh[node] = -1;
    pthread_mutex_unlock(&k->lock);
}

/* Whether the mount is ending: the thread was told to stop, or the session
 * is exiting (a signal, the kernel's unmount). An open computing a file
 * holds up the session loop's end, which fz_keep_stop waits for, so it must
 * watch the session itself. */
static bool stopping(const fz_fs_keep *k)
{
    return atomic_load(&k->stop) || (k->fs->se && fuse_session_exited(k->fs->se));
}

/* Commit node's file, computed whole at its open (fz_keep_compute). */
static void commit_node(fz_fs_keep *k, uint32_t node, fz_cache_file_writer *w)
{
    const fz_node *n = fz_view_node(k->fs->v, node);
    /* Never canceled: every byte is written, what is left is an fsync and
     * the checksums of blocks not written whole (a .bin's headers'). */
    int rc = fz_cache_file_commit(w, NULL);
    drop_fresh(k, node); /* (committed: opens find it; else they compute again) */
    if (rc == 0) {
        atomic_fetch_add(&k->stored, 1);
        fz_debug("kept %s/%s in the cache: a later mount reads it by the kernel too", k->fs->mnt,
                 n->path);
    } else {
        fz_info("not keeping %s/%s in the cache for later mounts: %s", k->fs->mnt, n->path,
                fz_error_msg());
    }
}

static void *keep_main(void *arg)
{
    fz_fs_keep *k = arg;
    /* Linux: a thread's own niceness (setpriority on its tid). */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), FZ_KEEP_NICE) != 0)
        fz_debug("keeping thread: setpriority: %s", strerror(errno));
    pthread_mutex_lock(&k->lock);
    for (;;) {
        while (!atomic_load(&k->stop) && k->head == k->nq)
            pthread_cond_wait(&k->cond, &k->lock);
        /* At unmount, files computed at open are still committed (their
         * bytes are all written: it costs an fsync); nodes to read whole
         * are not kept. */
        while (atomic_load(&k->stop) && k->head < k->nq && !k->q[k->head].w)
            k->head++;
        if (atomic_load(&k->stop) && k->head == k->nq)
            break;
        keep_item it = k->q[k->head++];
        pthread_mutex_unlock(&k->lock);
        if (it.w)
            commit_node(k, it.node, it.w);
        else
            keep_node(k, it.node);
        pthread_mutex_lock(&k->lock);
    }
    pthread_mutex_unlock(&k->lock);
    return NULL;
}

static void keep_free(fz_fs_keep *k)
{
    for (size_t i = k->head; i < k->nq; i++)
        fz_cache_file_abort(k->q[i].w); /* (computed at open, not committed: none left) */
    free(k->no_eager);
    for (uint32_t i = 0; k->fresh && i < k->fs->nnodes; i++)
        if (k->fresh[i] >= 0)
            close(k->fresh[i]);
    free(k->fresh);
    free(k->state);
    free(k->keys);
    free(k->served);
    free(k->queued);
    free(k->q);
    pthread_mutex_destroy(&k->lock);
    pthread_mutex_destroy(&k->key_lock);
    pthread_cond_destroy(&k->cond);
    free(k);
}

fz_fs_keep *fz_keep_start(fz_fs *fs)
{
    if (fs->no_passthrough || !fs->backing || !fz_view_can_prefetch(fs->v)) {
        fz_debug("computed files are not kept whole: %s", fs->no_passthrough || !fs->backing
                                                              ? "passthrough is off"
                                                              : "no cache that stores");
        return NULL;
    }
    fz_fs_keep *k = calloc(1, sizeof *k);
    uint32_t nn = fs->nnodes ? fs->nnodes : 1;
    if (!k)
        return NULL;
    k->fs = fs;
    k->cache = fz_view_cache(fs->v);
    pthread_mutex_init(&k->lock, NULL);
    pthread_mutex_init(&k->key_lock, NULL);
    pthread_cond_init(&k->cond, NULL);
    k->state = calloc(nn, sizeof *k->state);
    k->keys = calloc(nn, sizeof *k->keys);
    k->served = calloc(nn, sizeof *k->served);
    k->queued = calloc(nn, sizeof *k->queued);
    k->no_eager = calloc(nn, sizeof *k->no_eager);
    k->fresh = malloc(nn * sizeof *k->fresh);
    for (uint32_t i = 0; k->fresh && i < nn; i++)
        k->fresh[i] = -1;
    if (!k->state || !k->keys || !k->served || !k->queued || !k->no_eager || !k->fresh) {
        keep_free(k);
        return NULL;
    }
    uint32_t count = 0;
    for (uint32_t i = 0; i < fs->nnodes; i++) {
        const fz_node *n = fz_view_node(fs->v, i);
        if (n->kind == FZ_NODE_FILE && n->size >= FZ_KEEP_MIN && fz_view_node_computed(fs->v, i)) {
            atomic_store_explicit(&k->state[i], KEEP_CANDIDATE, memory_order_relaxed);
            count++;
        }
    }
    if (count == 0 || fz_fs_thread_start(&k->th, keep_main, k) != 0) {
        fz_debug("computed files are not kept whole: %s",
                 count ? "no thread" : "no computed file large enough");
        keep_free(k);
        return NULL;
    }
    k->started = true;
    return k;
}

void fz_keep_stop(fz_fs_keep *k)
{
    if (!k)
        return;
    pthread_mutex_lock(&k->lock);
    atomic_store(&k->stop, true);
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->lock);
    if (k->started)
        pthread_join(k->th, NULL);
    k->started = false;
}

void fz_keep_free(fz_fs_keep *k)
{
    if (k) {
        fz_keep_stop(k);
        keep_free(k);
    }
}

bool fz_keep_eligible(fz_fs_keep *k, uint32_t node)
{
    if (!k || node >= k->fs->nnodes)
        return false;
    uint8_t s = atomic_load_explicit(&k->state[node], memory_order_acquire);
    if (s == KEEP_CANDIDATE) {
        pthread_mutex_lock(&k->key_lock);
        s = atomic_load_explicit(&k->state[node], memory_order_relaxed);
        if (s == KEEP_CANDIDATE) {
            s = fz_view_node_key(k->fs->v, node, &k->keys[node]) == 0 ? KEEP_KEYED : KEEP_NO;
            atomic_store_explicit(&k->state[node], s, memory_order_release);
        }
        pthread_mutex_unlock(&k->key_lock);
    }
    return s == KEEP_KEYED;
}

void fz_keep_served(fz_fs_keep *k, uint32_t node, uint64_t len)
{
    if (!fz_keep_eligible(k, node))
        return;
    uint64_t size = fz_view_node(k->fs->v, node)->size;
    uint64_t done = atomic_fetch_add_explicit(&k->served[node], len, memory_order_relaxed) + len;
    if (done < size || atomic_exchange(&k->queued[node], true))
        return;
    enqueue(k, node, NULL);
}

int fz_keep_open(fz_fs_keep *k, uint32_t node)
{
    int fd;
    if (!fz_keep_eligible(k, node))
        return -1;
    pthread_mutex_lock(&k->lock);
    fd = k->fresh[node] >= 0 ? fcntl(k->fresh[node], F_DUPFD_CLOEXEC, 0) : -1;
    pthread_mutex_unlock(&k->lock);
    if (fd >= 0)
        return fd;
    if (fz_cache_file_open(k->cache, &k->keys[node], fz_view_node(k->fs->v, node)->size, &fd) != 0)
        return -1;
    return fd;
}

uint64_t fz_keep_stored(const fz_fs_keep *k)
{
    return k ? atomic_load(&k->stored) : 0;
}

uint64_t fz_keep_computed(const fz_fs_keep *k)
{
    return k ? atomic_load(&k->computed) : 0;
}

bool fz_keep_eager(fz_fs_keep *k, uint32_t node)
{
    return fz_keep_eligible(k, node) && !k->fs->compute_on_read && !atomic_load(&k->no_eager[node]);
}

/* A file being computed whole, as tasks: one per FZ_CACHE_FILE_BLOCK (ext
 * NULL: a file without zip headers), or one per extent ext[i] (a .bin: its
 * record data first, which teaches the view every record's CRC, then its
 * zip headers, generated from those CRCs). */
typedef struct {
    fz_fs_keep *k;
    uint32_t node;
    uint64_t size;
    const fz_extent *ext;
    fz_cache_file_writer *w;
    fz_first_error err;
    pthread_mutex_t lock;
    /* Progress, under lock: bytes written, when it started and when a
     * progress line was last logged (a large file on a slow disk takes a
     * while, and its open waits: `tail -f` on the log shows why). */
    uint64_t done;
    double t0, logged;
} eager_job;

/* len more bytes of j's file are written: a progress line at most every
 * fs->progress_s. */
static void eager_progress(eager_job *j, uint64_t len)
{
    pthread_mutex_lock(&j->lock);
    j->done += len;
    double now = now_s();
    if (now - j->logged >= j->k->fs->progress_s && j->done < j->size) {
        j->logged = now;
        fz_info("computing %s/%s whole ... %d%% (%.2f GB/s)", j->k->fs->mnt,
                fz_view_node(j->k->fs->v, j->node)->path, (int)(j->done * 100 / j->size),
                (double)j->done / (now - j->t0) / 1e9);
    }
    pthread_mutex_unlock(&j->lock);
}

static void eager_task(void *arg, size_t i)
{
    eager_job *j = arg;
    if (fz_first_error_code(&j->err))
        return;
    fz_view *v = j->k->fs->v;
    const fz_extent *e = j->ext ? &j->ext[i] : NULL;
    uint64_t off = e ? e->off : (uint64_t)i * FZ_CACHE_FILE_BLOCK;
    uint64_t len = e                                     ? e->len
                   : j->size - off < FZ_CACHE_FILE_BLOCK ? j->size - off
                                                         : FZ_CACHE_FILE_BLOCK;
    uint8_t *buf = malloc(len ? (size_t)len : 1);
    int rc = !buf             ? fz_error_set(FZ_ENOMEM, "out of memory")
             : stopping(j->k) ? fz_error_set(FZ_ECANCELED, "the mount is being unmounted")
             : e              ? fz_view_read_extent_uncached(v, e, buf)
                              : fz_view_read_uncached(v, j->node, off, len, buf);
    if (rc == 0) /* (a whole block: checksummed from buf; others at commit) */
        rc = fz_cache_file_put(j->w, off, buf, len);
    free(buf);
    if (rc == 0)
        eager_progress(j, len);
    fz_first_error_note(&j->err, rc);
}

/* Compute j's file into j->w on the compute pool: 0, or the first failure
 * (its message the calling thread's). */
static int eager_run(eager_job *j)
{
    fz_fs *fs = j->k->fs;
    if (!fz_view_node(fs->v, j->node)->zip) {
        fz_fs_run_tasks(fs, (size_t)((j->size + FZ_CACHE_FILE_BLOCK - 1) / FZ_CACHE_FILE_BLOCK),
                        eager_task, j);
        return fz_first_error_raise(&j->err);
    }
    /* Extents within one block each: a block that one record's data covers
     * is put whole (checksummed from the buffer); the others, shared with
     * headers, are read back by the commit. */
    fz_extent *ext = NULL;
    size_t n = 0, nfirst = 0;
    int rc = fz_view_node_extents(fs->v, j->node, FZ_CACHE_FILE_BLOCK, &ext, &n);
    if (rc)
        return rc;
    while (nfirst < n && !ext[nfirst].late)
        nfirst++;
    /* The headers once every record's data is in (run_tasks returns when
     * every task has: its CRCs are noted). */
    j->ext = ext;
    fz_fs_run_tasks(fs, nfirst, eager_task, j);
    j->ext = ext + nfirst;
    if (!fz_first_error_code(&j->err))
        fz_fs_run_tasks(fs, n - nfirst, eager_task, j);
    free(ext);
    return fz_first_error_raise(&j->err);
}

int fz_keep_compute(fz_fs_keep *k, uint32_t node)
{
    fz_fs *fs = k->fs;
    const fz_node *n = fz_view_node(fs->v, node);
    eager_job j = {.k = k, .node = node, .size = n->size, .t0 = now_s()};
    j.logged = j.t0;
    int rc = fz_cache_file_begin(k->cache, &k->keys[node], n->size, &j.w);
    if (rc) {
        /* Stored meanwhile, or being stored by another process: the
         * caller looks again, or serves it through the daemon. */
        if (rc != FZ_EEXIST && rc != FZ_EBUSY) {
            atomic_store(&k->no_eager[node], true);
            fz_info("%s/%s is computed as it is read, not whole at its open: %s", fs->mnt, n->path,
                    fz_error_msg());
        }
        return -1;
    }
    fz_info("computing %s/%s whole at its first open (%.1f MB), into the cache", fs->mnt, n->path,
            (double)n->size / 1e6);
    pthread_mutex_init(&j.lock, NULL);
    fz_first_error_init(&j.err);
    int fd = eager_run(&j);
    fz_first_error_destroy(&j.err);
    pthread_mutex_destroy(&j.lock);
    fd = fd ? fd : fz_cache_file_reopen(j.w);
    if (fd < 0) { /* (the failure's message is this thread's) */
        if (fd != FZ_ECANCELED) {
            atomic_store(&k->no_eager[node], true);
            fz_warn("computing %s/%s whole failed: %s; it is computed as it is read", fs->mnt,
                    n->path, fz_error_msg());
        }
        fz_cache_file_abort(j.w);
        return -1;
    }
    int keep_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    pthread_mutex_lock(&k->lock);
    k->fresh[node] = keep_fd;
    pthread_mutex_unlock(&k->lock);
    if (enqueue(k, node, j.w) != 0) { /* (not kept for later mounts) */
        fz_cache_file_abort(j.w);
        drop_fresh(k, node);
    }
    atomic_fetch_add(&k->computed, 1);
    double secs = now_s() - j.t0;
    fz_info("computed %s/%s whole (%.1f MB in %.2f s): its reads are answered by the kernel",
            fs->mnt, n->path, (double)n->size / 1e6, secs);
    return fd;
}
