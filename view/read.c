/* fz_view_read: the one place the bytes of a view come from. Literal
 * segments are copied, spans are pread from the held source file, computed
 * segments run their tensor recipe, deferred segments (zip headers) are
 * generated from the record CRCs, computing any CRC not yet known by reading
 * the record's bytes through fz_view_read itself.
 *
 * With a cache (fz_view_set_cache), a computed segment is produced in
 * chunks of FZ_VIEW_CHUNK output bytes aligned to the tensor's start (the
 * last chunk shorter), each fetched through the cache under the key
 * (recipe identity, chunk index); a record CRC is a 4-byte entry keyed by
 * the description of the record's data. The bytes are the same either way:
 * the cache only remembers what fz_recipe_produce returned. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "fz_config.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/vec.h"
#include "view/internal.h"
#include "view/tree.h"

#define FZ_CRC_STEP (4u << 20)
/* FZ_VIEW_CHUNK (view.h) changes every key's meaning: it is part of
 * FZ_VIEW_CACHE_FORMAT. */
/* Prefix of every key text: bump the number when the bytes a recipe
 * produces change meaning; the fzfs version is included so a release that
 * fixes a kernel never serves an older release's bytes. */
#define FZ_VIEW_CACHE_FORMAT "fzfs-cache-1 chunk=4MiB fzfs=" FZ_VERSION "\n"

/* How a read stores the values it computes in the cache (store_mode). */
typedef enum {
    READ_STORE,      /* as the cache says, never waiting for its writer */
    READ_STORE_WAIT, /* waiting for room in the writer's queue (all_crcs) */
    READ_NO_STORE,   /* never: the caller keeps the bytes (fz_view_read_uncached) */
} read_store;

static int read_range(fz_view *v, uint32_t node, uint64_t off, uint64_t len, uint8_t *buf,
                      read_store keep);

/* ---- cache keys ---- */

static int put_identity(fz_buf *t, const fz_srcfile *f)
{
    return fz_buf_printf(t, "dev=%llu ino=%llu size=%llu mtime_ns=%lld ctime_ns=%lld",
                         (unsigned long long)f->dev, (unsigned long long)f->ino,
                         (unsigned long long)f->size, (long long)f->mtime_ns,
                         (long long)f->ctime_ns);
}

/* recipe_keys[i] = hash of (format, recipe text, source identity). */
static int make_recipe_keys(fz_view *v)
{
    int rc = 0;
    fz_buf t = FZ_BUF_INIT;
    fz_cache_key *keys = calloc(v->nrecipes ? v->nrecipes : 1, sizeof *keys);
    if (!keys)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < v->nrecipes && rc == 0; i++) {
        const fz_recipe *r = &v->recipes[i];
        /* the recipe's source file (none: nothing is cached) */
        uint32_t fi = v->recipe_file[i];
        const fz_srcfile *f = fi < v->nfiles ? &v->files[fi] : NULL;
        uint64_t span_off;
        keys[i].chunk = UINT64_MAX;
        if (!f || fz_recipe_is_span(r, &span_off))
            continue;
        t.len = 0;
        if (!(rc = fz_buf_puts(&t, FZ_VIEW_CACHE_FORMAT "recipe ")) &&
            !(rc = fz_recipe_describe(r, &t)) && !(rc = fz_buf_puts(&t, "\nsource ")) &&
            !(rc = put_identity(&t, f)))
            fz_cache_key_for(&keys[i], t.data, t.len, 0);
    }
    fz_buf_free(&t);
    if (rc) {
        free(keys);
        return rc;
    }
    if ((rc = fz_tree_keep(v, (uint8_t *)keys)))
        return rc;
    v->recipe_keys = keys;
    return 0;
}

/* ---- source identity ----
 *
 * Bytes are only served while the source files they come from are what the
 * view was built from. A file truncated under the view would otherwise give
 * short reads (the kernel takes a short FUSE reply for end of file and
 * shrinks the mounted file), and one rewritten in place would give new
 * bytes under headers, sizes and CRCs computed from the old ones. The held
 * fd is fstat'ed: a file replaced by rename keeps serving its old inode,
 * which is consistent, so only changes to the inode itself count. */

/* Indexes of the source files of node i's segments (deps). Build time,
 * single-threaded. */
