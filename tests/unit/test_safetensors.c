/* formats/safetensors.c: files written by the reference safetensors package
 * (tests/fixtures/make_st_unit_data.py), hand-made malformed files, and the
 * writer's layout checked byte for byte against the reference writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "formats/safetensors.h"
#include "util/error.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------ */

/* An anonymous temporary file holding `len` bytes. */
static int tmp_fd(const void *p, size_t len)
{
    char path[] = "/tmp/fz_test_st_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    return fd;
}

/* u64le(len(json)) + json + `data` zero bytes + `extra` 0xAA bytes. */
static uint8_t *mk(const char *json, size_t data, size_t extra, size_t *len)
{
    size_t n = strlen(json);
    uint8_t *b = calloc(8 + n + data + extra + 1, 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, json, n);
    memset(b + 8 + n + data, 0xAA, extra);
    *len = 8 + n + data + extra;
    return b;
}

static int read_bytes(const uint8_t *b, size_t len, fz_tensor_list *out)
{
    int fd = tmp_fd(b, len);
    int rc = fz_st_read(fd, "bad.safetensors", len, out);
    close(fd);
    return rc;
}

/* The file must be rejected with `code`, the message naming the file and
 * containing `what`, and nothing appended to the list. */
static void expect_bad_bytes(const uint8_t *b, size_t len, int code, const char *what)
{
    fz_tensor_list l = {0};
    int rc = read_bytes(b, len, &l);
    if (rc != code || !strstr(fz_error_msg(), what) || !strstr(fz_error_msg(), "bad.safetensors"))
        fail_msg("rc %d (want %d), message '%s' (want '%s')", rc, code, fz_error_msg(), what);
    assert_int_equal(l.n, 0);
    fz_tensor_list_free(&l);
}

static void expect_bad(const char *json, size_t data, size_t extra, int code, const char *what)
{
    size_t len;
    uint8_t *b = mk(json, data, extra, &len);
    expect_bad_bytes(b, len, code, what);
    free(b);
}

static void expect_ok(const char *json, size_t data, size_t ntensors)
{
    size_t len;
    fz_tensor_list l = {0};
    uint8_t *b = mk(json, data, 0, &len);
    int rc = read_bytes(b, len, &l);
    free(b);
    if (rc)
        fail_msg("rejected: %s", fz_error_msg());
    assert_int_equal(l.n, ntensors);
    fz_tensor_list_free(&l);
}

static const fz_tensor *find(const fz_tensor_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].name, name) == 0)
            return &l->v[i];
    fail_msg("no tensor '%s'", name);
    return NULL;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    uint8_t *b = malloc(*len + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static int read_path(const char *path, fz_tensor_list *l)
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    int rc = fz_st_read(fd, path, (uint64_t)st.st_size, l);
    close(fd);
    return rc;
}

/* ---- reading files from the reference writer ---------------------------- */

static void test_read_reference_file(void **state)
{
    (void)state;
    fz_tensor_list l = {0};
    size_t len;
    uint8_t *file = slurp(FZ_TEST_DATA "/st_basic.safetensors", &len);
    assert_int_equal(read_path(FZ_TEST_DATA "/st_basic.safetensors", &l), 0);
    assert_int_equal(l.n, 19);

    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | file[i];
    /* header order is file order: I64 first, BOOL last */
    assert_string_equal(l.v[0].name, "a.i64");
    assert_string_equal(l.v[l.n - 1].name, "a.bool");
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.v[i].storage_offset, 0);
        assert_true(fz_tensor_is_contiguous(&l.v[i]));
        assert_int_equal(fz_tensor_check_bounds(&l.v[i], "x"), 0);
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(l.v[i].storage_id, l.v[j].storage_id);
        /* every tensor is aligned to its element size in the reference layout */
        assert_int_equal(l.v[i].data_offset % fz_dtype_size(l.v[i].dtype), 0);
    }

    const fz_tensor *t = find(&l, "a.f32");
    assert_int_equal(t->dtype, FZ_DT_F32);
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], 5);
    assert_int_equal(t->data_offset, 8 + n + 48);
    assert_int_equal(t->storage_nbytes, 20);
    for (int i = 0; i < 5; i++) {
        float f;
        memcpy(&f, file + t->data_offset + 4 * i, 4);
        assert_true(f == (float)i);
    }

    t = find(&l, "model.embed_tokens.weight");
    assert_int_equal(t->dtype, FZ_DT_BF16);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->stride[0], 3);
    assert_int_equal(t->stride[1], 1);
    uint16_t bf;
    memcpy(&bf, file + t->data_offset + 2 * 11, 2);
    assert_int_equal(bf, 0x4130); /* 11.0 */

    t = find(&l, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->storage_nbytes, 4);
    t = find(&l, "empty");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->storage_nbytes, 0);
    assert_int_equal(t->stride[0], 4);
    t = find(&l, "a.f16");
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->stride[0], 2);
    assert_int_equal(find(&l, "a.f8")->dtype, FZ_DT_F8_E4M3);
    assert_int_equal(find(&l, "a.f8e5")->dtype, FZ_DT_F8_E5M2);
    assert_int_equal(find(&l, "a.bool")->dtype, FZ_DT_BOOL);
    assert_int_equal(find(&l, "a.i64")->data_offset, 8 + n);

    fz_tensor_list_free(&l);
    free(file);
}

