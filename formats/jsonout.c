/* Python json.dump-style emitter over jansson, and the shortest round-trip
 * float formatting both Python and serde_json use. */
#include "formats/jsonout.h"

#include <errno.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

/* Shortest round-trip digits.
 *
 * Python's repr(float) and ryu both print the shortest decimal string that
 * reads back as the same double, choosing the closest one when several of
 * that length exist. We search precisions 1..17 with "%.*e" (glibc rounds
 * correctly, so each candidate is the nearest decimal of that length) and
 * stop at the first that round-trips. The nearest candidate can fail while
 * its upper neighbour succeeds only at a power of two, where the rounding
 * interval below the value is half the size of the one above; for those we
 * also try the next decimal up. Result: digits without dot (no trailing
 * zeros), and the decimal exponent e of the first digit (d.ddd x 10^e). */
static void shortest_digits(double d, char *digits, int *ndig, int *exp10)
{
    char tmp[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) != d) {
            int e2;
            double m = frexp(d, &e2);
            if (m != 0.5 || p == 17)
                continue;
            /* power of two: try the candidate one unit up in the last place */
            char *ep = strchr(tmp, 'e');
            char *q = ep - 1;
            while (q >= tmp) {
                if (*q == '.') {
                    q--;
                    continue;
                }
                if (*q == '9') {
                    *q = '0';
                    q--;
                    continue;
                }
                break;
            }
            if (q < tmp || *q < '0' || *q > '8')
                continue;
            (*q)++;
            if (strtod(tmp, NULL) != d)
                continue;
        }
        break;
    }
    /* tmp is now "d.ddde[+-]XX" (or "de[+-]XX") */
    int n = 0;
    const char *s = tmp;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9')
            digits[n++] = *s;
    while (n > 1 && digits[n - 1] == '0')
        n--;
    digits[n] = '\0';
    *ndig = n;
    *exp10 = (int)strtol(s + 1, NULL, 10);
}

/* Write digits (value 0.d1d2.. scaled so d1 has exponent e) in fixed form. */
static char *put_fixed(char *o, const char *dg, int n, int e)
{
    if (e >= 0) {
        for (int i = 0; i <= e; i++)
            *o++ = i < n ? dg[i] : '0';
        *o++ = '.';
        if (n > e + 1)
            for (int i = e + 1; i < n; i++)
                *o++ = dg[i];
        else
            *o++ = '0';
    } else {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -e - 1; i++)
            *o++ = '0';
        for (int i = 0; i < n; i++)
            *o++ = dg[i];
    }
    return o;
}

static char *put_mantissa(char *o, const char *dg, int n)
{
    *o++ = dg[0];
    if (n > 1) {
        *o++ = '.';
        for (int i = 1; i < n; i++)
            *o++ = dg[i];
    }
    return o;
}

/* Shortest round-trip digits in one of two dialects. Python's repr: NaN and
 * Infinity spelled out, exponent form when e < -4 or e >= 16 with at least
 * two exponent digits (1e-05). serde_json (tokenizers): non-finite values
 * become null, exponent form when e < -5 or e >= 16, exponent as is (1e-7). */
