/* The view without FUSE (view/build.c, tree.c, shards.c, tensors.c, quant.c,
 * plan.c, read.c): for examples/tiny-run (real torch checkpoints, two .bin
 * shards, tied embedding, no pad token) under several option sets:
 *  - every file's segment table is ordered, gap-free and covers [0, size);
 *  - every weight file parses with our own readers (zip + pickle, safetensors)
 *    from the bytes fz_view_read serves, and torch zip records come in torch's
 *    order (data.pkl, byteorder, data/..., version);
 *  - an index's total_size is the sum of the tensors it lists, and every
 *    weight_map file exists in the tree;
 *  - fz_view_direct agrees with fz_view_read on every range it accepts
 *    (segment edges, odd ranges, whole files);
 *  - the plan (text and JSON) names what the view holds;
 *  - building reads each metadata file once (fz_read_file is wrapped at link
 *    time, -Wl,--wrap: a second parse of a 100k-tensor index cost a fifth of
 *    `fzfs plan`);
 *  - a shard nothing changes is its source file byte for byte, with that
 *    file as its backing (fz_view_backing), and any change rewrites it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "formats/safetensors.h"
#include "formats/torchbin.h"
#include "formats/zip.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/io.h"
#include "view/internal.h" /* white-box: the segment tables */
#include "view/view.h"

static char tiny[1024];

/* Every fz_read_file of the library goes through here (tests/unit/meson.build
 * links this test with -Wl,--wrap=fz_read_file): the paths read, in order. */
int __real_fz_read_file(const char *path, size_t max_len, char **data, size_t *len);
int __wrap_fz_read_file(const char *path, size_t max_len, char **data, size_t *len);
static char reads[64][4096];
static size_t nreads;

int __wrap_fz_read_file(const char *path, size_t max_len, char **data, size_t *len)
{
    if (nreads < sizeof reads / sizeof reads[0])
        snprintf(reads[nreads], sizeof reads[0], "%s", path);
    nreads++;
    return __real_fz_read_file(path, max_len, data, len);
}

static fz_view *build(fz_view_opts o)
{
    o.src = tiny;
    o.generation_config = o.generation_config ? o.generation_config : "carry";
    o.device = "cpu";
    fz_view *v = NULL;
    int rc = fz_view_build(&v, &o);
    if (rc)
        fail_msg("fz_view_build: %s", fz_error_msg());
    return v;
}

/* libc's strdup, standing in for it in this program, that fails on the
 * n-th call once strdup_countdown = n > 0: the view's ownership when memory
 * runs out. */
static int strdup_countdown;

char *strdup(const char *s)
{
    if (strdup_countdown > 0 && --strdup_countdown == 0)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}

/* A copy of the options that fails half way frees only the view's copies,
 * never the caller's strings (here literals: freeing one aborts). */
static void test_options_copy_out_of_memory(void **state)
{
    (void)state;
    fz_view_opts o = {
        .src = tiny, .generation_config = "carry", .dtype = "bfloat16", .device = "cpu"};
    for (int k = 1; k <= 4; k++) {
        fz_view *v = NULL;
        strdup_countdown = k;
        int rc = fz_view_build(&v, &o);
        strdup_countdown = 0;
        assert_int_equal(rc, FZ_ENOMEM);
        assert_null(v);
    }
    assert_string_equal(o.dtype, "bfloat16");
}

static uint8_t *read_all(fz_view *v, uint32_t i)
{
    const fz_node *n = fz_view_node(v, i);
    uint8_t *b = malloc(n->size ? n->size : 1);
    assert_non_null(b);
    assert_int_equal(fz_view_read(v, i, 0, n->size, b), 0);
    return b;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int memfd_of(const uint8_t *b, uint64_t n)
{
    int fd = memfd_create("fzview", 0);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, n), (ssize_t)n);
    return fd;
}

static uint32_t find_node(fz_view *v, const char *path)
{
    for (uint32_t i = 0; i < fz_view_node_count(v); i++)
        if (!strcmp(fz_view_node(v, i)->path, path))
            return i;
    return UINT32_MAX;
}

/* A node's segments tile [0, size) in order. */
static void check_segments(const fz_node *n)
{
    uint64_t at = 0;
    for (uint32_t s = 0; s < n->nsegs; s++) {
        assert_int_equal(n->segs[s].off, at);
        assert_true(n->segs[s].len > 0);
        at += n->segs[s].len;
    }
    assert_int_equal(at, n->size);
}

