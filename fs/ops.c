/* The FUSE low-level operations over a view: inode = node index + 1 (the
 * root is node 0 = FUSE_ROOT_ID), nothing is ever allocated per inode, so
 * lookup counts need no bookkeeping and forget is a no-op. */
#include "fs/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fs/keep.h"
#include "util/error.h"
#include "util/log.h"

/* The view never changes while mounted: let the kernel cache for a day. */
#define FZ_FS_TIMEOUT 86400.0
/* The view's permission bits without write bits: the mount is read-only. */
#define FZ_FS_PERM 0555
/* Most segments touched by a read answered in the worker; reads spanning
 * more (tiny segments, e.g. a torch zip's headers) go through fz_view_read. */
#define FZ_FS_MAX_FAST_SEGS 16
/* fuse_file_info.fh of an open: 0, or what passthrough_attach made of it. */
#define FZ_FH_BACKING 1 /* holds its node's passthrough backing */
#define FZ_FH_CACHED 2  /* through the daemon, of a node that could be kept */
/* Progress lines for computed files of at least this size, at most one per
 * file every fs->progress_s (plus the first and the last). */
#define FZ_PROGRESS_MIN_SIZE (8u << 20)

/* Prefetch jobs queued at most (those past it are not queued). */
#define FZ_FS_AHEAD_QUEUED 64u
/* A sequential run (compute_ahead) is read ahead once it is this long; a
 * read belongs to it when it starts at most FZ_FS_RUN_GAP past its end
 * (the kernel's readahead window: its reads arrive in any order) and at
 * most FZ_FS_RUN_BEHIND before it. */
#define FZ_FS_RUN_MIN (8ull << 20)
#define FZ_FS_RUN_GAP (4ull << 20)
#define FZ_FS_RUN_BEHIND (32ull << 20)

typedef struct fz_fs_group fz_fs_group;

struct fz_fs_job {
    fz_fs_job *next;
    fuse_req_t req; /* NULL: compute [off, off+len) ahead, answer nothing */
    uint32_t node;
    uint64_t off, len;
    fz_fs_group *group; /* non-NULL (req NULL): help with this group's tasks */
};

static fz_fs *fs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

/* The node of an inode number, or NULL if out of range. */
static const fz_node *node_of(fz_fs *fs, fuse_ino_t ino, uint32_t *idx)
{
    if (ino < FUSE_ROOT_ID || ino - FUSE_ROOT_ID >= fs->nnodes)
        return NULL;
    *idx = (uint32_t)(ino - FUSE_ROOT_ID);
    return fz_view_node(fs->v, *idx);
}

static void fill_stat(fz_fs *fs, uint32_t idx, struct stat *st)
{
    const fz_node *n = fz_view_node(fs->v, idx);
    memset(st, 0, sizeof *st);
    st->st_ino = (ino_t)idx + FUSE_ROOT_ID;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
    st->st_mtim = st->st_ctim = st->st_atim = fs->mtime;
    switch (n->kind) {
    case FZ_NODE_DIR:
        st->st_mode = S_IFDIR | (n->mode & FZ_FS_PERM);
        st->st_nlink = 2;
        for (uint32_t i = 0; i < n->nchildren; i++)
            if (fz_view_node(fs->v, n->children[i])->kind == FZ_NODE_DIR)
                st->st_nlink++;
        st->st_size = 4096;
        break;
    case FZ_NODE_SYMLINK:
        st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        st->st_size = (off_t)strlen(n->target);
        break;
    case FZ_NODE_FILE:
        st->st_mode = S_IFREG | (n->mode & FZ_FS_PERM);
        st->st_nlink = 1;
        st->st_size = (off_t)n->size;
        break;
    }
    st->st_blksize = 4096;
    st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
}

static void fill_entry(fz_fs *fs, uint32_t idx, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof *e);
    e->ino = (fuse_ino_t)idx + FUSE_ROOT_ID;
    /* A file whose source changed is another inode from then on: the kernel
     * marks the one it had bad, so files already open fail too (fs/watch.h). */
    e->generation = fz_view_node_stale(fs->v, idx) ? 2 : 1;
    e->attr_timeout = FZ_FS_TIMEOUT;
    e->entry_timeout = FZ_FS_TIMEOUT;
    fill_stat(fs, idx, &e->attr);
}

