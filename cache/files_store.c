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

/* Truncate the locked temporary fd (a stale one may hold anything) and
 * make it private. */
static int fresh(int fd, const char *dir, const char *name)
{
    if (ftruncate(fd, 0) == 0 && fchmod(fd, 0600) == 0)
        return 0;
    return fz_error_set(FZ_EIO, "cache %s: preparing files/%s: %s", dir, name, strerror(errno));
}

/* The data: size bytes from read() into fd, with the block table. */
static int assemble(int fd, uint64_t size, fz_cache_file_read_fn read, void *arg,
                    const _Atomic bool *cancel, uint8_t *table, const char *dir, const char *name)
{
    uint8_t *buf = size ? malloc(size < FZ_CACHE_FILE_BLOCK ? size : FZ_CACHE_FILE_BLOCK) : NULL;
    int rc = size && !buf ? fz_error_set(FZ_ENOMEM, "out of memory") : 0;
    for (uint64_t b = 0, off = 0; !rc && off < size; b++, off += FZ_CACHE_FILE_BLOCK) {
        uint64_t n = size - off < FZ_CACHE_FILE_BLOCK ? size - off : FZ_CACHE_FILE_BLOCK;
        if (cancel && atomic_load(cancel)) {
            rc = fz_error_set(FZ_ECANCELED, "cache %s: storing files/%s: canceled", dir, name);
            break;
        }
        if ((rc = read(arg, off, n, buf))) {
            if (rc > 0) /* (not an FZ_E* code: the contract says it is) */
                rc = fz_error_set(FZ_EIO, "cache %s: storing files/%s: read failed", dir, name);
            break;
        }
        uint64_t h = XXH3_64bits(buf, (size_t)n);
        for (int i = 0; i < 8; i++)
            table[8 * b + i] = (uint8_t)(h >> (8 * i));
        rc = write_at(fd, buf, (size_t)n, off, dir, name);
    }
    free(buf);
    return rc ? rc : sync_fd(fd, dir, name);
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

int fz_cache_file_store(fz_cache *c, const fz_cache_key *key, uint64_t size,
                        fz_cache_file_read_fn read, void *arg, const _Atomic bool *cancel)
{
    char hex[FZ_FILES_HEX + 1], tmp[FZ_FILES_NAME], meta[FZ_FILES_NAME];
    int fd = -1, dfd, rc;
    bool renamed = false;
    uint8_t *table = NULL;
    if (!c)
        return fz_error_set(FZ_ENOTFOUND, "no cache");
    pthread_rwlock_rdlock(&c->txn_lock); /* (a grown map's size is adopted under it) */
    uint64_t budget = c->map_size;
    pthread_rwlock_unlock(&c->txn_lock);
    fz_files_hex(key, hex);
    snprintf(tmp, sizeof tmp, "%s.tmp", hex);
    snprintf(meta, sizeof meta, "%s.meta", hex);
    if (size > budget / 2 || fz_files_blocks(size) > FZ_FILES_MAX_BLOCKS)
        return fz_error_set(FZ_ENOSPC,
                            "cache %s: a file of %" PRIu64 " bytes is not stored: it is "
                            "larger than half the cache's map size (%" PRIu64
                            " bytes, --cache-size)",
                            c->dir, size, budget);
    if ((dfd = fz_files_dir(c->dir, true)) < 0)
        return dfd;
    struct stat dst;
    if (fstat(dfd, &dst) == 0 && (dst.st_mode & 077))
        fchmod(dfd, 0700);
    if ((rc = fz_files_lock(dfd, tmp, true, &fd))) {
        close(dfd);
        return rc == FZ_EBUSY ? rc : fz_error_prefix(rc, "cache %s", c->dir);
    }
    /* The key is ours from here: every failure removes tmp. */
    if (finishing(dfd, hex)) {
        rc = fz_error_set(FZ_EBUSY, "cache %s: files/%s is being stored by another process", c->dir,
                          hex);
        goto done;
    }
    int have;
    if ((rc = fz_files_open_in(dfd, c->dir, key, size, &have)) == 0) {
        close(have); /* stored already */
        goto done;
    }
    if (rc != FZ_ENOTFOUND)
        goto done;
    if (!(table = malloc(8 * fz_files_blocks(size) + 1))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = make_room(dfd, c->dir, hex, size, budget)) || (rc = fresh(fd, c->dir, tmp)) ||
        (rc = assemble(fd, size, read, arg, cancel, table, c->dir, tmp)))
        goto done;
    /* The old sidecar goes first: it must never name the new data file. */
    if (unlinkat(dfd, meta, 0) != 0 && errno != ENOENT) {
        rc = fz_error_set(FZ_EIO, "cache %s: removing files/%s: %s", c->dir, meta, strerror(errno));
        goto done;
    }
    if ((rc = rename_in(dfd, tmp, hex, c->dir)))
        goto done;
    renamed = true;
    rc = write_sidecar(dfd, fd, key, size, table, hex, c->dir);
done:
    if (rc)
        unlinkat(dfd, renamed ? hex : tmp, 0);
    else if (!renamed)
        unlinkat(dfd, tmp, 0); /* (stored already) */
    close(fd);
    close(dfd);
    free(table);
    return rc;
}
