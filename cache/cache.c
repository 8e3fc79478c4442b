/* The chunk cache: opening the LMDB environment, transactions, and fetch
 * with single flight. Value headers are in value.c, the writer thread,
 * batching and eviction in store.c, stats/verify/clear in admin.c. */
#include "cache/cache.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/cache_int.h"
#include "util/error.h"
#include "util/log.h"

#define FZ_CACHE_DEFAULT_MAP (16ull << 30)
#define FZ_CACHE_MAXREADERS 1022

/* ---- the environment ---- */

char *fz_cache_default_dir(void)
{
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char *out = NULL;
    if (xdg && xdg[0] == '/') {
        if (asprintf(&out, "%s/fzfs", xdg) < 0)
            return NULL;
        return out;
    }
    if (!home || !home[0]) {
        struct passwd pw, *res = NULL;
        char buf[4096];
        if (getpwuid_r(getuid(), &pw, buf, sizeof buf, &res) == 0 && res)
            home = res->pw_dir;
        else
            return NULL;
        if (asprintf(&out, "%s/.cache/fzfs", home) < 0)
            return NULL;
        return out;
    }
    if (asprintf(&out, "%s/.cache/fzfs", home) < 0)
        return NULL;
    return out;
}

/* mkdir -p */
int fz_cache_make_dirs(const char *dir)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path)
        return fz_error_set(FZ_EINVAL, "cache directory '%s': bad path", dir);
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char save = path[i];
        path[i] = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return fz_error_set(FZ_EIO, "cache directory %s: cannot create %s: %s", dir, path,
                                strerror(errno));
        path[i] = save;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fz_error_set(FZ_EIO, "cache directory %s: not a directory", dir);
    return 0;
}

/* LMDB forbids opening one environment twice in a process (its POSIX
 * locks are per process); this table turns that into an error. */
static pthread_mutex_t fz_open_lock = PTHREAD_MUTEX_INITIALIZER;
static fz_cache *fz_open_caches[16];

static int register_open(fz_cache *c, const char *dir)
{
    int rc = 0;
    pthread_mutex_lock(&fz_open_lock);
    size_t slot = SIZE_MAX;
    for (size_t i = 0; i < 16; i++) {
        fz_cache *o = fz_open_caches[i];
        if (o && o->dir_dev == c->dir_dev && o->dir_ino == c->dir_ino) {
            rc = fz_error_set(FZ_EEXIST, "cache %s is already open in this process", dir);
            goto done;
        }
        if (!o && slot == SIZE_MAX)
            slot = i;
    }
    if (slot == SIZE_MAX)
        rc = fz_error_set(FZ_ENOMEM, "cache %s: too many caches open", dir);
    else
        fz_open_caches[slot] = c;
done:
    pthread_mutex_unlock(&fz_open_lock);
    return rc;
}

static void unregister_open(fz_cache *c)
{
    pthread_mutex_lock(&fz_open_lock);
    for (size_t i = 0; i < 16; i++)
        if (fz_open_caches[i] == c)
            fz_open_caches[i] = NULL;
    pthread_mutex_unlock(&fz_open_lock);
}

static int lmdb_error(const char *dir, const char *what, int rc)
{
    return fz_error_set(FZ_EIO, "cache %s: %s: %s", dir, what, mdb_strerror(rc));
}

static void destroy_locks(fz_cache *c)
{
    pthread_rwlock_destroy(&c->txn_lock);
    pthread_mutex_destroy(&c->fl_lock);
    pthread_cond_destroy(&c->fl_cond);
    pthread_mutex_destroy(&c->rt_lock);
    pthread_mutex_destroy(&c->trim_lock);
    pthread_mutex_destroy(&c->q_lock);
    pthread_cond_destroy(&c->q_work);
    pthread_cond_destroy(&c->q_idle);
    pthread_cond_destroy(&c->q_room);
}

