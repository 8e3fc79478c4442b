#include "util/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char fz_msg[1024];

size_t fz_utf8_seq_len(const unsigned char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (p[0] < 0x80)
        return 1;
    size_t len = p[0] >= 0xC2 && p[0] <= 0xDF   ? 2
                 : p[0] >= 0xE0 && p[0] <= 0xEF ? 3
                 : p[0] >= 0xF0 && p[0] <= 0xF4 ? 4
                                                : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    /* overlong 3- and 4-byte forms, UTF-16 surrogates, past U+10FFFF */
    if ((p[0] == 0xE0 && p[1] < 0xA0) || (p[0] == 0xED && p[1] > 0x9F) ||
        (p[0] == 0xF0 && p[1] < 0x90) || (p[0] == 0xF4 && p[1] > 0x8F))
        return 0;
    return len;
}

bool fz_utf8_valid(const void *s, size_t n)
{
    const unsigned char *p = s;
    while (n > 0) {
        size_t k = fz_utf8_seq_len(p, n);
        if (k == 0)
            return false;
        p += k;
        n -= k;
    }
    return true;
}

/* Append p[0..n) to out (cap bytes, NUL-terminated), printable UTF-8 as is,
 * anything else as \xNN; stops (returning false) when out is full. */
static bool escape_into(const unsigned char *p, size_t n, char *out, size_t cap, size_t *o)
{
    while (n > 0) {
        size_t k = fz_utf8_seq_len(p, n);
        bool plain = k > 1 || (k == 1 && p[0] >= 0x20 && p[0] != 0x7F);
        size_t need = plain ? k : 4;
        if (*o + need + 1 > cap)
            return false;
        if (plain)
            memcpy(out + *o, p, k);
        else
            snprintf(out + *o, cap - *o, "\\x%02X", p[0]);
        *o += need;
        p += plain ? k : 1;
        n -= plain ? k : 1;
    }
    out[*o] = '\0';
    return true;
}

const char *fz_escape(const void *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    if (cap < 4) {
        if (cap)
            out[0] = '\0';
        return out;
    }
    if (!escape_into(s, n, out, cap - 3, &o))
        snprintf(out + o, cap - o, "...");
    return out;
}

/* Messages quote names and text from untrusted files: control characters
 * and bytes that are not UTF-8 are shown as \xNN so a terminal (or a
 * Python reader of stderr) sees printable, valid text. */
static void sanitize(char *msg, size_t cap)
{
    char tmp[sizeof fz_msg];
    fz_escape(msg, strlen(msg), tmp, sizeof tmp);
    snprintf(msg, cap, "%s", tmp);
}

int fz_error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fz_msg, sizeof fz_msg, fmt, ap);
    va_end(ap);
    sanitize(fz_msg, sizeof fz_msg);
    return code;
}

int fz_error_prefix(int code, const char *fmt, ...)
{
    char old[sizeof fz_msg];
    char pre[512];
    va_list ap;
    memcpy(old, fz_msg, sizeof old);
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    if (old[0])
        snprintf(fz_msg, sizeof fz_msg, "%s: %s", pre, old);
    else
        snprintf(fz_msg, sizeof fz_msg, "%s", pre);
    sanitize(fz_msg, sizeof fz_msg);
    return code;
}

const char *fz_error_msg(void)
{
    return fz_msg;
}

void fz_error_clear(void)
{
    fz_msg[0] = '\0';
}

const char *fz_error_name(int code)
{
    switch (code) {
    case FZ_OK:
        return "ok";
    case FZ_EIO:
        return "I/O error";
    case FZ_ENOMEM:
        return "out of memory";
    case FZ_EFORMAT:
        return "format error";
    case FZ_ERANGE:
        return "value out of range";
    case FZ_EDENIED:
        return "not allowed";
    case FZ_ENOTFOUND:
        return "not found";
    case FZ_EEXIST:
        return "already exists";
    case FZ_EUSAGE:
        return "usage error";
    case FZ_EINVAL:
        return "invalid value";
    case FZ_EINTR:
        return "interrupted";
    case FZ_EBUSY:
        return "busy";
    case FZ_ENOSPC:
        return "no space";
    case FZ_ECANCELED:
        return "canceled";
    default:
        return "unknown error";
    }
}

int fz_error_errno(int code)
{
    switch (code) {
    case FZ_OK:
        return 0;
    case FZ_ENOMEM:
        return ENOMEM;
    case FZ_ENOTFOUND:
        return ENOENT;
    case FZ_EINTR:
        return EINTR;
    case FZ_EBUSY:
        return EBUSY;
    case FZ_ENOSPC:
        return ENOSPC;
    case FZ_ECANCELED:
        return ECANCELED;
    default:
        return EIO;
    }
}

void fz_first_error_init(fz_first_error *e)
{
    pthread_mutex_init(&e->lock, NULL);
    e->code = 0;
    e->msg[0] = '\0';
}

void fz_first_error_destroy(fz_first_error *e)
{
    pthread_mutex_destroy(&e->lock);
}

int fz_first_error_note(fz_first_error *e, int code)
{
    pthread_mutex_lock(&e->lock);
    if (code && !e->code) {
        e->code = code;
        snprintf(e->msg, sizeof e->msg, "%s", fz_error_msg());
    }
    pthread_mutex_unlock(&e->lock);
    return code;
}

int fz_first_error_code(fz_first_error *e)
{
    pthread_mutex_lock(&e->lock);
    int code = e->code;
    pthread_mutex_unlock(&e->lock);
    return code;
}

int fz_first_error_raise(fz_first_error *e)
{
    int code = fz_first_error_code(e);
    return code ? fz_error_set(code, "%s", e->msg) : 0;
}
