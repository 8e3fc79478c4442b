/* A strict JSON reader into a flat token array (see jsontok.h). */
#include "formats/jsontok.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats/jsonout.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/vec.h"

typedef struct {
    fz_jdoc *d;
    const unsigned char *s;
    size_t len, p;
    unsigned flags;
    size_t err;
    const char *why;
    uint32_t *keys; /* scratch: the key tokens of the object being closed */
    size_t keycap;
} parser;

static int fail(parser *P, size_t at, const char *why)
{
    P->err = at;
    P->why = why;
    return FZ_EFORMAT;
}

static void skip_ws(parser *P)
{
    while (P->p < P->len) {
        unsigned char c = P->s[P->p];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t')
            break;
        P->p++;
    }
}

/* A new token of `type` starting at byte `off`; *i its index. */
static int push_tok(parser *P, fz_jtype type, size_t off, uint32_t *i)
{
    fz_jdoc *d = P->d;
    if (d->n == d->cap && FZ_VEC_RESERVE(d->t, d->cap, d->n + 1))
        return FZ_ENOMEM;
    *i = (uint32_t)d->n;
    d->t[d->n++] = (fz_jtok){.type = (uint8_t)type, .off = (uint32_t)off, .next = *i + 1};
    return 0;
}

static int hex4(const unsigned char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static int put_utf8(fz_buf *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return fz_buf_append(b, u, n);
}

/* The escape at s[*q] (a backslash) into d->dec; *q moves past it. */
static int unescape(parser *P, size_t *q)
{
    const unsigned char *s = P->s;
    fz_buf *dec = &P->d->dec;
    size_t at = *q;
    if (at + 1 >= P->len)
        return fail(P, at, "premature end of input in a string");
    unsigned char e = s[at + 1];
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k = e ? strchr(from, e) : NULL;
    if (k) {
        *q = at + 2;
        return fz_buf_putc(dec, to[k - from]);
    }
    uint32_t cp, lo;
    if (e != 'u' || at + 6 > P->len || hex4(s + at + 2, &cp))
        return fail(P, at, "invalid escape");
    *q = at + 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (*q + 6 > P->len || s[*q] != '\\' || s[*q + 1] != 'u' || hex4(s + *q + 2, &lo) ||
            lo < 0xDC00 || lo > 0xDFFF)
            return fail(P, at, "invalid Unicode escape (a high surrogate without its low half)");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        *q += 6;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return fail(P, at, "invalid Unicode escape (a low surrogate alone)");
    } else if (cp == 0) {
        return fail(P, at, "\\u0000 is not allowed in a string");
    }
    return put_utf8(dec, cp);
}

/* How many of the 8 bytes at s need no attention in a string (not '"',
 * '\\', a control character or non-ASCII): 8 when none does. Eight at a
 * time, SWAR: in each test the lowest flagged byte is exact (a borrow only
 * runs upwards), so the lowest flag of all is the first such byte. */
static unsigned plain_run8(const unsigned char *s)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101u;
    uint64_t x, quote, bslash;
    memcpy(&x, s, 8);
    quote = x ^ (ones * '"');
    bslash = x ^ (ones * '\\');
    uint64_t m =
        ((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) | ((x - ones * 0x20) & ~x) | x;
    m &= ones * 0x80;
    return m ? (unsigned)__builtin_ctzll(m) >> 3 : 8;
#else
    unsigned k = 0;
    while (k < 8 && s[k] >= 0x20 && s[k] < 0x80 && s[k] != '"' && s[k] != '\\')
        k++;
    return k;
#endif
}

/* The string at s[P->p] (a quote) as token *i. Without escapes its bytes
 * stay in the text; with them they are decoded into d->dec. */