typedef struct {
    const char *dir;
    uint64_t map_size;
    bool fresh;
    char *why;
    size_t whylen;
} fz_env_args;

/* mdb_env_open and the databases, inside a guard. 0, 1 (damaged, why
 * says how) or a negative FZ_E* code. */
static int env_open_guarded(fz_cache *c, void *arg)
{
    fz_env_args *a = arg;
    MDB_txn *txn;
    int mrc;
    /* NOTLS: read txns are not tied to threads (FUSE workers, compute
     * pool), so a reset one can be renewed by any thread.
     * NOSYNC without WRITEMAP: a crash may lose the last commits, never
     * corrupt the tree; fz_cache_close syncs. Without WRITEMAP the map is
     * only read, so only reads can fault (damage.c). (WRITEMAP, measured
     * on a cold mount, saved no time worth its costs: a data file as long
     * as the map, and a tree a system crash can damage.) */
    if ((mrc = mdb_env_open(c->env, a->dir, MDB_NOTLS | MDB_NOSYNC, 0644))) {
        if (mrc != MDB_INVALID && mrc != MDB_VERSION_MISMATCH && mrc != MDB_CORRUPTED)
            return lmdb_error(a->dir, "mdb_env_open", mrc);
        snprintf(a->why, a->whylen, "mdb_env_open: %s", mdb_strerror(mrc));
        return 1;
    }
    if (!a->map_size && a->fresh && (mrc = mdb_env_set_mapsize(c->env, FZ_CACHE_DEFAULT_MAP)))
        return lmdb_error(a->dir, "mdb_env_set_mapsize", mrc);
    MDB_envinfo info;
    MDB_stat est;
    mdb_env_info(c->env, &info);
    mdb_env_stat(c->env, &est);
    c->map_size = info.me_mapsize;
    c->psize = est.ms_psize;
    if (!(mrc = mdb_txn_begin(c->env, NULL, 0, &txn))) {
        fz_cache_guard_note(txn, false);
        if ((mrc = mdb_dbi_open(txn, "data", MDB_CREATE, &c->dbi_data)) ||
            (mrc = mdb_dbi_open(txn, "atime", MDB_CREATE, &c->dbi_atime)) ||
            (mrc = mdb_dbi_open(txn, "meta", MDB_CREATE, &c->dbi_meta)))
            mdb_txn_abort(txn);
        else
            mrc = mdb_txn_commit(txn);
        fz_cache_guard_note(NULL, false);
    }
    if (!mrc)
        return fz_cache_walk_check(c, a->why, a->whylen);
    if (mrc != MDB_CORRUPTED && mrc != MDB_PAGE_NOTFOUND && mrc != MDB_INCOMPATIBLE &&
        mrc != MDB_BAD_DBI)
        return lmdb_error(a->dir, "opening the databases", mrc);
    snprintf(a->why, a->whylen, "opening the databases: %s", mdb_strerror(mrc));
    return 1;
}

/* Create and open c->env in dir. Returns 0, 1 when the environment is
 * damaged (why says how; c->env closed) or a negative FZ_E* code. */
static int open_env(fz_cache *c, const char *dir, uint64_t map_size, char *why, size_t whylen)
{
    int mrc, rc;
    char datafile[PATH_MAX];
    struct stat st;
    if ((mrc = mdb_env_create(&c->env)))
        return lmdb_error(dir, "mdb_env_create", mrc);
    mdb_env_set_assert(c->env, fz_cache_on_assert);
    /* map_size 0 keeps an existing environment's size (so `fzfs cache
     * stats` does not resize the map under a running mount). */
    snprintf(datafile, sizeof datafile, "%s/data.mdb", dir);
    fz_env_args a = {dir, map_size, stat(datafile, &st) != 0 || st.st_size == 0, why, whylen};
    if ((map_size && (mrc = mdb_env_set_mapsize(c->env, map_size))) ||
        (mrc = mdb_env_set_maxdbs(c->env, 4)) ||
        (mrc = mdb_env_set_maxreaders(c->env, FZ_CACHE_MAXREADERS))) {
        rc = lmdb_error(dir, "configuring the environment", mrc);
    } else if ((rc = fz_cache_guarded(c, env_open_guarded, &a)) == FZ_CACHE_FAULT) {
        /* (fz_cache_guarded marked c broken, with a warning: the caller
         * recreates the environment or runs without it.) */
        snprintf(why, whylen, "a fault reading data.mdb");
        rc = 1;
    }
    if (rc == 0)
        return 0;
    mdb_env_close(c->env);
    c->env = NULL;
    return rc;
}

