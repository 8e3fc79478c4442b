#include "formats/zip.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/checked.h"
#include "util/error.h"
#include "util/io.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u

#define LOCAL_LEN 30u
#define CENTRAL_LEN 46u
#define EOCD_LEN 22u
#define EOCD64_LEN 56u
#define LOC64_LEN 20u

/* Above this the central directory is not something torch would write; it
 * also bounds the single allocation the reader makes from file contents. */
#define MAX_CD_BYTES (1ull << 30)

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static uint8_t *wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint8_t *wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return p + 4;
}

static uint8_t *wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return p + 8;
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    uint64_t entries, cd_size, cd_off;
    uint64_t cd_limit; /* the central directory must end at or before this */
} eocd_info;

/* Find the classic EOCD in the last 64 KiB + 22 bytes, and the zip64 EOCD
 * through its locator when one sits right before it. */
static int find_eocd(int fd, const char *path, uint64_t file_size, eocd_info *info)
{
    uint64_t tail = file_size < EOCD_LEN + 0xFFFFu ? file_size : EOCD_LEN + 0xFFFFu;
    uint64_t base = file_size - tail;
    uint8_t *buf = NULL;
    int rc = 0;
    if (file_size < EOCD_LEN)
        return fz_error_set(FZ_EFORMAT, "%s: not a zip archive (too short)", path);
    buf = malloc(tail);
    if (!buf)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if ((rc = fz_pread_exact(fd, buf, tail, base, path)))
        goto done;
    /* Scan backwards; accept the last signature whose comment fits the file. */
    int64_t pos = -1;
    for (int64_t i = (int64_t)tail - EOCD_LEN; i >= 0; i--) {
        if (rd32(buf + i) == SIG_EOCD && (uint64_t)i + EOCD_LEN + rd16(buf + i + 20) <= tail) {
            pos = i;
            break;
        }
    }
    if (pos < 0) {
        rc = fz_error_set(FZ_EFORMAT, "%s: not a zip archive (no end of central directory)", path);
        goto done;
    }
    const uint8_t *e = buf + pos;
    uint64_t eocd_off = base + (uint64_t)pos;
    if (rd16(e + 4) != 0 && rd16(e + 4) != 0xFFFF) {
        rc = fz_error_set(FZ_EFORMAT, "%s: multi-disk zip archives are not supported", path);
        goto done;
    }
    info->entries = rd16(e + 10);
    info->cd_size = rd32(e + 12);
    info->cd_off = rd32(e + 16);
    info->cd_limit = eocd_off;

    if (eocd_off >= LOC64_LEN) {
        uint8_t loc[LOC64_LEN], z[EOCD64_LEN];
        if ((rc = fz_pread_exact(fd, loc, LOC64_LEN, eocd_off - LOC64_LEN, path)))
            goto done;
        if (rd32(loc) == SIG_LOC64) {
            uint64_t z_off = rd64(loc + 8), z_end;
            if (!fz_add_u64(z_off, EOCD64_LEN, &z_end) || z_end > eocd_off - LOC64_LEN) {
                rc = fz_error_set(FZ_ERANGE, "%s: zip64 end record lies outside the file", path);
                goto done;
            }
            if ((rc = fz_pread_exact(fd, z, EOCD64_LEN, z_off, path)))
                goto done;
            if (rd32(z) != SIG_EOCD64) {
                rc = fz_error_set(FZ_EFORMAT, "%s: bad zip64 end record signature", path);
                goto done;
            }
            info->entries = rd64(z + 32);
            info->cd_size = rd64(z + 40);
            info->cd_off = rd64(z + 48);
            info->cd_limit = z_off;
        }
    }
done:
    free(buf);
    return rc;
}

/* Apply a zip64 extended-information extra field (id 0x0001) to the 32-bit
 * fields that hold the 0xFFFFFFFF marker, in the order the spec gives. */
