/* Stored whole files (cache/files.c, cache/files_store.c): store then open
 * gives the same bytes; a wrong size is not found (and kept); a data file
 * written, truncated or replaced after the store, or a damaged sidecar, is
 * refused and removed; a canceled or failed store leaves nothing; a store
 * already running (a locked temporary) is FZ_EBUSY, a dead one's temporary
 * is replaced; stats count the files; verify reads every block and removes
 * leftovers; clear and reset remove the files; the budget evicts the least
 * recently used and refuses a file over half of it; a file written piece by
 * piece, in any order from several threads, is readable before its commit
 * and stored with the right block table, and an abort or a canceled commit
 * leaves nothing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "tests/unit/helpers.h"

#include "cache/cache.h"
#include "util/error.h"

#define MIB (1ull << 20)

/* ---- helpers ---- */

typedef struct {
    uint64_t seed;
    atomic_int calls;
    int fail_at;           /* the piece (1-based) that fails with FZ_EFORMAT; 0: none */
    int cancel_at;         /* the piece (1-based) after which *cancel is set; 0: none */
    _Atomic bool *cancel;  /* (cancel_at) */
    _Atomic bool *started; /* set at the first piece; then wait until *go */
    _Atomic bool *go;
} src;

static int src_read(void *arg, uint64_t off, uint64_t len, uint8_t *buf)
{
    src *s = arg;
    int call = atomic_fetch_add(&s->calls, 1) + 1;
    assert_true(len <= FZ_CACHE_FILE_BLOCK);
    if (s->started) {
        atomic_store(s->started, true);
        while (!atomic_load(s->go)) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    if (call == s->fail_at)
        return fz_error_set(FZ_EFORMAT, "piece %d failed on purpose", call);
    for (uint64_t i = 0; i < len; i++)
        buf[i] = fz_test_byte_at(s->seed, off + i);
    if (call == s->cancel_at)
        atomic_store(s->cancel, true);
    return 0;
}

static fz_cache_key key_of(const char *text)
{
    fz_cache_key k;
    fz_cache_key_for(&k, text, strlen(text), 0);
    return k;
}

/* dir/files/<32 hex><suffix> for key. */
static void path_of(char *out, size_t cap, const char *dir, const fz_cache_key *k,
                    const char *suffix)
{
    assert_true((size_t)snprintf(out, cap, "%s/files/%016" PRIx64 "%016" PRIx64 "%s", dir, k->hi,
                                 k->lo, suffix) < cap);
}

static int store(fz_cache *c, const fz_cache_key *k, uint64_t size, src *s)
{
    return fz_cache_file_store(c, k, size, src_read, s, NULL);
}

/* Open key's file and compare every byte with seed's. */
static void check_file(fz_cache *c, const fz_cache_key *k, uint64_t size, uint64_t seed)
{
    int fd;
    assert_int_equal(fz_cache_file_open(c, k, size, &fd), 0);
    assert_int_equal(fcntl(fd, F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_RDONLY);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    uint8_t *b = malloc(size + 1);
    assert_non_null(b);
    assert_int_equal(pread(fd, b, size + 1, 0), (ssize_t)size);
    for (uint64_t i = 0; i < size; i++)
        if (b[i] != fz_test_byte_at(seed, i))
            fail_msg("byte %" PRIu64 " differs", i);
    free(b);
    close(fd);
}

static void expect_gone(fz_cache *c, const fz_cache_key *k, uint64_t size)
{
    int fd = 7;
    assert_int_equal(fz_cache_file_open(c, k, size, &fd), FZ_ENOTFOUND);
    assert_int_equal(fd, -1);
}

/* Names in dir/files, sorted into one string ("a b c"). */
static void list_files(const char *dir, char *out, size_t cap)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/files", dir);
    out[0] = '\0';
    DIR *d = opendir(p);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            strncat(out, e->d_name, cap - strlen(out) - 2);
            strcat(out, " ");
        }
    closedir(d);
}

