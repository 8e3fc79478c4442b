/* The LMDB chunk cache: fill once then hit, persistence, corrupt values
 * (flipped through a raw LMDB transaction) recomputed and counted, single
 * flight under concurrency, a map far smaller than the data, clear, verify,
 * partial-range fetches, two processes sharing one environment, a
 * damaged data.mdb (truncated before opening and while mapped, garbage):
 * recreated, reported, or computed around, never a crash; a writer that
 * cannot commit never holds up a fetch; read transactions reused;
 * prefetch; map pages not kept resident. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/helpers.h"
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>

#include "cache/cache.h"
#include "util/error.h"

/* ---- helpers ---- */

typedef struct {
    uint64_t seed;
    atomic_int calls;
    int sleep_ms;
    int fail; /* return this instead of filling */
} fill_ctx;

static int fill(void *arg, uint8_t *out, uint64_t len)
{
    fill_ctx *f = arg;
    atomic_fetch_add(&f->calls, 1);
    if (f->sleep_ms) {
        struct timespec ts = {0, (long)f->sleep_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (f->fail)
        return fz_error_set(f->fail, "fill failed on purpose");
    for (uint64_t i = 0; i < len; i++)
        out[i] = fz_test_byte_at(f->seed, i);
    return 0;
}

static void check_bytes(const uint8_t *b, uint64_t seed, uint64_t off, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (b[i] != fz_test_byte_at(seed, off + i))
            fail_msg("byte %llu differs", (unsigned long long)(off + i));
}

static fz_cache_key key_of(const char *text, uint64_t chunk)
{
    fz_cache_key k;
    fz_cache_key_for(&k, text, strlen(text), chunk);
    return k;
}

/* Flip one byte of the stored value of k (the cache must be closed). */
static void corrupt_value(const char *dir, const fz_cache_key *k, size_t at)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t kb[24];
    for (int i = 0; i < 8; i++) {
        kb[i] = (uint8_t)(k->hi >> (56 - 8 * i));
        kb[8 + i] = (uint8_t)(k->lo >> (56 - 8 * i));
        kb[16 + i] = (uint8_t)(k->chunk >> (56 - 8 * i));
    }
    MDB_val key = {24, kb}, val;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0644), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "data", 0, &dbi), 0);
    assert_int_equal(mdb_get(txn, dbi, &key, &val), 0);
    assert_true(at < val.mv_size);
    uint8_t *copy = malloc(val.mv_size);
    memcpy(copy, val.mv_data, val.mv_size);
    copy[at] ^= 0x40;
    MDB_val nv = {val.mv_size, copy};
    assert_int_equal(mdb_put(txn, dbi, &key, &nv, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(copy);
}

/* ---- tests ---- */

static void test_open_close_default_dir(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    char nested[512];
    snprintf(nested, sizeof nested, "%s/a/b/fzfs", d);
    fz_cache *c = NULL;
    assert_int_equal(fz_cache_open(&c, nested, 64ull << 20), 0);
    assert_non_null(c);
    struct stat st;
    assert_int_equal(stat(nested, &st), 0);
    /* One process must not open the same environment twice. */
    fz_cache *c2 = NULL;
    assert_int_equal(fz_cache_open(&c2, nested, 0), FZ_EEXIST);
    assert_null(c2);
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 0);
    assert_int_equal(s.map_size, 64ull << 20);
    fz_cache_close(c);
    fz_cache_close(NULL);
    /* map_size 0 keeps the existing size. */
    assert_int_equal(fz_cache_open(&c, nested, 0), 0);
    assert_int_equal(fz_test_cache_stats(c).map_size, 64ull << 20);
    fz_cache_close(c);

    char *old_xdg = getenv("XDG_CACHE_HOME") ? strdup(getenv("XDG_CACHE_HOME")) : NULL;
    setenv("XDG_CACHE_HOME", "/x/cache", 1);
    char *dd = fz_cache_default_dir();
    assert_string_equal(dd, "/x/cache/fzfs");
    free(dd);
    unsetenv("XDG_CACHE_HOME");
    char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    setenv("HOME", "/home/u", 1);
    dd = fz_cache_default_dir();
    assert_string_equal(dd, "/home/u/.cache/fzfs");
    free(dd);
    if (old_xdg)
        setenv("XDG_CACHE_HOME", old_xdg, 1);
    if (old_home)
        setenv("HOME", old_home, 1);
    else
        unsetenv("HOME");
    free(old_xdg);
    free(old_home);
    fz_test_rmtree(d);
    free(d);
}

