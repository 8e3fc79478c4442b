/* The node tree of a view. Weight shards mirror the source weight files one
 * to one, tensors in source order; names, index and manifest follow
 * finalize (FORMATS.md §3, §4, §8). Every size is known here, before any
 * tensor byte is computed. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zlib.h>

#include "formats/jsonout.h"
#include "formats/safetensors.h"
#include "formats/torchbin.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/io.h"
#include "util/vec.h"
#include "view/shards.h"
#include "view/tree.h"

static int steal_literal(fz_view *v, uint32_t dir, const char *name, fz_buf *b)
{
    size_t len;
    uint8_t *data = fz_buf_steal(b, &len);
    if (!data && !(data = calloc(1, 1)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    return fz_tree_literal(v, dir, name, data, len);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether resolved path `real` lies under resolved directory `dir`. */
static bool under(const char *real, const char *dir)
{
    size_t l = dir ? strlen(dir) : 0;
    return dir && strncmp(real, dir, l) == 0 && (real[l] == '/' || l == 1);
}

/* Where to copy source file `p` from: *out = p itself, or for a symlink its
 * target when that resolves inside SRC or the directory listed (`roots`,
 * resolved, either may be NULL); NULL (skip) for a dangling symlink. A FIFO,
 * directory, socket or device is refused (fz_check_input), never skipped.
 * A symlink leading elsewhere is refused: copying it would publish (or, with
 * allow_other, show to other users) a file the run never contained, e.g.
 * one from the user's home. */
static int copy_source(char *const roots[2], const char *p, char **out)
{
    struct stat st;
    char *real = NULL;
    *out = NULL;
    if (lstat(p, &st) != 0)
        return 0;
    if (S_ISLNK(st.st_mode)) {
        if (!(real = realpath(p, NULL)))
            return 0; /* dangling: nothing to copy, as for any non-file */
        if (!under(real, roots[0]) && !under(real, roots[1])) {
            int rc = fz_error_set(FZ_EDENIED,
                                  "%s: a symlink to %s, outside the source "
                                  "directory; fzfs copies only files inside SRC. Replace the "
                                  "link with a copy of the file, or remove it",
                                  p, real);
            free(real);
            return rc;
        }
        int rc = fz_check_input(real, 0, NULL); /* a FIFO, directory...: refused, named */
        if (rc) {
            free(real);
            return rc;
        }
        *out = real;
        return 0;
    }
    int rc = fz_check_input(p, FZ_OPEN_NOFOLLOW, NULL);
    if (rc)
        return rc;
    return (*out = strdup(p)) ? 0 : fz_error_set(FZ_ENOMEM, "out of memory");
}

/* Model source files: the top-level *.py files (not hidden; regular files,
 * or symlinks to regular files inside SRC) and .package_files_copied of the
 * directory config.json comes from, copied through as spans with their
 * permissions. */
