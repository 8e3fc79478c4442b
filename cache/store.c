/* The cache's write side: the queue that fetches hand computed values to,
 * the one writer thread that commits them in batches, the LRU side table
 * and eviction. See cache.h for the contract, cache_int.h for the handle. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache_int.h"
#include "util/error.h"
#include "util/log.h"
#include "util/vec.h"

const char *const fz_cache_ctr_names[FZ_NCTR] = {"hits", "misses", "fills", "corrupt", "evictions"};

uint64_t fz_cache_meta_get(fz_cache *c, MDB_txn *txn, const char *name)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    uint64_t x = 0;
    if (mdb_get(txn, c->dbi_meta, &k, &v) == 0 && v.mv_size == 8)
        memcpy(&x, v.mv_data, 8);
    return x;
}

static int meta_put(fz_cache *c, MDB_txn *txn, const char *name, uint64_t x)
{
    MDB_val k = {strlen(name), (void *)name}, v = {8, &x};
    return mdb_put(txn, c->dbi_meta, &k, &v, 0);
}

/* ---- the queue (producers: fetching threads) ---- */

static void append(fz_cache *c, fz_cache_op *op)
{
    op->next = NULL;
    if (c->tail)
        c->tail->next = op;
    else
        c->head = op;
    c->tail = op;
    c->q_bytes += op->vlen;
    c->head_bytes += op->vlen;
    pthread_cond_signal(&c->q_work);
}

uint8_t *fz_cache_value_alloc(fz_cache *c, uint64_t len)
{
    uint64_t vlen = fz_cache_header_len(len) + len;
    if (vlen >= FZ_CACHE_SPARE_MIN) {
        pthread_mutex_lock(&c->q_lock);
        for (unsigned i = 0; i < c->nspare; i++)
            if (c->spare_len[i] == vlen) {
                uint8_t *val = c->spare[i];
                c->nspare--;
                c->spare[i] = c->spare[c->nspare];
                c->spare_len[i] = c->spare_len[c->nspare];
                pthread_mutex_unlock(&c->q_lock);
                return val;
            }
        pthread_mutex_unlock(&c->q_lock);
    }
    return malloc((size_t)vlen);
}

/* fz_cache_value_free with q_lock held. */
static void value_free_locked(fz_cache *c, uint8_t *val, uint64_t vlen)
{
    if (vlen < FZ_CACHE_SPARE_MIN || c->nspare == FZ_CACHE_SPARE_MAX || c->stop) {
        free(val);
        return;
    }
    c->spare[c->nspare] = val;
    c->spare_len[c->nspare++] = vlen;
}

void fz_cache_value_free(fz_cache *c, uint8_t *val, uint64_t len)
{
    if (!val)
        return;
    pthread_mutex_lock(&c->q_lock);
    value_free_locked(c, val, fz_cache_header_len(len) + len);
    pthread_mutex_unlock(&c->q_lock);
}

/* Whether a value of vlen bytes may join the queue (q_lock held): it fits
 * beside the batch being committed, pushing out older values if need be. */
static bool room_locked(const fz_cache *c, uint64_t vlen)
{
    uint64_t batch = c->q_bytes - c->head_bytes;
    return batch == 0 || batch + vlen <= FZ_CACHE_QUEUE_MAX;
}

/* Drop the oldest queued values (not yet taken by the writer) until vlen
 * more bytes fit under FZ_CACHE_QUEUE_MAX. A value dropped is computed
 * again when it is next read; the newest is the one the reads right behind
 * it want. A delete is never dropped (it may remove an unsound value). */
static void make_room_locked(fz_cache *c, uint64_t vlen)
{
    fz_cache_op **p = &c->head, *prev = NULL;
    while (*p && c->q_bytes + vlen > FZ_CACHE_QUEUE_MAX) {
        fz_cache_op *op = *p;
        if (op->kind != FZ_OP_PUT) {
            prev = op;
            p = &op->next;
            continue;
        }
        *p = op->next;
        if (c->tail == op)
            c->tail = prev;
        c->q_bytes -= op->vlen;
        c->head_bytes -= op->vlen;
        value_free_locked(c, op->val, op->vlen);
        free(op);
        atomic_fetch_add(&c->dropped, 1);
    }
}