static void test_fill_once_then_hit(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fill_ctx f = {.seed = 7};
    fz_cache_key k = key_of("recipe a", 0);
    uint64_t len = 100000;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 7, 0, len);
    assert_int_equal(atomic_load(&f.calls), 1);
    /* Immediately (maybe still queued) and after the writer committed. */
    memset(b, 0, len);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 7, 0, len);
    fz_cache_flush(c);
    memset(b, 0, len);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 7, 0, len);
    assert_int_equal(atomic_load(&f.calls), 1);
    /* Another chunk of the same recipe is another key. */
    fz_cache_key k1 = key_of("recipe a", 1);
    fill_ctx f1 = {.seed = 8};
    assert_int_equal(fz_cache_fetch(c, &k1, 10, b, fill, &f1, true), 0);
    check_bytes(b, 8, 0, 10);
    assert_int_equal(atomic_load(&f1.calls), 1);
    /* store=false: computed, not kept. */
    fz_cache_key k2 = key_of("recipe b", 0);
    fill_ctx f2 = {.seed = 9};
    assert_int_equal(fz_cache_fetch(c, &k2, 64, b, fill, &f2, false), 0);
    fz_cache_flush(c);
    assert_int_equal(fz_cache_fetch(c, &k2, 64, b, fill, &f2, false), 0);
    check_bytes(b, 9, 0, 64);
    assert_int_equal(atomic_load(&f2.calls), 2);

    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 2);
    assert_int_equal(s.bytes, len + 10);
    assert_int_equal(s.fills, 4);
    assert_int_equal(s.hits, 2);
    /* The second fetch missed LMDB if the writer had not committed yet. */
    assert_true(s.misses == 4 || s.misses == 5);
    assert_int_equal(s.corrupt, 0);
    /* A NULL cache just fills. */
    fill_ctx f3 = {.seed = 3};
    assert_int_equal(fz_cache_fetch(NULL, &k, 32, b, fill, &f3, true), 0);
    check_bytes(b, 3, 0, 32);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

static void test_fill_error_not_stored(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fz_cache_key k = key_of("failing", 0);
    uint8_t b[256];
    fill_ctx f = {.seed = 1, .fail = FZ_EIO};
    assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true), FZ_EIO);
    assert_non_null(strstr(fz_error_msg(), "on purpose"));
    fz_cache_flush(c);
    f.fail = 0;
    assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true), 0);
    check_bytes(b, 1, 0, sizeof b);
    assert_int_equal(atomic_load(&f.calls), 2);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_persistence(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint8_t b[4096];
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fill_ctx f = {.seed = 11};
    for (uint64_t i = 0; i < 10; i++) {
        fz_cache_key k = key_of("persist", i);
        f.seed = 11 + i;
        assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true), 0);
    }
    fz_cache_close(c); /* flushes and syncs */

    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fill_ctx g = {.seed = 0};
    for (uint64_t i = 0; i < 10; i++) {
        fz_cache_key k = key_of("persist", i);
        memset(b, 0, sizeof b);
        assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &g, true), 0);
        check_bytes(b, 11 + i, 0, sizeof b);
    }
    assert_int_equal(atomic_load(&g.calls), 0);
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 10);
    assert_int_equal(s.fills, 10); /* counted by the first open, persisted */
    assert_int_equal(s.hits, 10);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_corrupt_value_recomputed(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint64_t len = 50000;
    uint8_t *b = malloc(len);
    fz_cache_key k = key_of("corrupt me", 3), k2 = key_of("corrupt me", 4),
                 k3 = key_of("corrupt me", 5);
    fill_ctx f = {.seed = 21}, f2 = {.seed = 22}, f3 = {.seed = 23};
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    assert_int_equal(fz_cache_fetch(c, &k2, len, b, fill, &f2, true), 0);
    assert_int_equal(fz_cache_fetch(c, &k3, len, b, fill, &f3, true), 0);
    fz_cache_close(c);

    corrupt_value(d, &k, 56 + 12345); /* a payload byte (header: 48 + one block hash) */
    corrupt_value(d, &k2, 30);        /* the key echo in the header */

    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    memset(b, 0, len);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 21, 0, len); /* never the flipped byte */
    assert_int_equal(atomic_load(&f.calls), 2);
    fz_cache_flush(c);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 21, 0, len);
    assert_int_equal(atomic_load(&f.calls), 2); /* the recomputed value was stored */
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.corrupt, 1);

    /* verify finds the other one and deletes it. */
    uint64_t checked, bad;
    assert_int_equal(fz_cache_verify(c, &checked, &bad), 0);
    assert_int_equal(checked, 3);
    assert_int_equal(bad, 1);
    s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 2);
    assert_int_equal(s.corrupt, 2);
    assert_int_equal(fz_cache_verify(c, &checked, &bad), 0);
    assert_int_equal(checked, 2);
    assert_int_equal(bad, 0);
    assert_int_equal(fz_cache_fetch(c, &k2, len, b, fill, &f2, true), 0);
    check_bytes(b, 22, 0, len);
    assert_int_equal(atomic_load(&f2.calls), 2);

    /* A value of another length under the key counts as corrupt too. */
    assert_int_equal(fz_cache_fetch(c, &k3, len - 1, b, fill, &f3, true), 0);
    check_bytes(b, 23, 0, len - 1);
    assert_int_equal(atomic_load(&f3.calls), 2);
    assert_int_equal(fz_test_cache_stats(c).corrupt, 3);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