int fz_cache_open(fz_cache **out, const char *dir, uint64_t map_size)
{
    return fz_cache_open_flags(out, dir, map_size, 0);
}

int fz_cache_open_flags(fz_cache **out, const char *dir, uint64_t map_size, unsigned flags)
{
    int rc = 0;
    bool registered = false, locks = false;
    struct stat st;
    char why[600];
    *out = NULL;
    fz_cache *c = calloc(1, sizeof *c);
    if (!c)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    c->lock_fd = -1;
    long page = sysconf(_SC_PAGESIZE);
    c->page = page > 0 ? (uintptr_t)page : 4096;
    c->touched = calloc(FZ_CACHE_TOUCH_MAX, sizeof *c->touched);
    c->dir = strdup(dir);
    if (!c->touched || !c->dir) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = fz_cache_make_dirs(dir)))
        goto done;
    if (stat(dir, &st) != 0) {
        rc = fz_error_set(FZ_EIO, "cache directory %s: %s", dir, strerror(errno));
        goto done;
    }
    c->dir_dev = st.st_dev;
    c->dir_ino = st.st_ino;
    if ((rc = register_open(c, dir)))
        goto done;
    registered = true;
    pthread_rwlock_init(&c->txn_lock, NULL);
    pthread_mutex_init(&c->fl_lock, NULL);
    pthread_cond_init(&c->fl_cond, NULL);
    pthread_mutex_init(&c->rt_lock, NULL);
    pthread_mutex_init(&c->trim_lock, NULL);
    pthread_mutex_init(&c->q_lock, NULL);
    pthread_cond_init(&c->q_work, NULL);
    pthread_cond_init(&c->q_idle, NULL);
    pthread_cond_init(&c->q_room, NULL);
    locks = true;

    fz_cache_guard_install();
    /* Shared for as long as the cache is open (damage.c: the lock). */
    if ((c->lock_fd = fz_cache_lock_open(dir)) < 0) {
        rc = c->lock_fd;
        goto done;
    }
    int e = fz_cache_lock(c->lock_fd, LOCK_SH);
    if (e) {
        rc = fz_error_set(FZ_EIO, "cache %s: cannot lock: %s", dir, strerror(-e));
        goto done;
    }
    c->opening = true;
    int damaged = fz_cache_check_file(dir, why, sizeof why);
    if (!damaged && (damaged = open_env(c, dir, map_size, why, sizeof why)) < 0) {
        rc = damaged;
        goto done;
    }
    if (damaged && (flags & FZ_CACHE_NO_REPAIR)) {
        rc = fz_error_set(FZ_EIO, "cache %s is damaged: %s. Run `fzfs cache clear` to recreate it",
                          dir, why);
        goto done;
    }
    if (damaged) {
        /* Recreate it empty, unless another process has it open. */
        if (fz_cache_lock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            rc = fz_error_set(FZ_EIO,
                              "cache %s is damaged (%s) and another fzfs process uses it. Run "
                              "`fzfs cache clear` once no mount uses it to recreate it",
                              dir, why);
            goto done;
        }
        if ((rc = fz_cache_remove_env(dir)))
            goto done;
        fz_warn("cache %s was damaged (%s): recreated it empty (`fzfs cache clear` does the "
                "same by hand)",
                dir, why);
        fz_cache_lock(c->lock_fd, LOCK_SH);
        if ((rc = open_env(c, dir, map_size, why, sizeof why)) == 1)
            rc = fz_error_set(FZ_EIO, "cache %s: a new environment is damaged too: %s", dir, why);
        if (rc)
            goto done;
    }
    c->opening = false;
    c->keep_all = (flags & FZ_CACHE_KEEP_ALL) != 0;
    atomic_store(&c->broken, false);
    if ((rc = fz_cache_writer_start(c)))
        goto done;
    *out = c;
    c = NULL;