/* Whether a value of vlen bytes (header included) is ever stored: not with
 * a broken cache, nor one this large against the map (it would evict
 * everything else on every store, and may not fit at all: it is computed
 * each time instead). */
static bool storable(fz_cache *c, uint64_t vlen)
{
    return !atomic_load(&c->broken) && vlen <= c->map_size / 3;
}

/* Whether a value of len bytes would be queued now: pushing older values
 * out (push), or in the free room alone. */
static bool admissible(fz_cache *c, uint64_t len, bool push)
{
    uint64_t vlen = fz_cache_header_len(len) + len;
    if (!storable(c, vlen))
        return false;
    pthread_mutex_lock(&c->q_lock);
    bool room = !c->stop && (push ? room_locked(c, vlen)
                                  : c->q_bytes == 0 || c->q_bytes + vlen <= FZ_CACHE_QUEUE_MAX);
    pthread_mutex_unlock(&c->q_lock);
    return room;
}

bool fz_cache_queue_room(fz_cache *c, uint64_t len)
{
    return admissible(c, len, false);
}

/* fz_cache_queue_wait_room with q_lock held. An empty queue always takes
 * a value (one larger than the bound waits for nothing). The writer stamps
 * batch_started each round (at least once a second, a batch or not), so a
 * stamp FZ_CACHE_STALL_SECS old with the queue still full is a stall. */
static void wait_room_locked(fz_cache *c, uint64_t vlen)
{
    while (!c->stop && c->q_bytes > 0 && c->q_bytes + vlen > FZ_CACHE_QUEUE_MAX) {
        if (c->keep_all) {
            pthread_cond_wait(&c->q_room, &c->q_lock);
            continue;
        }
        struct timespec seen = c->batch_started, until = seen;
        until.tv_sec += FZ_CACHE_STALL_SECS;
        if (pthread_cond_timedwait(&c->q_room, &c->q_lock, &until) == ETIMEDOUT &&
            c->batch_started.tv_sec == seen.tv_sec && c->batch_started.tv_nsec == seen.tv_nsec)
            return; /* the writer is stalled: wait no longer */
    }
}

void fz_cache_queue_wait_room(fz_cache *c, uint64_t len)
{
    pthread_mutex_lock(&c->q_lock);
    wait_room_locked(c, fz_cache_header_len(len) + len);
    pthread_mutex_unlock(&c->q_lock);
}

void fz_cache_queue_put_value(fz_cache *c, const fz_cache_key *key, uint8_t *val, uint64_t len,
                              bool wait)
{
    uint64_t vlen = fz_cache_header_len(len) + len;
    if (!storable(c, vlen)) {
        if (!atomic_load(&c->broken))
            fz_log(FZ_LOG_DEBUG, "cache: %llu-byte value not stored in a %llu-byte map",
                   (unsigned long long)vlen, (unsigned long long)c->map_size);
        fz_cache_value_free(c, val, len);
        return;
    }
    fz_cache_op *op = malloc(sizeof *op);
    pthread_mutex_lock(&c->q_lock);
    /* Memory held by queued values stays under the bound; a reader never
     * waits for the writer: older values make room, or (when the batch
     * being committed leaves none) this one is dropped; dropped bytes are
     * computed again by a later read. */
    /* (`wait`, FZ_CACHE_KEEP_ALL: wait for the writer to commit instead.) */
    if (op && (wait || c->keep_all))
        wait_room_locked(c, vlen);
    if (op && !c->stop && room_locked(c, vlen))
        make_room_locked(c, vlen);
    if (!op || c->stop || !room_locked(c, vlen)) {
        if (op && !c->stop)
            atomic_fetch_add(&c->dropped, 1);
        value_free_locked(c, val, vlen);
        pthread_mutex_unlock(&c->q_lock);
        free(op);
        return;
    }
    *op = (fz_cache_op){.kind = FZ_OP_PUT, .key = *key, .val = val, .vlen = vlen};
    append(c, op);
    pthread_mutex_unlock(&c->q_lock);
}