static void expect_empty_dir(const char *dir)
{
    char names[4096];
    list_files(dir, names, sizeof names);
    assert_string_equal(names, "");
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static fz_cache *open_cache(const char *dir, uint64_t map)
{
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, dir, map), 0);
    return c;
}

/* ---- tests ---- */

static void test_store_then_open(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    fz_cache_key k = key_of("store then open");
    uint64_t size = 9 * MIB + 123; /* three pieces, the last one short */
    src s = {.seed = 5};
    expect_gone(c, &k, size);
    expect_gone(NULL, &k, size);
    assert_int_equal(store(c, &k, size, &s), 0);
    assert_int_equal(atomic_load(&s.calls), 3);
    check_file(c, &k, size, 5);
    /* Stored already: read() is not called again. */
    assert_int_equal(store(c, &k, size, &s), 0);
    assert_int_equal(atomic_load(&s.calls), 3);
    /* Private: 0700 directory, 0600 files; no temporary left. */
    char p[1024], names[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/files", d);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    path_of(p, sizeof p, d, &k, "");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    path_of(p, sizeof p, d, &k, ".meta");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    list_files(d, names, sizeof names);
    assert_null(strstr(names, ".tmp"));
    /* An empty file and a one-byte one. */
    fz_cache_key k0 = key_of("empty"), k1 = key_of("one byte");
    assert_int_equal(store(c, &k0, 0, &s), 0);
    check_file(c, &k0, 0, 5);
    assert_int_equal(store(c, &k1, 1, &s), 0);
    check_file(c, &k1, 1, 5);
    /* The files live without LMDB: a new handle on the same directory sees them. */
    fz_cache_close(c);
    c = open_cache(d, 0);
    check_file(c, &k, size, 5);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_wrong_size_not_found(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 64 * MIB);
    fz_cache_key k = key_of("sized");
    src s = {.seed = 6};
    assert_int_equal(store(c, &k, MIB, &s), 0);
    expect_gone(c, &k, MIB + 1);
    expect_gone(c, &k, MIB - 1);
    check_file(c, &k, MIB, 6); /* kept: it is sound, just not that size */
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

/* Store k, damage something with `how`, check that open refuses and removes it. */
static void damaged_is_removed(const char *how)
{
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 64 * MIB);
    fz_cache_key k = key_of("damage");
    uint64_t size = 5 * MIB;
    src s = {.seed = 7};
    char data[1024], meta[1024], other[1024];
    path_of(data, sizeof data, d, &k, "");
    path_of(meta, sizeof meta, d, &k, ".meta");
    assert_int_equal(store(c, &k, size, &s), 0);
    check_file(c, &k, size, 7);
    int fd;
    if (!strcmp(how, "write a byte") || !strcmp(how, "flip a sidecar byte")) {
        const char *p = how[0] == 'w' ? data : meta;
        assert_true((fd = open(p, O_RDWR)) >= 0);
        uint8_t b;
        assert_int_equal(pread(fd, &b, 1, 20), 1);
        b ^= 1;
        assert_int_equal(pwrite(fd, &b, 1, 20), 1);
        close(fd);
    } else if (!strcmp(how, "truncate")) {
        assert_int_equal(truncate(data, size - 1), 0);
    } else if (!strcmp(how, "truncate the sidecar")) {
        struct stat st;
        assert_int_equal(stat(meta, &st), 0);
        assert_int_equal(truncate(meta, st.st_size - 8), 0);
    } else if (!strcmp(how, "rename over")) {
        /* Same size, same bytes even: another inode. */
        snprintf(other, sizeof other, "%s/other", d);
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s' && mv '%s' '%s'", data, other, other, data);
        assert_int_equal(system(cmd), 0);
    } else {
        fail_msg("unknown damage %s", how);
    }
    expect_gone(c, &k, size);
    assert_false(exists(data));
    assert_false(exists(meta));
    /* And it can be stored again. */
    assert_int_equal(store(c, &k, size, &s), 0);
    check_file(c, &k, size, 7);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_modified_data_refused(void **state)
{
    (void)state;
    damaged_is_removed("write a byte");
    damaged_is_removed("truncate");
    damaged_is_removed("rename over");
}

static void test_damaged_sidecar_refused(void **state)
{
    (void)state;
    damaged_is_removed("flip a sidecar byte");
    damaged_is_removed("truncate the sidecar");
}

static void test_cancel_and_failure_leave_nothing(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    fz_cache_key k = key_of("cancel");
    _Atomic bool cancel = false;
    src s = {.seed = 8, .cancel_at = 2, .cancel = &cancel};
    /* Canceled after the second of four pieces: checked before the third. */
    assert_int_equal(fz_cache_file_store(c, &k, 16 * MIB, src_read, &s, &cancel), FZ_ECANCELED);
    assert_int_equal(atomic_load(&s.calls), 2);
    expect_empty_dir(d);
    expect_gone(c, &k, 16 * MIB);
    /* read() failing on the third piece: its error, nothing kept. */
    src f = {.seed = 8, .fail_at = 3};
    assert_int_equal(store(c, &k, 16 * MIB, &f), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "failed on purpose"));
    assert_int_equal(atomic_load(&f.calls), 3);
    expect_empty_dir(d);
    expect_gone(c, &k, 16 * MIB);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

typedef struct {
    fz_cache *c;
    fz_cache_key k;
    src s;
    int rc;
} store_job;

static void *store_thread(void *p)
{
    store_job *j = p;
    j->rc = store(j->c, &j->k, 6 * MIB, &j->s);
    return NULL;
}

static void test_busy_and_stale_temp(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    fz_cache_key k = key_of("busy");
    char tmp[1024];
    path_of(tmp, sizeof tmp, d, &k, ".tmp");
    src s = {.seed = 9};
    /* A temporary another descriptor holds locked (as another process would). */
    char files[1024];
    snprintf(files, sizeof files, "%s/files", d);
    assert_int_equal(mkdir(files, 0700), 0);
    int fd = open(tmp, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "partial", 7), 7);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    assert_int_equal(store(c, &k, 6 * MIB, &s), FZ_EBUSY);
    assert_int_equal(atomic_load(&s.calls), 0);
    assert_true(exists(tmp)); /* not the loser's to remove */
    expect_gone(c, &k, 6 * MIB);
    /* Its holder died (the lock is free): the stale temporary is replaced. */
    close(fd);
    assert_int_equal(store(c, &k, 6 * MIB, &s), 0);
    check_file(c, &k, 6 * MIB, 9);
    assert_false(exists(tmp));

    /* Two threads of one process: the second is FZ_EBUSY while the first assembles. */
    fz_cache_key k2 = key_of("busy threads");
    _Atomic bool started = false, go = false;
    store_job j = {.c = c, .k = k2, .s = {.seed = 10, .started = &started, .go = &go}};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, store_thread, &j), 0);
    while (!atomic_load(&started)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    src s2 = {.seed = 10};
    assert_int_equal(store(c, &k2, 6 * MIB, &s2), FZ_EBUSY);
    assert_int_equal(atomic_load(&s2.calls), 0);
    atomic_store(&go, true);
    pthread_join(t, NULL);
    assert_int_equal(j.rc, 0);
    check_file(c, &k2, 6 * MIB, 10);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_stats_count_files(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    fz_cache_stats st = fz_test_cache_stats(c);
    assert_int_equal(st.files, 0);
    assert_int_equal(st.file_bytes, 0);
    src s = {.seed = 11};
    fz_cache_key a = key_of("stats a"), b = key_of("stats b");
    assert_int_equal(store(c, &a, 3 * MIB, &s), 0);
    assert_int_equal(store(c, &b, 5 * MIB + 7, &s), 0);
    st = fz_test_cache_stats(c);
    assert_int_equal(st.files, 2);
    assert_int_equal(st.file_bytes, 8 * MIB + 7);
    assert_int_equal(st.entries, 0); /* (not LMDB values) */
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_verify_reads_blocks(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    src s = {.seed = 12};
    fz_cache_key good = key_of("verify good"), bad = key_of("verify bad");
    uint64_t size = 9 * MIB;
    assert_int_equal(store(c, &good, size, &s), 0);
    assert_int_equal(store(c, &bad, size, &s), 0);
    uint64_t checked, nbad;
    assert_int_equal(fz_cache_verify(c, &checked, &nbad), 0);
    assert_int_equal(checked, 2);
    assert_int_equal(nbad, 0);

    /* A flipped byte in the second block of `bad` that open cannot see: any
     * write moves the data file's mtime and ctime (through write or a shared
     * mapping alike, and ctime cannot be set back), so the test then rewrites
     * the sidecar's recorded identity to the file's new fstat and reseals the
     * sidecar's checksum. Sidecar layout (cache/files.c): mtime_ns at 56,
     * ctime_ns at 64, its XXH3-64 over everything before it in the last 8 bytes.
     * What is left to catch it is the block checksum. */
    char data[1024], meta[1024];
    path_of(data, sizeof data, d, &bad, "");
    path_of(meta, sizeof meta, d, &bad, ".meta");
    int fd = open(data, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, 5 * MIB), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, 5 * MIB), 1);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    close(fd);
    int mfd = open(meta, O_RDWR);
    assert_true(mfd >= 0);
    struct stat mst;
    assert_int_equal(fstat(mfd, &mst), 0);
    uint8_t *side = malloc((size_t)mst.st_size);
    assert_non_null(side);
    assert_int_equal(pread(mfd, side, (size_t)mst.st_size, 0), mst.st_size);
    put_le64(side + 56, (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec);
    put_le64(side + 64, (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec);
    size_t n = (size_t)mst.st_size;
    assert_int_not_equal(get_le64(side + n - 8), XXH3_64bits(side, n - 8)); /* (it changed) */
    put_le64(side + n - 8, XXH3_64bits(side, n - 8));
    assert_int_equal(pwrite(mfd, side, n, 0), (ssize_t)n);
    close(mfd);
    free(side);
    /* open believes it (identity as recorded, sidecar sound): only verify reads the bytes. */
    int ofd;
    assert_int_equal(fz_cache_file_open(c, &bad, size, &ofd), 0);
    close(ofd);

    /* Leftovers: a data file without a sidecar, a temporary nobody holds,
     * and one a running store holds (kept). */
    fz_cache_key orphan = key_of("orphan"), stale = key_of("stale"), held = key_of("held");
    char p_orphan[1024], p_stale[1024], p_held[1024];
    path_of(p_orphan, sizeof p_orphan, d, &orphan, "");
    path_of(p_stale, sizeof p_stale, d, &stale, ".meta.tmp");
    path_of(p_held, sizeof p_held, d, &held, ".tmp");
    fz_test_put(d, p_orphan + strlen(d) + 1, "orphan");
    fz_test_put(d, p_stale + strlen(d) + 1, "stale");
    fz_test_put(d, p_held + strlen(d) + 1, "held");
    int hfd = open(p_held, O_RDWR);
    assert_true(hfd >= 0);
    assert_int_equal(flock(hfd, LOCK_EX), 0);

    assert_int_equal(fz_cache_verify(c, &checked, &nbad), 0);
    assert_int_equal(checked, 2);
    assert_int_equal(nbad, 1);
    assert_false(exists(data));
    assert_false(exists(meta));
    assert_false(exists(p_orphan));
    assert_false(exists(p_stale));
    assert_true(exists(p_held));
    expect_gone(c, &bad, size);
    check_file(c, &good, size, 12);
    close(hfd);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

static void test_clear_and_reset_remove_files(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    src s = {.seed = 13};
    fz_cache_key a = key_of("clear a"), b = key_of("clear b");
    assert_int_equal(store(c, &a, 2 * MIB, &s), 0);
    assert_int_equal(store(c, &b, 3 * MIB, &s), 0);
    assert_int_equal(fz_cache_clear(c), 0);
    expect_empty_dir(d);
    assert_int_equal(fz_test_cache_stats(c).files, 0);
    expect_gone(c, &a, 2 * MIB);
    assert_int_equal(store(c, &a, 2 * MIB, &s), 0);
    assert_int_equal(store(c, &b, 3 * MIB, &s), 0);
    fz_cache_close(c);
    assert_int_equal(fz_cache_reset(d), 0);
    expect_empty_dir(d);
    c = open_cache(d, 0);
    expect_gone(c, &b, 3 * MIB);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

/* Set the sidecar's mtime of key k (its place in the least-recently-used order). */
static void set_used(const char *d, const fz_cache_key *k, time_t ago)
{
    char meta[1024];
    path_of(meta, sizeof meta, d, k, ".meta");
    struct timespec ts[2] = {{time(NULL) - ago, 0}, {time(NULL) - ago, 0}};
    assert_int_equal(utimensat(AT_FDCWD, meta, ts, 0), 0);
}

static void test_budget_evicts_lru(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    /* A 4 MiB map: stored files may use 4 MiB, one at most 2 MiB. */
    fz_cache *c = open_cache(d, 4 * MIB);
    uint64_t size = 3 * MIB / 2;
    src s = {.seed = 14};
    fz_cache_key a = key_of("lru a"), b = key_of("lru b"), k3 = key_of("lru c");
    assert_int_equal(store(c, &a, size, &s), 0);
    assert_int_equal(store(c, &b, size, &s), 0);
    /* a stored first, but used since: b is the least recently used. */
    set_used(d, &a, 2000);
    set_used(d, &b, 1000);
    check_file(c, &a, size, 14);
    assert_int_equal(store(c, &k3, size, &s), 0);
    expect_gone(c, &b, size);
    check_file(c, &a, size, 14);
    check_file(c, &k3, size, 14);
    fz_cache_stats st = fz_test_cache_stats(c);
    assert_int_equal(st.files, 2);
    assert_true(st.file_bytes <= st.map_size);
    /* Over half the budget: never stored, nothing evicted, read() not called. */
    fz_cache_key big = key_of("too big");
    src sb = {.seed = 15};
    assert_int_equal(store(c, &big, 2 * MIB + 1, &sb), FZ_ENOSPC);
    assert_int_equal(atomic_load(&sb.calls), 0);
    assert_int_equal(fz_test_cache_stats(c).files, 2);
    /* Exactly half fits (evicting what it must). */
    assert_int_equal(store(c, &big, 2 * MIB, &sb), 0);
    check_file(c, &big, 2 * MIB, 15);
    st = fz_test_cache_stats(c);
    assert_true(st.file_bytes <= st.map_size);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

/* ---- pieces in any order (fz_cache_file_begin / put / commit) ---- */

typedef struct {
    fz_cache_file_writer *w;
    uint64_t size, piece, seed;
    int first, step; /* this thread's pieces: first, first + step, ... */
} putter;

static void *put_pieces(void *arg)
{
    putter *p = arg;
    uint8_t *b = malloc(p->piece);
    assert_non_null(b);
    uint64_t n = (p->size + p->piece - 1) / p->piece;
    /* From the last piece back: out of order within a thread too. */
    for (int64_t i = (int64_t)n - 1; i >= 0; i--) {
        if ((i - p->first) % p->step != 0 || i < p->first)
            continue;
        uint64_t off = (uint64_t)i * p->piece;
        uint64_t len = p->size - off < p->piece ? p->size - off : p->piece;
        for (uint64_t j = 0; j < len; j++)
            b[j] = fz_test_byte_at(p->seed, off + j);
        assert_int_equal(fz_cache_file_put(p->w, off, b, len), 0);
    }
    free(b);
    return NULL;
}

static void put_all(fz_cache_file_writer *w, uint64_t size, uint64_t piece, uint64_t seed)
{
    pthread_t th[3];
    putter p[3];
    for (int t = 0; t < 3; t++) {
        p[t] = (putter){w, size, piece, seed, t, 3};
        assert_int_equal(pthread_create(&th[t], NULL, put_pieces, &p[t]), 0);
    }
    for (int t = 0; t < 3; t++)
        pthread_join(th[t], NULL);
}

static void test_writer_pieces_in_any_order(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_files");
    fz_cache *c = open_cache(d, 256 * MIB);
    fz_cache_key k = key_of("pieces");
    uint64_t size = 9 * MIB + 123;
    fz_cache_file_writer *w, *w2;
    assert_int_equal(fz_cache_file_begin(c, &k, size, &w), 0);
    /* Claimed: a second writer of the key is refused. */
    assert_int_equal(fz_cache_file_begin(c, &k, size, &w2), FZ_EBUSY);
    /* 1.5 MiB pieces (blocks read back at commit) from three threads. */
    put_all(w, size, 3 * MIB / 2, 21);
    uint8_t b = 0;
    assert_int_equal(fz_cache_file_put(w, size, &b, 1), FZ_EINVAL);
    /* Readable before the commit, through a descriptor that outlives it. */
    int fd = fz_cache_file_reopen(w);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    expect_gone(c, &k, size);
    assert_int_equal(fz_cache_file_commit(w, NULL), 0);
    uint8_t *all = malloc(size + 1);
    assert_non_null(all);
    assert_int_equal(pread(fd, all, size + 1, 0), (ssize_t)size);
    for (uint64_t i = 0; i < size; i++)
        if (all[i] != fz_test_byte_at(21, i))
            fail_msg("byte %" PRIu64 " differs", i);
    free(all);
    close(fd);
    check_file(c, &k, size, 21);
    uint64_t checked, nbad;
    assert_int_equal(fz_cache_verify(c, &checked, &nbad), 0); /* the block table is right */
    assert_int_equal(checked, 1);
    assert_int_equal(nbad, 0);
    /* Stored already. */
    assert_int_equal(fz_cache_file_begin(c, &k, size, &w2), FZ_EEXIST);

    /* Whole blocks checksummed as put: the same table. */
    fz_cache_key kb = key_of("whole blocks");
    assert_int_equal(fz_cache_file_begin(c, &kb, size, &w), 0);
    put_all(w, size, FZ_CACHE_FILE_BLOCK, 22);
    assert_int_equal(fz_cache_file_commit(w, NULL), 0);
    check_file(c, &kb, size, 22);
    assert_int_equal(fz_cache_verify(c, &checked, &nbad), 0);
    assert_int_equal(checked, 2);
    assert_int_equal(nbad, 0);

    /* Abort, and a commit canceled while reading back: nothing left. */
    char before[4096], after[4096];
    list_files(d, before, sizeof before);
    fz_cache_key ka = key_of("aborted");
    assert_int_equal(fz_cache_file_begin(c, &ka, size, &w), 0);
    put_all(w, size, MIB, 23);
    fz_cache_file_abort(w);
    fz_cache_file_abort(NULL);
    expect_gone(c, &ka, size);
    _Atomic bool cancel = true;
    assert_int_equal(fz_cache_file_begin(c, &ka, size, &w), 0);
    put_all(w, size, MIB, 23);
    assert_int_equal(fz_cache_file_commit(w, &cancel), FZ_ECANCELED);
    expect_gone(c, &ka, size);
    list_files(d, after, sizeof after);
    assert_string_equal(before, after);
    /* Too large for the budget: refused before anything is written. */
    fz_cache_key kl = key_of("large");
    assert_int_equal(fz_cache_file_begin(c, &kl, 200 * MIB, &w), FZ_ENOSPC);
    list_files(d, after, sizeof after);
    assert_string_equal(before, after);
    fz_cache_close(c);
    fz_test_rmtree(d);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_then_open),
        cmocka_unit_test(test_wrong_size_not_found),
        cmocka_unit_test(test_modified_data_refused),
        cmocka_unit_test(test_damaged_sidecar_refused),
        cmocka_unit_test(test_cancel_and_failure_leave_nothing),
        cmocka_unit_test(test_busy_and_stale_temp),
        cmocka_unit_test(test_stats_count_files),
        cmocka_unit_test(test_verify_reads_blocks),
        cmocka_unit_test(test_clear_and_reset_remove_files),
        cmocka_unit_test(test_budget_evicts_lru),
        cmocka_unit_test(test_writer_pieces_in_any_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
