/* verify: the weight files. Every safetensors file and every torch .bin
 * that is model weights has a well-formed header (read by formats/, the
 * pickle only through its restricted machine); each *.index.json matches
 * the files and tensors present; then each set of model weights (an index's
 * files, or model.safetensors / pytorch_model.bin alone) gets the model
 * checks of model.c. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/safetensors.h"
#include "formats/torchbin.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/vec.h"
#include "verify/internal.h"

typedef struct {
    char *name;       /* as referenced (root-relative) */
    bool present, ok; /* the file exists; its header was read */
    bool outside;     /* the name leads outside the directory */
    bool st;          /* safetensors (else torch zip) */
    fz_tensor_list t;
    size_t *byname; /* tensor indices sorted by name */
} wfile;

/* Every file read so far; each wfile stays where it is (sets point at them). */
typedef struct {
    wfile **v;
    size_t n, cap;
} wfiles;

static bool is_weight_name(const char *n)
{
    return fz_vends_with(n, ".safetensors") ||
           (strncmp(n, "pytorch_model", 13) == 0 && fz_vends_with(n, ".bin"));
}

static int cmp_byname(const void *a, const void *b, void *base)
{
    const fz_tensor *t = base;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static int cmp_storage(const void *a, const void *b)
{
    const fz_tensor *x = *(const fz_tensor *const *)a, *y = *(const fz_tensor *const *)b;
    return x->storage_id < y->storage_id ? -1 : x->storage_id > y->storage_id;
}

static const fz_tensor *find_in(const wfile *f, const char *name)
{
    size_t lo = 0, hi = f->ok ? f->t.n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int k = strcmp(f->t.v[f->byname[mid]].name, name);
        if (k == 0)
            return &f->t.v[f->byname[mid]];
        if (k < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Read the header of `name` once (a problem when it is malformed). */
static wfile *get_file(fz_vctx *c, wfiles *F, const char *name)
{
    for (size_t i = 0; i < F->n; i++)
        if (strcmp(F->v[i]->name, name) == 0)
            return F->v[i];
    int err = FZ_VEC_RESERVE(F->v, F->cap, F->n + 1);
    if (err) {
        c->err = err;
        return NULL;
    }
    wfile *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name))) {
        free(f);
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        return NULL;
    }
    F->v[F->n++] = f;
    f->st = fz_vends_with(name, ".safetensors");
    char *phys = NULL;
    fz_vkind kind;
    uint64_t size;
    int fd = -1, rc;
    fz_vres res = fz_vresolve(c, name, &phys, &kind, &size);
    f->outside = res == FZ_VR_ESCAPES;
    if (res != FZ_VR_OK || kind != FZ_VK_FILE)
        goto done;
    f->present = true;
    if (!f->st && !fz_vends_with(name, ".bin") && !fz_vends_with(name, ".pt") &&
        !fz_vends_with(name, ".pth")) {
        fz_vfail(c, name, "not a weight file type transformers reads (.safetensors or .bin)");
        goto done;
    }
    if ((rc = c->fs->open_fd(c->fs->ctx, phys, &fd)) == 0)
        rc = f->st ? fz_st_read(fd, name, size, &f->t) : fz_torchbin_read(fd, name, &f->t);
    if (rc == FZ_ENOMEM) {
        c->err = rc;
    } else if (rc) {
        fz_vfail_error(c, name);
    } else if (!(f->byname = malloc((f->t.n ? f->t.n : 1) * sizeof *f->byname))) {
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
    } else {
        for (size_t i = 0; i < f->t.n; i++)
            f->byname[i] = i;
        qsort_r(f->byname, f->t.n, sizeof *f->byname, cmp_byname, f->t.v);
        f->ok = true;
        for (size_t i = 1; i < f->t.n; i++)
            if (!strcmp(f->t.v[f->byname[i]].name, f->t.v[f->byname[i - 1]].name))
                fz_vfail(c, name, "tensor '%s' is stored twice", f->t.v[f->byname[i]].name);
    }
done:
    if (fd >= 0)
        close(fd);
    free(phys);
    return f;
}

/* `name` is "<stem>-NNNNN-of-NNNNN<ext>"; *stem_len = its stem's length. */
static bool shard_name(const char *name, const char *ext, size_t *stem_len)
{
    size_t l = strlen(name), e = strlen(ext);
    if (l < e + 15 || strcmp(name + l - e, ext) != 0)
        return false;
    const char *p = name + l - e - 15; /* "-NNNNN-of-NNNNN" */
    for (int i = 0; i < 15; i++) {
        bool digit = p[i] >= '0' && p[i] <= '9';
        if ((i == 0 || i == 6 || i == 9) ? p[i] != '-'
            : i == 7                     ? p[i] != 'o'
            : i == 8                     ? p[i] != 'f'
                                         : !digit)
            return false;
    }
    *stem_len = (size_t)(p - name);
    return true;
}

static bool tensor_nbytes(const fz_tensor *t, uint64_t *out)
{
    uint64_t n;
    return fz_tensor_numel(t, &n) && fz_mul_u64(n, fz_dtype_size(t->dtype), out);
}

