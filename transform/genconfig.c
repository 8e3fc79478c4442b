/* generation_config.json: carried, synthesized or translated from an
 * inference preset, with the token-id overlay and the stop-token merge
 * (FORMATS.md §7, reference/forgather-finalize.md §5), refused when
 * transformers' GenerationConfig.save_pretrained would refuse it. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats/jsonout.h"
#include "transform/meta_int.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/log.h"
#include "util/vec.h"

/* finalize._PRESET_PASSTHROUGH_KEYS */
static const char *const passthrough[] = {"temperature",
                                          "top_k",
                                          "top_p",
                                          "min_p",
                                          "typical_p",
                                          "epsilon_cutoff",
                                          "eta_cutoff",
                                          "repetition_penalty",
                                          "no_repeat_ngram_size",
                                          "encoder_no_repeat_ngram_size",
                                          "renormalize_logits",
                                          "num_beams",
                                          "num_beam_groups",
                                          "diversity_penalty",
                                          "early_stopping",
                                          "length_penalty",
                                          "penalty_alpha",
                                          "do_sample",
                                          "min_new_tokens",
                                          "max_new_tokens",
                                          "max_length",
                                          "guidance_scale",
                                          "presence_penalty",
                                          "frequency_penalty"};

static bool is_passthrough(const char *k)
{
    for (size_t i = 0; i < sizeof passthrough / sizeof *passthrough; i++)
        if (!strcmp(k, passthrough[i]))
            return true;
    return false;
}

static bool set(const json_t *cfg, const char *k)
{
    json_t *v = json_object_get(cfg, k);
    return v && !json_is_null(v);
}

int fz_genconfig_translate(const json_t *preset, const char *path, json_t **out)
{
    json_t *o = json_object();
    const char *k;
    json_t *v;
    if (!o)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (!json_is_object(preset)) {
        json_decref(o);
        return fz_error_set(FZ_EINVAL, "%s: an inference preset must be a JSON object", path);
    }
    json_t *mt = json_object_get(preset, "max_tokens");
    if (mt) {
        /* int(p["max_tokens"]) */
        json_int_t n;
        if (json_is_integer(mt))
            n = json_integer_value(mt);
        else if (json_is_real(mt) && isfinite(json_real_value(mt)) &&
                 fabs(json_real_value(mt)) < 9e18)
            n = (json_int_t)json_real_value(mt);
        else {
            json_decref(o);
            return fz_error_set(FZ_EINVAL, "%s: max_tokens must be a number", path);
        }
        if (json_object_set_new(o, "max_new_tokens", json_integer(n)))
            goto nomem;
    }
    json_object_foreach((json_t *)preset, k, v)
    {
        if (!strcmp(k, "max_tokens"))
            continue;
        if (!is_passthrough(k)) {
            fz_log(FZ_LOG_WARNING,
                   "%s: preset key '%s' has no generation_config equivalent; dropped", path, k);
            continue;
        }
        if (json_object_set(o, k, v))
            goto nomem;
    }
    if (!json_object_get(o, "do_sample")) {
        json_t *nb = json_object_get(o, "num_beams");
        if (set(o, "temperature") || set(o, "top_p") || set(o, "top_k") || set(o, "min_p")) {
            if (json_object_set_new(o, "do_sample", json_true()))
                goto nomem;
        } else if (json_is_number(nb) && json_number_value(nb) > 1) {
            if (json_object_set_new(o, "do_sample", json_false()))
                goto nomem;
        }
    }
    *out = o;
    return 0;
nomem:
    json_decref(o);
    return fz_error_set(FZ_ENOMEM, "out of memory");
}

/* ---- validation ------------------------------------------------------ */

/* v is set and differs from `dflt` (non-numbers always differ, as in Python). */
static bool differs(const json_t *cfg, const char *k, double dflt)
{
    json_t *v = json_object_get(cfg, k);
    if (!v || json_is_null(v))
        return false;
    if (json_is_number(v))
        return json_number_value(v) != dflt;
    if (json_is_boolean(v))
        return (json_is_true(v) ? 1.0 : 0.0) != dflt;
    return true;
}

static void show(const json_t *v, char *buf, size_t n)
{
    fz_buf b = FZ_BUF_INIT;
    if (fz_json_emit(v, &FZ_JSON_PY(-1), &b) == 0 && fz_buf_putc(&b, '\0') == 0)
        snprintf(buf, n, "%s", (char *)b.data);
    else
        snprintf(buf, n, "?");
    fz_buf_free(&b);
}