static void test_read_no_metadata(void **state)
{
    (void)state;
    fz_tensor_list l = {0};
    size_t len;
    uint8_t *file = slurp(FZ_TEST_DATA "/st_nometa.safetensors", &len);
    assert_int_equal(read_path(FZ_TEST_DATA "/st_nometa.safetensors", &l), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.v[0].name, "w");
    assert_int_equal(l.v[0].data_offset + 12, len);
    float w[3];
    memcpy(w, file + l.v[0].data_offset, 12);
    assert_true(w[0] == 1.5f && w[1] == -2.0f && w[2] == 0.25f);
    fz_tensor_list_free(&l);
    free(file);
}

/* Valid corner cases the reference reader accepts. */
static void test_read_accepts(void **state)
{
    (void)state;
    expect_ok("{}", 0, 0);
    expect_ok("{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"}}", 0, 0);
    expect_ok("{\"__metadata__\":null,\"x\":{\"dtype\":\"F32\",\"shape\":[3],"
              "\"data_offsets\":[0,12]}}",
              12, 1);
    expect_ok("  {\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}    ", 12, 1);
    /* -0 is 0 (serde reads it as a usize 0) */
    expect_ok("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[-0,12]}}", 12, 1);
    /* listed out of offset order; zero-size tensors share an offset */
    expect_ok("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
              "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
              "\"f\":{\"dtype\":\"I64\",\"shape\":[2,0],\"data_offsets\":[4,4]},"
              "\"a\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
              6, 4);
}

/* fz_st_read_info says, from the one parse of the header, whether
 * transformers loads the file as PyTorch weights (what decides whether a
 * shard can be served whole). */
static void test_read_info_format(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        bool pt;
    } cases[] = {
        {"{}", true},
        {"{\"__metadata__\":null}", true},
        {"{\"__metadata__\":{\"format\":\"pt\"}}", true},
        {"{\"__metadata__\":{\"x\":\"y\",\"format\":\"p\\u0074\"}}", true},
        {"{\"__metadata__\":{}}", false},
        {"{\"__metadata__\":{\"format\":\"tf\"}}", false},
        {"{\"__metadata__\":{\"format\":\"pt \"}}", false},
        {"{\"__metadata__\":{\"fmt\":\"pt\"}}", false},
    };
    for (size_t i = 0; i < N_OF(cases); i++) {
        size_t len;
        uint8_t *b = mk(cases[i].json, 0, 0, &len);
        int fd = tmp_fd(b, len);
        fz_tensor_list l = {0};
        fz_st_info info = {!cases[i].pt};
        assert_int_equal(fz_st_read_info(fd, "m.safetensors", len, &l, &info), 0);
        if (info.format_pt != cases[i].pt)
            fail_msg("%s: format_pt %d", cases[i].json, info.format_pt);
        close(fd);
        free(b);
        fz_tensor_list_free(&l);
    }
}