/* total_size: the byte count of the set's tensors, counted as any of the
 * writers in use count it (each storage once; each name's storage; each
 * name's elements). */
static void check_total(fz_vctx *c, const char *iname, const json_t *meta, wfile **set, size_t nset,
                        const json_t *wm)
{
    const json_t *ts = json_object_get(meta, "total_size");
    int64_t total;
    uint64_t once = 0, per_name = 0, elems = 0, b;
    bool ok = true;
    if (!ts)
        return;
    if (!fz_vjson_uint(ts, &total)) {
        fz_vfail(c, iname, "metadata.total_size is not a byte count");
        return;
    }
    for (size_t k = 0; k < nset; k++) {
        const wfile *f = set[k];
        if (!f->ok)
            return; /* already reported */
        const fz_tensor **by = malloc((f->t.n ? f->t.n : 1) * sizeof *by);
        if (!by) {
            c->err = fz_error_set(FZ_ENOMEM, "out of memory");
            return;
        }
        for (size_t i = 0; i < f->t.n; i++)
            by[i] = &f->t.v[i];
        qsort(by, f->t.n, sizeof *by, cmp_storage);
        for (size_t i = 0; i < f->t.n; i++)
            if (i == 0 || by[i]->storage_id != by[i - 1]->storage_id)
                ok &= fz_add_u64(once, by[i]->storage_nbytes, &once);
        free(by);
        for (size_t i = 0; i < f->t.n; i++) {
            const fz_tensor *t = &f->t.v[i];
            const json_t *m = json_object_get(wm, t->name);
            if (json_is_string(m) && !strcmp(json_string_value(m), f->name)) {
                ok &= fz_add_u64(per_name, t->storage_nbytes, &per_name);
                ok &= tensor_nbytes(t, &b) && fz_add_u64(elems, b, &elems);
            }
        }
    }
    uint64_t want = (uint64_t)total;
    if (ok && want != once && want != per_name && want != elems)
        fz_vfail(c, iname,
                 "metadata.total_size is %llu but the tensors it maps hold %llu "
                 "bytes",
                 (unsigned long long)want, (unsigned long long)once);
}

/* One index against the files and tensors present; *set gets its files. */
static void check_index(fz_vctx *c, wfiles *F, const char *iname, const json_t *idx,
                        wfile ***set_out, size_t *nset_out)
{
    const json_t *wm = json_object_get(idx, "weight_map");
    const json_t *meta = json_object_get(idx, "metadata");
    const char *key;
    const json_t *val;
    wfile **set = NULL;
    size_t nset = 0, capset = 0, absent = 0, unlisted = 0;
    *set_out = NULL;
    *nset_out = 0;
    if (!json_is_object(wm)) {
        fz_vfail(c, iname, "no \"weight_map\" object: transformers cannot load the shards");
        return;
    }
    if (!json_is_object(meta))
        fz_vfail(c, iname, "no \"metadata\" object: transformers reads index[\"metadata\"]");
    json_object_foreach((json_t *)wm, key, val)
    {
        if (!json_is_string(val)) {
            fz_vfail(c, iname, "weight_map['%s'] is not a file name", key);
            continue;
        }
        wfile *f = get_file(c, F, json_string_value(val));
        if (!f)
            return;
        bool seen = false;
        for (size_t k = 0; k < nset && !seen; k++)
            seen = set[k] == f;
        if (!seen) {
            int err = FZ_VEC_RESERVE(set, capset, nset + 1);
            if (err) {
                c->err = err;
                free(set);
                return;
            }
            set[nset++] = f;
            if (!f->present)
                fz_vfail(c, iname, "weight_map names '%s' (for '%s' and maybe more), which %s",
                         f->name, key, f->outside ? "is outside the directory" : "does not exist");
        }
        if (f->ok && !find_in(f, key) && absent++ < FZ_VERIFY_LIST_MAX)
            fz_vfail(c, iname, "weight_map puts '%s' in %s, which has no such tensor", key,
                     f->name);
    }
    if (absent > FZ_VERIFY_LIST_MAX)
        fz_vfail(c, iname, "... and %zu more tensors missing from the files weight_map names",
                 absent - FZ_VERIFY_LIST_MAX);
    for (size_t k = 0; k < nset; k++)
        for (size_t i = 0; set[k]->ok && i < set[k]->t.n; i++) {
            const char *tn = set[k]->t.v[i].name;
            const json_t *m = json_object_get(wm, tn);
            if ((!json_is_string(m) || strcmp(json_string_value(m), set[k]->name)) &&
                unlisted++ < FZ_VERIFY_LIST_MAX)
                fz_vfail(c, set[k]->name, "tensor '%s' is not mapped to this file by %s", tn,
                         iname);
        }
    if (unlisted > FZ_VERIFY_LIST_MAX)
        fz_vfail(c, iname, "... and %zu more stored tensors its weight_map does not map there",
                 unlisted - FZ_VERIFY_LIST_MAX);
    if (json_is_object(meta))
        check_total(c, iname, meta, set, nset, wm);
    *set_out = set;
    *nset_out = nset;
}

