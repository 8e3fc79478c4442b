/* The cache hook in fz_view_read (view/read.c): every byte served through
 * the cache equals the byte served without it, for whole-chunk and odd
 * partial reads, .bin (zip headers from cached record CRCs) and
 * safetensors output; a second view on a reopened cache computes nothing;
 * a non-storing reader (materialize's default) adds nothing; prefetch
 * fills chunks once; a central directory's CRCs computed as a runner's
 * tasks on several threads; one .bin's extents read uncached store
 * nothing.
 *
 * Runs: examples/tiny-run (real torch checkpoints, two .bin shards), and a
 * synthetic run written here whose 12 MiB f32 matrix casts to 6 MiB of
 * bf16, so one tensor spans two cache chunks (4 MiB + 2 MiB). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/helpers.h"
#include <pthread.h>

#include "cache/cache.h"
#include "fz_config.h"
#include "util/error.h"
#include "view/view.h"

static void copy_file(const char *from, const char *to)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    assert_int_equal(system(cmd), 0);
}

/* A run with model.safetensors at its root: a [3000, 1024] f32 matrix and a
 * [1000] f32 vector; metadata files copied from examples/tiny-run. */
static char *synthetic_run(void)
{
    char *d = fz_test_tmpdir("fz_test_view_cache");
    char p[512], q[512];
    const char *meta[] = {"config.json", "tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/tiny-run/%s", FZ_SOURCE_EXAMPLES_DIR, meta[i]);
        snprintf(q, sizeof q, "%s/%s", d, meta[i]);
        copy_file(p, q);
    }
    uint64_t n = 3000 * 1024, m = 1000;
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "{\"layers.0.mlp.weight\":{\"dtype\":\"F32\",\"shape\":[3000,1024],"
                      "\"data_offsets\":[0,%llu]},\"layers.0.bias\":{\"dtype\":\"F32\","
                      "\"shape\":[1000],\"data_offsets\":[%llu,%llu]}}",
                      (unsigned long long)(4 * n), (unsigned long long)(4 * n),
                      (unsigned long long)(4 * (n + m)));
    while (hl % 8)
        hdr[hl++] = ' ';
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    uint64_t hl64 = (uint64_t)hl;
    assert_int_equal(fwrite(&hl64, 8, 1, f), 1);
    assert_int_equal(fwrite(hdr, 1, (size_t)hl, f), (size_t)hl);
    for (uint64_t i = 0; i < n + m; i++) {
        /* Values with low mantissa bits set, so rounding to bf16 matters. */
        float x = (float)((i * 2654435761u) % 1000003u) / 997.0f - 500.0f;
        assert_int_equal(fwrite(&x, 4, 1, f), 1);
    }
    fclose(f);
    return d;
}

typedef struct {
    uint8_t **data;
    uint64_t *size;
    uint32_t n;
} fz_snapshot;

static fz_view *build(const char *src, bool safetensors)
{
    fz_view_opts o;
    memset(&o, 0, sizeof o);
    o.src = src;
    o.dtype = "bfloat16";
    o.safetensors = safetensors;
    o.generation_config = "carry";
    o.device = "cpu";
    /* the run has no embedding: a vocabulary change would be refused */
    o.skip_default_tokens = true;
    fz_view *v = NULL;
    if (fz_view_build(&v, &o) != 0)
        fail_msg("build %s: %s", src, fz_error_msg());
    return v;
}

/* Read every file in pieces of `step` bytes (the last one shorter). */
static fz_snapshot read_all(fz_view *v, uint64_t step)
{
    fz_snapshot s = {NULL, NULL, fz_view_node_count(v)};
    s.data = calloc(s.n, sizeof *s.data);
    s.size = calloc(s.n, sizeof *s.size);
    for (uint32_t i = 0; i < s.n; i++) {
        const fz_node *nd = fz_view_node(v, i);
        if (nd->kind != FZ_NODE_FILE)
            continue;
        s.size[i] = nd->size;
        s.data[i] = malloc(nd->size ? nd->size : 1);
        for (uint64_t off = 0; off < nd->size; off += step) {
            uint64_t len = nd->size - off < step ? nd->size - off : step;
            if (fz_view_read(v, i, off, len, s.data[i] + off) != 0)
                fail_msg("read %s: %s", nd->path, fz_error_msg());
        }
    }
    return s;
}