/* ---- malformed files ----------------------------------------------------- */

static void test_reject_framing(void **state)
{
    (void)state;
    uint8_t b[16] = {0};
    expect_bad_bytes(b, 5, FZ_EFORMAT, "too short");
    /* N = 100,000,001 */
    uint64_t big = 100000001;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(big >> (8 * i));
    expect_bad_bytes(b, 16, FZ_EFORMAT, "exceeds");
    /* N = 2^64 - 1: no overflow when adding 8 */
    memset(b, 0xFF, 8);
    expect_bad_bytes(b, 16, FZ_EFORMAT, "exceeds");
    /* N = 100 in a 16-byte file */
    memset(b, 0, 8);
    b[0] = 100;
    expect_bad_bytes(b, 16, FZ_EFORMAT, "past the end");
}

static void test_reject_json(void **state)
{
    (void)state;
    expect_bad("{not json}", 0, 0, FZ_EFORMAT, "not valid JSON");
    expect_bad("[1, 2]", 0, 0, FZ_EFORMAT, "not a JSON object");
    expect_bad("\"str\"", 0, 0, FZ_EFORMAT, "not a JSON object");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}\x01", 4, 0,
               FZ_EFORMAT, "not valid JSON");
    expect_bad("{\"\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0,
               FZ_EFORMAT, "not valid JSON"); /* not UTF-8 */
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, 0, FZ_EFORMAT, "duplicate");
    expect_bad("{\"__metadata__\":{\"a\":1}}", 0, 0, FZ_EFORMAT, "value of 'a' is not a string");
    expect_bad("{\"__metadata__\":{\"a\":null}}", 0, 0, FZ_EFORMAT, "not a string");
    expect_bad("{\"__metadata__\":[\"a\"]}", 0, 0, FZ_EFORMAT, "__metadata__ is not an object");
}

static void test_reject_entries(void **state)
{
    (void)state;
    expect_bad("{\"x\":{\"dtype\":\"F4\",\"shape\":[24],\"data_offsets\":[0,12]}}", 12, 0,
               FZ_EFORMAT, "unknown dtype 'F4'");
    expect_bad("{\"x\":{\"dtype\":7,\"shape\":[3],\"data_offsets\":[0,12]}}", 12, 0, FZ_EFORMAT,
               "dtype is not a string");
    expect_bad("{\"x\":[1]}", 0, 0, FZ_EFORMAT, "'x' is not an object");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,12]}}", 12, 0, FZ_EFORMAT,
               "must have dtype, shape and data_offsets");
    /* extra keys in an entry are ignored, as the reference reader ignores them */
    expect_ok("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12],\"y\":1}}", 12, 1);
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[0,12]}}", 12, 0,
               FZ_EFORMAT, "shape[0] is not a non-negative integer");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[3.0],\"data_offsets\":[0,12]}}", 12, 0,
               FZ_EFORMAT, "shape[0]");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]}}", 12, 0, FZ_EFORMAT,
               "shape is not an array");
    expect_bad("{\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
               "\"data_offsets\":[0,1]}}",
               1, 0, FZ_EFORMAT, "9 dimensions");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[-4,8]}}", 12, 0,
               FZ_EFORMAT, "non-negative integers");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12.0]}}", 12, 0,
               FZ_EFORMAT, "non-negative integers");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12,12]}}", 12, 0,
               FZ_EFORMAT, "pair");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[12,0]}}", 12, 0,
               FZ_EFORMAT, "end before begin");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,10]}}", 10, 0,
               FZ_EFORMAT,
               "bad.safetensors: tensor 'x' data_offsets [0, 10] do not match shape [3] "
               "\xc3\x97 F32");
    /* 2^32 * 2^32 elements overflows u64; so does 2^62 * 8 bytes */
    expect_bad("{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,0]}}",
               0, 0, FZ_ERANGE, "overflows");
    /* the product is taken left to right, as the reference does: this one
     * overflows before it reaches the 0 */
    expect_bad("{\"x\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1099511627776,0],"
               "\"data_offsets\":[0,0]}}",
               0, 0, FZ_ERANGE, "overflows");
    expect_bad("{\"x\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
               "\"data_offsets\":[0,0]}}",
               0, 0, FZ_ERANGE, "overflows");
    /* numel 0, (0, 2^62, 4): holds nothing, but its strides overflow (UBSan found it) */
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,4],"
               "\"data_offsets\":[0,0]}}",
               0, 0, FZ_ERANGE, "shape (0, 4611686018427387904, 4) overflows");
    /* numel 0 but the trailing dimensions' product overflows the strides */
    expect_bad("{\"x\":{\"dtype\":\"U8\",\"shape\":[0,4294967296,4294967296,4],"
               "\"data_offsets\":[0,0]}}",
               0, 0, FZ_ERANGE, "overflow");
}

