/* Unit tests for formats/zip.c: reading torch-written archives, rejecting
 * corrupt ones, and the writer's layout, headers, CRCs and zip64 records. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "formats/zip.h"
#include "util/error.h"

static uint8_t *slurp(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", FZ_TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* An anonymous file holding `b`. */
static int memfile(const uint8_t *b, size_t n)
{
    int fd = memfd_create("zip-test", 0);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, n), (ssize_t)n);
    return fd;
}

static int read_buf(const uint8_t *b, size_t n, fz_zip_dir *d)
{
    int fd = memfile(b, n);
    int rc = fz_zip_read_dir(fd, "t.bin", n, d);
    close(fd);
    return rc;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Offset of the n-th central directory entry of a torch archive. */
static size_t central_entry(const uint8_t *b, size_t len, int n)
{
    size_t eocd = len - 22;
    assert_int_equal(le32(b + eocd), 0x06054b50);
    size_t pos = le32(b + eocd + 16);
    if (pos == 0xFFFFFFFFu) { /* zip64: torch always writes the zip64 EOCD */
        size_t z = (size_t)le64(b + eocd - 20 + 8);
        pos = (size_t)le64(b + z + 48);
    }
    for (int i = 0; i < n; i++)
        pos += 46 + le16(b + pos + 28) + le16(b + pos + 30) + le16(b + pos + 32);
    assert_int_equal(le32(b + pos), 0x02014b50);
    return pos;
}

static void test_read_torch(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = slurp("basic.bin", &len);
    fz_zip_dir d;
    assert_int_equal(read_buf(b, len, &d), 0);
    assert_int_equal(d.n, 13);
    assert_string_equal(d.v[0].name, "basic/data.pkl");
    const fz_zip_entry *e = fz_zip_find(&d, "basic/data/0");
    assert_non_null(e);
    assert_int_equal(e->size, 48);
    assert_null(fz_zip_find(&d, "basic/data/99"));
    for (size_t i = 0; i < d.n; i++) {
        assert_true(d.v[i].data_offset + d.v[i].size <= len);
        assert_int_equal(d.v[i].data_offset % 64, 0); /* torch aligns every record */
        assert_int_equal(d.v[i].crc32,
                         (uint32_t)crc32(0, b + d.v[i].data_offset, (uInt)d.v[i].size));
    }
    e = fz_zip_find(&d, "basic/byteorder");
    assert_memory_equal(b + e->data_offset, "little", 6);
    fz_zip_dir_free(&d);
    free(b);
}

static void test_corrupt(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = slurp("basic.bin", &len), *c = malloc(len);
    fz_zip_dir d;
    assert_non_null(c);

    /* Truncated: the end records are gone, or the file is tiny. */
    assert_int_equal(read_buf(b, len - 10, &d), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "t.bin"));
    assert_int_equal(read_buf(b, 10, &d), FZ_EFORMAT);
    assert_int_equal(read_buf(b, 0, &d), FZ_EFORMAT);
    /* Truncated in the middle: records now lie outside the file. */
    for (size_t cut = 1; cut < len; cut += 37)
        assert_true(read_buf(b, cut, &d) < 0);

    /* Garbage EOCD and zip64 EOCD: central directory offset past the end. */
    memcpy(c, b, len);
    for (size_t i = len - 22 - 20 - 56; i < len; i++)
        c[i] ^= 0x5A;
    assert_true(read_buf(c, len, &d) < 0);
    memcpy(c, b, len);
    size_t eocd = len - 22;
    size_t z = (size_t)le64(c + eocd - 20 + 8);
    c[z + 48 + 7] = 0x7F; /* zip64 cd offset ~ 2^63 */
    assert_int_equal(read_buf(c, len, &d), FZ_ERANGE);
    memcpy(c, b, len);
    c[z + 32] = 0xFF; /* entry count larger than the directory can hold */
    assert_int_equal(read_buf(c, len, &d), FZ_EFORMAT);

    /* Compressed record (method 8 = deflate) in the central directory. */
    memcpy(c, b, len);
    size_t ce = central_entry(c, len, 4);
    c[ce + 10] = 8;
    assert_int_equal(read_buf(c, len, &d), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "compressed"));
    assert_non_null(strstr(fz_error_msg(), "basic/data/0"));

    /* Record outside the file: local header offset and size. */
    memcpy(c, b, len);
    put32(c + ce + 42, (uint32_t)len - 10);
    assert_int_equal(read_buf(c, len, &d), FZ_ERANGE);
    memcpy(c, b, len);
    put32(c + ce + 20, 1000000);
    put32(c + ce + 24, 1000000);
    assert_int_equal(read_buf(c, len, &d), FZ_ERANGE);
    /* Local header offset pointing at data, not at a header. */
    memcpy(c, b, len);
    put32(c + ce + 42, 64);
    assert_int_equal(read_buf(c, len, &d), FZ_EFORMAT);
    /* Encrypted. */
    memcpy(c, b, len);
    c[ce + 8] |= 1;
    assert_int_equal(read_buf(c, len, &d), FZ_EFORMAT);

    /* Flip every byte of the tail (directory and end records): never a crash. */
    for (size_t i = (size_t)le64(b + z + 48); i < len; i++) {
        memcpy(c, b, len);
        c[i] ^= 0xFF;
        if (read_buf(c, len, &d) == 0)
            fz_zip_dir_free(&d);
    }
    free(c);
    free(b);
}