static int parse_string(parser *P, uint32_t *i)
{
    const unsigned char *s = P->s;
    size_t start = P->p + 1, q = start;
    int rc;
    for (;;) {
        if (P->len - q >= 8) {
            unsigned run = plain_run8(s + q);
            q += run;
            if (run == 8)
                continue;
        }
        if (q >= P->len)
            return fail(P, q, "premature end of input in a string");
        unsigned char c = s[q];
        if (c == '"' || c == '\\')
            break;
        if (c < 0x20)
            return fail(P, q, "control character in a string");
        if (c < 0x80) {
            q++;
            continue;
        }
        size_t k = fz_utf8_seq_len(s + q, P->len - q);
        if (!k)
            return fail(P, q, "invalid UTF-8 in a string");
        q += k;
    }
    if ((rc = push_tok(P, FZ_JT_STRING, start, i)))
        return rc;
    if (s[q] == '"') {
        P->d->t[*i].len = (uint32_t)(q - start);
        P->p = q + 1;
        return 0;
    }
    fz_buf *dec = &P->d->dec;
    size_t doff = dec->len;
    if ((rc = fz_buf_append(dec, s + start, q - start)))
        return rc;
    for (;;) {
        if (q >= P->len)
            return fail(P, q, "premature end of input in a string");
        unsigned char c = s[q];
        if (c == '"')
            break;
        if (c == '\\') {
            if ((rc = unescape(P, &q)))
                return rc;
            continue;
        }
        if (c < 0x20)
            return fail(P, q, "control character in a string");
        size_t k = c < 0x80 ? 1 : fz_utf8_seq_len(s + q, P->len - q);
        if (!k)
            return fail(P, q, "invalid UTF-8 in a string");
        if ((rc = fz_buf_append(dec, s + q, k)))
            return rc;
        q += k;
    }
    /* decoding never lengthens a string, so dec stays shorter than the text */
    if ((rc = fz_buf_putc(dec, '\0')))
        return rc;
    fz_jtok *t = &P->d->t[*i];
    t->decoded = true;
    t->off = (uint32_t)doff;
    t->len = (uint32_t)(dec->len - 1 - doff);
    P->p = q + 1;
    return 0;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The number at s[P->p] (a '-' or digit): INT, BIGINT or REAL. */
static int parse_number(parser *P)
{
    const unsigned char *s = P->s;
    size_t start = P->p, q = start, len = P->len;
    bool neg = s[q] == '-', real = false;
    if (neg)
        q++;
    if (q < len && s[q] == '0') {
        q++;
        if (q < len && is_digit(s[q]))
            return fail(P, q, "invalid number (a leading zero)");
    } else if (q < len && is_digit(s[q])) {
        while (q < len && is_digit(s[q]))
            q++;
    } else {
        return fail(P, start, "invalid number");
    }
    if (q < len && s[q] == '.') {
        q++;
        if (q >= len || !is_digit(s[q]))
            return fail(P, q, "invalid number (no digit after '.')");
        while (q < len && is_digit(s[q]))
            q++;
        real = true;
    }
    if (q < len && (s[q] == 'e' || s[q] == 'E')) {
        q++;
        if (q < len && (s[q] == '+' || s[q] == '-'))
            q++;
        if (q >= len || !is_digit(s[q]))
            return fail(P, q, "invalid number (no digit in the exponent)");
        while (q < len && is_digit(s[q]))
            q++;
        real = true;
    }
    uint32_t i;
    int rc;
    if (real) {
        char small[64], *lit = q - start < sizeof small ? small : malloc(q - start + 1);
        if (!lit)
            return FZ_ENOMEM;
        memcpy(lit, s + start, q - start);
        lit[q - start] = '\0';
        errno = 0;
        double r = strtod(lit, NULL);
        bool over = errno == ERANGE && isinf(r);
        if (lit != small)
            free(lit);
        if (over)
            return fail(P, start, "real number overflow");
        if ((rc = push_tok(P, FZ_JT_REAL, start, &i)))
            return rc;
    } else {
        /* |value| <= 2^63 - 1, or 2^63 when negative */
        uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, acc = 0;
        bool big = false;
        for (size_t k = start + neg; k < q && !big; k++) {
            uint64_t dgt = (uint64_t)(s[k] - '0');
            if (acc > (limit - dgt) / 10)
                big = true;
            else
                acc = acc * 10 + dgt;
        }
        if (big && !(P->flags & FZ_JTOK_BIGINT))
            return fail(P, start, neg ? "too big negative integer" : "too big integer");
        if ((rc = push_tok(P, big ? FZ_JT_BIGINT : FZ_JT_INT, start, &i)))
            return rc;
    }
    P->d->t[i].len = (uint32_t)(q - start);
    P->p = q;
    return 0;
}

/* A scalar value at s[P->p]. */
static int parse_scalar(parser *P)
{
    static const struct {
        const char *word;
        fz_jtype type;
    } words[] = {{"true", FZ_JT_TRUE}, {"false", FZ_JT_FALSE}, {"null", FZ_JT_NULL}};
    unsigned char c = P->s[P->p];
    uint32_t i;
    if (c == '"')
        return parse_string(P, &i);
    if (c == '-' || is_digit(c))
        return parse_number(P);
    for (size_t w = 0; w < 3; w++) {
        size_t n = strlen(words[w].word);
        if (P->len - P->p >= n && !memcmp(P->s + P->p, words[w].word, n)) {
            int rc = push_tok(P, words[w].type, P->p, &i);
            if (rc)
                return rc;
            P->d->t[i].len = (uint32_t)n;
            P->p += n;
            return 0;
        }
    }
    return fail(P, P->p, "invalid token");
}

/* An object member's key and the ':' after it. */
static int parse_key(parser *P)
{
    uint32_t i;
    skip_ws(P);
    if (P->p >= P->len || P->s[P->p] != '"')
        return fail(P, P->p, "string (an object key) expected");
    int rc = parse_string(P, &i);
    if (rc)
        return rc;
    skip_ws(P);
    if (P->p >= P->len || P->s[P->p] != ':')
        return fail(P, P->p, "':' expected");
    P->p++;
    return 0;
}

typedef struct {
    const fz_jdoc *d;
    const uint32_t *keys;
    uint32_t k; /* the key looked for */
} key_ctx;

static bool same_key(const fz_jdoc *d, uint32_t a, uint32_t b)
{
    return d->t[a].len == d->t[b].len && !memcmp(fz_jtok_str(d, a), fz_jtok_str(d, b), d->t[a].len);
}

static bool key_eq(const void *ctx, uint32_t m)
{
    const key_ctx *c = ctx;
    return same_key(c->d, c->keys[m], c->k);
}

/* No key twice in object o, which has just been closed. */
static int check_keys(parser *P, uint32_t o)
{
    const fz_jdoc *d = P->d;
    uint32_t n = d->t[o].n;
    if (n < 2)
        return 0;
    if (FZ_VEC_RESERVE(P->keys, P->keycap, n))
        return FZ_ENOMEM;
    for (uint32_t m = 0, k = o + 1; m < n; m++, k = d->t[k + 1].next)
        P->keys[m] = k;
    if (n <= 8) {
        for (uint32_t a = 1; a < n; a++)
            for (uint32_t b = 0; b < a; b++)
                if (same_key(d, P->keys[a], P->keys[b]))
                    return fail(P, d->t[P->keys[a]].off, "duplicate object key");
        return 0;
    }
    fz_hindex h;
    if (fz_hindex_init(&h, n))
        return FZ_ENOMEM;
    int rc = 0;
    for (uint32_t m = 0; m < n && rc == 0; m++) {
        uint32_t k = P->keys[m];
        uint64_t hash = fz_hindex_hash(fz_jtok_str(d, k), d->t[k].len);
        key_ctx c = {d, P->keys, k};
        if (fz_hindex_find(&h, hash, key_eq, &c) != UINT32_MAX)
            rc = fail(P, d->t[k].off, "duplicate object key");
        else
            rc = fz_hindex_put(&h, hash, m);
    }
    fz_hindex_free(&h);
    return rc;
}

static int parse(parser *P)
{
    fz_jdoc *d = P->d;
    uint32_t stack[FZ_JTOK_MAX_DEPTH];
    size_t depth = 0;
    int rc;
    if (P->len >= UINT32_MAX)
        return fail(P, 0, "a document of 4 GiB or more");
    for (;;) {
        /* a value; jansson counts every value (scalars too) in its depth */
        skip_ws(P);
        if (depth + 1 > FZ_JTOK_MAX_DEPTH)
            return fail(P, P->p, "maximum parsing depth reached");
        if (P->p >= P->len)
            return fail(P, P->p, "premature end of input (a value expected)");
        unsigned char c = P->s[P->p];
        if (c == '{' || c == '[') {
            uint32_t i;
            if ((rc = push_tok(P, c == '{' ? FZ_JT_OBJECT : FZ_JT_ARRAY, P->p, &i)))
                return rc;
            P->p++;
            skip_ws(P);
            if (P->p < P->len && P->s[P->p] == (c == '{' ? '}' : ']')) {
                P->p++;
                d->t[i].next = (uint32_t)d->n; /* empty: a complete value */
            } else {
                stack[depth++] = i;
                if (c == '{' && (rc = parse_key(P)))
                    return rc;
                continue;
            }
        } else if ((rc = parse_scalar(P))) {
            return rc;
        }
        /* a value is complete: go on in the containers it completes */
        for (;;) {
            if (depth == 0) {
                skip_ws(P);
                return P->p == P->len ? 0 : fail(P, P->p, "end of file expected");
            }
            uint32_t o = stack[depth - 1];
            bool obj = d->t[o].type == FZ_JT_OBJECT;
            d->t[o].n++;
            skip_ws(P);
            if (P->p < P->len && P->s[P->p] == ',') {
                P->p++;
                if (obj && (rc = parse_key(P)))
                    return rc;
                break;
            }
            if (P->p >= P->len || P->s[P->p] != (obj ? '}' : ']'))
                return fail(P, P->p, obj ? "',' or '}' expected" : "',' or ']' expected");
            P->p++;
            if (obj && (rc = check_keys(P, o)))
                return rc;
            d->t[o].next = (uint32_t)d->n;
            depth--;
        }
    }
}

int fz_jtok_parse(fz_jdoc *d, const char *text, size_t len, unsigned flags, size_t *err_off,
                  const char **why)
{
    memset(d, 0, sizeof *d);
    d->text = text;
    parser P = {.d = d, .s = (const unsigned char *)text, .len = len, .flags = flags};
    int rc = parse(&P);
    free(P.keys);
    if (rc == FZ_EFORMAT) {
        *err_off = P.err;
        *why = P.why;
    } else if (rc) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
    }
    return rc;
}

