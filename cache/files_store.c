/* Storing a whole file (fz_cache_file_store) and the budget it must fit.
 * files.c holds the format, the lock protocol (its block comment) and open.
 *
 * The budget. Stored files may use as many bytes as the cache's map size,
 * beside the LMDB values (which have the map itself); a file larger than
 * half of it is never stored, so one file cannot push out everything else.
 * And the filesystem keeps at least 1 GiB or 5% of itself free, whichever
 * is larger, for everything that is not the cache. When either would be
 * passed, the least recently used files (by their sidecar's mtime, which
 * every open sets) are removed until the new one fits; when removing every
 * other file would not be enough, none is removed and the store is
 * FZ_ENOSPC. Two stores of different keys at once each check against what
 * is stored, not against each other: the budget may be passed by what is
 * being assembled at that moment, and the next store brings it back. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "cache/cache_int.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/vec.h"

#define FILES_DISK_RESERVE (1ull << 30)

typedef struct {
    struct timespec used; /* the sidecar's mtime */
    uint64_t bytes;
    char hex[FZ_FILES_HEX + 1];
    struct stat side;
} stored;

typedef struct {
    const char *self; /* the key being stored: not a candidate */
    stored *v;
    size_t n, cap;
    uint64_t total;
} scan_acc;

static int scan_visit(void *arg, int dfd, const char *name, int kind, const char *hex)
{
    scan_acc *a = arg;
    stored s;
    struct stat data;
    if (kind != FZ_FILES_META || !strcmp(hex, a->self) ||
        fstatat(dfd, name, &s.side, AT_SYMLINK_NOFOLLOW) != 0)
        return 0;
    s.used = s.side.st_mtim;
    s.bytes = fstatat(dfd, hex, &data, AT_SYMLINK_NOFOLLOW) == 0 ? (uint64_t)data.st_size : 0;
    memcpy(s.hex, hex, sizeof s.hex);
    int rc = FZ_VEC_RESERVE(a->v, a->cap, a->n + 1);
    if (rc)
        return rc;
    a->v[a->n++] = s;
    a->total += s.bytes;
    return 0;
}

static int by_use(const void *x, const void *y)
{
    const stored *a = x, *b = y;
    if (a->used.tv_sec != b->used.tv_sec)
        return a->used.tv_sec < b->used.tv_sec ? -1 : 1;
    return (a->used.tv_nsec > b->used.tv_nsec) - (a->used.tv_nsec < b->used.tv_nsec);
}

/* Make room for `size` more bytes (the block comment above): 0, FZ_ENOSPC,
 * FZ_EIO or FZ_ENOMEM. */
static int make_room(int dfd, const char *dir, const char *self, uint64_t size, uint64_t budget)
{
    scan_acc a = {.self = self};
    struct statvfs vfs;
    int rc = fz_files_for_each(dir, scan_visit, &a);
    if (rc)
        goto done;
    if (fstatvfs(dfd, &vfs) != 0) {
        rc = fz_error_set(FZ_EIO, "cache %s: statvfs of files/: %s", dir, strerror(errno));
        goto done;
    }
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    uint64_t fs = (uint64_t)vfs.f_blocks * vfs.f_frsize;
    uint64_t reserve = fs / 20 > FILES_DISK_RESERVE ? fs / 20 : FILES_DISK_RESERVE;
    uint64_t need = 0;
    if (a.total + size > budget)
        need = a.total + size - budget;
    if (avail < reserve + size && reserve + size - avail > need)
        need = reserve + size - avail;
    if (need > a.total) {
        rc = fz_error_set(FZ_ENOSPC,
                          "cache %s: no room for a stored file of %" PRIu64
                          " bytes: stored files use %" PRIu64 " of their budget of %" PRIu64
                          " (the cache's map size, --cache-size), and %" PRIu64
                          " bytes are free on its filesystem, which must keep %" PRIu64 " free",
                          dir, size, a.total, budget, avail, reserve);
        goto done;
    }
    if (a.n)
        qsort(a.v, a.n, sizeof *a.v, by_use);
    uint64_t freed = 0;
    for (size_t i = 0; i < a.n && freed < need; i++)
        if (fz_files_remove(dfd, a.v[i].hex, &a.v[i].side, false)) {
            freed += a.v[i].bytes;
            fz_debug("cache %s: evicted stored file files/%s (%" PRIu64 " bytes)", dir, a.v[i].hex,
                     a.v[i].bytes);
        }
    if (freed < need)
        rc = fz_error_set(FZ_ENOSPC,
                          "cache %s: no room for a stored file of %" PRIu64
                          " bytes: the files that would make room are in use by stores",
                          dir, size);
done:
    free(a.v);
    return rc;
}