/* A value is checked per 64 KiB block: a read of good blocks is served,
 * a read touching the bad block is recomputed (and the value replaced). */
static void test_corrupt_block_range(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint64_t len = 4u << 20, hdr = 48 + 8 * 64;
    uint8_t *b = malloc(len);
    fz_cache_key k = key_of("blocks", 0);
    fill_ctx f = {.seed = 41};
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    fz_cache_close(c);
    corrupt_value(d, &k, hdr + 3 * 65536 + 5);

    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    assert_int_equal(fz_cache_fetch_range(c, &k, len, 0, 3 * 65536, b, fill, &f, true), 0);
    check_bytes(b, 41, 0, 3 * 65536);
    assert_int_equal(atomic_load(&f.calls), 1);
    assert_int_equal(fz_test_cache_stats(c).corrupt, 0);
    assert_int_equal(fz_cache_fetch_range(c, &k, len, 3 * 65536 + 1, 10, b, fill, &f, true), 0);
    check_bytes(b, 41, 3 * 65536 + 1, 10);
    assert_int_equal(atomic_load(&f.calls), 2);
    assert_int_equal(fz_test_cache_stats(c).corrupt, 1);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 41, 0, len);
    assert_int_equal(atomic_load(&f.calls), 2);
    uint64_t checked, bad;
    assert_int_equal(fz_cache_verify(c, &checked, &bad), 0);
    assert_int_equal(bad, 0);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

typedef struct {
    fz_cache *c;
    fz_cache_key key;
    fill_ctx *f;
    uint64_t len, off, n;
    pthread_barrier_t *bar;
    int rc;
    uint8_t *out;
} sf_arg;

static void *sf_thread(void *p)
{
    sf_arg *a = p;
    pthread_barrier_wait(a->bar);
    a->rc = fz_cache_fetch_range(a->c, &a->key, a->len, a->off, a->n, a->out, fill, a->f, true);
    return NULL;
}

static void test_single_flight(void **state)
{
    (void)state;
    enum { N = 12 };
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, d, 256ull << 20), 0);
    for (int round = 0; round < 3; round++) {
        fill_ctx f = {.seed = 100 + (uint64_t)round, .sleep_ms = 150};
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, N);
        pthread_t th[N];
        sf_arg a[N];
        uint64_t len = 4u << 20;
        fz_cache_key k = key_of("single flight", (uint64_t)round);
        for (int i = 0; i < N; i++) {
            /* Half the threads want the whole chunk, half a slice of it. */
            uint64_t off = i % 2 ? (uint64_t)i * 1000 : 0;
            uint64_t n = i % 2 ? 70000 : len;
            a[i] = (sf_arg){c, k, &f, len, off, n, &bar, -1, malloc(n)};
            assert_int_equal(pthread_create(&th[i], NULL, sf_thread, &a[i]), 0);
        }
        for (int i = 0; i < N; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(a[i].rc, 0);
            check_bytes(a[i].out, f.seed, a[i].off, a[i].n);
            free(a[i].out);
        }
        assert_int_equal(atomic_load(&f.calls), 1);
        pthread_barrier_destroy(&bar);
    }
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.fills, 3);
    assert_int_equal(s.hits, 3 * (N - 1));
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_fetch_range(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fz_cache_key k = key_of("ranges", 0);
    fill_ctx f = {.seed = 5};
    uint8_t b[3000];
    uint64_t len = 20000;
    /* A partial miss fills the whole chunk (and stores it). */
    assert_int_equal(fz_cache_fetch_range(c, &k, len, 100, 3000, b, fill, &f, true), 0);
    check_bytes(b, 5, 100, 3000);
    fz_cache_flush(c);
    assert_int_equal(fz_cache_fetch_range(c, &k, len, len - 7, 7, b, fill, &f, true), 0);
    check_bytes(b, 5, len - 7, 7);
    assert_int_equal(fz_cache_fetch_range(c, &k, len, 0, 0, b, fill, &f, true), 0);
    assert_int_equal(atomic_load(&f.calls), 1);
    assert_int_equal(fz_cache_fetch_range(c, &k, len, len - 7, 8, b, fill, &f, true), FZ_EINVAL);
    /* Without a cache, a range is produced from a whole-chunk fill too. */
    fill_ctx g = {.seed = 6};
    assert_int_equal(fz_cache_fetch_range(NULL, &k, len, 999, 1000, b, fill, &g, true), 0);
    check_bytes(b, 6, 999, 1000);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_tiny_map_evicts(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint64_t len = 256u << 10;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_open(&c, d, 1u << 20), 0);
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t i = 0; i < 24; i++) {
            fz_cache_key k = key_of("tiny", i);
            fill_ctx f = {.seed = 1000 + i};
            memset(b, 0, len);
            assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
            check_bytes(b, 1000 + i, 0, len);
            if (i % 3 == 0)
                fz_cache_flush(c);
        }
    }
    fz_cache_stats s = fz_test_cache_stats(c);
    printf("tiny map: %llu entries, %llu evictions, %llu fills, used %llu of %llu\n",
           (unsigned long long)s.entries, (unsigned long long)s.evictions,
           (unsigned long long)s.fills, (unsigned long long)s.used_bytes,
           (unsigned long long)s.map_size);
    assert_true(s.evictions > 0);
    assert_true(s.entries >= 1 && s.entries <= 3);
    assert_true(s.used_bytes <= s.map_size);
    assert_true(s.fills >= 24);
    /* What is still there is sound. */
    uint64_t checked, bad;
    assert_int_equal(fz_cache_verify(c, &checked, &bad), 0);
    assert_int_equal(bad, 0);
    assert_int_equal(checked, s.entries);
    /* A value over a third of the map is served but never stored. */
    uint8_t *big = malloc(512u << 10);
    fz_cache_key kb = key_of("too big", 0);
    fill_ctx fb = {.seed = 77};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(fz_cache_fetch(c, &kb, 512u << 10, big, fill, &fb, true), 0);
        check_bytes(big, 77, 0, 512u << 10);
        fz_cache_flush(c);
    }
    assert_int_equal(atomic_load(&fb.calls), 2);
    assert_int_equal(fz_test_cache_stats(c).entries, s.entries);
    free(big);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