static void snap_equal(const fz_snapshot *a, const fz_snapshot *b)
{
    assert_int_equal(a->n, b->n);
    for (uint32_t i = 0; i < a->n; i++) {
        assert_int_equal(a->size[i], b->size[i]);
        if (a->data[i] && memcmp(a->data[i], b->data[i], (size_t)a->size[i]) != 0)
            fail_msg("node %u differs", i);
    }
}

static void snap_free(fz_snapshot *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        free(s->data[i]);
    free(s->data);
    free(s->size);
}

static void check_run(const char *src, bool safetensors, bool multi_chunk)
{
    char *cdir = fz_test_tmpdir("fz_test_view_cache");
    fz_cache *c;

    fz_view *v = build(src, safetensors);
    fz_snapshot ref = read_all(v, UINT64_MAX / 2);
    fz_view_free(v);

    /* A non-storing reader through an empty cache: same bytes, nothing kept. */
    assert_int_equal(fz_cache_open(&c, cdir, 256ull << 20), 0);
    v = build(src, safetensors);
    fz_view_set_cache(v, c, false);
    fz_snapshot s0 = read_all(v, 1u << 20);
    snap_equal(&ref, &s0);
    snap_free(&s0);
    fz_view_free(v);
    assert_int_equal(fz_test_cache_stats(c).entries, 0);

    /* Filling: odd-sized partial reads, then whole 4 MiB-aligned reads. */
    v = build(src, safetensors);
    fz_view_set_cache(v, c, true);
    fz_snapshot s1 = read_all(v, 131072 + 17);
    snap_equal(&ref, &s1);
    snap_free(&s1);
    fz_view_free(v);
    fz_cache_stats st1 = fz_test_cache_stats(c);
    assert_true(st1.entries > 0);
    assert_true(st1.fills > 0);
    fz_cache_close(c);

    /* Another view on the reopened cache: every chunk and CRC is a hit. */
    assert_int_equal(fz_cache_open(&c, cdir, 0), 0);
    v = build(src, safetensors);
    fz_view_set_cache(v, c, true);
    fz_snapshot s2 = read_all(v, 4u << 20);
    snap_equal(&ref, &s2);
    snap_free(&s2);
    fz_snapshot s3 = read_all(v, 3u << 20); /* reads straddling chunk edges */
    snap_equal(&ref, &s3);
    snap_free(&s3);
    fz_view_free(v);
    fz_cache_stats st2 = fz_test_cache_stats(c);
    assert_int_equal(st2.fills, st1.fills);
    assert_int_equal(st2.entries, st1.entries);
    assert_true(st2.hits > st1.hits);
    if (multi_chunk)
        assert_true(st2.bytes > (4u << 20));
    uint64_t checked, bad;
    assert_int_equal(fz_cache_verify(c, &checked, &bad), 0);
    assert_int_equal(checked, st2.entries);
    assert_int_equal(bad, 0);
    fz_cache_close(c);

    snap_free(&ref);
    fz_test_rmtree(cdir);
    free(cdir);
}

static void test_tiny_run_bin(void **state)
{
    (void)state;
    char src[512];
    snprintf(src, sizeof src, "%s/tiny-run", FZ_SOURCE_EXAMPLES_DIR);
    check_run(src, false, false);
}

static void test_tiny_run_safetensors(void **state)
{
    (void)state;
    char src[512];
    snprintf(src, sizeof src, "%s/tiny-run", FZ_SOURCE_EXAMPLES_DIR);
    check_run(src, true, false);
}

static void test_multi_chunk_bin(void **state)
{
    (void)state;
    char *d = synthetic_run();
    check_run(d, false, true);
    fz_test_rmtree(d);
    free(d);
}