static int apply_zip64_extra(const char *path, const uint8_t *x, size_t xlen, uint64_t *usize,
                             uint64_t *csize, uint64_t *loff)
{
    while (xlen >= 4) {
        uint16_t id = rd16(x), len = rd16(x + 2);
        if ((size_t)len + 4 > xlen)
            return fz_error_set(FZ_EFORMAT, "%s: zip extra field overruns its entry", path);
        if (id == 0x0001) {
            const uint8_t *q = x + 4;
            size_t left = len;
            uint64_t *fields[3] = {usize, csize, loff};
            for (int i = 0; i < 3; i++) {
                if (*fields[i] != 0xFFFFFFFFu)
                    continue;
                if (left < 8)
                    return fz_error_set(FZ_EFORMAT, "%s: zip64 extra field too short", path);
                *fields[i] = rd64(q);
                q += 8;
                left -= 8;
            }
            return 0;
        }
        x += 4 + len;
        xlen -= 4 + (size_t)len;
    }
    return 0;
}

/* Central directory entry `i` at cd[*pos]: *e gets its name (owned),
 * size and CRC, *loff where its local header is; *pos moves past it. Only
 * stored, unencrypted records are accepted. */
static int central_entry(const char *path, const uint8_t *cd, size_t cd_size, size_t *pos,
                         uint64_t i, fz_zip_entry *e, uint64_t *loff)
{
    const uint8_t *c = cd + *pos;
    if (cd_size - *pos < CENTRAL_LEN || rd32(c) != SIG_CENTRAL)
        return fz_error_set(FZ_EFORMAT, "%s: bad zip central directory entry %llu", path,
                            (unsigned long long)i);
    uint16_t flags = rd16(c + 8), method = rd16(c + 10);
    uint64_t csize = rd32(c + 20), usize = rd32(c + 24);
    size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
    *loff = rd32(c + 42);
    if (cd_size - *pos - CENTRAL_LEN < nlen + xlen + clen)
        return fz_error_set(FZ_EFORMAT, "%s: zip central directory entry %llu overruns", path,
                            (unsigned long long)i);
    const uint8_t *name = c + CENTRAL_LEN;
    if (nlen == 0 || memchr(name, 0, nlen))
        return fz_error_set(FZ_EFORMAT, "%s: zip entry %llu has a bad name", path,
                            (unsigned long long)i);
    if (!(e->name = strndup((const char *)name, nlen)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = apply_zip64_extra(path, name + nlen, xlen, &usize, &csize, loff);
    if (rc)
        return rc;
    if (flags & 0x0041)
        return fz_error_set(FZ_EFORMAT, "%s: zip record '%s' is encrypted", path, e->name);
    if (method != 0 || csize != usize)
        return fz_error_set(FZ_EFORMAT, "%s: zip record '%s' is compressed (method %u)", path,
                            e->name, method);
    e->size = usize;
    e->crc32 = rd32(c + 16);
    *pos += CENTRAL_LEN + nlen + xlen + clen;
    return 0;
}

/* e->data_offset from the local header at `loff` (never the central copy),
 * checking that the record's data lies inside the file. */
static int local_data(int fd, const char *path, uint64_t file_size, uint64_t loff, fz_zip_entry *e)
{
    uint8_t lh[LOCAL_LEN];
    uint64_t lend, data_off, data_end;
    int rc;
    if (!fz_add_u64(loff, LOCAL_LEN, &lend) || lend > file_size)
        return fz_error_set(FZ_ERANGE, "%s: zip record '%s' header lies outside the file", path,
                            e->name);
    if ((rc = fz_pread_exact(fd, lh, LOCAL_LEN, loff, path)))
        return rc;
    if (rd32(lh) != SIG_LOCAL)
        return fz_error_set(FZ_EFORMAT, "%s: zip record '%s' has a bad local header", path,
                            e->name);
    if (rd16(lh + 8) != 0)
        return fz_error_set(FZ_EFORMAT, "%s: zip record '%s' is compressed (method %u)", path,
                            e->name, rd16(lh + 8));
    if (!fz_add_u64(lend, (uint64_t)rd16(lh + 26) + rd16(lh + 28), &data_off) ||
        !fz_add_u64(data_off, e->size, &data_end) || data_end > file_size)
        return fz_error_set(FZ_ERANGE, "%s: zip record '%s' lies outside the file", path, e->name);
    e->data_offset = data_off;
    return 0;
}

int fz_zip_read_dir(int fd, const char *path, uint64_t file_size, fz_zip_dir *out)
{
    eocd_info info = {0, 0, 0, 0};
    uint8_t *cd = NULL;
    fz_zip_dir d = {NULL, 0};
    uint64_t cd_end;
    int rc;

    out->v = NULL;
    out->n = 0;
    if ((rc = find_eocd(fd, path, file_size, &info)))
        return rc;
    if (!fz_add_u64(info.cd_off, info.cd_size, &cd_end) || cd_end > info.cd_limit)
        return fz_error_set(FZ_ERANGE, "%s: zip central directory lies outside the file", path);
    if (info.cd_size > MAX_CD_BYTES)
        return fz_error_set(FZ_ERANGE, "%s: zip central directory too large (%llu bytes)", path,
                            (unsigned long long)info.cd_size);
    if (info.entries > info.cd_size / CENTRAL_LEN)
        return fz_error_set(FZ_EFORMAT, "%s: zip claims %llu entries in %llu bytes", path,
                            (unsigned long long)info.entries, (unsigned long long)info.cd_size);
    cd = malloc(info.cd_size ? info.cd_size : 1);
    d.v = calloc(info.entries ? info.entries : 1, sizeof *d.v);
    if (!cd || !d.v) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    d.n = (size_t)info.entries; /* names NULL until read: fz_zip_dir_free frees what there is */
    if ((rc = fz_pread_exact(fd, cd, info.cd_size, info.cd_off, path)))
        goto done;
    size_t pos = 0;
    for (uint64_t i = 0; i < info.entries; i++) {
        uint64_t loff;
        if ((rc = central_entry(path, cd, (size_t)info.cd_size, &pos, i, &d.v[i], &loff)) ||
            (rc = local_data(fd, path, file_size, loff, &d.v[i])))
            goto done;
    }
    *out = d;
    d.v = NULL;
    d.n = 0;
done:
    fz_zip_dir_free(&d);
    free(cd);
    return rc;
}

void fz_zip_dir_free(fz_zip_dir *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->v[i].name);
    free(d->v);
    d->v = NULL;
    d->n = 0;
}

const fz_zip_entry *fz_zip_find(const fz_zip_dir *d, const char *name)
{
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->v[i].name, name) == 0)
            return &d->v[i];
    return NULL;
}