/* pwrite all of buf: 0, FZ_ENOSPC (ENOSPC, EDQUOT) or FZ_EIO, naming path. */
static int write_at(int fd, const uint8_t *buf, size_t len, uint64_t off, const char *dir,
                    const char *name)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fz_error_set(errno == ENOSPC || errno == EDQUOT ? FZ_ENOSPC : FZ_EIO,
                                "cache %s: writing files/%s: %s", dir, name, strerror(errno));
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int sync_fd(int fd, const char *dir, const char *name)
{
    if (fsync(fd) == 0)
        return 0;
    return fz_error_set(errno == ENOSPC || errno == EDQUOT ? FZ_ENOSPC : FZ_EIO,
                        "cache %s: fsync of files/%s: %s", dir, name, strerror(errno));
}

static int rename_in(int dfd, const char *from, const char *to, const char *dir)
{
    if (renameat(dfd, from, dfd, to) == 0)
        return 0;
    return fz_error_set(FZ_EIO, "cache %s: renaming files/%s to %s: %s", dir, from, to,
                        strerror(errno));
}

/* Empty the locked temporary fd (a stale one may hold anything) and make
 * it private. A new one is not truncated: on ext4 a truncation to 0 makes
 * the next close of the file start writing all its pages out
 * (auto_da_alloc), and the first close of a file computed at its open is a
 * reader's (its passthrough backing), waiting for that. */
static int fresh(int fd, const char *dir, const char *name)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_size == 0 || ftruncate(fd, 0) == 0) && fchmod(fd, 0600) == 0)
        return 0;
    return fz_error_set(FZ_EIO, "cache %s: preparing files/%s: %s", dir, name, strerror(errno));
}

/* The sidecar for the renamed data file fd, through <hex>.meta.tmp. */
static int write_sidecar(int dfd, int fd, const fz_cache_key *key, uint64_t size,
                         const uint8_t *table, const char *hex, const char *dir)
{
    char tmp[FZ_FILES_NAME], meta[FZ_FILES_NAME];
    struct stat st;
    int mfd = -1, rc;
    size_t len = fz_files_side_len(fz_files_blocks(size));
    uint8_t *b = malloc(len);
    snprintf(tmp, sizeof tmp, "%s.meta.tmp", hex);
    snprintf(meta, sizeof meta, "%s.meta", hex);
    if (!b)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (fstat(fd, &st) != 0) {
        rc = fz_error_set(FZ_EIO, "cache %s: fstat of files/%s: %s", dir, hex, strerror(errno));
        goto done;
    }
    fz_files_side_build(b, key, size, &st, table);
    if ((rc = fz_files_lock(dfd, tmp, true, &mfd)) || (rc = fresh(mfd, dir, tmp)) ||
        (rc = write_at(mfd, b, len, 0, dir, tmp)) || (rc = sync_fd(mfd, dir, tmp)) ||
        (rc = rename_in(dfd, tmp, meta, dir)))
        goto done;
    if (fsync(dfd) != 0) {
        rc = fz_error_set(FZ_EIO, "cache %s: fsync of files/: %s", dir, strerror(errno));
        unlinkat(dfd, meta, 0);
    }
done:
    if (rc && mfd >= 0)
        unlinkat(dfd, tmp, 0);
    if (mfd >= 0)
        close(mfd);
    free(b);
    return rc;
}

/* Whether another store holds <hex> (between its data's rename and its
 * sidecar's). */
static bool finishing(int dfd, const char *hex)
{
    int fd;
    int rc = fz_files_lock(dfd, hex, false, &fd);
    if (rc == 0)
        close(fd);
    return rc == FZ_EBUSY;
}

struct fz_cache_file_writer {
    fz_cache *c;
    fz_cache_key key;
    uint64_t size, nblocks;
    int dfd, fd;
    char hex[FZ_FILES_HEX + 1], tmp[FZ_FILES_NAME];
    /* XXH3-64 of each block, little endian, 8 bytes per block; hashed[b]
     * once block b's entry is set (by put, for a whole block written at
     * once; else by commit, reading it back). */
    uint8_t *table;
    atomic_bool *hashed;
};

