/* --quantize in the view: which tensors become compressed-tensors parts,
 * and the quantization_config block (FORMATS.md §10, hf-formats.md §5a).
 * Every Linear weight (a 2-D floating "*.weight" that is neither the input
 * embedding nor the output head) is quantized unless --quantize-ignore
 * matches its module name; everything else stays a plain tensor. The
 * `ignore` list names every module left unquantized that transformers would
 * otherwise treat as a Linear target: the head (always), the regex's
 * matches, and weights whose input size is not a multiple of the group. */
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "view/internal.h"

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Module name of a "<m>.weight" tensor (caller frees). */
static char *module_of(const char *name)
{
    size_t n = strlen(name);
    char *m = malloc(n + 1);
    if (!m)
        return NULL;
    memcpy(m, name, n + 1);
    if (ends_with(m, ".weight"))
        m[n - 7] = '\0';
    return m;
}

static bool ignored_by_user(const fz_view *v, const char *module)
{
    if (!v->opts.quantize_ignore)
        return false;
    regex_t re;
    if (regcomp(&re, v->opts.quantize_ignore, REG_EXTENDED | REG_NOSUB) != 0)
        return false; /* validated when the options were checked */
    bool m = regexec(&re, module, 0, NULL, 0) == 0;
    regfree(&re);
    return m;
}

static bool linear_weight(const fz_tensor *t, const char *role)
{
    return t->ndim == 2 && !role && ends_with(t->name, ".weight") && fz_dtype_is_float(t->dtype) &&
           t->dtype != FZ_DT_F8_E4M3 && t->dtype != FZ_DT_F8_E5M2 && !strstr(t->name, "embed");
}

/* compressed-tensors (0.20) refuses to decompress a grouped weight whose
 * input size is not a multiple of the group size, so such a Linear is left
 * unquantized and listed in `ignore` rather than written unloadable. So is
 * an empty one ([out, 0] or [0, in]): it has no row to take a scale from. */
static bool ragged(const fz_view *v, const fz_tensor *t)
{
    return t->shape[0] == 0 || t->shape[1] == 0 ||
           (v->quant->group && t->shape[1] % v->quant->group != 0);
}

bool fz_view_quantizable(const fz_view *v, const fz_tensor *t, const char *role)
{
    if (!v->quant || !linear_weight(t, role) || ragged(v, t))
        return false;
    char *m = module_of(t->name);
    bool ok = m && !ignored_by_user(v, m);
    free(m);
    return ok;
}

static int push(fz_view *v, uint32_t f, const char *name, bool quantized)
{
    fz_outtensor *o = &v->outs[v->nouts];
    memset(o, 0, sizeof *o);
    if (!(o->name = strdup(name)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    o->shard = f;
    o->recipe = v->nrecipes - 1;
    o->quantized = quantized;
    v->nouts++;
    return 0;
}

int fz_view_add_quantized(fz_view *v, uint32_t f, const fz_tensor *t, fz_dtype val_dtype)
{
    const fz_qscheme *q = v->quant;
    char *m = module_of(t->name), *name = NULL;
    int rc = 0;
    size_t nl;
    if (!m)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    nl = strlen(m) + 16;
    if (!(name = malloc(nl))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    /* the quantized weight */
    rc = fz_recipe_init_quant(fz_view_new_recipe(v, f), v->files[f].fd, v->files[f].path, t,
                              val_dtype, q, FZ_PART_QWEIGHT);
    snprintf(name, nl, "%s.%s", m, q->fmt == FZ_QFMT_PACKED ? "weight_packed" : "weight");
    if (rc || (rc = push(v, f, name, true)))
        goto done;
    /* its scales */
    rc = fz_recipe_init_quant(fz_view_new_recipe(v, f), v->files[f].fd, v->files[f].path, t,
                              val_dtype, q, FZ_PART_QSCALE);
    snprintf(name, nl, "%s.weight_scale", m);
    if (rc || (rc = push(v, f, name, true)))
        goto done;
    if (q->fmt == FZ_QFMT_PACKED) {
        /* weight_shape: I64 [out, in] */
        uint8_t *d = malloc(16);
        uint64_t two = 2;
        if (!d) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        for (int k = 0; k < 2; k++)
            for (int b = 0; b < 8; b++)
                d[8 * k + b] = (uint8_t)(t->shape[k] >> (8 * b));
        snprintf(name, nl, "%s.weight_shape", m);
        rc =
            fz_recipe_init_const(fz_view_new_recipe(v, UINT32_MAX), t->name, FZ_DT_I64, 1, &two, d);
        if (rc || (rc = push(v, f, name, true)))
            goto done;
    }
done:
    free(m);
    free(name);
    return rc;
}

static json_t *args(int bits, bool is_float, const char *strategy, uint32_t group, bool dynamic,
                    const char *observer)
{
    json_t *a = json_object();
    json_object_set_new(a, "num_bits", json_integer(bits));
    json_object_set_new(a, "type", json_string(is_float ? "float" : "int"));
    json_object_set_new(a, "symmetric", json_true());
    json_object_set_new(a, "strategy", json_string(strategy));
    json_object_set_new(a, "group_size", group ? json_integer(group) : json_null());
    json_object_set_new(a, "dynamic", json_boolean(dynamic));
    json_object_set_new(a, "actorder", json_null());
    json_object_set_new(a, "block_structure", json_null());
    json_object_set_new(a, "observer", observer ? json_string(observer) : json_null());
    json_object_set_new(a, "observer_kwargs", json_object());
    return a;
}

int fz_view_quant_config(fz_view *v)
{
    const fz_qscheme *q = v->quant;
    json_t *ignore = json_array();
    char *m;
    /* the output head (named "lm_head" when the weights do not carry it: tied) */
    m = module_of(v->head_name ? v->head_name : "lm_head.weight");
    if (!m)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    json_array_append_new(ignore, json_string(m));
    free(m);
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        for (size_t i = 0; i < v->tensors[f].n; i++) {
            const fz_tensor *t = &v->tensors[f].v[i];
            const char *role = fz_view_role_of(v, t->name);
            if (!linear_weight(t, role) || fz_view_quantizable(v, t, role))
                continue;
            if ((m = module_of(t->name)))
                json_array_append_new(ignore, json_string(m));
            free(m);
        }
    json_t *group = json_object(), *groups = json_object(), *c = json_object();
    json_object_set_new(group, "targets", json_pack("[s]", "Linear"));
    json_object_set_new(
        group, "weights",
        args(q->bits, q->is_float, q->group ? "group" : "channel", q->group, false, "minmax"));
    json_object_set_new(group, "input_activations",
                        q->act_dynamic ? args(q->act_bits, q->act_float, "token", 0, true, NULL)
                                       : json_null());
    json_object_set_new(group, "output_activations", json_null());
    json_object_set_new(groups, "group_0", group);
    json_object_set_new(c, "quant_method", json_string("compressed-tensors"));
    json_object_set_new(c, "format", json_string(q->format));
    json_object_set_new(c, "quantization_status", json_string("compressed"));
    json_object_set_new(c, "config_groups", groups);
    json_object_set_new(c, "ignore", ignore);
    json_object_set_new(c, "kv_cache_scheme", json_null());
    json_object_set_new(c, "global_compression_ratio", json_null());
    json_object_set_new(c, "sparsity_config", json_object());
    json_object_set_new(c, "transform_config", json_object());
    v->quant_config = c;
    return 0;
}
