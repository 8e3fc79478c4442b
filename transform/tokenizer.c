/* The tokenizer as transformers' fast tokenizer sees it, and the tokenizer
 * files finalize's tokenizer.save_pretrained would write. */
#include <stdlib.h>
#include <string.h>

#include "formats/jsonout.h"
#include "transform/meta_int.h"
#include "util/error.h"
#include "util/vec.h"

const char *const fz_role_keys[FZ_ROLE_N] = {"bos_token", "eos_token", "pad_token", "unk_token"};

/* A role/special token value: a plain string or an AddedToken dict. */
static const char *token_string(const json_t *v)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_object(v))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static int vocab_put(fz_tok *t, const char *s, int64_t id)
{
    if (json_object_set_new(t->vocab, s, json_integer(id)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    return 0;
}

int64_t fz_tok_id(const fz_tok *t, const char *s)
{
    json_t *v = json_object_get(t->vocab, s);
    return v ? (int64_t)json_integer_value(v) : -1;
}

int64_t fz_tok_role_id(const fz_tok *t, int role)
{
    if (!t->roles[role])
        return -1;
    int64_t id = fz_tok_id(t, t->roles[role]);
    if (id < 0 && role != FZ_ROLE_UNK && t->roles[FZ_ROLE_UNK])
        id = fz_tok_id(t, t->roles[FZ_ROLE_UNK]);
    return id;
}

bool fz_tok_in_extra(const fz_tok *t, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(t->extra, i, v) if (strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

int fz_tok_add(fz_tok *t, const char *s, bool special, int64_t *id)
{
    int64_t have = fz_tok_id(t, s);
    bool in_added = json_object_get(t->added, s) != NULL;
    if (have >= 0 && (in_added || !special)) {
        *id = have;
        return 0;
    }
    int rc = FZ_VEC_RESERVE(t->entries, t->cap_entries, t->n_entries + 1);
    if (rc)
        return rc;
    char *c = strdup(s);
    if (!c)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    fz_tok_entry *e = &t->entries[t->n_entries];
    e->content = c;
    e->special = special;
    e->is_new = have < 0;
    e->id = have >= 0 ? have : (int64_t)t->next_id;
    t->n_entries++;
    if (json_object_set_new(t->added, s, json_true()))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (have < 0) {
        int rc = vocab_put(t, s, e->id);
        if (rc)
            return rc;
        t->next_id++;
        t->len++;
        t->n_new++;
    }
    *id = e->id;
    return 0;
}

static int load_model_vocab(fz_tok *t, const char *path, uint64_t *model_size)
{
    json_t *model = json_object_get(t->tokenizer, "model");
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(model))
        return fz_error_set(FZ_EFORMAT, "%s: no \"model\" object", path);
    *model_size = 0;
    if (json_is_object(vocab)) {
        const char *k;
        json_t *v;
        json_object_foreach(vocab, k, v)
        {
            /* the tokenizers library's ids are u32 */
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > UINT32_MAX)
                return fz_error_set(FZ_EFORMAT, "%s: model.vocab[\"%s\"] is not a token id (0..%u)",
                                    path, k, UINT32_MAX);
            int rc = vocab_put(t, k, json_integer_value(v));
            if (rc)
                return rc;
        }
        *model_size = json_object_size(vocab);
    } else if (json_is_array(vocab)) { /* Unigram: [[piece, score], ...] */
        size_t i;
        json_t *v;
        json_array_foreach(vocab, i, v)
        {
            const char *piece = json_string_value(json_array_get(v, 0));
            if (!piece)
                return fz_error_set(FZ_EFORMAT, "%s: model.vocab[%zu] is not [piece, score]", path,
                                    i);
            if (!json_object_get(t->vocab, piece)) {
                int rc = vocab_put(t, piece, (int64_t)i);
                if (rc)
                    return rc;
            }
        }
        *model_size = json_array_size(vocab);
    } else {
        return fz_error_set(FZ_EFORMAT, "%s: model has no vocab", path);
    }
    return 0;
}

/* Added tokens are re-registered on load in list order: a content already in
 * the model vocab keeps that id, any other gets the next free id (the
 * tokenizers library ignores the ids written in the file). */
static int load_added(fz_tok *t, const char *path, uint64_t model_size)
{
    json_t *list = json_object_get(t->tokenizer, "added_tokens");
    int64_t max_id = -1;
    size_t i;
    json_t *v;
    if (list && !json_is_array(list) && !json_is_null(list))
        return fz_error_set(FZ_EFORMAT, "%s: added_tokens is not a list", path);
    json_array_foreach(list, i, v)
    {
        const char *c = json_string_value(json_object_get(v, "content"));
        if (!c)
            return fz_error_set(FZ_EFORMAT, "%s: added_tokens[%zu] has no content", path, i);
        int64_t id = fz_tok_id(t, c);
        if (id < 0) {
            id = max_id + 1 > (int64_t)model_size ? max_id + 1 : (int64_t)model_size;
            int rc = vocab_put(t, c, id);
            if (rc)
                return rc;
        }
        if (id > max_id)
            max_id = id;
        if (json_object_set_new(t->added, c, json_true()))
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    t->next_id = max_id + 1 > (int64_t)model_size ? (uint64_t)(max_id + 1) : model_size;
    return 0;
}

static int extra_from(fz_tok *t, const json_t *list)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        const char *s = token_string(v);
        if (s && json_array_append_new(t->extra, json_string(s)))
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    return 0;
}

/* The string tokenizer_config.json (else special_tokens_map.json) gives for
 * a special-token key, or NULL. */
static const char *named_token(const fz_tok *t, const char *key)
{
    const char *s = token_string(json_object_get(t->tok_config, key));
    if (!s && !json_object_get(t->tok_config, key))
        s = token_string(json_object_get(t->stm, key));
    return s;
}

/* The fast tokenizer's constructor registers every special token it is
 * given (named ones in the order bos, eos, unk, sep, pad, cls, mask, then
 * the additional ones) as an added special token; one in no vocabulary gets
 * the next id, so len(tokenizer) grows on load. */
static int add_missing_special(fz_tok *t)
{
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
    int64_t id;
    int rc = 0;
    for (size_t k = 0; k < sizeof keys / sizeof *keys && rc == 0; k++) {
        const char *s = named_token(t, keys[k]);
        if (s && *s && fz_tok_id(t, s) < 0)
            rc = fz_tok_add(t, s, true, &id);
    }
    for (size_t i = 0; i < json_array_size(t->extra) && rc == 0; i++) {
        const char *s = json_string_value(json_array_get(t->extra, i));
        if (*s && fz_tok_id(t, s) < 0)
            rc = fz_tok_add(t, s, true, &id);
    }
    return rc;
}

int fz_tok_load(fz_tok *t, const fz_blob *tok, const fz_blob *tc, const fz_blob *stm)
{
    memset(t, 0, sizeof *t);
    int rc = 0;
    uint64_t model_size;
    if (!tok->data)
        return fz_error_set(FZ_ENOTFOUND, "%s: not found",
                            tok->path ? tok->path : "tokenizer.json");
    t->vocab = json_object();
    t->added = json_object();
    t->extra = json_array();
    if (!t->vocab || !t->added || !t->extra)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (!(t->tokenizer = fz_json_parse(tok->data, tok->len, tok->path)))
        return FZ_EFORMAT;
    if (!json_is_object(t->tokenizer))
        return fz_error_set(FZ_EFORMAT, "%s: not a JSON object", tok->path);
    if ((rc = load_model_vocab(t, tok->path, &model_size)) ||
        (rc = load_added(t, tok->path, model_size)))
        return rc;
    t->len = json_object_size(t->vocab);
    if (tc->data) {
        if (!(t->tok_config = fz_json_parse(tc->data, tc->len, tc->path)))
            return FZ_EFORMAT;
        if (!json_is_object(t->tok_config))
            return fz_error_set(FZ_EFORMAT, "%s: not a JSON object", tc->path);
    }
    if (stm->data) {
        if (!(t->stm = fz_json_parse(stm->data, stm->len, stm->path)))
            return FZ_EFORMAT;
        if (!json_is_object(t->stm))
            return fz_error_set(FZ_EFORMAT, "%s: not a JSON object", stm->path);
    }
    for (int r = 0; r < FZ_ROLE_N; r++) {
        const char *s = named_token(t, fz_role_keys[r]);
        if (s && !(t->roles[r] = strdup(s)))
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    json_t *list = json_object_get(t->tok_config, "additional_special_tokens");
    if (!json_is_array(list))
        list = json_object_get(t->tok_config, "extra_special_tokens");
    if (!json_is_array(list) && !t->tok_config)
        list = json_object_get(t->stm, "additional_special_tokens");
    if ((rc = extra_from(t, list)))
        return rc;
    return add_missing_special(t);
}

void fz_tok_free(fz_tok *t)
{
    json_decref(t->tokenizer);
    json_decref(t->tok_config);
    json_decref(t->stm);
    json_decref(t->vocab);
    json_decref(t->added);
    json_decref(t->extra);
    for (int r = 0; r < FZ_ROLE_N; r++)
        free(t->roles[r]);
    for (size_t i = 0; i < t->n_entries; i++)
        free(t->entries[i].content);
    free(t->entries);
    memset(t, 0, sizeof *t);
}

/* ---- emission -------------------------------------------------------- */

static int cmp_by_id(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    json_int_t i = json_integer_value(json_object_get(x, "id"));
    json_int_t j = json_integer_value(json_object_get(y, "id"));
    if (i != j)
        return i < j ? -1 : 1;
    return x < y ? -1 : x > y; /* qsort is not stable: order by position */
}

/* tokenizer.json: new entries appended to added_tokens, which the library
 * writes once per content (the last entry's flags), with the ids it gave them on load (not the ids
 * the source file claims: a file whose ids disagree would otherwise load back with other ids than
 * the rows the plan initialised), sorted by id; everything else as in the source. */
static int emit_tokenizer_json(const fz_tok *t, const fz_blob *src, fz_meta_out *out)
{
    if (t->n_entries == 0) {
        out->tokenizer_json_unchanged = true;
        return fz_buf_append(&out->tokenizer_json, src->data, src->len);
    }
    int rc = FZ_ENOMEM;
    json_t *doc = json_deep_copy(t->tokenizer), *list = NULL, *sorted = NULL, *seen = json_object();
    json_t **items = NULL;
    if (!doc || !seen)
        goto done;
    list = json_object_get(doc, "added_tokens");
    if (!json_is_array(list)) {
        if (json_object_set_new(doc, "added_tokens", json_array()))
            goto done;
        list = json_object_get(doc, "added_tokens");
    }
    for (size_t i = 0; i < t->n_entries; i++) {
        const fz_tok_entry *e = &t->entries[i];
        json_t *o = json_pack("{sI ss sb sb sb sb sb}", "id", (json_int_t)e->id, "content",
                              e->content, "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized",
                              !e->special, "special", e->special);
        if (!o || json_array_append_new(list, o))
            goto done;
    }
    size_t n = 0;
    items = malloc(json_array_size(list) * sizeof *items);
    sorted = json_array();
    if (!items || !sorted)
        goto done;
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *o = json_array_get(list, i);
        const char *c = json_string_value(json_object_get(o, "content"));
        json_t *at = json_object_get(seen, c);
        if (json_object_set_new(o, "id", json_integer((json_int_t)fz_tok_id(t, c))))
            goto done;
        if (at) { /* a repeated content: the library keeps the last entry's flags */
            items[json_integer_value(at)] = o;
            continue;
        }
        if (json_object_set_new(seen, c, json_integer((json_int_t)n)))
            goto done;
        items[n++] = o;
    }
    qsort(items, n, sizeof *items, cmp_by_id);
    for (size_t i = 0; i < n; i++)
        if (json_array_append(sorted, items[i]))
            goto done;
    if (json_object_set(doc, "added_tokens", sorted))
        goto done;
    rc = fz_json_emit_tokenizers(doc, &out->tokenizer_json);
done:
    if (rc == FZ_ENOMEM)
        fz_error_set(rc, "out of memory building tokenizer.json");
    free(items);
    json_decref(seen);
    json_decref(sorted);
    json_decref(doc);
    return rc;
}

static json_t *decoder_entry(const char *content, bool special)
{
    return json_pack("{ss sb sb sb sb sb}", "content", content, "lstrip", 0, "normalized", !special,
                     "rstrip", 0, "single_word", 0, "special", special);
}

/* added_tokens_decoder for a config that had none: every added token. */
static json_t *full_decoder(const fz_tok *t)
{
    json_t *dec = json_object(), *list = json_object_get(t->tokenizer, "added_tokens");
    size_t i;
    json_t *v;
    char key[32];
    if (!dec)
        return NULL;
    json_array_foreach(list, i, v)
    {
        const char *c = json_string_value(json_object_get(v, "content"));
        json_t *o = json_pack("{ss sb sb sb sb sb}", "content", c, "lstrip",
                              json_is_true(json_object_get(v, "lstrip")), "normalized",
                              json_is_true(json_object_get(v, "normalized")), "rstrip",
                              json_is_true(json_object_get(v, "rstrip")), "single_word",
                              json_is_true(json_object_get(v, "single_word")), "special",
                              json_is_true(json_object_get(v, "special")));
        snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, (json_int_t)fz_tok_id(t, c));
        if (!o || json_object_set_new(dec, key, o)) {
            json_decref(dec);
            return NULL;
        }
    }
    return dec;
}

static int emit_tok_config(const fz_tok *t, const json_t *tmpl, fz_meta_out *out)
{
    int rc = FZ_ENOMEM;
    char key[32];
    json_t *doc = t->tok_config ? json_deep_copy(t->tok_config)
                                : json_pack("{ss}", "tokenizer_class", "PreTrainedTokenizerFast");
    if (!doc)
        goto done;
    json_t *dec = json_object_get(doc, "added_tokens_decoder");
    if (!json_is_object(dec)) {
        if (!(dec = full_decoder(t)) || json_object_set_new(doc, "added_tokens_decoder", dec))
            goto done;
    }
    for (size_t i = 0; i < t->n_entries; i++) {
        snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, (json_int_t)t->entries[i].id);
        if (json_object_set_new(dec, key,
                                decoder_entry(t->entries[i].content, t->entries[i].special)))
            goto done;
    }
    for (int r = 0; r < FZ_ROLE_N; r++)
        if (t->roles[r] && (t->role_changed[r] || !json_object_get(doc, fz_role_keys[r])))
            if (json_object_set_new(doc, fz_role_keys[r], json_string(t->roles[r])))
                goto done;
    if (t->extra_changed) {
        if (json_object_set(doc, "additional_special_tokens", t->extra))
            goto done;
        if (json_is_array(json_object_get(doc, "extra_special_tokens")) &&
            json_object_set(doc, "extra_special_tokens", t->extra))
            goto done;
    }
    if (tmpl && json_object_set(doc, "chat_template", (json_t *)tmpl))
        goto done;
    rc = fz_json_emit(doc, &FZ_JSON_HF(false), &out->tokenizer_config_json);
done:
    if (rc == FZ_ENOMEM)
        fz_error_set(rc, "out of memory building tokenizer_config.json");
    json_decref(doc);
    return rc;
}