/* fz_view_direct vs fz_view_read on [off, off+len). */
static void check_range(fz_view *v, uint32_t i, const uint8_t *all, uint64_t off, uint64_t len)
{
    fz_piece p[16];
    size_t np = 0;
    if (!fz_view_direct(v, i, off, len, p, 16, &np))
        return;
    uint64_t at = off;
    for (size_t k = 0; k < np; k++) {
        uint8_t *buf = malloc(p[k].len ? p[k].len : 1);
        assert_non_null(buf);
        if (p[k].mem)
            memcpy(buf, p[k].mem, p[k].len);
        else
            assert_int_equal(pread(p[k].fd, buf, p[k].len, (off_t)p[k].off), (ssize_t)p[k].len);
        assert_memory_equal(buf, all + at, p[k].len);
        at += p[k].len;
        free(buf);
    }
    assert_int_equal(at, off + len);
}

static void check_direct(fz_view *v, uint32_t i, const uint8_t *all)
{
    const fz_node *n = fz_view_node(v, i);
    check_range(v, i, all, 0, n->size);
    for (uint32_t s = 0; s < n->nsegs; s++) {
        uint64_t a = n->segs[s].off, l = n->segs[s].len;
        check_range(v, i, all, a, l);
        if (l > 2)
            check_range(v, i, all, a + 1, l - 2);
        if (s + 1 < n->nsegs && l > 1)
            check_range(v, i, all, a + l - 1, 2); /* across a boundary */
    }
    uint64_t seed = 12345;
    for (int k = 0; k < 50 && n->size > 1; k++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t off = (seed >> 11) % n->size;
        uint64_t len = 1 + (seed >> 37) % (n->size - off);
        check_range(v, i, all, off, len);
    }
}

/* A torch zip's records in torch's order, each parsed by our readers (a
 * source file passed through whole keeps torch.save's own records). */
static void check_bin(const fz_node *n, const uint8_t *all, bool whole, size_t *ntensors)
{
    int fd = memfd_of(all, n->size);
    fz_zip_dir d = {0};
    assert_int_equal(fz_zip_read_dir(fd, n->path, n->size, &d), 0);
    assert_true(d.n >= 3);
    for (size_t k = 0; whole && k < d.n; k++)
        assert_non_null(strstr(d.v[k].name, "/"));
    if (whole)
        goto parse;
    assert_true(ends_with(d.v[0].name, "/data.pkl"));
    assert_true(ends_with(d.v[1].name, "/byteorder"));
    assert_true(ends_with(d.v[d.n - 1].name, "/version"));
    for (size_t k = 2; k + 1 < d.n; k++)
        assert_non_null(strstr(d.v[k].name, "/data/"));
    const fz_zip_entry *bo = &d.v[1];
    assert_int_equal(bo->size, 6);
    assert_memory_equal(all + bo->data_offset, "little", 6);
parse:
    fz_zip_dir_free(&d);
    fz_tensor_list l = {0};
    if (fz_torchbin_read(fd, n->path, &l) != 0)
        fail_msg("%s", fz_error_msg());
    *ntensors += l.n;
    fz_tensor_list_free(&l);
    close(fd);
}

static void check_st(const fz_node *n, const uint8_t *all, size_t *ntensors)
{
    int fd = memfd_of(all, n->size);
    fz_tensor_list l = {0};
    if (fz_st_read(fd, n->path, n->size, &l) != 0)
        fail_msg("%s", fz_error_msg());
    *ntensors += l.n;
    fz_tensor_list_free(&l);
    close(fd);
}

static void check_index(fz_view *v, const fz_node *n, const uint8_t *all)
{
    json_error_t e;
    json_t *j = json_loadb((const char *)all, n->size, 0, &e);
    assert_non_null(j);
    json_t *wm = json_object_get(j, "weight_map");
    assert_true(json_is_object(wm));
    const char *name;
    json_t *file;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", n->path);
    char *slash = strrchr(dir, '/');
    json_object_foreach(wm, name, file)
    {
        char p[2048];
        if (slash)
            snprintf(p, sizeof p, "%.*s/%s", (int)(slash - dir), dir, json_string_value(file));
        else
            snprintf(p, sizeof p, "%s", json_string_value(file));
        assert_true(find_node(v, p) != UINT32_MAX);
    }
    assert_true(json_integer_value(json_object_get(json_object_get(j, "metadata"), "total_size")) >
                0);
    json_decref(j);
}