int fz_view_index_sources(fz_view *v)
{
    uint32_t *start = calloc((size_t)v->nnodes + 1, sizeof *start);
    uint32_t *deps = NULL, *seen = calloc(v->nfiles ? v->nfiles : 1, sizeof *seen);
    const uint32_t *rf = v->recipe_file;
    size_t n = 0, cap = 0;
    int rc = 0;
    if (!start || !seen) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    /* seen[f] == node + 1: file f already listed for this node. */
    for (uint32_t i = 0; i < v->nnodes; i++) {
        const fz_node *nd = &v->nodes[i];
        start[i] = (uint32_t)n;
        for (uint32_t k = 0; nd->kind == FZ_NODE_FILE && k < nd->nsegs; k++) {
            const fz_seg *sg = &nd->segs[k];
            uint32_t f = sg->kind == FZ_SEG_SPAN       ? sg->u.span.src
                         : sg->kind == FZ_SEG_COMPUTED ? rf[sg->u.recipe]
                                                       : UINT32_MAX;
            if (f >= v->nfiles || seen[f] == i + 1)
                continue;
            seen[f] = i + 1;
            if ((rc = FZ_VEC_RESERVE(deps, cap, n + 1)))
                goto done;
            deps[n++] = f;
        }
    }
    start[v->nnodes] = (uint32_t)n;
    if (!deps && !(deps = malloc(sizeof *deps))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    /* The view keeps the arrays (fz_tree_keep frees one it cannot keep). */
    uint32_t **mine[] = {&start, &deps}, **dst[] = {&v->dep_start, &v->deps};
    for (int k = 0; k < 2; k++) {
        uint32_t *p = *mine[k];
        *mine[k] = NULL;
        if (rc)
            free(p);
        else if ((rc = fz_tree_keep(v, (uint8_t *)p)) == 0)
            *dst[k] = p;
    }
done:
    free(start);
    free(deps);
    free(seen);
    return rc;
}

static int64_t ns_of(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void describe_identity(char *out, size_t n, uint64_t size, int64_t mtime, int64_t ctime)
{
    snprintf(out, n, "%" PRIu64 " bytes, mtime %lld.%09lld, ctime %lld.%09lld", size,
             (long long)(mtime / 1000000000), (long long)(mtime % 1000000000),
             (long long)(ctime / 1000000000), (long long)(ctime % 1000000000));
}

/* The files made from source fi, for a log line that names no file being
 * served: "a, b, c and 4 more" ("" for none). Once per changed source. */
static void files_made_from(const fz_view *v, uint32_t fi, char *out, size_t n)
{
    size_t used = 0;
    uint32_t count = 0;
    out[0] = 0;
    for (uint32_t i = 0; v->dep_start && i < v->nnodes; i++)
        for (uint32_t k = v->dep_start[i]; k < v->dep_start[i + 1]; k++) {
            if (v->deps[k] != fi)
                continue;
            if (count++ < 3 && used < n)
                used += (size_t)snprintf(out + used, n - used, "%s%s", count > 1 ? ", " : "",
                                         v->nodes[i].path);
            break;
        }
    if (count > 3 && used < n)
        snprintf(out + used, n - used, " and %u more", count - 3);
}

/* Check source file fi; `what` names the file being served, or is NULL. */
static int check_file(fz_view *v, uint32_t fi, const char *what)
{
    fz_srcfile *f = &v->files[fi];
    const char *sep = what ? ": " : "";
    struct stat st;
    what = what ? what : "";
    if (atomic_load_explicit(&f->changed, memory_order_relaxed))
        return fz_error_set(FZ_EIO,
                            "%s%ssource %s changed after fzfs opened it; remount (or "
                            "rerun) to use the new contents",
                            what, sep, f->path);
    if (fstat(f->fd, &st) != 0)
        return fz_error_set(FZ_EIO, "%s%scannot stat source %s: %s", what, sep, f->path,
                            strerror(errno));
    /* The ctime moves with any change to the inode, even a rewrite that puts
     * the old mtime back. It also moves when a link is added or removed (the
     * file renamed over or deleted: the view goes on serving the inode it
     * holds, which is consistent), so a ctime move with a new link count is
     * not taken for a change; a chmod is (a false alarm costs a remount, a
     * missed rewrite costs wrong bytes). */
    if (st.st_dev == f->dev && st.st_ino == f->ino && (uint64_t)st.st_size == f->size &&
        ns_of(st.st_mtim) == f->mtime_ns &&
        (ns_of(st.st_ctim) == f->ctime_ns || st.st_nlink != f->nlink))
        return 0;
    char was[128], now[128];
    describe_identity(was, sizeof was, f->size, f->mtime_ns, f->ctime_ns);
    describe_identity(now, sizeof now, (uint64_t)st.st_size, ns_of(st.st_mtim), ns_of(st.st_ctim));
    if (!atomic_exchange(&f->changed, true) && v->log_changes) {
        char made[512];
        const char *files = what, *fsep = sep;
        if (!*what) { /* found by no read (the mount's source watcher) */
            files_made_from(v, fi, made, sizeof made);
            files = made;
            fsep = *made ? ": " : "";
        }
        fz_log(FZ_LOG_ERROR,
               "%s%ssource %s changed after fzfs opened it (was %s, now %s): "
               "every file made from it fails with an I/O error from now on; remount to serve "
               "the new contents",
               files, fsep, f->path, was, now);
    }
    return fz_error_set(FZ_EIO,
                        "%s%ssource %s changed after fzfs opened it (was %s, now %s); "
                        "remount (or rerun) to use the new contents",
                        what, sep, f->path, was, now);
}

void fz_view_log_changes(fz_view *v)
{
    v->log_changes = true;
}

int fz_view_check_node(fz_view *v, uint32_t node)
{
    if (node >= v->nnodes || !v->dep_start)
        return 0;
    for (uint32_t k = v->dep_start[node]; k < v->dep_start[node + 1]; k++) {
        int rc = check_file(v, v->deps[k], v->nodes[node].path);
        if (rc)
            return rc;
    }
    return 0;
}

int fz_view_check_sources(fz_view *v)
{
    for (uint32_t f = 0; f < v->nfiles; f++) {
        int rc = check_file(v, f, NULL);
        if (rc)
            return rc;
    }
    return 0;
}

uint32_t fz_view_source_count(const fz_view *v)
{
    return v->nfiles;
}

const char *fz_view_source_path(const fz_view *v, uint32_t i)
{
    return i < v->nfiles ? v->files[i].path : NULL;
}

bool fz_view_source_changed(fz_view *v, uint32_t i, bool check)
{
    if (i >= v->nfiles)
        return false;
    if (check)
        return check_file(v, i, NULL) != 0;
    return atomic_load_explicit(&v->files[i].changed, memory_order_relaxed);
}

bool fz_view_source_replaced(const fz_view *v, uint32_t i, const char *path)
{
    if (i >= v->nfiles)
        return false;
    struct stat st;
    if (stat(path ? path : v->files[i].path, &st) != 0)
        return errno == ENOENT || errno == ENOTDIR;
    return st.st_dev != v->files[i].dev || st.st_ino != v->files[i].ino;
}

bool fz_view_node_stale(const fz_view *v, uint32_t node)
{
    if (node >= v->nnodes || !v->dep_start)
        return false;
    for (uint32_t k = v->dep_start[node]; k < v->dep_start[node + 1]; k++)
        if (atomic_load_explicit(&v->files[v->deps[k]].changed, memory_order_relaxed))
            return true;
    return false;
}

/* Index of the first segment of n that ends after off. */
static uint32_t first_seg(const fz_node *n, uint64_t off)
{
    uint32_t lo = 0, hi = n->nsegs;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (n->segs[mid].off + n->segs[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

bool fz_view_direct(fz_view *v, uint32_t node, uint64_t off, uint64_t len, fz_piece *pieces,
                    size_t max, size_t *n_out)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE)
        return false;
    const fz_node *n = &v->nodes[node];
    if (off > n->size || len > n->size - off || fz_view_check_node(v, node) != 0)
        return false;
    size_t k = 0;
    for (uint32_t i = first_seg(n, off); i < n->nsegs && len > 0; i++, k++) {
        const fz_seg *s = &n->segs[i];
        if (k == max || (s->kind != FZ_SEG_LITERAL && s->kind != FZ_SEG_SPAN))
            return false;
        uint64_t so = off - s->off;
        uint64_t take = s->len - so < len ? s->len - so : len;
        if (s->kind == FZ_SEG_LITERAL)
            pieces[k] = (fz_piece){s->u.lit + so, -1, 0, take};
        else
            pieces[k] = (fz_piece){NULL, s->u.span.fd, s->u.span.off + so, take};
        off += take;
        len -= take;
    }
    *n_out = k;
    return true;
}

/* Append to t where each byte of node n's [off, end) comes from: a literal
 * piece's hash, a span's source identity and range, a computed piece's
 * recipe key and range, and (deferred_ok) a zip header or central
 * directory by record (the layout that makes it is described once by the
 * caller). -1 when some part cannot be described (a recipe that is not
 * cached, a deferred piece without deferred_ok). */
static int describe_range(const fz_view *v, const fz_node *n, uint64_t off, uint64_t end,
                          bool deferred_ok, fz_buf *t)
{
    const fz_cache_key *rk = v->recipe_keys;
    int rc = 0;
    for (uint32_t i = first_seg(n, off); rc == 0 && i < n->nsegs && off < end; i++) {
        const fz_seg *s = &n->segs[i];
        uint64_t so = off - s->off;
        uint64_t k = s->len - so < end - off ? s->len - so : end - off;
        const fz_srcfile *f;
        fz_cache_key h;
        switch (s->kind) {
        case FZ_SEG_LITERAL:
            fz_cache_key_for(&h, s->u.lit + so, k, 0);
            rc = fz_buf_printf(t, "literal %016llx%016llx\n", (unsigned long long)h.hi,
                               (unsigned long long)h.lo);
            break;
        case FZ_SEG_SPAN:
            if (s->u.span.src >= v->nfiles || v->files[s->u.span.src].fd != s->u.span.fd) {
                rc = -1;
                break;
            }
            f = &v->files[s->u.span.src];
            if (!(rc = fz_buf_puts(t, "span ")) && !(rc = put_identity(t, f)))
                rc = fz_buf_printf(t, " off=%llu len=%llu\n",
                                   (unsigned long long)(s->u.span.off + so), (unsigned long long)k);
            break;
        case FZ_SEG_COMPUTED:
            if (!rk || rk[s->u.recipe].chunk == UINT64_MAX) {
                rc = -1;
                break;
            }
            rc = fz_buf_printf(t, "recipe %016llx%016llx off=%llu len=%llu\n",
                               (unsigned long long)rk[s->u.recipe].hi,
                               (unsigned long long)rk[s->u.recipe].lo, (unsigned long long)so,
                               (unsigned long long)k);
            break;
        case FZ_SEG_DEFERRED:
            rc = deferred_ok
                     ? fz_buf_printf(t, "zip %u rec=%d off=%llu len=%llu\n", s->u.def.zip,
                                     s->u.def.rec, (unsigned long long)so, (unsigned long long)k)
                     : -1;
            break;
        }
        off += k;
    }
    return rc == 0 && off == end ? 0 : -1;
}

/* Key of the CRC of record rec of zip zi: a description of where each of
 * its data bytes comes from. -1 when some part cannot be described. */
static int record_key(const fz_view *v, uint32_t zi, size_t rec, fz_cache_key *key)
{
    const fz_zipw_rec *r = &v->zips[zi].L.rec[rec];
    fz_buf t = FZ_BUF_INIT;
    int rc = fz_buf_printf(&t, FZ_VIEW_CACHE_FORMAT "zip-record-crc32 size=%llu\n",
                           (unsigned long long)r->size);
    if (rc == 0)
        rc = describe_range(v, &v->nodes[v->zips[zi].node], r->data_off, r->data_off + r->size,
                            false, &t);
    if (rc == 0)
        fz_cache_key_for(key, t.data, t.len, 0);
    fz_buf_free(&t);
    return rc ? -1 : 0;
}

/* A zip's layout, which with its records' bytes makes its headers and
 * central directory: every record's name, size and place. */
static int describe_zip(const fz_zipview *z, uint32_t zi, fz_buf *t)
{
    int rc = fz_buf_printf(t, "zip %u records=%zu cd_off=%llu cd_len=%llu\n", zi, z->L.n,
                           (unsigned long long)z->L.cd_off, (unsigned long long)z->L.cd_len);
    for (size_t i = 0; rc == 0 && i < z->L.n; i++) {
        const fz_zipw_rec *r = &z->L.rec[i];
        fz_cache_key h;
        fz_cache_key_for(&h, r->name, strlen(r->name), 0);
        rc = fz_buf_printf(t, "record %016llx%016llx size=%llu header=%llu+%u\n",
                           (unsigned long long)h.hi, (unsigned long long)h.lo,
                           (unsigned long long)r->size, (unsigned long long)r->header_off,
                           r->header_len);
    }
    return rc;
}

bool fz_view_node_computed(const fz_view *v, uint32_t node)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE)
        return false;
    const fz_node *n = &v->nodes[node];
    for (uint32_t i = 0; i < n->nsegs; i++)
        if (n->segs[i].kind == FZ_SEG_COMPUTED || n->segs[i].kind == FZ_SEG_DEFERRED)
            return true;
    return false;
}

int fz_view_node_key(const fz_view *v, uint32_t node, fz_cache_key *key)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE || !v->recipe_keys)
        return -1;
    const fz_node *n = &v->nodes[node];
    fz_buf t = FZ_BUF_INIT;
    int rc =
        fz_buf_printf(&t, FZ_VIEW_CACHE_FORMAT "file size=%llu\n", (unsigned long long)n->size);
    for (uint32_t zi = 0; rc == 0 && zi < v->nzips; zi++)
        if (v->zips[zi].node == node)
            rc = describe_zip(&v->zips[zi], zi, &t);
    if (rc == 0)
        rc = describe_range(v, n, 0, n->size, true, &t);
    if (rc == 0)
        fz_cache_key_for(key, t.data, t.len, 0);
    fz_buf_free(&t);
    return rc ? -1 : 0;
}

