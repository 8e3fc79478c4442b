/* A view as a list of extents, for writing it out (materialize), or one
 * file's (a mount computing it whole at its first open, fs/keep.h), and its
 * metadata bytes alone, for checking it (verify/).
 *
 * Extents never straddle a segment, so each lies in at most one zip
 * record. fz_view_read_extent records the CRC-32 of each extent of a record
 * in that record's accumulator; the thread that completes a record combines
 * the pieces in order (crc32_combine) and notes the record's CRC, so the
 * zip headers (the late extents) are generated from known CRCs instead of a
 * second read of every record. Pieces are written before the atomic count
 * that publishes them (release/acquire); no lock is taken. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "util/error.h"
#include "util/vec.h"
#include "view/internal.h"

void fz_view_extents_free(fz_view *v, uint32_t zi)
{
    fz_zipview *z = &v->zips[zi];
    if (!z->acc)
        return;
    for (size_t r = 0; r < z->L.n; r++) {
        free(z->acc[r].crc);
        free(z->acc[r].len);
    }
    free(z->acc);
    z->acc = NULL;
}

static int push(fz_extent **v, size_t *n, size_t *cap, fz_extent e)
{
    int rc = FZ_VEC_RESERVE(*v, *cap, *n + 1);
    if (rc == 0)
        (*v)[(*n)++] = e;
    return rc;
}

/* The length of the extent of segment sg starting o bytes into it: at
 * most max_len and (aligned) not past the next multiple of max_len of the
 * file's offsets. */
static uint64_t cut(const fz_seg *sg, uint64_t o, uint64_t max_len, bool aligned)
{
    uint64_t len = aligned ? max_len - (sg->off + o) % max_len : max_len;
    return sg->len - o < len ? sg->len - o : len;
}

/* Give every record of zip zi an accumulator sized for its extents (cut as
 * node_extents cuts them). */
