/* Surviving a damaged cache: the check of data.mdb before LMDB maps it, the
 * advisory lock that keeps fzfs from removing a cache another process uses,
 * and the guard around LMDB calls.
 *
 * The cache is a cache: damage must cost recomputation, never a read, a
 * mount or a crash. Three kinds of damage reach fzfs:
 *
 * 1. A file damaged while nobody has it open (truncated, overwritten, a
 *    disk error): before mdb_env_open, fz_cache_check_file reads both meta
 *    pages (magic, version, page number; the newer one names the last page
 *    in use) and requires the file to hold every page up to it. LMDB maps
 *    mapsize bytes whatever the file's size, so a short file would turn the
 *    first read of a missing page into SIGBUS; a bad meta page would be
 *    MDB_INVALID. Either way fz_cache_open removes the environment and
 *    starts an empty one when nobody else uses it (below), else it fails
 *    with a message naming `fzfs cache clear` and the caller goes on
 *    without a cache.
 *
 * 2. A file shrunk while this process has it mapped (another program, a
 *    full disk, a user's truncate). Checking the size before each read
 *    would cost an fstat per read and still race with the truncation, so
 *    the guard below handles the fault itself: every LMDB call runs inside
 *    fz_cache_guard (sigsetjmp); the SIGBUS handler, when the faulting
 *    thread is inside a guard, siglongjmps back to it. The guarded code then
 *    aborts its transaction, releases txn_lock, and marks the cache broken:
 *    a warning once, and from then on every fetch computes (no LMDB call is
 *    made again in this process except closing it). Outside a guard the
 *    handler restores the previous action and returns, so a fault anywhere
 *    else kills the process as before. SIGSEGV is caught the same way: a
 *    corrupt page sends LMDB through garbage offsets, in the map or in a
 *    write transaction's copies of pages (heap). MDB_WRITEMAP stays off:
 *    writes go through pwrite and never fault; only reads can. Nothing but
 *    LMDB calls and the checks of the value they return runs inside a
 *    guard: a fill (computing a chunk) never does, so a fault in the rest
 *    of fzfs is never hidden. (A fault inside malloc called by LMDB would
 *    leave an arena locked; LMDB only allocates its own fixed-size
 *    structures, which a damaged file cannot corrupt.)
 *
 * 3. Pages damaged inside a well-formed file: LMDB answers MDB_CORRUPTED or
 *    MDB_PAGE_NOTFOUND (fz_cache_lmdb_damage turns those into "broken"), or
 *    fails an internal assertion, which would abort(); the assertion
 *    callback (mdb_env_set_assert) siglongjmps to the guard like a fault.
 *
 * The lock: "fzfs.lock" in the cache directory, flock()ed shared by every
 * process that opens the cache, exclusive (without waiting) by whoever
 * removes the environment: `fzfs cache clear` and the recreation of a
 * damaged one. So fzfs never removes or truncates a cache another fzfs
 * process has mapped; `fzfs cache clear` refuses while one does. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/cache_int.h"
#include "util/error.h"
#include "util/log.h"

/* ---- the file check ---- */

/* LMDB 0.9's on-disk meta page (lmdb/mdb.c): a 16-byte page header
 * (pgno u64, pad u16, flags u16, lower/upper u16), then MDB_meta: magic
 * u32, version u32, address u64, mapsize u64, two MDB_db of 48 bytes (the
 * free DB's md_pad holds the page size), last_pg u64, txnid u64. */
#define LMDB_PAGEHDR 16u
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_VERSION 1u
#define LMDB_P_META 0x08u
#define LMDB_META_LEN (LMDB_PAGEHDR + 136u)

typedef struct {
    uint64_t mapsize, last_pg, txnid;
    uint32_t psize;
} lmdb_meta;

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Parse the meta page numbered pgno from b (LMDB_META_LEN bytes). */
static bool parse_meta(const uint8_t *b, uint64_t pgno, lmdb_meta *m)
{
    const uint8_t *mm = b + LMDB_PAGEHDR;
    if (le(b, 8) != pgno || !(le(b + 10, 2) & LMDB_P_META) || le(mm, 4) != LMDB_MAGIC ||
        le(mm + 4, 4) != LMDB_VERSION)
        return false;
    m->mapsize = le(mm + 16, 8);
    m->psize = (uint32_t)le(mm + 24, 4);
    m->last_pg = le(mm + 120, 8);
    m->txnid = le(mm + 128, 8);
    return true;
}

