/* verify: one set of model weights against config.json. Which tensors have
 * one row per token (embedding, output head, head bias) is decided from the
 * roles the caller knows (the view's), module names, and the [vocab_size,
 * hidden] shape; then their rows, tie_word_embeddings and
 * quantization_config are checked against what is stored. */
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "verify/internal.h"

typedef enum { R_NONE, R_EMBED, R_HEAD, R_MATRIX, R_BIAS } vrole;

/* Last module names (the tensor name without ".weight") that say embedding
 * or head. Position and token-type embeddings are not among them. */
static const char *const embed_mods[] = {
    "embed_tokens", "wte",     "word_embeddings", "tok_embeddings",
    "embed_in",     "tok_emb", "token_embedding", "token_embeddings",
    "embedding",    NULL};
static const char *const head_mods[] = {"lm_head", "embed_out", NULL};

static bool last_module_is(const char *name, const char *const *list)
{
    size_t l = strlen(name);
    if (l < 7 || strcmp(name + l - 7, ".weight") != 0)
        return false;
    const char *end = name + l - 7, *start = end;
    while (start > name && start[-1] != '.')
        start--;
    for (; *list; list++)
        if (strlen(*list) == (size_t)(end - start) && !strncmp(start, *list, (size_t)(end - start)))
            return true;
    return false;
}

static bool is(const char *a, const char *b)
{
    return a && b && !strcmp(a, b);
}

static vrole role_of(const fz_vctx *c, const fz_tensor *t)
{
    if (is(t->name, c->o->embedding))
        return R_EMBED;
    if (is(t->name, c->o->head))
        return R_HEAD;
    if (is(t->name, c->o->head_bias))
        return R_BIAS;
    if (t->ndim != 2 || (c->hidden >= 0 && t->shape[1] != (uint64_t)c->hidden))
        return R_NONE;
    if (last_module_is(t->name, head_mods) || !strcmp(t->name, "output.weight"))
        return R_HEAD;
    if (last_module_is(t->name, embed_mods))
        return R_EMBED;
    if (c->vocab >= 0 && c->hidden >= 0 && c->vocab != c->hidden &&
        t->shape[0] == (uint64_t)c->vocab)
        return R_MATRIX;
    return R_NONE;
}

/* The set's tensors in state-dict order, and their indices sorted by name. */
typedef struct {
    const fz_vtensor *t;
    size_t n;
    size_t *byname;
} vset;

static int cmp_byname(const void *a, const void *b, void *base)
{
    const fz_vtensor *t = base;
    return strcmp(t[*(const size_t *)a].t->name, t[*(const size_t *)b].t->name);
}