/* Child `name` of directory node `dir` (children are sorted by strcmp). */
static uint32_t find_child(fz_fs *fs, const fz_node *dir, const char *name)
{
    uint32_t lo = 0, hi = dir->nchildren;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(fz_view_node(fs->v, dir->children[mid])->name, name);
        if (c == 0)
            return dir->children[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return UINT32_MAX;
}

/* ---- FUSE passthrough -------------------------------------------------
 *
 * A file that is the whole of one unchanged source file (fz_view_backing:
 * a weight shard passed through whole, a copied *.py, optimizer_state.pt)
 * is opened in passthrough mode (Linux 6.9+): its source is registered
 * with the kernel as the backing file, and the kernel then serves read,
 * mmap and readahead of that open straight from the source's page cache,
 * with no FUSE request at all. The kernel wants every concurrent open of
 * an inode on the same backing, so a node keeps one backing id while it
 * has opens (fz_fs_backing, under pt_lock); the last release drops it.
 *
 * Whether a source is unchanged is checked at open (fz_view_check_node, as
 * for every open): a changed source is never opened. A source rewritten in
 * place while a passthrough open is up is seen by the source watcher
 * (fs/watch.h), which has the kernel take the inode for a new one, so that
 * open's reads fail from then on; a map made before keeps the source's
 * pages (docs/design.md).
 *
 * Passthrough is asked for at init when the kernel offers it; it stays off
 * (one log line says why) when forced off, not offered, or not root (the
 * registration needs CAP_SYS_ADMIN), and turns off for good at the first
 * registration that fails (one warning): files not yet open then go
 * through the daemon, files already open keep their backing. */
static void passthrough_init(fz_fs *fs, struct fuse_conn_info *conn)
{
    if (!fs->no_passthrough && !(conn->capable & FUSE_CAP_PASSTHROUGH))
        snprintf(fs->pt_why, sizeof fs->pt_why,
                 "the kernel does not offer it (Linux 6.9+ built with CONFIG_FUSE_PASSTHROUGH)");
    else if (!fs->no_passthrough && geteuid() != 0)
        snprintf(fs->pt_why, sizeof fs->pt_why,
                 "registering a backing file needs root (CAP_SYS_ADMIN)");
    if (fs->no_passthrough || fs->pt_why[0]) {
        fz_info("FUSE passthrough off: %s; every read goes through the daemon", fs->pt_why);
        return;
    }
    conn->want |= FUSE_CAP_PASSTHROUGH;
    /* Sources may live on a stacked filesystem (overlayfs, as in a
     * container); then nothing can be stacked over the mount, which no
     * one does with a model directory. */
    conn->max_backing_stack_depth = FUSE_BACKING_STACKED_OVER;
    atomic_store(&fs->passthrough, true);
    fz_info("FUSE passthrough on: files that are whole unchanged source files are read by the "
            "kernel straight from the source");
}

/* Register fd (src names it in messages) as a backing file for node idx's
 * opens (pt_lock held). False, turning passthrough off for good with one
 * warning, when the kernel refuses. */
static bool passthrough_register(fz_fs *fs, fuse_req_t req, uint32_t idx, int fd, const char *src)
{
    int id = fuse_passthrough_open(req, fd);
    int e = errno;
    if (id > 0) {
        fs->backing[idx].id = id;
        fz_debug("passthrough: %s/%s reads %s (backing id %d)", fs->mnt,
                 fz_view_node(fs->v, idx)->path, src, id);
        return true;
    }
    snprintf(fs->pt_why, sizeof fs->pt_why, "registering %s as a backing file failed: %s%s", src,
             strerror(e),
             e == EPERM   ? " (it needs CAP_SYS_ADMIN in the initial user namespace)"
             : e == ELOOP ? " (the file is on a stacked filesystem: another FUSE "
                            "passthrough mount, or an overlayfs over one)"
                          : "");
    atomic_store(&fs->passthrough, false);
    fz_warn("FUSE passthrough off from now on: %s; reads go through the daemon", fs->pt_why);
    return false;
}

/* Open node idx in passthrough mode when passthrough is on (or the node
 * still has a backing) and the node is a whole source file, or a computed
 * file kept whole in the cache (fs/keep.h) while no open of it goes
 * through the daemon: found kept, or computed whole now (the first open of
 * a computed shard waits for that; concurrent opens of the node wait
 * for it to end). Fills fi and counts the open on the node. False: serve
 * it through the daemon (an open of a file that could be kept is counted
 * in ncached until its release). */
static bool passthrough_attach(fz_fs *fs, fuse_req_t req, uint32_t idx, struct fuse_file_info *fi)
{
    int fd = -1;
    const char *src = NULL;
    if (!fs->backing)
        return false;
    bool whole = fz_view_backing(fs->v, idx, &fd, &src);
    bool keepable = !whole && fz_keep_eligible(fs->keep, idx);
    if (!whole && !keepable)
        return false;
    fz_fs_backing *b = &fs->backing[idx];
    pthread_mutex_lock(&fs->pt_lock);
    while (b->id <= 0 && atomic_load(&fs->passthrough)) {
        if (whole) {
            passthrough_register(fs, req, idx, fd, src);
            break;
        }
        if (b->computing) {
            pthread_cond_wait(&fs->pt_cond, &fs->pt_lock);
            continue;
        }
        if (b->ncached > 0)
            break;
        bool computed = false;
        if ((fd = fz_keep_open(fs->keep, idx)) < 0 && fz_keep_eager(fs->keep, idx)) {
            /* Not under the lock: other nodes' opens go on meanwhile. */
            b->computing = true;
            pthread_mutex_unlock(&fs->pt_lock);
            fd = fz_keep_compute(fs->keep, idx);
            pthread_mutex_lock(&fs->pt_lock);
            b->computing = false;
            pthread_cond_broadcast(&fs->pt_cond);
            computed = fd >= 0;
            if (fd < 0) /* (stored meanwhile by another process?) */
                fd = fz_keep_open(fs->keep, idx);
        }
        if (fd >= 0 && atomic_load(&fs->passthrough))
            passthrough_register(fs, req, idx, fd,
                                 computed ? "the copy just computed into the cache"
                                          : "its copy kept in the cache");
        if (fd >= 0)
            close(fd); /* the kernel holds the file from here on */
        break;
    }
    bool ok = b->id > 0;
    if (ok) {
        b->nopen++;
        fi->backing_id = b->id;
        fi->fh = FZ_FH_BACKING; /* this open holds the node's backing (op_release) */
        fi->keep_cache = 0;     /* nothing of the FUSE inode's own page cache is used */
        atomic_fetch_add_explicit(&fs->pt_opens, 1, memory_order_relaxed);
        if (keepable)
            atomic_fetch_add_explicit(&fs->kept_opens, 1, memory_order_relaxed);
    } else if (keepable) {
        b->ncached++;
        fi->fh = FZ_FH_CACHED;
    }
    pthread_mutex_unlock(&fs->pt_lock);
    return ok;
}

/* An open of node idx ended (fh: what passthrough_attach set); the last
 * one holding the backing closes the backing id (with req, a request not
 * yet answered), or leaves it for the next open when req is NULL (an open
 * whose reply the kernel never got). */
static void passthrough_detach(fz_fs *fs, fuse_req_t req, uint32_t idx, uint64_t fh)
{
    fz_fs_backing *b = &fs->backing[idx];
    pthread_mutex_lock(&fs->pt_lock);
    if (fh == FZ_FH_CACHED) {
        if (b->ncached > 0)
            b->ncached--;
    } else if (b->nopen > 0 && --b->nopen == 0 && b->id > 0 && req) {
        fuse_passthrough_close(req, b->id);
        b->id = 0;
    }
    pthread_mutex_unlock(&fs->pt_lock);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    fz_fs *fs = userdata;
    passthrough_init(fs, conn);
    /* Enough requests in flight for a 4 MiB readahead window split into
     * 1 MiB READs across several files (peers-and-design B.3, B.5). */
    conn->max_background = 64;
    conn->congestion_threshold = 48;
    conn->max_readahead = 4u << 20; /* libfuse caps it at the kernel's offer */
    /* libfuse derives the kernel's max_pages from max_write: 1 MiB lets a
     * READ carry 1 MiB instead of 128 KiB, 8x fewer round trips. */
    conn->max_write = 1u << 20;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE)
        conn->want |= FUSE_CAP_SPLICE_WRITE;
    if (conn->capable & FUSE_CAP_SPLICE_MOVE)
        conn->want |= FUSE_CAP_SPLICE_MOVE;
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    /* Attributes never change; nothing for the kernel to revalidate. */
    conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
    fz_debug("FUSE protocol %u.%u: max_readahead %u, max_background %u, splice_write %s, "
             "async_read %s",
             conn->proto_major, conn->proto_minor, conn->max_readahead, conn->max_background,
             conn->want & FUSE_CAP_SPLICE_WRITE ? "on" : "off",
             conn->want & FUSE_CAP_ASYNC_READ ? "on" : "off");
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fz_fs *fs = fs_of(req);
    uint32_t pi;
    const fz_node *p = node_of(fs, parent, &pi);
    if (!p || p->kind != FZ_NODE_DIR) {
        fuse_reply_err(req, p ? ENOTDIR : ENOENT);
        return;
    }
    uint32_t ci = find_child(fs, p, name);
    if (ci == UINT32_MAX) {
        /* A name that is not in the view never will be: cache the miss
         * (loaders probe for pytorch_model.bin, model.safetensors, ...). */
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        e.entry_timeout = FZ_FS_TIMEOUT;
        fuse_reply_entry(req, &e);
        return;
    }
    struct fuse_entry_param e;
    fill_entry(fs, ci, &e);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    fz_fs *fs = fs_of(req);
    uint32_t idx;
    if (!node_of(fs, ino, &idx)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_stat(fs, idx, &st);
    fuse_reply_attr(req, &st, FZ_FS_TIMEOUT);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    uint32_t idx;
    const fz_node *n = node_of(fs_of(req), ino, &idx);
    if (!n || n->kind != FZ_NODE_SYMLINK) {
        fuse_reply_err(req, n ? EINVAL : ENOENT);
        return;
    }
    fuse_reply_readlink(req, n->target);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    uint32_t idx;
    const fz_node *n = node_of(fs_of(req), ino, &idx);
    if (!n || n->kind != FZ_NODE_DIR) {
        fuse_reply_err(req, n ? ENOTDIR : ENOENT);
        return;
    }
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

/* Directory offsets: 0 = start, 1 = after ".", 2 = after "..", 2 + k =
 * after child k. The listing never changes, so offsets stay valid. */
static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
    fz_fs *fs = fs_of(req);
    uint32_t idx;
    const fz_node *n = node_of(fs, ino, &idx);
    if (!n || n->kind != FZ_NODE_DIR) {
        fuse_reply_err(req, n ? ENOTDIR : ENOENT);
        return;
    }
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    for (uint64_t k = off < 0 ? 0 : (uint64_t)off; k < 2ull + n->nchildren; k++) {
        uint32_t ci;
        const char *name;
        if (k == 0) {
            ci = idx;
            name = ".";
        } else if (k == 1) {
            ci = idx == 0 ? 0 : n->parent;
            name = "..";
        } else {
            ci = n->children[k - 2];
            name = fz_view_node(fs->v, ci)->name;
        }
        size_t need;
        if (plus) {
            struct fuse_entry_param e;
            fill_entry(fs, ci, &e);
            need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t)(k + 1));
        } else {
            struct stat st;
            fill_stat(fs, ci, &st);
            need = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(k + 1));
        }
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    readdir_common(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    (void)fi;
    readdir_common(req, ino, size, off, true);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fz_fs *fs = fs_of(req);
    uint32_t idx;
    const fz_node *n = node_of(fs, ino, &idx);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (n->kind == FZ_NODE_DIR) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    /* A file whose source changed is not opened (the view logs which). */
    int rc = fz_view_check_node(fs->v, idx);
    if (rc) {
        fuse_reply_err(req, fz_error_errno(rc));
        return;
    }
    /* Never direct_io: it defeats the page cache, readahead and mmap. */
    fi->keep_cache = 1;
    fi->direct_io = 0;
    fi->noflush = 1;
    fi->fh = 0;
    passthrough_attach(fs, req, idx, fi);
    if (fuse_reply_open(req, fi) != 0 && fi->fh)
        passthrough_detach(fs, NULL, idx, fi->fh); /* no release will come for it */
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fz_fs *fs = fs_of(req);
    uint32_t idx;
    if (fi->fh && fs->backing && node_of(fs, ino, &idx))
        passthrough_detach(fs, req, idx, fi->fh);
    fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    fz_fs *fs = fs_of(req);
    struct statvfs sv;
    memset(&sv, 0, sizeof sv);
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    /* df: Size is the view's size; nothing of it is stored (Used 0) and
     * nothing can be written (Avail 0), so Use% is "-" rather than 100%. */
    sv.f_blocks = (fsblkcnt_t)((fz_view_total_bytes(fs->v) + 4095) / 4096);
    sv.f_bfree = sv.f_blocks;
    sv.f_files = fs->nnodes;
    sv.f_ffree = sv.f_files;
    sv.f_namemax = 255;
    sv.f_flag = ST_RDONLY;
    fuse_reply_statfs(req, &sv);
}