done:
    if (c) {
        if (c->env)
            mdb_env_close(c->env);
        if (locks)
            destroy_locks(c);
        if (registered)
            unregister_open(c);
        if (c->lock_fd >= 0)
            close(c->lock_fd);
        free(c->touched);
        free(c->dir);
        free(c);
    }
    return rc;
}

static int close_guarded(fz_cache *c, void *arg)
{
    (void)arg;
    while (c->nrtxn > 0)
        mdb_txn_abort(c->rtxn[--c->nrtxn]);
    int mrc = atomic_load(&c->broken) ? 0 : mdb_env_sync(c->env, 1);
    if (mrc)
        fz_log(FZ_LOG_WARNING, "cache: mdb_env_sync: %s", mdb_strerror(mrc));
    mdb_env_close(c->env);
    return 0;
}

void fz_cache_close(fz_cache *c)
{
    if (!c)
        return;
    fz_cache_writer_stop(c);
    fz_cache_guarded(c, close_guarded, NULL);
    destroy_locks(c);
    unregister_open(c);
    close(c->lock_fd);
    free(c->touched);
    free(c->dir);
    free(c);
}

int fz_cache_txn_begin(fz_cache *c, unsigned flags, MDB_txn **txn)
{
    for (int attempt = 0;; attempt++) {
        pthread_rwlock_rdlock(&c->txn_lock);
        fz_cache_guard_note(NULL, true);
        int mrc = mdb_txn_begin(c->env, NULL, flags, txn);
        if (mrc == 0) {
            fz_cache_guard_note(*txn, true);
            return 0;
        }
        fz_cache_guard_note(NULL, false);
        pthread_rwlock_unlock(&c->txn_lock);
        if (mrc != MDB_MAP_RESIZED || attempt > 0)
            return mrc;
        /* Another process grew the map: adopt its size with no txn live here. */
        pthread_rwlock_wrlock(&c->txn_lock);
        mrc = mdb_env_set_mapsize(c->env, 0);
        pthread_mutex_lock(&c->trim_lock); /* the map moved: forget where it was */
        c->trim_lo = c->trim_hi = 0;
        c->trim_bytes = 0;
        pthread_mutex_unlock(&c->trim_lock);
        if (mrc == 0) {
            MDB_envinfo info;
            mdb_env_info(c->env, &info);
            c->map_size = info.me_mapsize;
        }
        pthread_rwlock_unlock(&c->txn_lock);
        if (mrc)
            return mrc;
    }
}

void fz_cache_txn_release(fz_cache *c)
{
    fz_cache_guard_note(NULL, false);
    pthread_rwlock_unlock(&c->txn_lock);
}

int fz_cache_txn_end(fz_cache *c, MDB_txn *txn, bool commit)
{
    int mrc = 0;
    if (commit)
        mrc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    fz_cache_txn_release(c);
    return mrc;
}

/* Read transactions are reused: a lookup renews a reset one (no reader
 * table lock, no allocation) and resets it afterwards. A renew that fails
 * (MDB_MAP_RESIZED: another process grew the map) drops that transaction
 * and begins a new one the usual way, which adopts the new size. */