static void test_multi_chunk_safetensors(void **state)
{
    (void)state;
    char *d = synthetic_run();
    check_run(d, true, true);
    fz_test_rmtree(d);
    free(d);
}

/* Many threads, random ranges, cold cache: every byte right, and each
 * chunk computed about once (single flight). */
typedef struct {
    fz_view *v;
    const fz_snapshot *ref;
    unsigned seed;
    int bad;
} fz_reader;

static void *reader_main(void *p)
{
    fz_reader *r = p;
    uint8_t *buf = malloc(5u << 20);
    for (int i = 0; i < 150 && buf; i++) {
        uint32_t node = (uint32_t)(rand_r(&r->seed) % r->ref->n);
        if (!r->ref->data[node] || r->ref->size[node] == 0)
            continue;
        uint64_t size = r->ref->size[node];
        uint64_t off = ((uint64_t)rand_r(&r->seed) << 16 ^ (uint64_t)rand_r(&r->seed)) % size;
        uint64_t len = (uint64_t)rand_r(&r->seed) % (5u << 20);
        if (len > size - off)
            len = size - off;
        if (fz_view_read(r->v, node, off, len, buf) != 0 ||
            memcmp(buf, r->ref->data[node] + off, (size_t)len) != 0)
            r->bad++;
    }
    free(buf);
    return NULL;
}

static void test_concurrent_reads(void **state)
{
    (void)state;
    enum { N = 8 };
    char *d = synthetic_run();
    char *cdir = fz_test_tmpdir("fz_test_view_cache");
    for (int st = 0; st < 2; st++) {
        fz_view *v = build(d, st == 1);
        fz_snapshot ref = read_all(v, UINT64_MAX / 2);
        fz_view_free(v);
        fz_cache *c;
        assert_int_equal(fz_cache_open(&c, cdir, 256ull << 20), 0);
        assert_int_equal(fz_cache_clear(c), 0);
        v = build(d, st == 1);
        fz_view_set_cache(v, c, true);
        pthread_t th[N];
        fz_reader r[N];
        for (int i = 0; i < N; i++) {
            r[i] = (fz_reader){v, &ref, (unsigned)(i + 1) * 7919u, 0};
            assert_int_equal(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
        }
        for (int i = 0; i < N; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(r[i].bad, 0);
        }
        fz_view_free(v);
        fz_cache_stats s = fz_test_cache_stats(c);
        printf("concurrent (%s): %llu entries, %llu fills, %llu hits, %llu misses\n",
               st ? "safetensors" : "bin", (unsigned long long)s.entries,
               (unsigned long long)s.fills, (unsigned long long)s.hits,
               (unsigned long long)s.misses);
        /* 2 chunks of the matrix, maybe the bias, CRCs for .bin; each
         * computed exactly once however many threads wanted it. */
        assert_true(s.entries >= 2 && s.entries <= 8);
        assert_int_equal(s.fills, s.entries);
        fz_cache_close(c);
        snap_free(&ref);
    }
    fz_test_rmtree(cdir);
    free(cdir);
    fz_test_rmtree(d);
    free(d);
}

/* The largest file of a view (the weights of the synthetic run). */
static uint32_t largest_file(fz_view *v)
{
    uint32_t best = 0;
    for (uint32_t i = 0; i < fz_view_node_count(v); i++)
        if (fz_view_node(v, i)->kind == FZ_NODE_FILE &&
            fz_view_node(v, i)->size > fz_view_node(v, best)->size)
            best = i;
    return best;
}

/* fz_view_prefetch fills the chunks of a range once; the reads that follow
 * compute nothing and get the same bytes. Nothing without a storing cache. */
static void test_prefetch(void **state)
{
    (void)state;
    char *d = synthetic_run();
    char *cdir = fz_test_tmpdir("fz_test_view_cache");
    fz_view *v = build(d, true);
    fz_snapshot ref = read_all(v, UINT64_MAX / 2);
    uint32_t node = largest_file(v);
    assert_false(fz_view_can_prefetch(v));
    assert_int_equal(fz_view_prefetch(v, node, 0, UINT64_MAX), 0);
    fz_view_free(v);
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, cdir, 256ull << 20), 0);
    v = build(d, true);
    fz_view_set_cache(v, c, false);
    assert_false(fz_view_can_prefetch(v)); /* nowhere to keep what it computes */
    fz_view_set_cache(v, c, true);
    assert_true(fz_view_can_prefetch(v));
    int n = fz_view_prefetch(v, node, 100, fz_view_node(v, node)->size);
    assert_true(n >= 2); /* the matrix's two chunks (and maybe the bias) */
    fz_cache_stats s0 = fz_test_cache_stats(c);
    fz_snapshot got = read_all(v, 1u << 20);
    snap_equal(&ref, &got);
    fz_cache_stats s1 = fz_test_cache_stats(c);
    assert_int_equal(s1.fills, s0.fills); /* every chunk was there */
    assert_int_equal(fz_view_prefetch(v, node, 0, UINT64_MAX), 0);
    snap_free(&got);
    fz_view_free(v);
    fz_cache_close(c);
    snap_free(&ref);
    fz_test_rmtree(cdir);
    free(cdir);
    fz_test_rmtree(d);
    free(d);
}

