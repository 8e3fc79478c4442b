#include "formats/torchbin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/pickle.h"
#include "util/buf.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/io.h"

/* data.pkl of a state dict is a few bytes per tensor; this only bounds the
 * one allocation made from a size found in the file. */
#define MAX_PKL_BYTES (256u << 20)

/* A torch.save archive: its zip directory, indexed by name. */
typedef struct {
    fz_zip_dir dir;
    fz_hindex names; /* dir's entries by name (no name twice) */
    char *prefix;    /* "<archive>/": every entry's name starts with it */
    size_t plen;
    char *rname; /* scratch: the full name of a record looked up */
    size_t rcap;
} tb_archive;

#define MAX_KEY 4096 /* a storage key's length (torch's are decimal numbers) */

static void archive_close(tb_archive *a)
{
    free(a->rname);
    free(a->prefix);
    fz_hindex_free(&a->names);
    fz_zip_dir_free(&a->dir);
}

typedef struct {
    const fz_zip_dir *dir;
    const char *name;
} entry_ctx;

static bool entry_is(const void *ctx, uint32_t k)
{
    const entry_ctx *c = ctx;
    return strcmp(c->dir->v[k].name, c->name) == 0;
}

static uint32_t entry_find(const tb_archive *a, const char *name, uint64_t h)
{
    entry_ctx c = {&a->dir, name};
    return fz_hindex_find(&a->names, h, entry_is, &c);
}

/* The record <prefix><name> (name at most MAX_KEY + 16 bytes), or NULL;
 * a->rname holds its full name. */
static const fz_zip_entry *archive_find(tb_archive *a, const char *name)
{
    size_t n = strlen(name);
    if (a->plen + n >= a->rcap)
        return NULL;
    memcpy(a->rname, a->prefix, a->plen);
    memcpy(a->rname + a->plen, name, n + 1);
    uint32_t k = entry_find(a, a->rname, fz_hindex_hash(a->rname, a->plen + n));
    return k == UINT32_MAX ? NULL : &a->dir.v[k];
}

/* Read the zip directory of a torch.save file and index it: one prefix
 * (the first entry's name up to its first '/') for every entry, no name
 * twice. */
