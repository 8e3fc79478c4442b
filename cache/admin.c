/* The cache's maintenance calls: flush, stats, verify, clear (`fzfs cache
 * stats|verify|clear` and the tests). See cache.h for the contract. */
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"
#include "util/error.h"

#define FZ_CACHE_VERIFY_STEP 64


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

int fz_cache_get_stats(fz_cache *c, fz_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    fz_cache_flush(c);
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    MDB_stat s;
    int mrc = fz_cache_txn_begin(c, MDB_RDONLY, &txn);
    if (mrc)
        return fz_error_set(FZ_EIO, "cache: read transaction: %s", mdb_strerror(mrc));
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
        return fz_error_set(FZ_EIO, "cache: cursor: %s", mdb_strerror(mrc));
    return 0;
}

/* Delete `keys` (and their access times) in one write txn; count them as
 * corrupt. */
static int delete_keys(fz_cache *c, const uint8_t *keys, size_t n)
{
    MDB_txn *txn;
    int mrc = fz_cache_txn_begin(c, 0, &txn);
    if (mrc)
        return fz_error_set(FZ_EIO, "cache: write transaction: %s", mdb_strerror(mrc));
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
        return fz_error_set(FZ_EIO, "cache: deleting bad values: %s", mdb_strerror(mrc));
    }
    if ((mrc = fz_cache_txn_end(c, txn, true)))
        return fz_error_set(FZ_EIO, "cache: commit: %s", mdb_strerror(mrc));
    atomic_fetch_add(&c->delta[FZ_CTR_CORRUPT], n);
    return 0;
}

int fz_cache_verify(fz_cache *c, uint64_t *checked, uint64_t *bad)
{
    int rc = 0;
    uint8_t last[FZ_CACHE_KEYLEN];
    bool have_last = false, end = false;
    uint8_t *badkeys = NULL;
    size_t nbad = 0, capbad = 0;
    *checked = *bad = 0;
    fz_cache_flush(c);
    /* Walk the data DB in short read txns of FZ_CACHE_VERIFY_STEP values so
     * a long verify pins no old pages. */
    while (!end) {
        MDB_txn *txn;
        MDB_cursor *cur;
        MDB_val k, v;
        int mrc = fz_cache_txn_begin(c, MDB_RDONLY, &txn);
        if (mrc) {
            rc = fz_error_set(FZ_EIO, "cache: read transaction: %s", mdb_strerror(mrc));
            goto done;
        }
        if ((mrc = mdb_cursor_open(txn, c->dbi_data, &cur))) {
            fz_cache_txn_end(c, txn, false);
            rc = fz_error_set(FZ_EIO, "cache: cursor: %s", mdb_strerror(mrc));
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
                if (nbad == capbad) {
                    size_t cap = capbad ? 2 * capbad : 16;
                    uint8_t *p = realloc(badkeys, cap * FZ_CACHE_KEYLEN);
                    if (!p) {
                        mdb_cursor_close(cur);
                        fz_cache_txn_end(c, txn, false);
                        rc = fz_error_set(FZ_ENOMEM, "out of memory");
                        goto done;
                    }
                    badkeys = p;
                    capbad = cap;
                }
                memcpy(badkeys + nbad++ * FZ_CACHE_KEYLEN, k.mv_data, FZ_CACHE_KEYLEN);
            }
            if (i + 1 < FZ_CACHE_VERIFY_STEP)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        end = mrc != 0;
        mdb_cursor_close(cur);
        fz_cache_txn_end(c, txn, false);
        if (mrc && mrc != MDB_NOTFOUND) {
            rc = fz_error_set(FZ_EIO, "cache: reading values: %s", mdb_strerror(mrc));
            goto done;
        }
    }
    if (nbad)
        rc = delete_keys(c, badkeys, nbad);
    *bad = nbad;
done:
    free(badkeys);
    return rc;
}

int fz_cache_clear(fz_cache *c)
{
    fz_cache_flush(c);
    MDB_txn *txn;
    int mrc = fz_cache_txn_begin(c, 0, &txn);
    if (mrc)
        return fz_error_set(FZ_EIO, "cache: write transaction: %s", mdb_strerror(mrc));
    if ((mrc = mdb_drop(txn, c->dbi_data, 0)) || (mrc = mdb_drop(txn, c->dbi_atime, 0)) ||
        (mrc = mdb_drop(txn, c->dbi_meta, 0))) {
        fz_cache_txn_end(c, txn, false);
        return fz_error_set(FZ_EIO, "cache: clear: %s", mdb_strerror(mrc));
    }
    if ((mrc = fz_cache_txn_end(c, txn, true)))
        return fz_error_set(FZ_EIO, "cache: clear: commit: %s", mdb_strerror(mrc));
    for (int i = 0; i < FZ_NCTR; i++)
        atomic_store(&c->delta[i], 0);
    pthread_mutex_lock(&c->q_lock);
    c->ntouched = 0;
    pthread_mutex_unlock(&c->q_lock);
    return 0;
}