int fz_jtok_error(const char *text, size_t err_off, const char *why, const char *path)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < err_off; i++, col++)
        if (text[i] == '\n') {
            line++;
            col = 0;
        }
    return fz_error_set(FZ_EFORMAT, "%s: invalid JSON at line %zu column %zu: %s", path, line, col,
                        why);
}

void fz_jtok_free(fz_jdoc *d)
{
    free(d->t);
    fz_buf_free(&d->dec);
    memset(d, 0, sizeof *d);
}

const char *fz_jtok_str(const fz_jdoc *d, uint32_t i)
{
    const fz_jtok *t = &d->t[i];
    return t->decoded ? (const char *)d->dec.data + t->off : d->text + t->off;
}

bool fz_jtok_streq(const fz_jdoc *d, uint32_t i, const char *s)
{
    size_t n = strlen(s);
    return d->t[i].type == FZ_JT_STRING && d->t[i].len == n && !memcmp(fz_jtok_str(d, i), s, n);
}

char *fz_jtok_strdup(const fz_jdoc *d, uint32_t i)
{
    return strndup(fz_jtok_str(d, i), d->t[i].len);
}

int64_t fz_jtok_int(const fz_jdoc *d, uint32_t i)
{
    const char *s = d->text + d->t[i].off;
    size_t n = d->t[i].len, k = s[0] == '-';
    uint64_t acc = 0; /* the parse checked that the value fits */
    for (; k < n; k++)
        acc = acc * 10 + (uint64_t)(s[k] - '0');
    /* -(2^63) without overflow: negate in unsigned, then convert */
    return s[0] == '-' ? (int64_t)(0 - acc) : (int64_t)acc;
}