/* A runner with threads of its own: tasks claimed by index, the thread
 * that ran each remembered. */
typedef struct {
    pthread_mutex_t lock;
    size_t n, next, calls;
    fz_view_task_fn task;
    void *arg;
    pthread_t who[64];
    size_t nwho;
    const char *before; /* a shell command run before the tasks, or NULL */
} fz_test_runner;

static void *runner_thread(void *p)
{
    fz_test_runner *r = p;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        size_t i = r->next < r->n ? r->next++ : SIZE_MAX;
        if (i != SIZE_MAX && r->nwho < 64)
            r->who[r->nwho++] = pthread_self();
        pthread_mutex_unlock(&r->lock);
        if (i == SIZE_MAX)
            return NULL;
        r->task(r->arg, i);
        /* let the other thread take some */
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

static void test_run(void *ctx, size_t n, fz_view_task_fn task, void *arg)
{
    fz_test_runner *r = ctx;
    pthread_mutex_lock(&r->lock);
    r->calls++;
    r->n = n;
    r->next = 0;
    r->nwho = 0;
    r->task = task;
    r->arg = arg;
    pthread_mutex_unlock(&r->lock);
    if (r->before)
        assert_int_equal(system(r->before), 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, runner_thread, r), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
}

/* A .bin's central directory computes its records' CRCs as tasks of the
 * runner, on several threads: the same bytes; an error in a task (a source
 * changed) reaches the reader with its message. */
static void test_central_directory_tasks(void **state)
{
    (void)state;
    char src[512], *d = fz_test_tmpdir("fz_test_view_cache");
    snprintf(src, sizeof src, "cp -r '%s/tiny-run/.' '%s'", FZ_SOURCE_EXAMPLES_DIR, d);
    assert_int_equal(system(src), 0);
    fz_view *v = build(d, false);
    fz_snapshot ref = read_all(v, UINT64_MAX / 2);
    fz_view_free(v);
    fz_test_runner r = {.lock = PTHREAD_MUTEX_INITIALIZER};
    v = build(d, false);
    fz_view_set_runner(v, test_run, &r);
    fz_snapshot got = read_all(v, 1u << 20);
    snap_equal(&ref, &got);
    snap_free(&got);
    printf("central directories: %zu runs, last with %zu tasks\n", r.calls, r.n);
    assert_true(r.calls >= 1 && r.n >= 2);
    bool two = false;
    for (size_t i = 1; i < r.nwho; i++)
        two |= !pthread_equal(r.who[i], r.who[0]);
    assert_true(two);
    fz_view_free(v);
    snap_free(&ref);
    fz_test_rmtree(d);
    free(d);

    /* The source grows between the read's first check of its sources and
     * the tasks: their fills see it (in the runner's threads) and the
     * reader gets the error with its message. */
    d = synthetic_run();
    char *cdir = fz_test_tmpdir("fz_test_view_cache"), cmd[1024];
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, cdir, 256ull << 20), 0);
    v = build(d, false);
    fz_view_set_cache(v, c, true);
    snprintf(cmd, sizeof cmd, "printf x >> '%s/model.safetensors'", d);
    r.before = cmd;
    fz_view_set_runner(v, test_run, &r);
    size_t before = r.calls;
    uint32_t node = largest_file(v);
    uint64_t size = fz_view_node(v, node)->size;
    uint8_t b[64];
    assert_int_equal(fz_view_read(v, node, size - 64, 64, b), FZ_EIO); /* the central directory */
    assert_non_null(strstr(fz_error_msg(), "changed after fzfs opened it"));
    assert_int_equal(r.calls, before + 1);
    fz_view_free(v);
    fz_cache_close(c);
    fz_test_rmtree(cdir);
    free(cdir);
    fz_test_rmtree(d);
    free(d);
}