/* Write records named `names` holding `data` with the writer; returns the
 * archive bytes. */
static uint8_t *build(const char *const *names, const uint8_t *const *data, const uint64_t *sizes,
                      size_t n, fz_zipw_layout *L)
{
    assert_int_equal(fz_zipw_layout_new(L, names, sizes, n), 0);
    uint8_t *out = calloc(1, L->total_size);
    uint32_t *crcs = calloc(n + 1, sizeof *crcs);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        crcs[i] = (uint32_t)crc32(0, data[i], (uInt)sizes[i]);
        fz_zipw_local_header(L, i, crcs[i], out + L->rec[i].header_off);
        memcpy(out + L->rec[i].data_off, data[i], sizes[i]);
    }
    fz_zipw_central(L, crcs, out + L->cd_off);
    free(crcs);
    return out;
}

static void test_write_roundtrip(void **state)
{
    (void)state;
    static const uint8_t a[] = "hello", bb[200] = {1, 2, 3}, cc[1] = {0};
    const char *names[] = {"arc/data.pkl", "arc/data/0", "arc/version", "arc/empty"};
    const uint8_t *data[] = {a, bb, (const uint8_t *)"3\n", cc};
    uint64_t sizes[] = {5, 200, 2, 0};
    fz_zipw_layout L;
    uint8_t *out = build(names, data, sizes, 4, &L);
    assert_int_equal(L.rec[0].header_off, 0);
    for (size_t i = 0; i < 4; i++) {
        const fz_zipw_rec *r = &L.rec[i];
        assert_int_equal(r->data_off % 64, 0);
        assert_int_equal(r->data_off, r->header_off + r->header_len);
        if (i)
            assert_int_equal(r->header_off, L.rec[i - 1].data_off + L.rec[i - 1].size);
        const uint8_t *h = out + r->header_off;
        assert_int_equal(le32(h), 0x04034b50);
        assert_int_equal(le16(h + 4), 20);
        assert_int_equal(le16(h + 8), 0);  /* STORED */
        assert_int_equal(le32(h + 10), 0); /* time/date */
        assert_int_equal(le32(h + 14), (uint32_t)crc32(0, data[i], (uInt)sizes[i]));
        assert_int_equal(le32(h + 18), sizes[i]);
        assert_int_equal(le32(h + 22), sizes[i]);
        size_t nl = le16(h + 26), xl = le16(h + 28);
        assert_int_equal(30 + nl + xl, r->header_len);
        assert_memory_equal(h + 30, names[i], nl);
        assert_memory_equal(h + 30 + nl, "FB", 2);
        assert_int_equal(le16(h + 30 + nl + 2), xl - 4);
        for (size_t k = 0; k < xl - 4; k++)
            assert_int_equal(h[30 + nl + 4 + k], 'Z');
    }
    assert_int_equal(L.cd_len, 4 * 46 + strlen(names[0]) + strlen(names[1]) + strlen(names[2]) +
                                   strlen(names[3]) + 22); /* no zip64 needed */
    assert_int_equal(L.total_size, L.cd_off + L.cd_len);

    /* Our reader agrees, and the CRCs match zlib's. */
    fz_zip_dir d;
    assert_int_equal(read_buf(out, L.total_size, &d), 0);
    assert_int_equal(d.n, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(d.v[i].name, names[i]);
        assert_int_equal(d.v[i].data_offset, L.rec[i].data_off);
        assert_int_equal(d.v[i].size, sizes[i]);
        assert_int_equal(d.v[i].crc32, (uint32_t)crc32(0, data[i], (uInt)sizes[i]));
        assert_memory_equal(out + d.v[i].data_offset, data[i], sizes[i]);
    }
    fz_zip_dir_free(&d);
    fz_zipw_free(&L);
    free(out);
}