static void test_clear(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint8_t b[1000];
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fill_ctx f = {.seed = 31};
    for (uint64_t i = 0; i < 5; i++) {
        fz_cache_key k = key_of("clear", i);
        assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true), 0);
    }
    assert_int_equal(fz_test_cache_stats(c).entries, 5);
    assert_int_equal(fz_cache_clear(c), 0);
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 0);
    assert_int_equal(s.bytes, 0);
    assert_int_equal(s.fills, 0);
    assert_int_equal(s.misses, 0);
    fz_cache_key k = key_of("clear", 0);
    assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true), 0);
    check_bytes(b, 31, 0, sizeof b);
    assert_int_equal(atomic_load(&f.calls), 6);
    fz_cache_close(c);
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    assert_int_equal(fz_test_cache_stats(c).entries, 1);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

/* Two processes with the environment open at once, each storing its own
 * keys; afterwards each key is a hit for the other. */
static void test_two_processes(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    uint8_t b[70000];
    pid_t pid = fork();
    assert_true(pid >= 0);
    int me = pid == 0 ? 1 : 0;
    fz_cache *c;
    if (fz_cache_open(&c, d, 64ull << 20) != 0) {
        if (pid == 0)
            _exit(2);
        fail_msg("open: %s", fz_error_msg());
    }
    for (uint64_t i = 0; i < 20; i++) {
        fz_cache_key k = key_of(me ? "child" : "parent", i);
        fill_ctx f = {.seed = (uint64_t)me * 100 + i};
        if (fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true) != 0 && pid == 0)
            _exit(3);
    }
    fz_cache_close(c);
    if (pid == 0)
        _exit(0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    fill_ctx none = {.seed = 0};
    for (int who = 0; who < 2; who++)
        for (uint64_t i = 0; i < 20; i++) {
            fz_cache_key k = key_of(who ? "child" : "parent", i);
            assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &none, true), 0);
            check_bytes(b, (uint64_t)who * 100 + i, 0, sizeof b);
        }
    assert_int_equal(atomic_load(&none.calls), 0);
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 40);
    assert_int_equal(s.fills, 40);
    assert_int_equal(s.hits, 40);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

/* Hit throughput of 4 MiB chunks (printed, not asserted). */
static void test_hit_throughput(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint64_t len = 4u << 20;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_open(&c, d, 1ull << 30), 0);
    for (uint64_t i = 0; i < 16; i++) {
        fz_cache_key k = key_of("throughput", i);
        fill_ctx f = {.seed = i};
        assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    }
    fz_cache_flush(c);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rounds = 8;
    for (int r = 0; r < rounds; r++)
        for (uint64_t i = 0; i < 16; i++) {
            fz_cache_key k = key_of("throughput", i);
            fill_ctx f = {.seed = i};
            assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
            assert_int_equal(atomic_load(&f.calls), 0);
        }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("cache hit throughput: %.0f MB/s (4 MiB chunks, verified)\n",
           (double)rounds * 16 * (double)len / s / 1e6);
    /* 128 KiB reads (a FUSE read) out of cached 4 MiB chunks. */
    uint64_t piece = 128u << 10;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t i = 0; i < 16; i++)
        for (uint64_t off = 0; off < len; off += piece) {
            fz_cache_key k = key_of("throughput", i);
            fill_ctx f = {.seed = i};
            assert_int_equal(fz_cache_fetch_range(c, &k, len, off, piece, b, fill, &f, true), 0);
            assert_int_equal(atomic_load(&f.calls), 0);
        }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("cache hit throughput: %.0f MB/s (128 KiB ranges of 4 MiB chunks, verified)\n",
           16 * (double)len / s / 1e6);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