/* strtod of the literal of token i (NAN when memory runs out). */
double fz_jtok_real(const fz_jdoc *d, uint32_t i)
{
    size_t n = d->t[i].len;
    char small[64], *lit = n < sizeof small ? small : malloc(n + 1);
    if (!lit)
        return NAN;
    memcpy(lit, d->text + d->t[i].off, n);
    lit[n] = '\0';
    double r = strtod(lit, NULL);
    if (lit != small)
        free(lit);
    return r;
}

uint32_t fz_jtok_get(const fz_jdoc *d, uint32_t o, const char *key)
{
    if (d->t[o].type != FZ_JT_OBJECT)
        return UINT32_MAX;
    for (uint32_t m = 0, k = o + 1; m < d->t[o].n; m++, k = d->t[k + 1].next)
        if (fz_jtok_streq(d, k, key))
            return k + 1;
    return UINT32_MAX;
}

json_t *fz_jtok_to_json(const fz_jdoc *d, uint32_t i)
{
    const fz_jtok *t = &d->t[i];
    json_t *j = NULL;
    switch ((fz_jtype)t->type) {
    case FZ_JT_NULL:
        return json_null();
    case FZ_JT_FALSE:
        return json_false();
    case FZ_JT_TRUE:
        return json_true();
    case FZ_JT_INT:
        return json_integer(fz_jtok_int(d, i));
    case FZ_JT_REAL:
        return json_real(fz_jtok_real(d, i));
    case FZ_JT_BIGINT: {
        char *digits = strndup(d->text + t->off, t->len);
        j = digits ? fz_json_bigint(digits) : NULL;
        free(digits);
        return j;
    }
    case FZ_JT_STRING:
        return json_stringn_nocheck(fz_jtok_str(d, i), t->len);
    case FZ_JT_ARRAY:
        if (!(j = json_array()))
            return NULL;
        for (uint32_t m = 0, k = i + 1; m < t->n; m++, k = d->t[k].next)
            if (json_array_append_new(j, fz_jtok_to_json(d, k))) {
                json_decref(j);
                return NULL;
            }
        return j;
    case FZ_JT_OBJECT:
        if (!(j = json_object()))
            return NULL;
        for (uint32_t m = 0, k = i + 1; m < t->n; m++, k = d->t[k + 1].next)
            if (json_object_setn_new_nocheck(j, fz_jtok_str(d, k), d->t[k].len,
                                             fz_jtok_to_json(d, k + 1))) {
                json_decref(j);
                return NULL;
            }
        return j;
    }
    return NULL;
}
