/* fzfs error handling: one error enum for the whole core, and a per-thread
 * detail message naming the file and the problem.
 *
 * Core functions return 0 on success or a negative FZ_E* code, and on failure
 * set the detail with fz_error_set(). The CLI prints fz_error_msg(); the FUSE
 * layer maps the code to errno with fz_error_errno(). Thread-safety: the detail
 * message is thread-local; everything else is stateless. */
#ifndef FZ_UTIL_ERROR_H
#define FZ_UTIL_ERROR_H

#include <stdarg.h>

enum {
    FZ_OK = 0,
    FZ_EIO = -1,       /* read/write/open failed (errno in the message) */
    FZ_ENOMEM = -2,    /* allocation failed */
    FZ_EFORMAT = -3,   /* input file is malformed or not understood */
    FZ_ERANGE = -4,    /* a size or offset from a file is out of range / overflows */
    FZ_EDENIED = -5,   /* input asks for something we refuse (e.g. a pickle global) */
    FZ_ENOTFOUND = -6, /* a required file, token or name does not exist */
    FZ_EEXIST = -7,    /* something that must not exist exists (DEST) */
    FZ_EUSAGE = -8,    /* bad option combination or value (exit status 2) */
    FZ_EINVAL = -9,    /* bad value in an input file or option (exit status 1) */
    FZ_EINTR = -10,    /* interrupted by a signal */
};

/* Set the calling thread's detail message (printf-style) and return `code`,
 * so callers can write `return fz_error_set(FZ_EFORMAT, "%s: ...", path);`. */
int fz_error_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefix the current detail message: "<prefix>: <old message>". Returns code. */
int fz_error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last detail message ("" if none). Valid until the next
 * fz_error_set on this thread. */
const char *fz_error_msg(void);

/* Clear the calling thread's detail message. */
void fz_error_clear(void);

/* Short name of a code ("format error", ...). */
const char *fz_error_name(int code);

/* The errno a FUSE reply should carry for a code (EIO for most). */
int fz_error_errno(int code);

#endif