static int refuse(const char *path, const char *why)
{
    return fz_error_set(
        FZ_EINVAL, "%s: transformers' GenerationConfig would refuse to save this: %s", path, why);
}

/* The rules of transformers 5.x GenerationConfig.validate(strict=True), which
 * save_pretrained runs: its hard errors and its "minor issues" alike. */
int fz_genconfig_validate(const json_t *cfg, const char *path)
{
    char why[512], val[128];
    json_t *v;
    bool sampling = json_is_true(json_object_get(cfg, "do_sample"));
    json_t *nb = json_object_get(cfg, "num_beams");
    bool one_beam = !nb || json_is_null(nb) || (json_is_number(nb) && json_number_value(nb) == 1);

    static const char *const generate_args[] = {
        "logits_processor",         "stopping_criteria",
        "prefix_allowed_tokens_fn", "synced_gpus",
        "assistant_model",          "streamer",
        "negative_prompt_ids",      "negative_prompt_attention_mask"};
    for (size_t i = 0; i < sizeof generate_args / sizeof *generate_args; i++)
        if (json_object_get(cfg, generate_args[i])) {
            snprintf(why, sizeof why,
                     "`%s` is a generate() argument, not a generation config field",
                     generate_args[i]);
            return refuse(path, why);
        }
    v = json_object_get(cfg, "early_stopping");
    if (v && !json_is_null(v) && !json_is_boolean(v) &&
        !(json_is_string(v) && !strcmp(json_string_value(v), "never"))) {
        show(v, val, sizeof val);
        snprintf(why, sizeof why, "`early_stopping` must be a boolean or \"never\", but is %s",
                 val);
        return refuse(path, why);
    }
    v = json_object_get(cfg, "max_new_tokens");
    if (json_is_number(v) && json_number_value(v) <= 0) {
        show(v, val, sizeof val);
        snprintf(why, sizeof why, "`max_new_tokens` must be greater than 0, but is %s", val);
        return refuse(path, why);
    }
    v = json_object_get(cfg, "assistant_ensemble_weight");
    if (json_is_number(v) && !(json_number_value(v) > 0 && json_number_value(v) < 1))
        return refuse(path, "`assistant_ensemble_weight` must be in the open interval (0.0, 1.0)");
    v = json_object_get(cfg, "pad_token_id");
    if (json_is_integer(v) && json_integer_value(v) < 0)
        return refuse(path, "`pad_token_id` is negative");
    v = json_object_get(cfg, "cache_implementation");
    if (v && !json_is_null(v)) {
        static const char *const ok[] = {"static",
                                         "offloaded_static",
                                         "sliding_window",
                                         "hybrid",
                                         "hybrid_chunked",
                                         "offloaded_hybrid",
                                         "offloaded_hybrid_chunked",
                                         "dynamic",
                                         "offloaded",
                                         "quantized",
                                         "paged"};
        bool good = false;
        for (size_t i = 0; json_is_string(v) && i < sizeof ok / sizeof *ok; i++)
            good = good || !strcmp(json_string_value(v), ok[i]);
        if (!good) {
            show(v, val, sizeof val);
            snprintf(why, sizeof why, "invalid `cache_implementation` (%s)", val);
            return refuse(path, why);
        }
    }
    if (!sampling) {
        static const struct {
            const char *k;
            double dflt;
            bool any; /* any non-null value counts */
        } knobs[] = {{"temperature", 1.0, false},
                     {"top_p", 1.0, false},
                     {"min_p", 0, true},
                     {"top_h", 0, true},
                     {"typical_p", 1.0, false},
                     {"top_k", 50, false},
                     {"epsilon_cutoff", 0.0, false},
                     {"eta_cutoff", 0.0, false}};
        for (size_t i = 0; i < sizeof knobs / sizeof *knobs; i++)
            if (knobs[i].any ? set(cfg, knobs[i].k) : differs(cfg, knobs[i].k, knobs[i].dflt)) {
                show(json_object_get(cfg, knobs[i].k), val, sizeof val);
                snprintf(why, sizeof why,
                         "`do_sample` is not true but `%s` is %s (a sampling-only setting); set "
                         "\"do_sample\": true or drop `%s`",
                         knobs[i].k, val, knobs[i].k);
                return refuse(path, why);
            }
    }
    if (one_beam) {
        v = json_object_get(cfg, "early_stopping");
        bool es = v && !json_is_null(v) && !json_is_false(v);
        if (es || differs(cfg, "length_penalty", 1.0)) {
            const char *k = es ? "early_stopping" : "length_penalty";
            show(json_object_get(cfg, k), val, sizeof val);
            snprintf(why, sizeof why,
                     "`num_beams` is 1 but `%s` is %s (a beam-search-only setting); set num_beams "
                     "> 1 or drop `%s`",
                     k, val, k);
            return refuse(path, why);
        }
    }
    v = json_object_get(cfg, "num_return_sequences");
    if (json_is_number(v) && json_number_value(v) > 1) {
        if (one_beam && !sampling)
            return refuse(path, "`num_return_sequences` > 1 needs sampling or beam search");
        if (!one_beam && json_is_number(nb) && json_number_value(v) > json_number_value(nb))
            return refuse(path, "`num_return_sequences` is larger than `num_beams`");
    }
    if (json_is_false(json_object_get(cfg, "use_cache")))
        for (int i = 0; i < 2; i++) {
            const char *k = i ? "cache_config" : "cache_implementation";
            if (set(cfg, k)) {
                snprintf(why, sizeof why, "`use_cache` is false but `%s` is set", k);
                return refuse(path, why);
            }
        }
    if (!json_is_true(json_object_get(cfg, "return_dict_in_generate"))) {
        static const char *const flags[] = {"output_attentions", "output_hidden_states",
                                            "output_scores", "output_logits"};
        for (size_t i = 0; i < 4; i++)
            if (json_is_true(json_object_get(cfg, flags[i]))) {
                snprintf(why, sizeof why, "`%s` is true but `return_dict_in_generate` is not",
                         flags[i]);
                return refuse(path, why);
            }
    }
    json_t *sup = json_object_get(cfg, "suppress_tokens");
    if (json_is_array(sup)) {
        for (int f = 0; f < 2; f++) {
            const char *k = f ? "forced_eos_token_id" : "forced_bos_token_id";
            json_t *fv = json_object_get(cfg, k);
            size_t nf = json_is_array(fv) ? json_array_size(fv) : json_is_integer(fv) ? 1 : 0;
            bool all = nf > 0;
            for (size_t i = 0; all && i < nf; i++) {
                json_t *x = json_is_array(fv) ? json_array_get(fv, i) : fv;
                bool found = false;
                for (size_t j = 0; j < json_array_size(sup); j++)
                    found = found || json_equal(x, json_array_get(sup, j));
                all = found;
            }
            if (all) {
                snprintf(why, sizeof why, "every token in `%s` is also in `suppress_tokens`", k);
                return refuse(path, why);
            }
        }
    }
    return 0;
}

