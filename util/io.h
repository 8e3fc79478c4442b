/* Small I/O helpers that retry on EINTR and short transfers.
 * Each returns 0 or FZ_EIO with a message naming `path`. Thread-safe. */
#ifndef FZ_UTIL_IO_H
#define FZ_UTIL_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* Read exactly len bytes at off. fz_pread_full treats end of file as FZ_EIO
 * (a source that shrank under us); fz_pread_exact as FZ_EFORMAT (a file
 * that is shorter than its own headers say: truncated input). */
int fz_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path);
int fz_pread_exact(int fd, void *buf, size_t len, uint64_t off, const char *path);
int fz_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path);
/* Read a whole regular file (at most max_len bytes) into a new NUL-terminated
 * buffer the caller frees. Opened with fz_open_input. FZ_ENOTFOUND if it
 * does not exist, FZ_EINVAL if it is not a regular file, FZ_ERANGE if larger
 * than max_len. */
int fz_read_file(const char *path, size_t max_len, char **data, size_t *len);

/* fz_open_input flag: a symbolic link at `path` itself is refused instead of
 * followed (links in the directories above it are still followed). */
#define FZ_OPEN_NOFOLLOW 1u

/* Open an input file for reading. Every file fzfs reads goes through here:
 * it never blocks on a FIFO or device (the file is opened O_NONBLOCK and
 * refused unless fstat says it is a regular file; O_NONBLOCK is then
 * cleared). On success *fd is an O_RDONLY|O_CLOEXEC descriptor the caller
 * closes, and *st (if not NULL) its fstat. Errors, each naming `path`:
 * FZ_ENOTFOUND "no such file"; FZ_EINVAL "is a FIFO, not a regular file"
 * (a directory, socket, device, or with FZ_OPEN_NOFOLLOW a symbolic link);
 * FZ_EIO any other open or stat failure (errno's text). */
int fz_open_input(const char *path, unsigned flags, int *fd, struct stat *st);

/* The same checks without opening (stat, or lstat with FZ_OPEN_NOFOLLOW), for
 * code that decides what to read before reading it: 0 if `path` is a regular
 * file, else the error fz_open_input would give. *st may be NULL. */
int fz_check_input(const char *path, unsigned flags, struct stat *st);

#endif