/* Walk every file of the view and check it. Returns the tensors parsed. */
static size_t check_view(fz_view *v)
{
    size_t ntensors = 0, nweights = 0;
    for (uint32_t i = 0; i < fz_view_node_count(v); i++) {
        const fz_node *n = fz_view_node(v, i);
        if (n->kind != FZ_NODE_FILE)
            continue;
        check_segments(n);
        uint8_t *all = read_all(v, i);
        check_direct(v, i, all);
        int bfd;
        if (ends_with(n->path, ".bin")) {
            check_bin(n, all, fz_view_backing(v, i, &bfd, NULL), &ntensors);
            nweights++;
        } else if (ends_with(n->path, ".safetensors")) {
            check_st(n, all, &ntensors);
            nweights++;
        } else if (ends_with(n->path, ".index.json")) {
            check_index(v, n, all);
        } else if (ends_with(n->path, ".json")) {
            json_error_t e;
            json_t *j = json_loadb((const char *)all, n->size, 0, &e);
            if (!j)
                fail_msg("%s: not JSON: %s", n->path, e.text);
            json_decref(j);
        }
        free(all);
    }
    assert_true(nweights > 0);
    return ntensors;
}

typedef struct {
    uint8_t *buf;
    uint64_t size;
} meta_buf;

static int put_meta(void *ctx, uint64_t off, const uint8_t *p, uint64_t len)
{
    meta_buf *m = ctx;
    assert_true(off + len <= m->size);
    memcpy(m->buf + off, p, len);
    return 0;
}

/* Extents tile every file once; reading them (late ones last) gives the
 * bytes fz_view_read gives; after the first pass every zip header is known
 * from the extents' CRCs alone (fz_view_read_metadata, which never reads a
 * record, already produces the final headers). */
static void check_extents(fz_view *v, uint64_t max_len)
{
    fz_extent *e = NULL;
    size_t n = 0;
    assert_int_equal(fz_view_extents(v, max_len, &e, &n), 0);
    uint32_t nn = fz_view_node_count(v);
    uint64_t *at = calloc(nn, sizeof *at);
    uint8_t **got = calloc(nn, sizeof *got);
    assert_non_null(at);
    assert_non_null(got);
    uint8_t **seen = calloc(nn, sizeof *seen);
    assert_non_null(seen);
    for (size_t i = 0; i < n; i++) {
        const fz_node *nd = fz_view_node(v, e[i].node);
        assert_int_equal(nd->kind, FZ_NODE_FILE);
        assert_true(e[i].len > 0 && e[i].len <= max_len && e[i].off + e[i].len <= nd->size);
        assert_true(i == 0 || e[i].late || !e[i - 1].late); /* late extents last */
        if (!e[i].late)                                     /* in file order before the late ones */
            assert_true(e[i].off >= at[e[i].node]);
        at[e[i].node] = e[i].late ? at[e[i].node] : e[i].off + e[i].len;
        if (!got[e[i].node]) {
            assert_non_null(got[e[i].node] = calloc(1, nd->size ? nd->size : 1));
            assert_non_null(seen[e[i].node] = calloc(1, nd->size ? nd->size : 1));
        }
        for (uint64_t b = e[i].off; b < e[i].off + e[i].len; b++)
            assert_int_equal(seen[e[i].node][b]++, 0); /* no overlap */
    }
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++)
            if (e[i].late == (pass == 1))
                assert_int_equal(fz_view_read_extent(v, &e[i], got[e[i].node] + e[i].off), 0);
        if (pass == 1)
            break;
        /* headers from the CRCs the first pass taught the view */
        for (uint32_t i = 0; i < nn; i++) {
            const fz_node *nd = fz_view_node(v, i);
            if (nd->kind != FZ_NODE_FILE || !ends_with(nd->path, ".bin"))
                continue;
            uint8_t *full = read_all(v, i);
            meta_buf m = {calloc(1, nd->size), nd->size};
            assert_int_equal(fz_view_read_metadata(v, i, put_meta, &m), 0);
            for (uint32_t s = 0; s < nd->nsegs; s++)
                if (nd->segs[s].kind == FZ_SEG_DEFERRED)
                    assert_memory_equal(m.buf + nd->segs[s].off, full + nd->segs[s].off,
                                        nd->segs[s].len);
            free(m.buf);
            free(full);
        }
    }
    for (uint32_t i = 0; i < nn; i++) {
        const fz_node *nd = fz_view_node(v, i);
        if (nd->kind != FZ_NODE_FILE)
            continue;
        for (uint64_t b = 0; b < nd->size; b++)
            assert_int_equal(seen[i][b], 1); /* no gap */
        free(seen[i]);
        uint8_t *want = read_all(v, i);
        assert_memory_equal(got[i], want, nd->size);
        free(want);
        free(got[i]);
    }
    free(got);
    free(seen);
    free(at);
    free(e);
}