/* ---------------------------------------------------------------- writer */

/* Layout of a written archive.
 *
 * Every record is STORED and described twice (local header, central
 * directory) with the same CRC and sizes; there are no data descriptors, so
 * a reader that trusts either copy finds the same bytes. Each local header
 * ends with an extra field "FB" u16le(pad) + pad x 'Z' (the block torch
 * writes) sized so the data starts on a 64-byte boundary: mmap'd tensors are
 * then aligned for any element type. When a record's size reaches 0xFFFFFFFF
 * the local header also carries a zip64 block (both sizes, 20 bytes), placed
 * before the FB block and counted in the padding. The central directory
 * carries a zip64 block when the size or the local header offset needs one,
 * and the archive ends with zip64 EOCD + locator whenever anything needed
 * zip64 (or the entry count or directory size/offset overflow the classic
 * fields), then the classic EOCD. Times and dates are 0, so the bytes are a
 * pure function of names and sizes (and CRCs). */

#define ALIGN 64u
#define Z32 0xFFFFFFFFull

static bool is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

static uint32_t local_z64_len(const fz_zipw_rec *r)
{
    return r->size >= Z32 ? 20u : 0u;
}

static uint32_t central_z64_len(const fz_zipw_rec *r)
{
    uint32_t n = 0;
    if (r->size >= Z32)
        n += 16;
    if (r->header_off >= Z32)
        n += 8;
    return n ? n + 4 : 0;
}