static int rtxn_begin(fz_cache *c, MDB_txn **txn)
{
    pthread_mutex_lock(&c->rt_lock);
    MDB_txn *t = c->nrtxn ? c->rtxn[--c->nrtxn] : NULL;
    pthread_mutex_unlock(&c->rt_lock);
    if (t) {
        pthread_rwlock_rdlock(&c->txn_lock);
        fz_cache_guard_note(t, true); /* a fault aborts it: it is no longer pooled */
        if (mdb_txn_renew(t) == 0) {
            *txn = t;
            return 0;
        }
        mdb_txn_abort(t);
        fz_cache_txn_release(c);
    }
    return fz_cache_txn_begin(c, MDB_RDONLY, txn);
}

static void rtxn_end(fz_cache *c, MDB_txn *txn)
{
    mdb_txn_reset(txn);
    fz_cache_txn_release(c);
    pthread_mutex_lock(&c->rt_lock);
    if (c->nrtxn < FZ_CACHE_RTXN_MAX) {
        c->rtxn[c->nrtxn++] = txn;
        txn = NULL;
    }
    pthread_mutex_unlock(&c->rt_lock);
    if (txn)
        mdb_txn_abort(txn);
}

void fz_cache_trim(fz_cache *c, const void *p, uint64_t len)
{
    uintptr_t page = c->page;
    if (len < FZ_CACHE_TRIM_MIN)
        return;
    uintptr_t lo = (uintptr_t)p, hi = lo + (uintptr_t)len;
    pthread_mutex_lock(&c->trim_lock);
    if (!c->trim_hi || lo < c->trim_lo)
        c->trim_lo = lo;
    if (hi > c->trim_hi)
        c->trim_hi = hi;
    c->trim_bytes += len;
    if (c->trim_bytes < FZ_CACHE_TRIM_EVERY) {
        pthread_mutex_unlock(&c->trim_lock);
        return;
    }
    lo = c->trim_lo & ~(page - 1);
    hi = (c->trim_hi + page - 1) & ~(page - 1);
    c->trim_lo = c->trim_hi = 0;
    c->trim_bytes = 0;
    pthread_mutex_unlock(&c->trim_lock);
    madvise((void *)lo, (size_t)(hi - lo), MADV_DONTNEED);
}

static uint64_t stat_pages(const MDB_stat *s)
{
    return (uint64_t)s->ms_branch_pages + s->ms_leaf_pages + s->ms_overflow_pages;
}

uint64_t fz_cache_used_bytes(fz_cache *c, MDB_txn *txn)
{
    MDB_stat s;
    uint64_t pages = 2; /* the two meta pages */
    MDB_dbi dbis[] = {0 /* free list */, 1 /* main (names) */, c->dbi_data, c->dbi_atime,
                      c->dbi_meta};
    for (size_t i = 0; i < sizeof dbis / sizeof *dbis; i++)
        if (mdb_stat(txn, dbis[i], &s) == 0)
            pages += stat_pages(&s);
    return pages * c->psize;
}

/* ---- fetch ---- */

typedef struct {
    const fz_cache_key *key;
    uint64_t len, off, n;
    uint8_t *out;
} fz_lookup_args;

/* lookup's LMDB part, inside a guard: 1, 0, -1 or -2 as below. */
static int lookup_guarded(fz_cache *c, void *arg)
{
    const fz_lookup_args *a = arg;
    uint8_t kb[FZ_CACHE_KEYLEN];
    MDB_txn *txn;
    MDB_val k = {FZ_CACHE_KEYLEN, kb}, v;
    uint64_t vl = 0;
    const uint8_t *payload;
    fz_cache_key_encode(a->key, kb);
    int mrc = rtxn_begin(c, &txn);
    if (mrc) {
        if (!fz_cache_lmdb_damage(c, mrc))
            fz_log(FZ_LOG_WARNING, "cache: read transaction: %s", mdb_strerror(mrc));
        return -2;
    }
    mrc = mdb_get(txn, c->dbi_data, &k, &v);
    int res;
    if (mrc == MDB_NOTFOUND) {
        res = 0;
    } else if (mrc) {
        if (!fz_cache_lmdb_damage(c, mrc))
            fz_log(FZ_LOG_WARNING, "cache: mdb_get: %s", mdb_strerror(mrc));
        res = -2;
    } else if (fz_cache_value_parse(v.mv_data, v.mv_size, a->key, &vl, &payload) && vl == a->len &&
               fz_cache_value_check(v.mv_data, a->off, a->n)) {
        /* The pointer is into the map: valid only until the txn ends. */
        if (a->n)
            memcpy(a->out, payload + a->off, (size_t)a->n);
        res = 1;
    } else {
        res = -1;
    }
    if (mrc == 0)
        fz_cache_trim(c, v.mv_data, v.mv_size);
    rtxn_end(c, txn);
    return res;
}

