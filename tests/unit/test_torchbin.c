/* Unit tests for formats/torchbin.c: real torch.save files (tests/fixtures/
 * make_unit_data.py), corrupt archives, and the writer (pickle + layout)
 * read back by the reader with CRCs checked against zlib. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "formats/pickle.h"
#include "formats/torchbin.h"
#include "util/error.h"

static int open_data(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", FZ_TEST_DATA, name);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    return fd;
}

static int read_file(const char *name, fz_tensor_list *l)
{
    int fd = open_data(name);
    int rc = fz_torchbin_read(fd, name, l);
    close(fd);
    return rc;
}

static const fz_tensor *find(const fz_tensor_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->v[i].name, name))
            return &l->v[i];
    fail_msg("tensor %s not found", name);
    return NULL;
}

static void pread_at(int fd, void *p, size_t n, uint64_t off)
{
    assert_int_equal(pread(fd, p, n, (off_t)off), (ssize_t)n);
}

static void check_tensor(const fz_tensor *t, fz_dtype dt, int ndim, const uint64_t *shape,
                         const int64_t *stride, uint64_t off, uint64_t nbytes)
{
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->ndim, ndim);
    for (int i = 0; i < ndim; i++) {
        assert_int_equal(t->shape[i], shape[i]);
        assert_int_equal(t->stride[i], stride[i]);
    }
    assert_int_equal(t->storage_offset, off);
    assert_int_equal(t->storage_nbytes, nbytes);
    assert_int_equal(t->data_offset % 64, 0);
}

static void test_read_basic(void **state)
{
    (void)state;
    fz_tensor_list l = {0};
    assert_int_equal(read_file("basic.bin", &l), 0);
    assert_int_equal(l.n, 8);
    static const char *order[] = {"emb", "head", "bias", "half", "ids", "mask", "wt", "row"};
    for (size_t i = 0; i < 8; i++)
        assert_string_equal(l.v[i].name, order[i]);
    const fz_tensor *emb = find(&l, "emb"), *head = find(&l, "head");
    check_tensor(emb, FZ_DT_F32, 2, (uint64_t[]){4, 3}, (int64_t[]){3, 1}, 0, 48);
    check_tensor(head, FZ_DT_F32, 2, (uint64_t[]){4, 3}, (int64_t[]){3, 1}, 0, 48);
    assert_int_equal(emb->storage_id, head->storage_id); /* tied */
    assert_int_equal(emb->data_offset, head->data_offset);
    check_tensor(find(&l, "bias"), FZ_DT_BF16, 1, (uint64_t[]){3}, (int64_t[]){1}, 0, 6);
    check_tensor(find(&l, "half"), FZ_DT_F16, 2, (uint64_t[]){2, 2}, (int64_t[]){2, 1}, 0, 8);
    check_tensor(find(&l, "ids"), FZ_DT_I64, 1, (uint64_t[]){3}, (int64_t[]){1}, 0, 24);
    check_tensor(find(&l, "mask"), FZ_DT_BOOL, 1, (uint64_t[]){5}, (int64_t[]){1}, 0, 5);
    const fz_tensor *wt = find(&l, "wt"), *row = find(&l, "row");
    check_tensor(wt, FZ_DT_F32, 2, (uint64_t[]){3, 2}, (int64_t[]){1, 3}, 0, 24);
    assert_false(fz_tensor_is_contiguous(wt));
    check_tensor(row, FZ_DT_F32, 1, (uint64_t[]){3}, (int64_t[]){1}, 3, 36);
    for (size_t i = 2; i < 8; i++)
        assert_int_not_equal(l.v[i].storage_id, emb->storage_id);

    /* The offsets point at the right bytes. */
    int fd = open_data("basic.bin");
    int64_t ids[3];
    pread_at(fd, ids, sizeof ids, find(&l, "ids")->data_offset);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 1ll << 40);
    assert_int_equal(ids[2], -5);
    uint8_t mask[5];
    pread_at(fd, mask, 5, find(&l, "mask")->data_offset);
    assert_memory_equal(mask, "\1\0\1\1\0", 5);
    float r[3];
    pread_at(fd, r, sizeof r, row->data_offset + row->storage_offset * 4);
    assert_true(r[0] == 3.0f && r[1] == 4.0f && r[2] == 5.0f);
    close(fd);
    fz_tensor_list_free(&l);
}