int fz_cache_check_file(const char *dir, char *why, size_t whylen)
{
    char path[PATH_MAX];
    uint8_t b[2][LMDB_META_LEN];
    lmdb_meta m[2];
    struct stat st;
    int rc = 1;
    why[0] = '\0';
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        return 1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s is not a regular file", path);
        goto done;
    }
    if (st.st_size == 0) { /* LMDB starts an empty environment in it */
        rc = 0;
        goto done;
    }
    if (pread(fd, b[0], LMDB_META_LEN, 0) != (ssize_t)LMDB_META_LEN ||
        !parse_meta(b[0], 0, &m[0])) {
        snprintf(why, whylen, "%s: the first meta page is not LMDB's", path);
        goto done;
    }
    uint32_t ps = m[0].psize;
    if (ps < 512 || ps > 65536 || (ps & (ps - 1))) {
        snprintf(why, whylen, "%s: page size %u in the meta page", path, ps);
        goto done;
    }
    if (pread(fd, b[1], LMDB_META_LEN, ps) != (ssize_t)LMDB_META_LEN ||
        !parse_meta(b[1], 1, &m[1])) {
        snprintf(why, whylen, "%s: the second meta page is %s", path,
                 (uint64_t)st.st_size < 2ull * ps ? "missing (file truncated)" : "not LMDB's");
        goto done;
    }
    const lmdb_meta *cur = m[1].txnid > m[0].txnid ? &m[1] : &m[0];
    uint64_t need;
    if (cur->last_pg >= UINT64_MAX / ps - 1) {
        snprintf(why, whylen, "%s: last page %llu in the meta page", path,
                 (unsigned long long)cur->last_pg);
        goto done;
    }
    need = (cur->last_pg + 1) * ps;
    if ((uint64_t)st.st_size < need) {
        snprintf(why, whylen, "%s is %llu bytes, its meta page needs %llu (truncated)", path,
                 (unsigned long long)st.st_size, (unsigned long long)need);
        goto done;
    }
    rc = 0;
done:
    close(fd);
    return rc;
}

/* The free list's records are page lists LMDB's write path trusts (a
 * count, then page numbers): a bad one corrupts its heap, which no guard
 * can undo. So every open walks every record of every database once (a
 * few thousand 4 MiB values: cheap), which also makes LMDB check each
 * branch and leaf page it passes, and checks each free-list record. */
int fz_cache_walk_check(fz_cache *c, char *why, size_t whylen)
{
    MDB_txn *txn;
    MDB_val k, v;
    struct stat st;
    char path[PATH_MAX];
    int mrc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
    if (mrc) {
        snprintf(why, whylen, "reading the environment: %s", mdb_strerror(mrc));
        return 1;
    }
    fz_cache_guard_note(txn, false);
    /* Pages of this snapshot lie in the file as it is now (LMDB never
     * shrinks it; other processes may have grown it since). */
    snprintf(path, sizeof path, "%s/data.mdb", c->dir);
    uint64_t npages = stat(path, &st) == 0 && c->psize ? (uint64_t)st.st_size / c->psize : 0;
    const MDB_dbi dbis[] = {0 /* the free list */, c->dbi_data, c->dbi_atime, c->dbi_meta};
    int bad = 0;
    for (size_t d = 0; d < sizeof dbis / sizeof *dbis && !bad; d++) {
        MDB_cursor *cur;
        if ((mrc = mdb_cursor_open(txn, dbis[d], &cur))) {
            snprintf(why, whylen, "walking database %zu: %s", d, mdb_strerror(mrc));
            bad = 1;
            break;
        }
        while (!bad && (mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
            if (d != 0)
                continue;
            uint64_t n = 0, pg;
            const uint8_t *p = v.mv_data;
            if (v.mv_size >= sizeof(size_t))
                memcpy(&n, p, sizeof(size_t) < 8 ? sizeof(size_t) : 8);
            bad = v.mv_size < sizeof(size_t) || v.mv_size % sizeof(size_t) ||
                  n != v.mv_size / sizeof(size_t) - 1;
            for (uint64_t i = 1; !bad && i <= n; i++) {
                size_t x;
                memcpy(&x, p + i * sizeof(size_t), sizeof x);
                pg = x;
                bad = pg < 2 || pg >= npages;
            }
            if (bad)
                snprintf(why, whylen, "a free-list record is damaged");
        }
        if (!bad && mrc != MDB_NOTFOUND) {
            snprintf(why, whylen, "walking database %zu: %s", d, mdb_strerror(mrc));
            bad = 1;
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    fz_cache_guard_note(NULL, false);
    return bad;
}

/* ---- the lock ---- */

int fz_cache_lock_open(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/fzfs.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return fz_error_set(FZ_EIO, "cache %s: cannot open %s: %s", dir, path, strerror(errno));
    return fd;
}

int fz_cache_lock(int fd, int how)
{
    int r;
    while ((r = flock(fd, how)) != 0 && errno == EINTR)
        ;
    return r == 0 ? 0 : -errno;
}

int fz_cache_remove_env(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    char path[PATH_MAX];
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            return fz_error_set(FZ_EIO, "cache %s: cannot remove %s: %s", dir, path,
                                strerror(errno));
    }
    return 0;
}

int fz_cache_reset(const char *dir)
{
    int rc = fz_cache_make_dirs(dir);
    if (rc)
        return rc;
    int fd = fz_cache_lock_open(dir);
    if (fd < 0)
        return fd;
    int e = fz_cache_lock(fd, LOCK_EX | LOCK_NB);
    if (e == -EWOULDBLOCK)
        rc = fz_error_set(FZ_EIO,
                          "cache %s is in use by another fzfs process (a mount or a "
                          "materialize); unmount it or let it finish, then run `fzfs cache "
                          "clear` again",
                          dir);
    else if (e)
        rc = fz_error_set(FZ_EIO, "cache %s: cannot lock: %s", dir, strerror(-e));
    else if (!(rc = fz_cache_remove_env(dir)))
        rc = fz_cache_files_clear(dir);
    close(fd);
    return rc;
}

/* ---- the guard ---- */

static _Thread_local fz_cache_guard *guard_top;
static _Thread_local bool guard_unblocked;
static struct sigaction old_bus, old_segv;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    fz_cache_guard *g = guard_top;
    if (g) {
        guard_top = g->prev;
        g->fault = sig;
        siglongjmp(g->jb, 1);
    }
    struct sigaction *old = sig == SIGBUS ? &old_bus : &old_segv;
    if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) {
        old->sa_sigaction(sig, si, uc);
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
    } else {
        /* The default action: the faulting access repeats and kills us. */
        sigaction(sig, old, NULL);
    }
}