int fz_view_open_cache(fz_view *v, const char *dir, uint64_t size, int mode)
{
    fz_view_close_cache(v);
    char *d = dir ? strdup(dir) : fz_cache_default_dir();
    if (!d)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    fz_cache *c = NULL;
    int rc = fz_cache_open_flags(&c, d, size, mode == FZ_VIEW_CACHE_FILL ? FZ_CACHE_KEEP_ALL : 0u);
    if (rc) {
        free(d);
        return rc;
    }
    v->owned_cache = c;
    v->owned_cache_dir = d;
    fz_view_set_cache(v, c, mode != FZ_VIEW_CACHE_REUSE);
    return 0;
}

void fz_view_close_cache(fz_view *v)
{
    if (!v->owned_cache)
        return;
    fz_view_set_cache(v, NULL, false);
    fz_cache_close(v->owned_cache);
    v->owned_cache = NULL;
    free(v->owned_cache_dir);
    v->owned_cache_dir = NULL;
}

const char *fz_view_cache_dir(const fz_view *v)
{
    return v->owned_cache_dir;
}

struct fz_cache *fz_view_cache(const fz_view *v)
{
    return v->cache;
}

void fz_view_cache_counters(const fz_view *v, uint64_t *hits, uint64_t *misses, uint64_t *fills,
                            uint64_t *dropped)
{
    fz_cache_stats s;
    fz_cache_handle_stats(v->owned_cache, &s);
    *hits = s.hits;
    *misses = s.misses;
    *fills = s.fills;
    *dropped = s.dropped;
}

