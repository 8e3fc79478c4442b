/* Python json.dump-style emitter over jansson, and the shortest round-trip
 * float formatting both Python and serde_json use. */
#include "formats/jsonout.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/vec.h"

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

/* JSON's two-character escape of c, NULL when it has none. */
static const char *short_escape(unsigned char c)
{
    switch (c) {
    case '"':
        return "\\\"";
    case '\\':
        return "\\\\";
    case '\n':
        return "\\n";
    case '\r':
        return "\\r";
    case '\t':
        return "\\t";
    case '\b':
        return "\\b";
    case '\f':
        return "\\f";
    default:
        return NULL;
    }
}

int fz_json_emit_string(const char *str, size_t len, bool ascii, fz_buf *out)
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
        const char *esc = short_escape(c);
        if (esc) {
            rc = fz_buf_puts(out, esc);
            i++;
            continue;
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
    size_t pad = (size_t)depth * (size_t)st->indent;
    int rc = fz_buf_reserve(out, pad + 2);
    if (rc == 0) {
        out->data[out->len++] = '\n';
        memset(out->data + out->len, ' ', pad);
        out->len += pad;
        out->data[out->len] = 0;
    }
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

/* An object member: its key and value, taken in one pass over the object. */
typedef struct {
    const char *key;
    size_t len;
    const json_t *val;
} member;

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(((const member *)a)->key, ((const member *)b)->key);
}

static int emit_value(const json_t *v, const emit_style *st, int depth, fz_buf *out);

static int emit_object(const json_t *v, const emit_style *st, int depth, fz_buf *out)
{
    size_t n = json_object_size(v);
    if (n == 0)
        return fz_buf_puts(out, "{}");
    member *keys = malloc(n * sizeof *keys);
    if (!keys)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    size_t k = 0, len;
    const char *key;
    json_t *val;
    json_object_keylen_foreach((json_t *)v, key, len, val) keys[k++] = (member){key, len, val};
    if (st->sort_keys)
        qsort(keys, n, sizeof *keys, cmp_keys);
    int rc = fz_buf_putc(out, '{');
    if (rc == 0 && st->indent > 0)
        rc = newline(st, depth + 1, out);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i > 0)
            rc = item_sep(st, depth + 1, out);
        if (rc == 0)
            rc = fz_json_emit_string(keys[i].key, keys[i].len, st->ensure_ascii, out);
        if (rc == 0)
            rc = st->indent < 0 ? fz_buf_putc(out, ':') : fz_buf_append(out, ": ", 2);
        if (rc == 0)
            rc = emit_value(keys[i].val, st, depth + 1, out);
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
    case JSON_OBJECT: {
        const char *big = fz_json_bigint_digits(v);
        return big ? fz_buf_puts(out, big) : emit_object(v, st, depth, out);
    }
    case JSON_ARRAY:
        return emit_array(v, st, depth, out);
    case JSON_STRING:
        return fz_json_emit_string(json_string_value(v), json_string_length(v), st->ensure_ascii,
                                   out);
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        int rc = i < 0 ? fz_buf_putc(out, '-') : 0;
        /* the magnitude in unsigned arithmetic: INT64_MIN has no positive twin */
        return rc ? rc : fz_buf_put_dec(out, i < 0 ? 0 - (uint64_t)i : (uint64_t)i);
    }
    case JSON_REAL:
        if (st->rust_floats)
            fz_json_format_real_rust(json_real_value(v), num);
        else
            fz_json_format_real(json_real_value(v), num);
        return fz_buf_puts(out, num);
    case JSON_TRUE:
        return fz_buf_puts(out, "true");
    case JSON_FALSE:
        return fz_buf_puts(out, "false");
    case JSON_NULL:
        return fz_buf_puts(out, "null");
    }
    return fz_error_set(FZ_EINVAL, "JSON emitter: unknown value type");
}

int fz_json_emit(const json_t *v, const fz_json_style *style, fz_buf *out)
{
    return fz_json_emit_nested(v, style, 0, out);
}

