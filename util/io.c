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
    int rc = 0;
    char *buf = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return fz_error_set(FZ_ENOTFOUND, "%s: no such file", path);
        return fz_error_set(FZ_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0) {
        rc = fz_error_set(FZ_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = fz_error_set(FZ_EINVAL, "%s: not a regular file", path);
        goto done;
    }
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