/* Log a failed read and answer it. A read of a file whose source changed
 * is not logged again: the view logged the change once, naming the source. */
static void reply_read_error(fz_fs *fs, fuse_req_t req, uint32_t node, uint64_t off, uint64_t len,
                             int rc)
{
    const char *path = fz_view_node(fs->v, node)->path, *msg = fz_error_msg();
    bool named = strncmp(msg, path, strlen(path)) == 0; /* fz_view_read names the file */
    if (!fz_view_node_stale(fs->v, node))
        fz_log(FZ_LOG_ERROR, "read %s%s[%llu, +%llu): %s", named ? "" : path, named ? "" : " ",
               (unsigned long long)off, (unsigned long long)len, msg);
    fuse_reply_err(req, fz_error_errno(rc));
}

/* One answered read of len bytes of node, for `fzfs status` and for
 * keeping computed files whole once read (fs/keep.h). */
static void count_read(fz_fs *fs, uint32_t node, uint64_t len)
{
    atomic_fetch_add_explicit(&fs->bytes_served, len, memory_order_relaxed);
    atomic_fetch_add_explicit(&fs->reads, 1, memory_order_relaxed);
    fz_keep_served(fs->keep, node, len);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 1; /* never 0 */
}

/* The daemon log's progress of a large file being computed, so a user
 * watching `tail -f` sees why the first load takes time: a line at the
 * first computed read, then at most one every fs->progress_s, then "done".
 * Counts bytes the pool answered (computed or from the cache); atomics
 * only, one compare-exchange deciding which thread logs. */
