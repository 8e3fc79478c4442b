/* What the checks of verify/ need from a view beyond the node table: zip
 * headers without reading any record, and the tensors the view gave a
 * vocabulary role. Nothing here computes a tensor byte. */
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "view/internal.h"

int fz_view_peek_deferred(fz_view *v, uint32_t node, uint32_t seg, uint8_t *out)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE || seg >= v->nodes[node].nsegs ||
        v->nodes[node].segs[seg].kind != FZ_SEG_DEFERRED)
        return fz_error_set(FZ_EINVAL, "internal error: node %u segment %u is not a zip header",
                            node, seg);
    const fz_seg *s = &v->nodes[node].segs[seg];
    if (s->u.def.zip >= v->nzips)
        return fz_error_set(FZ_EINVAL, "internal error: zip %u of %u", s->u.def.zip, v->nzips);
    fz_zipview *z = &v->zips[s->u.def.zip];
    uint32_t *crcs = calloc(z->L.n ? z->L.n : 1, sizeof *crcs);
    if (!crcs)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    pthread_mutex_lock(&v->crc_lock);
    for (size_t i = 0; i < z->L.n; i++)
        crcs[i] = z->crc_known[i] ? z->crc[i] : 0;
    pthread_mutex_unlock(&v->crc_lock);
    int rc = 0;
    if (s->u.def.rec < 0)
        fz_zipw_central(&z->L, crcs, out);
    else if ((size_t)s->u.def.rec < z->L.n)
        fz_zipw_local_header(&z->L, (size_t)s->u.def.rec, crcs[s->u.def.rec], out);
    else
        rc = fz_error_set(FZ_EINVAL, "internal error: zip record %d of %zu", s->u.def.rec,
                          z->L.n);
    free(crcs);
    return rc;
}

void fz_view_role_names(const fz_view *v, const char **embedding, const char **head,
                        const char **head_bias)
{
    *embedding = v->embed_name;
    *head = v->head_name;
    *head_bias = v->head_bias_name;
}
