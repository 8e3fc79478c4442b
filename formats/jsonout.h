/* JSON output in Python json.dump style over a jansson tree.
 *
 * jansson keeps integer vs real, 64-bit integers and key order; this
 * emitter adds Python's layout: `indent` spaces per level (0 = compact
 * "{"a": 1, "b": 2}" with ", " and ": "; -1 = most compact "," ":"),
 * sort_keys, ensure_ascii (\uXXXX escapes, surrogate pairs), empty
 * containers as [] / {}, and reals as Python repr prints them (shortest
 * round-trip: 1e-05, 0.3, 8.0, 1e+16, NaN, Infinity). Thread-safe. */
#ifndef FZ_FORMATS_JSONOUT_H
#define FZ_FORMATS_JSONOUT_H

#include <jansson.h>
#include <stdbool.h>

#include "util/buf.h"

typedef struct {
    int indent; /* spaces per level; 0 = one line with ", "; -1 = "," ":" */
    bool sort_keys;
    bool ensure_ascii;
    bool trailing_newline;
} fz_json_style;

/* HF save_pretrained style (config.json, tokenizer_config.json...): indent 2,
 * sorted keys, trailing newline; ensure_ascii as given. */
#define FZ_JSON_HF(ascii) ((fz_json_style){2, true, (ascii), true})
/* Python json.dump(indent=n) with insertion order, no trailing newline. */
#define FZ_JSON_PY(n) ((fz_json_style){(n), false, true, false})

/* Append the serialisation of v to *out. 0, FZ_ENOMEM or FZ_EINVAL. */
int fz_json_emit(const json_t *v, const fz_json_style *style, fz_buf *out);

/* fz_json_emit for a value that sits `depth` levels deep in a document the
 * caller writes around it: its inner lines are indented for that depth. */
int fz_json_emit_nested(const json_t *v, const fz_json_style *style, int depth, fz_buf *out);

/* Append s[0..len) (well-formed UTF-8) as a JSON string: '"' and '\\'
 * escaped, control characters as \b \f \n \r \t or \u00xx (lowercase hex,
 * as Python's json and serde_json write them), non-ASCII as \uXXXX (UTF-16)
 * when ascii, else as is. 0 or FZ_ENOMEM. */
int fz_json_emit_string(const char *s, size_t len, bool ascii, fz_buf *out);

/* Append v as the tokenizers library's Tokenizer.save(pretty=True) writes
 * tokenizer.json (serde_json): indent 2, insertion order, raw UTF-8, no
 * trailing newline, reals as fz_json_format_real_rust (non-finite: null).
 * 0 or FZ_ENOMEM. */
int fz_json_emit_tokenizers(const json_t *v, fz_buf *out);

/* Format a double as Python's repr(float) does. buf holds >= 32 bytes. */
void fz_json_format_real(double d, char *buf);
/* Format a double as serde_json (ryu) does: fixed notation for decimal
 * exponents -5..15, else "1e-7" / "1.5e+16"; non-finite as null. buf holds
 * >= 32 bytes. */
void fz_json_format_real_rust(double d, char *buf);

/* Integer literals beyond 64 bits (transformers writes model_max_length =
 * int(1e30)) do not fit json_int_t. fz_json_parse carries each one as a
 * "big integer" node that only fzfs can make (see jsonout.c for why it
 * cannot be forged from any input) and the emitters write its digits back
 * bare; every string is always written as an escaped string. */
/* A new big integer node for digits (an integer literal: -?(0|[1-9][0-9]*)),
 * or NULL if digits is not one or memory runs out. */
json_t *fz_json_bigint(const char *digits);
/* The digits of a big integer node, or NULL if v is not one. */
const char *fz_json_bigint_digits(const json_t *v);

/* Parse a JSON document (object or array) from memory with integer/real
 * distinction and key order kept, rejecting duplicate keys; integers
 * beyond 64 bits become big integer nodes. NULL on error
 * with the detail set ("PATH: invalid JSON at line L column C: reason"; the
 * code is FZ_EFORMAT). Caller json_decref()s. */
json_t *fz_json_parse(const char *text, size_t len, const char *path);

#endif