/* ---- damage ---- */

static void fill_some(const char *d, int n, uint64_t len)
{
    fz_cache *c;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    for (int i = 0; i < n; i++) {
        fill_ctx f = {.seed = (uint64_t)i};
        fz_cache_key k = key_of("damage", (uint64_t)i);
        assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    }
    fz_cache_close(c);
    free(b);
}

static off_t data_size(const char *d)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/data.mdb", d);
    assert_int_equal(stat(p, &st), 0);
    return st.st_size;
}

static void truncate_data(const char *d, off_t size)
{
    char p[512];
    snprintf(p, sizeof p, "%s/data.mdb", d);
    assert_int_equal(truncate(p, size), 0);
}

static void test_truncated_before_open(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c = NULL;
    fill_some(d, 8, 300000);
    off_t full = data_size(d);
    truncate_data(d, full / 2);
    /* stats/verify open without repairing: an error naming the way out */
    assert_int_equal(fz_cache_open_flags(&c, d, 0, FZ_CACHE_NO_REPAIR), FZ_EIO);
    assert_null(c);
    assert_non_null(strstr(fz_error_msg(), "truncated"));
    assert_non_null(strstr(fz_error_msg(), "fzfs cache clear"));
    assert_int_equal(data_size(d), full / 2); /* untouched */
    /* a user of the cache recreates it (nobody else has it open) */
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_int_equal(s.entries, 0);
    fill_ctx f = {.seed = 3};
    fz_cache_key k = key_of("damage", 3);
    uint8_t b[1000];
    assert_int_equal(fz_cache_fetch(c, &k, sizeof b, b, fill, &f, true), 0);
    check_bytes(b, 3, 0, sizeof b);
    fz_cache_close(c);
    /* garbage where the meta pages were */
    char p[512];
    snprintf(p, sizeof p, "%s/data.mdb", d);
    FILE *fp = fopen(p, "r+b");
    assert_non_null(fp);
    for (int i = 0; i < 8192; i++)
        fputc(fz_test_byte_at(9, (uint64_t)i), fp);
    fclose(fp);
    uint64_t checked, bad;
    assert_int_equal(fz_cache_open_flags(&c, d, 0, FZ_CACHE_NO_REPAIR), FZ_EIO);
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    assert_int_equal(fz_cache_verify(c, &checked, &bad), 0);
    assert_int_equal(checked, 0);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_truncated_while_mapped(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint64_t len = 300000, checked, bad;
    uint8_t *b = malloc(len);
    fill_some(d, 8, len);
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    truncate_data(d, 3 * 4096); /* the meta pages survive; the tree's pages are gone */
    for (int i = 0; i < 8; i++) {
        fill_ctx f = {.seed = (uint64_t)i};
        fz_cache_key k = key_of("damage", (uint64_t)i);
        memset(b, 0, len);
        assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
        assert_int_equal(f.calls, 1); /* computed: the stored value is unreachable */
        check_bytes(b, (uint64_t)i, 0, len);
    }
    fz_cache_stats s;
    assert_int_equal(fz_cache_get_stats(c, &s), FZ_EIO);
    assert_non_null(strstr(fz_error_msg(), "fzfs cache clear"));
    assert_int_equal(fz_cache_verify(c, &checked, &bad), FZ_EIO);
    fz_cache_close(c);
    /* the next open finds it truncated and starts over */
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    assert_int_equal(fz_test_cache_stats(c).entries, 0);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

static void test_reset_refused_while_in_use(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache"), p[512];
    fill_some(d, 2, 1000);
    off_t size = data_size(d);
    /* another process's shared lock (another open file description) */
    snprintf(p, sizeof p, "%s/fzfs.lock", d);
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_SH), 0);
    assert_int_equal(fz_cache_reset(d), FZ_EIO);
    assert_non_null(strstr(fz_error_msg(), "in use"));
    assert_int_equal(data_size(d), size);
    /* a damaged cache in use is not recreated under its user either */
    truncate_data(d, size / 2);
    fz_cache *c = NULL;
    assert_int_equal(fz_cache_open(&c, d, 0), FZ_EIO);
    assert_non_null(strstr(fz_error_msg(), "fzfs cache clear"));
    assert_int_equal(data_size(d), size / 2);
    close(fd);
    assert_int_equal(fz_cache_reset(d), 0);
    snprintf(p, sizeof p, "%s/data.mdb", d);
    struct stat st;
    assert_int_equal(stat(p, &st), -1);
    assert_int_equal(fz_cache_open(&c, d, 0), 0);
    assert_int_equal(fz_test_cache_stats(c).entries, 0);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

/* ---- the write queue, read transactions, prefetch, resident size ---- */

/* Another process holding LMDB's write lock: the cache's writer thread
 * blocks behind it (as behind a slow disk). holder_start forks it once the
 * environment exists; holder_stop lets it go. */
typedef struct {
    pid_t pid;
    int done; /* pipe write end: closing it lets the lock go */
} holder;

static void holder_start(holder *h, const char *dir)
{
    int p1[2], p2[2];
    assert_int_equal(pipe(p1), 0);
    assert_int_equal(pipe(p2), 0);
    h->pid = fork();
    assert_true(h->pid >= 0);
    if (h->pid == 0) {
        close(p1[0]);
        close(p2[1]);
        MDB_env *env;
        MDB_txn *txn;
        char ch = 0;
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 4) || mdb_env_open(env, dir, 0, 0644) ||
            mdb_txn_begin(env, NULL, 0, &txn))
            _exit(2);
        if (write(p1[1], "h", 1) != 1 || read(p2[0], &ch, 1) < 0)
            _exit(3);
        mdb_txn_abort(txn);
        mdb_env_close(env);
        _exit(0);
    }
    close(p1[1]);
    close(p2[0]);
    char ch;
    assert_int_equal(read(p1[0], &ch, 1), 1); /* the lock is held */
    close(p1[0]);
    h->done = p2[1];
}