static bool need_eocd64(const fz_zipw_layout *L, uint64_t cd_entries_len)
{
    if (L->n >= 0xFFFF || L->cd_off >= Z32 || cd_entries_len >= Z32)
        return true;
    for (size_t i = 0; i < L->n; i++)
        if (local_z64_len(&L->rec[i]) || central_z64_len(&L->rec[i]))
            return true;
    return false;
}

int fz_zipw_layout_new(fz_zipw_layout *L, const char *const *names, const uint64_t *sizes, size_t n)
{
    uint64_t off = 0, cd_entries = 0;
    size_t all = 0, at = 0;
    memset(L, 0, sizeof *L);
    for (size_t i = 0; i < n; i++) {
        size_t nlen = strlen(names[i]);
        if (nlen == 0 || nlen > 0xFFFF)
            return fz_error_set(FZ_ERANGE, "zip record name of %zu bytes", nlen);
        all += nlen + 1; /* cannot overflow: n names of at most 64 KiB in memory */
    }
    /* the names in one block: no allocation per record */
    L->rec = calloc(n ? n : 1, sizeof *L->rec);
    L->names = malloc(all ? all : 1);
    if (!L->rec || !L->names) {
        fz_zipw_free(L);
        return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        fz_zipw_rec *r = &L->rec[i];
        size_t nlen = strlen(names[i]);
        memcpy(L->names + at, names[i], nlen + 1);
        r->name = L->names + at;
        at += nlen + 1;
        L->n = i + 1;
        r->size = sizes[i];
        r->header_off = off;
        uint64_t fixed = off + LOCAL_LEN + nlen + local_z64_len(r) + 4; /* off < 2^63 here */
        uint32_t pad = (uint32_t)((ALIGN - fixed % ALIGN) % ALIGN);
        r->header_len = (uint32_t)(LOCAL_LEN + nlen + local_z64_len(r) + 4 + pad);
        r->data_off = off + r->header_len;
        if (!fz_add_u64(r->data_off, r->size, &off) || off >= (1ull << 62)) {
            fz_zipw_free(L);
            return fz_error_set(FZ_ERANGE, "zip record '%s': archive size overflows", names[i]);
        }
        cd_entries += CENTRAL_LEN + nlen + central_z64_len(r);
    }
    L->cd_off = off;
    L->cd_len = cd_entries + EOCD_LEN;
    if (need_eocd64(L, cd_entries))
        L->cd_len += EOCD64_LEN + LOC64_LEN;
    L->total_size = L->cd_off + L->cd_len;
    return 0;
}

void fz_zipw_free(fz_zipw_layout *L)
{
    free(L->names);
    free(L->rec);
    memset(L, 0, sizeof *L);
}

static uint16_t version_needed(const fz_zipw_rec *r)
{
    return (local_z64_len(r) || central_z64_len(r)) ? 45 : 20;
}