static bool in_set(wfile **set, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (!strcmp(set[k]->name, name))
            return true;
    return false;
}

/* The model checks over the tensors of `set` (a name in two files is a
 * problem: loaders take one of them). */
static void model_set(fz_vctx *c, wfile **set, size_t nset, const json_t *sharing)
{
    size_t n = 0;
    for (size_t k = 0; k < nset; k++)
        if (set[k]->ok)
            n += set[k]->t.n;
    fz_vtensor *all = malloc((n ? n : 1) * sizeof *all);
    if (!all) {
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        return;
    }
    n = 0;
    for (size_t k = 0; k < nset; k++)
        for (size_t i = 0; set[k]->ok && i < set[k]->t.n; i++) {
            const fz_tensor *t = &set[k]->t.v[i];
            bool dup = false;
            for (size_t j = 0; j < k && !dup; j++)
                if (find_in(set[j], t->name)) {
                    dup = true;
                    fz_vfail(c, set[k]->name, "tensor '%s' is also stored in %s", t->name,
                             set[j]->name);
                }
            if (!dup)
                all[n++] = (fz_vtensor){t, set[k]->name};
        }
    fz_vcheck_model(c, all, n, sharing);
    free(all);
}

static const char *const model_files[] = {"model.safetensors", "pytorch_model.bin", NULL};
static const char *const model_indexes[] = {"model.safetensors.index.json",
                                            "pytorch_model.bin.index.json", NULL};

static bool listed(const char *const *l, const char *name)
{
    for (; *l; l++)
        if (!strcmp(*l, name))
            return true;
    return false;
}

void fz_vcheck_weights(fz_vctx *c)
{
    wfiles F = {0};
    wfile **refd = NULL; /* files some index references */
    size_t nrefd = 0, caprefd = 0;
    bool any = false;
    for (size_t i = 0; i < c->nroot && !c->err; i++) {
        const char *n = c->root[i];
        if (!fz_vends_with(n, ".safetensors.index.json") && !fz_vends_with(n, ".bin.index.json"))
            continue;
        json_t *idx = fz_vload_json(c, n);
        wfile **set = NULL;
        size_t nset = 0;
        any = true;
        if (idx)
            check_index(c, &F, n, idx, &set, &nset);
        /* shards of this index's naming that it does not reference */
        const char *e = fz_vends_with(n, ".safetensors.index.json") ? ".safetensors" : ".bin";
        size_t stem = strlen(n) - strlen(e) - strlen(".index.json"), sl;
        for (size_t k = 0; idx && k < c->nroot && !c->err; k++)
            if (shard_name(c->root[k], e, &sl) && sl == stem && !strncmp(c->root[k], n, sl) &&
                !in_set(set, nset, c->root[k]))
                fz_vfail(c, c->root[k],
                         "a shard that %s does not reference (loaders "
                         "ignore it, and the index may be stale)",
                         n);
        if (listed(model_indexes, n) && idx && !c->err)
            model_set(c, set, nset,
                      json_object_get(json_object_get(idx, "metadata"), "param_sharing"));
        int err = FZ_VEC_RESERVE(refd, caprefd, nrefd + nset);
        if (err) {
            c->err = err;
        } else if (nset) {
            memcpy(refd + nrefd, set, nset * sizeof *set);
            nrefd += nset;
        }
        free(set);
        json_decref(idx);
    }
    /* weight files no index references: headers, stray shards, the model */
    for (size_t i = 0; i < c->nroot && !c->err; i++) {
        const char *n = c->root[i];
        size_t sl;
        if (!is_weight_name(n) || in_set(refd, nrefd, n))
            continue;
        wfile *f = get_file(c, &F, n);
        if (!f || !f->present)
            continue;
        any = true;
        bool shard = shard_name(n, fz_vends_with(n, ".bin") ? ".bin" : ".safetensors", &sl);
        if (shard) {
            char *iname = NULL;
            bool has_index = false;
            if (asprintf(&iname, "%.*s%s.index.json", (int)sl, n,
                         fz_vends_with(n, ".bin") ? ".bin" : ".safetensors") > 0) {
                for (size_t k = 0; k < c->nroot && !has_index; k++)
                    has_index = !strcmp(c->root[k], iname);
                if (!has_index)
                    fz_vfail(c, n, "a shard but there is no %s: loaders will not find it", iname);
                free(iname);
            }
        }
        if (listed(model_files, n) && f->ok)
            model_set(c, &f, 1, NULL);
    }
    if (!any && !c->err)
        fz_vfail(c, "",
                 "no model weights (model.safetensors, pytorch_model.bin or a "
                 "*.index.json)");
    for (size_t i = 0; i < F.n; i++) {
        free(F.v[i]->name);
        free(F.v[i]->byname);
        fz_tensor_list_free(&F.v[i]->t);
        free(F.v[i]);
    }
    free(F.v);
    free(refd);
}
