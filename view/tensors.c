/* The tensors of a view: which source tensor is the input embedding, the
 * output head and its bias (and whether embedding and head are tied), and one
 * recipe per output tensor (cast, vocabulary resize, quantized parts). */
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/hindex.h"
#include "view/internal.h"

/* Names by which the input embedding and output head are known. */
static const char *const embed_names[] = {
    "model.embed_tokens.weight", "causal_lm.input_encoder.embedding.weight",
    "transformer.wte.weight", "model.decoder.embed_tokens.weight", "gpt_neox.embed_in.weight",
    "transformer.word_embeddings.weight", "model.tok_embeddings.weight", "tok_embeddings.weight",
    "embed_tokens.weight", "word_embeddings.weight", NULL};
static const char *const head_names[] = {"lm_head.weight", "embed_out.weight", "output.weight",
                                         "lm_head.linear.weight", NULL};

static const fz_tensor *find_tensor(fz_view *v, const char *name, uint32_t *file)
{
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        for (size_t i = 0; i < v->tensors[f].n; i++)
            if (strcmp(v->tensors[f].v[i].name, name) == 0) {
                if (file)
                    *file = f;
                return &v->tensors[f].v[i];
            }
    return NULL;
}

static bool same_view(const fz_tensor *a, const fz_tensor *b)
{
    if (a->storage_id != b->storage_id || a->storage_offset != b->storage_offset ||
        a->ndim != b->ndim || a->dtype != b->dtype)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || a->stride[i] != b->stride[i])
            return false;
    return true;
}

/* Find the embedding, head and head bias, and whether embedding and head are
 * tied, from names (or --embedding-tensors) and the config. */
int fz_view_find_roles(fz_view *v, const json_t *config, int *tie_out)
{
    const fz_view_opts *o = &v->opts;
    json_int_t cfg_vocab = json_integer_value(json_object_get(config, "vocab_size"));
    const json_t *cfg_tie = json_object_get(config, "tie_word_embeddings");
    if (o->embedding_tensors) {
        char *list = strdup(o->embedding_tensors), *save = NULL;
        if (!list)
            return fz_error_set(FZ_ENOMEM, "out of memory");
        int k = 0;
        for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save), k++) {
            while (*t == ' ')
                t++;
            const fz_tensor *x = find_tensor(v, t, NULL);
            if (!x) {
                int rc = fz_error_set(FZ_ENOTFOUND, "--embedding-tensors: no tensor named '%s' in "
                                      "%s", t, v->src.ckpt);
                free(list);
                return rc;
            }
            char **slot = k == 0 ? &v->embed_name : x->ndim == 1 ? &v->head_bias_name
                                                                  : &v->head_name;
            free(*slot);
            *slot = strdup(t);
        }
        free(list);
    } else {
        for (int i = 0; embed_names[i] && !v->embed_name; i++)
            if (find_tensor(v, embed_names[i], NULL))
                v->embed_name = strdup(embed_names[i]);
        for (int i = 0; head_names[i] && !v->head_name; i++)
            if (find_tensor(v, head_names[i], NULL))
                v->head_name = strdup(head_names[i]);
        /* Fall back to shape: a [vocab, hidden] matrix whose name says embedding. */
        for (uint32_t f = 0; f < v->src.nfiles && !v->embed_name && cfg_vocab > 0; f++)
            for (size_t i = 0; i < v->tensors[f].n && !v->embed_name; i++) {
                const fz_tensor *t = &v->tensors[f].v[i];
                if (t->ndim == 2 && t->shape[0] == (uint64_t)cfg_vocab &&
                    (strstr(t->name, "embed") || strstr(t->name, "wte")))
                    v->embed_name = strdup(t->name);
            }
        if (v->head_name) {
            char bias[1024];
            snprintf(bias, sizeof bias, "%.*sbias", (int)(strlen(v->head_name) - 6),
                     v->head_name);
            if (find_tensor(v, bias, NULL))
                v->head_bias_name = strdup(bias);
        }
    }
    uint32_t fe = 0, fh = 0;
    const fz_tensor *e = v->embed_name ? find_tensor(v, v->embed_name, &fe) : NULL;
    const fz_tensor *h = v->head_name ? find_tensor(v, v->head_name, &fh) : NULL;
    int tie;
    if (e && h)
        tie = (fe == fh && same_view(e, h)) || json_is_true(cfg_tie);
    else if (e)
        tie = json_is_boolean(cfg_tie) ? json_is_true(cfg_tie) : 1;
    else
        tie = json_is_true(cfg_tie);
    /* Tied: one storage under both names, or the head absent, or the config
     * says so and the two have the same shape and dtype (Forgather's sharded
     * save can put the two names in different shards, each with a copy). */
    bool same_shape = e && h && e->ndim == h->ndim && e->dtype == h->dtype &&
                      memcmp(e->shape, h->shape, sizeof e->shape[0] * (size_t)e->ndim) == 0;
    v->tied = e && (!h || (fe == fh && same_view(e, h)) || (json_is_true(cfg_tie) && same_shape));
    *tie_out = tie;
    return 0;
}