/* fz_view_node_key: the same key for the same file of two views of one
 * run, and for nothing else - another file, another option (bf16 as .bin
 * instead of safetensors), a source touched since (same bytes, another
 * mtime); none before the view has a cache. */
static void test_node_key(void **state)
{
    (void)state;
    char *d = synthetic_run();
    char *cdir = fz_test_tmpdir("fz_test_view_cache");
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, cdir, 64ull << 20), 0);
    fz_view *a = build(d, true);
    uint32_t na = largest_file(a);
    fz_cache_key ka, kb, kx;
    assert_int_equal(fz_view_node_key(a, na, &ka), -1); /* no cache yet */
    fz_view_set_cache(a, c, true);
    assert_true(fz_view_node_computed(a, na));
    assert_int_equal(fz_view_node_key(a, na, &ka), 0);
    assert_int_equal(fz_view_node_key(a, 0, &kx), -1); /* the root directory */
    for (uint32_t i = 0; i < fz_view_node_count(a); i++) {
        const fz_node *n = fz_view_node(a, i);
        if (i != na && n->kind == FZ_NODE_FILE && fz_view_node_key(a, i, &kx) == 0)
            assert_false(kx.hi == ka.hi && kx.lo == ka.lo); /* another file */
    }
    fz_view *b = build(d, true);
    fz_view_set_cache(b, c, true);
    assert_int_equal(fz_view_node_key(b, largest_file(b), &kb), 0);
    assert_true(ka.hi == kb.hi && ka.lo == kb.lo);
    fz_view_free(b);

    b = build(d, false); /* the same tensors as a .bin: another file */
    fz_view_set_cache(b, c, true);
    uint32_t nb = largest_file(b);
    assert_true(fz_view_node_computed(b, nb));
    assert_int_equal(fz_view_node_key(b, nb, &kb), 0);
    assert_false(ka.hi == kb.hi && ka.lo == kb.lo);
    fz_view_free(b);

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "touch -d '2001-01-01' '%s/model.safetensors'", d);
    assert_int_equal(system(cmd), 0);
    b = build(d, true);
    fz_view_set_cache(b, c, true);
    assert_int_equal(fz_view_node_key(b, largest_file(b), &kb), 0);
    assert_false(ka.hi == kb.hi && ka.lo == kb.lo);
    fz_view_free(b);
    fz_view_free(a);
    fz_cache_close(c);
    fz_test_rmtree(cdir);
    free(cdir);
    fz_test_rmtree(d);
    free(d);
}

/* fz_view_node_extents: a .bin's extents, record data read uncached in any
 * order (here backwards) and its zip headers last, give the bytes a plain
 * read gives; the headers are known from the data's extents alone
 * (fz_view_read_metadata reads no record), each extent lies in one
 * max_len-aligned block, and a storing cache is left with nothing in it:
 * no chunk, no record CRC. Twice per file: a second list starts afresh. */
