/* The two fz_vfs implementations: a real directory (every path opened
 * beneath the root's descriptor, never through a symlink) and a built view
 * (the node table; file bytes through fz_view_read). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/error.h"
#include "util/io.h"
#include "util/vec.h"
#include "verify/verify.h"

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int push_name(char ***names, size_t *n, size_t *cap, const char *name)
{
    int rc = FZ_VEC_RESERVE(*names, *cap, *n + 1);
    if (rc)
        return rc;
    if (!((*names)[*n] = strdup(name)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    (*n)++;
    return 0;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* ---- a real directory ---- */

typedef struct {
    int rootfd;
} fz_dirfs;

static const char *rel(const char *path)
{
    return path[0] ? path : ".";
}

static int dir_lstat(void *ctx, const char *path, fz_vkind *kind, uint64_t *size)
{
    fz_dirfs *d = ctx;
    struct stat st;
    *size = 0;
    if (fstatat(d->rootfd, rel(path), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            *kind = FZ_VK_MISSING;
            return 0;
        }
        return fz_error_set(FZ_EIO, "%s: cannot stat: %s", path, strerror(errno));
    }
    *kind = S_ISDIR(st.st_mode)   ? FZ_VK_DIR
            : S_ISREG(st.st_mode) ? FZ_VK_FILE
            : S_ISLNK(st.st_mode) ? FZ_VK_LINK
                                  : FZ_VK_OTHER;
    if (*kind == FZ_VK_FILE)
        *size = (uint64_t)st.st_size;
    return 0;
}