static int make_accumulators(fz_view *v, uint32_t zi, uint64_t max_len, bool aligned)
{
    fz_zipview *z = &v->zips[zi];
    const fz_node *nd = &v->nodes[z->node];
    fz_view_extents_free(v, zi);
    z->acc = calloc(z->L.n ? z->L.n : 1, sizeof *z->acc);
    if (!z->acc)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (uint32_t s = 0; s < nd->nsegs; s++) {
        const fz_seg *sg = &nd->segs[s];
        if (sg->kind != FZ_SEG_DEFERRED && sg->zrec >= 0 && (size_t)sg->zrec < z->L.n)
            for (uint64_t o = 0; o < sg->len; o += cut(sg, o, max_len, aligned))
                z->acc[sg->zrec].npieces++;
    }
    for (size_t r = 0; r < z->L.n; r++) {
        fz_crcacc *a = &z->acc[r];
        atomic_init(&a->ndone, 0);
        if (!a->npieces)
            continue;
        a->crc = calloc(a->npieces, sizeof *a->crc);
        a->len = calloc(a->npieces, sizeof *a->len);
        if (!a->crc || !a->len)
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    return 0;
}

/* Append node i's extents to *ext in file order, each segment cut as cut()
 * says. For a zip node,
 * each extent of a record's data takes the next piece of that record's
 * accumulator (make_accumulators sized them the same way). */
static int node_extents(fz_view *v, uint32_t i, uint64_t max_len, bool aligned, fz_extent **ext,
                        size_t *n, size_t *cap)
{
    const fz_node *nd = &v->nodes[i];
    int32_t zi = nd->zip ? (int32_t)nd->zip - 1 : -1;
    uint32_t *next_piece = NULL;
    if (zi >= 0 &&
        !(next_piece = calloc(v->zips[zi].L.n ? v->zips[zi].L.n : 1, sizeof *next_piece)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = 0;
    for (uint32_t s = 0; s < nd->nsegs && rc == 0; s++) {
        const fz_seg *sg = &nd->segs[s];
        bool late = sg->kind == FZ_SEG_DEFERRED;
        bool in_rec = zi >= 0 && !late && sg->zrec >= 0 && (size_t)sg->zrec < v->zips[zi].L.n;
        for (uint64_t o = 0, len; o < sg->len && rc == 0; o += len) {
            len = cut(sg, o, max_len, aligned);
            fz_extent e = {i, sg->off + o, len, late, -1, -1, 0};
            if (in_rec) {
                e.zip = zi;
                e.rec = sg->zrec;
                e.piece = next_piece[sg->zrec]++;
            }
            rc = push(ext, n, cap, e);
        }
    }
    free(next_piece);
    return rc;
}

/* Hand ext (n extents, freed here) out as *out with the late extents after
 * all others (stable, O(n)): a reader of the list in order has every
 * record's CRC before it reaches a header. */
static int late_last(fz_extent *ext, size_t n, int rc, fz_extent **out, size_t *nout)
{
    fz_extent *sorted = rc ? NULL : malloc((n ? n : 1) * sizeof *sorted);
    if (!rc && !sorted)
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
    if (rc) {
        free(ext);
        return rc;
    }
    size_t k = 0;
    for (int late = 0; late < 2; late++)
        for (size_t i = 0; i < n; i++)
            if (ext[i].late == (late == 1))
                sorted[k++] = ext[i];
    free(ext);
    *out = sorted;
    *nout = n;
    return 0;
}

int fz_view_extents(fz_view *v, uint64_t max_len, fz_extent **out, size_t *nout)
{
    fz_extent *ext = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    if (max_len == 0)
        return fz_error_set(FZ_EINVAL, "internal error: extents of 0 bytes");
    for (uint32_t zi = 0; zi < v->nzips && rc == 0; zi++)
        rc = make_accumulators(v, zi, max_len, false);
    for (uint32_t i = 0; i < v->nnodes && rc == 0; i++)
        if (v->nodes[i].kind == FZ_NODE_FILE)
            rc = node_extents(v, i, max_len, false, &ext, &n, &cap);
    return late_last(ext, n, rc, out, nout);
}

int fz_view_node_extents(fz_view *v, uint32_t node, uint64_t max_len, fz_extent **out, size_t *nout)
{
    fz_extent *ext = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    if (max_len == 0 || node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE)
        return fz_error_set(FZ_EINVAL, "internal error: extents of node %u, %llu bytes", node,
                            (unsigned long long)max_len);
    if (v->nodes[node].zip)
        rc = make_accumulators(v, v->nodes[node].zip - 1, max_len, true);
    if (rc == 0)
        rc = node_extents(v, node, max_len, true, &ext, &n, &cap);
    return late_last(ext, n, rc, out, nout);
}

/* The extent's piece of its record is in; the last one notes the CRC
 * (store: also in the cache, when the view stores). */
static void note_piece(fz_view *v, const fz_extent *e, const void *buf, bool store)
{
    fz_zipview *z = &v->zips[e->zip];
    fz_crcacc *a = z->acc ? &z->acc[e->rec] : NULL;
    if (!a || e->piece >= a->npieces)
        return;
    a->crc[e->piece] = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)e->len);
    a->len[e->piece] = e->len;
    if (atomic_fetch_add_explicit(&a->ndone, 1, memory_order_acq_rel) + 1 != a->npieces)
        return;
    uLong crc = a->crc[0];
    for (uint32_t k = 1; k < a->npieces; k++)
        crc = crc32_combine(crc, a->crc[k], (z_off_t)a->len[k]);
    fz_view_note_crc(v, (uint32_t)e->zip, e->rec, (uint32_t)crc, store);
}

/* fz_view_read_extent and fz_view_read_extent_uncached. */
static int read_extent(fz_view *v, const fz_extent *e, void *buf, bool store)
{
    int rc = store ? fz_view_read(v, e->node, e->off, e->len, buf)
                   : fz_view_read_uncached(v, e->node, e->off, e->len, buf);
    if (rc == 0 && e->zip >= 0 && (uint32_t)e->zip < v->nzips && e->rec >= 0 &&
        (size_t)e->rec < v->zips[e->zip].L.n)
        note_piece(v, e, buf, store);
    return rc;
}

int fz_view_read_extent(fz_view *v, const fz_extent *e, void *buf)
{
    return read_extent(v, e, buf, true);
}

int fz_view_read_extent_uncached(fz_view *v, const fz_extent *e, void *buf)
{
    return read_extent(v, e, buf, false);
}

/* A deferred segment from the CRCs known so far (0 for the others). */
static int peek_deferred(fz_view *v, const fz_seg *s, uint8_t *out)
{
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
        rc = fz_error_set(FZ_EINVAL, "internal error: zip record %d of %zu", s->u.def.rec, z->L.n);
    free(crcs);
    return rc;
}

int fz_view_read_metadata(fz_view *v, uint32_t node,
                          int (*emit)(void *ctx, uint64_t off, const uint8_t *p, uint64_t len),
                          void *ctx)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE)
        return fz_error_set(FZ_EINVAL, "internal error: node %u is not a file", node);
    uint32_t f;
    if (fz_view_whole_source(v, node, &f))
        return f < v->src.nfiles ? fz_view_whole_metadata(v, f, emit, ctx) : 0;
    const fz_node *nd = &v->nodes[node];
    int rc = 0;
    for (uint32_t s = 0; s < nd->nsegs && rc == 0; s++) {
        const fz_seg *sg = &nd->segs[s];
        if (sg->kind == FZ_SEG_LITERAL) {
            rc = emit(ctx, sg->off, sg->u.lit, sg->len);
        } else if (sg->kind == FZ_SEG_DEFERRED) {
            uint8_t *tmp = malloc(sg->len ? (size_t)sg->len : 1);
            if (!tmp)
                return fz_error_set(FZ_ENOMEM, "out of memory");
            rc = peek_deferred(v, sg, tmp);
            if (rc == 0)
                rc = emit(ctx, sg->off, tmp, sg->len);
            free(tmp);
        }
    }
    return rc;
}

void fz_view_role_names(const fz_view *v, const char **embedding, const char **head,
                        const char **head_bias)
{
    *embedding = v->embed_name;
    *head = v->head_name;
    *head_bias = v->head_bias_name;
}