static void holder_stop(holder *h)
{
    int st;
    close(h->done);
    assert_int_equal(waitpid(h->pid, &st, 0), h->pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* A writer that cannot commit never holds up a fetch: once the queue is
 * full, older values are dropped (and computed again when read), the
 * newest kept; a prefetch then computes nothing. */
static void test_full_queue_never_blocks(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    enum { N = 48 };
    uint64_t len = 4u << 20;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_open(&c, d, 1ull << 30), 0);
    holder h;
    holder_start(&h, d);
    /* 192 MiB of values against a 64 MiB queue: half fetched whole (the
     * queue copies them), half by a slice (the queue takes the buffer). */
    for (uint64_t i = 0; i < N; i++) {
        fz_cache_key k = key_of("blocked writer", i);
        fill_ctx f = {.seed = 500 + i};
        uint64_t off = i % 2 ? 12345 : 0, n = i % 2 ? 1u << 20 : len;
        assert_int_equal(fz_cache_fetch_range(c, &k, len, off, n, b, fill, &f, true), 0);
        check_bytes(b, 500 + i, off, n);
    }
    fz_cache_stats hs;
    fz_cache_handle_stats(c, &hs);
    printf("writer blocked: %llu of %d values dropped\n", (unsigned long long)hs.dropped, N);
    assert_true(hs.dropped >= N / 2);
    fz_cache_key kp = key_of("blocked writer", 1000);
    fill_ctx fp = {.seed = 9};
    assert_int_equal(fz_cache_prefetch(c, &kp, len, fill, &fp), 0);
    assert_int_equal(atomic_load(&fp.calls), 0);
    holder_stop(&h);
    fz_cache_flush(c);
    /* Every byte right, stored or computed again; the newest was kept. */
    int refilled = 0;
    for (uint64_t i = 0; i < N; i++) {
        fz_cache_key k = key_of("blocked writer", i);
        fill_ctx f = {.seed = 500 + i};
        assert_int_equal(fz_cache_fetch_range(c, &k, len, 4096, 1u << 20, b, fill, &f, true), 0);
        check_bytes(b, 500 + i, 4096, 1u << 20);
        refilled += atomic_load(&f.calls);
        if (i == N - 1)
            assert_int_equal(atomic_load(&f.calls), 0);
    }
    assert_true(refilled > 0 && refilled < N);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

typedef struct {
    fz_cache *c;
    int n;
    int store; /* the fetches' store mode */
    atomic_int done;
} keep_arg;

static void *keep_thread(void *p)
{
    keep_arg *a = p;
    uint64_t len = 4u << 20;
    uint8_t *b = malloc(len);
    for (int i = 0; i < a->n && b; i++) {
        fz_cache_key k = key_of("keep all", (uint64_t)i);
        fill_ctx f = {.seed = 900 + (uint64_t)i};
        if (fz_cache_fetch_range(a->c, &k, len, 0, 1u << 20, b, fill, &f, a->store) != 0)
            break;
        atomic_fetch_add(&a->done, 1);
    }
    free(b);
    return NULL;
}

/* FZ_CACHE_KEEP_ALL (materialize --fill-cache), or a fetch asking
 * FZ_CACHE_STORE_WAIT (a .bin central directory's CRC pass): behind a
 * writer that cannot commit, fetches wait for room rather than drop
 * anything; once it commits, every value is stored. */
static void keep_waits(unsigned flags, int store)
{
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    enum { N = 24 }; /* 96 MiB against a 48 MiB queue */
    assert_int_equal(fz_cache_open_flags(&c, d, 1ull << 30, flags), 0);
    holder h;
    holder_start(&h, d);
    keep_arg a = {c, N, store, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, keep_thread, &a), 0);
    struct timespec ts = {0, 400000000};
    nanosleep(&ts, NULL);
    int waiting_at = atomic_load(&a.done);
    printf("keep all: %d of %d fetched while the writer could not commit\n", waiting_at, N);
    assert_true(waiting_at < N);
    holder_stop(&h);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&a.done), N);
    fz_cache_stats hs;
    fz_cache_handle_stats(c, &hs);
    assert_int_equal(hs.dropped, 0);
    assert_int_equal(fz_test_cache_stats(c).entries, N);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_keep_all_waits(void **state)
{
    (void)state;
    keep_waits(FZ_CACHE_KEEP_ALL, FZ_CACHE_STORE);
}