/* Look key up in LMDB; on a sound value of len bytes copy its bytes
 * [off, off+n) to out. Returns 1 (hit), 0 (absent), -1 (present but
 * unsound: counted and queued for deletion) or -2 (LMDB error, logged, or
 * a damaged environment). */
static int lookup(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off, uint64_t n,
                  uint8_t *out)
{
    if (atomic_load(&c->broken))
        return -2;
    fz_lookup_args a = {key, len, off, n, out};
    int res = fz_cache_guarded(c, lookup_guarded, &a);
    if (res == FZ_CACHE_FAULT)
        return -2;
    if (res == -1) {
        fz_log(FZ_LOG_WARNING, "cache: value %016llx%016llx/%llu failed verification; recomputing",
               (unsigned long long)key->hi, (unsigned long long)key->lo,
               (unsigned long long)key->chunk);
        atomic_fetch_add(&c->delta[FZ_CTR_CORRUPT], 1);
        fz_cache_queue_del(c, key);
    }
    return res;
}

/* Single flight.
 *
 * A fill in progress is an fz_flight on the filling thread's stack, linked
 * into c->flights under fl_lock. A thread that misses the key in LMDB and
 * in the write queue looks for a flight with the same key and length: if
 * there is one it counts itself as a waiter and sleeps on fl_cond until the
 * filler publishes DONE or FAILED. On DONE the waiter copies the bytes it
 * wants straight out of the filler's chunk buffer (without the lock), then
 * drops its waiter count; the filler does not return - so its buffer stays
 * valid - until the count is zero. On FAILED the waiter starts over (and
 * usually becomes the filler itself, so it gets its own error detail).
 *
 * A filler queues its value before it unlinks its flight, and the writer
 * commits a value before it leaves the queue; so a thread that finds no
 * flight and links its own looks in the queue and then in LMDB once more
 * before computing: a chunk is computed once per process, as long as it
 * is stored and not evicted meanwhile. The lock is never held while
 * filling, copying or queueing. Single flight is per process; two
 * processes may both compute a chunk (the same bytes). */
static fz_flight *flight_find(fz_cache *c, const fz_cache_key *key, uint64_t len)
{
    /* A failed flight lingers until its waiters have seen it: skip it. */
    for (fz_flight *f = c->flights; f; f = f->next)
        if (fz_cache_key_eq(&f->key, key) && f->len == len && f->state != FZ_FLIGHT_FAILED)
            return f;
    return NULL;
}

static void flight_remove(fz_cache *c, fz_flight *me)
{
    for (fz_flight **p = &c->flights; *p; p = &(*p)->next)
        if (*p == me) {
            *p = me->next;
            return;
        }
}

/* Wait for flight f (fl_lock held, released on return). Returns true when
 * the bytes were copied, false when the filler failed. */
static bool flight_wait(fz_cache *c, fz_flight *f, uint64_t off, uint64_t n, uint8_t *out)
{
    f->waiters++;
    while (f->state == FZ_FLIGHT_FILLING)
        pthread_cond_wait(&c->fl_cond, &c->fl_lock);
    bool done = f->state == FZ_FLIGHT_DONE;
    pthread_mutex_unlock(&c->fl_lock);
    if (done)
        memcpy(out, f->data + off, (size_t)n);
    pthread_mutex_lock(&c->fl_lock);
    f->waiters--;
    pthread_cond_broadcast(&c->fl_cond);
    pthread_mutex_unlock(&c->fl_lock);
    return done;
}

