/* A growable byte buffer. The buffer owns `data`; fz_buf_free releases it.
 * Not thread-safe. Every append returns 0 or FZ_ENOMEM. */
#ifndef FZ_UTIL_BUF_H
#define FZ_UTIL_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} fz_buf;

#define FZ_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

int fz_buf_reserve(fz_buf *b, size_t extra);
int fz_buf_append(fz_buf *b, const void *p, size_t n);
int fz_buf_puts(fz_buf *b, const char *s);
int fz_buf_putc(fz_buf *b, char c);
int fz_buf_printf(fz_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fz_buf_put_u16le(fz_buf *b, uint16_t v);
int fz_buf_put_u32le(fz_buf *b, uint32_t v);
int fz_buf_put_u64le(fz_buf *b, uint64_t v);
/* v in decimal (printf's %llu, without printf's cost per call). */
int fz_buf_put_dec(fz_buf *b, uint64_t v);
/* The same into out (room for 21 bytes), NUL-terminated; returns the digits' count. */
size_t fz_fmt_dec(char *out, uint64_t v);
/* Hand the bytes to the caller (who frees them) and reset the buffer. */
uint8_t *fz_buf_steal(fz_buf *b, size_t *len);
void fz_buf_free(fz_buf *b);

#endif