void fz_view_set_cache(fz_view *v, struct fz_cache *c, bool store)
{
    if (c && !v->recipe_keys && make_recipe_keys(v) != 0) {
        fz_log(FZ_LOG_WARNING, "computing without the cache: %s", fz_error_msg());
        c = NULL;
    }
    v->cache = c;
    v->cache_store = c && store;
}

/* ---- computed segments ---- */

typedef struct {
    fz_view *v;
    uint32_t ri;
    uint64_t off;
} fz_chunk_fill;

/* A chunk for the cache: checked against its source after computing, so
 * bytes computed from a changed source are never stored under the key of
 * the old one. */
static int fill_chunk(void *arg, uint8_t *out, uint64_t len)
{
    fz_chunk_fill *f = arg;
    int rc = fz_recipe_produce(&f->v->recipes[f->ri], f->off, len, out);
    uint32_t src = f->v->recipe_file ? f->v->recipe_file[f->ri] : UINT32_MAX;
    if (rc == 0 && src != UINT32_MAX)
        rc = check_file(f->v, src, NULL);
    return rc;
}

/* Whether recipe ri's chunks go through the cache. */
static bool cached_recipe(const fz_view *v, uint32_t ri)
{
    return v->cache && v->recipe_keys && v->recipe_keys[ri].chunk != UINT64_MAX;
}

