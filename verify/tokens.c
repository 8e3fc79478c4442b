/* verify: the tokenizer against the model. Its length (tokenizer.json's
 * model vocabulary and added_tokens) must fit the embedding rows; every
 * role token named in tokenizer_config.json / special_tokens_map.json must
 * be in the vocabulary; every token id in config.json, generation_config.json
 * and added_tokens_decoder must name a token and an embedding row. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "verify/internal.h"

typedef struct {
    const json_t *vocab; /* model.vocab when it is an object (BPE, WordPiece, WordLevel) */
    json_t *other;       /* content -> id: added_tokens, and a Unigram list */
    int64_t len;         /* highest id + 1; -1 without tokenizer.json */
    int64_t limit;       /* embedding rows (vocab_size), -1 when unknown */
} vtok;

static const char *const role_keys[] = {"bos_token", "eos_token", "unk_token",  "pad_token",
                                        "sep_token", "cls_token", "mask_token", NULL};
static const char *const cfg_id_keys[] = {"bos_token_id",
                                          "eos_token_id",
                                          "pad_token_id",
                                          "unk_token_id",
                                          "sep_token_id",
                                          "decoder_start_token_id",
                                          NULL};

/* The id of token `s`, or -1. */
static int64_t lookup(const vtok *k, const char *s)
{
    int64_t id;
    if (fz_vjson_uint(json_object_get(k->other, s), &id))
        return id;
    if (fz_vjson_uint(json_object_get(k->vocab, s), &id))
        return id;
    return -1;
}

static void note_id(vtok *k, int64_t id)
{
    if (id + 1 > k->len)
        k->len = id + 1;
}

/* Read tokenizer.json's vocabulary into k (problems for malformed entries). */
static void load_vocab(fz_vctx *c, const json_t *tj, vtok *k)
{
    const char *F = "tokenizer.json";
    const json_t *model = json_object_get(tj, "model"), *vocab = json_object_get(model, "vocab");
    const json_t *added = json_object_get(tj, "added_tokens"), *x;
    const char *key;
    size_t i;
    int64_t id;
    k->len = 0;
    if (json_is_object(vocab)) {
        k->vocab = vocab;
        json_object_foreach((json_t *)vocab, key, x)
        {
            if (!fz_vjson_uint(x, &id)) {
                fz_vfail(c, F, "model.vocab['%s'] is not a token id", key);
                continue;
            }
            note_id(k, id);
        }
    } else if (json_is_array(vocab)) { /* Unigram: [[piece, score], ...], id = position */
        json_array_foreach(vocab, i, x)
        {
            const char *piece = json_string_value(json_array_get(x, 0));
            if (piece && !json_object_get(k->other, piece))
                json_object_set_new(k->other, piece, json_integer((json_int_t)i));
        }
        k->len = (int64_t)json_array_size(vocab);
    } else if (vocab) {
        fz_vfail(c, F, "model.vocab is neither an object nor a list");
    }
    /* added tokens: ids unique, and the vocabulary agrees on them */
    json_t *byid = json_object();
    json_array_foreach(added, i, x)
    {
        const char *s = json_string_value(json_object_get(x, "content"));
        char num[32];
        if (!s || !fz_vjson_uint(json_object_get(x, "id"), &id)) {
            fz_vfail(c, F, "added_tokens[%zu] has no content string and id", i);
            continue;
        }
        int64_t in_vocab;
        if (fz_vjson_uint(json_object_get(k->vocab, s), &in_vocab) && in_vocab != id)
            fz_vfail(c, F, "added token '%s' has id %lld but model.vocab gives it %lld", s,
                     (long long)id, (long long)in_vocab);
        snprintf(num, sizeof num, "%lld", (long long)id);
        const char *prev = json_string_value(json_object_get(byid, num));
        if (prev && strcmp(prev, s))
            fz_vfail(c, F, "added tokens '%s' and '%s' both have id %lld", prev, s, (long long)id);
        json_object_set_new(byid, num, json_string(s));
        json_object_set_new(k->other, s, json_integer((json_int_t)id));
        note_id(k, id);
    }
    json_decref(byid);
}

/* A token whose id is at least `from` (for messages). */
static const char *token_at_or_above(const vtok *k, const json_t *tj, int64_t from, int64_t *id)
{
    const json_t *x;
    const char *key;
    size_t i;
    json_array_foreach(json_object_get(tj, "added_tokens"), i,
                       x) if (fz_vjson_uint(json_object_get(x, "id"), id) &&
                              *id >= from) return json_string_value(json_object_get(x, "content"));
    json_object_foreach((json_t *)k->vocab, key,
                        x) if (fz_vjson_uint(x, id) && *id >= from) return key;
    return NULL;
}

