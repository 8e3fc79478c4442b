/* fz_meta_build: the order finalize edits metadata in (reference §8.2):
 * read config.json's EOS before anything changes, load the tokenizer, apply
 * the add-tokens YAML (or the default PAD), attach the chat template, write
 * the tokenizer files, patch config.json, then build generation_config.json
 * with the merged stop tokens. Pure: inputs are bytes, outputs are bytes. */
#include <stdlib.h>
#include <string.h>

#include "transform/meta_int.h"
#include "util/error.h"
#include "util/log.h"

void fz_meta_out_free(fz_meta_out *out)
{
    fz_buf_free(&out->config_json);
    fz_buf_free(&out->tokenizer_json);
    fz_buf_free(&out->tokenizer_config_json);
    fz_buf_free(&out->special_tokens_map_json);
    fz_buf_free(&out->chat_template_jinja);
    fz_buf_free(&out->generation_config_json);
    free(out->inits);
    free(out->stop_ids);
    for (size_t i = 0; i < out->n_added_tokens; i++)
        free(out->added_tokens[i]);
    free(out->added_tokens);
    free(out->added_ids);
    memset(out, 0, sizeof *out);
}

static int cmp_row(const void *a, const void *b)
{
    const fz_row_init *x = a, *y = b;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* token_inits -> the row plan. Applied only when the rows change (with
 * n == 0 finalize does not resize, so nothing is initialised). `mean` needs
 * no entry where a row is grown (new rows default to it) and is a no-op on
 * an existing token's row; a new token inside the padding rows of a padded
 * embedding gets its init explicitly, mean included. */
static int plan_inits(const fz_meta_in *in, const fz_tok *t, const fz_row_init *ti, size_t n,
                      fz_meta_out *out)
{
    const char *yaml = in->add_tokens_yaml.path ? in->add_tokens_yaml.path : "add-tokens YAML";
    uint64_t R = in->embed_rows ? in->embed_rows : out->old_vocab;
    if (!out->resize || n + t->n_new == 0)
        return 0;
    if (!(out->inits = calloc(n + t->n_new, sizeof *out->inits)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        fz_init_kind kind = ti[i].kind;
        uint64_t row = ti[i].row;
        if (kind == FZ_INIT_COPY && ti[i].copy_from >= out->old_vocab) {
            /* a role token added on load has a mean row: a copy of it is the mean */
            if (ti[i].copy_from >= out->old_vocab + out->n_role_added)
                return fz_error_set(
                    FZ_EINVAL,
                    "%s: init copy:%llu: not an existing token id (the vocabulary has %llu)", yaml,
                    (unsigned long long)ti[i].copy_from, (unsigned long long)out->old_vocab);
            kind = FZ_INIT_MEAN;
        }
        if (kind == FZ_INIT_MEAN && (row < out->old_vocab || row >= R))
            continue;
        out->inits[out->n_inits++] = (fz_row_init){
            row, kind, kind == FZ_INIT_COPY ? ti[i].copy_from : 0, row >= out->old_vocab};
    }
    for (size_t i = 0; i < t->n_entries; i++) {
        const fz_tok_entry *e = &t->entries[i];
        bool listed = false;
        if (!e->is_new || (uint64_t)e->id >= R)
            continue;
        for (size_t k = 0; k < out->n_inits && !listed; k++)
            listed = out->inits[k].row == (uint64_t)e->id;
        if (!listed)
            out->inits[out->n_inits++] = (fz_row_init){(uint64_t)e->id, FZ_INIT_MEAN, 0, true};
    }
    qsort(out->inits, out->n_inits, sizeof *out->inits, cmp_row);
    return 0;
}

/* Rows after the change: the tokenizer's length, or more when the embedding
 * is padded (padding rows are kept, never shrunk). */
static void plan_rows(const fz_meta_in *in, fz_meta_out *out)
{
    uint64_t R = in->embed_rows;
    out->resize = out->n_added > 0 || (R && out->new_vocab > R);
    out->rows = R && R > out->new_vocab ? R : out->new_vocab;
}

static int plan_added(const fz_tok *t, fz_meta_out *out)
{
    if (t->n_new == 0)
        return 0;
    out->added_tokens = calloc(t->n_new, sizeof *out->added_tokens);
    out->added_ids = calloc(t->n_new, sizeof *out->added_ids);
    if (!out->added_tokens || !out->added_ids)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (size_t i = 0; i < t->n_entries; i++) {
        const fz_tok_entry *e = &t->entries[i];
        if (!e->is_new)
            continue;
        if ((uint64_t)e->id >= out->new_vocab)
            return fz_error_set(
                FZ_EFORMAT,
                "tokenizer.json: new token '%s' would get id %lld but the tokenizer has %llu "
                "entries (ids are not contiguous)",
                e->content, (long long)e->id, (unsigned long long)out->new_vocab);
        if (!(out->added_tokens[out->n_added_tokens] = strdup(e->content)))
            return fz_error_set(FZ_ENOMEM, "out of memory");
        out->added_ids[out->n_added_tokens++] = (uint64_t)e->id;
    }
    return 0;
}

/* Which template: -t, else SRC/chat_template.jinja, else the inline
 * chat_template of tokenizer_config.json (a string, or the "default" entry
 * of a list of named templates). *set_inline is the value to write into
 * tokenizer_config.json, NULL when the source's inline value is kept. */
static int pick_template(const fz_meta_in *in, const fz_tok *t, json_t **set_inline,
                         fz_meta_out *out)
{
    const fz_blob *b = in->chat_template.data        ? &in->chat_template
                       : in->chat_template_file.data ? &in->chat_template_file
                                                     : NULL;
    const char *text = NULL;
    size_t len = 0;
    *set_inline = NULL;
    if (b) {
        if (!(*set_inline = json_stringn(b->data, b->len)))
            return fz_error_set(FZ_EINVAL, "%s: chat template is not valid UTF-8 text",
                                b->path ? b->path : "chat template");
        text = b->data;
        len = b->len;
    } else {
        json_t *v = json_object_get(t->tok_config, "chat_template");
        size_t i;
        json_t *e;
        if (json_is_array(v)) {
            json_t *list = v;
            v = NULL;
            json_array_foreach(list, i, e)
            {
                const char *name = json_string_value(json_object_get(e, "name"));
                if (name && !strcmp(name, "default"))
                    v = json_object_get(e, "template");
            }
        }
        if (json_is_string(v)) {
            text = json_string_value(v);
            len = json_string_length(v);
        }
    }
    if (!text)
        return 0; /* the command warns (once, and not for machine-readable output) */
    out->has_chat_template = true;
    return fz_buf_append(&out->chat_template_jinja, text, len);
}

int fz_meta_build(const fz_meta_in *in, fz_meta_out *out)
{
    fz_tok t;
    fz_addtok_spec spec;
    fz_row_init *ti = NULL;
    size_t n_ti = 0;
    json_t *tmpl = NULL;
    char **names = NULL;
    size_t n_names = 0;
    int64_t source_eos;
    int rc;

    memset(out, 0, sizeof *out);
    memset(&t, 0, sizeof t);
    memset(&spec, 0, sizeof spec);
    if (!in->config.data) {
        rc = fz_error_set(FZ_ENOTFOUND, "%s: not found",
                          in->config.path ? in->config.path : "config.json");
        goto done;
    }
    if ((rc = fz_config_source_eos(&in->config, &source_eos)))
        goto done;
    if ((rc = fz_tok_load(&t, &in->tokenizer, &in->tokenizer_config, &in->special_tokens_map)))
        goto done;
    if (in->add_tokens_yaml.data)
        rc = fz_addtok_parse(
            in->add_tokens_yaml.data, in->add_tokens_yaml.len,
            in->add_tokens_yaml.path ? in->add_tokens_yaml.path : "add-tokens YAML", &spec);
    else if (!in->skip_default_tokens)
        rc = fz_addtok_default(&spec);
    if (rc)
        goto done;
    out->n_role_added = t.n_new; /* role tokens the vocabulary lacked, added on load */
    out->old_vocab = t.len - t.n_new;
    if ((rc = fz_addtok_apply(&t, &spec, &ti, &n_ti)))
        goto done;
    out->n_added = t.n_new;
    out->new_vocab = t.len;
    plan_rows(in, out);
    if ((rc = plan_added(&t, out)) || (rc = plan_inits(in, &t, ti, n_ti, out)))
        goto done;
    if ((rc = pick_template(in, &t, &tmpl, out)))
        goto done;
    if ((rc = fz_tok_emit(&t, &in->tokenizer, tmpl, out)))
        goto done;
    if ((rc = fz_config_build(in, &t, out->resize, out->rows, &out->config_json)))
        goto done;

    /* the YAML's names in finalize's order, for the auto stop tokens */
    names = calloc(FZ_ROLE_N + spec.n_special + spec.n_regular + 1, sizeof *names);
    if (!names) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (int r = 0; r < FZ_ROLE_N; r++)
        if (spec.roles[r].present)
            names[n_names++] = spec.roles[r].token;
    for (size_t i = 0; i < spec.n_special; i++)
        names[n_names++] = spec.special[i];
    for (size_t i = 0; i < spec.n_regular; i++)
        names[n_names++] = spec.regular[i];
    rc = fz_genconfig_build(in, &t, source_eos, names, n_names, out);
done:
    free(names);
    free(ti);
    json_decref(tmpl);
    fz_addtok_spec_free(&spec);
    fz_tok_free(&t);
    if (rc)
        fz_meta_out_free(out);
    return rc;
}