static void test_read_variants(void **state)
{
    (void)state;
    fz_tensor_list l = {0};
    /* Protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL), plain dict. */
    assert_int_equal(read_file("proto4.bin", &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.v[0].name, "a.weight");
    check_tensor(&l.v[1], FZ_DT_F32, 1, (uint64_t[]){2}, (int64_t[]){1}, 0, 8);
    /* float8: UntypedStorage + _rebuild_tensor_v3, numel in bytes. Appends. */
    assert_int_equal(read_file("f8.bin", &l), 0);
    assert_int_equal(l.n, 3);
    check_tensor(&l.v[2], FZ_DT_F8_E4M3, 1, (uint64_t[]){4}, (int64_t[]){1}, 0, 4);
    int fd = open_data("f8.bin");
    uint8_t q[4];
    pread_at(fd, q, 4, l.v[2].data_offset);
    assert_memory_equal(q, "\x30\xb8\x40\x7e", 4); /* 0.5, -1, 2, 448 */
    close(fd);
    /* nn.Parameter: _rebuild_parameter. */
    assert_int_equal(read_file("param.bin", &l), 0);
    assert_int_equal(l.n, 4);
    assert_string_equal(l.v[3].name, "p");
    /* Nested (optimizer-like) state: refused, and *out unchanged. */
    assert_int_equal(read_file("nested.bin", &l), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "nested.bin: pickle is not a flat state dict"));
    assert_int_equal(l.n, 4);
    fz_tensor_list_free(&l);
}

/* ---- archives built with the writer ---- */

typedef struct {
    const char *name;
    const void *data;
    size_t len;
} rec;

/* A zip of `recs` on an anonymous fd; every CRC real. */
static int zip_fd(const rec *recs, size_t n)
{
    const char *names[16];
    uint64_t sizes[16];
    uint32_t crcs[16];
    fz_zipw_layout L;
    for (size_t i = 0; i < n; i++) {
        names[i] = recs[i].name;
        sizes[i] = recs[i].len;
        crcs[i] = (uint32_t)crc32(0, recs[i].data, (uInt)recs[i].len);
    }
    assert_int_equal(fz_zipw_layout_new(&L, names, sizes, n), 0);
    uint8_t *out = calloc(1, L.total_size);
    for (size_t i = 0; i < n; i++) {
        fz_zipw_local_header(&L, i, crcs[i], out + L.rec[i].header_off);
        memcpy(out + L.rec[i].data_off, recs[i].data, recs[i].len);
    }
    fz_zipw_central(&L, crcs, out + L.cd_off);
    int fd = memfd_create("tb", 0);
    assert_int_equal(write(fd, out, L.total_size), (ssize_t)L.total_size);
    free(out);
    fz_zipw_free(&L);
    return fd;
}

static int read_recs(const rec *recs, size_t n, fz_tensor_list *l)
{
    int fd = zip_fd(recs, n);
    int rc = fz_torchbin_read(fd, "x.bin", l);
    close(fd);
    return rc;
}

static void expect_err(const rec *recs, size_t n, int code, const char *part)
{
    fz_tensor_list l = {0};
    assert_int_equal(read_recs(recs, n, &l), code);
    if (part && !strstr(fz_error_msg(), part))
        fail_msg("message '%s' lacks '%s'", fz_error_msg(), part);
    assert_int_equal(l.n, 0);
    fz_tensor_list_free(&l);
}

