#include "util/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/error.h"

static int pread_loop(int fd, void *buf, size_t len, uint64_t off, const char *path, int eof_code)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fz_error_set(FZ_EIO, "%s: read at offset %llu failed: %s", path,
                                (unsigned long long)off, strerror(errno));
        }
        if (n == 0)
            return fz_error_set(eof_code, "%s: unexpected end of file at offset %llu", path,
                                (unsigned long long)off);
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int fz_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
    return pread_loop(fd, buf, len, off, path, FZ_EIO);
}

int fz_pread_exact(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
    return pread_loop(fd, buf, len, off, path, FZ_EFORMAT);
}

int fz_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fz_error_set(FZ_EIO, "%s: write failed: %s", path, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int fz_read_file(const char *path, size_t max_len, char **data, size_t *len)
{
    char *buf = NULL;
    struct stat st;
    int fd = -1;
    int rc = fz_open_input(path, 0, &fd, &st);
    if (rc)
        return rc;
    if ((uint64_t)st.st_size > max_len) {
        rc = fz_error_set(FZ_ERANGE, "%s: file is too large (%lld bytes, limit %zu)", path,
                          (long long)st.st_size, max_len);
        goto done;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        rc = fz_error_set(FZ_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    rc = fz_pread_full(fd, buf, (size_t)st.st_size, 0, path);
    if (rc)
        goto done;
    buf[st.st_size] = '\0';
    *data = buf;
    *len = (size_t)st.st_size;
    buf = NULL;
done:
    free(buf);
    close(fd);
    return rc;
}

/* "a FIFO", "a directory", ...: what a non-regular file is, for messages. */
static const char *file_kind(mode_t m)
{
    return S_ISFIFO(m)   ? "a FIFO"
           : S_ISDIR(m)  ? "a directory"
           : S_ISSOCK(m) ? "a socket"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISLNK(m)  ? "a symbolic link"
                         : "a special file";
}

static int not_regular(const char *path, mode_t m)
{
    return fz_error_set(FZ_EINVAL,
                        "%s: is %s, not a regular file (fzfs reads its inputs only "
                        "from regular files: put the file itself there)",
                        path, file_kind(m));
}

static int open_failed(const char *path, const char *what, int err)
{
    if (err == ENOENT)
        return fz_error_set(FZ_ENOTFOUND, "%s: no such file", path);
    return fz_error_set(FZ_EIO, "%s: cannot %s: %s", path, what, strerror(err));
}

int fz_check_input(const char *path, unsigned flags, struct stat *st)
{
    struct stat s;
    if ((flags & FZ_OPEN_NOFOLLOW) ? lstat(path, &s) : stat(path, &s))
        return open_failed(path, "stat", errno);
    if (!S_ISREG(s.st_mode))
        return not_regular(path, s.st_mode);
    if (st)
        *st = s;
    return 0;
}

int fz_open_input(const char *path, unsigned flags, int *fd, struct stat *st)
{
    struct stat s;
    int rc, f;
    /* Refuse what is not a regular file before opening it (opening a device
     * can have effects of its own); the fstat below covers a path swapped
     * in between. */
    if ((rc = fz_check_input(path, flags, NULL)))
        return rc;
    f = open(path,
             O_RDONLY | O_NONBLOCK | O_CLOEXEC | ((flags & FZ_OPEN_NOFOLLOW) ? O_NOFOLLOW : 0));
    if (f < 0) {
        if (errno == ELOOP && (flags & FZ_OPEN_NOFOLLOW))
            return not_regular(path, S_IFLNK);
        return open_failed(path, "open", errno);
    }
    if (fstat(f, &s) != 0) {
        rc = open_failed(path, "stat", errno);
        goto fail;
    }
    if (!S_ISREG(s.st_mode)) {
        rc = not_regular(path, s.st_mode);
        goto fail;
    }
    int fl = fcntl(f, F_GETFL);
    if (fl < 0 || fcntl(f, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        rc = open_failed(path, "set blocking mode on", errno);
        goto fail;
    }
    *fd = f;
    if (st)
        *st = s;
    return 0;
fail:
    close(f);
    return rc;
}