static void format_real(double d, char *buf, bool rust)
{
    if (!isfinite(d)) {
        strcpy(buf, rust ? "null" : isnan(d) ? "NaN" : d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char *o = buf;
    if (signbit(d)) {
        *o++ = '-';
        d = -d;
    }
    if (d == 0) {
        strcpy(o, "0.0");
        return;
    }
    char dg[24];
    int n, e;
    shortest_digits(d, dg, &n, &e);
    if (e < (rust ? -5 : -4) || e >= 16) {
        o = put_mantissa(o, dg, n);
        o += sprintf(o, rust ? "e%c%d" : "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    } else {
        o = put_fixed(o, dg, n, e);
        *o = '\0';
    }
}

void fz_json_format_real(double d, char *buf)
{
    format_real(d, buf, false);
}

void fz_json_format_real_rust(double d, char *buf)
{
    format_real(d, buf, true);
}

/* Decode one UTF-8 sequence (jansson has validated the string). */
static uint32_t utf8_next(const unsigned char *s, size_t len, size_t *i)
{
    unsigned char c = s[*i];
    int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    uint32_t cp = extra == 3 ? c & 0x07 : extra == 2 ? c & 0x0F : extra == 1 ? c & 0x1F : c;
    (*i)++;
    for (int k = 0; k < extra && *i < len; k++, (*i)++)
        cp = (cp << 6) | (s[*i] & 0x3F);
    return cp;
}

static int emit_string(const char *str, size_t len, bool ascii, fz_buf *out)
{
    const unsigned char *s = (const unsigned char *)str;
    int rc = fz_buf_putc(out, '"');
    size_t i = 0;
    while (rc == 0 && i < len) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            size_t j = i;
            while (j < len && s[j] >= 0x20 && s[j] < 0x80 && s[j] != '"' && s[j] != '\\')
                j++;
            rc = fz_buf_append(out, s + i, j - i);
            i = j;
            continue;
        }
        switch (c) {
        case '"': rc = fz_buf_puts(out, "\\\""); i++; continue;
        case '\\': rc = fz_buf_puts(out, "\\\\"); i++; continue;
        case '\n': rc = fz_buf_puts(out, "\\n"); i++; continue;
        case '\r': rc = fz_buf_puts(out, "\\r"); i++; continue;
        case '\t': rc = fz_buf_puts(out, "\\t"); i++; continue;
        case '\b': rc = fz_buf_puts(out, "\\b"); i++; continue;
        case '\f': rc = fz_buf_puts(out, "\\f"); i++; continue;
        default: break;
        }
        if (c < 0x20) {
            rc = fz_buf_printf(out, "\\u%04x", c);
            i++;
            continue;
        }
        /* non-ASCII */
        size_t start = i;
        uint32_t cp = utf8_next(s, len, &i);
        if (!ascii) {
            rc = fz_buf_append(out, s + start, i - start);
        } else if (cp >= 0x10000) {
            cp -= 0x10000;
            rc = fz_buf_printf(out, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            rc = fz_buf_printf(out, "\\u%04x", cp);
        }
    }
    return rc ? rc : fz_buf_putc(out, '"');
}

/* fz_json_style plus the float flavour. */
typedef struct {
    int indent;
    bool sort_keys;
    bool ensure_ascii;
    bool rust_floats;
} emit_style;

static int newline(const emit_style *st, int depth, fz_buf *out)
{
    int rc = fz_buf_putc(out, '\n');
    for (int i = 0; rc == 0 && i < depth * st->indent; i++)
        rc = fz_buf_putc(out, ' ');
    return rc;
}

static int item_sep(const emit_style *st, int depth, fz_buf *out)
{
    if (st->indent > 0) {
        int rc = fz_buf_putc(out, ',');
        return rc ? rc : newline(st, depth, out);
    }
    return fz_buf_puts(out, st->indent == 0 ? ", " : ",");
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int emit_value(const json_t *v, const emit_style *st, int depth, fz_buf *out);

static int emit_object(const json_t *v, const emit_style *st, int depth, fz_buf *out)
{
    size_t n = json_object_size(v);
    if (n == 0)
        return fz_buf_puts(out, "{}");
    const char **keys = malloc(n * sizeof *keys);
    if (!keys)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    size_t k = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) keys[k++] = key;
    if (st->sort_keys)
        qsort(keys, n, sizeof *keys, cmp_keys);
    int rc = fz_buf_putc(out, '{');
    if (rc == 0 && st->indent > 0)
        rc = newline(st, depth + 1, out);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i > 0)
            rc = item_sep(st, depth + 1, out);
        if (rc == 0)
            rc = emit_string(keys[i], strlen(keys[i]), st->ensure_ascii, out);
        if (rc == 0)
            rc = fz_buf_puts(out, st->indent < 0 ? ":" : ": ");
        if (rc == 0)
            rc = emit_value(json_object_get(v, keys[i]), st, depth + 1, out);
    }
    if (rc == 0 && st->indent > 0)
        rc = newline(st, depth, out);
    if (rc == 0)
        rc = fz_buf_putc(out, '}');
    free(keys);
    return rc;
}

static int emit_array(const json_t *v, const emit_style *st, int depth, fz_buf *out)
{
    size_t n = json_array_size(v);
    if (n == 0)
        return fz_buf_puts(out, "[]");
    int rc = fz_buf_putc(out, '[');
    if (rc == 0 && st->indent > 0)
        rc = newline(st, depth + 1, out);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i > 0)
            rc = item_sep(st, depth + 1, out);
        if (rc == 0)
            rc = emit_value(json_array_get(v, i), st, depth + 1, out);
    }
    if (rc == 0 && st->indent > 0)
        rc = newline(st, depth, out);
    return rc ? rc : fz_buf_putc(out, ']');
}

