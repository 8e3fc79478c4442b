/* The cache's maintenance calls: flush, stats, verify, clear (`fzfs cache
 * stats|verify|clear` and the tests); the stored whole files' part of each
 * is in files.c. See cache.h for the contract. */
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"
#include "util/error.h"
#include "util/vec.h"

#define FZ_CACHE_VERIFY_STEP 64

/* The error of a maintenance call on a damaged environment. */
static int damaged(fz_cache *c)
{
    return fz_error_set(FZ_EIO, "cache %s is damaged; run `fzfs cache clear` to recreate it",
                        c->dir);
}

/* An LMDB error: damage, or "cache DIR: what: error". */
static int lmdb_fail(fz_cache *c, const char *what, int mrc)
{
    if (fz_cache_lmdb_damage(c, mrc))
        return damaged(c);
    return fz_error_set(FZ_EIO, "cache %s: %s: %s", c->dir, what, mdb_strerror(mrc));
}

/* fn(c, arg) inside a guard; damage found before or during it is FZ_EIO. */
static int run(fz_cache *c, int (*fn)(fz_cache *c, void *arg), void *arg)
{
    if (atomic_load(&c->broken))
        return damaged(c);
    int rc = fz_cache_guarded(c, fn, arg);
    return rc == FZ_CACHE_FAULT ? damaged(c) : rc;
}

int fz_cache_flush(fz_cache *c)
{
    pthread_mutex_lock(&c->q_lock);
    uint64_t req = ++c->flush_req;
    pthread_cond_signal(&c->q_work);
    while (c->flush_done < req && c->writer_running)
        pthread_cond_wait(&c->q_idle, &c->q_lock);
    pthread_mutex_unlock(&c->q_lock);
    return 0;
}

static int stats_guarded(fz_cache *c, void *arg)
{
    fz_cache_stats *out = arg;
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    MDB_stat s;
    int mrc = fz_cache_txn_begin(c, MDB_RDONLY, &txn);
    if (mrc)
        return lmdb_fail(c, "read transaction", mrc);
    uint64_t ctr[FZ_NCTR];
    for (int i = 0; i < FZ_NCTR; i++)
        ctr[i] = fz_cache_meta_get(c, txn, fz_cache_ctr_names[i]) + atomic_load(&c->delta[i]);
    out->hits = ctr[FZ_CTR_HITS];
    out->misses = ctr[FZ_CTR_MISSES];
    out->fills = ctr[FZ_CTR_FILLS];
    out->corrupt = ctr[FZ_CTR_CORRUPT];
    out->evictions = ctr[FZ_CTR_EVICTIONS];
    if (mdb_stat(txn, c->dbi_data, &s) == 0)
        out->entries = s.ms_entries;
    out->used_bytes = fz_cache_used_bytes(c, txn);
    out->map_size = c->map_size;
    if ((mrc = mdb_cursor_open(txn, c->dbi_data, &cur)) == 0) {
        while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0)
            if (v.mv_size >= FZ_CACHE_HDR_FIXED)
                out->bytes += fz_cache_get_le64((const uint8_t *)v.mv_data + 8);
        mdb_cursor_close(cur);
    }
    fz_cache_txn_end(c, txn, false);
    if (mrc)
        return lmdb_fail(c, "cursor", mrc);
    return 0;
}

void fz_cache_handle_stats(fz_cache *c, fz_cache_stats *out)
{
    uint64_t ctr[FZ_NCTR] = {0};
    for (int i = 0; c && i < FZ_NCTR; i++)
        ctr[i] = atomic_load(&c->persisted[i]) + atomic_load(&c->delta[i]);
    *out = (fz_cache_stats){.hits = ctr[FZ_CTR_HITS],
                            .misses = ctr[FZ_CTR_MISSES],
                            .fills = ctr[FZ_CTR_FILLS],
                            .corrupt = ctr[FZ_CTR_CORRUPT],
                            .evictions = ctr[FZ_CTR_EVICTIONS],
                            .dropped = c ? atomic_load(&c->dropped) : 0};
}

int fz_cache_get_stats(fz_cache *c, fz_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    fz_cache_flush(c);
    int rc = run(c, stats_guarded, out);
    return rc ? rc : fz_cache_files_stats(c->dir, &out->files, &out->file_bytes);
}

/* Delete `keys` (and their access times) in one write txn; count them as
 * corrupt. */
static int delete_keys(fz_cache *c, const uint8_t *keys, size_t n)
{
    MDB_txn *txn;
    int mrc = fz_cache_txn_begin(c, 0, &txn);
    if (mrc)
        return lmdb_fail(c, "write transaction", mrc);
    for (size_t i = 0; i < n && !mrc; i++) {
        MDB_val k = {FZ_CACHE_KEYLEN, (void *)(keys + i * FZ_CACHE_KEYLEN)};
        mrc = mdb_del(txn, c->dbi_data, &k, NULL);
        if (mrc == MDB_NOTFOUND)
            mrc = 0;
        int arc = mdb_del(txn, c->dbi_atime, &k, NULL);
        if (arc && arc != MDB_NOTFOUND)
            mrc = arc;
    }
    if (mrc) {
        fz_cache_txn_end(c, txn, false);
        return lmdb_fail(c, "deleting bad values", mrc);
    }
    if ((mrc = fz_cache_txn_end(c, txn, true)))
        return lmdb_fail(c, "commit", mrc);
    atomic_fetch_add(&c->delta[FZ_CTR_CORRUPT], n);
    return 0;
}