int fz_json_emit_nested(const json_t *v, const fz_json_style *style, int depth, fz_buf *out)
{
    size_t mark = out->len;
    emit_style st = {style->indent, style->sort_keys, style->ensure_ascii, false};
    int rc = emit_value(v, &st, depth, out);
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

/* Integers beyond 64 bits.
 *
 * transformers writes model_max_length = int(1e30) when a tokenizer has none;
 * jansson's json_int_t is 64 bits and refuses it. Turning it (or every
 * integer) into a real would change the file, so such a literal is carried
 * as a big integer node: an object with exactly one member, key BIGINT_KEY,
 * value a string of the digits. The emitters write the digits bare.
 *
 * Why this node and not a tagged string (what fzfs did before): a tag inside
 * a string is in band. Any string of a source file that begins with the tag
 * was written raw, so a hostile tokenizer_config.json value could close the
 * number and add members (auto_map: code run with trust_remote_code). The key
 * here is not valid UTF-8 (0xFF never occurs in UTF-8): jansson rejects
 * invalid UTF-8 in every text it parses and in every checked constructor
 * (json_string, json_object_set...), so neither a source file nor a string
 * fzfs builds from one can produce it; only json_object_set_new_nocheck below
 * does. json_deep_copy copies keys verbatim, so copies stay big integers.
 * Why not a side table keyed by the json_t pointer: callers deep-copy and free
 * trees, so a pointer does not name a value for long, and every emitter call
 * would need the table. Last guard: a node is a big integer only while its
 * digits are an integer literal, so nothing else is ever written raw. */
#define BIGINT_KEY                                                                                 \
    "\xff"                                                                                         \
    "fz-bigint"

static bool integer_literal(const char *s, size_t n)
{
    size_t i = n > 0 && s[0] == '-' ? 1 : 0;
    if (i == n || (s[i] == '0' && n - i > 1))
        return false;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

json_t *fz_json_bigint(const char *digits)
{
    if (!digits || !integer_literal(digits, strlen(digits)))
        return NULL;
    json_t *o = json_object(), *d = json_string(digits);
    if (!o || !d || json_object_set_new_nocheck(o, BIGINT_KEY, d)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

const char *fz_json_bigint_digits(const json_t *v)
{
    if (!json_is_object(v) || json_object_size(v) != 1)
        return NULL;
    const json_t *d = json_object_get(v, BIGINT_KEY);
    if (!json_is_string(d) || !integer_literal(json_string_value(d), json_string_length(d)))
        return NULL;
    return json_string_value(d);
}

/* A literal that jansson would refuse only for its size: an integer literal
 * outside [INT64_MIN, INT64_MAX]. */
static bool beyond_int64(const char *s, size_t n)
{
    if (!integer_literal(s, n))
        return false;
    bool neg = s[0] == '-';
    size_t nd = n - neg;
    if (nd != 19)
        return nd > 19;
    return memcmp(s + neg, neg ? "9223372036854775808" : "9223372036854775807", 19) > 0;
}

/* One big literal: the ordinal of its value among all scalar values of the
 * document (keys excluded) in document order, and where its text is. */
typedef struct {
    size_t ordinal, start, len;
} big_lit;

typedef struct {
    big_lit *v;
    size_t n, cap;
} big_list;

static int big_push(big_list *l, size_t ordinal, size_t start, size_t len)
{
    int rc = FZ_VEC_RESERVE(l->v, l->cap, l->n + 1);
    if (rc)
        return rc;
    l->v[l->n++] = (big_lit){ordinal, start, len};
    return 0;
}

static bool json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Find the big integer literals of text, numbering scalar values as jansson
 * will place them (a string followed by ':' is a key, not a value). Texts
 * jansson rejects may be numbered wrongly: they never get past json_loadb. */
static int find_big_literals(const char *text, size_t len, big_list *out)
{
    size_t i = 0, ordinal = 0;
    while (i < len) {
        char c = text[i];
        if (c == '"') {
            for (i++; i < len && text[i] != '"'; i++)
                if (text[i] == '\\')
                    i++;
            i++;
            size_t k = i;
            while (k < len && json_ws(text[k]))
                k++;
            if (k >= len || text[k] != ':')
                ordinal++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t start = i;
            while (i < len &&
                   ((text[i] >= '0' && text[i] <= '9') || text[i] == '.' || text[i] == 'e' ||
                    text[i] == 'E' || text[i] == '+' || text[i] == '-'))
                i++;
            if (beyond_int64(text + start, i - start)) {
                int rc = big_push(out, ordinal, start, i - start);
                if (rc)
                    return rc;
            }
            ordinal++;
        } else if (c >= 'a' && c <= 'z') {
            while (i < len && text[i] >= 'a' && text[i] <= 'z')
                i++;
            ordinal++;
        } else {
            i++;
        }
    }
    return 0;
}

typedef struct {
    const char *text;
    const big_list *lits;
    size_t ordinal, next;
} placer;

/* Replace scalar number p->lits[p->next].ordinal (parsed from the placeholder
 * null) by a big integer node holding the literal's digits. */
static int place_scalar(placer *p, const json_t *cur, json_t **repl)
{
    *repl = NULL;
    if (p->next < p->lits->n && p->lits->v[p->next].ordinal == p->ordinal) {
        const big_lit *b = &p->lits->v[p->next++];
        if (!json_is_null(cur))
            return fz_error_set(FZ_EFORMAT,
                                "the integer beyond 64 bits at byte %zu was not found again (an "
                                "fzfs bug: please report it with this file)",
                                b->start);
        char *digits = strndup(p->text + b->start, b->len);
        *repl = digits ? fz_json_bigint(digits) : NULL;
        free(digits);
        if (!*repl)
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    p->ordinal++;
    return 0;
}

static int place_bigints(placer *p, json_t *v)
{
    int rc = 0;
    json_t *repl;
    if (json_is_array(v)) {
        for (size_t i = 0; rc == 0 && i < json_array_size(v); i++) {
            json_t *e = json_array_get(v, i);
            if (json_is_object(e) || json_is_array(e))
                rc = place_bigints(p, e);
            else if ((rc = place_scalar(p, e, &repl)) == 0 && repl &&
                     json_array_set_new(v, i, repl))
                rc = fz_error_set(FZ_ENOMEM, "out of memory");
        }
    } else if (json_is_object(v)) {
        for (void *it = json_object_iter(v); rc == 0 && it; it = json_object_iter_next(v, it)) {
            json_t *e = json_object_iter_value(it);
            if (json_is_object(e) || json_is_array(e))
                rc = place_bigints(p, e);
            else if ((rc = place_scalar(p, e, &repl)) == 0 && repl &&
                     json_object_iter_set_new(v, it, repl))
                rc = fz_error_set(FZ_ENOMEM, "out of memory");
        }
    }
    return rc;
}

json_t *fz_json_parse(const char *text, size_t len, const char *path)
{
    json_error_t err;
    big_list lits = {0};
    char *copy = NULL;
    json_t *v = NULL;
    const char *name = path ? path : "<json>";
    if (find_big_literals(text, len, &lits))
        goto done;
    if (lits.n) {
        /* each big literal becomes null padded to its length: line and
         * column numbers of errors stay those of the file */
        if (!(copy = malloc(len ? len : 1))) {
            fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        memcpy(copy, text, len);
        for (size_t i = 0; i < lits.n; i++) {
            memset(copy + lits.v[i].start, ' ', lits.v[i].len);
            memcpy(copy + lits.v[i].start, "null", 4);
        }
    }
    v = json_loadb(copy ? copy : text, len, JSON_REJECT_DUPLICATES, &err);
    if (!v) {
        fz_error_set(FZ_EFORMAT, "%s: invalid JSON at line %d column %d: %s", name, err.line,
                     err.column, err.text);
        goto done;
    }
    placer p = {text, &lits, 0, 0};
    int rc = lits.n ? place_bigints(&p, v) : 0;
    if (rc == 0 && p.next != lits.n)
        rc = fz_error_set(FZ_EFORMAT, "an integer beyond 64 bits was not found again (an fzfs bug: "
                                      "please report it with this file)");
    if (rc) {
        fz_error_prefix(rc, "%s", name);
        json_decref(v);
        v = NULL;
    }
done:
    free(lits.v);
    free(copy);
    return v;
}