/* One token id named by `key` in `file`. */
static void check_id(fz_vctx *c, const vtok *k, const char *file, const char *key, const json_t *v)
{
    int64_t id;
    if (!v || json_is_null(v))
        return;
    if (!json_is_integer(v)) {
        fz_vfail(c, file, "%s is not a token id", key);
    } else if (!fz_vjson_uint(v, &id)) {
        fz_vfail(c, file, "%s %lld is negative", key, (long long)json_integer_value(v));
    } else if (k->limit >= 0 && id >= k->limit) {
        fz_vfail(c, file, "%s %lld is outside the embedding (%lld rows)", key, (long long)id,
                 (long long)k->limit);
    } else if (k->len >= 0 && id >= k->len) {
        fz_vfail(c, file, "%s %lld is not a token of the tokenizer (%lld tokens)", key,
                 (long long)id, (long long)k->len);
    }
}

static void check_ids(fz_vctx *c, const vtok *k, const char *file, const json_t *j)
{
    for (int i = 0; cfg_id_keys[i]; i++) {
        const json_t *v = json_object_get(j, cfg_id_keys[i]), *x;
        size_t n;
        if (!json_is_array(v)) {
            check_id(c, k, file, cfg_id_keys[i], v);
            continue;
        }
        json_array_foreach(v, n, x)
        {
            char key[64];
            snprintf(key, sizeof key, "%s[%zu]", cfg_id_keys[i], n);
            check_id(c, k, file, key, x);
        }
    }
}

/* A role or special token (a string, or an AddedToken object) must be a token. */
static void check_token(fz_vctx *c, const vtok *k, const char *file, const char *key,
                        const json_t *v)
{
    const char *s =
        json_is_object(v) ? json_string_value(json_object_get(v, "content")) : json_string_value(v);
    if (!s || k->len < 0)
        return;
    int64_t id = lookup(k, s);
    if (id < 0)
        fz_vfail(c, file, "%s '%s' is not in the tokenizer's vocabulary (tokenizer.json)", key, s);
    else if (k->limit >= 0 && id >= k->limit)
        fz_vfail(c, file, "%s '%s' has id %lld, outside the embedding (%lld rows)", key, s,
                 (long long)id, (long long)k->limit);
}

static void check_roles(fz_vctx *c, const vtok *k, const char *file)
{
    json_t *j = fz_vload_json(c, file), *x;
    const char *key;
    size_t i;
    if (!j)
        return;
    for (int r = 0; role_keys[r]; r++)
        check_token(c, k, file, role_keys[r], json_object_get(j, role_keys[r]));
    json_array_foreach(json_object_get(j, "additional_special_tokens"), i, x)
        check_token(c, k, file, "additional_special_tokens entry", x);
    json_object_foreach(json_object_get(j, "added_tokens_decoder"), key, x)
    {
        char *end;
        errno = 0;
        long long id = strtoll(key, &end, 10);
        const char *s = json_string_value(json_object_get(x, "content"));
        if (*end || end == key || errno || id < 0 || !s) {
            fz_vfail(c, file, "added_tokens_decoder['%s'] is not an id with a content", key);
            continue;
        }
        int64_t tid = k->len >= 0 ? lookup(k, s) : id;
        if (tid != id)
            fz_vfail(c, file, "added_tokens_decoder gives '%s' id %lld but tokenizer.json %s", s,
                     id, tid < 0 ? "does not have it" : "has another id");
        else if (k->limit >= 0 && id >= k->limit)
            fz_vfail(c, file,
                     "added_tokens_decoder id %lld ('%s') is outside the embedding "
                     "(%lld rows)",
                     id, s, (long long)k->limit);
    }
    json_decref(j);
}

void fz_vload_tokenizer(fz_vctx *c)
{
    vtok k = {.other = json_object(), .len = -1};
    if (!k.other) {
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        return;
    }
    if ((c->tokenizer = fz_vload_json(c, "tokenizer.json")))
        load_vocab(c, c->tokenizer, &k);
    c->tok_other = k.other;
    c->tok_vocab = k.vocab;
    c->tok_len = k.len;
}

void fz_vcheck_tokens(fz_vctx *c)
{
    vtok k = {c->tok_vocab, c->tok_other, c->tok_len, c->vocab >= 0 ? c->vocab : c->rows};
    const json_t *tj = c->tokenizer;
    if (tj && k.limit >= 0 && k.len > k.limit) {
        int64_t id = 0;
        const char *s = token_at_or_above(&k, tj, k.limit, &id);
        fz_vfail(c, "tokenizer.json",
                 "the tokenizer has %lld tokens but %s %lld rows: token "
                 "'%s' (id %lld) and any above have no embedding row",
                 (long long)k.len,
                 c->vocab >= 0 ? "config.json vocab_size gives the embedding" : "the embedding has",
                 (long long)k.limit, s ? s : "?", (long long)id);
    }
    check_roles(c, &k, "tokenizer_config.json");
    check_roles(c, &k, "special_tokens_map.json");
    if (c->config)
        check_ids(c, &k, "config.json", c->config);
    json_t *gc = fz_vload_json(c, "generation_config.json");
    if (gc)
        check_ids(c, &k, "generation_config.json", gc);
    json_decref(gc);
}