static const fz_vtensor *find(const vset *s, const char *name)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int k = strcmp(s->t[s->byname[mid]].t->name, name);
        if (k == 0)
            return &s->t[s->byname[mid]];
        if (k < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool same_storage(const fz_vtensor *a, const fz_vtensor *b)
{
    return !strcmp(a->file, b->file) && a->t->storage_id == b->t->storage_id &&
           a->t->storage_offset == b->t->storage_offset;
}

/* a and b are in one group of the index's param_sharing. */
static bool shared(const json_t *sharing, const char *a, const char *b)
{
    size_t i, j;
    const json_t *g, *x;
    json_array_foreach(sharing, i, g)
    {
        bool ha = false, hb = false;
        json_array_foreach(g, j, x)
        {
            ha |= is(json_string_value(x), a);
            hb |= is(json_string_value(x), b);
        }
        if (ha && hb)
            return true;
    }
    return false;
}

/* The architecture has an output head (a causal or masked LM, seq2seq);
 * without "architectures", assume it has. */
static bool has_lm_head(const json_t *config)
{
    const json_t *archs = json_object_get(config, "architectures"), *a;
    size_t i;
    if (!json_array_size(archs))
        return true;
    json_array_foreach(archs, i, a)
    {
        const char *s = json_string_value(a);
        if (s && (strstr(s, "CausalLM") || strstr(s, "LMHead") ||
                  strstr(s, "ForConditionalGeneration") || strstr(s, "MaskedLM")))
            return true;
    }
    return false;
}

static void check_tie(fz_vctx *c, const fz_vtensor *t, size_t n, const vrole *roles,
                      const json_t *sharing)
{
    const json_t *tie = json_object_get(c->config, "tie_word_embeddings");
    const fz_vtensor *emb = NULL, *head = NULL;
    if (!json_is_boolean(tie))
        return; /* each model class has its own default */
    for (size_t i = 0; i < n; i++)
        if (roles[i] == R_EMBED && !emb)
            emb = &t[i];
    for (size_t i = 0; i < n; i++)
        if (roles[i] == R_MATRIX && !emb)
            emb = &t[i];
    for (size_t i = 0; i < n; i++)
        if ((roles[i] == R_HEAD || roles[i] == R_MATRIX) && &t[i] != emb && !head)
            head = &t[i];
    if (!emb)
        return;
    bool one = head && (same_storage(emb, head) || shared(sharing, emb->t->name, head->t->name));
    if (json_is_true(tie) && head && !one)
        fz_vfail(c, head->file,
                 "config.json says tie_word_embeddings: true but '%s' is stored "
                 "apart from the embedding '%s' (not the same storage, not in the index's "
                 "param_sharing): transformers ties them and drops its values",
                 head->t->name, emb->t->name);
    if (json_is_false(tie) && head && one)
        fz_vfail(c, "config.json",
                 "tie_word_embeddings is false but '%s' and '%s' are stored "
                 "as one tensor (saved tied)",
                 emb->t->name, head->t->name);
    if (json_is_false(tie) && !head && has_lm_head(c->config))
        fz_vfail(c, "config.json",
                 "tie_word_embeddings is false but no output head is stored "
                 "(only the embedding '%s'): the head would be randomly initialised",
                 emb->t->name);
}

/* The tensor `<module>.<suffix>` if stored. */
static const fz_vtensor *part(const vset *S, const char *module, size_t mlen, const char *suffix)
{
    char name[1024];
    if ((size_t)snprintf(name, sizeof name, "%.*s.%s", (int)mlen, module, suffix) >= sizeof name)
        return NULL;
    return find(S, name);
}

static void check_ct_module(fz_vctx *c, const vset *S, const fz_vtensor *scale, const char *format)
{
    const char *name = scale->t->name;
    size_t mlen = strlen(name) - strlen(".weight_scale");
    const fz_vtensor *packed = part(S, name, mlen, "weight_packed");
    const fz_vtensor *w = part(S, name, mlen, "weight");
    const fz_vtensor *shape = part(S, name, mlen, "weight_shape");
    if (packed) {
        if (packed->t->dtype != FZ_DT_I32 || packed->t->ndim != 2)
            fz_vfail(c, packed->file, "'%s' must be a 2-D int32 tensor", packed->t->name);
        if (!shape || shape->t->dtype != FZ_DT_I64 || shape->t->ndim != 1 ||
            shape->t->shape[0] != 2)
            fz_vfail(c, packed->file, "'%s' has no %.*s.weight_shape (int64, 2 values)",
                     packed->t->name, (int)mlen, name);
        if (w)
            fz_vfail(c, w->file, "'%s' is stored next to '%s'", w->t->name, packed->t->name);
    } else if (!w) {
        fz_vfail(c, scale->file, "'%s' quantizes nothing: no %.*s.weight or .weight_packed", name,
                 (int)mlen, name);
    } else if (is(format, "pack-quantized")) {
        fz_vfail(c, w->file,
                 "'%s' is not packed but quantization_config.format is "
                 "pack-quantized (expected %.*s.weight_packed)",
                 w->t->name, (int)mlen, name);
    } else if (is(format, "int-quantized") && w->t->dtype != FZ_DT_I8) {
        fz_vfail(c, w->file, "'%s' is %s but int-quantized weights are int8", w->t->name,
                 fz_dtype_st_name(w->t->dtype));
    } else if (is(format, "float-quantized") && w->t->dtype != FZ_DT_F8_E4M3 &&
               w->t->dtype != FZ_DT_F8_E5M2) {
        fz_vfail(c, w->file, "'%s' is %s but float-quantized weights are float8", w->t->name,
                 fz_dtype_st_name(w->t->dtype));
    }
}

/* quantization_config.ignore covers `module` (a name, or "re:" + a regex;
 * one POSIX cannot compile counts as covering it). */
static bool ignored(const json_t *ignore, const char *module)
{
    const json_t *x;
    size_t k;
    json_array_foreach(ignore, k, x)
    {
        const char *m = json_string_value(x);
        regex_t re;
        if (!m)
            continue;
        if (strncmp(m, "re:", 3) != 0) {
            if (!strcmp(m, module))
                return true;
            continue;
        }
        if (regcomp(&re, m + 3, REG_EXTENDED | REG_NOSUB) != 0)
            return true;
        bool hit = regexec(&re, module, 0, NULL, 0) == 0;
        regfree(&re);
        if (hit)
            return true;
    }
    return false;
}

/* Some config group targets "Linear". */
static bool targets_linear(const json_t *qc)
{
    const char *key;
    const json_t *g, *x;
    size_t i;
    json_object_foreach((json_t *)json_object_get(qc, "config_groups"), key, g) json_array_foreach(
        json_object_get(g, "targets"), i, x) if (is(json_string_value(x), "Linear")) return true;
    return false;
}

/* Linear weights stored plain that the config neither quantizes nor ignores:
 * a 2-D floating "<m>.weight" without one row per token and not an
 * embedding (view/quant.c's notion of a Linear target). */
static void check_unquantized(fz_vctx *c, const fz_vtensor *t, size_t n, const vrole *roles,
                              const json_t *qc, size_t nct)
{
    const json_t *ig = json_object_get(qc, "ignore");
    const fz_vtensor *first = NULL;
    size_t count = 0;
    if (!targets_linear(qc))
        return;
    for (size_t i = 0; i < n; i++) {
        const fz_tensor *x = t[i].t;
        size_t l = strlen(x->name);
        if (roles[i] != R_NONE || x->ndim != 2 || !fz_vends_with(x->name, ".weight") ||
            !fz_dtype_is_float(x->dtype) || x->dtype == FZ_DT_F8_E4M3 ||
            x->dtype == FZ_DT_F8_E5M2 || strstr(x->name, "embed"))
            continue;
        char *m = strndup(x->name, l - 7);
        if (!m) {
            c->err = fz_error_set(FZ_ENOMEM, "out of memory");
            return;
        }
        if (!ignored(ig, m)) {
            if (nct && count < FZ_VERIFY_LIST_MAX)
                fz_vfail(c, t[i].file,
                         "'%s' is stored unquantized but quantization_config "
                         "targets Linear layers and does not ignore '%s'",
                         x->name, m);
            if (!first)
                first = &t[i];
            count++;
        }
        free(m);
    }
    if (!nct && first)
        fz_vfail(c, "config.json",
                 "quantization_config is compressed-tensors but no stored tensor "
                 "is quantized (no *.weight_scale or *.weight_packed; '%s' and %zu more Linear "
                 "weights are plain and not in its ignore list)",
                 first->t->name, count - 1);
    else if (count > FZ_VERIFY_LIST_MAX)
        fz_vfail(c, "config.json", "... and %zu more Linear weights stored unquantized",
                 count - FZ_VERIFY_LIST_MAX);
}

static void check_quant(fz_vctx *c, const vset *S, const vrole *roles)
{
    const fz_vtensor *t = S->t;
    size_t n = S->n;
    const json_t *qc = json_object_get(c->config, "quantization_config");
    size_t nct = 0, ngptq = 0;
    const fz_vtensor *first = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *s = t[i].t->name;
        bool ct = fz_vends_with(s, ".weight_scale") || fz_vends_with(s, ".weight_packed");
        bool gptq = fz_vends_with(s, ".qweight");
        nct += ct;
        ngptq += gptq;
        if ((ct || gptq) && !first)
            first = &t[i];
    }
    if (!qc || json_is_null(qc)) {
        if (first)
            fz_vfail(c, first->file,
                     "'%s' (and %zu more) are quantized tensors but config.json "
                     "has no quantization_config: transformers would not load them",
                     first->t->name, nct + ngptq - 1);
        return;
    }
    const char *method = json_string_value(json_object_get(qc, "quant_method"));
    if (!method) {
        fz_vfail(c, "config.json", "quantization_config has no quant_method");
        return;
    }
    if (!strcmp(method, "gptq") || !strcmp(method, "awq")) {
        if (!ngptq)
            fz_vfail(c, "config.json",
                     "quantization_config is %s but no stored tensor is "
                     "quantized (no *.qweight)",
                     method);
        return;
    }
    if (strcmp(method, "compressed-tensors") != 0)
        return;
    const char *format = json_string_value(json_object_get(qc, "format"));
    const char *status = json_string_value(json_object_get(qc, "quantization_status"));
    if (is(format, "dense") || (status && strcmp(status, "compressed")))
        return; /* the weights are stored unquantized */
    for (size_t i = 0; i < n; i++) {
        const char *s = t[i].t->name;
        size_t mlen = strlen(s) - strlen(".weight_packed");
        if (fz_vends_with(s, ".weight_scale"))
            check_ct_module(c, S, &t[i], format);
        else if (fz_vends_with(s, ".weight_packed") && !part(S, s, mlen, "weight_scale"))
            fz_vfail(c, t[i].file, "'%s' has no %.*s.weight_scale", s, (int)mlen, s);
    }
    const json_t *ig = json_object_get(qc, "ignore"), *x;
    size_t k;
    json_array_foreach(ig, k, x)
    {
        const char *m = json_string_value(x);
        if (m && strncmp(m, "re:", 3) && part(S, m, strlen(m), "weight_scale"))
            fz_vfail(c, "config.json",
                     "quantization_config.ignore lists '%s' but it is stored "
                     "quantized",
                     m);
    }
    check_unquantized(c, t, n, roles, qc, nct);
}