static int archive_open(int fd, const char *path, tb_archive *a)
{
    struct stat st;
    uint8_t magic[4];
    int rc;
    if (fstat(fd, &st) < 0)
        return fz_error_set(FZ_EIO, "%s: stat failed: %s", path, strerror(errno));
    if (st.st_size < 4 || (rc = fz_pread_exact(fd, magic, 4, 0, path)) ||
        memcmp(magic, "PK\3\4", 4))
        return fz_error_set(FZ_EFORMAT,
                            "%s: not a torch zip archive (legacy torch.save format "
                            "is not supported)",
                            path);
    if ((rc = fz_zip_read_dir(fd, path, (uint64_t)st.st_size, &a->dir)))
        return rc;
    const fz_zip_dir *d = &a->dir;
    if (d->n == 0)
        return fz_error_set(FZ_EFORMAT, "%s: empty zip archive", path);
    const char *slash = strchr(d->v[0].name, '/');
    if (!slash || slash == d->v[0].name)
        return fz_error_set(FZ_EFORMAT, "%s: file in archive is not in a subdirectory: '%s'", path,
                            d->v[0].name);
    a->plen = (size_t)(slash - d->v[0].name) + 1;
    a->rcap = a->plen + MAX_KEY + 32;
    if (d->n >= UINT32_MAX || !(a->prefix = strndup(d->v[0].name, a->plen)) ||
        fz_hindex_init(&a->names, d->n) || !(a->rname = malloc(a->rcap)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (size_t i = 0; i < d->n; i++) {
        const char *name = d->v[i].name;
        if (strncmp(name, a->prefix, a->plen))
            return fz_error_set(FZ_EFORMAT, "%s: archive entry '%s' is not under '%s'", path, name,
                                a->prefix);
        uint64_t h = fz_hindex_hash(name, strlen(name));
        if (entry_find(a, name, h) != UINT32_MAX)
            return fz_error_set(FZ_EFORMAT, "%s: archive entry '%s' appears twice", path, name);
        if ((rc = fz_hindex_put(&a->names, h, (uint32_t)i)))
            return rc;
    }
    return 0;
}

/* <prefix>byteorder: "little" or "big" (torch.save writes the machine's
 * order; a file without the record is little-endian, as torch.load assumes).
 * Tensor bytes are served as stored, so only little-endian is accepted. */
static int check_byteorder(int fd, const char *path, tb_archive *a)
{
    char bo[16] = "", esc[80];
    const fz_zip_entry *e = archive_find(a, "byteorder");
    if (!e)
        return 0;
    int rc = e->size < sizeof bo ? fz_pread_exact(fd, bo, e->size, e->data_offset, path) : 0;
    if (rc)
        return rc;
    if (e->size == 6 && !memcmp(bo, "little", 6))
        return 0;
    if (e->size == 3 && !memcmp(bo, "big", 3))
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensors are stored big-endian (record '%s' says "
                            "\"big\"); fzfs reads little-endian checkpoints only: load it with "
                            "torch and save it again on a little-endian machine",
                            path, a->rname);
    return fz_error_set(FZ_EFORMAT,
                        "%s: record '%s' holds '%s', not \"little\" or \"big\": "
                        "the file is corrupt",
                        path, a->rname,
                        e->size < sizeof bo ? fz_escape(bo, e->size, esc, sizeof esc)
                                            : "(too long)");
}

/* Run <prefix>data.pkl: the state dict's tensors, in pickle order. */
static int read_state_dict(int fd, const char *path, tb_archive *a, fz_pickle_dict *pd)
{
    const fz_zip_entry *pe = archive_find(a, "data.pkl");
    if (!pe)
        return fz_error_set(FZ_EFORMAT, "%s: archive has no '%s'", path, a->rname);
    if (pe->size > MAX_PKL_BYTES)
        return fz_error_set(FZ_ERANGE, "%s: data.pkl is %llu bytes", path,
                            (unsigned long long)pe->size);
    uint8_t *pkl = malloc(pe->size ? pe->size : 1);
    if (!pkl)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = fz_pread_exact(fd, pkl, pe->size, pe->data_offset, path);
    if (rc == 0)
        rc = fz_pickle_read_state_dict(pkl, pe->size, path, pd);
    free(pkl);
    return rc;
}

/* Each tensor of the pickle with its storage record <prefix>data/<key>:
 * the file's tensor list. Names move from pd to *got. */
static int resolve_storages(const char *path, tb_archive *a, fz_pickle_dict *pd,
                            fz_tensor_list *got)
{
    char key[MAX_KEY + 8];
    int rc;
    for (size_t i = 0; i < pd->n; i++) {
        fz_pickle_tensor *p = &pd->v[i];
        if (strlen(p->key) > MAX_KEY)
            return fz_error_set(FZ_EFORMAT, "%s: tensor '%s' has an overlong storage key", path,
                                p->name);
        memcpy(key, "data/", 5);
        strcpy(key + 5, p->key);
        const fz_zip_entry *e = archive_find(a, key);
        if (!e)
            return fz_error_set(FZ_EFORMAT, "%s: tensor '%s': storage record '%s' is missing", path,
                                p->name, a->rname);
        if (e->size != p->storage_nbytes)
            return fz_error_set(FZ_EFORMAT,
                                "%s: tensor '%s': storage record '%s' holds %llu bytes "
                                "but the pickle says %llu",
                                path, p->name, a->rname, (unsigned long long)e->size,
                                (unsigned long long)p->storage_nbytes);
        fz_tensor t = {
            .name = p->name,
            .dtype = p->dtype,
            .ndim = p->ndim,
            .storage_offset = p->storage_offset,
            .data_offset = e->data_offset,
            .storage_nbytes = e->size,
            .storage_id = (uint32_t)(e - a->dir.v), /* one id per record: equal keys share it */
        };
        memcpy(t.shape, p->shape, sizeof t.shape);
        memcpy(t.stride, p->stride, sizeof t.stride);
        if ((rc = fz_tensor_check_bounds(&t, path)) || (rc = fz_tensor_list_push(got, &t)))
            return rc;
        p->name = NULL; /* now got's */
    }
    return 0;
}

int fz_torchbin_read(int fd, const char *path, fz_tensor_list *out)
{
    return fz_torchbin_read_stem(fd, path, out, NULL);
}

int fz_torchbin_read_stem(int fd, const char *path, fz_tensor_list *out, char **stem)
{
    tb_archive a = {0};
    fz_pickle_dict pd = {NULL, 0};
    fz_tensor_list got = {0};
    int rc;
    if ((rc = archive_open(fd, path, &a)) == 0 && (rc = check_byteorder(fd, path, &a)) == 0 &&
        (rc = read_state_dict(fd, path, &a, &pd)) == 0 &&
        (rc = resolve_storages(path, &a, &pd, &got)) == 0) {
        /* the prefix without its '/' (archive_open: every entry is under it) */
        if (stem && !(*stem = strndup(a.prefix, a.plen - 1)))
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
        else
            rc = fz_tensor_list_append(out, &got);
        if (rc && stem) {
            free(*stem);
            *stem = NULL;
        }
    }
    fz_tensor_list_free(&got);
    fz_pickle_dict_free(&pd);
    archive_close(&a);
    return rc;
}

int fz_torchbin_pickle(const fz_torchbin_entry *e, size_t n, const uint64_t *record_nbytes,
                       size_t nrecords, fz_buf *out)
{
    fz_pickle_tensor *pt = calloc(n ? n : 1, sizeof *pt);
    char(*keys)[24] = calloc(n ? n : 1, sizeof *keys);
    int *rec_dt = malloc((nrecords ? nrecords : 1) * sizeof *rec_dt);
    int rc = 0;
    if (!pt || !keys || !rec_dt) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t r = 0; r < nrecords; r++)
        rec_dt[r] = -1;
    for (size_t i = 0; i < n; i++) {
        const fz_torchbin_entry *x = &e[i];
        uint64_t numel, nbytes;
        size_t es = fz_dtype_size(x->dtype);
        if (x->record >= nrecords || es == 0 || x->ndim < 0 || x->ndim > FZ_MAX_DIMS) {
            rc = fz_error_set(FZ_EINVAL, "tensor '%s': bad record, dtype or rank", x->name);
            goto done;
        }
        if (rec_dt[x->record] >= 0 && rec_dt[x->record] != (int)x->dtype) {
            rc = fz_error_set(FZ_EINVAL, "tensor '%s': storage %u is viewed with two dtypes",
                              x->name, x->record);
            goto done;
        }
        rec_dt[x->record] = (int)x->dtype;
        if (!fz_prod_u64(x->shape, x->ndim, &numel) || !fz_mul_u64(numel, es, &nbytes) ||
            nbytes > record_nbytes[x->record] || record_nbytes[x->record] % es) {
            rc = fz_error_set(FZ_EINVAL, "tensor '%s' does not fit its storage record %u", x->name,
                              x->record);
            goto done;
        }
        fz_pickle_tensor *p = &pt[i];
        fz_fmt_dec(keys[i], x->record);
        p->name = (char *)x->name;
        p->key = keys[i];
        p->dtype = x->dtype;
        p->storage_nbytes = record_nbytes[x->record];
        p->storage_offset = 0;
        p->ndim = x->ndim;
        uint64_t stride = 1;
        for (int d = x->ndim - 1; d >= 0; d--) {
            p->shape[d] = x->shape[d];
            p->stride[d] = (int64_t)stride;
            if (d > 0 && (!fz_mul_u64(stride, x->shape[d] ? x->shape[d] : 1, &stride) ||
                          stride > INT64_MAX)) {
                rc = fz_error_set(FZ_EINVAL, "tensor '%s': strides overflow", x->name);
                goto done;
            }
        }
    }
    rc = fz_pickle_write_state_dict(pt, n, out);
done:
    free(pt);
    free(keys);
    free(rec_dt);
    return rc;
}

const uint8_t fz_torchbin_byteorder[6] = {'l', 'i', 't', 't', 'l', 'e'};
const uint8_t fz_torchbin_version[2] = {'3', '\n'};

fz_torchbin_role fz_torchbin_record_role(size_t i, size_t nrecords, size_t *data)
{
    if (i == 0)
        return FZ_TB_PICKLE;
    if (i == 1)
        return FZ_TB_BYTEORDER;
    if (i < nrecords + 2) {
        if (data)
            *data = i - 2;
        return FZ_TB_DATA;
    }
    return FZ_TB_VERSION;
}

int fz_torchbin_layout(fz_zipw_layout *L, const char *stem, uint64_t pkl_len,
                       const uint64_t *record_nbytes, size_t nrecords)
{
    size_t n = nrecords + 3, slen = strlen(stem), room = slen + 40;
    char **names = NULL, *text = NULL;
    uint64_t *sizes = NULL;
    int rc = 0;
    memset(L, 0, sizeof *L);
    if (slen == 0 || slen > 4096 || strchr(stem, '/'))
        return fz_error_set(FZ_EINVAL, "bad archive name '%s'", stem);
    if (nrecords > SIZE_MAX / 2 / room)
        return fz_error_set(FZ_ERANGE, "too many records");
    /* every name in one block (the layout copies them): no allocation per record */
    names = calloc(n, sizeof *names);
    sizes = calloc(n, sizeof *sizes);
    text = malloc(n * room);
    if (!names || !sizes || !text) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        char *s = names[i] = text + i * room;
        size_t k = 0;
        /* "STEM/..." by hand: snprintf was most of the layout's cost at 100k records */
        memcpy(s, stem, slen);
        char *tail = s + slen;
        switch (fz_torchbin_record_role(i, nrecords, &k)) {
        case FZ_TB_PICKLE:
            strcpy(tail, "/data.pkl");
            sizes[i] = pkl_len;
            break;
        case FZ_TB_BYTEORDER:
            strcpy(tail, "/byteorder");
            sizes[i] = sizeof fz_torchbin_byteorder;
            break;
        case FZ_TB_DATA:
            memcpy(tail, "/data/", 6);
            fz_fmt_dec(tail + 6, k);
            sizes[i] = record_nbytes[k];
            break;
        case FZ_TB_VERSION:
            strcpy(tail, "/version");
            sizes[i] = sizeof fz_torchbin_version;
            break;
        }
    }
    rc = fz_zipw_layout_new(L, (const char *const *)names, sizes, n);
done:
    free(text);
    free(names);
    free(sizes);
    return rc;
}