static void test_reject_tiling(void **state)
{
    (void)state;
    /* gap between tensors, and a first tensor not at 0 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               12, 0, FZ_EFORMAT, "tensor 'b' data_offsets [8, 12] leave a gap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, 0, FZ_EFORMAT,
               "gap");
    /* overlap, and two names aliasing the same bytes */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, 0, FZ_EFORMAT, "overlap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8, 0, FZ_EFORMAT, "overlap");
    /* trailing bytes after the last tensor; buffer shorter than the offsets */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1, FZ_EFORMAT,
               "trailing bytes");
    expect_bad("{}", 0, 3, FZ_EFORMAT, "trailing bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 6, 0, FZ_EFORMAT,
               "truncated");
}

/* ---- writer -------------------------------------------------------------- */

/* Laying out the tensors of the reference file (given in a scrambled order)
 * reproduces the reference writer's header byte for byte. */
static void test_layout_matches_reference(void **state)
{
    (void)state;
    fz_tensor_list l = {0};
    size_t len;
    uint8_t *file = slurp(FZ_TEST_DATA "/st_basic.safetensors", &len);
    assert_int_equal(read_path(FZ_TEST_DATA "/st_basic.safetensors", &l), 0);
    size_t n = l.n;
    fz_st_entry *e = calloc(n, sizeof *e);
    size_t *order = calloc(n, sizeof *order);
    uint64_t *off = calloc(n, sizeof *off);
    assert_non_null(e);
    assert_non_null(order);
    assert_non_null(off);
    for (size_t i = 0; i < n; i++) { /* entry i = file tensor (i * 7) % n: scrambled */
        const fz_tensor *t = &l.v[(i * 7) % n];
        e[i] = (fz_st_entry){t->name, t->dtype, t->ndim, t->shape};
    }
    fz_buf hdr = FZ_BUF_INIT;
    assert_int_equal(fz_st_layout(e, n, &hdr, order, off), 0);
    assert_true(hdr.len <= len);
    assert_memory_equal(hdr.data, file, hdr.len);
    assert_int_equal(l.v[0].data_offset, hdr.len);
    for (size_t j = 0; j < n; j++) {
        /* order[j] is the entry stored j-th, which is the file's j-th tensor */
        assert_string_equal(e[order[j]].name, l.v[j].name);
        assert_int_equal(off[order[j]], l.v[j].data_offset);
    }
    fz_buf_free(&hdr);
    free(e);
    free(order);
    free(off);
    fz_tensor_list_free(&l);
    free(file);
}

/* Names that need escaping are written as the reference writer (serde_json)
 * writes them: control characters as \u00xx in lowercase, \t, \" and \\;
 * '/', DEL and non-ASCII as they are (bytes from safetensors 0.x save_file). */
static void test_layout_escapes_as_reference(void **state)
{
    (void)state;
    uint64_t s1[1] = {1}, s2[1] = {2};
    fz_st_entry e[] = {{"a\x1f"
                        "b\"c\\d/\x7f\xc3\xa9\t",
                        FZ_DT_F32, 1, s2},
                       {"x", FZ_DT_I64, 1, s1}};
    static const char want[] =
        "{\"__metadata__\":{\"format\":\"pt\"},\"x\":{\"dtype\":\"I64\",\"shape\":[1],"
        "\"data_offsets\":[0,8]},\"a\\u001fb\\\"c\\\\d/\x7f\xc3\xa9\\t\":{\"dtype\":\"F32\","
        "\"shape\":[2],\"data_offsets\":[8,16]}}  ";
    size_t order[2];
    uint64_t off[2];
    fz_buf hdr = FZ_BUF_INIT;
    assert_int_equal(fz_st_layout(e, 2, &hdr, order, off), 0);
    assert_int_equal(hdr.len, 8 + sizeof want - 1);
    assert_int_equal(hdr.data[0], sizeof want - 1);
    assert_memory_equal(hdr.data + 8, want, sizeof want - 1);
    assert_int_equal(off[0], hdr.len + 8);
    assert_int_equal(off[1], hdr.len);
    fz_buf_free(&hdr);
}