static void note_progress(fz_fs *fs, uint32_t node, uint64_t len)
{
    const fz_node *n = fz_view_node(fs->v, node);
    if (!fs->progress || n->size < FZ_PROGRESS_MIN_SIZE)
        return;
    fz_fs_progress *p = &fs->progress[node];
    if (atomic_load_explicit(&p->finished, memory_order_relaxed))
        return;
    int64_t now = now_ms(), zero = 0;
    uint64_t hits, misses, fills, dropped;
    if (atomic_compare_exchange_strong(&p->start_ms, &zero, now - 1)) {
        fz_view_cache_counters(fs->v, &hits, &misses, &fills, &dropped);
        atomic_store(&p->fills0, fills);
        atomic_store(&p->hits0, hits);
    }
    int64_t start = atomic_load(&p->start_ms);
    uint64_t done = atomic_fetch_add(&p->done, len) + len;
    double secs = (double)(now - start) / 1000.0;
    if (done >= n->size) {
        if (atomic_exchange(&p->finished, true))
            return;
        /* The counters are the whole mount's: other files read meanwhile
         * count too, hence "meanwhile". */
        fz_view_cache_counters(fs->v, &hits, &misses, &fills, &dropped);
        uint64_t f = fills - atomic_load(&p->fills0), h = hits - atomic_load(&p->hits0);
        if (!fz_view_cache_dir(fs->v))
            fz_info("computing %s/%s: done in %.1f s (%.1f MB, every byte computed: no cache)",
                    fs->mnt, n->path, secs, (double)n->size / 1e6);
        else
            fz_info("computing %s/%s: done in %.1f s (%.1f MB; meanwhile %llu chunks computed, "
                    "%llu served from the cache)",
                    fs->mnt, n->path, secs, (double)n->size / 1e6, (unsigned long long)f,
                    (unsigned long long)h);
        return;
    }
    int64_t last = atomic_load(&p->logged_ms);
    if ((last == 0 || (double)(now - last) >= fs->progress_s * 1000.0) &&
        atomic_compare_exchange_strong(&p->logged_ms, &last, now))
        fz_info("computing %s/%s ... %d%% (%.2f GB/s)", fs->mnt, n->path,
                (int)(done * 100 / n->size), secs > 0 ? (double)done / secs / 1e9 : 0.0);
}