static const char *const stm_keys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};

static int emit_stm(const fz_tok *t, fz_meta_out *out)
{
    int rc = FZ_ENOMEM;
    json_t *doc = t->stm ? json_deep_copy(t->stm) : json_object();
    if (!doc)
        goto done;
    if (!t->stm && t->tok_config)
        for (size_t k = 0; k < sizeof stm_keys / sizeof *stm_keys; k++) {
            json_t *v = json_object_get(t->tok_config, stm_keys[k]);
            if (token_string(v) && json_object_set(doc, stm_keys[k], v))
                goto done;
        }
    for (int r = 0; r < FZ_ROLE_N; r++)
        if (t->roles[r] &&
            (t->role_changed[r] || !token_string(json_object_get(doc, fz_role_keys[r]))))
            if (json_object_set_new(doc, fz_role_keys[r], json_string(t->roles[r])))
                goto done;
    if ((t->extra_changed || !json_object_get(doc, "additional_special_tokens")) &&
        json_array_size(t->extra) > 0)
        if (json_object_set(doc, "additional_special_tokens", t->extra))
            goto done;
    rc = fz_json_emit(doc, &FZ_JSON_HF(false), &out->special_tokens_map_json);
done:
    if (rc == FZ_ENOMEM)
        fz_error_set(rc, "out of memory building special_tokens_map.json");
    json_decref(doc);
    return rc;
}

int fz_tok_emit(const fz_tok *t, const fz_blob *src_tokenizer, const json_t *tmpl, fz_meta_out *out)
{
    int rc = emit_tokenizer_json(t, src_tokenizer, out);
    if (rc == 0)
        rc = emit_tok_config(t, tmpl, out);
    if (rc == 0)
        rc = emit_stm(t, out);
    return rc;
}
