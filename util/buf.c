#include "util/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/vec.h"

int fz_buf_reserve(fz_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    if (extra > SIZE_MAX - b->len)
        return fz_error_set(FZ_ENOMEM, "buffer size overflow");
    return FZ_VEC_RESERVE(b->data, b->cap, b->len + extra);
}

int fz_buf_append(fz_buf *b, const void *p, size_t n)
{
    int rc = fz_buf_reserve(b, n + 1);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0; /* always NUL-terminated for convenience, not counted */
    return 0;
}

int fz_buf_puts(fz_buf *b, const char *s)
{
    return fz_buf_append(b, s, strlen(s));
}

int fz_buf_putc(fz_buf *b, char c)
{
    if (b->cap - b->len < 2) {
        int rc = fz_buf_reserve(b, 2);
        if (rc)
            return rc;
    }
    b->data[b->len++] = (uint8_t)c;
    b->data[b->len] = 0;
    return 0;
}

int fz_buf_printf(fz_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return fz_error_set(FZ_EINVAL, "bad format string");
    int rc = fz_buf_reserve(b, (size_t)n + 1);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int fz_buf_put_u16le(fz_buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    return fz_buf_append(b, x, 2);
}

int fz_buf_put_u32le(fz_buf *b, uint32_t v)
{
    uint8_t x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    return fz_buf_append(b, x, 4);
}

int fz_buf_put_u64le(fz_buf *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    return fz_buf_append(b, x, 8);
}

size_t fz_fmt_dec(char *out, uint64_t v)
{
    char d[20];
    size_t n = 0;
    do {
        d[sizeof d - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out, d + sizeof d - n, n);
    out[n] = '\0';
    return n;
}

int fz_buf_put_dec(fz_buf *b, uint64_t v)
{
    char d[21];
    return fz_buf_append(b, d, fz_fmt_dec(d, v));
}

uint8_t *fz_buf_steal(fz_buf *b, size_t *len)
{
    uint8_t *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void fz_buf_free(fz_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