static void test_corrupt(void **state)
{
    (void)state;
    static const uint8_t data[48];
    fz_pickle_tensor t = {"w", "0", FZ_DT_F32, 48, 0, 2, {4, 3}, {3, 1}};
    fz_buf p = FZ_BUF_INIT;
    assert_int_equal(fz_pickle_write_state_dict(&t, 1, &p), 0);
    rec ok[] = {{"x/data.pkl", p.data, p.len}, {"x/data/0", data, 48}, {"x/version", "3\n", 2}};
    fz_tensor_list l = {0};
    assert_int_equal(read_recs(ok, 3, &l), 0);
    assert_int_equal(l.n, 1);
    fz_tensor_list_free(&l);
    /* the directory every record is under, from the same read */
    char *stem = NULL;
    int zfd = zip_fd(ok, 3);
    assert_int_equal(fz_torchbin_read_stem(zfd, "x.bin", &l, &stem), 0);
    close(zfd);
    assert_string_equal(stem, "x");
    free(stem);
    fz_tensor_list_free(&l);

    rec short_rec[] = {{"x/data.pkl", p.data, p.len}, {"x/data/0", data, 40}};
    expect_err(short_rec, 2, FZ_EFORMAT, "holds 40 bytes but the pickle says 48");
    rec no_rec[] = {{"x/data.pkl", p.data, p.len}, {"x/data/1", data, 48}};
    expect_err(no_rec, 2, FZ_EFORMAT, "'x/data/0' is missing");
    rec no_pkl[] = {{"x/data/0", data, 48}};
    expect_err(no_pkl, 1, FZ_EFORMAT, "no 'x/data.pkl'");
    rec flat[] = {{"data.pkl", p.data, p.len}};
    expect_err(flat, 1, FZ_EFORMAT, "not in a subdirectory");
    rec mixed[] = {{"x/data.pkl", p.data, p.len}, {"y/data/0", data, 48}};
    expect_err(mixed, 2, FZ_EFORMAT, "'y/data/0' is not under 'x/'");
    rec dup[] = {{"x/data.pkl", p.data, p.len}, {"x/data/0", data, 48}, {"x/data/0", data, 48}};
    expect_err(dup, 3, FZ_EFORMAT, "twice");
    fz_buf_free(&p);

    /* Out of bounds views and overflowing extents. */
    t.shape[0] = 5;
    assert_int_equal(fz_pickle_write_state_dict(&t, 1, &p), 0);
    rec oob[] = {{"x/data.pkl", p.data, p.len}, {"x/data/0", data, 48}};
    expect_err(oob, 2, FZ_ERANGE, "tensor 'w' reaches element 14");
    fz_buf_free(&p);
    t.shape[0] = 1ull << 40;
    t.stride[0] = 1ll << 40;
    assert_int_equal(fz_pickle_write_state_dict(&t, 1, &p), 0);
    oob[0].data = p.data;
    oob[0].len = p.len;
    expect_err(oob, 2, FZ_ERANGE, "overflows");
    fz_buf_free(&p);

    /* A malicious pickle. */
    static const char evil[] = "\x80\x02"
                               "cos\nsystem\nX\x02\x00\x00\x00id\x85R.";
    rec ev[] = {{"x/data.pkl", evil, sizeof evil - 1}, {"x/data/0", data, 48}};
    expect_err(ev, 2, FZ_EDENIED, "x.bin: pickle global 'os.system' is not allowed");

    /* Not a zip at all (the legacy format), and a truncated real file. */
    int fd = memfd_create("legacy", 0);
    assert_int_equal(write(fd, "\x80\x02\x8a\x0a", 4), 4);
    assert_int_equal(fz_torchbin_read(fd, "old.bin", &l), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "old.bin: not a torch zip"));
    close(fd);
    int src = open_data("basic.bin");
    uint8_t buf[4096];
    ssize_t n = pread(src, buf, sizeof buf, 0);
    close(src);
    assert_true(n > 2000);
    for (ssize_t cut = 0; cut < n; cut += 97) {
        fd = memfd_create("cut", 0);
        assert_int_equal(write(fd, buf, (size_t)cut), cut);
        assert_true(fz_torchbin_read(fd, "cut.bin", &l) < 0);
        assert_int_equal(l.n, 0);
        close(fd);
    }
}

/* Write a full archive with fz_torchbin_pickle + fz_torchbin_layout, read it
 * back, and check every CRC against zlib. */