static void test_store_wait_waits(void **state)
{
    (void)state;
    keep_waits(0, FZ_CACHE_STORE_WAIT);
}

static int count_reader(const char *msg, void *ctx)
{
    /* "    pid     thread     txnid" lines, one per slot in use */
    long pid;
    if (sscanf(msg, " %ld", &pid) == 1 && pid == (long)getppid())
        (*(int *)ctx)++;
    return 0;
}

/* How many LMDB reader slots the parent holds, seen from a child. */
static int parent_reader_slots(const char *dir)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        MDB_env *env;
        int n = 0;
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 4) || mdb_env_open(env, dir, 0, 0644))
            _exit(255);
        mdb_reader_list(env, count_reader, &n);
        mdb_env_close(env);
        _exit(n > 200 ? 200 : n);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_true(WEXITSTATUS(st) != 255);
    return WEXITSTATUS(st);
}

typedef struct {
    fz_cache *c;
    int rc;
} hits_arg;

static void *hits_thread(void *p)
{
    hits_arg *a = p;
    uint8_t b[5000];
    for (int r = 0; r < 200 && a->rc == 0; r++) {
        fz_cache_key k = key_of("reuse", (uint64_t)r % 4);
        fill_ctx f = {.seed = (uint64_t)r % 4};
        a->rc = fz_cache_fetch_range(a->c, &k, 100000, 777, sizeof b, b, fill, &f, true);
        if (a->rc == 0 &&
            (atomic_load(&f.calls) != 0 || b[0] != fz_test_byte_at((uint64_t)r % 4, 777)))
            a->rc = -1;
    }
    return NULL;
}

/* Lookups renew read transactions that earlier ones reset: their reader
 * slots stay this process's (a few, bounded) instead of being taken and
 * given back per lookup; and a map grown by another process (which makes
 * a renew fail) is adopted by beginning a new one. */
