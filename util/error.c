#include "util/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char fz_msg[1024];

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static size_t utf8_len(const unsigned char *p)
{
    if (p[0] < 0x80)
        return 1;
    size_t n = (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3 : (p[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || (n == 2 && p[0] < 0xC2))
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

/* Messages quote names and text from untrusted files: control characters
 * and bytes that are not UTF-8 are shown as \xNN so a terminal (or a
 * Python reader of stderr) sees printable, valid text. */
static void sanitize(char *msg, size_t cap)
{
    char tmp[sizeof fz_msg];
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)msg;
    while (*p && o + 5 < sizeof tmp) {
        size_t n = utf8_len(p);
        if (n == 1 && (*p >= 0x20 && *p != 0x7F)) {
            tmp[o++] = (char)*p++;
        } else if (n > 1) {
            memcpy(tmp + o, p, n);
            o += n;
            p += n;
        } else {
            o += (size_t)snprintf(tmp + o, sizeof tmp - o, "\\x%02X", *p++);
        }
    }
    tmp[o] = '\0';
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
    case FZ_OK: return "ok";
    case FZ_EIO: return "I/O error";
    case FZ_ENOMEM: return "out of memory";
    case FZ_EFORMAT: return "format error";
    case FZ_ERANGE: return "value out of range";
    case FZ_EDENIED: return "not allowed";
    case FZ_ENOTFOUND: return "not found";
    case FZ_EEXIST: return "already exists";
    case FZ_EUSAGE: return "usage error";
    case FZ_EINVAL: return "invalid value";
    case FZ_EINTR: return "interrupted";
    default: return "unknown error";
    }
}

int fz_error_errno(int code)
{
    switch (code) {
    case FZ_OK: return 0;
    case FZ_ENOMEM: return ENOMEM;
    case FZ_ENOTFOUND: return ENOENT;
    case FZ_EINTR: return EINTR;
    default: return EIO;
    }
}
