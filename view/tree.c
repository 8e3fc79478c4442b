#include "view/tree.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/vec.h"

static int new_node(fz_view *v, uint32_t parent, const char *name, fz_node_kind kind, uint32_t *out)
{
    int rc = FZ_VEC_RESERVE(v->nodes, v->capnodes, (size_t)v->nnodes + 1);
    if (rc)
        return rc;
    /* Children grow by doubling (the array is full when nchildren is a
     * power of two); two children with one name are refused by
     * fz_tree_finish, once sorted: adding n children costs O(n log n). */
    if (parent != UINT32_MAX) {
        fz_node *p = &v->nodes[parent];
        uint32_t k = p->nchildren;
        if ((k & (k - 1)) == 0) {
            uint32_t *c = realloc(p->children, (k ? 2 * (size_t)k : 1) * sizeof *c);
            if (!c)
                return fz_error_set(FZ_ENOMEM, "out of memory");
            p->children = c;
        }
    }
    uint32_t i = v->nnodes;
    fz_node *n = &v->nodes[i];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->mode = kind == FZ_NODE_DIR ? v->dir_mode : kind == FZ_NODE_FILE ? v->file_mode : 0777;
    n->parent = parent == UINT32_MAX ? 0 : parent;
    n->name = strdup(name);
    if (parent == UINT32_MAX || !v->nodes[parent].path[0]) {
        n->path = strdup(name);
    } else {
        size_t len = strlen(v->nodes[parent].path) + strlen(name) + 2;
        n->path = malloc(len);
        if (n->path)
            snprintf(n->path, len, "%s/%s", v->nodes[parent].path, name);
    }
    if (!n->name || !n->path) {
        free(n->name);
        free(n->path);
        return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    v->nnodes++;
    if (parent != UINT32_MAX) {
        fz_node *p = &v->nodes[parent];
        p->children[p->nchildren++] = i;
    }
    *out = i;
    return 0;
}

int fz_tree_dir(fz_view *v, uint32_t parent, const char *name, uint32_t *out)
{
    return new_node(v, parent, name, FZ_NODE_DIR, out);
}

int fz_tree_keep(fz_view *v, uint8_t *data)
{
    int rc = FZ_VEC_RESERVE(v->lits, v->caplits, (size_t)v->nlits + 1);
    if (rc) {
        free(data);
        return rc;
    }
    v->lits[v->nlits++] = data;
    return 0;
}

int fz_tree_file(fz_view *v, uint32_t parent, const char *name, const fz_seg *segs, uint32_t n,
                 uint32_t *out)
{
    uint32_t i;
    int rc = new_node(v, parent, name, FZ_NODE_FILE, &i);
    if (rc)
        return rc;
    fz_node *f = &v->nodes[i];
    f->segs = calloc(n ? n : 1, sizeof *f->segs);
    if (!f->segs)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    uint64_t off = 0;
    for (uint32_t k = 0; k < n; k++) {
        f->segs[k] = segs[k];
        f->segs[k].off = off;
        off += segs[k].len;
    }
    f->nsegs = n;
    f->size = off;
    if (out)
        *out = i;
    return 0;
}

int fz_tree_literal(fz_view *v, uint32_t parent, const char *name, uint8_t *data, uint64_t len)
{
    int rc = fz_tree_keep(v, data);
    if (rc)
        return rc;
    fz_seg s = {.kind = FZ_SEG_LITERAL, .len = len, .zrec = -1, .u.lit = data};
    return fz_tree_file(v, parent, name, &s, len ? 1 : 0, NULL);
}

int fz_tree_span_file(fz_view *v, uint32_t parent, const char *name, const char *src_path)
{
    uint32_t idx;
    int rc = fz_view_open_source_file(v, src_path, &idx);
    if (rc)
        return rc;
    fz_seg s = {.kind = FZ_SEG_SPAN, .len = v->files[idx].size, .zrec = -1};
    s.u.span.fd = v->files[idx].fd;
    s.u.span.off = 0;
    s.u.span.src = idx;
    uint32_t node;
    if ((rc = fz_tree_file(v, parent, name, &s, s.len ? 1 : 0, &node)))
        return rc;
    v->nodes[node].mode = v->files[idx].mode; /* a copy keeps its source's permissions */
    return 0;
}

int fz_tree_symlink(fz_view *v, uint32_t parent, const char *name, const char *target)
{
    uint32_t i;
    int rc = new_node(v, parent, name, FZ_NODE_SYMLINK, &i);
    if (rc)
        return rc;
    if (!(v->nodes[i].target = strdup(target)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    v->nodes[i].size = strlen(target);
    return 0;
}

static fz_view *sort_view;

static int cmp_child(const void *a, const void *b)
{
    return strcmp(sort_view->nodes[*(const uint32_t *)a].name,
                  sort_view->nodes[*(const uint32_t *)b].name);
}

int fz_tree_finish(fz_view *v)
{
    sort_view = v; /* build is single-threaded */
    for (uint32_t i = 0; i < v->nnodes; i++)
        if (v->nodes[i].kind == FZ_NODE_DIR && v->nodes[i].nchildren > 1)
            qsort(v->nodes[i].children, v->nodes[i].nchildren, sizeof(uint32_t), cmp_child);
    sort_view = NULL;
    for (uint32_t i = 0; i < v->nnodes; i++) {
        const fz_node *d = &v->nodes[i];
        for (uint32_t k = 1; d->kind == FZ_NODE_DIR && k < d->nchildren; k++) {
            const char *name = v->nodes[d->children[k]].name;
            if (strcmp(v->nodes[d->children[k - 1]].name, name) == 0)
                return fz_error_set(FZ_EINVAL, "two files named '%s' in '%s'", name, d->path);
        }
    }
    return 0;
}