static void test_write_read(void **state)
{
    (void)state;
    static const uint64_t emb_shape[] = {4, 3}, b_shape[] = {3}, q_shape[] = {2, 2},
                          i_shape[] = {2}, big_shape[] = {3, 5, 7, 11, 13};
    static const fz_torchbin_entry e[] = {
        {"model.embed_tokens.weight", FZ_DT_BF16, 2, emb_shape, 0},
        {"lm_head.weight", FZ_DT_BF16, 2, emb_shape, 0},
        {"model.norm.bias", FZ_DT_F32, 1, b_shape, 1},
        {"q.weight", FZ_DT_F8_E4M3, 2, q_shape, 2},
        {"ids", FZ_DT_I64, 1, i_shape, 3},
        {"five", FZ_DT_F16, 5, big_shape, 4},
    };
    uint64_t nb[] = {24, 12, 4, 16, 2 * 3 * 5 * 7 * 11 * 13};
    uint8_t *rd[5];
    for (int k = 0; k < 5; k++) {
        rd[k] = malloc(nb[k]);
        for (uint64_t j = 0; j < nb[k]; j++)
            rd[k][j] = (uint8_t)(j * 7 + (uint64_t)k);
    }
    fz_buf pkl = FZ_BUF_INIT;
    assert_int_equal(fz_torchbin_pickle(e, 6, nb, 5, &pkl), 0);
    fz_zipw_layout L;
    assert_int_equal(fz_torchbin_layout(&L, "pytorch_model", pkl.len, nb, 5), 0);
    assert_int_equal(L.n, 8);
    assert_string_equal(L.rec[0].name, "pytorch_model/data.pkl");
    assert_string_equal(L.rec[1].name, "pytorch_model/byteorder");
    assert_string_equal(L.rec[2].name, "pytorch_model/data/0");
    assert_string_equal(L.rec[6].name, "pytorch_model/data/4");
    assert_string_equal(L.rec[7].name, "pytorch_model/version");
    const void *payload[8] = {pkl.data, "little", rd[0], rd[1], rd[2], rd[3], rd[4], "3\n"};
    uint32_t crcs[8];
    uint8_t *out = calloc(1, L.total_size);
    for (size_t i = 0; i < 8; i++) {
        assert_int_equal(L.rec[i].data_off % 64, 0);
        crcs[i] = (uint32_t)crc32(0, payload[i], (uInt)L.rec[i].size);
        fz_zipw_local_header(&L, i, crcs[i], out + L.rec[i].header_off);
        memcpy(out + L.rec[i].data_off, payload[i], L.rec[i].size);
    }
    fz_zipw_central(&L, crcs, out + L.cd_off);
    int fd = memfd_create("w", 0);
    assert_int_equal(write(fd, out, L.total_size), (ssize_t)L.total_size);

    fz_zip_dir d;
    assert_int_equal(fz_zip_read_dir(fd, "w.bin", L.total_size, &d), 0);
    assert_int_equal(d.n, 8);
    for (size_t i = 0; i < 8; i++) {
        assert_int_equal(d.v[i].data_offset, L.rec[i].data_off);
        assert_int_equal(d.v[i].crc32,
                         (uint32_t)crc32(0, out + d.v[i].data_offset, (uInt)d.v[i].size));
    }
    fz_zip_dir_free(&d);

    fz_tensor_list l = {0};
    assert_int_equal(fz_torchbin_read(fd, "w.bin", &l), 0);
    assert_int_equal(l.n, 6);
    for (size_t i = 0; i < 6; i++) {
        const fz_tensor *t = &l.v[i];
        assert_string_equal(t->name, e[i].name);
        assert_int_equal(t->dtype, e[i].dtype);
        assert_int_equal(t->ndim, e[i].ndim);
        assert_memory_equal(t->shape, e[i].shape, (size_t)e[i].ndim * sizeof(uint64_t));
        assert_true(fz_tensor_is_contiguous(t));
        assert_int_equal(t->storage_offset, 0);
        assert_int_equal(t->data_offset, L.rec[2 + e[i].record].data_off);
        assert_int_equal(t->storage_nbytes, nb[e[i].record]);
    }
    assert_int_equal(l.v[0].storage_id, l.v[1].storage_id);
    assert_int_not_equal(l.v[0].storage_id, l.v[2].storage_id);
    assert_int_equal(l.v[5].stride[0], 5 * 7 * 11 * 13);
    fz_tensor_list_free(&l);
    close(fd);

    /* Writer input errors. */
    fz_buf b = FZ_BUF_INIT;
    fz_torchbin_entry bad = e[0];
    bad.record = 9;
    assert_int_equal(fz_torchbin_pickle(&bad, 1, nb, 5, &b), FZ_EINVAL);
    bad = e[0];
    bad.record = 1; /* 24 bytes of bf16 do not fit in 12 */
    assert_int_equal(fz_torchbin_pickle(&bad, 1, nb, 5, &b), FZ_EINVAL);
    fz_torchbin_entry two[] = {e[2], e[2]};
    two[1].dtype = FZ_DT_I32; /* one storage, two dtypes */
    assert_int_equal(fz_torchbin_pickle(two, 2, nb, 5, &b), FZ_EINVAL);
    fz_zipw_free(&L);
    assert_int_equal(fz_torchbin_layout(&L, "", 0, nb, 0), FZ_EINVAL);
    assert_int_equal(fz_torchbin_layout(&L, "a/b", 0, nb, 0), FZ_EINVAL);
    fz_buf_free(&b);
    free(out);
    fz_buf_free(&pkl);
    for (int k = 0; k < 5; k++)
        free(rd[k]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_basic),
        cmocka_unit_test(test_read_variants),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_write_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