/* Fill the chunk as the flight `me` (already linked) and publish it.
 * recheck_db: LMDB said "absent" (not "unsound") at the first look.
 * out is NULL (and n 0) for a prefetch: nothing is copied out.
 *
 * A caller that wants the whole chunk gets it filled straight into out
 * (the queue then keeps a copy); otherwise the chunk is filled into a
 * value buffer (fz_cache_value_alloc) that the queue takes as it is, once
 * the last waiter has copied from it. */
static int flight_fill(fz_cache *c, fz_flight *me, uint64_t off, uint64_t n, uint8_t *out,
                       fz_cache_fill_fn fill, void *arg, int store, bool recheck_db)
{
    uint64_t len = me->len, hl = fz_cache_header_len(len);
    bool whole = out && off == 0 && n == len, filled = false;
    uint8_t *val = whole ? NULL : fz_cache_value_alloc(c, len);
    uint8_t *chunk = whole ? out : val ? val + hl : NULL;
    int rc = 0;
    /* A filler that finished between our first look and our flight queued
     * its value before unlinking its flight, so it is now in the queue or
     * (after the writer's commit, which precedes leaving the queue) in
     * LMDB: look again, in that order, before computing. */
    if (!chunk) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
    } else if (fz_cache_queue_lookup(c, &me->key, len, 0, len, chunk) ||
               (recheck_db && lookup(c, &me->key, len, 0, len, chunk) == 1)) {
        atomic_fetch_add(&c->delta[FZ_CTR_HITS], 1);
    } else {
        rc = fill(arg, chunk, len);
        filled = true;
        atomic_fetch_add(&c->delta[FZ_CTR_FILLS], 1);
    }

    pthread_mutex_lock(&c->fl_lock);
    me->state = rc ? FZ_FLIGHT_FAILED : FZ_FLIGHT_DONE;
    me->data = chunk;
    pthread_cond_broadcast(&c->fl_cond);
    pthread_mutex_unlock(&c->fl_lock);
    /* Waiters copy from `chunk` meanwhile (everyone only reads it; the
     * header goes in front of it, in bytes nobody else reads). */
    bool keep = rc == 0 && store != FZ_CACHE_NO_STORE && filled;
    bool wait = store == FZ_CACHE_STORE_WAIT;
    if (rc == 0 && !whole && n)
        memcpy(out, chunk + off, (size_t)n);
    if (keep && whole)
        fz_cache_queue_put(c, &me->key, chunk, len, wait);
    else if (keep)
        fz_cache_header(val, &me->key, chunk, len);
    /* A store that waits does it here, outside fl_lock (fetches of other
     * keys need it); the room may be taken again meanwhile, and then the
     * put below pushes an older value out as any store does. */
    if (keep && !whole && wait)
        fz_cache_queue_wait_room(c, len);
    pthread_mutex_lock(&c->fl_lock);
    while (me->waiters > 0)
        pthread_cond_wait(&c->fl_cond, &c->fl_lock);
    /* Queued before the flight is unlinked (so a thread that finds no
     * flight finds the value), and only now that no waiter reads it. */
    if (keep && !whole) {
        fz_cache_queue_put_value(c, &me->key, val, len, false);
        val = NULL;
    }
    flight_remove(c, me);
    pthread_mutex_unlock(&c->fl_lock);
    if (val)
        fz_cache_value_free(c, val, len);
    return rc;
}

