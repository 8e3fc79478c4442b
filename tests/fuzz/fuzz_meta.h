/* What the add-tokens and tokenizer harnesses check about a successful
 * fz_meta_build: every file it writes is a JSON object the reader accepts;
 * the token plan is consistent (new ids are old_vocab, old_vocab + 1, ...;
 * rows and resize follow the vocabulary and in->embed_rows; row inits sorted,
 * unique, inside the rows, copying only old rows, mean only for new tokens);
 * and the tokenizer files it wrote, loaded again, give each new token
 * the id (= embedding row) the plan initialised. */
#ifndef FZ_TESTS_FUZZ_META_H
#define FZ_TESTS_FUZZ_META_H

#include "fuzz_common.h"

#include <jansson.h>
#include <stddef.h>

#include "formats/jsonout.h"
#include "transform/meta_int.h"

static inline void fz_fuzz_json_object(const fz_buf *b, const char *what)
{
    json_t *v = fz_json_parse((const char *)b->data, b->len, what);
    FZ_FUZZ_CHECK(v && json_is_object(v), "%s is not a JSON object: %s", what, fz_error_msg());
    json_decref(v);
}

static inline void fz_fuzz_check_meta(const fz_meta_in *in, const fz_meta_out *o)
{
    fz_fuzz_json_object(&o->config_json, "config.json");
    fz_fuzz_json_object(&o->tokenizer_json, "tokenizer.json");
    fz_fuzz_json_object(&o->tokenizer_config_json, "tokenizer_config.json");
    fz_fuzz_json_object(&o->special_tokens_map_json, "special_tokens_map.json");
    if (o->has_generation_config)
        fz_fuzz_json_object(&o->generation_config_json, "generation_config.json");

    FZ_FUZZ_CHECK(o->new_vocab == o->old_vocab + o->n_added, "vocab %llu + %llu != %llu",
                  (unsigned long long)o->old_vocab, (unsigned long long)o->n_added,
                  (unsigned long long)o->new_vocab);
    FZ_FUZZ_CHECK(o->n_added_tokens == o->n_added, "%zu new token names for %llu new rows",
                  o->n_added_tokens, (unsigned long long)o->n_added);
    for (size_t i = 0; i < o->n_added_tokens; i++)
        FZ_FUZZ_CHECK(o->added_ids[i] == o->old_vocab + i, "new token '%s' has id %llu, not %llu",
                      o->added_tokens[i], (unsigned long long)o->added_ids[i],
                      (unsigned long long)(o->old_vocab + i));
    uint64_t R = in->embed_rows;
    FZ_FUZZ_CHECK(o->rows == (R > o->new_vocab ? R : o->new_vocab), "%llu rows for %llu tokens",
                  (unsigned long long)o->rows, (unsigned long long)o->new_vocab);
    FZ_FUZZ_CHECK(o->resize == (o->n_added > 0 || (R && o->new_vocab > R)), "resize %d",
                  (int)o->resize);
    for (size_t i = 0; i < o->n_inits; i++) {
        const fz_row_init *r = &o->inits[i];
        FZ_FUZZ_CHECK(o->resize, "row inits without a resize");
        FZ_FUZZ_CHECK(r->row < o->rows, "init of row %llu past the %llu rows",
                      (unsigned long long)r->row, (unsigned long long)o->rows);
        FZ_FUZZ_CHECK(i == 0 || o->inits[i - 1].row < r->row, "row inits not sorted and unique");
        FZ_FUZZ_CHECK(r->new_token == (r->row >= o->old_vocab), "row %llu new_token %d",
                      (unsigned long long)r->row, (int)r->new_token);
        FZ_FUZZ_CHECK(r->kind == FZ_INIT_ZERO || r->kind == FZ_INIT_COPY ||
                          (r->kind == FZ_INIT_MEAN && r->new_token),
                      "init kind %d for row %llu", (int)r->kind, (unsigned long long)r->row);
        FZ_FUZZ_CHECK(r->kind != FZ_INIT_COPY || r->copy_from < o->old_vocab,
                      "row %llu copies row %llu, not an old row", (unsigned long long)r->row,
                      (unsigned long long)r->copy_from);
    }

    /* The files as transformers would load them again. */
    fz_tok t;
    fz_blob tj = {(const char *)o->tokenizer_json.data, o->tokenizer_json.len,
                  "out/tokenizer.json"};
    fz_blob tc = {(const char *)o->tokenizer_config_json.data, o->tokenizer_config_json.len,
                  "out/tokenizer_config.json"};
    fz_blob stm = {(const char *)o->special_tokens_map_json.data, o->special_tokens_map_json.len,
                   "out/special_tokens_map.json"};
    int rc = fz_tok_load(&t, &tj, &tc, &stm);
    FZ_FUZZ_CHECK(rc == 0, "the written tokenizer does not load: %s", fz_error_msg());
    FZ_FUZZ_CHECK(t.len == o->new_vocab, "the written tokenizer has %llu tokens, the plan %llu",
                  (unsigned long long)t.len, (unsigned long long)o->new_vocab);
    for (size_t i = 0; i < o->n_added_tokens; i++)
        FZ_FUZZ_CHECK(fz_tok_id(&t, o->added_tokens[i]) == (int64_t)o->added_ids[i],
                      "the written tokenizer gives '%s' id %lld, the plan %llu", o->added_tokens[i],
                      (long long)fz_tok_id(&t, o->added_tokens[i]),
                      (unsigned long long)o->added_ids[i]);
    fz_tok_free(&t);
}

/* A fixture directory under tests/unit/data as fz_meta_in: config.json,
 * tokenizer.json, tokenizer_config.json and generation_config.json if there
 * is one (buffers kept for the process: loaded once). */
static inline void fz_fuzz_load_fixture(fz_meta_in *in, const char *dir)
{
    static const struct {
        const char *name;
        size_t off;
    } files[] = {
        {"config.json", offsetof(fz_meta_in, config)},
        {"tokenizer.json", offsetof(fz_meta_in, tokenizer)},
        {"tokenizer_config.json", offsetof(fz_meta_in, tokenizer_config)},
        {"generation_config.json", offsetof(fz_meta_in, generation_config)},
    };
    char rel[256];
    memset(in, 0, sizeof *in);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        fz_blob *b = (fz_blob *)((char *)in + files[i].off);
        snprintf(rel, sizeof rel, "%s/%s", dir, files[i].name);
        b->data = fz_fuzz_read_data(rel, &b->len);
        b->path = files[i].name;
        FZ_FUZZ_CHECK(b->data || i == 3, "fixture %s is missing", rel);
    }
    in->gen_mode = FZ_GEN_CARRY;
    in->tie_word_embeddings = 1;
}

#endif