typedef struct {
    uint64_t checked;
    uint8_t (*badkeys)[FZ_CACHE_KEYLEN]; /* freed by fz_cache_verify, also after a fault */
    size_t nbad, capbad;
} fz_verify;

static int verify_guarded(fz_cache *c, void *arg)
{
    fz_verify *vf = arg;
    int rc = 0;
    uint8_t last[FZ_CACHE_KEYLEN];
    bool have_last = false, end = false;
    uint64_t *checked = &vf->checked;
    /* Walk the data DB in short read txns of FZ_CACHE_VERIFY_STEP values so
     * a long verify pins no old pages. */
    while (!end) {
        MDB_txn *txn;
        MDB_cursor *cur;
        MDB_val k, v;
        int mrc = fz_cache_txn_begin(c, MDB_RDONLY, &txn);
        if (mrc) {
            rc = lmdb_fail(c, "read transaction", mrc);
            goto done;
        }
        if ((mrc = mdb_cursor_open(txn, c->dbi_data, &cur))) {
            fz_cache_txn_end(c, txn, false);
            rc = lmdb_fail(c, "cursor", mrc);
            goto done;
        }
        if (have_last) {
            k = (MDB_val){FZ_CACHE_KEYLEN, last};
            mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            if (mrc == 0 && k.mv_size == FZ_CACHE_KEYLEN &&
                memcmp(k.mv_data, last, sizeof last) == 0)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        } else {
            mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        }
        for (int i = 0; i < FZ_CACHE_VERIFY_STEP && mrc == 0; i++) {
            fz_cache_key key;
            uint64_t n;
            bool ok = k.mv_size == FZ_CACHE_KEYLEN;
            if (ok) {
                fz_cache_key_decode(k.mv_data, &key);
                memcpy(last, k.mv_data, sizeof last);
                have_last = true;
                const uint8_t *payload;
                ok = fz_cache_value_parse(v.mv_data, v.mv_size, &key, &n, &payload) &&
                     fz_cache_value_check(v.mv_data, 0, n);
            }
            (*checked)++;
            if (!ok && k.mv_size == FZ_CACHE_KEYLEN) {
                if ((rc = FZ_VEC_RESERVE(vf->badkeys, vf->capbad, vf->nbad + 1))) {
                    mdb_cursor_close(cur);
                    fz_cache_txn_end(c, txn, false);
                    goto done;
                }
                memcpy(vf->badkeys[vf->nbad++], k.mv_data, FZ_CACHE_KEYLEN);
            }
            if (i + 1 < FZ_CACHE_VERIFY_STEP)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        end = mrc != 0;
        mdb_cursor_close(cur);
        fz_cache_txn_end(c, txn, false);
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = lmdb_fail(c, "reading values", mrc);
            goto done;
        }
    }
    if (vf->nbad)
        rc = delete_keys(c, vf->badkeys[0], vf->nbad);
done:
    return rc;
}

int fz_cache_verify(fz_cache *c, uint64_t *checked, uint64_t *bad)
{
    fz_verify vf = {0};
    fz_cache_flush(c);
    uint64_t fchecked = 0, fbad = 0;
    int rc = run(c, verify_guarded, &vf);
    free(vf.badkeys);
    if (!rc)
        rc = fz_cache_files_verify(c->dir, &fchecked, &fbad);
    *checked = vf.checked + fchecked;
    *bad = rc ? 0 : vf.nbad + fbad;
    return rc;
}

static int clear_guarded(fz_cache *c, void *arg)
{
    (void)arg;
    MDB_txn *txn;
    int mrc = fz_cache_txn_begin(c, 0, &txn);
    if (mrc)
        return lmdb_fail(c, "write transaction", mrc);
    if ((mrc = mdb_drop(txn, c->dbi_data, 0)) || (mrc = mdb_drop(txn, c->dbi_atime, 0)) ||
        (mrc = mdb_drop(txn, c->dbi_meta, 0))) {
        fz_cache_txn_end(c, txn, false);
        return lmdb_fail(c, "clear", mrc);
    }
    if ((mrc = fz_cache_txn_end(c, txn, true)))
        return lmdb_fail(c, "clear: commit", mrc);
    return 0;
}

int fz_cache_clear(fz_cache *c)
{
    fz_cache_flush(c);
    int rc = run(c, clear_guarded, NULL);
    if (rc)
        return rc;
    for (int i = 0; i < FZ_NCTR; i++)
        atomic_store(&c->delta[i], 0);
    pthread_mutex_lock(&c->q_lock);
    c->ntouched = 0;
    pthread_mutex_unlock(&c->q_lock);
    return fz_cache_files_clear(c->dir);
}
