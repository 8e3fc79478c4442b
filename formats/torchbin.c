#include "formats/torchbin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/pickle.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/io.h"

/* data.pkl of a state dict is a few bytes per tensor; this only bounds the
 * one allocation made from a size found in the file. */
#define MAX_PKL_BYTES (256u << 20)

static int cmp_entry(const void *a, const void *b)
{
    return strcmp((*(const fz_zip_entry *const *)a)->name, (*(const fz_zip_entry *const *)b)->name);
}

static const fz_zip_entry *find_sorted(const fz_zip_entry **idx, size_t n, const char *name)
{
    fz_zip_entry key = {.name = (char *)name};
    const fz_zip_entry *kp = &key;
    const fz_zip_entry **hit = bsearch(&kp, idx, n, sizeof *idx, cmp_entry);
    return hit ? *hit : NULL;
}

/* <prefix>byteorder: "little" or "big" (torch.save writes the machine's
 * order; a file without the record is little-endian, as torch.load assumes).
 * Tensor bytes are served as stored, so only little-endian is accepted. */
static int check_byteorder(int fd, const char *path, const fz_zip_entry **idx, size_t n,
                           const char *prefix, char *rname)
{
    char bo[16] = "", esc[80];
    snprintf(rname, strlen(prefix) + 32, "%sbyteorder", prefix);
    const fz_zip_entry *e = find_sorted(idx, n, rname);
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
                            path, rname);
    return fz_error_set(
        FZ_EFORMAT,
        "%s: record '%s' holds '%s', not \"little\" or \"big\": "
        "the file is corrupt",
        path, rname, e->size < sizeof bo ? fz_escape(bo, e->size, esc, sizeof esc) : "(too long)");
}

int fz_torchbin_read(int fd, const char *path, fz_tensor_list *out)
{
    fz_zip_dir dir = {NULL, 0};
    fz_pickle_dict pd = {NULL, 0};
    const fz_zip_entry **idx = NULL;
    uint8_t *pkl = NULL;
    char *prefix = NULL, *rname = NULL;
    fz_tensor *tv = NULL;
    size_t nt = 0;
    struct stat st;
    int rc;

    if (fstat(fd, &st) < 0)
        return fz_error_set(FZ_EIO, "%s: stat failed: %s", path, strerror(errno));
    uint8_t magic[4];
    if (st.st_size < 4 || (rc = fz_pread_exact(fd, magic, 4, 0, path)) ||
        memcmp(magic, "PK\3\4", 4))
        return fz_error_set(FZ_EFORMAT,
                            "%s: not a torch zip archive (legacy torch.save format "
                            "is not supported)",
                            path);
    if ((rc = fz_zip_read_dir(fd, path, (uint64_t)st.st_size, &dir)))
        return rc;
    if (dir.n == 0) {
        rc = fz_error_set(FZ_EFORMAT, "%s: empty zip archive", path);
        goto done;
    }

    /* The archive prefix: the first entry's name up to its first '/'. */
    const char *slash = strchr(dir.v[0].name, '/');
    if (!slash || slash == dir.v[0].name) {
        rc = fz_error_set(FZ_EFORMAT, "%s: file in archive is not in a subdirectory: '%s'", path,
                          dir.v[0].name);
        goto done;
    }
    size_t plen = (size_t)(slash - dir.v[0].name) + 1;
    if (!(prefix = strndup(dir.v[0].name, plen)) || !(idx = calloc(dir.n, sizeof *idx))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < dir.n; i++) {
        if (strncmp(dir.v[i].name, prefix, plen)) {
            rc = fz_error_set(FZ_EFORMAT, "%s: archive entry '%s' is not under '%s'", path,
                              dir.v[i].name, prefix);
            goto done;
        }
        idx[i] = &dir.v[i];
    }
    qsort(idx, dir.n, sizeof *idx, cmp_entry);
    for (size_t i = 1; i < dir.n; i++)
        if (!strcmp(idx[i - 1]->name, idx[i]->name)) {
            rc = fz_error_set(FZ_EFORMAT, "%s: archive entry '%s' appears twice", path,
                              idx[i]->name);
            goto done;
        }

    if (!(rname = malloc(plen + 32 + 4096))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = check_byteorder(fd, path, idx, dir.n, prefix, rname)))
        goto done;

    /* Run data.pkl. */
    snprintf(rname, plen + 32, "%sdata.pkl", prefix);
    const fz_zip_entry *pe = find_sorted(idx, dir.n, rname);
    if (!pe) {
        rc = fz_error_set(FZ_EFORMAT, "%s: archive has no '%s'", path, rname);
        goto done;
    }
    if (pe->size > MAX_PKL_BYTES) {
        rc = fz_error_set(FZ_ERANGE, "%s: data.pkl is %llu bytes", path,
                          (unsigned long long)pe->size);
        goto done;
    }
    if (!(pkl = malloc(pe->size ? pe->size : 1))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = fz_pread_exact(fd, pkl, pe->size, pe->data_offset, path)) ||
        (rc = fz_pickle_read_state_dict(pkl, pe->size, path, &pd)))
        goto done;

    /* Resolve each tensor's storage record. */
    if (!(tv = calloc(pd.n ? pd.n : 1, sizeof *tv))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < pd.n; i++) {
        fz_pickle_tensor *p = &pd.v[i];
        if (strlen(p->key) > 4096) {
            rc = fz_error_set(FZ_EFORMAT, "%s: tensor '%s' has an overlong storage key", path,
                              p->name);
            goto done;
        }
        snprintf(rname, plen + 32 + 4096, "%sdata/%s", prefix, p->key);
        const fz_zip_entry *e = find_sorted(idx, dir.n, rname);
        if (!e) {
            rc = fz_error_set(FZ_EFORMAT, "%s: tensor '%s': storage record '%s' is missing", path,
                              p->name, rname);
            goto done;
        }
        if (e->size != p->storage_nbytes) {
            rc = fz_error_set(FZ_EFORMAT,
                              "%s: tensor '%s': storage record '%s' holds %llu bytes "
                              "but the pickle says %llu",
                              path, p->name, rname, (unsigned long long)e->size,
                              (unsigned long long)p->storage_nbytes);
            goto done;
        }
        fz_tensor *t = &tv[nt++];
        t->name = p->name;
        p->name = NULL;
        t->dtype = p->dtype;
        t->ndim = p->ndim;
        memcpy(t->shape, p->shape, sizeof t->shape);
        memcpy(t->stride, p->stride, sizeof t->stride);
        t->storage_offset = p->storage_offset;
        t->data_offset = e->data_offset;
        t->storage_nbytes = e->size;
        t->storage_id = (uint32_t)(e - dir.v); /* one id per record: equal keys share it */
        if ((rc = fz_tensor_check_bounds(t, path)))
            goto done;
    }

    /* Hand over: make room first so nothing can fail half way. */
    if (out->cap - out->n < nt) {
        size_t cap = out->n + nt;
        fz_tensor *v = realloc(out->v, cap * sizeof *v);
        if (!v) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        out->v = v;
        out->cap = cap;
    }
    for (size_t i = 0; i < nt; i++)
        fz_tensor_list_push(out, &tv[i]);
    nt = 0;