/* A record of 5 GiB: computed on sizes only, then checked on a sparse file. */
static void test_zip64_layout(void **state)
{
    (void)state;
    const char *names[] = {"big/data/0", "big/data/1", "big/version"};
    uint64_t sizes[] = {5ull << 30, 100, 2};
    uint32_t crcs[] = {0x11111111, 0x22222222, 0x33333333};
    fz_zipw_layout L;
    assert_int_equal(fz_zipw_layout_new(&L, names, sizes, 3), 0);
    const fz_zipw_rec *r0 = &L.rec[0], *r1 = &L.rec[1];
    size_t nl = strlen(names[0]);
    /* Local header of the big record: zip64 block (20) + FB block. */
    assert_true(r0->header_len >= 30 + nl + 20 + 4);
    assert_true(r0->header_len < 30 + nl + 20 + 4 + 64);
    assert_int_equal(r0->data_off % 64, 0);
    assert_true(r1->header_off > 0xFFFFFFFFull);
    assert_int_equal(r1->header_off, r0->data_off + sizes[0]);
    uint64_t fixed1 = r1->header_off + 30 + nl + 4;
    assert_int_equal(r1->header_len, 30 + nl + 4 + (64 - fixed1 % 64) % 64);
    /* Central: big: 46+name+4+16; data/1: offset >4G: 46+name+4+8; version too;
     * then zip64 EOCD (56) + locator (20) + EOCD (22). */
    uint64_t cd = (46 + nl + 20) + (46 + nl + 12) + (46 + strlen(names[2]) + 12);
    assert_int_equal(L.cd_len, cd + 56 + 20 + 22);

    uint8_t *h = malloc(r0->header_len);
    fz_zipw_local_header(&L, 0, crcs[0], h);
    assert_int_equal(le16(h + 4), 45);
    assert_int_equal(le32(h + 18), 0xFFFFFFFFu);
    assert_int_equal(le32(h + 22), 0xFFFFFFFFu);
    assert_int_equal(le16(h + 28), r0->header_len - 30 - nl);
    assert_int_equal(le16(h + 30 + nl), 1);
    assert_int_equal(le16(h + 30 + nl + 2), 16);
    assert_int_equal(le64(h + 30 + nl + 4), sizes[0]);
    assert_int_equal(le64(h + 30 + nl + 12), sizes[0]);
    assert_memory_equal(h + 30 + nl + 20, "FB", 2);

    uint8_t *c = malloc(L.cd_len);
    fz_zipw_central(&L, crcs, c);
    assert_int_equal(le32(c), 0x02014b50);
    assert_int_equal(le32(c + 20), 0xFFFFFFFFu);
    assert_int_equal(le32(c + 42), 0); /* offset 0 fits */
    assert_int_equal(le16(c + 30), 20);
    assert_int_equal(le64(c + 46 + nl + 4), sizes[0]);
    const uint8_t *c1 = c + 46 + nl + 20;
    assert_int_equal(le32(c1 + 20), 100);
    assert_int_equal(le32(c1 + 42), 0xFFFFFFFFu);
    assert_int_equal(le16(c1 + 30), 12);
    assert_int_equal(le64(c1 + 46 + nl + 4), r1->header_off);
    const uint8_t *z = c + cd;
    assert_int_equal(le32(z), 0x06064b50);
    assert_int_equal(le64(z + 24), 3);
    assert_int_equal(le64(z + 40), cd);
    assert_int_equal(le64(z + 48), L.cd_off);
    assert_int_equal(le32(z + 56), 0x07064b50);
    assert_int_equal(le64(z + 56 + 8), L.cd_off + cd);
    assert_int_equal(le32(z + 76), 0x06054b50);
    assert_int_equal(le32(z + 76 + 16), 0xFFFFFFFFu);

    /* Sparse file with only the headers written: the reader finds the records. */
    char tmpl[] = "/tmp/fz-zip64-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    unlink(tmpl);
    if (ftruncate(fd, (off_t)L.total_size) == 0) {
        for (size_t i = 0; i < 3; i++) {
            uint8_t hb[256];
            fz_zipw_local_header(&L, i, crcs[i], hb);
            assert_int_equal(pwrite(fd, hb, L.rec[i].header_len, (off_t)L.rec[i].header_off),
                             (ssize_t)L.rec[i].header_len);
        }
        assert_int_equal(pwrite(fd, c, L.cd_len, (off_t)L.cd_off), (ssize_t)L.cd_len);
        fz_zip_dir d;
        assert_int_equal(fz_zip_read_dir(fd, "big.bin", L.total_size, &d), 0);
        assert_int_equal(d.n, 3);
        for (size_t i = 0; i < 3; i++) {
            assert_string_equal(d.v[i].name, names[i]);
            assert_int_equal(d.v[i].size, sizes[i]);
            assert_int_equal(d.v[i].data_offset, L.rec[i].data_off);
            assert_int_equal(d.v[i].crc32, crcs[i]);
        }
        fz_zip_dir_free(&d);
    }
    close(fd);
    free(c);
    free(h);
    fz_zipw_free(&L);
}

static void test_write_bad_names(void **state)
{
    (void)state;
    const char *names[] = {""};
    uint64_t sizes[] = {1};
    fz_zipw_layout L;
    assert_int_equal(fz_zipw_layout_new(&L, names, sizes, 1), FZ_ERANGE);
    const char *ok[] = {"a/b"};
    uint64_t huge[] = {UINT64_MAX - 10};
    assert_int_equal(fz_zipw_layout_new(&L, ok, huge, 1), FZ_ERANGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_torch),      cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_write_roundtrip), cmocka_unit_test(test_zip64_layout),
        cmocka_unit_test(test_write_bad_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