static void test_extents(void **state)
{
    (void)state;
    /* .bin with computed records (a cast): headers are late extents */
    fz_view *v = build((fz_view_opts){.dtype = "bfloat16"});
    check_extents(v, 4096);
    fz_view_free(v);
    v = build((fz_view_opts){.dtype = "float16", .root_copy = true});
    check_extents(v, 1000); /* odd size: records cut into many pieces */
    fz_view_free(v);
    v = build((fz_view_opts){.safetensors = true, .dtype = "bfloat16"});
    check_extents(v, 4u << 20);
    fz_view_free(v);
}

static void test_default_bin(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){0});
    assert_true(check_view(v) > 0);
    /* default layout: weights in checkpoints/checkpoint-200, symlinked at the root */
    uint32_t l = find_node(v, "pytorch_model.bin.index.json");
    assert_true(l != UINT32_MAX);
    assert_int_equal(fz_view_node(v, l)->kind, FZ_NODE_SYMLINK);
    assert_true(find_node(v, "checkpoints/checkpoint-200/pytorch_model-00001-of-00002.bin") !=
                UINT32_MAX);
    fz_view_free(v);
}

static void test_safetensors_bf16(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){.safetensors = true, .dtype = "bfloat16"});
    check_view(v);
    fz_view_free(v);
}

static void test_bin_cast_float16_root_copy(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){.dtype = "float16", .root_copy = true});
    check_view(v);
    assert_int_equal(find_node(v, "checkpoints"), UINT32_MAX);
    fz_view_free(v);
}

static void test_reshard(void **state)
{
    (void)state;
    fz_view *one = build((fz_view_opts){.safetensors = true, .root_copy = true});
    fz_view *many =
        build((fz_view_opts){.safetensors = true, .root_copy = true, .max_shard_size = 8192});
    size_t a = check_view(one), b = check_view(many);
    assert_int_equal(a, b); /* the same tensors, in more files */
    uint32_t files_one = 0, files_many = 0;
    for (uint32_t i = 0; i < fz_view_node_count(one); i++)
        files_one += ends_with(fz_view_node(one, i)->path, ".safetensors");
    for (uint32_t i = 0; i < fz_view_node_count(many); i++)
        files_many += ends_with(fz_view_node(many, i)->path, ".safetensors");
    assert_true(files_many > files_one);
    fz_view_free(one);
    fz_view_free(many);
}

static void test_quantized(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){.quantize = "int8-weight-only", .root_copy = true});
    check_view(v);
    fz_view_free(v);
}

static void test_plan_names_what_the_view_holds(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){0});
    fz_buf b = FZ_BUF_INIT;
    assert_int_equal(fz_view_plan_json(v, &b), 0);
    json_error_t e;
    json_t *j = json_loadb((const char *)b.data, b.len, 0, &e);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "checkpoint"), "step")),
                     200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "tokens"), "new_vocab")),
                     261);
    assert_string_equal(json_string_value(json_object_get(j, "embedding")),
                        "model.embed_tokens.weight");
    assert_true(json_is_true(json_object_get(j, "tied")));
    json_decref(j);
    fz_buf_free(&b);

    char *text = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);
    assert_int_equal(fz_view_plan_text(v, f), 0);
    fclose(f);
    assert_non_null(strstr(text, "checkpoint-200"));
    assert_non_null(strstr(text, "[PAD]"));
    free(text);
    fz_view_free(v);
}

static bool backed(fz_view *v, const char *path)
{
    int fd;
    uint32_t i = find_node(v, path);
    assert_true(i != UINT32_MAX);
    return fz_view_backing(v, i, &fd, NULL);
}

#define SHARD1 "checkpoints/checkpoint-200/pytorch_model-00001-of-00002.bin"
#define SHARD2 "checkpoints/checkpoint-200/pytorch_model-00002-of-00002.bin"

/* A shard nothing changes is its source file, byte for byte, with that file
 * as its backing; any change to its tensors or its container makes it a
 * rewritten file again. tiny-run: embedding in shard 1, the tied head kept
 * as its own copy in shard 2 (the view makes it from the embedding). */