static void test_layout_padding(void **state)
{
    (void)state;
    static const char *names[] = {"a", "bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggg", "h8"};
    uint64_t shape[1] = {3};
    fz_buf hdr = FZ_BUF_INIT;
    size_t order[1];
    uint64_t off[1];

    /* no tensors: exactly the metadata, already a multiple of 8 */
    assert_int_equal(fz_st_layout(NULL, 0, &hdr, order, off), 0);
    assert_int_equal(hdr.len, 8 + 32);
    assert_memory_equal(hdr.data + 8, "{\"__metadata__\":{\"format\":\"pt\"}}", 32);
    fz_buf_free(&hdr);

    for (size_t k = 0; k < N_OF(names); k++) {
        fz_st_entry e = {names[k], FZ_DT_F16, 1, shape};
        assert_int_equal(fz_st_layout(&e, 1, &hdr, order, off), 0);
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | hdr.data[i];
        assert_int_equal(n % 8, 0);
        assert_int_equal(hdr.len, 8 + n);
        assert_int_equal(off[0], 8 + n);
        assert_int_equal(order[0], 0);
        /* the JSON ends at the last '}', then only spaces (fewer than 8) */
        size_t end = hdr.len;
        while (hdr.data[end - 1] == ' ')
            end--;
        assert_int_equal(hdr.data[end - 1], '}');
        assert_true(hdr.len - end < 8);
        fz_buf_free(&hdr);
    }
}

static void test_layout_roundtrip(void **state)
{
    (void)state;
    uint64_t s23[2] = {2, 3}, s7[1] = {7}, s1[1] = {1}, s5[1] = {5};
    fz_st_entry e[] = {
        {"u8", FZ_DT_U8, 1, s5},     {"w.f32", FZ_DT_F32, 2, s23}, {"b", FZ_DT_BF16, 1, s7},
        {"idx", FZ_DT_I64, 1, s1},   {"s", FZ_DT_F16, 0, NULL},    {"q", FZ_DT_F8_E4M3, 1, s5},
        {"flag", FZ_DT_BOOL, 1, s1}, {"d", FZ_DT_F64, 1, s1},
    };
    size_t n = N_OF(e), order[N_OF(e)];
    uint64_t off[N_OF(e)];
    fz_buf f = FZ_BUF_INIT;
    assert_int_equal(fz_st_layout(e, n, &f, order, off), 0);
    /* file order: I64, F64, F32, BF16, F16, F8_E4M3, U8, BOOL */
    static const char *want[] = {"idx", "d", "w.f32", "b", "s", "q", "u8", "flag"};
    for (size_t j = 0; j < n; j++)
        assert_string_equal(e[order[j]].name, want[j]);
    /* data back to back, each tensor filled with its own index */
    for (size_t j = 0; j < n; j++) {
        const fz_st_entry *t = &e[order[j]];
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= t->shape[d];
        size_t bytes = numel * fz_dtype_size(t->dtype);
        assert_int_equal(off[order[j]], f.len);
        assert_int_equal(off[order[j]] % fz_dtype_size(t->dtype), 0);
        for (size_t b = 0; b < bytes; b++)
            assert_int_equal(fz_buf_putc(&f, (char)order[j]), 0);
    }
    fz_tensor_list l = {0};
    int fd = tmp_fd(f.data, f.len);
    int rc = fz_st_read(fd, "roundtrip.safetensors", f.len, &l);
    close(fd);
    if (rc)
        fail_msg("%s", fz_error_msg());
    assert_int_equal(l.n, n);
    for (size_t j = 0; j < n; j++) {
        const fz_st_entry *t = &e[order[j]];
        assert_string_equal(l.v[j].name, t->name);
        assert_int_equal(l.v[j].dtype, t->dtype);
        assert_int_equal(l.v[j].ndim, t->ndim);
        for (int d = 0; d < t->ndim; d++)
            assert_int_equal(l.v[j].shape[d], t->shape[d]);
        assert_int_equal(l.v[j].data_offset, off[order[j]]);
        assert_int_equal(f.data[l.v[j].data_offset], (uint8_t)order[j]);
    }
    fz_tensor_list_free(&l);
    fz_buf_free(&f);
}