/* ---- compute pool ---------------------------------------------------- */

static void run_job(fz_fs *fs, fz_fs_job *j)
{
    uint8_t *buf = malloc(j->len ? j->len : 1);
    if (!buf) {
        fz_error_set(FZ_ENOMEM, "out of memory");
        reply_read_error(fs, j->req, j->node, j->off, j->len, FZ_ENOMEM);
        return;
    }
    int rc = fz_view_read(fs->v, j->node, j->off, j->len, buf);
    if (rc) {
        reply_read_error(fs, j->req, j->node, j->off, j->len, rc);
    } else {
        fuse_reply_buf(j->req, (const char *)buf, (size_t)j->len);
        count_read(fs, j->node, j->len);
        note_progress(fs, j->node, j->len);
    }
    free(buf);
}

/* A prefetch: its errors are the reads' to report (they compute again). */
static void run_ahead(fz_fs *fs, fz_fs_job *j)
{
    int n = fz_view_prefetch(fs->v, j->node, j->off, j->len);
    if (n > 0)
        atomic_fetch_add_explicit(&fs->computed_ahead, (uint64_t)n, memory_order_relaxed);
    else if (n < 0)
        fz_debug("computing %s [%llu, +%llu) ahead: %s", fz_view_node(fs->v, j->node)->path,
                 (unsigned long long)j->off, (unsigned long long)j->len, fz_error_msg());
}

/* The next job for a pool thread (lock held): a read if any, else a
 * prefetch while fewer than `workers` run; NULL once stopped and no read
 * is left (queued prefetches are dropped). */
static fz_fs_job *pool_take(fz_fs_pool *p)
{
    for (;;) {
        fz_fs_job *j = p->head;
        if (j) {
            if (!(p->head = j->next))
                p->tail = NULL;
            return j;
        }
        if (p->stop)
            return NULL;
        if ((j = p->ahead) && p->running_ahead < (unsigned)p->workers) {
            if (!(p->ahead = j->next))
                p->atail = NULL;
            p->nahead--;
            p->running_ahead++;
            return j;
        }
        pthread_cond_wait(&p->cond, &p->lock);
    }
}

/* ---- tasks run across the pool (fz_view_set_runner) --------------------- */

/* n tasks shared by the thread that asked (which takes part) and the pool
 * threads that take a helper job: each claims the next index until none is
 * left. The asking thread waits until every task has returned; helpers
 * that start late find nothing to do. The group lives until its last
 * reference (the asker and each queued helper) is dropped. */
struct fz_fs_group {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t n, next, done;
    unsigned refs;
    fz_view_task_fn task;
    void *arg;
};

static void group_unref(fz_fs_group *g)
{
    pthread_mutex_lock(&g->lock);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->lock);
    if (!last)
        return;
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

static void group_work(fz_fs_group *g)
{
    pthread_mutex_lock(&g->lock);
    while (g->next < g->n) {
        size_t i = g->next++;
        pthread_mutex_unlock(&g->lock);
        g->task(g->arg, i);
        pthread_mutex_lock(&g->lock);
        if (++g->done == g->n)
            pthread_cond_broadcast(&g->cond);
    }
    pthread_mutex_unlock(&g->lock);
}