/* ---- stop tokens and the file ---------------------------------------- */

typedef struct {
    int64_t *v;
    size_t n, cap;
} idlist;

static int id_add(idlist *l, int64_t id)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == id)
            return 0;
    int rc = FZ_VEC_RESERVE(l->v, l->cap, l->n + 1);
    if (rc)
        return rc;
    l->v[l->n++] = id;
    return 0;
}

/* convert_tokens_to_ids with finalize's "not found" test (absent or unk). */
static int64_t stop_id(const fz_tok *t, const char *name)
{
    int64_t id = fz_tok_id(t, name);
    int64_t unk = t->roles[FZ_ROLE_UNK] ? fz_tok_id(t, t->roles[FZ_ROLE_UNK]) : -1;
    return id == unk ? -1 : id;
}

/* The stop list (FORMATS.md §7, DESIGN): a carried file's eos list first,
 * then config.json's EOS, then <|im_end|>/<|eot|>/<|end_of_turn|> when the
 * YAML named them, then the tokenizer's current EOS (unless
 * --no-auto-stop-tokens), then --stop-tokens; deduplicated, first wins. */
static int stop_list(const fz_meta_in *in, const fz_tok *t, const json_t *carried_eos,
                     int64_t source_eos, char *const *names, size_t n_names, idlist *l)
{
    static const char *const eot[] = {"<|im_end|>", "<|eot|>", "<|end_of_turn|>"};
    int rc = 0;
    size_t i;
    json_t *v;
    if (json_is_integer(carried_eos))
        rc = id_add(l, json_integer_value(carried_eos));
    json_array_foreach(carried_eos, i, v) if (rc == 0 && json_is_integer(v)) rc =
        id_add(l, json_integer_value(v));
    if (rc == 0 && source_eos >= 0)
        rc = id_add(l, source_eos);
    if (!in->no_auto_stop_tokens) {
        for (i = 0; rc == 0 && i < n_names; i++)
            for (size_t k = 0; k < 3; k++)
                if (!strcmp(names[i], eot[k])) {
                    int64_t id = stop_id(t, names[i]);
                    if (id < 0)
                        fz_log(FZ_LOG_WARNING, "Stop-token '%s' not found in tokenizer vocabulary",
                               names[i]);
                    else
                        rc = id_add(l, id);
                }
        int64_t cur = fz_tok_role_id(t, FZ_ROLE_EOS);
        if (rc == 0 && cur >= 0)
            rc = id_add(l, cur);
    }
    const char *s = in->stop_tokens ? in->stop_tokens : "";
    while (rc == 0 && *s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        while (n > 0 && isspace((unsigned char)*s))
            s++, n--;
        while (n > 0 && isspace((unsigned char)s[n - 1]))
            n--;
        if (n > 0) {
            char *name = strndup(s, n);
            if (!name)
                return fz_error_set(FZ_ENOMEM, "out of memory");
            int64_t id = stop_id(t, name);
            if (id < 0)
                rc = fz_error_set(FZ_EINVAL,
                                  "--stop-tokens: '%s' is not in the tokenizer's vocabulary", name);
            else
                rc = id_add(l, id);
            free(name);
        }
        if (!e)
            break;
        s = e + 1;
    }
    return rc;
}