/* The chunk of recipe ri holding output byte off: its key, where it starts
 * and how long it is. */
static void chunk_at(const fz_view *v, uint32_t ri, uint64_t off, fz_cache_key *key,
                     uint64_t *start, uint64_t *len)
{
    uint64_t nbytes = v->recipes[ri].nbytes;
    *key = v->recipe_keys[ri];
    key->chunk = off / FZ_VIEW_CHUNK;
    *start = key->chunk * FZ_VIEW_CHUNK;
    *len = nbytes - *start < FZ_VIEW_CHUNK ? nbytes - *start : FZ_VIEW_CHUNK;
}

/* How a fetch stores what it computes. */
static int store_mode(const fz_view *v, read_store keep)
{
    if (!v->cache_store || keep == READ_NO_STORE)
        return FZ_CACHE_NO_STORE;
    return keep == READ_STORE_WAIT ? FZ_CACHE_STORE_WAIT : FZ_CACHE_STORE;
}

/* Bytes [off, off+len) of recipe ri's output; keep as store_mode's. With
 * READ_NO_STORE each chunk's part comes from the cache when it holds the
 * chunk, else that part alone is computed (not the whole chunk, as a fill
 * for the cache is). */
static int read_computed(fz_view *v, uint32_t ri, uint64_t off, uint64_t len, uint8_t *out,
                         read_store keep)
{
    if (!cached_recipe(v, ri))
        return fz_recipe_produce(&v->recipes[ri], off, len, out);
    int store = store_mode(v, keep);
    while (len > 0) {
        fz_cache_key key;
        uint64_t start, clen;
        chunk_at(v, ri, off, &key, &start, &clen);
        uint64_t in = off - start;
        uint64_t n = clen - in < len ? clen - in : len;
        fz_chunk_fill f = {v, ri, start};
        int rc = 0;
        if (keep != READ_NO_STORE)
            rc = fz_cache_fetch_range(v->cache, &key, clen, in, n, out, fill_chunk, &f, store);
        else if (!fz_cache_peek_range(v->cache, &key, clen, in, n, out))
            rc = fz_recipe_produce(&v->recipes[ri], off, n, out);
        if (rc)
            return rc;
        off += n;
        out += n;
        len -= n;
    }
    return 0;
}