static int dir_list(void *ctx, const char *path, char ***names, size_t *n)
{
    fz_dirfs *d = ctx;
    size_t cap = 0;
    int rc = 0;
    *names = NULL;
    *n = 0;
    int fd = openat(d->rootfd, rel(path), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir) {
        rc = fz_error_set(FZ_EIO, "%s: cannot list: %s", path[0] ? path : ".", strerror(errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    struct dirent *e;
    while (rc == 0 && (e = readdir(dir)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            rc = push_name(names, n, &cap, e->d_name);
    closedir(dir);
    if (rc) {
        free_names(*names, *n);
        *names = NULL;
        *n = 0;
        return rc;
    }
    if (*n)
        qsort(*names, *n, sizeof **names, cmp_name);
    return 0;
}

static int dir_readlink(void *ctx, const char *path, char **target)
{
    fz_dirfs *d = ctx;
    char buf[PATH_MAX + 1];
    ssize_t k = readlinkat(d->rootfd, path, buf, sizeof buf);
    if (k < 0)
        return fz_error_set(FZ_EIO, "%s: cannot read the link: %s", path, strerror(errno));
    if ((size_t)k >= sizeof buf)
        return fz_error_set(FZ_ERANGE, "%s: link target longer than %d bytes", path, PATH_MAX);
    buf[k] = 0;
    if (!(*target = strdup(buf)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    return 0;
}

static int dir_open(void *ctx, const char *path, int *fd)
{
    fz_dirfs *d = ctx;
    *fd = openat(d->rootfd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (*fd < 0)
        return fz_error_set(FZ_EIO, "%s: cannot open: %s", path, strerror(errno));
    return 0;
}

static int dir_read(void *ctx, const char *path, uint64_t off, uint64_t len, void *buf)
{
    int fd, rc = dir_open(ctx, path, &fd);
    if (rc)
        return rc;
    rc = fz_pread_exact(fd, buf, (size_t)len, off, path);
    close(fd);
    return rc;
}

int fz_vfs_open_dir(fz_vfs *fs, const char *dir)
{
    memset(fs, 0, sizeof *fs);
    fz_dirfs *d = malloc(sizeof *d);
    if (!d)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    d->rootfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d->rootfd < 0) {
        int rc = fz_error_set(FZ_ENOTFOUND, "%s: not a directory: %s", dir, strerror(errno));
        free(d);
        return rc;
    }
    *fs = (fz_vfs){d, dir_lstat, dir_list, dir_readlink, dir_read, dir_open};
    return 0;
}

/* ---- a built view ---- */

/* Node of `path`, or UINT32_MAX when absent or reached through a symlink. */
static uint32_t view_lookup(fz_view *v, const char *path)
{
    uint32_t cur = 0;
    const char *p = path;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        const fz_node *n = fz_view_node(v, cur);
        if (n->kind != FZ_NODE_DIR)
            return UINT32_MAX;
        uint32_t lo = 0, hi = n->nchildren, found = UINT32_MAX;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            const char *name = fz_view_node(v, n->children[mid])->name;
            int c = strncmp(name, p, len);
            if (c == 0 && name[len])
                c = 1;
            if (c == 0) {
                found = n->children[mid];
                break;
            }
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (found == UINT32_MAX)
            return UINT32_MAX;
        cur = found;
        p += len;
        if (*p == '/')
            p++;
    }
    return cur;
}

static int view_lstat(void *ctx, const char *path, fz_vkind *kind, uint64_t *size)
{
    uint32_t i = view_lookup(ctx, path);
    *size = 0;
    *kind = FZ_VK_MISSING;
    if (i == UINT32_MAX)
        return 0;
    const fz_node *n = fz_view_node(ctx, i);
    *kind = n->kind == FZ_NODE_DIR ? FZ_VK_DIR : n->kind == FZ_NODE_FILE ? FZ_VK_FILE : FZ_VK_LINK;
    if (n->kind == FZ_NODE_FILE)
        *size = n->size;
    return 0;
}

static int view_node(void *ctx, const char *path, fz_node_kind kind, const fz_node **out,
                     uint32_t *idx)
{
    uint32_t i = view_lookup(ctx, path);
    if (i == UINT32_MAX || fz_view_node(ctx, i)->kind != kind)
        return fz_error_set(FZ_ENOTFOUND, "%s: not in the view", path);
    *out = fz_view_node(ctx, i);
    if (idx)
        *idx = i;
    return 0;
}

static int view_list(void *ctx, const char *path, char ***names, size_t *n)
{
    const fz_node *d;
    size_t cap = 0;
    *names = NULL;
    *n = 0;
    int rc = view_node(ctx, path, FZ_NODE_DIR, &d, NULL);
    for (uint32_t i = 0; rc == 0 && i < d->nchildren; i++)
        rc = push_name(names, n, &cap, fz_view_node(ctx, d->children[i])->name);
    if (rc) {
        free_names(*names, *n);
        *names = NULL;
        *n = 0;
    }
    return rc;
}

static int view_readlink(void *ctx, const char *path, char **target)
{
    const fz_node *l;
    int rc = view_node(ctx, path, FZ_NODE_SYMLINK, &l, NULL);
    if (rc)
        return rc;
    if (!(*target = strdup(l->target)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    return 0;
}

static int view_read(void *ctx, const char *path, uint64_t off, uint64_t len, void *buf)
{
    const fz_node *f;
    uint32_t i;
    int rc = view_node(ctx, path, FZ_NODE_FILE, &f, &i);
    return rc ? rc : fz_view_read(ctx, i, off, len, buf);
}

struct put_ctx {
    int fd;
    const char *path;
};

static int put_bytes(void *arg, uint64_t off, const uint8_t *p, uint64_t len)
{
    struct put_ctx *c = arg;
    return fz_pwrite_full(c->fd, p, (size_t)len, off, c->path);
}

/* A sparse in-memory file of the node's size holding its literal bytes and
 * its zip headers: every header a reader looks at, and no tensor byte. */
static int view_open(void *ctx, const char *path, int *out)
{
    const fz_node *f;
    uint32_t ni;
    int rc = view_node(ctx, path, FZ_NODE_FILE, &f, &ni);
    if (rc)
        return rc;
    int fd = memfd_create("fzfs-verify", MFD_CLOEXEC);
    if (fd < 0)
        return fz_error_set(FZ_EIO, "%s: memfd_create: %s", path, strerror(errno));
    if (ftruncate(fd, (off_t)f->size) != 0)
        rc = fz_error_set(FZ_EIO, "%s: cannot size a memfd: %s", path, strerror(errno));
    struct put_ctx pc = {fd, path};
    if (rc == 0)
        rc = fz_view_read_metadata(ctx, ni, put_bytes, &pc);
    if (rc) {
        close(fd);
        return rc;
    }
    *out = fd;
    return 0;
}

int fz_vfs_open_view(fz_vfs *fs, fz_view *v)
{
    *fs = (fz_vfs){v, view_lstat, view_list, view_readlink, view_read, view_open};
    return 0;
}

void fz_vfs_close(fz_vfs *fs)
{
    if (fs->lstat == dir_lstat && fs->ctx) {
        fz_dirfs *d = fs->ctx;
        close(d->rootfd);
        free(d);
    }
    memset(fs, 0, sizeof *fs);
}