void fz_zipw_local_header(const fz_zipw_layout *L, size_t i, uint32_t crc, uint8_t *out)
{
    const fz_zipw_rec *r = &L->rec[i];
    size_t nlen = strlen(r->name);
    uint32_t z64 = local_z64_len(r);
    uint32_t pad = r->header_len - (uint32_t)(LOCAL_LEN + nlen + z64 + 4);
    uint32_t sz32 = z64 ? (uint32_t)Z32 : (uint32_t)r->size;
    uint8_t *p = out;
    p = wr32(p, SIG_LOCAL);
    p = wr16(p, version_needed(r));
    p = wr16(p, is_ascii(r->name) ? 0 : 0x0800);
    p = wr16(p, 0); /* STORED */
    p = wr16(p, 0); /* time */
    p = wr16(p, 0); /* date */
    p = wr32(p, crc);
    p = wr32(p, sz32);
    p = wr32(p, sz32);
    p = wr16(p, (uint16_t)nlen);
    p = wr16(p, (uint16_t)(r->header_len - LOCAL_LEN - nlen));
    memcpy(p, r->name, nlen);
    p += nlen;
    if (z64) {
        p = wr16(p, 0x0001);
        p = wr16(p, 16);
        p = wr64(p, r->size);
        p = wr64(p, r->size);
    }
    p = wr16(p, 0x4246); /* "FB" */
    p = wr16(p, (uint16_t)pad);
    memset(p, 'Z', pad);
}

void fz_zipw_central(const fz_zipw_layout *L, const uint32_t *crcs, uint8_t *out)
{
    uint8_t *p = out;
    for (size_t i = 0; i < L->n; i++) {
        const fz_zipw_rec *r = &L->rec[i];
        size_t nlen = strlen(r->name);
        uint32_t z64 = central_z64_len(r);
        bool big_size = r->size >= Z32, big_off = r->header_off >= Z32;
        p = wr32(p, SIG_CENTRAL);
        p = wr16(p, version_needed(r)); /* made by: MS-DOS host, same version */
        p = wr16(p, version_needed(r));
        p = wr16(p, is_ascii(r->name) ? 0 : 0x0800);
        p = wr16(p, 0);
        p = wr16(p, 0);
        p = wr16(p, 0);
        p = wr32(p, crcs[i]);
        p = wr32(p, big_size ? (uint32_t)Z32 : (uint32_t)r->size);
        p = wr32(p, big_size ? (uint32_t)Z32 : (uint32_t)r->size);
        p = wr16(p, (uint16_t)nlen);
        p = wr16(p, (uint16_t)z64);
        p = wr16(p, 0); /* comment */
        p = wr16(p, 0); /* disk */
        p = wr16(p, 0); /* internal attributes */
        p = wr32(p, 0); /* external attributes */
        p = wr32(p, big_off ? (uint32_t)Z32 : (uint32_t)r->header_off);
        memcpy(p, r->name, nlen);
        p += nlen;
        if (z64) {
            p = wr16(p, 0x0001);
            p = wr16(p, (uint16_t)(z64 - 4));
            if (big_size) {
                p = wr64(p, r->size);
                p = wr64(p, r->size);
            }
            if (big_off)
                p = wr64(p, r->header_off);
        }
    }
    uint64_t cd_entries = (uint64_t)(p - out);
    uint64_t n = L->n;
    if (need_eocd64(L, cd_entries)) {
        uint64_t z_off = L->cd_off + cd_entries;
        p = wr32(p, SIG_EOCD64);
        p = wr64(p, EOCD64_LEN - 12);
        p = wr16(p, 45);
        p = wr16(p, 45);
        p = wr32(p, 0);
        p = wr32(p, 0);
        p = wr64(p, n);
        p = wr64(p, n);
        p = wr64(p, cd_entries);
        p = wr64(p, L->cd_off);
        p = wr32(p, SIG_LOC64);
        p = wr32(p, 0);
        p = wr64(p, z_off);
        p = wr32(p, 1);
    }
    p = wr32(p, SIG_EOCD);
    p = wr16(p, 0);
    p = wr16(p, 0);
    p = wr16(p, n >= 0xFFFF ? 0xFFFF : (uint16_t)n);
    p = wr16(p, n >= 0xFFFF ? 0xFFFF : (uint16_t)n);
    p = wr32(p, cd_entries >= Z32 ? (uint32_t)Z32 : (uint32_t)cd_entries);
    p = wr32(p, L->cd_off >= Z32 ? (uint32_t)Z32 : (uint32_t)L->cd_off);
    wr16(p, 0);
}
