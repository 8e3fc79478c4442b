/* Whole files kept in DIR/files/ (cache.h, "whole files", is the contract):
 * the sidecar format, the per-key lock, open, and the directory scans of
 * stats, verify and clear. The store and its budget are in files_store.c.
 *
 * What is trusted. A stored file is served only while its sidecar is sound
 * (magic, version, lengths, its own checksum) and the data file is still the
 * inode the sidecar describes: dev, ino, size, and mtime and ctime to the
 * nanosecond. fzfs never writes a data file after renaming it into place, so
 * a later write, truncation or replacement changes one of these, and open
 * refuses the file without reading a byte of it. ctime cannot be set back by
 * an unprivileged process; what fstat cannot see (a disk returning other
 * bytes) `fzfs cache verify` finds by reading every block.
 *
 * The lock. Each key's lock is a flock on the inode being assembled:
 *   1. a store creates or opens <hex>.tmp and takes LOCK_EX|LOCK_NB (held:
 *      FZ_EBUSY), then checks that the name still names the inode it locked
 *      (else whoever removed or renamed it won: it tries again);
 *   2. it answers FZ_EBUSY when <hex> is locked (another store between its
 *      data's rename and its sidecar's), 0 when <hex> is already stored;
 *   3. it writes and fsyncs the data, removes <hex>.meta, renames <hex>.tmp to
 *      <hex> (the lock goes with the inode, so step 2 of another store sees
 *      it), then writes <hex>.meta.tmp (locked too), fsyncs and renames it,
 *      fsyncs the directory, and only then closes (unlocks) the data file.
 * Whoever removes a file it did not create (a stale temporary, an orphan, a
 * bad or evicted file) takes the data file's lock first (LOCK_EX|LOCK_NB;
 * held: it leaves the file alone), checks that the names still name what it
 * looked at, and removes the sidecar before the data. So a sidecar never
 * names a half-written file, two stores of one key never write one inode,
 * and a reader racing a store sees the old file, the new one, or nothing.
 * Readers take no lock: a file removed under an open descriptor stays
 * readable through it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "cache/cache_int.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/vec.h"

/* The sidecar, all little endian: magic u32 ("FZF1"), version u16, block
 * shift u8, reserved u8; the key's hi, lo u64; the size u64; the data file's
 * dev, ino, size, mtime_ns, ctime_ns u64; the block count u64; the block
 * table (XXH3-64 of each 2^shift-byte block, the last one shorter); then the
 * XXH3-64 of every byte before it. */
#define SIDE_MAGIC 0x31465a46u /* "FZF1" */
#define SIDE_VERSION 1u
#define SIDE_SHIFT 22u /* FZ_CACHE_FILE_BLOCK */
#define SIDE_FIXED 80u

void fz_files_hex(const fz_cache_key *key, char hex[FZ_FILES_HEX + 1])
{
    snprintf(hex, FZ_FILES_HEX + 1, "%016" PRIx64 "%016" PRIx64, key->hi, key->lo);
}