static void test_read_txn_reuse(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint8_t *b = malloc(100000);
    assert_int_equal(fz_cache_open(&c, d, 8ull << 20), 0);
    assert_int_equal(parent_reader_slots(d), 0); /* no lookup yet */
    for (uint64_t i = 0; i < 4; i++) {
        fz_cache_key k = key_of("reuse", i);
        fill_ctx f = {.seed = i};
        assert_int_equal(fz_cache_fetch(c, &k, 100000, b, fill, &f, true), 0);
    }
    fz_cache_flush(c);
    enum { T = 4 };
    pthread_t th[T];
    hits_arg a[T];
    for (int i = 0; i < T; i++) {
        a[i] = (hits_arg){c, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hits_thread, &a[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].rc, 0);
    }
    int slots = parent_reader_slots(d);
    printf("reader slots kept after %d lookups on %d threads: %d\n", 200 * T, T, slots);
    assert_true(slots >= 1 && slots <= T);

    /* Another process grows the map past this one's and fills it: the
     * next renew fails (MDB_MAP_RESIZED) and a new transaction adopts it. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi dbi;
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 4) ||
            mdb_env_set_mapsize(env, 64ull << 20) || mdb_env_open(env, d, 0, 0644) ||
            mdb_txn_begin(env, NULL, 0, &txn) || mdb_dbi_open(txn, "data", 0, &dbi))
            _exit(2);
        for (int i = 0; i < 24; i++) {
            char name[16];
            snprintf(name, sizeof name, "filler %d", i);
            MDB_val k = {strlen(name), name}, v = {1u << 20, NULL};
            if (mdb_put(txn, dbi, &k, &v, MDB_RESERVE))
                _exit(3);
            memset(v.mv_data, i, v.mv_size);
        }
        if (mdb_txn_commit(txn))
            _exit(4);
        mdb_env_close(env);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    for (uint64_t i = 0; i < 4; i++) {
        fz_cache_key k = key_of("reuse", i);
        fill_ctx f = {.seed = i};
        assert_int_equal(fz_cache_fetch_range(c, &k, 100000, 1000, 5000, b, fill, &f, true), 0);
        check_bytes(b, i, 1000, 5000);
        assert_int_equal(atomic_load(&f.calls), 0);
    }
    fz_cache_stats s = fz_test_cache_stats(c);
    assert_true(s.map_size >= 64ull << 20);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

static void *pf_thread(void *p)
{
    sf_arg *a = p;
    a->rc = fz_cache_prefetch(a->c, &a->key, a->len, fill, a->f);
    return NULL;
}

/* A prefetch computes a chunk once: a reader arriving meanwhile waits for
 * it, later readers hit it; a chunk already there is not computed again;
 * a failed prefetch keeps nothing. */
static void test_prefetch(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    uint64_t len = 1u << 20;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_open(&c, d, 64ull << 20), 0);
    fz_cache_key k = key_of("ahead", 0);
    fill_ctx f = {.seed = 31, .sleep_ms = 300};
    sf_arg a = {.c = c, .key = k, .f = &f, .len = len, .rc = -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, pf_thread, &a), 0);
    while (atomic_load(&f.calls) == 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(fz_cache_fetch_range(c, &k, len, 5000, 70000, b, fill, &f, true), 0);
    check_bytes(b, 31, 5000, 70000);
    pthread_join(th, NULL);
    assert_int_equal(a.rc, 1); /* it filled the chunk */
    assert_int_equal(atomic_load(&f.calls), 1);
    assert_int_equal(fz_cache_prefetch(c, &k, len, fill, &f), 0); /* queued or stored */
    fz_cache_flush(c);
    assert_int_equal(fz_cache_prefetch(c, &k, len, fill, &f), 0);
    assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
    check_bytes(b, 31, 0, len);
    assert_int_equal(atomic_load(&f.calls), 1);
    /* failing: reported, nothing kept, the reader computes it */
    fz_cache_key k2 = key_of("ahead", 1);
    fill_ctx g = {.seed = 32, .fail = FZ_EIO};
    assert_int_equal(fz_cache_prefetch(c, &k2, len, fill, &g), FZ_EIO);
    g.fail = 0;
    fz_cache_flush(c);
    assert_int_equal(fz_cache_fetch_range(c, &k2, len, 1, 10, b, fill, &g, true), 0);
    check_bytes(b, 32, 1, 10);
    assert_int_equal(atomic_load(&g.calls), 2);
    /* no cache: nowhere to keep it, nothing computed */
    fill_ctx h = {.seed = 33};
    assert_int_equal(fz_cache_prefetch(NULL, &k2, len, fill, &h), 0);
    assert_int_equal(atomic_load(&h.calls), 0);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

/* kB of file pages this process has mapped (RssFile). */
static long rss_file_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    assert_non_null(f);
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "RssFile: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* Values written and read through the map do not stay resident in this
 * process (the mount's memory bound). */
static void test_map_pages_let_go(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_cache");
    fz_cache *c;
    enum { N = 64 };
    uint64_t len = 4u << 20;
    uint8_t *b = malloc(len);
    assert_int_equal(fz_cache_open(&c, d, 1ull << 30), 0);
    long base = rss_file_kb();
    for (uint64_t i = 0; i < N; i++) {
        fz_cache_key k = key_of("resident", i);
        fill_ctx f = {.seed = i};
        assert_int_equal(fz_cache_fetch(c, &k, len, b, fill, &f, true), 0);
        if (i % 8 == 7)
            fz_cache_flush(c); /* no drops: every value goes through the map */
    }
    fz_cache_flush(c);
    long written = rss_file_kb() - base;
    for (uint64_t i = 0; i < N; i++)
        for (uint64_t off = 0; off < len; off += 1u << 20) {
            fz_cache_key k = key_of("resident", i);
            fill_ctx f = {.seed = i};
            assert_int_equal(fz_cache_fetch_range(c, &k, len, off, 1u << 20, b, fill, &f, true), 0);
            assert_int_equal(atomic_load(&f.calls), 0);
        }
    long read = rss_file_kb() - base;
    printf("256 MiB through the map: %ld kB resident after writing, %ld kB after reading\n",
           written, read);
    assert_true(written < 96 * 1024);
    assert_true(read < 96 * 1024);
    fz_cache_close(c);
    free(b);
    fz_test_rmtree(d);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_close_default_dir),
        cmocka_unit_test(test_fill_once_then_hit),
        cmocka_unit_test(test_fill_error_not_stored),
        cmocka_unit_test(test_persistence),
        cmocka_unit_test(test_corrupt_value_recomputed),
        cmocka_unit_test(test_corrupt_block_range),
        cmocka_unit_test(test_single_flight),
        cmocka_unit_test(test_fetch_range),
        cmocka_unit_test(test_tiny_map_evicts),
        cmocka_unit_test(test_clear),
        cmocka_unit_test(test_two_processes),
        cmocka_unit_test(test_hit_throughput),
        cmocka_unit_test(test_truncated_before_open),
        cmocka_unit_test(test_truncated_while_mapped),
        cmocka_unit_test(test_reset_refused_while_in_use),
        cmocka_unit_test(test_full_queue_never_blocks),
        cmocka_unit_test(test_keep_all_waits),
        cmocka_unit_test(test_store_wait_waits),
        cmocka_unit_test(test_read_txn_reuse),
        cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_map_pages_let_go),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
