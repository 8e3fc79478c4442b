/* Computed files kept whole in the cache directory (fs/keep.h). */
#include "fs/keep.h"

#include <errno.h>
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
    /* Nodes to keep, in order, under lock. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint32_t *q;
    size_t nq, capq, head;
    _Atomic bool stop;
    bool started;
    pthread_t th;
    _Atomic uint64_t stored;
};

typedef struct {
    fz_fs *fs;
    uint32_t node;
} keep_read;

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
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = fz_cache_file_store(k->cache, &k->keys[node], n->size, read_node, &r, &k->stop);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
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
        if (atomic_load(&k->stop))
            break;
        uint32_t node = k->q[k->head++];
        pthread_mutex_unlock(&k->lock);
        keep_node(k, node);
        pthread_mutex_lock(&k->lock);
    }
    pthread_mutex_unlock(&k->lock);
    return NULL;
}

static void keep_free(fz_fs_keep *k)
{
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
    if (!k->state || !k->keys || !k->served || !k->queued) {
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
    pthread_mutex_lock(&k->lock);
    if (k->head == k->nq)
        k->head = k->nq = 0;
    if (FZ_VEC_RESERVE(k->q, k->capq, k->nq + 1) == 0) {
        k->q[k->nq++] = node;
        pthread_cond_signal(&k->cond);
    }
    pthread_mutex_unlock(&k->lock);
}

int fz_keep_open(fz_fs_keep *k, uint32_t node)
{
    int fd;
    if (!fz_keep_eligible(k, node) ||
        fz_cache_file_open(k->cache, &k->keys[node], fz_view_node(k->fs->v, node)->size, &fd) != 0)
        return -1;
    return fd;
}

uint64_t fz_keep_stored(const fz_fs_keep *k)
{
    return k ? atomic_load(&k->stored) : 0;
}