static void writer_free(fz_cache_file_writer *w, bool remove_tmp)
{
    if (remove_tmp)
        unlinkat(w->dfd, w->tmp, 0);
    close(w->fd); /* (the lock goes with it) */
    close(w->dfd);
    free(w->table);
    free(w->hashed);
    free(w);
}

int fz_cache_file_begin(fz_cache *c, const fz_cache_key *key, uint64_t size,
                        fz_cache_file_writer **out)
{
    if (!c)
        return fz_error_set(FZ_ENOTFOUND, "no cache");
    pthread_rwlock_rdlock(&c->txn_lock); /* (a grown map's size is adopted under it) */
    uint64_t budget = c->map_size;
    pthread_rwlock_unlock(&c->txn_lock);
    if (size > budget / 2 || fz_files_blocks(size) > FZ_FILES_MAX_BLOCKS)
        return fz_error_set(FZ_ENOSPC,
                            "cache %s: a file of %" PRIu64 " bytes is not stored: it is "
                            "larger than half the cache's map size (%" PRIu64
                            " bytes, --cache-size)",
                            c->dir, size, budget);
    fz_cache_file_writer *w = calloc(1, sizeof *w);
    if (!w)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    w->c = c;
    w->key = *key;
    w->size = size;
    w->nblocks = fz_files_blocks(size);
    w->fd = -1;
    fz_files_hex(key, w->hex);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", w->hex);
    if ((w->dfd = fz_files_dir(c->dir, true)) < 0) {
        int rc = w->dfd;
        free(w);
        return rc;
    }
    struct stat dst;
    if (fstat(w->dfd, &dst) == 0 && (dst.st_mode & 077))
        fchmod(w->dfd, 0700);
    int rc = fz_files_lock(w->dfd, w->tmp, true, &w->fd);
    if (rc) {
        close(w->dfd);
        free(w);
        return rc == FZ_EBUSY ? rc : fz_error_prefix(rc, "cache %s", c->dir);
    }
    /* The key is ours from here: every failure removes tmp. */
    int have;
    if (finishing(w->dfd, w->hex)) {
        rc = fz_error_set(FZ_EBUSY, "cache %s: files/%s is being stored by another process", c->dir,
                          w->hex);
    } else if ((rc = fz_files_open_in(w->dfd, c->dir, key, size, &have)) == 0) {
        close(have);
        rc = fz_error_set(FZ_EEXIST, "cache %s: files/%s is stored already", c->dir, w->hex);
    } else if (rc == FZ_ENOTFOUND) {
        w->table = malloc(8 * w->nblocks + 1);
        w->hashed = calloc(w->nblocks + 1, sizeof *w->hashed);
        rc = !w->table || !w->hashed ? fz_error_set(FZ_ENOMEM, "out of memory") : 0;
        if (!rc && !(rc = make_room(w->dfd, c->dir, w->hex, size, budget)) &&
            !(rc = fresh(w->fd, c->dir, w->tmp)) && ftruncate(w->fd, (off_t)size) != 0)
            rc = fz_error_set(errno == ENOSPC || errno == EDQUOT ? FZ_ENOSPC : FZ_EIO,
                              "cache %s: sizing files/%s: %s", c->dir, w->tmp, strerror(errno));
    }
    if (rc) {
        writer_free(w, true);
        return rc;
    }
    *out = w;
    return 0;
}

static void note_hash(fz_cache_file_writer *w, uint64_t b, const void *buf, uint64_t len)
{
    uint64_t h = XXH3_64bits(buf, (size_t)len);
    for (int i = 0; i < 8; i++)
        w->table[8 * b + i] = (uint8_t)(h >> (8 * i));
    atomic_store_explicit(&w->hashed[b], true, memory_order_release);
}

/* Block b's length. */
static uint64_t block_len(const fz_cache_file_writer *w, uint64_t b)
{
    uint64_t off = b * FZ_CACHE_FILE_BLOCK;
    return w->size - off < FZ_CACHE_FILE_BLOCK ? w->size - off : FZ_CACHE_FILE_BLOCK;
}

int fz_cache_file_put(fz_cache_file_writer *w, uint64_t off, const void *buf, uint64_t len)
{
    if (off > w->size || len > w->size - off)
        return fz_error_set(FZ_EINVAL,
                            "internal error: cache %s: [%" PRIu64 ", +%" PRIu64
                            ") past the end of files/%s (%" PRIu64 " bytes)",
                            w->c->dir, off, len, w->tmp, w->size);
    int rc = write_at(w->fd, buf, (size_t)len, off, w->c->dir, w->tmp);
    uint64_t b = off / FZ_CACHE_FILE_BLOCK;
    if (rc == 0 && len && off % FZ_CACHE_FILE_BLOCK == 0 && len == block_len(w, b))
        note_hash(w, b, buf, len);
    return rc;
}