bool fz_view_can_prefetch(const fz_view *v)
{
    return v->cache && v->cache_store && v->recipe_keys;
}

int fz_view_prefetch(fz_view *v, uint32_t node, uint64_t off, uint64_t len)
{
    if (!fz_view_can_prefetch(v) || node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE ||
        fz_view_node_stale(v, node))
        return 0;
    const fz_node *n = &v->nodes[node];
    if (off >= n->size)
        return 0;
    uint64_t end = len < n->size - off ? off + len : n->size;
    int first = 0, filled = 0;
    for (uint32_t i = first_seg(n, off); i < n->nsegs && n->segs[i].off < end; i++) {
        const fz_seg *s = &n->segs[i];
        if (s->kind != FZ_SEG_COMPUTED || !cached_recipe(v, s->u.recipe))
            continue;
        uint64_t so = off > s->off ? off - s->off : 0;
        uint64_t se = end - s->off < s->len ? end - s->off : s->len;
        while (so < se) {
            fz_cache_key key;
            uint64_t start, clen;
            chunk_at(v, s->u.recipe, so, &key, &start, &clen);
            fz_chunk_fill f = {v, s->u.recipe, start};
            /* (Computed and checked as a read's fill is: fill_chunk.) */
            int rc = fz_cache_prefetch(v->cache, &key, clen, fill_chunk, &f);
            if (rc < 0 && !first)
                first = rc;
            filled += rc > 0;
            so = start + clen;
        }
    }
    return first ? first : filled;
}

/* ---- zip record CRCs ---- */

/* The CRC-32 of record `rec` of zip `zi`, computed by reading its bytes
 * through the view (so computed tensors may come from the cache); keep as
 * read_computed's. */
static int compute_record_crc(fz_view *v, uint32_t zi, size_t rec, read_store keep, uint32_t *out)
{
    fz_zipview *z = &v->zips[zi];
    const fz_zipw_rec *r = &z->L.rec[rec];
    uint64_t step = r->size < FZ_CRC_STEP ? r->size : FZ_CRC_STEP;
    uint8_t *buf = malloc(step ? step : 1);
    if (!buf)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    uLong c = crc32(0L, Z_NULL, 0);
    for (uint64_t o = 0; o < r->size; o += step) {
        uint64_t n = r->size - o < step ? r->size - o : step;
        int rc = read_range(v, z->node, r->data_off + o, n, buf, keep);
        if (rc) {
            free(buf);
            return rc;
        }
        c = crc32(c, buf, (uInt)n);
    }
    free(buf);
    *out = (uint32_t)c;
    return 0;
}