int fz_files_kind(const char *name, char hex[FZ_FILES_HEX + 1])
{
    static const char *const suffix[] = {"", ".meta", ".tmp", ".meta.tmp"};
    for (size_t i = 0; i < FZ_FILES_HEX; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return FZ_FILES_OTHER;
    for (int k = 0; k < 4; k++)
        if (!strcmp(name + FZ_FILES_HEX, suffix[k])) {
            memcpy(hex, name, FZ_FILES_HEX);
            hex[FZ_FILES_HEX] = '\0';
            return k;
        }
    return FZ_FILES_OTHER;
}

uint64_t fz_files_blocks(uint64_t size)
{
    return size / FZ_CACHE_FILE_BLOCK + (size % FZ_CACHE_FILE_BLOCK != 0);
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int64_t ns_of(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int fz_files_dir(const char *dir, bool create)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/files", dir) >= sizeof path)
        return fz_error_set(FZ_EINVAL, "cache directory '%s': path too long", dir);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return fz_error_set(FZ_EIO, "cache %s: cannot create %s: %s", dir, path,
                                strerror(errno));
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) {
        if (errno == ENOENT)
            return fz_error_set(FZ_ENOTFOUND, "cache %s has no stored files", dir);
        return fz_error_set(FZ_EIO,
                            "cache %s: cannot open %s: %s (it must be a directory; `fzfs "
                            "cache clear` does not remove it: remove it by hand)",
                            dir, path, strerror(errno));
    }
    return fd;
}

/* Whether dfd's `name` is the inode st (not following a link). */
static bool names(int dfd, const char *name, const struct stat *st)
{
    struct stat now;
    return fstatat(dfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == st->st_dev &&
           now.st_ino == st->st_ino;
}

int fz_files_lock(int dfd, const char *name, bool create, int *fd)
{
    *fd = -1;
    for (int attempt = 0; attempt < 16; attempt++) {
        struct stat st;
        int f = openat(dfd, name,
                       (create ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
                       0600);
        if (f < 0 && errno == ENOENT && !create)
            return FZ_ENOTFOUND;
        if (f < 0 && errno == ELOOP)
            return fz_error_set(FZ_EFORMAT, "files/%s is a symbolic link", name);
        if (f < 0)
            return fz_error_set(FZ_EIO, "files/%s: cannot open: %s", name, strerror(errno));
        int e = fstat(f, &st) != 0 ? -errno : 0;
        if (!e && !S_ISREG(st.st_mode)) {
            close(f);
            return fz_error_set(FZ_EFORMAT, "files/%s is not a regular file", name);
        }
        if (!e)
            e = fz_cache_lock(f, LOCK_EX | LOCK_NB);
        if (!e && names(dfd, name, &st)) {
            *fd = f;
            return 0;
        }
        close(f);
        if (e == -EWOULDBLOCK)
            return fz_error_set(FZ_EBUSY,
                                "files/%s is being assembled by another thread or "
                                "process",
                                name);
        if (e)
            return fz_error_set(FZ_EIO, "files/%s: cannot lock: %s", name, strerror(-e));
        /* Removed or renamed between our open and our lock: try the name again. */
    }
    return fz_error_set(FZ_EBUSY, "files/%s keeps being replaced", name);
}

/* ---- sidecars ---- */

size_t fz_files_side_len(uint64_t nb)
{
    return SIDE_FIXED + 8 * (size_t)nb + 8;
}

void fz_files_side_build(uint8_t *b, const fz_cache_key *key, uint64_t size, const struct stat *st,
                         const uint8_t *table)
{
    uint64_t nb = fz_files_blocks(size);
    size_t len = fz_files_side_len(nb);
    memset(b, 0, SIDE_FIXED);
    put_le(b, SIDE_MAGIC, 4);
    put_le(b + 4, SIDE_VERSION, 2);
    b[6] = SIDE_SHIFT;
    const uint64_t f[] = {key->hi,
                          key->lo,
                          size,
                          (uint64_t)st->st_dev,
                          (uint64_t)st->st_ino,
                          (uint64_t)st->st_size,
                          (uint64_t)ns_of(st->st_mtim),
                          (uint64_t)ns_of(st->st_ctim),
                          nb};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        put_le(b + 8 + 8 * i, f[i], 8);
    memcpy(b + SIDE_FIXED, table, 8 * (size_t)nb);
    put_le(b + len - 8, XXH3_64bits(b, len - 8), 8);
}

void fz_files_side_free(fz_files_side *s)
{
    if (s->fd >= 0)
        close(s->fd);
    free(s->buf);
    s->fd = -1;
    s->buf = NULL;
}

int fz_files_side_load(int dfd, const char *hex, fz_files_side *s, char *why, size_t whylen)
{
    char name[FZ_FILES_NAME];
    memset(s, 0, sizeof *s);
    s->fd = -1;
    snprintf(name, sizeof name, "%s.meta", hex);
    s->fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (s->fd < 0) {
        if (errno == ENOENT)
            return fz_error_set(FZ_ENOTFOUND, "files/%s: no such file", name);
        snprintf(why, whylen, "cannot open the sidecar: %s", strerror(errno));
        return FZ_EFORMAT;
    }
    if (fstat(s->fd, &s->st) != 0 || !S_ISREG(s->st.st_mode)) {
        snprintf(why, whylen, "the sidecar is not a regular file");
        return FZ_EFORMAT;
    }
    uint64_t flen = (uint64_t)s->st.st_size;
    if (flen < fz_files_side_len(0) || flen > fz_files_side_len(FZ_FILES_MAX_BLOCKS)) {
        snprintf(why, whylen, "the sidecar is %" PRIu64 " bytes, not a sidecar's length", flen);
        return FZ_EFORMAT;
    }
    if (!(s->buf = malloc((size_t)flen)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (fz_pread_full(s->fd, s->buf, (size_t)flen, 0, name)) {
        snprintf(why, whylen, "%s", fz_error_msg());
        return FZ_EFORMAT;
    }
    const uint8_t *b = s->buf;
    unsigned version = (unsigned)get_le(b + 4, 2);
    if (get_le(b, 4) != SIDE_MAGIC) {
        snprintf(why, whylen, "the sidecar does not start with fzfs's magic");
        return FZ_EFORMAT;
    }
    if (version != SIDE_VERSION || b[6] != SIDE_SHIFT) {
        snprintf(why, whylen, "sidecar format version %u, block shift %u (this fzfs writes %u, %u)",
                 version, b[6], SIDE_VERSION, SIDE_SHIFT);
        return FZ_EFORMAT;
    }
    s->key.hi = get_le(b + 8, 8);
    s->key.lo = get_le(b + 16, 8);
    s->size = get_le(b + 24, 8);
    s->dev = get_le(b + 32, 8);
    s->ino = get_le(b + 40, 8);
    s->dsize = get_le(b + 48, 8);
    s->mtime_ns = (int64_t)get_le(b + 56, 8);
    s->ctime_ns = (int64_t)get_le(b + 64, 8);
    s->nb = get_le(b + 72, 8);
    if (s->nb > FZ_FILES_MAX_BLOCKS || s->nb != fz_files_blocks(s->size) || s->dsize != s->size ||
        flen != fz_files_side_len(s->nb)) {
        snprintf(why, whylen,
                 "the sidecar's lengths disagree (size %" PRIu64 ", %" PRIu64 " blocks, %" PRIu64
                 " bytes: truncated or damaged)",
                 s->size, s->nb, flen);
        return FZ_EFORMAT;
    }
    if (XXH3_64bits(b, (size_t)flen - 8) != get_le(b + flen - 8, 8)) {
        snprintf(why, whylen, "the sidecar's checksum does not match (damaged)");
        return FZ_EFORMAT;
    }
    char own[FZ_FILES_HEX + 1];
    fz_files_hex(&s->key, own);
    if (strcmp(own, hex)) {
        snprintf(why, whylen, "the sidecar describes key %s", own);
        return FZ_EFORMAT;
    }
    s->table = b + SIDE_FIXED;
    return 0;
}

int fz_files_data_open(int dfd, const char *hex, const fz_files_side *s, int *fd, char *why,
                       size_t whylen)
{
    struct stat st;
    *fd = openat(dfd, hex, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (*fd < 0) {
        snprintf(why, whylen, "the data file cannot be opened: %s", strerror(errno));
        return FZ_EFORMAT;
    }
    const char *bad = NULL;
    if (fstat(*fd, &st) != 0 || !S_ISREG(st.st_mode))
        bad = "the data file is not a regular file";
    else if ((uint64_t)st.st_dev != s->dev || (uint64_t)st.st_ino != s->ino)
        bad = "the data file was replaced by another file";
    else if ((uint64_t)st.st_size != s->dsize)
        bad = "the data file's size changed";
    else if (ns_of(st.st_mtim) != s->mtime_ns || ns_of(st.st_ctim) != s->ctime_ns)
        bad = "the data file was written to (its mtime or ctime moved)";
    else if (fcntl(*fd, F_SETFL, 0) != 0) /* (O_NONBLOCK was against a FIFO) */
        bad = "the data file cannot be set to blocking reads";
    if (!bad)
        return 0;
    snprintf(why, whylen, "%s", bad);
    return FZ_EFORMAT;
}

bool fz_files_remove(int dfd, const char *hex, const struct stat *side, bool any_side)
{
    char meta[FZ_FILES_NAME];
    int fd;
    int rc = fz_files_lock(dfd, hex, false, &fd);
    if (rc == FZ_EBUSY || rc == FZ_EIO)
        return false; /* a store holds it, or it cannot be judged now */
    snprintf(meta, sizeof meta, "%s.meta", hex);
    bool ok;
    if (side)
        ok = names(dfd, meta, side);
    else if (any_side)
        ok = true;
    else
        ok = faccessat(dfd, meta, F_OK, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT;
    if (ok && (side || any_side))
        ok = unlinkat(dfd, meta, 0) == 0 || errno == ENOENT;
    /* (FZ_EFORMAT: a link or a special file where the data file should be.) */
    if (ok && rc != FZ_ENOTFOUND)
        ok = unlinkat(dfd, hex, 0) == 0 || errno == ENOENT;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* ---- open ---- */

/* The contract's checks on dfd's stored file for key. 0 and *fd; FZ_ENOTFOUND
 * (none, or one of another size); FZ_EFORMAT with why (removed when it could
 * be, *removed says); FZ_ENOMEM. */
static int open_in(int dfd, const char *hex, const fz_cache_key *key, uint64_t size, int *fd,
                   char *why, size_t whylen, bool *removed)
{
    fz_files_side s;
    *removed = false;
    int rc = fz_files_side_load(dfd, hex, &s, why, whylen);
    if (!rc && (s.key.hi != key->hi || s.key.lo != key->lo)) {
        snprintf(why, whylen, "the sidecar names another key");
        rc = FZ_EFORMAT;
    }
    if (!rc && s.size != size)
        rc = fz_error_set(FZ_ENOTFOUND, "the stored file is %" PRIu64 " bytes, not %" PRIu64,
                          s.size, size);
    if (!rc && !(rc = fz_files_data_open(dfd, hex, &s, fd, why, whylen)))
        futimens(s.fd, NULL); /* (best effort: only eviction's order depends on it) */
    if (rc == FZ_EFORMAT) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        *removed = fz_files_remove(dfd, hex, s.fd >= 0 ? &s.st : NULL, s.fd < 0);
    }
    fz_files_side_free(&s);
    return rc;
}

int fz_files_open_in(int dfd, const char *dir, const fz_cache_key *key, uint64_t size, int *fd)
{
    char hex[FZ_FILES_HEX + 1], why[300];
    bool removed;
    *fd = -1;
    fz_files_hex(key, hex);
    int rc = open_in(dfd, hex, key, size, fd, why, sizeof why, &removed);
    if (rc != FZ_EFORMAT)
        return rc;
    if (removed)
        fz_warn("cache %s: stored file files/%s failed a check (%s); removed it (the file "
                "is computed again)",
                dir, hex, why);
    return fz_error_set(FZ_ENOTFOUND, "cache %s: stored file files/%s: %s", dir, hex, why);
}

int fz_cache_file_open(fz_cache *c, const fz_cache_key *key, uint64_t size, int *fd)
{
    *fd = -1;
    if (!c)
        return fz_error_set(FZ_ENOTFOUND, "no cache");
    int dfd = fz_files_dir(c->dir, false);
    if (dfd < 0)
        return dfd == FZ_ENOTFOUND ? dfd : fz_error_prefix(FZ_ENOTFOUND, "stored files");
    int rc = fz_files_open_in(dfd, c->dir, key, size, fd);
    close(dfd);
    return rc;
}

/* ---- scans: stats, verify, clear ---- */

/* The names in dfd (a snapshot: acting on them does not disturb the walk).
 * 0, FZ_EIO or FZ_ENOMEM; the caller frees *out. */
typedef char fz_files_name[FZ_FILES_NAME];
static int list_names(int dfd, const char *dir, fz_files_name **out, size_t *n)
{
    size_t cap = 0;
    int rc = 0, d = dup(dfd);
    DIR *dp = d >= 0 ? fdopendir(d) : NULL;
    *out = NULL;
    *n = 0;
    if (!dp) {
        if (d >= 0)
            close(d);
        return fz_error_set(FZ_EIO, "cache %s: cannot list files/: %s", dir, strerror(errno));
    }
    rewinddir(dp);
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
            strlen(e->d_name) >= sizeof(fz_files_name))
            continue;
        if ((rc = FZ_VEC_RESERVE(*out, cap, *n + 1)))
            break;
        strcpy((*out)[(*n)++], e->d_name);
    }
    closedir(dp);
    return rc;
}

int fz_files_for_each(const char *dir, fz_files_visit_fn fn, void *arg)
{
    fz_files_name *names = NULL;
    size_t n;
    int dfd = fz_files_dir(dir, false);
    if (dfd == FZ_ENOTFOUND)
        return 0;
    if (dfd < 0)
        return dfd;
    int rc = list_names(dfd, dir, &names, &n);
    for (size_t i = 0; i < n && !rc; i++) {
        char hex[FZ_FILES_HEX + 1];
        rc = fn(arg, dfd, names[i], fz_files_kind(names[i], hex), hex);
    }
    free(names);
    close(dfd);
    return rc;
}

typedef struct {
    uint64_t n, bytes;
} stats_acc;

static int stats_visit(void *arg, int dfd, const char *name, int kind, const char *hex)
{
    stats_acc *a = arg;
    struct stat st;
    if (kind == FZ_FILES_META && fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISREG(st.st_mode)) {
        a->n++;
        a->bytes += (uint64_t)st.st_size;
    }
    (void)name;
    return 0;
}

int fz_cache_files_stats(const char *dir, uint64_t *n, uint64_t *bytes)
{
    stats_acc a = {0, 0};
    int rc = fz_files_for_each(dir, stats_visit, &a);
    *n = a.n;
    *bytes = a.bytes;
    return rc;
}

/* Remove a temporary nobody holds (its store died). */
static void remove_stale_temp(int dfd, const char *name)
{
    int fd;
    if (fz_files_lock(dfd, name, false, &fd) == 0) {
        unlinkat(dfd, name, 0);
        close(fd);
    }
}

typedef struct {
    const char *dir;
    uint64_t checked, bad;
    uint8_t *buf;
} verify_acc;

/* Every block of an opened stored file against its table: 0, or FZ_EFORMAT
 * with why. */
static int check_blocks(int fd, const fz_files_side *s, uint8_t *buf, char *why, size_t whylen)
{
    for (uint64_t b = 0; b < s->nb; b++) {
        uint64_t off = b * FZ_CACHE_FILE_BLOCK;
        uint64_t n = s->size - off < FZ_CACHE_FILE_BLOCK ? s->size - off : FZ_CACHE_FILE_BLOCK;
        if (fz_pread_full(fd, buf, (size_t)n, off, "data")) {
            snprintf(why, whylen, "block %" PRIu64 ": %s", b, fz_error_msg());
            return FZ_EFORMAT;
        }
        if (XXH3_64bits(buf, (size_t)n) != get_le(s->table + 8 * b, 8)) {
            snprintf(why, whylen, "block %" PRIu64 " does not match its checksum", b);
            return FZ_EFORMAT;
        }
    }
    return 0;
}

static int verify_visit(void *arg, int dfd, const char *name, int kind, const char *hex)
{
    verify_acc *a = arg;
    char why[300];
    fz_files_side s;
    int fd = -1;
    if (kind == FZ_FILES_TMP || kind == FZ_FILES_META_TMP) {
        remove_stale_temp(dfd, name);
        return 0;
    }
    if (kind == FZ_FILES_DATA) { /* removed when it has no sidecar (an orphan) */
        fz_files_remove(dfd, hex, NULL, false);
        return 0;
    }
    if (kind != FZ_FILES_META)
        return 0;
    int rc = fz_files_side_load(dfd, hex, &s, why, sizeof why);
    if (!rc && !(rc = fz_files_data_open(dfd, hex, &s, &fd, why, sizeof why)))
        rc = check_blocks(fd, &s, a->buf, why, sizeof why);
    if (fd >= 0)
        close(fd);
    if (rc != FZ_ENOTFOUND) /* (removed since the listing) */
        a->checked++;
    if (rc == FZ_EFORMAT && fz_files_remove(dfd, hex, s.fd >= 0 ? &s.st : NULL, s.fd < 0)) {
        fz_warn("cache %s: stored file files/%s is bad (%s); removed it", a->dir, hex, why);
        a->bad++;
    }
    fz_files_side_free(&s);
    return rc == FZ_ENOMEM ? rc : 0;
}

int fz_cache_files_verify(const char *dir, uint64_t *checked, uint64_t *bad)
{
    verify_acc a = {dir, 0, 0, malloc(FZ_CACHE_FILE_BLOCK)};
    int rc =
        a.buf ? fz_files_for_each(dir, verify_visit, &a) : fz_error_set(FZ_ENOMEM, "out of memory");
    free(a.buf);
    *checked = a.checked;
    *bad = a.bad;
    return rc;
}

static int clear_visit(void *arg, int dfd, const char *name, int kind, const char *hex)
{
    const char *dir = arg;
    if (kind == FZ_FILES_TMP || kind == FZ_FILES_META_TMP) {
        remove_stale_temp(dfd, name);
        return 0;
    }
    /* A sidecar is removed with its data file (under the data file's lock);
     * one without a data file alone. */
    if (kind == FZ_FILES_DATA || kind == FZ_FILES_META)
        fz_files_remove(dfd, hex, NULL, true);
    else if (unlinkat(dfd, name, 0) != 0 && errno != ENOENT && errno != EISDIR)
        return fz_error_set(FZ_EIO, "cache %s: cannot remove files/%s: %s", dir, name,
                            strerror(errno));
    return 0;
}

int fz_cache_files_clear(const char *dir)
{
    return fz_files_for_each(dir, clear_visit, (void *)dir);
}