int fz_cache_fetch_range(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off,
                         uint64_t n, uint8_t *out, fz_cache_fill_fn fill, void *arg, int store)
{
    if (off > len || n > len - off)
        return fz_error_set(FZ_EINVAL, "cache: range [%llu, +%llu) outside a chunk of %llu",
                            (unsigned long long)off, (unsigned long long)n,
                            (unsigned long long)len);
    if (!c || atomic_load(&c->broken)) {
        if (off == 0 && n == len)
            return fill(arg, out, len);
        uint8_t *chunk = malloc(len ? (size_t)len : 1);
        if (!chunk)
            return fz_error_set(FZ_ENOMEM, "out of memory");
        int rc = fill(arg, chunk, len);
        if (rc == 0)
            memcpy(out, chunk + off, (size_t)n);
        free(chunk);
        return rc;
    }
    /* The queue first: a chunk computed ahead of its reader is there. */
    if (fz_cache_queue_lookup(c, key, len, off, n, out)) {
        atomic_fetch_add(&c->delta[FZ_CTR_HITS], 1);
        return 0;
    }
    int first = lookup(c, key, len, off, n, out);
    if (first == 1) {
        atomic_fetch_add(&c->delta[FZ_CTR_HITS], 1);
        fz_cache_queue_touch(c, key);
        return 0;
    }
    atomic_fetch_add(&c->delta[FZ_CTR_MISSES], 1);
    for (;;) {
        if (fz_cache_queue_lookup(c, key, len, off, n, out)) {
            atomic_fetch_add(&c->delta[FZ_CTR_HITS], 1);
            return 0;
        }
        pthread_mutex_lock(&c->fl_lock);
        fz_flight *f = flight_find(c, key, len);
        if (f) {
            if (flight_wait(c, f, off, n, out)) {
                atomic_fetch_add(&c->delta[FZ_CTR_HITS], 1);
                return 0;
            }
            continue; /* the filler failed: try ourselves */
        }
        fz_flight me = {.key = *key, .len = len, .state = FZ_FLIGHT_FILLING, .next = c->flights};
        c->flights = &me;
        pthread_mutex_unlock(&c->fl_lock);
        return flight_fill(c, &me, off, n, out, fill, arg, store, first == 0);
    }
}

int fz_cache_peek_range(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off,
                        uint64_t n, uint8_t *out)
{
    if (!c || off > len || n > len - off)
        return 0;
    if (fz_cache_queue_lookup(c, key, len, off, n, out) || lookup(c, key, len, off, n, out) == 1) {
        atomic_fetch_add(&c->delta[FZ_CTR_HITS], 1);
        return 1;
    }
    atomic_fetch_add(&c->delta[FZ_CTR_MISSES], 1);
    return 0;
}

int fz_cache_prefetch(fz_cache *c, const fz_cache_key *key, uint64_t len, fz_cache_fill_fn fill,
                      void *arg)
{
    /* Without room in the queue the chunk would be computed for nothing. */
    if (!c || !fz_cache_queue_room(c, len) || fz_cache_queue_lookup(c, key, len, 0, 0, NULL))
        return 0;
    int first = lookup(c, key, len, 0, 0, NULL);
    if (first == 1 || first == -2)
        return 0;
    pthread_mutex_lock(&c->fl_lock);
    if (flight_find(c, key, len)) {
        pthread_mutex_unlock(&c->fl_lock);
        return 0; /* being computed: by a reader, or another prefetch */
    }
    fz_flight me = {.key = *key, .len = len, .state = FZ_FLIGHT_FILLING, .next = c->flights};
    c->flights = &me;
    pthread_mutex_unlock(&c->fl_lock);
    atomic_fetch_add(&c->delta[FZ_CTR_MISSES], 1);
    int rc = flight_fill(c, &me, 0, 0, NULL, fill, arg, FZ_CACHE_STORE, first == 0);
    return rc ? rc : 1;
}

int fz_cache_fetch(fz_cache *c, const fz_cache_key *key, uint64_t len, uint8_t *out,
                   fz_cache_fill_fn fill, void *arg, int store)
{
    return fz_cache_fetch_range(c, key, len, 0, len, out, fill, arg, store);
}