int fz_cache_file_reopen(const fz_cache_file_writer *w)
{
    int fd = openat(w->dfd, w->tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return fz_error_set(FZ_EIO, "cache %s: opening files/%s: %s", w->c->dir, w->tmp,
                            strerror(errno));
    return fd;
}

/* The table entries put did not set, from the bytes written. */
static int hash_rest(fz_cache_file_writer *w, const _Atomic bool *cancel)
{
    uint8_t *buf = NULL;
    int rc = 0;
    for (uint64_t b = 0; b < w->nblocks && rc == 0; b++) {
        if (atomic_load_explicit(&w->hashed[b], memory_order_acquire))
            continue;
        uint64_t len = block_len(w, b);
        if (cancel && atomic_load(cancel))
            rc = fz_error_set(FZ_ECANCELED, "cache %s: storing files/%s: canceled", w->c->dir,
                              w->tmp);
        else if (!buf && !(buf = malloc(FZ_CACHE_FILE_BLOCK)))
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
        else if ((rc = fz_pread_full(w->fd, buf, (size_t)len, b * FZ_CACHE_FILE_BLOCK, w->tmp)))
            rc = fz_error_prefix(rc, "cache %s: reading back a file being stored", w->c->dir);
        else
            note_hash(w, b, buf, len);
    }
    free(buf);
    return rc;
}

int fz_cache_file_commit(fz_cache_file_writer *w, const _Atomic bool *cancel)
{
    char meta[FZ_FILES_NAME];
    snprintf(meta, sizeof meta, "%s.meta", w->hex);
    bool renamed = false;
    int rc = hash_rest(w, cancel);
    if (rc == 0)
        rc = sync_fd(w->fd, w->c->dir, w->tmp);
    /* The old sidecar goes first: it must never name the new data file. */
    if (rc == 0 && unlinkat(w->dfd, meta, 0) != 0 && errno != ENOENT)
        rc = fz_error_set(FZ_EIO, "cache %s: removing files/%s: %s", w->c->dir, meta,
                          strerror(errno));
    if (rc == 0 && (rc = rename_in(w->dfd, w->tmp, w->hex, w->c->dir)) == 0) {
        renamed = true;
        rc = write_sidecar(w->dfd, w->fd, &w->key, w->size, w->table, w->hex, w->c->dir);
    }
    if (rc && renamed)
        unlinkat(w->dfd, w->hex, 0);
    writer_free(w, rc && !renamed);
    return rc;
}

void fz_cache_file_abort(fz_cache_file_writer *w)
{
    if (w)
        writer_free(w, true);
}

int fz_cache_file_store(fz_cache *c, const fz_cache_key *key, uint64_t size,
                        fz_cache_file_read_fn read, void *arg, const _Atomic bool *cancel)
{
    fz_cache_file_writer *w;
    int rc = fz_cache_file_begin(c, key, size, &w);
    if (rc)
        return rc == FZ_EEXIST ? 0 : rc;
    uint8_t *buf = size ? malloc(size < FZ_CACHE_FILE_BLOCK ? size : FZ_CACHE_FILE_BLOCK) : NULL;
    rc = size && !buf ? fz_error_set(FZ_ENOMEM, "out of memory") : 0;
    for (uint64_t off = 0; !rc && off < size; off += FZ_CACHE_FILE_BLOCK) {
        uint64_t n = block_len(w, off / FZ_CACHE_FILE_BLOCK);
        if (cancel && atomic_load(cancel))
            rc = fz_error_set(FZ_ECANCELED, "cache %s: storing files/%s: canceled", c->dir, w->tmp);
        else if ((rc = read(arg, off, n, buf)) >
                 0) /* (not an FZ_E* code: the contract says it is) */
            rc = fz_error_set(FZ_EIO, "cache %s: storing files/%s: read failed", c->dir, w->tmp);
        else if (rc == 0)
            rc = fz_cache_file_put(w, off, buf, n);
    }
    free(buf);
    if (rc) {
        fz_cache_file_abort(w);
        return rc;
    }
    return fz_cache_file_commit(w, cancel);
}
