/* config.json: parse, patch the fields FORMATS.md §5 names, re-emit as
 * config.save_pretrained does (sorted keys, indent 2, ASCII, newline).
 * Every other field keeps its JSON type and value (8.0 stays 8.0). */
#include "formats/jsonout.h"
#include "transform/meta_int.h"
#include "util/error.h"

int fz_config_source_eos(const fz_blob *config, int64_t *eos)
{
    *eos = -1;
    json_t *doc = fz_json_parse(config->data, config->len, config->path);
    if (!doc)
        return FZ_EFORMAT;
    json_t *v = json_object_get(doc, "eos_token_id");
    if (json_is_array(v))
        v = json_array_get(v, 0);
    if (json_is_integer(v))
        *eos = json_integer_value(v);
    json_decref(doc);
    return 0;
}

int fz_config_build(const fz_meta_in *in, const fz_tok *t, bool resized, uint64_t rows, fz_buf *out)
{
    int rc = FZ_ENOMEM;
    const char *path = in->config.path ? in->config.path : "config.json";
    if (!in->config.data)
        return fz_error_set(FZ_ENOTFOUND, "%s: not found", path);
    json_t *doc = fz_json_parse(in->config.data, in->config.len, path);
    if (!doc)
        return FZ_EFORMAT;
    if (!json_is_object(doc)) {
        rc = fz_error_set(FZ_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    /* finalize syncs token ids only when the vocabulary grew; eos stays as
     * in the source (DESIGN), vocab_size follows the rows (a padded
     * embedding keeps its row count). */
    if (resized) {
        if (json_object_set_new(doc, "vocab_size", json_integer((json_int_t)rows)))
            goto done;
        static const int roles[] = {FZ_ROLE_BOS, FZ_ROLE_PAD};
        static const char *const keys[] = {"bos_token_id", "pad_token_id"};
        for (int i = 0; i < 2; i++) {
            int64_t id = fz_tok_role_id(t, roles[i]);
            if (id >= 0 && json_object_set_new(doc, keys[i], json_integer(id)))
                goto done;
        }
    }
    if (json_object_set_new(doc, "tie_word_embeddings", json_boolean(in->tie_word_embeddings)))
        goto done;
    if (in->dtype && (json_object_set_new(doc, "dtype", json_string(in->dtype)) ||
                      json_object_set_new(doc, "torch_dtype", json_string(in->dtype))))
        goto done;
    if (in->quantization_config) {
        json_t *q = json_deep_copy(in->quantization_config);
        if (!q || json_object_set_new(doc, "quantization_config", q))
            goto done;
    }
    rc = fz_json_emit(doc, &FZ_JSON_HF(true), out);
done:
    if (rc == FZ_ENOMEM)
        fz_error_set(rc, "%s: out of memory", path);
    json_decref(doc);
    return rc;
}