static int add_sources(fz_view *v, uint32_t root)
{
    int rc = 0;
    const char *dir = v->src.config_dir;
    DIR *d = opendir(dir);
    if (!d)
        return fz_error_set(FZ_EIO, "%s: cannot read directory", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        bool py = e->d_name[0] != '.' && l > 3 && strcmp(e->d_name + l - 3, ".py") == 0;
        /* .package_files_copied is Forgather's marker: not part of a Hub release. */
        if (!py && (v->opts.hub || strcmp(e->d_name, ".package_files_copied") != 0))
            continue;
        if ((rc = FZ_VEC_RESERVE(names, cap, n + 1)))
            break;
        if (!(names[n] = strdup(e->d_name))) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    char *roots[2] = {n ? realpath(v->src.root, NULL) : NULL, n ? realpath(dir, NULL) : NULL};
    for (size_t i = 0; i < n && rc == 0; i++) {
        size_t pl = strlen(dir) + strlen(names[i]) + 2;
        char *p = malloc(pl), *from = NULL;
        if (!p) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            break;
        }
        snprintf(p, pl, "%s/%s", dir, names[i]);
        if ((rc = copy_source(roots, p, &from)) == 0 && from)
            rc = fz_tree_span_file(v, root, names[i], from);
        free(from);
        free(p);
    }
    free(roots[0]);
    free(roots[1]);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* The data segment of a recipe: a span when no op applies, else computed. */
static fz_seg tensor_seg(const fz_view *v, uint32_t recipe, int32_t zrec)
{
    const fz_recipe *r = &v->recipes[recipe];
    fz_seg s = {.len = r->nbytes, .zrec = zrec};
    uint64_t off;
    if (fz_recipe_is_span(r, &off)) {
        s.kind = FZ_SEG_SPAN;
        s.u.span.fd = r->fd;
        s.u.span.off = off;
        s.u.span.src = v->recipe_file[recipe];
    } else {
        s.kind = FZ_SEG_COMPUTED;
        s.u.recipe = recipe;
    }
    return s;
}

/* Whether out tensor i is written in a safetensors shard: a tied head is
 * dropped (the embedding carries it, as save_pretrained does). Other names
 * sharing a recipe are written as separate tensors: safetensors cannot
 * alias, and the model may need both names. */
bool fz_view_st_emits(const fz_view *v, uint32_t i)
{
    const fz_outtensor *o = &v->outs[i];
    return !(v->tied && o->role && !strcmp(o->role, "head") && o->recipe == v->embed_recipe);
}

typedef struct {
    const uint32_t *recipe_of_rec;
    uint32_t recipe;
} rec_ctx;

static bool rec_is(const void *ctx, uint32_t k)
{
    const rec_ctx *a = ctx;
    return a->recipe_of_rec[k] == a->recipe;
}

/* The records of a .bin shard: one per distinct recipe (names sharing a
 * recipe share its storage, as torch.save writes tied tensors), and the
 * pickle naming them. */
typedef struct {
    uint32_t *recipe_of_rec; /* record k holds recipe recipe_of_rec[k] */
    uint64_t *rec_bytes;
    size_t n;
    fz_buf pkl;
} bin_records;

static void bin_records_free(bin_records *b)
{
    free(b->recipe_of_rec);
    free(b->rec_bytes);
    fz_buf_free(&b->pkl);
}

static int bin_records_make(const fz_view *v, const uint32_t *outs, uint32_t n, bin_records *b)
{
    int rc = 0;
    fz_torchbin_entry *ent = calloc(n ? n : 1, sizeof *ent);
    fz_hindex recs = {0};
    memset(b, 0, sizeof *b);
    b->recipe_of_rec = calloc(n ? n : 1, sizeof *b->recipe_of_rec);
    b->rec_bytes = calloc(n ? n : 1, sizeof *b->rec_bytes);
    if (!b->recipe_of_rec || !b->rec_bytes || !ent || fz_hindex_init(&recs, n)) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t j = 0; j < n; j++) {
        const fz_outtensor *o = &v->outs[outs[j]];
        const fz_recipe *r = &v->recipes[o->recipe];
        rec_ctx rcx = {b->recipe_of_rec, o->recipe};
        uint64_t h = fz_hindex_hash(&o->recipe, sizeof o->recipe);
        uint32_t k = fz_hindex_find(&recs, h, rec_is, &rcx);
        if (k == UINT32_MAX) {
            k = (uint32_t)b->n;
            b->recipe_of_rec[k] = o->recipe;
            b->rec_bytes[k] = r->nbytes;
            b->n++;
            if ((rc = fz_hindex_put(&recs, h, k)))
                goto done;
        }
        ent[j] = (fz_torchbin_entry){o->name, r->out_dtype, r->ndim, r->shape, k};
    }
    rc = fz_torchbin_pickle(ent, n, b->rec_bytes, b->n, &b->pkl);
done:
    fz_hindex_free(&recs);
    free(ent);
    return rc;
}

/* The segment of zip record i (of nrec, `size` bytes) of a torch archive
 * of b's records: a literal (pickle, byteorder, version) or its tensor. */
static fz_seg bin_record_seg(const fz_view *v, const bin_records *b, const uint8_t *pkl, size_t i,
                             size_t nrec, uint64_t size)
{
    fz_seg d = {.kind = FZ_SEG_LITERAL, .len = size, .zrec = (int32_t)i};
    size_t k = 0;
    switch (fz_torchbin_record_role(i, nrec - 3, &k)) {
    case FZ_TB_PICKLE:
        d.u.lit = pkl;
        break;
    case FZ_TB_BYTEORDER:
        d.u.lit = fz_torchbin_byteorder;
        break;
    case FZ_TB_VERSION:
        d.u.lit = fz_torchbin_version;
        break;
    case FZ_TB_DATA:
        d = tensor_seg(v, b->recipe_of_rec[k], (int32_t)i);
        break;
    }
    return d;
}

/* File `name` under `dir`: the torch zip archive of b's records. Its local
 * headers and central directory are deferred segments (their CRCs come
 * from the bytes), the literal records' CRCs are known now. */