typedef struct {
    fz_view *v;
    uint32_t zi;
    size_t rec;
    read_store keep;
} fz_crc_fill;

static int fill_crc(void *arg, uint8_t *out, uint64_t len)
{
    fz_crc_fill *f = arg;
    uint32_t crc;
    if (len != 4)
        return fz_error_set(FZ_EINVAL, "internal error: CRC entry of %" PRIu64 " bytes", len);
    int rc = compute_record_crc(f->v, f->zi, f->rec, f->keep, &crc);
    if (rc == 0) /* as fill_chunk: never store a CRC of changed bytes */
        rc = fz_view_check_node(f->v, f->v->zips[f->zi].node);
    for (int i = 0; rc == 0 && i < 4; i++)
        out[i] = (uint8_t)(crc >> (8 * i));
    return rc;
}

static int record_crc(fz_view *v, uint32_t zi, size_t rec, read_store keep, uint32_t *out)
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
    /* Not yet known: from the cache, else read the record through the
     * view. Two threads may both compute it (the cache makes them share
     * one computation); the result is the same, so the race is harmless. */
    fz_cache_key key;
    int rc;
    if (v->cache && record_key(v, zi, rec, &key) == 0) {
        uint8_t b[4];
        fz_crc_fill f = {v, zi, rec, keep};
        rc = fz_cache_fetch(v->cache, &key, 4, b, fill_crc, &f, store_mode(v, keep));
        crc = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    } else {
        rc = compute_record_crc(v, zi, rec, keep, &crc);
    }
    if (rc)
        return rc;
    pthread_mutex_lock(&v->crc_lock);
    z->crc[rec] = crc;
    z->crc_known[rec] = true;
    pthread_mutex_unlock(&v->crc_lock);
    *out = crc;
    return 0;
}

static int fill_known(void *arg, uint8_t *out, uint64_t len)
{
    uint32_t crc = *(const uint32_t *)arg;
    if (len != 4)
        return fz_error_set(FZ_EINVAL, "internal error: CRC entry of %" PRIu64 " bytes", len);
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(crc >> (8 * i));
    return 0;
}

void fz_view_note_crc(fz_view *v, uint32_t zip, int32_t rec, uint32_t crc, bool store)
{
    if (zip >= v->nzips || rec < 0 || (size_t)rec >= v->zips[zip].L.n)
        return;
    pthread_mutex_lock(&v->crc_lock);
    bool known = v->zips[zip].crc_known[rec];
    v->zips[zip].crc[rec] = crc;
    v->zips[zip].crc_known[rec] = true;
    pthread_mutex_unlock(&v->crc_lock);
    /* A filling reader (materialize --fill-cache) keeps the CRC for a later
     * mount; CRCs known at build time (literal records) are not stored. */
    fz_cache_key key;
    uint8_t b[4];
    if (store && !known && v->cache && v->cache_store && record_key(v, zip, (size_t)rec, &key) == 0)
        fz_cache_fetch(v->cache, &key, 4, b, fill_known, &crc, true);
}

void fz_view_set_runner(fz_view *v, fz_view_runner_fn run, void *ctx)
{
    v->runner = run;
    v->runner_ctx = ctx;
}

/* The CRCs of every record of a zip, as tasks of a runner: the first error
 * (code and message: a task's thread is not the caller's) stops the rest. */
typedef struct {
    fz_view *v;
    uint32_t zi;
    read_store keep;
    uint32_t *crcs;
    fz_first_error err;
} fz_crc_tasks;

static void crc_task(void *arg, size_t i)
{
    fz_crc_tasks *t = arg;
    if (!fz_first_error_code(&t->err))
        fz_first_error_note(&t->err, record_crc(t->v, t->zi, i, t->keep, &t->crcs[i]));
}