static int emit_value(const json_t *v, const emit_style *st, int depth, fz_buf *out)
{
    char num[40];
    if (!v)
        return fz_error_set(FZ_EINVAL, "JSON emitter: NULL value");
    switch (json_typeof(v)) {
    case JSON_OBJECT: return emit_object(v, st, depth, out);
    case JSON_ARRAY: return emit_array(v, st, depth, out);
    case JSON_STRING:
        if (json_string_length(v) > FZ_BIGINT_TAG_LEN &&
            memcmp(json_string_value(v), FZ_BIGINT_TAG, FZ_BIGINT_TAG_LEN) == 0)
            return fz_buf_puts(out, json_string_value(v) + FZ_BIGINT_TAG_LEN);
        return emit_string(json_string_value(v), json_string_length(v), st->ensure_ascii, out);
    case JSON_INTEGER: return fz_buf_printf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL:
        if (st->rust_floats)
            fz_json_format_real_rust(json_real_value(v), num);
        else
            fz_json_format_real(json_real_value(v), num);
        return fz_buf_puts(out, num);
    case JSON_TRUE: return fz_buf_puts(out, "true");
    case JSON_FALSE: return fz_buf_puts(out, "false");
    case JSON_NULL: return fz_buf_puts(out, "null");
    }
    return fz_error_set(FZ_EINVAL, "JSON emitter: unknown value type");
}

int fz_json_emit(const json_t *v, const fz_json_style *style, fz_buf *out)
{
    size_t mark = out->len;
    emit_style st = {style->indent, style->sort_keys, style->ensure_ascii, false};
    int rc = emit_value(v, &st, 0, out);
    if (rc == 0 && style->trailing_newline)
        rc = fz_buf_putc(out, '\n');
    if (rc)
        out->len = mark;
    return rc;
}

int fz_json_emit_tokenizers(const json_t *v, fz_buf *out)
{
    size_t mark = out->len;
    emit_style st = {2, false, false, true};
    int rc = emit_value(v, &st, 0, out);
    if (rc)
        out->len = mark;
    return rc;
}

/* Integers beyond 64 bits (transformers writes model_max_length =
 * int(1e30) when a tokenizer has none) do not fit jansson's json_int_t.
 * Rather than fail, or turn every integer into a real, such a literal is
 * parsed as a tagged string (FZ_BIGINT_TAG + its digits) that the emitter
 * writes back as the same bare digits: the value round-trips exactly and
 * nothing in fzfs reads it as a number. Returns a new text (caller frees),
 * or NULL when no literal needed rewriting. */
static char *tag_big_integers(const char *text, size_t len, size_t *out_len)
{
    fz_buf b = FZ_BUF_INIT;
    size_t i = 0, copied = 0;
    bool in_str = false, changed = false;
    while (i < len) {
        char c = text[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            i++;
            continue;
        }
        if (c == '"') {
            in_str = true;
            i++;
            continue;
        }
        if (c != '-' && (c < '0' || c > '9')) {
            i++;
            continue;
        }
        size_t start = i, digits = 0;
        bool integral = true;
        if (text[i] == '-')
            i++;
        while (i < len && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.' || text[i] == 'e' ||
                           text[i] == 'E' || text[i] == '+' || text[i] == '-')) {
            if (text[i] >= '0' && text[i] <= '9')
                digits++;
            else
                integral = false;
            i++;
        }
        if (!integral || digits < 19)
            continue;
        char num[64];
        size_t n = i - start;
        if (n >= sizeof num)
            n = sizeof num - 1;
        memcpy(num, text + start, n);
        num[n] = '\0';
        errno = 0;
        (void)strtoll(num, NULL, 10);
        if (errno != ERANGE && i - start < sizeof num)
            continue;
        if (fz_buf_append(&b, text + copied, start - copied) || fz_buf_puts(&b, "\"") ||
            fz_buf_puts(&b, FZ_BIGINT_TAG_JSON) || fz_buf_append(&b, text + start, i - start) ||
            fz_buf_puts(&b, "\"")) {
            fz_buf_free(&b);
            return NULL;
        }
        copied = i;
        changed = true;
    }
    if (!changed || fz_buf_append(&b, text + copied, len - copied)) {
        fz_buf_free(&b);
        return NULL;
    }
    return (char *)fz_buf_steal(&b, out_len);
}

json_t *fz_json_parse(const char *text, size_t len, const char *path)
{
    json_error_t err;
    size_t tlen = 0;
    char *tagged = tag_big_integers(text, len, &tlen);
    json_t *v = tagged ? json_loadb(tagged, tlen, JSON_REJECT_DUPLICATES, &err)
                       : json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    free(tagged);
    if (!v)
        fz_error_set(FZ_EFORMAT, "%s: invalid JSON at line %d column %d: %s", path ? path : "<json>",
                     err.line, err.column, err.text);
    return v;
}