static void test_layout_errors(void **state)
{
    (void)state;
    uint64_t s1[1] = {1}, huge[2] = {UINT64_C(1) << 40, UINT64_C(1) << 40};
    size_t order[3];
    uint64_t off[3];
    fz_buf hdr = FZ_BUF_INIT;
    fz_st_entry dup[] = {{"x", FZ_DT_F32, 1, s1}, {"x", FZ_DT_F32, 1, s1}};
    assert_int_equal(fz_st_layout(dup, 2, &hdr, order, off), FZ_EINVAL);
    assert_non_null(strstr(fz_error_msg(), "'x' appears twice"));
    /* the same name in two dtypes, another between them in the writer's order */
    fz_st_entry dup2[] = {
        {"x", FZ_DT_F32, 1, s1}, {"y", FZ_DT_F64, 1, s1}, {"x", FZ_DT_I64, 1, s1}};
    assert_int_equal(fz_st_layout(dup2, 3, &hdr, order, off), FZ_EINVAL);
    assert_non_null(strstr(fz_error_msg(), "'x' appears twice"));
    fz_st_entry meta[] = {{"__metadata__", FZ_DT_F32, 1, s1}};
    assert_int_equal(fz_st_layout(meta, 1, &hdr, order, off), FZ_EINVAL);
    fz_st_entry big[] = {{"x", FZ_DT_F32, 2, huge}};
    assert_int_equal(fz_st_layout(big, 1, &hdr, order, off), FZ_ERANGE);
    fz_st_entry bad_utf8[] = {{"\xff", FZ_DT_F32, 1, s1}};
    assert_int_equal(fz_st_layout(bad_utf8, 1, &hdr, order, off), FZ_EINVAL);
    assert_int_equal(hdr.len, 0);
    fz_buf_free(&hdr);
}

/* Reads append to the caller's list, all or nothing: a second file's
 * tensors follow the first's, and a file refused half way (its tiling is
 * checked after every entry was parsed) adds none. */
static void test_read_appends(void **state)
{
    (void)state;
    fz_tensor_list l = {0};
    size_t len;
    uint8_t *b = mk("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, &len);
    assert_int_equal(read_bytes(b, len, &l), 0);
    free(b);
    b = mk("{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
           8, 0, &len);
    assert_int_equal(read_bytes(b, len, &l), 0);
    free(b);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.v[0].name, "a");
    assert_string_equal(l.v[1].name, "b");
    assert_string_equal(l.v[2].name, "c");
    b = mk("{\"d\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"e\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[5,9]}}",
           9, 0, &len);
    assert_int_equal(read_bytes(b, len, &l), FZ_EFORMAT);
    free(b);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.v[2].name, "c");
    fz_tensor_list_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_reference_file),
        cmocka_unit_test(test_read_no_metadata),
        cmocka_unit_test(test_read_accepts),
        cmocka_unit_test(test_reject_framing),
        cmocka_unit_test(test_reject_json),
        cmocka_unit_test(test_reject_entries),
        cmocka_unit_test(test_read_info_format),
        cmocka_unit_test(test_reject_tiling),
        cmocka_unit_test(test_layout_matches_reference),
        cmocka_unit_test(test_layout_escapes_as_reference),
        cmocka_unit_test(test_layout_padding),
        cmocka_unit_test(test_layout_roundtrip),
        cmocka_unit_test(test_layout_errors),
        cmocka_unit_test(test_read_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