static bool pool_push(fz_fs_pool *p, fz_fs_job *j);

void fz_fs_run_tasks(void *ctx, size_t n, fz_view_task_fn task, void *arg)
{
    fz_fs *fs = ctx;
    fz_fs_group *g = calloc(1, sizeof *g);
    if (!g) { /* no memory for a group: run them here */
        for (size_t i = 0; i < n; i++)
            task(arg, i);
        return;
    }
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->n = n;
    g->refs = 1;
    g->task = task;
    g->arg = arg;
    size_t helpers = (size_t)(fs->pool.workers > 1 ? fs->pool.workers - 1 : 0);
    for (size_t h = 0; h < helpers && h + 1 < n; h++) {
        fz_fs_job *j = calloc(1, sizeof *j);
        if (!j)
            break;
        j->group = g;
        pthread_mutex_lock(&g->lock);
        g->refs++;
        pthread_mutex_unlock(&g->lock);
        if (!pool_push(&fs->pool, j)) {
            free(j);
            group_unref(g);
            break;
        }
    }
    group_work(g);
    pthread_mutex_lock(&g->lock);
    while (g->done < g->n)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    group_unref(g);
}

void fz_fs_use_pool_for_tasks(fz_fs *fs)
{
    fz_view_set_runner(fs->v, fz_fs_run_tasks, fs);
}

static void *pool_main(void *arg)
{
    fz_fs *fs = arg;
    fz_fs_pool *p = &fs->pool;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        fz_fs_job *j = pool_take(p);
        pthread_mutex_unlock(&p->lock);
        if (!j)
            return NULL;
        if (j->group) {
            group_work(j->group);
            group_unref(j->group);
        } else if (j->req) {
            run_job(fs, j);
        } else {
            run_ahead(fs, j);
            pthread_mutex_lock(&p->lock);
            p->running_ahead--;
            pthread_cond_signal(&p->cond); /* a thread may wait for this slot */
            pthread_mutex_unlock(&p->lock);
        }
        free(j);
    }
}

int fz_fs_pool_start(fz_fs *fs, int workers)
{
    fz_fs_pool *p = &fs->pool;
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->workers = workers;
    int nthreads = 2 * workers;
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    if (!p->threads)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    /* Signals belong to the session loop's thread (fuse_set_signal_handlers). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (; p->nthreads < nthreads; p->nthreads++)
        if (pthread_create(&p->threads[p->nthreads], NULL, pool_main, fs) != 0)
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (p->nthreads == 0)
        return fz_error_set(FZ_EIO, "cannot start compute threads");
    return 0;
}

void fz_fs_pool_stop(fz_fs *fs)
{
    fz_fs_pool *p = &fs->pool;
    if (!p->threads)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* Prefetches never run; and a helper queued by a task group as the
     * last threads left (its asker did every task itself) gives its
     * reference back. */
    fz_fs_job *left[2] = {p->ahead, p->head};
    for (int k = 0; k < 2; k++)
        while (left[k]) {
            fz_fs_job *j = left[k];
            left[k] = j->next;
            if (j->group)
                group_unref(j->group);
            free(j);
        }
    p->ahead = p->atail = p->head = p->tail = NULL;
    free(p->threads);
    p->threads = NULL;
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
}

/* Queue job j (a read, or a group's helper; else a prefetch): false when
 * it was not (a prefetch beyond FZ_FS_AHEAD_QUEUED; the caller frees it). */
static bool pool_push(fz_fs_pool *p, fz_fs_job *j)
{
    bool ok = true;
    pthread_mutex_lock(&p->lock);
    if (j->req || j->group) {
        if (p->tail)
            p->tail->next = j;
        else
            p->head = j;
        p->tail = j;
    } else if (p->nahead < FZ_FS_AHEAD_QUEUED && !p->stop) {
        if (p->atail)
            p->atail->next = j;
        else
            p->ahead = j;
        p->atail = j;
        p->nahead++;
    } else {
        ok = false;
    }
    if (ok)
        pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    return ok;
}

static void pool_submit(fz_fs *fs, fuse_req_t req, uint32_t node, uint64_t off, uint64_t len)
{
    fz_fs_job *j = malloc(sizeof *j);
    if (!j) {
        fz_error_set(FZ_ENOMEM, "out of memory");
        reply_read_error(fs, req, node, off, len, FZ_ENOMEM);
        return;
    }
    *j = (fz_fs_job){NULL, req, node, off, len, NULL};
    pool_push(&fs->pool, j);
}

/* ---- computing ahead of a sequential reader ---------------------------- */

/* How far ahead (file bytes past the end of the last read) chunks are
 * computed: one chunk per core, at least two. */
static uint64_t ahead_window(const fz_fs *fs)
{
    int w = fs->pool.workers < 2 ? 2 : fs->pool.workers;
    return (uint64_t)w * FZ_VIEW_CHUNK;
}