void fz_cache_queue_put(fz_cache *c, const fz_cache_key *key, const uint8_t *bytes, uint64_t len,
                        bool wait)
{
    /* Not copied when it would not be queued (`wait` makes room). */
    uint64_t vlen = fz_cache_header_len(len) + len;
    if (wait ? !storable(c, vlen) : !admissible(c, len, true)) {
        if (storable(c, vlen))
            atomic_fetch_add(&c->dropped, 1);
        return;
    }
    uint8_t *val = fz_cache_value_alloc(c, len);
    if (!val) {
        fz_log(FZ_LOG_DEBUG, "cache: out of memory queueing a value; not stored");
        return;
    }
    uint64_t hl = fz_cache_header_len(len);
    memcpy(val + hl, bytes, (size_t)len);
    fz_cache_header(val, key, val + hl, len);
    fz_cache_queue_put_value(c, key, val, len, wait);
}

void fz_cache_queue_del(fz_cache *c, const fz_cache_key *key)
{
    fz_cache_op *op = malloc(sizeof *op);
    if (!op)
        return;
    *op = (fz_cache_op){.kind = FZ_OP_DEL, .key = *key};
    pthread_mutex_lock(&c->q_lock);
    if (c->stop) {
        pthread_mutex_unlock(&c->q_lock);
        free(op);
        return;
    }
    append(c, op);
    pthread_mutex_unlock(&c->q_lock);
}

void fz_cache_queue_touch(fz_cache *c, const fz_cache_key *key)
{
    pthread_mutex_lock(&c->q_lock);
    /* Consecutive reads of one chunk (FUSE reads are 128 KiB) touch once. */
    const fz_cache_key *last = c->ntouched ? &c->touched[c->ntouched - 1] : NULL;
    bool same = last && last->hi == key->hi && last->lo == key->lo && last->chunk == key->chunk;
    if (!same && c->ntouched < FZ_CACHE_TOUCH_MAX)
        c->touched[c->ntouched++] = *key;
    pthread_mutex_unlock(&c->q_lock);
}

static bool find_in(const fz_cache_op *op, const fz_cache_key *key, uint64_t len, uint64_t off,
                    uint64_t n, uint8_t *out)
{
    const fz_cache_op *found = NULL;
    for (; op; op = op->next)
        if (op->key.hi == key->hi && op->key.lo == key->lo && op->key.chunk == key->chunk)
            found = op; /* the last op for the key wins */
    uint64_t hl = fz_cache_header_len(len);
    if (!found || found->kind != FZ_OP_PUT || found->vlen != hl + len)
        return false;
    if (n)
        memcpy(out, found->val + hl + off, (size_t)n);
    return true;
}

bool fz_cache_queue_lookup(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off,
                           uint64_t n, uint8_t *out)
{
    pthread_mutex_lock(&c->q_lock);
    bool hit = find_in(c->head, key, len, off, n, out) || find_in(c->batch, key, len, off, n, out);
    pthread_mutex_unlock(&c->q_lock);
    return hit;
}

/* ---- eviction ---- */

/* Least-recently-used eviction, approximately.
 *
 * The "atime" DB maps every stored key to a sequence number; a put stamps
 * its key with the next number, and a hit records the key in a bounded
 * in-memory list (FZ_CACHE_TOUCH_MAX) that the writer stamps in its next
 * batch (at least once a second). The approximations, chosen so that a hit
 * never costs a write transaction of its own: stamps are in commit order,
 * not access order, within a batch and across processes; hits beyond the
 * list's bound in one batch window are not recorded (those entries look
 * older than they are); an access from a process that exits before its
 * batch commits is lost.
 *
 * Usage is the pages holding live data in all DBs (mdb_stat), not the file
 * size: LMDB never shrinks its file and reuses freed pages. Before a batch
 * is written, when usage plus the batch would pass 90% of the map, the
 * oldest-stamped entries are deleted (sorted on a full scan of "atime",
 * which is small: one 32-byte record per chunk) until usage plus the batch
 * is under 80%. The check runs inside the write transaction, so two
 * processes sharing the environment do not both evict for the same
 * shortage. When a write still fails with MDB_MAP_FULL (pages freed by
 * recent transactions are not reusable while a reader or the previous
 * meta page may still see them; a fragmented free list lacks a contiguous
 * run), eviction runs again forced to a lower target and the write is
 * retried once; if that fails too the batch is dropped (logged) and the
 * bytes are simply recomputed next time. Entries are never partially
 * evicted and nothing served is ever affected: eviction only deletes. */