static int put_meta(void *ctx, uint64_t off, const uint8_t *p, uint64_t len)
{
    memcpy((uint8_t *)ctx + off, p, (size_t)len);
    return 0;
}

static void check_node_extents(const char *src, uint64_t max_len)
{
    fz_view *v = build(src, false);
    fz_snapshot ref = read_all(v, UINT64_MAX / 2);
    fz_view_free(v);
    char *cdir = fz_test_tmpdir("fz_test_view_cache");
    fz_cache *c;
    assert_int_equal(fz_cache_open(&c, cdir, 256ull << 20), 0);
    v = build(src, false);
    fz_view_set_cache(v, c, true);
    uint32_t nbin = 0;
    for (uint32_t i = 0; i < fz_view_node_count(v); i++) {
        const fz_node *nd = fz_view_node(v, i);
        if (nd->kind != FZ_NODE_FILE || !nd->zip)
            continue;
        nbin++;
        for (int round = 0; round < 2; round++) {
            fz_extent *e = NULL;
            size_t n = 0, nfirst = 0;
            assert_int_equal(fz_view_node_extents(v, i, max_len, &e, &n), 0);
            uint8_t *got = calloc(1, nd->size), *meta = calloc(1, nd->size);
            uint8_t *seen = calloc(1, nd->size);
            assert_true(got && meta && seen);
            for (size_t k = 0; k < n; k++) {
                assert_int_equal(e[k].node, i);
                assert_true(e[k].len > 0 && e[k].off + e[k].len <= nd->size);
                assert_int_equal(e[k].off / max_len, (e[k].off + e[k].len - 1) / max_len);
                assert_true(k == 0 || e[k].late || !e[k - 1].late); /* late ones last */
                nfirst += !e[k].late;
                for (uint64_t b = e[k].off; b < e[k].off + e[k].len; b++)
                    assert_int_equal(seen[b]++, 0);
            }
            for (uint64_t b = 0; b < nd->size; b++)
                assert_int_equal(seen[b], 1); /* every byte once */
            assert_true(nfirst > 0 && nfirst < n);
            for (size_t k = nfirst; k-- > 0;)
                assert_int_equal(fz_view_read_extent_uncached(v, &e[k], got + e[k].off), 0);
            assert_int_equal(fz_view_read_metadata(v, i, put_meta, meta), 0);
            for (size_t k = nfirst; k < n; k++) /* headers from the learnt CRCs */
                assert_memory_equal(meta + e[k].off, ref.data[i] + e[k].off, e[k].len);
            for (size_t k = nfirst; k < n; k++)
                assert_int_equal(fz_view_read_extent_uncached(v, &e[k], got + e[k].off), 0);
            assert_memory_equal(got, ref.data[i], nd->size);
            free(got);
            free(meta);
            free(seen);
            free(e);
        }
    }
    assert_true(nbin > 0);
    fz_cache_stats st = fz_test_cache_stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.fills, 0);
    fz_view_free(v);
    fz_cache_close(c);
    snap_free(&ref);
    fz_test_rmtree(cdir);
    free(cdir);
}

static void test_node_extents(void **state)
{
    (void)state;
    char src[512];
    snprintf(src, sizeof src, "%s/tiny-run", FZ_SOURCE_EXAMPLES_DIR);
    check_node_extents(src, 4096);
    char *d = synthetic_run(); /* a 6 MiB record: pieces cut at 4 MiB blocks */
    check_node_extents(d, 4u << 20);
    check_node_extents(d, 1000003);
    fz_test_rmtree(d);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_run_bin),
        cmocka_unit_test(test_tiny_run_safetensors),
        cmocka_unit_test(test_multi_chunk_bin),
        cmocka_unit_test(test_multi_chunk_safetensors),
        cmocka_unit_test(test_concurrent_reads),
        cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_central_directory_tasks),
        cmocka_unit_test(test_node_key),
        cmocka_unit_test(test_node_extents),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
