/* Whole files: an output weight shard that is exactly one source weight
 * file, unchanged, is served as that file's bytes (one span of all of it)
 * rather than as a rewritten container around spans of its tensors. Such a
 * node has a backing file (fz_view_backing), which is what lets the mount
 * hand it to the kernel (FUSE passthrough). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/zip.h"
#include "util/error.h"
#include "util/io.h"
#include "view/internal.h"
#include "view/tree.h"

/* Metadata of a whole file is read and handed on in pieces of at most this. */
#define FZ_WHOLE_META_PIECE (1u << 20)

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Out tensor o (of shard file f, at the position of source tensor t) is t's
 * bytes in place: no op, read from file f, the same view of its storage. */
static bool out_is_source(const fz_view *v, const fz_outtensor *o, uint32_t f, const fz_tensor *t)
{
    const fz_recipe *r = &v->recipes[o->recipe];
    if (strcmp(o->name, t->name) != 0 || r->part != FZ_PART_PLAIN || !fz_recipe_is_span(r, NULL) ||
        v->recipe_file[o->recipe] != f)
        return false;
    const fz_tensor *s = &r->src;
    if (s->storage_id != t->storage_id || s->storage_offset != t->storage_offset ||
        s->dtype != t->dtype || s->ndim != t->ndim || r->out_dtype != t->dtype)
        return false;
    for (int d = 0; d < t->ndim; d++)
        if (s->shape[d] != t->shape[d] || s->stride[d] != t->stride[d] ||
            r->shape[d] != t->shape[d])
            return false;
    return true;
}

/* A torch zip every record of which is under "<stem>/", stem being the
 * output name without ".bin" (torch.save names them after the file). */
static bool zip_under_stem(const fz_srcfile *sf, const char *name)
{
    size_t stem = strlen(name) - 4;
    return sf->zip_stem && strlen(sf->zip_stem) == stem && !strncmp(sf->zip_stem, name, stem);
}

bool fz_view_shard_is_whole(const fz_view *v, uint32_t s, const uint32_t *outs, uint32_t n,
                            const char *name)
{
    bool st = v->opts.safetensors;
    /* Shards mirror the source files only without re-sharding; file s is then weight file s. */
    if (v->opts.max_shard_size != 0 || s >= v->src.nfiles || s >= v->nfiles)
        return false;
    const fz_srcfile *sf = &v->files[s];
    const fz_tensor_list *l = &v->tensors[s];
    if (ends_with(sf->path, ".safetensors") != st || !ends_with(name, st ? ".safetensors" : ".bin"))
        return false;
    if (sf->size == 0 || l->n != n)
        return false;
    for (uint32_t j = 0; j < n; j++) {
        const fz_outtensor *o = &v->outs[outs[j]];
        const fz_tensor *t = &l->v[j];
        if (!out_is_source(v, o, s, t))
            return false;
        if (st && !fz_view_st_emits(v, outs[j]))
            return false; /* a tied head dropped */
        /* .bin: each record one whole source storage, so the source's
         * pickle says what the rewritten one would (aliases included). */
        if (!st && (t->storage_offset != 0 || v->recipes[o->recipe].nbytes != t->storage_nbytes))
            return false;
    }
    /* transformers refuses safetensors metadata that names no format or another one */
    return st ? sf->st_format_pt : zip_under_stem(sf, name);
}

int fz_view_add_whole(fz_view *v, uint32_t dir, uint32_t s, const char *name)
{
    const fz_srcfile *sf = &v->files[s];
    fz_seg sg = {.kind = FZ_SEG_SPAN, .len = sf->size, .zrec = -1};
    sg.u.span.fd = sf->fd;
    sg.u.span.off = 0;
    sg.u.span.src = s;
    return fz_tree_file(v, dir, name, &sg, 1, NULL);
}

bool fz_view_whole_source(const fz_view *v, uint32_t node, uint32_t *file)
{
    if (node >= v->nnodes)
        return false;
    const fz_node *n = &v->nodes[node];
    if (n->kind != FZ_NODE_FILE || n->nsegs != 1 || n->segs[0].kind != FZ_SEG_SPAN)
        return false;
    const fz_seg *sg = &n->segs[0];
    if (sg->u.span.off != 0 || sg->u.span.src >= v->nfiles ||
        sg->len != v->files[sg->u.span.src].size || sg->u.span.fd != v->files[sg->u.span.src].fd)
        return false;
    *file = sg->u.span.src;
    return true;
}

bool fz_view_backing(const fz_view *v, uint32_t node, int *fd, const char **path)
{
    uint32_t f;
    if (!fz_view_whole_source(v, node, &f))
        return false;
    *fd = v->files[f].fd;
    if (path)
        *path = v->files[f].path;
    return true;
}

typedef struct {
    uint64_t off, end;
} range;

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

int fz_view_whole_metadata(fz_view *v, uint32_t f,
                           int (*emit)(void *ctx, uint64_t off, const uint8_t *p, uint64_t len),
                           void *ctx)
{
    const fz_srcfile *sf = &v->files[f];
    const fz_tensor_list *l = &v->tensors[f];
    range *r = malloc((l->n ? l->n : 1) * sizeof *r);
    uint8_t *buf = malloc(FZ_WHOLE_META_PIECE);
    int rc = 0;
    if (!r || !buf) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    /* The tensor storages (the readers checked each lies in the file). */
    for (size_t i = 0; i < l->n; i++)
        r[i] = (range){l->v[i].data_offset, l->v[i].data_offset + l->v[i].storage_nbytes};
    qsort(r, l->n, sizeof *r, cmp_range);
    uint64_t pos = 0;
    for (size_t i = 0; i <= l->n && rc == 0; i++) {
        uint64_t gap_end = i < l->n ? r[i].off : sf->size;
        while (pos < gap_end && rc == 0) {
            size_t k =
                gap_end - pos < FZ_WHOLE_META_PIECE ? (size_t)(gap_end - pos) : FZ_WHOLE_META_PIECE;
            if ((rc = fz_pread_full(sf->fd, buf, k, pos, sf->path)) == 0)
                rc = emit(ctx, pos, buf, k);
            pos += k;
        }
        if (i < l->n && r[i].end > pos)
            pos = r[i].end;
    }
done:
    free(r);
    free(buf);
    return rc;
}