/* After a computed read of [off, off+len) of node: the sequential run it
 * belongs to. A node keeps FZ_FS_RUNS runs, one per reader reading it in
 * order (several processes, or threads, may): bytes [start, end) read in
 * order. A read that starts within a run, or a little past its end (the
 * kernel's readahead sends several reads at once and they arrive in any
 * order), extends it; a read that fits none starts a new run in place of
 * the least recently extended one. Once a run is FZ_FS_RUN_MIN long, the
 * chunks of the window past its end that are not queued yet are queued as
 * prefetches, one job per chunk-sized piece so that the pool's threads
 * share them; `ahead` records how far, so each piece is queued once per
 * run. Random reads seldom make a run that long, so they compute little
 * that nobody reads. */
static void compute_ahead(fz_fs *fs, uint32_t node, uint64_t off, uint64_t len)
{
    if (!fs->ahead || !fz_view_can_prefetch(fs->v))
        return;
    uint64_t size = fz_view_node(fs->v, node)->size, end = off + len, from = 0, target = 0;
    pthread_mutex_lock(&fs->ahead_lock);
    fz_fs_run *runs = fs->ahead[node].runs, *a = NULL, *old = &runs[0];
    for (int i = 0; i < FZ_FS_RUNS; i++) {
        fz_fs_run *r = &runs[i];
        if (r->used < old->used)
            old = r;
        if (r->used && off <= r->end + FZ_FS_RUN_GAP && off + FZ_FS_RUN_BEHIND >= r->end &&
            (!a || (r->end > off ? r->end - off : off - r->end) <
                       (a->end > off ? a->end - off : off - a->end)))
            a = r;
    }
    if (!a) {
        a = old; /* a new run */
        a->start = off;
        a->end = a->ahead = end;
    } else if (end > a->end) {
        a->end = end;
    }
    a->used = ++fs->ahead_tick;
    if (a->end - a->start >= FZ_FS_RUN_MIN) {
        target = a->end + ahead_window(fs) < size ? a->end + ahead_window(fs) : size;
        from = a->ahead > a->end ? a->ahead : a->end;
        if (from < target)
            a->ahead = target;
    }
    pthread_mutex_unlock(&fs->ahead_lock);
    for (uint64_t o = from; o < target;) {
        uint64_t e = (o / FZ_VIEW_CHUNK + 1) * FZ_VIEW_CHUNK;
        e = e < target ? e : target;
        fz_fs_job *j = malloc(sizeof *j);
        if (!j)
            return;
        *j = (fz_fs_job){NULL, NULL, node, o, e - o, NULL};
        if (!pool_push(&fs->pool, j)) {
            free(j);
            return;
        }
        o = e;
    }
}

/* ---- span replies through a pipe -------------------------------------- */

/* Each FUSE worker thread's pipe: the bytes of a literal/span read are
 * spliced into it first, so a source that ends early is seen before
 * anything is sent, then the pipe is handed to libfuse, which splices it on
 * into /dev/fuse. The write end is non-blocking: a pipe without room gives
 * EAGAIN, never a wait on ourselves. */
typedef struct {
    int fd[2];
    size_t cap;
} fz_span_pipe;

static pthread_key_t span_key;
static pthread_once_t span_once = PTHREAD_ONCE_INIT;
static bool span_key_ok;

static void span_pipe_free(void *p)
{
    fz_span_pipe *sp = p;
    close(sp->fd[0]);
    close(sp->fd[1]);
    free(sp);
}

static void span_key_make(void)
{
    span_key_ok = pthread_key_create(&span_key, span_pipe_free) == 0;
}

/* This thread's pipe with room for `need` bytes, or NULL (no pipe, or it
 * cannot grow that far: an unprivileged user is held to pipe-max-size). */
static fz_span_pipe *span_pipe(size_t need)
{
    pthread_once(&span_once, span_key_make);
    if (!span_key_ok || need > INT32_MAX)
        return NULL;
    fz_span_pipe *sp = pthread_getspecific(span_key);
    if (!sp) {
        if (!(sp = malloc(sizeof *sp)))
            return NULL;
        if (pipe2(sp->fd, O_CLOEXEC) != 0) {
            free(sp);
            return NULL;
        }
        int cap = fcntl(sp->fd[0], F_GETPIPE_SZ);
        sp->cap = cap > 0 ? (size_t)cap : 0;
        if (fcntl(sp->fd[1], F_SETFL, O_NONBLOCK) != 0 || pthread_setspecific(span_key, sp)) {
            span_pipe_free(sp);
            return NULL;
        }
    }
    if (sp->cap < need) {
        int cap = fcntl(sp->fd[0], F_SETPIPE_SZ, (int)need);
        if (cap < 0)
            return NULL;
        sp->cap = (size_t)cap;
    }
    return sp;
}

/* Empty the pipe (after a failed fill, or what libfuse left unread). */
static void span_drain(fz_span_pipe *sp)
{
    char buf[4096];
    int n;
    while (ioctl(sp->fd[0], FIONREAD, &n) == 0 && n > 0)
        if (read(sp->fd[0], buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf) <= 0)
            break;
}