void fz_cache_guard_install(void)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static const int sigs[2] = {SIGBUS, SIGSEGV};
    struct sigaction *old[2] = {&old_bus, &old_segv};
    struct sigaction sa, cur;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    /* (Again at every open: a handler installed over ours since, e.g. by
     * a test harness, is kept as the one faults outside guards go to.) */
    pthread_mutex_lock(&lock);
    for (int i = 0; i < 2; i++)
        if (sigaction(sigs[i], NULL, &cur) == 0 &&
            !((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault))
            sigaction(sigs[i], &sa, old[i]);
    pthread_mutex_unlock(&lock);
}

void fz_cache_on_assert(MDB_env *env, const char *msg)
{
    (void)env;
    fz_cache_guard *g = guard_top;
    if (!g)
        return; /* LMDB aborts */
    guard_top = g->prev;
    g->fault = -1;
    snprintf(g->what, sizeof g->what, "LMDB assertion: %s", msg);
    siglongjmp(g->jb, 1);
}

void fz_cache_guard_push(fz_cache_guard *g, fz_cache *c)
{
    if (!guard_unblocked) {
        /* A fault's signal must not be blocked (the kernel would kill the
         * process): threads started with every signal blocked unblock
         * these two the first time they enter a guard. */
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGBUS);
        sigaddset(&s, SIGSEGV);
        pthread_sigmask(SIG_UNBLOCK, &s, NULL);
        guard_unblocked = true;
    }
    g->c = c;
    g->txn = NULL;
    g->locked = false;
    g->fault = 0;
    g->what[0] = '\0';
    g->prev = guard_top;
    guard_top = g;
}

void fz_cache_guard_pop(fz_cache_guard *g)
{
    if (guard_top == g)
        guard_top = g->prev;
}

void fz_cache_guard_note(MDB_txn *txn, bool locked)
{
    if (guard_top) {
        guard_top->txn = txn;
        guard_top->locked = locked;
    }
}

void fz_cache_guard_recover(fz_cache_guard *g)
{
    fz_cache *c = g->c;
    if (!g->what[0])
        snprintf(g->what, sizeof g->what, "%s reading data.mdb (file truncated or damaged)",
                 g->fault == SIGBUS ? "bus error" : "segmentation fault");
    /* Give back the reader slot or the write lock (other processes need
     * it); an abort that faults again is given up. */
    MDB_txn *txn = g->txn;
    bool locked = g->locked;
    g->txn = NULL;
    g->locked = false;
    if (txn) {
        fz_cache_guard again;
        fz_cache_guard_push(&again, c);
        if (sigsetjmp(again.jb, 0) == 0) {
            mdb_txn_abort(txn);
            fz_cache_guard_pop(&again);
        }
    }
    if (locked)
        pthread_rwlock_unlock(&c->txn_lock);
    fz_cache_set_damaged(c, g->what);
}

int fz_cache_guarded(fz_cache *c, int (*fn)(fz_cache *c, void *arg), void *arg)
{
    fz_cache_guard g;
    fz_cache_guard_push(&g, c);
    if (sigsetjmp(g.jb, 0)) {
        fz_cache_guard_recover(&g);
        return FZ_CACHE_FAULT;
    }
    int rc = fn(c, arg);
    fz_cache_guard_pop(&g);
    return rc;
}

void fz_cache_set_damaged(fz_cache *c, const char *what)
{
    if (atomic_exchange(&c->broken, true) || c->opening)
        return;
    fz_warn("cache %s is damaged (%s); computing without it from now on. Run `fzfs cache "
            "clear` once no mount uses it to recreate it",
            c->dir, what);
}

bool fz_cache_lmdb_damage(fz_cache *c, int mrc)
{
    if (mrc != MDB_CORRUPTED && mrc != MDB_PAGE_NOTFOUND && mrc != MDB_INVALID &&
        mrc != MDB_VERSION_MISMATCH && mrc != MDB_BAD_TXN && mrc != MDB_PANIC)
        return false;
    fz_cache_set_damaged(c, mdb_strerror(mrc));
    return true;
}
