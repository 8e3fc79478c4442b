/* Small I/O helpers that retry on EINTR and short transfers.
 * Each returns 0 or FZ_EIO with a message naming `path`. Thread-safe. */
#ifndef FZ_UTIL_IO_H
#define FZ_UTIL_IO_H

#include <stddef.h>
#include <stdint.h>

/* Read exactly len bytes at off. fz_pread_full treats end of file as FZ_EIO
 * (a source that shrank under us); fz_pread_exact as FZ_EFORMAT (a file
 * that is shorter than its own headers say: truncated input). */
int fz_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path);
int fz_pread_exact(int fd, void *buf, size_t len, uint64_t off, const char *path);
int fz_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path);
/* Read a whole regular file (at most max_len bytes) into a new NUL-terminated
 * buffer the caller frees. FZ_ENOTFOUND if it does not exist, FZ_ERANGE if
 * larger than max_len. */
int fz_read_file(const char *path, size_t max_len, char **data, size_t *len);

#endif