/* Rules for a resized tensor with `src_rows` rows, from the token plan. */
static int rules_for(const fz_view *v, uint64_t src_rows, fz_row_rule **out, size_t *n)
{
    const fz_meta_out *m = &v->meta;
    fz_row_rule *r = calloc(m->n_inits ? m->n_inits : 1, sizeof *r);
    if (!r)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < m->n_inits; i++) {
        const fz_row_init *in = &m->inits[i];
        if (in->row >= m->new_vocab)
            continue;
        if (in->kind == FZ_INIT_MEAN) {
            if (in->row < src_rows)
                continue; /* mean on an existing row: finalize leaves it as is */
            r[k++] = (fz_row_rule){in->row, FZ_ROW_MEAN, 0};
        } else if (in->kind == FZ_INIT_ZERO) {
            r[k++] = (fz_row_rule){in->row, FZ_ROW_ZERO, 0};
        } else {
            if (in->copy_from >= src_rows) {
                free(r);
                return fz_error_set(FZ_EINVAL, "init copy:%llu for token id %llu: the source row "
                                    "must be an existing token id (< %llu)",
                                    (unsigned long long)in->copy_from,
                                    (unsigned long long)in->row, (unsigned long long)src_rows);
            }
            r[k++] = (fz_row_rule){in->row, FZ_ROW_SOURCE, in->copy_from};
        }
    }
    *out = r;
    *n = k;
    return 0;
}

const char *fz_view_role_of(const fz_view *v, const char *name)
{
    if (v->embed_name && strcmp(name, v->embed_name) == 0)
        return "embedding";
    if (v->head_name && strcmp(name, v->head_name) == 0)
        return "head";
    if (v->head_bias_name && strcmp(name, v->head_bias_name) == 0)
        return "head bias";
    return NULL;
}

/* An earlier plain recipe of the same file over the same tensor view. */
typedef struct {
    const fz_view *v;
    const fz_tensor *t;
    uint32_t first_recipe;
} alias_ctx;

static bool is_alias_of(const void *ctx, uint32_t r)
{
    const alias_ctx *a = ctx;
    return r >= a->first_recipe && a->v->recipes[r].part == FZ_PART_PLAIN &&
           same_view(&a->v->recipes[r].src, a->t);
}

static uint64_t view_hash(const fz_tensor *t)
{
    uint64_t k[2] = {t->storage_id, t->storage_offset};
    return fz_hindex_hash(k, sizeof k);
}

/* One recipe per distinct source tensor view; aliases share it (found
 * through a hash index of the recipes: building stays linear in the
 * tensor count). */
int fz_view_build_recipes(fz_view *v)
{
    size_t total = 0;
    int rc = 0;
    const char **recipe_role = NULL;
    fz_hindex views = {0};
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        total += v->tensors[f].n;
    total = 3 * total + 1; /* a quantized weight becomes up to three tensors */
    v->recipes = calloc(total, sizeof *v->recipes);
    v->outs = calloc(total, sizeof *v->outs);
    recipe_role = calloc(total, sizeof *recipe_role);
    if (!v->recipes || !v->outs || !recipe_role || fz_hindex_init(&views, total)) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    fz_dtype want = FZ_DT_COUNT;
    if (v->opts.dtype && fz_dtype_from_torch_name(v->opts.dtype, &want) != 0) {
        rc = fz_error_set(FZ_EUSAGE, "--dtype %s: unknown dtype", v->opts.dtype);
        goto done;
    }
    for (uint32_t f = 0; f < v->src.nfiles; f++) {
        fz_tensor_list *l = &v->tensors[f];
        uint32_t first_recipe = v->nrecipes;
        for (size_t i = 0; i < l->n; i++) {
            const fz_tensor *t = &l->v[i];
            const char *role = fz_view_role_of(v, t->name);
            if (fz_view_quantizable(v, t, role)) {
                fz_dtype val = want != FZ_DT_COUNT ? want : t->dtype;
                if ((rc = fz_view_add_quantized(v, f, t, val)))
                    goto done;
                continue;
            }
            fz_outtensor *o = &v->outs[v->nouts];
            o->name = strdup(t->name);
            if (!o->name) {
                rc = fz_error_set(FZ_ENOMEM, "out of memory");
                goto done;
            }
            o->shard = f;
            o->role = role;
            v->nouts++;
            /* An alias of an earlier tensor of this file shares its recipe
             * (and the first role any of its names has). */
            alias_ctx ac = {v, t, first_recipe};
            uint32_t r = fz_hindex_find(&views, view_hash(t), is_alias_of, &ac);
            if (r != UINT32_MAX) {
                o->recipe = r;
                if (!o->role)
                    o->role = recipe_role[r];
                else if (!recipe_role[r])
                    recipe_role[r] = o->role;
                continue;
            }
            fz_dtype out = t->dtype;
            if (want != FZ_DT_COUNT &&
                (t->dtype == FZ_DT_F32 || t->dtype == FZ_DT_F16 || t->dtype == FZ_DT_BF16 ||
                 t->dtype == FZ_DT_F64))
                out = want;
            uint64_t rows = t->ndim ? t->shape[0] : 1;
            fz_row_rule *rules = NULL;
            size_t nrules = 0;
            if (o->role && v->meta.n_added > 0 && t->ndim >= 1) {
                if ((rc = rules_for(v, rows, &rules, &nrules)))
                    goto done;
                rows = v->meta.new_vocab;
            }
            fz_recipe *rc_ = &v->recipes[v->nrecipes];
            rc = fz_recipe_init(rc_, v->files[f].fd, v->files[f].path, t, out, rows, rules,
                                nrules);
            free(rules);
            v->nrecipes++;
            if (rc || (rc = fz_hindex_put(&views, view_hash(t), v->nrecipes - 1)))
                goto done;
            o->recipe = v->nrecipes - 1;
            recipe_role[o->recipe] = o->role;
            if (o->role && !strcmp(o->role, "embedding"))
                v->embed_recipe = o->recipe;
        }
    }
done:
    free(recipe_role);
    fz_hindex_free(&views);
    return rc;
}