typedef struct {
    uint64_t seq;
    uint8_t key[FZ_CACHE_KEYLEN];
} fz_lru_ent;

static int cmp_seq(const void *a, const void *b)
{
    const fz_lru_ent *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Returns an LMDB code. */
static int evict(fz_cache *c, uint64_t need, bool forced)
{
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    fz_lru_ent *ents = NULL;
    size_t n = 0, cap = 0;
    uint64_t evicted = 0;
    int mrc = fz_cache_txn_begin(c, 0, &txn);
    if (mrc)
        return mrc;
    uint64_t map = c->map_size;
    uint64_t high = map / 10 * 9, low = map / 10 * 8;
    uint64_t used = fz_cache_used_bytes(c, txn);
    if (!forced && used + need <= high)
        goto done; /* another process evicted already, or no need */
    uint64_t target = low > need ? low - need : 0;
    if (forced) {
        uint64_t margin = need + map / 10;
        uint64_t t2 = used > margin ? used - margin : 0;
        if (t2 < target)
            target = t2;
    }
    if ((mrc = mdb_cursor_open(txn, c->dbi_atime, &cur)))
        goto done;
    while ((mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size != FZ_CACHE_KEYLEN || v.mv_size != 8)
            continue;
        if (FZ_VEC_RESERVE(ents, cap, n + 1)) {
            mrc = ENOMEM;
            goto done;
        }
        memcpy(&ents[n].seq, v.mv_data, 8);
        memcpy(ents[n].key, k.mv_data, FZ_CACHE_KEYLEN);
        n++;
    }
    mdb_cursor_close(cur);
    cur = NULL;
    if (mrc != MDB_NOTFOUND)
        goto done;
    mrc = 0;
    qsort(ents, n, sizeof *ents, cmp_seq);
    for (size_t i = 0; i < n && used > target; i++) {
        MDB_val key = {FZ_CACHE_KEYLEN, ents[i].key};
        int drc = mdb_del(txn, c->dbi_data, &key, NULL);
        if (drc && drc != MDB_NOTFOUND) {
            mrc = drc;
            goto done;
        }
        if ((drc = mdb_del(txn, c->dbi_atime, &key, NULL)) && drc != MDB_NOTFOUND) {
            mrc = drc;
            goto done;
        }
        evicted++;
        used = fz_cache_used_bytes(c, txn);
    }
    if (evicted) {
        uint64_t total = fz_cache_meta_get(c, txn, "evictions") + evicted;
        mrc = meta_put(c, txn, "evictions", total);
    }
done:
    if (cur)
        mdb_cursor_close(cur);
    free(ents);
    if (mrc || !evicted) {
        fz_cache_txn_end(c, txn, false);
        return mrc;
    }
    if ((mrc = fz_cache_txn_end(c, txn, true)))
        return mrc;
    fz_log(FZ_LOG_DEBUG, "cache: evicted %llu entries", (unsigned long long)evicted);
    /* Pages freed by a commit become reusable two transactions later; an
     * empty-but-real write (the "seq" stamp) moves the txn id on so the
     * batch that follows can use them. */
    if ((mrc = fz_cache_txn_begin(c, 0, &txn)))
        return mrc;
    uint64_t seq = fz_cache_meta_get(c, txn, "seq") + 1;
    if ((mrc = meta_put(c, txn, "seq", seq))) {
        fz_cache_txn_end(c, txn, false);
        return mrc;
    }
    return fz_cache_txn_end(c, txn, true);
}

/* ---- the writer thread ---- */

/* One write transaction: ops [from, to), the touched keys and the counter
 * deltas. Returns an LMDB code (MDB_MAP_FULL when the map is full). */
static int write_group(fz_cache *c, const fz_cache_op *from, const fz_cache_op *to,
                       const fz_cache_key *touched, unsigned nt, const uint64_t *deltas)
{
    MDB_txn *txn;
    uint8_t kb[FZ_CACHE_KEYLEN];
    int mrc = fz_cache_txn_begin(c, 0, &txn);
    if (mrc)
        return mrc;
    uint64_t seq = fz_cache_meta_get(c, txn, "seq");
    for (const fz_cache_op *op = from; op != to && !mrc; op = op->next) {
        MDB_val k = {FZ_CACHE_KEYLEN, kb};
        fz_cache_key_encode(&op->key, kb);
        if (op->kind == FZ_OP_PUT) {
            MDB_val v = {(size_t)op->vlen, op->val}, a = {8, &seq};
            seq++;
            if (!(mrc = mdb_put(txn, c->dbi_data, &k, &v, 0)))
                mrc = mdb_put(txn, c->dbi_atime, &k, &a, 0);
        } else {
            mrc = mdb_del(txn, c->dbi_data, &k, NULL);
            if (mrc == MDB_NOTFOUND)
                mrc = 0;
            int arc = mdb_del(txn, c->dbi_atime, &k, NULL);
            if (!mrc && arc && arc != MDB_NOTFOUND)
                mrc = arc;
        }
    }
    for (unsigned i = 0; i < nt && !mrc; i++) {
        MDB_val k = {FZ_CACHE_KEYLEN, kb}, old, a = {8, &seq};
        fz_cache_key_encode(&touched[i], kb);
        if (mdb_get(txn, c->dbi_atime, &k, &old) == 0) {
            seq++;
            mrc = mdb_put(txn, c->dbi_atime, &k, &a, 0);
        }
    }
    for (int i = 0; deltas && i < FZ_NCTR && !mrc; i++)
        if (deltas[i])
            mrc = meta_put(c, txn, fz_cache_ctr_names[i],
                           fz_cache_meta_get(c, txn, fz_cache_ctr_names[i]) + deltas[i]);
    if (!mrc)
        mrc = meta_put(c, txn, "seq", seq);
    if (mrc) {
        fz_cache_txn_end(c, txn, false);
        return mrc;
    }
    return fz_cache_txn_end(c, txn, true);
}

typedef struct {
    fz_cache_op *ops;
    const fz_cache_key *touched;
    unsigned nt;
    const uint64_t *deltas;
} fz_batch;

static int process_guarded(fz_cache *c, void *arg)
{
    const fz_batch *b = arg;
    const uint64_t *deltas = b->deltas;
    fz_cache_op *from = b->ops;
    bool first = true;
    while (first || from) {
        fz_cache_op *to = from;
        uint64_t need = 0;
        size_t nops = 0;
        while (to && (nops == 0 || need + to->vlen <= FZ_CACHE_TXN_MAX)) {
            if (to->kind == FZ_OP_PUT)
                need += to->vlen;
            nops++;
            to = to->next;
        }
        const fz_cache_key *touched = first ? b->touched : NULL;
        unsigned nt = first ? b->nt : 0;
        int mrc = 0;
        if (need)
            mrc = evict(c, need, false);
        if (mrc && !fz_cache_lmdb_damage(c, mrc))
            fz_log(FZ_LOG_WARNING, "cache: eviction: %s", mdb_strerror(mrc));
        if (atomic_load(&c->broken))
            return 0;
        mrc = write_group(c, from, to, touched, nt, first ? deltas : NULL);
        if (mrc == MDB_MAP_FULL) {
            int erc = evict(c, need, true);
            if (erc && !fz_cache_lmdb_damage(c, erc))
                fz_log(FZ_LOG_WARNING, "cache: eviction: %s", mdb_strerror(erc));
            if (atomic_load(&c->broken))
                return 0;
            mrc = write_group(c, from, to, touched, nt, first ? deltas : NULL);
        }
        if (fz_cache_lmdb_damage(c, mrc))
            return 0;
        if (mrc) {
            fz_log(mrc == MDB_MAP_FULL ? FZ_LOG_DEBUG : FZ_LOG_WARNING,
                   "cache: %zu writes not stored: %s", nops, mdb_strerror(mrc));
            if (first)
                for (int i = 0; i < FZ_NCTR; i++) {
                    atomic_fetch_sub(&c->persisted[i], deltas[i]);
                    atomic_fetch_add(&c->delta[i], deltas[i]);
                }
        }
        first = false;
        from = to;
    }
    return 0;
}

/* Commit a detached batch, in groups of at most FZ_CACHE_TXN_MAX value
 * bytes; the first group also carries the touches and counters. A
 * damaged environment drops the batch (damage.c). */
static void process(fz_cache *c, fz_cache_op *ops, const fz_cache_key *touched, unsigned nt)
{
    uint64_t deltas[FZ_NCTR];
    bool any = ops || nt;
    for (int i = 0; i < FZ_NCTR; i++) {
        deltas[i] = atomic_exchange(&c->delta[i], 0);
        atomic_fetch_add(&c->persisted[i], deltas[i]);
        any |= deltas[i] != 0;
    }
    if (!any || atomic_load(&c->broken))
        return;
    fz_batch b = {ops, touched, nt, deltas};
    fz_cache_guarded(c, process_guarded, &b);
}

static bool deltas_pending(fz_cache *c)
{
    for (int i = 0; i < FZ_NCTR; i++)
        if (atomic_load(&c->delta[i]))
            return true;
    return false;
}

static void *writer_main(void *arg)
{
    fz_cache *c = arg;
    fz_cache_key *mine = calloc(FZ_CACHE_TOUCH_MAX, sizeof *mine);
    int final_rounds = 0;
    pthread_mutex_lock(&c->q_lock);
    for (;;) {
        /* Values are written as soon as they arrive; touches and counters
         * ride along, or go on their own at most once a second. */
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 1;
        while (!c->stop && !c->head && c->flush_req == c->flush_done)
            if (pthread_cond_timedwait(&c->q_work, &c->q_lock, &deadline))
                break;
        /* At most FZ_CACHE_TXN_MAX value bytes per batch, so that half the
         * queue's room is always outside the batch, where a new value can
         * push out an older one (fz_cache_queue_put_value). */
        fz_cache_op *batch = c->head, *last = NULL;
        uint64_t taken = 0;
        for (fz_cache_op *op = c->head; op && (!last || taken + op->vlen <= FZ_CACHE_TXN_MAX);
             op = op->next) {
            taken += op->vlen;
            last = op;
        }
        if (last) {
            c->head = last->next;
            if (!c->head)
                c->tail = NULL;
            last->next = NULL;
        }
        c->batch = batch;
        c->head_bytes -= taken;
        clock_gettime(CLOCK_REALTIME, &c->batch_started);
        bool all = !c->head; /* everything queued so far is in this batch */
        unsigned nt = 0;
        if (mine) {
            fz_cache_key *t = c->touched;
            c->touched = mine;
            mine = t;
            nt = c->ntouched;
            c->ntouched = 0;
        }
        uint64_t req = c->flush_req;
        bool stopping = c->stop;
        pthread_mutex_unlock(&c->q_lock);

        process(c, batch, mine, nt);

        pthread_mutex_lock(&c->q_lock);
        c->batch = NULL;
        while (batch) {
            fz_cache_op *next = batch->next;
            c->q_bytes -= batch->vlen;
            if (batch->val)
                value_free_locked(c, batch->val, batch->vlen);
            free(batch);
            batch = next;
        }
        if (all)
            c->flush_done = req;
        pthread_cond_broadcast(&c->q_idle);
        pthread_cond_broadcast(&c->q_room);
        if (stopping && !c->head && ((!c->ntouched && !deltas_pending(c)) || ++final_rounds > 3))
            break;
    }
    c->writer_running = false;
    pthread_cond_broadcast(&c->q_idle);
    pthread_mutex_unlock(&c->q_lock);
    free(mine);
    return NULL;
}

int fz_cache_writer_start(fz_cache *c)
{
    c->writer_running = true;
    clock_gettime(CLOCK_REALTIME, &c->batch_started);
    int e = pthread_create(&c->writer, NULL, writer_main, c);
    if (e) {
        c->writer_running = false;
        return fz_error_set(FZ_EIO, "cache: cannot start the writer thread: %s", strerror(e));
    }
    return 0;
}

void fz_cache_writer_stop(fz_cache *c)
{
    pthread_mutex_lock(&c->q_lock);
    c->stop = true;
    pthread_cond_broadcast(&c->q_work);
    pthread_cond_broadcast(&c->q_room);
    pthread_mutex_unlock(&c->q_lock);
    pthread_join(c->writer, NULL);
    while (c->nspare > 0)
        free(c->spare[--c->nspare]);
}