/* The pieces' bytes into the pipe, all of them: 0, or -1 if a source gave
 * fewer bytes than asked (it ended early), failed, or the pipe is full. */
static int span_fill(fz_span_pipe *sp, const fz_piece *pieces, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        off_t off = (off_t)pieces[k].off;
        size_t left = (size_t)pieces[k].len;
        while (left > 0) {
            ssize_t r = pieces[k].mem ? write(sp->fd[1], pieces[k].mem + pieces[k].len - left, left)
                                      : splice(pieces[k].fd, &off, sp->fd[1], NULL, left,
                                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1;
            left -= (size_t)r;
        }
    }
    return 0;
}

/* ---- read dispatch --------------------------------------------------- */

/* Where a read is answered.
 *
 * A file is an ordered list of segments (view.h). A read whose range
 * touches only literal and span segments costs a memcpy or a splice: it is
 * answered right here in the FUSE worker. Its pieces (fz_view_direct) go
 * into this thread's pipe first - literal ones written, span ones spliced
 * from the source file's page cache - and the pipe is handed to
 * fuse_reply_data, which splices it on into /dev/fuse when the kernel
 * granted SPLICE_WRITE (else reads it). The view decides where every byte
 * lives; this layer only chooses between splicing and computing.
 *
 * A read touching a computed or deferred segment (casts, resized
 * embeddings, zip headers whose CRCs need computed records) may take
 * milliseconds to seconds: it is queued to the compute pool, whose thread
 * calls fz_view_read (which goes through the LMDB cache) and replies. The
 * worker returns at once, so workers stay free for lookup/getattr and
 * page-cache misses on unchanged bytes; nothing here ever waits on another
 * FUSE request (the deadlock of peers-and-design B.3).
 *
 * A source that changes (truncated, rewritten in place) must never show.
 * The kernel takes a short reply for end of file: it would shrink the file
 * and cache zero-filled page tails. So nothing is sent until every byte is
 * in the pipe, and the node's sources are checked before (fz_view_direct)
 * and after filling it; a source that ended early or changed is read with
 * fz_view_read instead, which answers EIO (and logs the change once). A
 * truncation after the fill makes the kernel fail the reply (the pipe's
 * pages left the file: EIO); a write in place after it shows in that one
 * reply (the pipe holds page references), so the node is checked once more
 * after replying and the kernel told to drop the file's cached pages.
 *
 * Deliberately not done: splitting a mixed read into a fast part and a
 * computed part (the pool computes the whole range; a 1 MiB read rarely
 * straddles). */
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)fi;
    fz_fs *fs = fs_of(req);
    uint32_t idx;
    const fz_node *n = node_of(fs, ino, &idx);
    if (!n || n->kind != FZ_NODE_FILE) {
        fuse_reply_err(req, n ? EISDIR : ENOENT);
        return;
    }
    if (off < 0 || (uint64_t)off >= n->size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    uint64_t o = (uint64_t)off;
    uint64_t len = n->size - o < size ? n->size - o : size;

    fz_piece pieces[FZ_FS_MAX_FAST_SEGS];
    size_t count = 0;
    if (!fz_view_direct(fs->v, idx, o, len, pieces, FZ_FS_MAX_FAST_SEGS, &count) || count == 0) {
        pool_submit(fs, req, idx, o, len);
        compute_ahead(fs, idx, o, len);
        return;
    }
    if (count == 1 && pieces[0].mem) {
        fuse_reply_buf(req, (const char *)pieces[0].mem, (size_t)len);
        count_read(fs, idx, len);
        return;
    }
    /* Room for every byte, a page more per piece (unaligned spans), and the
     * reply header libfuse adds in its own pipe. */
    fz_span_pipe *sp = span_pipe((size_t)len + (count + 1) * 4096);
    if (!sp || span_fill(sp, pieces, count) != 0 || fz_view_check_node(fs->v, idx) != 0) {
        /* No pipe that large (an unprivileged user is held to
         * pipe-max-size), a source that ended early, or one changed under
         * the splice: fz_view_read reads it exactly (pread, checks; no
         * computing, so here in the worker) and answers the bytes or EIO. */
        if (sp)
            span_drain(sp);
        fz_fs_job j = {NULL, req, idx, o, len, NULL};
        run_job(fs, &j);
        return;
    }
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)len);
    bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_RETRY;
    bv.buf[0].fd = sp->fd[0];
    fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
    count_read(fs, idx, len);
    span_drain(sp);
    /* The pipe holds references to the source's pages, not copies: a write
     * in place before libfuse sent them shows through. Seen afterwards,
     * the kernel drops what it cached of this file; later reads fail. */
    if (fz_view_check_node(fs->v, idx) != 0 && fs->se)
        fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
}

const struct fuse_lowlevel_ops fz_fs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .readlink = op_readlink,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .open = op_open,
    .read = op_read,
    .release = op_release,
    .statfs = op_statfs,
};