static void test_whole_files(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){.skip_default_tokens = true, .keep_optimizer = true});
    check_view(v);
    uint32_t i = find_node(v, SHARD1);
    const fz_node *n = fz_view_node(v, i);
    int fd = -1;
    const char *src = NULL;
    assert_true(fz_view_backing(v, i, &fd, &src));
    assert_true(ends_with(src, "/checkpoint-200/pytorch_model-00001-of-00002.bin"));
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    uint8_t *want = malloc(n->size + 1), *got = read_all(v, i);
    assert_int_equal(fread(want, 1, n->size + 1, f), n->size); /* the same length */
    fclose(f);
    assert_memory_equal(got, want, n->size);
    /* the metadata of a whole file (verify's view) is the source's, tensor data left out */
    meta_buf m = {calloc(1, n->size), n->size};
    assert_int_equal(fz_view_read_metadata(v, i, put_meta, &m), 0);
    int mfd = memfd_of(m.buf, n->size);
    fz_tensor_list l = {0}, full = {0};
    assert_int_equal(fz_torchbin_read(mfd, n->path, &l), 0);
    assert_int_equal(fz_torchbin_read(fd, n->path, &full), 0);
    assert_true(l.n == full.n && l.n > 0);
    for (size_t k = 0; k < l.n; k++) {
        const fz_tensor *t = &full.v[k];
        uint8_t zero[64] = {0};
        uint64_t z = t->storage_nbytes < sizeof zero ? t->storage_nbytes : sizeof zero;
        assert_memory_equal(m.buf + t->data_offset, zero, z); /* no tensor byte read */
    }
    assert_memory_equal(m.buf, want, 30); /* the first local header */
    fz_tensor_list_free(&l);
    fz_tensor_list_free(&full);
    close(mfd);
    free(m.buf);
    free(want);
    free(got);
    assert_false(backed(v, SHARD2)); /* its head is made from shard 1's embedding */
    assert_true(backed(v, "checkpoints/checkpoint-200/optimizer_state.pt"));
    assert_false(backed(v, "config.json"));
    fz_buf b = FZ_BUF_INIT;
    assert_int_equal(fz_view_plan_json(v, &b), 0);
    assert_non_null(strstr((const char *)b.data, "\"content\": \"whole\""));
    fz_buf_free(&b);
    fz_view_free(v);

    /* each change makes shard 1 a rewritten file */
    const fz_view_opts changed[] = {
        {0}, /* [PAD] added: the embedding grows */
        {.skip_default_tokens = true, .dtype = "bfloat16"},
        {.skip_default_tokens = true, .safetensors = true},
        {.skip_default_tokens = true, .max_shard_size = 1u << 30},
        {.skip_default_tokens = true, .quantize = "int8-weight-only"},
    };
    for (size_t k = 0; k < sizeof changed / sizeof changed[0]; k++) {
        v = build(changed[k]);
        for (uint32_t j = 0; j < fz_view_node_count(v); j++) {
            n = fz_view_node(v, j);
            if (ends_with(n->path, ".bin") || ends_with(n->path, ".safetensors"))
                assert_false(fz_view_backing(v, j, &fd, NULL));
        }
        fz_view_free(v);
    }
}

static void test_total_bytes(void **state)
{
    (void)state;
    fz_view *v = build((fz_view_opts){0});
    uint64_t sum = 0;
    for (uint32_t i = 0; i < fz_view_node_count(v); i++)
        if (fz_view_node(v, i)->kind == FZ_NODE_FILE)
            sum += fz_view_node(v, i)->size;
    assert_int_equal(fz_view_total_bytes(v), sum);
    fz_view_free(v);
}

/* Building a view reads each metadata file (index, config, tokenizer files,
 * manifest) at most once: the parsed tree is handed on, not parsed again. */
static void test_each_file_read_once(void **state)
{
    (void)state;
    nreads = 0;
    fz_view *v = build((fz_view_opts){0});
    assert_true(nreads <= sizeof reads / sizeof reads[0]);
    bool index_read = false;
    for (size_t i = 0; i < nreads; i++) {
        index_read = index_read || ends_with(reads[i], "/pytorch_model.bin.index.json");
        for (size_t k = 0; k < i; k++)
            if (!strcmp(reads[i], reads[k]))
                fail_msg("%s was read twice while building the view", reads[i]);
    }
    assert_true(index_read);
    fz_view_free(v);
}

int main(void)
{
    snprintf(tiny, sizeof tiny, "%s/tiny-run", FZ_SOURCE_EXAMPLES_DIR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_bin),
        cmocka_unit_test(test_extents),
        cmocka_unit_test(test_safetensors_bf16),
        cmocka_unit_test(test_bin_cast_float16_root_copy),
        cmocka_unit_test(test_reshard),
        cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_plan_names_what_the_view_holds),
        cmocka_unit_test(test_total_bytes),
        cmocka_unit_test(test_options_copy_out_of_memory),
        cmocka_unit_test(test_each_file_read_once),
        cmocka_unit_test(test_whole_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
