/* fzfs error handling: one error enum for the whole core, and a per-thread
 * detail message naming the file and the problem.
 *
 * Core functions return 0 on success or a negative FZ_E* code, and on failure
 * set the detail with fz_error_set(). The CLI prints fz_error_msg(); the FUSE
 * layer maps the code to errno with fz_error_errno(). Thread-safety: the detail
 * message is thread-local; everything else is stateless. */
#ifndef FZ_UTIL_ERROR_H
#define FZ_UTIL_ERROR_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum {
    FZ_OK = 0,
    FZ_EIO = -1,        /* read/write/open failed (errno in the message) */
    FZ_ENOMEM = -2,     /* allocation failed */
    FZ_EFORMAT = -3,    /* input file is malformed or not understood */
    FZ_ERANGE = -4,     /* a size or offset from a file is out of range / overflows */
    FZ_EDENIED = -5,    /* input asks for something we refuse (e.g. a pickle global) */
    FZ_ENOTFOUND = -6,  /* a required file, token or name does not exist */
    FZ_EEXIST = -7,     /* something that must not exist exists (DEST) */
    FZ_EUSAGE = -8,     /* bad option combination or value (exit status 2) */
    FZ_EINVAL = -9,     /* bad value in an input file or option (exit status 1) */
    FZ_EINTR = -10,     /* interrupted by a signal */
    FZ_EBUSY = -11,     /* another thread or process is doing the same thing right now */
    FZ_ENOSPC = -12,    /* it would not fit (a budget or the filesystem's free space) */
    FZ_ECANCELED = -13, /* the caller asked to stop; nothing was kept */
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

/* Length (1..4) of the well-formed UTF-8 sequence at p, which has n bytes
 * left, or 0 if there is none there: overlong forms, UTF-16 surrogates and
 * code points past U+10FFFF are not UTF-8 (as JSON readers and Python see
 * it). */
size_t fz_utf8_seq_len(const unsigned char *p, size_t n);
/* Whether s[0..n) is entirely well-formed UTF-8. */
bool fz_utf8_valid(const void *s, size_t n);

/* Bytes from a file made printable for a message: s[0..n) into out (cap
 * bytes, always NUL-terminated), printable UTF-8 kept, NUL, control
 * characters and bytes that are not UTF-8 written as \xNN, "..." at the end
 * when it does not fit. Returns out. fz_error_set applies the same to its
 * whole message, but cannot see past a NUL: use this for byte strings. */
const char *fz_escape(const void *s, size_t n, char *out, size_t cap);

/* Short name of a code ("format error", ...). */
const char *fz_error_name(int code);

/* The errno a FUSE reply should carry for a code (EIO for most). */
int fz_error_errno(int code);

/* The first failure among threads sharing one piece of work (a pool's
 * tasks): its code and the detail message of the thread that hit it, under
 * a lock. Later failures are dropped; the work's owner raises the first one
 * on its own thread once the others are done. */
typedef struct {
    pthread_mutex_t lock;
    int code;
    char msg[1024];
} fz_first_error;
void fz_first_error_init(fz_first_error *e);
void fz_first_error_destroy(fz_first_error *e);
/* Note code (non-zero) with the calling thread's message unless a failure
 * was noted already; returns code. */
int fz_first_error_note(fz_first_error *e, int code);
/* The code noted so far, 0 for none (tasks check it to stop early). */
int fz_first_error_code(fz_first_error *e);
/* The noted code, its message made the calling thread's; 0 (the message
 * untouched) when nothing was noted. */
int fz_first_error_raise(fz_first_error *e);

#endif
