/* Helpers shared by the metadata unit tests (test_addtokens, test_tokenizer,
 * test_config, test_genconfig): load a tok_* fixture directory into an
 * fz_meta_in, and read JSON back from an output buffer. */
#ifndef FZ_TESTS_META_FIXTURE_H
#define FZ_TESTS_META_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/jsonout.h"
#include "transform/meta.h"

typedef struct {
    fz_meta_in in;
    char *bufs[32];
    int n;
} fixture;

static inline fz_blob fx_file(fixture *f, const char *dir, const char *name)
{
    char path[512];
    fz_blob b = {NULL, 0, NULL};
    snprintf(path, sizeof path, "%s/%s/%s", FZ_TEST_DATA, dir, name);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return b;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (fread(p, 1, (size_t)n, fp) != (size_t)n)
        n = 0;
    fclose(fp);
    p[n] = '\0';
    f->bufs[f->n++] = p;
    b.data = p;
    b.len = (size_t)n;
    b.path = name;
    return b;
}

static inline fz_blob fx_text(const char *text, const char *path)
{
    fz_blob b = {text, strlen(text), path};
    return b;
}

static inline void fx_load(fixture *f, const char *dir)
{
    memset(f, 0, sizeof *f);
    f->in.config = fx_file(f, dir, "config.json");
    f->in.tokenizer = fx_file(f, dir, "tokenizer.json");
    f->in.tokenizer_config = fx_file(f, dir, "tokenizer_config.json");
    f->in.generation_config = fx_file(f, dir, "generation_config.json");
    f->in.gen_mode = FZ_GEN_CARRY;
    f->in.tie_word_embeddings = 1;
}

static inline void fx_free(fixture *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->bufs[i]);
}

/* Parse an output buffer (caller json_decref()s). */
static inline json_t *fx_json(const fz_buf *b)
{
    return fz_json_parse((const char *)b->data, b->len, "output");
}

/* Buffer as a NUL-terminated string (static storage, one at a time). */
static inline const char *fx_str(const fz_buf *b)
{
    static char s[65536];
    size_t n = b->len < sizeof s - 1 ? b->len : sizeof s - 1;
    if (n)
        memcpy(s, b->data, n);
    s[n] = '\0';
    return s;
}

#endif