void fz_vcheck_model(fz_vctx *c, const fz_vtensor *t, size_t n, const json_t *sharing)
{
    vrole *roles = calloc(n ? n : 1, sizeof *roles);
    vset set = {t, n, malloc((n ? n : 1) * sizeof(size_t))}, *S = &set;
    int64_t want = c->vocab;
    if (!roles || !set.byname) {
        free(roles);
        free(set.byname);
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++)
        set.byname[i] = i;
    qsort_r(set.byname, n, sizeof *set.byname, cmp_byname, (void *)t);
    bool found = false;
    for (size_t i = 0; i < n; i++)
        found |= (roles[i] = role_of(c, t[i].t)) != R_NONE;
    /* names that say nothing and vocab_size that disagrees: the tokenizer's length */
    for (size_t i = 0;
         i < n && !found && c->tok_len > 0 && c->hidden >= 0 && c->tok_len != c->hidden; i++)
        if (t[i].t->ndim == 2 && t[i].t->shape[0] == (uint64_t)c->tok_len &&
            t[i].t->shape[1] == (uint64_t)c->hidden && fz_vends_with(t[i].t->name, ".weight"))
            roles[i] = R_MATRIX;
    /* a head's bias: <head module>.bias, one row per token (a [vocab, hidden]
     * matrix with a bias is a head: embeddings have none) */
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(t[i].t->name);
        if ((roles[i] != R_HEAD && roles[i] != R_MATRIX) || l < 7 ||
            !fz_vends_with(t[i].t->name, ".weight"))
            continue;
        const fz_vtensor *b = part(S, t[i].t->name, l - 7, "bias");
        if (b && b->t->ndim == 1)
            roles[b - t] = R_BIAS;
    }
    for (size_t i = 0; i < n; i++) {
        if (roles[i] == R_NONE)
            continue;
        uint64_t rows = t[i].t->ndim ? t[i].t->shape[0] : 0;
        if (c->rows < 0 && roles[i] != R_BIAS)
            c->rows = (int64_t)rows;
        if (want < 0)
            want = c->rows;
        if (rows != (uint64_t)want)
            fz_vfail(c, t[i].file, "'%s' has %llu rows but %s %lld", t[i].t->name,
                     (unsigned long long)rows,
                     c->vocab >= 0 ? "config.json vocab_size is" : "the embedding has",
                     (long long)want);
    }
    if (c->config) {
        check_tie(c, t, n, roles, sharing);
        check_quant(c, S, roles);
    }
    free(roles);
    free(set.byname);
}
