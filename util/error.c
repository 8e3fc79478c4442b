#include "util/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char fz_msg[1024];

int fz_error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fz_msg, sizeof fz_msg, fmt, ap);
    va_end(ap);
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