/* A tied head kept as its own copy in the source (another shard, another
 * storage) is made from the embedding's recipe: resized and computed once,
 * listed with it in param_sharing; in safetensors written once, under the
 * embedding's name. It stays in its own shard (shards mirror the source). */
void fz_view_merge_tied_head(fz_view *v)
{
    fz_outtensor *e = NULL, *h = NULL;
    if (!v->tied || !v->embed_name || !v->head_name)
        return;
    for (uint32_t i = 0; i < v->nouts; i++) {
        if (!strcmp(v->outs[i].name, v->embed_name))
            e = &v->outs[i];
        if (!strcmp(v->outs[i].name, v->head_name))
            h = &v->outs[i];
    }
    if (!e || !h || e->recipe == h->recipe || e->quantized || h->quantized)
        return;
    h->recipe = e->recipe;
}


typedef struct {
    const fz_outtensor *outs;
    uint32_t i;
} shard_ctx;

/* Out tensor k has out i's recipe and shard. */
static bool same_record(const void *ctx, uint32_t k)
{
    const shard_ctx *a = ctx;
    return a->outs[k].recipe == a->outs[a->i].recipe && a->outs[k].shard == a->outs[a->i].shard;
}

static uint64_t record_hash(const fz_outtensor *o)
{
    uint32_t k[2] = {o->recipe, o->shard};
    return fz_hindex_hash(k, sizeof k);
}

int fz_view_assign_shards(fz_view *v)
{
    uint64_t max = v->opts.max_shard_size;
    uint32_t *last_shard = NULL;
    fz_hindex records = {0};
    int rc = 0;
    if (fz_hindex_init(&records, v->nouts)) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if (max == 0) {
        v->nshards = v->src.nfiles;
    } else {
        /* last_shard[r]: the shard recipe r was last counted in */
        if (!(last_shard = malloc((v->nrecipes ? v->nrecipes : 1) * sizeof *last_shard))) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        for (uint32_t r = 0; r < v->nrecipes; r++)
            last_shard[r] = UINT32_MAX;
        uint32_t shard = 0;
        uint64_t bytes = 0;
        for (uint32_t i = 0; i < v->nouts; i++) {
            fz_outtensor *o = &v->outs[i];
            bool counted = v->opts.safetensors ? fz_view_st_emits(v, i) : true;
            /* a name over a record already in this shard adds no bytes (.bin) */
            if (counted && !v->opts.safetensors) {
                counted = last_shard[o->recipe] != shard;
                last_shard[o->recipe] = shard;
            }
            o->shard = shard;
            if (counted)
                bytes += v->recipes[o->recipe].nbytes;
            if (bytes > max && i + 1 < v->nouts) {
                shard++;
                bytes = 0;
            }
        }
        v->nshards = v->nouts ? shard + 1 : 1;
    }
    /* an alias: the same recipe earlier in the same shard (one .bin record) */
    for (uint32_t i = 0; i < v->nouts; i++) {
        shard_ctx sc = {v->outs, i};
        uint64_t h = record_hash(&v->outs[i]);
        v->outs[i].alias = fz_hindex_find(&records, h, same_record, &sc) != UINT32_MAX;
        if (!v->outs[i].alias && (rc = fz_hindex_put(&records, h, i)))
            goto done;
    }
done:
    free(last_shard);
    fz_hindex_free(&records);
    return rc;
}
