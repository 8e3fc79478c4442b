/* fz_view_read: the one place the bytes of a view come from. Literal
 * segments are copied, spans are pread from the held source file, computed
 * segments run their tensor recipe, deferred segments (zip headers) are
 * generated from the record CRCs, computing any CRC not yet known by reading
 * the record's bytes through fz_view_read itself. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "util/error.h"
#include "util/io.h"
#include "view/internal.h"

#define FZ_CRC_STEP (4u << 20)

static int read_range(fz_view *v, uint32_t node, uint64_t off, uint64_t len, uint8_t *buf);

static int record_crc(fz_view *v, uint32_t zi, size_t rec, uint32_t *out)
{
    fz_zipview *z = &v->zips[zi];
    pthread_mutex_lock(&v->crc_lock);
    bool known = z->crc_known[rec];
    uint32_t crc = z->crc[rec];
    pthread_mutex_unlock(&v->crc_lock);
    if (known) {
        *out = crc;
        return 0;
    }
    /* Not yet known: read the record through the view. Two threads may both
     * compute it; the result is the same, so the race is harmless. */
    const fz_zipw_rec *r = &z->L.rec[rec];
    uint64_t step = r->size < FZ_CRC_STEP ? r->size : FZ_CRC_STEP;
    uint8_t *buf = malloc(step ? step : 1);
    if (!buf)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    uLong c = crc32(0L, Z_NULL, 0);
    for (uint64_t o = 0; o < r->size; o += step) {
        uint64_t n = r->size - o < step ? r->size - o : step;
        int rc = read_range(v, z->node, r->data_off + o, n, buf);
        if (rc) {
            free(buf);
            return rc;
        }
        c = crc32(c, buf, (uInt)n);
    }
    free(buf);
    fz_view_note_crc(v, zi, (int32_t)rec, (uint32_t)c);
    *out = (uint32_t)c;
    return 0;
}

void fz_view_note_crc(fz_view *v, uint32_t zip, int32_t rec, uint32_t crc)
{
    if (zip >= v->nzips || rec < 0 || (size_t)rec >= v->zips[zip].L.n)
        return;
    pthread_mutex_lock(&v->crc_lock);
    v->zips[zip].crc[rec] = crc;
    v->zips[zip].crc_known[rec] = true;
    pthread_mutex_unlock(&v->crc_lock);
}

/* Bytes of a deferred segment, generated whole and sliced. */
static int read_deferred(fz_view *v, const fz_seg *s, uint64_t off, uint64_t len, uint8_t *out)
{
    fz_zipview *z = &v->zips[s->u.def.zip];
    uint8_t *tmp = malloc(s->len ? s->len : 1);
    uint32_t *crcs = NULL;
    int rc = 0;
    if (!tmp)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (s->u.def.rec >= 0) {
        uint32_t crc;
        rc = record_crc(v, s->u.def.zip, (size_t)s->u.def.rec, &crc);
        if (rc == 0)
            fz_zipw_local_header(&z->L, (size_t)s->u.def.rec, crc, tmp);
    } else {
        crcs = malloc(z->L.n * sizeof *crcs);
        if (!crcs)
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
        for (size_t i = 0; rc == 0 && i < z->L.n; i++)
            rc = record_crc(v, s->u.def.zip, i, &crcs[i]);
        if (rc == 0)
            fz_zipw_central(&z->L, crcs, tmp);
    }
    if (rc == 0)
        memcpy(out, tmp + off, (size_t)len);
    free(tmp);
    free(crcs);
    return rc;
}

static int read_range(fz_view *v, uint32_t node, uint64_t off, uint64_t len, uint8_t *buf)
{
    const fz_node *n = &v->nodes[node];
    /* Binary search the first segment that ends after off. */
    uint32_t lo = 0, hi = n->nsegs;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (n->segs[mid].off + n->segs[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t i = lo; i < n->nsegs && len > 0; i++) {
        const fz_seg *s = &n->segs[i];
        uint64_t so = off - s->off;
        uint64_t k = s->len - so < len ? s->len - so : len;
        int rc = 0;
        switch (s->kind) {
        case FZ_SEG_LITERAL:
            memcpy(buf, s->u.lit + so, (size_t)k);
            break;
        case FZ_SEG_SPAN:
            rc = fz_pread_full(s->u.span.fd, buf, (size_t)k, s->u.span.off + so,
                               v->files[s->u.span.src].path);
            break;
        case FZ_SEG_COMPUTED:
            rc = fz_recipe_produce(&v->recipes[s->u.recipe], so, k, buf);
            break;
        case FZ_SEG_DEFERRED:
            rc = read_deferred(v, s, so, k, buf);
            break;
        }
        if (rc)
            return fz_error_prefix(rc, "%s", n->path);
        buf += k;
        off += k;
        len -= k;
    }
    return 0;
}

int fz_view_read(fz_view *v, uint32_t node, uint64_t off, uint64_t len, void *buf)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE)
        return fz_error_set(FZ_EINVAL, "node %u is not a file", node);
    const fz_node *n = &v->nodes[node];
    if (off > n->size || len > n->size - off)
        return fz_error_set(FZ_EINVAL, "%s: read [%llu, +%llu) past the end (%llu)", n->path,
                            (unsigned long long)off, (unsigned long long)len,
                            (unsigned long long)n->size);
    return read_range(v, node, off, len, buf);
}