int fz_genconfig_build(const fz_meta_in *in, const fz_tok *t, int64_t source_eos,
                       char *const *names, size_t n_names, fz_meta_out *out)
{
    json_t *base = NULL, *src = NULL, *eos = NULL;
    idlist l = {0};
    int rc = 0;
    const char *path = "generation_config.json";
    bool carried_list = false;

    if (in->gen_mode == FZ_GEN_CARRY && in->generation_config.data) {
        path = in->generation_config.path ? in->generation_config.path : path;
        if (!(src = fz_json_parse(in->generation_config.data, in->generation_config.len, path)))
            return FZ_EFORMAT;
        if (!json_is_object(src)) {
            rc = fz_error_set(FZ_EFORMAT, "%s: not a JSON object", path);
            goto done;
        }
        carried_list = json_is_array(json_object_get(src, "eos_token_id"));
    }
    if ((rc = stop_list(in, t, json_object_get(src, "eos_token_id"), source_eos, names, n_names,
                        &l)))
        goto done;
    if (in->gen_mode == FZ_GEN_NONE)
        goto done;
    if (in->gen_mode == FZ_GEN_PRESET) {
        path = in->preset.path ? in->preset.path : "preset";
        if (!in->preset.data) {
            rc = fz_error_set(FZ_ENOTFOUND, "%s: generation config preset not found", path);
            goto done;
        }
        json_t *p = fz_json_parse(in->preset.data, in->preset.len, path);
        if (!p) {
            rc = FZ_EFORMAT;
            goto done;
        }
        rc = fz_genconfig_translate(p, path, &base);
        json_decref(p);
        if (rc)
            goto done;
    } else {
        base = src ? json_incref(src) : json_object();
    }
    rc = FZ_ENOMEM;
    if (!base)
        goto done;
    /* overlay (reference §5.4): existing keys keep their place, new ones are
     * appended in the order bos, pad, eos */
    int64_t bos = fz_tok_role_id(t, FZ_ROLE_BOS), pad = fz_tok_role_id(t, FZ_ROLE_PAD);
    if (bos >= 0 && json_object_set_new(base, "bos_token_id", json_integer(bos)))
        goto done;
    if (pad >= 0 && json_object_set_new(base, "pad_token_id", json_integer(pad)))
        goto done;
    int64_t cur_eos = fz_tok_role_id(t, FZ_ROLE_EOS);
    if (l.n == 0 && cur_eos >= 0) {
        eos = json_integer(cur_eos);
    } else if (l.n == 1 && !carried_list) {
        eos = json_integer(l.v[0]);
    } else if (l.n >= 1) {
        eos = json_array();
        for (size_t i = 0; eos && i < l.n; i++)
            if (json_array_append_new(eos, json_integer(l.v[i])))
                goto done;
    }
    if (eos && json_object_set(base, "eos_token_id", eos))
        goto done;
    if ((rc = fz_genconfig_validate(base, path)))
        goto done;
    if ((rc = fz_json_emit(base, &FZ_JSON_PY(2), &out->generation_config_json)))
        goto done;
    out->has_generation_config = true;
done:
    if (rc == FZ_ENOMEM)
        fz_error_set(rc, "out of memory building generation_config.json");
    if (rc == 0) {
        out->stop_ids = l.v;
        out->n_stop_ids = l.n;
    } else {
        free(l.v);
    }
    json_decref(eos);
    json_decref(base);
    json_decref(src);
    return rc;
}