/* Every record's CRC, for a central directory: the whole shard computed
 * before the reader that asked (a loader, which reads the directory first)
 * gets a byte, and the records read right after. So its chunks are stored
 * waiting for room in the cache's write queue (FZ_CACHE_STORE_WAIT), never
 * dropped: dropping what the writer has not caught up with (a read's rule)
 * had most of a large shard computed twice behind a slow writer. Memory
 * stays bounded by the queue, and the wait falls on a read that waits for
 * the whole pass anyway (never on a stalled writer: the cache stops
 * waiting after 5 s on one batch). Everything else still never waits: a local
 * header's one record (a sequential reader reads its bytes next, from the
 * queue) and the reads of the records, whose stores may push older values
 * out, CRC chunks too (computed again if read again). With READ_NO_STORE
 * (an uncached read) nothing is stored at all. */
static int all_crcs(fz_view *v, uint32_t zi, read_store keep, uint32_t *crcs)
{
    size_t n = v->zips[zi].L.n;
    keep = keep == READ_NO_STORE ? READ_NO_STORE : READ_STORE_WAIT;
    if (!v->runner || n < 2) {
        for (size_t i = 0; i < n; i++) {
            int rc = record_crc(v, zi, i, keep, &crcs[i]);
            if (rc)
                return rc;
        }
        return 0;
    }
    fz_crc_tasks t = {.v = v, .zi = zi, .keep = keep, .crcs = crcs};
    fz_first_error_init(&t.err);
    v->runner(v->runner_ctx, n, crc_task, &t);
    int rc = fz_first_error_raise(&t.err);
    fz_first_error_destroy(&t.err);
    return rc;
}

/* Bytes of a deferred segment, generated whole and sliced; CRCs not yet
 * known are computed (keep as read_computed's). */
static int read_deferred(fz_view *v, const fz_seg *s, uint64_t off, uint64_t len, uint8_t *out,
                         read_store keep)
{
    fz_zipview *z = &v->zips[s->u.def.zip];
    uint8_t *tmp = malloc(s->len ? s->len : 1);
    uint32_t *crcs = NULL;
    int rc = 0;
    if (!tmp)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (s->u.def.rec >= 0) {
        uint32_t crc;
        rc = record_crc(v, s->u.def.zip, (size_t)s->u.def.rec, keep, &crc);
        if (rc == 0)
            fz_zipw_local_header(&z->L, (size_t)s->u.def.rec, crc, tmp);
    } else {
        crcs = malloc(z->L.n * sizeof *crcs);
        if (!crcs)
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
        else
            rc = all_crcs(v, s->u.def.zip, keep, crcs);
        if (rc == 0)
            fz_zipw_central(&z->L, crcs, tmp);
    }
    if (rc == 0)
        memcpy(out, tmp + off, (size_t)len);
    free(tmp);
    free(crcs);
    return rc;
}

static int read_range(fz_view *v, uint32_t node, uint64_t off, uint64_t len, uint8_t *buf,
                      read_store keep)
{
    const fz_node *n = &v->nodes[node];
    for (uint32_t i = first_seg(n, off); i < n->nsegs && len > 0; i++) {
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
            rc = read_computed(v, s->u.recipe, so, k, buf, keep);
            break;
        case FZ_SEG_DEFERRED:
            rc = read_deferred(v, s, so, k, buf, keep);
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

/* fz_view_read and fz_view_read_uncached. */
static int read_checked(fz_view *v, uint32_t node, uint64_t off, uint64_t len, void *buf,
                        read_store keep)
{
    if (node >= v->nnodes || v->nodes[node].kind != FZ_NODE_FILE)
        return fz_error_set(FZ_EINVAL, "node %u is not a file", node);
    const fz_node *n = &v->nodes[node];
    if (off > n->size || len > n->size - off)
        return fz_error_set(FZ_EINVAL, "%s: read [%llu, +%llu) past the end (%llu)", n->path,
                            (unsigned long long)off, (unsigned long long)len,
                            (unsigned long long)n->size);
    /* Checked before (nothing is computed from a changed source) and after
     * (a change during the read is not served). */
    int rc = fz_view_check_node(v, node);
    if (rc == 0)
        rc = read_range(v, node, off, len, buf, keep);
    if (rc == 0)
        rc = fz_view_check_node(v, node);
    return rc;
}

int fz_view_read(fz_view *v, uint32_t node, uint64_t off, uint64_t len, void *buf)
{
    return read_checked(v, node, off, len, buf, READ_STORE);
}

int fz_view_read_uncached(fz_view *v, uint32_t node, uint64_t off, uint64_t len, void *buf)
{
    return read_checked(v, node, off, len, buf, READ_NO_STORE);
}
