/* Private to verify/: the state one run of the checks shares. */
#ifndef FZ_VERIFY_INTERNAL_H
#define FZ_VERIFY_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "formats/tensor.h"
#include "verify/verify.h"

typedef struct {
    const fz_vfs *fs;
    const fz_verify_opts *o;
    fz_vreport *r;
    int err;     /* first internal error (FZ_ENOMEM): the run is incomplete */
    char **root; /* names at the root, sorted */
    size_t nroot;
    json_t *config; /* config.json, or NULL */
    int64_t vocab;  /* config vocab_size, -1 when unknown */
    int64_t hidden; /* config hidden size, -1 when unknown */
    int64_t rows;   /* embedding rows of the first model weights found, -1 if none */
    /* tokenizer.json (fz_vload_tokenizer): the document, its model.vocab when an
     * object, content -> id for added tokens (and a Unigram list), its length
     * (highest id + 1; -1 without tokenizer.json) */
    json_t *tokenizer, *tok_other;
    const json_t *tok_vocab;
    int64_t tok_len;
} fz_vctx;

/* Append a problem about `file` ("" = the directory). */
void fz_vfail(fz_vctx *c, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Append the current error detail as a problem about `file` (the detail's
 * leading "file: " is dropped). */
void fz_vfail_error(fz_vctx *c, const char *file);

typedef enum { FZ_VR_OK, FZ_VR_MISSING, FZ_VR_ESCAPES, FZ_VR_LOOP } fz_vres;
/* Follow the symlinks of `path` inside the root: on FZ_VR_OK *phys (caller
 * frees) is the physical path, *kind and *size what is there. */
fz_vres fz_vresolve(fz_vctx *c, const char *path, char **phys, fz_vkind *kind, uint64_t *size);
/* Parse JSON file `name` (symlinks followed): NULL when absent or not a
 * regular file, or when invalid (then a problem is reported). */
json_t *fz_vload_json(fz_vctx *c, const char *name);

/* The checks (weights.c, tokens.c). */
void fz_vcheck_weights(fz_vctx *c);
void fz_vcheck_tokens(fz_vctx *c);
/* Read tokenizer.json into the context (before the weights: an embedding
 * whose name says nothing may be found by the tokenizer's length). */
void fz_vload_tokenizer(fz_vctx *c);

/* One tensor of a set of model weights, and the file that holds it. */
typedef struct {
    const fz_tensor *t;
    const char *file;
} fz_vtensor;
/* model.c: vocabulary rows, tying and quantization over one set of model
 * weights (param_sharing: the index's groups of names of one tensor, or NULL). */
void fz_vcheck_model(fz_vctx *c, const fz_vtensor *t, size_t n, const json_t *param_sharing);

/* Lines reported per kind of repeated problem before "... and N more". */
#define FZ_VERIFY_LIST_MAX 5

/* An integer JSON value that is a valid id / size (>= 0). */
bool fz_vjson_uint(const json_t *v, int64_t *out);
bool fz_vends_with(const char *s, const char *suffix);

#endif
