/* A strict JSON reader into one flat array of tokens, for the documents
 * fzfs reads per tensor: safetensors headers and weight index files. A
 * jansson tree costs a node, a hash table and a copy of every key and
 * string, and at 100k tensors parsing into it was most of `fzfs plan`;
 * here a document is one pass over the text into one array that grows by
 * doubling, and strings without escapes stay in the text.
 *
 * It accepts exactly the documents jansson's json_loadb accepts with
 * JSON_REJECT_DUPLICATES | JSON_DECODE_ANY (tests/fuzz/fuzz_json.c compares
 * the two): RFC 8259 JSON in UTF-8; no NUL in a string; no key twice in an
 * object; at most FZ_JTOK_MAX_DEPTH values nested; integers that fit
 * int64_t (any integer with FZ_JTOK_BIGINT, as fz_json_parse) and reals that
 * do not overflow a double. One difference, on purpose: jansson skips a NUL
 * byte right after a number or true/false/null (its lexer puts the byte
 * back as "nothing"); here that NUL is an error, as any NUL outside a string.
 *
 * Layout: token 0 is the document's value. A value's tokens are followed by
 * those of its contents, depth first: an array's elements, an object's
 * members as key (a STRING) then value. t[i].next is the token after value
 * i and everything in it, so the members of object o are
 *
 *     for (uint32_t m = 0, k = o + 1; m < d.t[o].n; m++, k = d.t[k + 1].next)
 *         key k, value k + 1
 *
 * Not thread-safe while parsing; a parsed document is read-only. */
#ifndef FZ_FORMATS_JSONTOK_H
#define FZ_FORMATS_JSONTOK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define FZ_JTOK_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

typedef enum {
    FZ_JT_NULL,
    FZ_JT_FALSE,
    FZ_JT_TRUE,
    FZ_JT_INT,    /* fz_jtok_int */
    FZ_JT_BIGINT, /* an integer beyond int64_t (FZ_JTOK_BIGINT): its digits at off, len */
    FZ_JT_REAL,   /* fz_jtok_real */
    FZ_JT_STRING, /* fz_jtok_str: len bytes of UTF-8 without NUL */
    FZ_JT_ARRAY,  /* n elements */
    FZ_JT_OBJECT, /* n members */
} fz_jtype;

/* 20 bytes: a number's value is read from its literal when asked for. */
typedef struct {
    uint8_t type;  /* fz_jtype */
    bool decoded;  /* STRING: it had escapes; its bytes are in the document's dec */
    uint32_t off;  /* where the value starts in the text (STRING: its bytes) */
    uint32_t len;  /* STRING: bytes; numbers: the literal's length */
    uint32_t n;    /* ARRAY: elements; OBJECT: members */
    uint32_t next; /* the token after this value and its contents */
} fz_jtok;

typedef struct {
    const char *text; /* borrowed: the text parsed */
    fz_jtok *t;
    size_t n, cap;
    fz_buf dec; /* decoded strings (those with escapes), each NUL-terminated */
} fz_jdoc;

/* Flags for fz_jtok_parse. */
#define FZ_JTOK_BIGINT 1u /* integers beyond int64_t are FZ_JT_BIGINT, not an error */

/* Parse text[0..len) into *d (which the caller frees with fz_jtok_free,
 * also on failure). The text must outlive *d. 0, FZ_ENOMEM, or FZ_EFORMAT
 * with *err_off the byte offset of the problem and *why (a static string)
 * what it is; no error message is set for FZ_EFORMAT: the caller names the
 * file (fz_jtok_error). */
int fz_jtok_parse(fz_jdoc *d, const char *text, size_t len, unsigned flags, size_t *err_off,
                  const char **why);
/* FZ_EFORMAT set as "PATH: invalid JSON at line L column C: WHY" (column in
 * bytes, both from 1), the message fz_json_parse gives. */
int fz_jtok_error(const char *text, size_t err_off, const char *why, const char *path);
void fz_jtok_free(fz_jdoc *d);

/* The bytes of STRING token i (not NUL-terminated when !decoded). */
const char *fz_jtok_str(const fz_jdoc *d, uint32_t i);
/* Whether STRING token i is the string s. */
bool fz_jtok_streq(const fz_jdoc *d, uint32_t i, const char *s);
/* A malloc'd NUL-terminated copy of STRING token i, or NULL (out of memory). */
char *fz_jtok_strdup(const fz_jdoc *d, uint32_t i);
/* The value of INT token i / of REAL token i. */
int64_t fz_jtok_int(const fz_jdoc *d, uint32_t i);
double fz_jtok_real(const fz_jdoc *d, uint32_t i);
/* The value of member `key` of OBJECT token o (a linear search: for
 * objects of a few members), or UINT32_MAX. */
uint32_t fz_jtok_get(const fz_jdoc *d, uint32_t o, const char *key);
/* Token i and its contents as a jansson tree (a BIGINT as fz_json_bigint),
 * or NULL when memory runs out. */
json_t *fz_jtok_to_json(const fz_jdoc *d, uint32_t i);

#endif