static int add_bin_archive(fz_view *v, uint32_t dir, const char *name, bin_records *b)
{
    char stem[256];
    fz_seg *segs = NULL;
    int rc;
    snprintf(stem, sizeof stem, "%.*s", (int)(strlen(name) - 4), name);
    if ((rc = FZ_VEC_RESERVE(v->zips, v->capzips, (size_t)v->nzips + 1)))
        return rc;
    fz_zipview *zv = &v->zips[v->nzips];
    memset(zv, 0, sizeof *zv);
    if ((rc = fz_torchbin_layout(&zv->L, stem, b->pkl.len, b->rec_bytes, b->n)))
        return rc;
    uint32_t zi = v->nzips++;
    size_t nrec = zv->L.n;
    zv->crc = calloc(nrec, sizeof *zv->crc);
    zv->crc_known = calloc(nrec, sizeof *zv->crc_known);
    segs = calloc(2 * nrec + 1, sizeof *segs);
    if (!zv->crc || !zv->crc_known || !segs) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    uint8_t *pkl = fz_buf_steal(&b->pkl, NULL);
    if ((rc = fz_tree_keep(v, pkl)))
        goto done;
    uint32_t ns = 0;
    uint64_t pos = 0;
    for (size_t i = 0; i < nrec; i++) {
        const fz_zipw_rec *zr = &zv->L.rec[i];
        if (zr->header_off != pos) {
            rc = fz_error_set(FZ_EINVAL, "%s: internal error: zip layout has a gap", name);
            goto done;
        }
        segs[ns++] = (fz_seg){
            .kind = FZ_SEG_DEFERRED, .len = zr->header_len, .zrec = -1, .u.def = {zi, (int32_t)i}};
        fz_seg d = bin_record_seg(v, b, pkl, i, nrec, zr->size);
        if (d.kind == FZ_SEG_LITERAL) {
            zv->crc[i] = (uint32_t)crc32(0L, d.u.lit, (uInt)d.len);
            zv->crc_known[i] = true;
        }
        if (d.len)
            segs[ns++] = d;
        pos = zr->data_off + zr->size;
    }
    if (zv->L.cd_off != pos) {
        rc = fz_error_set(FZ_EINVAL, "%s: internal error: zip layout has a gap", name);
        goto done;
    }
    segs[ns++] =
        (fz_seg){.kind = FZ_SEG_DEFERRED, .len = zv->L.cd_len, .zrec = -1, .u.def = {zi, -1}};
    uint32_t node;
    if ((rc = fz_tree_file(v, dir, name, segs, ns, &node)))
        goto done;
    v->nodes[node].zip = zi + 1;
    zv->node = node;
done:
    free(segs);
    return rc;
}

/* A .bin shard of the n out tensors outs[0..n): one record per recipe. */
static int add_bin_shard(fz_view *v, uint32_t dir, const uint32_t *outs, uint32_t n,
                         const char *name)
{
    bin_records b;
    int rc = bin_records_make(v, outs, n, &b);
    if (rc == 0)
        rc = add_bin_archive(v, dir, name, &b);
    bin_records_free(&b);
    return rc;
}

/* A safetensors shard of the nout out tensors outs[0..nout). */
static int add_st_shard(fz_view *v, uint32_t dir, const uint32_t *outs, uint32_t nout,
                        const char *name)
{
    int rc = 0;
    fz_st_entry *ent = calloc(nout ? nout : 1, sizeof *ent);
    uint32_t *recipe = calloc(nout ? nout : 1, sizeof *recipe);
    size_t *order = calloc(nout ? nout : 1, sizeof *order);
    uint64_t *offset = calloc(nout ? nout : 1, sizeof *offset);
    fz_seg *segs = calloc((size_t)nout + 1, sizeof *segs);
    fz_buf hdr = FZ_BUF_INIT;
    size_t n = 0;
    if (!ent || !recipe || !order || !offset || !segs) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t j = 0; j < nout; j++) {
        const fz_outtensor *o = &v->outs[outs[j]];
        if (!fz_view_st_emits(v, outs[j]))
            continue;
        const fz_recipe *r = &v->recipes[o->recipe];
        ent[n] = (fz_st_entry){o->name, r->out_dtype, r->ndim, r->shape};
        recipe[n++] = o->recipe;
    }
    if ((rc = fz_st_layout(ent, n, &hdr, order, offset)))
        goto done;
    uint64_t pos = hdr.len;
    size_t hlen;
    uint8_t *h = fz_buf_steal(&hdr, &hlen);
    if ((rc = fz_tree_keep(v, h)))
        goto done;
    uint32_t ns = 0;
    segs[ns++] = (fz_seg){.kind = FZ_SEG_LITERAL, .len = hlen, .zrec = -1, .u.lit = h};
    for (size_t j = 0; j < n; j++) {
        size_t i = order[j];
        if (offset[i] != pos) {
            rc = fz_error_set(FZ_EINVAL, "%s: internal error: safetensors layout has a gap", name);
            goto done;
        }
        fz_seg s = tensor_seg(v, recipe[i], -1);
        if (s.len)
            segs[ns++] = s;
        pos += s.len;
    }
    rc = fz_tree_file(v, dir, name, segs, ns, NULL);