done:
    for (size_t i = 0; i < nt; i++)
        free(tv[i].name);
    free(tv);
    fz_pickle_dict_free(&pd);
    free(pkl);
    free(rname);
    free(prefix);
    free(idx);
    fz_zip_dir_free(&dir);
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
        snprintf(keys[i], sizeof keys[i], "%u", x->record);
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
    size_t n = nrecords + 3, slen = strlen(stem);
    char **names = NULL;
    uint64_t *sizes = NULL;
    int rc = 0;
    memset(L, 0, sizeof *L);
    if (slen == 0 || slen > 4096 || strchr(stem, '/'))
        return fz_error_set(FZ_EINVAL, "bad archive name '%s'", stem);
    if (nrecords > SIZE_MAX / 2 / sizeof *names)
        return fz_error_set(FZ_ERANGE, "too many records");
    names = calloc(n, sizeof *names);
    sizes = calloc(n, sizeof *sizes);
    if (!names || !sizes) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        char *s = malloc(slen + 40);
        if (!(names[i] = s)) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        size_t k = 0;
        switch (fz_torchbin_record_role(i, nrecords, &k)) {
        case FZ_TB_PICKLE:
            snprintf(s, slen + 40, "%s/data.pkl", stem), sizes[i] = pkl_len;
            break;
        case FZ_TB_BYTEORDER:
            snprintf(s, slen + 40, "%s/byteorder", stem);
            sizes[i] = sizeof fz_torchbin_byteorder;
            break;
        case FZ_TB_DATA:
            snprintf(s, slen + 40, "%s/data/%zu", stem, k), sizes[i] = record_nbytes[k];
            break;
        case FZ_TB_VERSION:
            snprintf(s, slen + 40, "%s/version", stem);
            sizes[i] = sizeof fz_torchbin_version;
            break;
        }
    }
    rc = fz_zipw_layout_new(L, (const char *const *)names, sizes, n);
done:
    if (names)
        for (size_t i = 0; i < n; i++)
            free(names[i]);
    free(names);
    free(sizes);
    return rc;
}