done:
    free(ent);
    free(recipe);
    free(order);
    free(offset);
    free(segs);
    fz_buf_free(&hdr);
    return rc;
}

/* The shard index, as finalize's make_shard_index writes it (indent 4). */
static int index_json(fz_view *v, fz_buf *out)
{
    bool st = v->opts.safetensors;
    json_t *meta = json_object();
    json_t *sharing = json_array();
    uint64_t total = 0;
    int rc = 0;
    if (!meta || !sharing) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    size_t room = 64; /* the text's length, near enough: the buffer grows once */
    for (uint32_t i = 0; i < v->nouts; i++)
        if (!st || fz_view_st_emits(v, i)) {
            total += v->recipes[v->outs[i].recipe].nbytes;
            room += strlen(v->outs[i].name) + strlen(v->shard_names[v->outs[i].shard]) + 16;
        }
    if ((rc = fz_buf_reserve(out, room)))
        goto done;
    if (!st) {
        /* param_sharing: groups of names whose values are one tensor (one
         * recipe): aliases over one record, and a tied head in another shard.
         * first[r] is recipe r's first out, next[i] the next out after i with
         * the same recipe (UINT32_MAX ends both). */
        uint32_t *first = malloc((v->nrecipes ? v->nrecipes : 1) * sizeof *first);
        uint32_t *next = malloc((v->nouts ? v->nouts : 1) * sizeof *next);
        if (!first || !next) {
            free(first);
            free(next);
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        for (uint32_t r = 0; r < v->nrecipes; r++)
            first[r] = UINT32_MAX;
        for (uint32_t i = v->nouts; i-- > 0;) {
            next[i] = first[v->outs[i].recipe];
            first[v->outs[i].recipe] = i;
        }
        for (uint32_t i = 0; i < v->nouts; i++) {
            if (first[v->outs[i].recipe] != i || next[i] == UINT32_MAX)
                continue;
            json_t *g = json_array();
            for (uint32_t k = i; k != UINT32_MAX; k = next[k])
                json_array_append_new(g, json_string(v->outs[k].name));
            json_array_append_new(sharing, g);
        }
        free(first);
        free(next);
    }
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    if (json_array_size(sharing))
        json_object_set(meta, "param_sharing", sharing);
    /* json.dump(indent=4) of {"metadata": meta, "weight_map": {...}}, the
     * weight map written straight out (a jansson object of 100k names cost
     * more than all the rest of the tree) */
    fz_json_style style = FZ_JSON_PY(4);
    bool any = false;
    if ((rc = fz_buf_puts(out, "{\n    \"metadata\": ")) ||
        (rc = fz_json_emit_nested(meta, &style, 1, out)) ||
        (rc = fz_buf_puts(out, ",\n    \"weight_map\": {")))
        goto done;
    for (uint32_t i = 0; i < v->nouts; i++) {
        const fz_outtensor *o = &v->outs[i];
        const char *shard = v->shard_names[o->shard];
        if (st && !fz_view_st_emits(v, i))
            continue;
        if ((rc = fz_buf_puts(out, any ? ",\n        " : "\n        ")) ||
            (rc = fz_json_emit_string(o->name, strlen(o->name), true, out)) ||
            (rc = fz_buf_puts(out, ": ")) ||
            (rc = fz_json_emit_string(shard, strlen(shard), true, out)))
            break;
        any = true;
    }
    if (rc == 0)
        rc = fz_buf_puts(out, any ? "\n    }\n}" : "}\n}");
done:
    json_decref(meta);
    json_decref(sharing);
    return rc;
}

static json_t *component(const char *key, uint64_t size)
{
    json_t *c = json_object();
    json_object_set_new(c, "key", json_string(key));
    json_object_set_new(c, "sharing_pattern", json_string("replicated"));
    json_object_set_new(c, "ranks", json_pack("[i]", 0));
    json_object_set_new(c, "replicated_across", json_pack("[i]", 0));
    json_object_set_new(c, "group_name", json_null());
    json_object_set_new(c, "size_bytes", json_integer((json_int_t)size));
    json_object_set_new(c, "checksum", json_null());
    json_object_set_new(c, "metadata", json_object());
    return c;
}

/* The timestamp of a source without a manifest (a flat HF dir, a Trainer
 * checkpoint): the newest mtime of the weight files read, in UTC, as
 * Python's datetime.fromtimestamp(t, timezone.utc).isoformat() writes it
 * (microseconds only when non-zero). Deterministic for an unchanged source,
 * and Forgather's checkpoint search (fromisoformat) reads it correctly. */
static const char *weights_time(const fz_view *v, char buf[40])
{
    int64_t ns = 0;
    for (uint32_t i = 0; i < v->src.nfiles && i < v->nfiles; i++)
        if (v->files[i].mtime_ns > ns)
            ns = v->files[i].mtime_ns;
    time_t sec = (time_t)(ns / 1000000000);
    long us = (long)(ns % 1000000000 / 1000);
    struct tm tm;
    if (!gmtime_r(&sec, &tm))
        memset(&tm, 0, sizeof tm);
    size_t o = strftime(buf, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    if (us)
        o += (size_t)snprintf(buf + o, 40 - o, ".%06ld", us);
    snprintf(buf + o, 40 - o, "+00:00");
    return buf;
}

/* checkpoint_manifest.json in finalize's schema (FORMATS.md §8). */
static int manifest_json(fz_view *v, uint32_t ckdir, uint64_t optimizer_size, fz_buf *out)
{
    uint64_t model = 0;
    const fz_node *d = &v->nodes[ckdir];
    for (uint32_t i = 0; i < d->nchildren; i++) {
        const fz_node *c = &v->nodes[d->children[i]];
        if (c->kind == FZ_NODE_FILE && strcmp(c->name, "optimizer_state.pt") != 0)
            model += c->size;
    }
    json_t *m = json_object(), *comps = json_object(), *meta = json_object();
    json_object_set_new(m, "checkpoint_path", json_string(v->dest_ckpt_dir));
    json_object_set_new(m, "world_size", json_integer(1));
    char when[40];
    json_object_set_new(m, "timestamp",
                        json_string(v->src.timestamp ? v->src.timestamp : weights_time(v, when)));
    json_object_set_new(comps, "model", component("model", model));
    if (v->opts.keep_optimizer)
        json_object_set_new(comps, "optimizer", component("optimizer", optimizer_size));
    json_object_set_new(m, "components", comps);
    json_object_set_new(m, "training_args_hash", json_null());
    json_object_set_new(m, "forgather_version", json_null());
    json_object_set_new(m, "pytorch_version",
                        v->src.pytorch_version ? json_string(v->src.pytorch_version) : json_null());
    json_object_set_new(meta, "finalized", json_true());
    json_object_set_new(m, "metadata", meta);
    fz_json_style style = FZ_JSON_PY(2);
    int rc = fz_json_emit(m, &style, out);
    json_decref(m);
    return rc;
}

int fz_view_build_tree(fz_view *v)
{
    int rc;
    uint32_t root, wdir;
    fz_meta_out *m = &v->meta;
    bool st = v->opts.safetensors;
    fz_buf b = FZ_BUF_INIT;
    uint32_t *by_shard = NULL, *start = NULL;
    /* Generated files and directories follow SRC's permissions (owner's
     * read/write kept; no execute bits on files). */
    struct stat sst;
    mode_t sm = stat(v->src.root, &sst) == 0 ? sst.st_mode & 0777 : 0755;
    v->dir_mode = sm | 0700;
    v->file_mode = (sm & 0666) | 0600;
    if ((rc = fz_tree_dir(v, UINT32_MAX, "", &root)))
        return rc;
    if ((rc = steal_literal(v, root, "config.json", &m->config_json)) ||
        (rc = steal_literal(v, root, "tokenizer.json", &m->tokenizer_json)) ||
        (rc = steal_literal(v, root, "tokenizer_config.json", &m->tokenizer_config_json)) ||
        (rc = steal_literal(v, root, "special_tokens_map.json", &m->special_tokens_map_json)))
        return rc;
    if (m->has_chat_template &&
        (rc = steal_literal(v, root, "chat_template.jinja", &m->chat_template_jinja)))
        return rc;
    if (m->has_generation_config &&
        (rc = steal_literal(v, root, "generation_config.json", &m->generation_config_json)))
        return rc;
    if ((rc = add_sources(v, root)))
        return rc;

    char ck[64];
    snprintf(ck, sizeof ck, "checkpoint-%lld", (long long)(v->src.step >= 0 ? v->src.step : 0));
    if (v->opts.root_copy) {
        wdir = root;
    } else {
        uint32_t cks;
        if ((rc = fz_tree_dir(v, root, "checkpoints", &cks)) ||
            (rc = fz_tree_dir(v, cks, ck, &wdir)))
            return rc;
        size_t l = strlen(ck) + 13;
        if (!(v->dest_ckpt_dir = malloc(l)))
            return fz_error_set(FZ_ENOMEM, "out of memory");
        snprintf(v->dest_ckpt_dir, l, "checkpoints/%s", ck);
    }
    v->shard_names = calloc(v->nshards ? v->nshards : 1, sizeof *v->shard_names);
    if (!v->shard_names)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    /* The out tensors of shard s, in order: by_shard[start[s] .. start[s + 1]). */
    by_shard = malloc((v->nouts ? v->nouts : 1) * sizeof *by_shard);
    start = calloc((size_t)v->nshards + 1, sizeof *start);
    if (!by_shard || !start) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < v->nouts; i++) {
        if (v->outs[i].shard >= v->nshards) {
            rc = fz_error_set(FZ_EINVAL, "internal error: tensor '%s' in shard %u of %u",
                              v->outs[i].name, v->outs[i].shard, v->nshards);
            goto done;
        }
        start[v->outs[i].shard + 1]++;
    }
    for (uint32_t s = 0; s < v->nshards; s++)
        start[s + 1] += start[s];
    for (uint32_t i = 0; i < v->nouts; i++)
        by_shard[start[v->outs[i].shard]++] = i;
    for (uint32_t s = v->nshards; s-- > 0;)
        start[s + 1] = start[s];
    start[0] = 0;
    for (uint32_t s = 0; s < v->nshards; s++) {
        char name[64];
        snprintf(name, sizeof name,
                 st ? "model-%05u-of-%05u.safetensors" : "pytorch_model-%05u-of-%05u.bin", s + 1,
                 v->nshards);
        if (!(v->shard_names[s] = strdup(name))) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        const uint32_t *outs = by_shard + start[s];
        uint32_t n = start[s + 1] - start[s];
        if (fz_view_shard_is_whole(v, s, outs, n, name))
            rc = fz_view_add_whole(v, wdir, s, name);
        else if (st)
            rc = add_st_shard(v, wdir, outs, n, name);
        else
            rc = add_bin_shard(v, wdir, outs, n, name);
        if (rc)
            goto done;
    }
    const char *index_name = st ? "model.safetensors.index.json" : "pytorch_model.bin.index.json";
    if ((rc = index_json(v, &b)) || (rc = steal_literal(v, wdir, index_name, &b)))
        goto done;
    if (!v->opts.root_copy) {
        uint64_t opt_size = 0;
        if (v->opts.keep_optimizer) {
            /* Forgather's name whatever the source called it (Trainer: optimizer.pt):
             * DEST is a Forgather checkpoint whose manifest lists the component. */
            if ((rc = fz_tree_span_file(v, wdir, "optimizer_state.pt", v->src.optimizer)))
                goto done;
            opt_size = v->nodes[v->nnodes - 1].size;
        }
        if ((rc = manifest_json(v, wdir, opt_size, &b)) ||
            (rc = steal_literal(v, wdir, "checkpoint_manifest.json", &b)))
            goto done;
        /* Root symlinks for from_pretrained: the index and every shard. */
        char target[512];
        snprintf(target, sizeof target, "%s/%s", v->dest_ckpt_dir, index_name);
        if ((rc = fz_tree_symlink(v, root, index_name, target)))
            goto done;
        for (uint32_t s = 0; s < v->nshards; s++) {
            snprintf(target, sizeof target, "%s/%s", v->dest_ckpt_dir, v->shard_names[s]);
            if ((rc = fz_tree_symlink(v, root, v->shard_names[s], target)))
                goto done;
        }
    }
    rc = fz_tree_finish(v);
done:
    free(by_shard);
    free(start);
    fz_buf_free(&b);
    return rc;
}
