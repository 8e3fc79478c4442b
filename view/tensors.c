/* The tensors of a view: which source tensor is the input embedding, the
 * output head and its bias (and whether embedding and head are tied), and one
 * recipe per output tensor (cast, vocabulary resize, quantized parts). */
#include <stdlib.h>
#include <string.h>

#include "formats/jsonout.h"
#include "util/error.h"
#include "util/hindex.h"
#include "view/internal.h"
#include "view/tree.h"

/* Names by which the input embedding and output head are known. */
static const char *const embed_names[] = {"model.embed_tokens.weight",
                                          "causal_lm.input_encoder.embedding.weight",
                                          "transformer.wte.weight",
                                          "model.decoder.embed_tokens.weight",
                                          "gpt_neox.embed_in.weight",
                                          "transformer.word_embeddings.weight",
                                          "model.tok_embeddings.weight",
                                          "tok_embeddings.weight",
                                          "embed_tokens.weight",
                                          "word_embeddings.weight",
                                          NULL};
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

/* ---- the embedding search ---------------------------------------------
 *
 * The vocabulary tensors are those with a dimension equal to the vocabulary
 * size V (config vocab_size, else the rows of an embedding known by name).
 * Known names decide first; otherwise the [V, hidden] matrices are told
 * apart by tie information (one storage, the index's param_sharing), name
 * hints, a sibling ".bias" (a Linear: the head) and, in .bin files, the
 * order of the state dict (embedding first, head last). The guess is
 * certain only when every vocabulary tensor is accounted for (embedding,
 * head, head bias or an alias of one) and the evidence agrees; the view
 * refuses a vocabulary change on an uncertain guess (fz_view_check_roles). */

/* Config keys that give the hidden size, in the order they are tried. */
static const char *const hidden_keys[] = {"hidden_size", "n_embd",    "d_model",        "dim",
                                          "hidden_dim",  "model_dim", "embed_dim",      "n_embed",
                                          "emb_dim",     "d_embed",   "embedding_size", NULL};

typedef struct {
    const fz_tensor *t;
    uint32_t file;
    size_t order; /* position in the state dict (files in order, tensors in file order) */
    int group;    /* aliases (one storage, or one param_sharing group) share it */
    bool matrix;  /* [V, hidden] */
    bool taken;   /* embedding, head, head bias or an alias of one */
} vtensor;

typedef struct {
    vtensor *v;
    size_t n;
    size_t total;          /* tensors in the state dict */
    const json_t *sharing; /* the index's metadata.param_sharing, or NULL */
} vset;

/* +1: the name says input embedding; -1: output head; 0: neither or both. */
static int name_hint(const char *name)
{
    static const char *const emb[] = {"emb",   "wte",    "tok",   "word",
                                      "input", "lookup", "table", NULL};
    static const char *const head[] = {"head",    "out",        "lm_",     "logit",
                                       "unembed", "classifier", "readout", NULL};
    char low[256];
    size_t n = strlen(name);
    if (n > 7 && strcmp(name + n - 7, ".weight") == 0)
        n -= 7;
    if (n >= sizeof low)
        n = sizeof low - 1;
    for (size_t i = 0; i < n; i++)
        low[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    low[n] = '\0';
    bool e = false, h = false;
    for (int i = 0; emb[i]; i++)
        e = e || strstr(low, emb[i]);
    for (int i = 0; head[i]; i++)
        h = h || strstr(low, head[i]);
    return e == h ? 0 : e ? 1 : -1;
}

/* "X.bias" next to "X.weight", 1-D with `rows` entries, or NULL. */
static const fz_tensor *sibling_bias(fz_view *v, const char *name, uint64_t rows, char **out)
{
    size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 7, ".weight") != 0)
        return NULL;
    char *b = malloc(n);
    if (!b)
        return NULL;
    memcpy(b, name, n - 6);
    strcpy(b + n - 6, "bias");
    const fz_tensor *t = find_tensor(v, b, NULL);
    if (t && t->ndim == 1 && t->shape[0] == rows) {
        *out = b;
        return t;
    }
    free(b);
    return NULL;
}

static bool shared_in_index(const json_t *sharing, const char *a, const char *b)
{
    size_t i, j;
    json_t *g, *x;
    json_array_foreach(sharing, i, g)
    {
        bool ha = false, hb = false;
        json_array_foreach(g, j, x)
        {
            const char *s = json_string_value(x);
            ha = ha || (s && !strcmp(s, a));
            hb = hb || (s && !strcmp(s, b));
        }
        if (ha && hb)
            return true;
    }
    return false;
}

/* Collect the tensors with a dimension equal to V; group aliases. */
static int collect(fz_view *v, uint64_t V, uint64_t H, vset *s)
{
    size_t total = 0;
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        total += v->tensors[f].n;
    s->total = total;
    s->v = calloc(total ? total : 1, sizeof *s->v);
    if (!s->v)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    size_t order = 0;
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        for (size_t i = 0; i < v->tensors[f].n; i++, order++) {
            const fz_tensor *t = &v->tensors[f].v[i];
            bool hit = false;
            for (int d = 0; d < t->ndim; d++)
                hit = hit || t->shape[d] == V;
            if (!hit)
                continue;
            vtensor *x = &s->v[s->n];
            *x = (vtensor){t, f, order, (int)s->n, false, false};
            x->matrix = t->ndim == 2 && t->shape[0] == V && (H == 0 || t->shape[1] == H) &&
                        fz_dtype_is_float(t->dtype);
            for (size_t k = 0; k < s->n; k++)
                if (x->matrix && s->v[k].matrix &&
                    ((s->v[k].file == f && same_view(s->v[k].t, t)) ||
                     shared_in_index(s->sharing, s->v[k].t->name, t->name))) {
                    x->group = s->v[k].group;
                    break;
                }
            s->n++;
        }
    return 0;
}

static vtensor *by_name(vset *s, const char *name)
{
    for (size_t i = 0; name && i < s->n; i++)
        if (!strcmp(s->v[i].t->name, name))
            return &s->v[i];
    return NULL;
}

/* Mark a group taken; the first other name in it (if any) for *alias. */
static void take_group(vset *s, int group, const char *except, const char **alias)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].group == group) {
            s->v[i].taken = true;
            if (alias && !*alias && strcmp(s->v[i].t->name, except) != 0)
                *alias = s->v[i].t->name;
        }
}

/* The first member (in state-dict order) of each untaken matrix group. */
static size_t free_groups(const vset *s, vtensor **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].matrix && !s->v[i].taken && s->v[i].group == (int)i) {
            if (n < max)
                out[n] = &s->v[i];
            n++;
        }
    return n;
}

/* Two unknown matrices: which is the embedding? Each piece of evidence votes;
 * certain when none disagrees and at least two agree. NULL if not certain. */
static vtensor *vote(fz_view *v, vtensor *a, vtensor *b, bool order_known)
{
    int for_a = 0, for_b = 0; /* votes for "a is the embedding" / "b is" */
    int ha = name_hint(a->t->name), hb = name_hint(b->t->name);
    for_a += (ha > 0) + (hb < 0);
    for_b += (ha < 0) + (hb > 0);
    char *bias = NULL;
    if (sibling_bias(v, b->t->name, b->t->shape[0], &bias))
        for_a++;
    free(bias);
    bias = NULL;
    if (sibling_bias(v, a->t->name, a->t->shape[0], &bias))
        for_b++;
    free(bias);
    if (order_known) {
        if (a->order < b->order)
            for_a++;
        else
            for_b++;
    }
    if (for_a >= 2 && for_b == 0)
        return a;
    if (for_b >= 2 && for_a == 0)
        return b;
    return NULL;
}

static int set_name(char **slot, const char *name)
{
    free(*slot);
    *slot = name ? strdup(name) : NULL;
    return name && !*slot ? fz_error_set(FZ_ENOMEM, "out of memory") : 0;
}

/* Describe the vocabulary tensors for the refusal message. */
static int describe_candidates(fz_view *v, const vset *s, uint64_t V, bool order_known,
                               const char *why)
{
    fz_buf b = FZ_BUF_INIT;
    int rc = fz_buf_printf(&b, "%s", why);
    if (rc == 0 && s->n == 0 && V > 0)
        rc = fz_buf_printf(&b, "; no tensor has a dimension of %llu (config vocab_size)",
                           (unsigned long long)V);
    if (rc == 0 && s->n)
        rc = fz_buf_printf(&b, "; tensors with a dimension of %llu:", (unsigned long long)V);
    for (size_t i = 0; i < s->n && i < 16 && rc == 0; i++) {
        const fz_tensor *t = s->v[i].t;
        rc = fz_buf_printf(&b, "%s %s [", i ? ";" : "", t->name);
        for (int d = 0; d < t->ndim && rc == 0; d++)
            rc = fz_buf_printf(&b, "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
        if (rc == 0)
            rc = fz_buf_printf(&b, "] %s", fz_dtype_torch_name(t->dtype));
        if (rc == 0 && order_known)
            rc = fz_buf_printf(&b, ", tensor %zu of %zu in the state dict", s->v[i].order + 1,
                               s->total);
        if (rc == 0 && s->v[i].group != (int)i)
            rc = fz_buf_printf(&b, ", same storage as %s", s->v[s->v[i].group].t->name);
    }
    if (rc == 0 && s->n > 16)
        rc = fz_buf_printf(&b, "; and %zu more", s->n - 16);
    if (rc == 0 && fz_buf_putc(&b, '\0') == 0) {
        free(v->roles_doubt);
        v->roles_doubt = (char *)b.data;
        return 0;
    }
    fz_buf_free(&b);
    return fz_error_set(FZ_ENOMEM, "out of memory");
}

/* --embedding-tensors EMB[,HEAD][,BIAS]: the names given, plus what follows
 * from them: a head over the embedding's storage and the head's ".bias". */
static int roles_from_option(fz_view *v)
{
    char *list = strdup(v->opts.embedding_tensors), *save = NULL;
    int rc = 0, k = 0;
    if (!list)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (char *t = strtok_r(list, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save), k++) {
        while (*t == ' ')
            t++;
        const fz_tensor *x = find_tensor(v, t, NULL);
        if (!x) {
            rc = fz_error_set(FZ_ENOTFOUND, "--embedding-tensors: no tensor named '%s' in %s", t,
                              v->src.ckpt);
            break;
        }
        rc = set_name(k == 0         ? &v->embed_name
                      : x->ndim == 1 ? &v->head_bias_name
                                     : &v->head_name,
                      t);
    }
    free(list);
    if (rc || !v->embed_name)
        return rc ? rc : fz_error_set(FZ_EUSAGE, "--embedding-tensors: give EMB[,HEAD]");
    uint32_t fe = 0;
    const fz_tensor *e = find_tensor(v, v->embed_name, &fe);
    if (!v->head_name) /* another name over the embedding's storage: the tied head */
        for (size_t i = 0; i < v->tensors[fe].n && !v->head_name; i++) {
            const fz_tensor *t = &v->tensors[fe].v[i];
            if (t != e && same_view(t, e) && (rc = set_name(&v->head_name, t->name)))
                return rc;
        }
    if (!v->head_bias_name) {
        const char *h = v->head_name ? v->head_name : v->embed_name;
        const fz_tensor *ht = find_tensor(v, h, NULL);
        sibling_bias(v, h, ht->ndim ? ht->shape[0] : 0, &v->head_bias_name);
    }
    v->roles_certain = true;
    return 0;
}

/* The search without --embedding-tensors (see the comment above). */
static int roles_by_search(fz_view *v, const json_t *config)
{
    vset s = {0};
    int rc = 0;
    const char *why = NULL;
    json_int_t cfg_vocab = json_integer_value(json_object_get(config, "vocab_size"));
    json_int_t hidden = 0;
    for (int i = 0; hidden_keys[i] && hidden <= 0; i++)
        hidden = json_integer_value(json_object_get(config, hidden_keys[i]));
    for (int i = 0; embed_names[i] && !v->embed_name; i++)
        if (find_tensor(v, embed_names[i], NULL) && (rc = set_name(&v->embed_name, embed_names[i])))
            return rc;
    for (int i = 0; head_names[i] && !v->head_name; i++)
        if (find_tensor(v, head_names[i], NULL) && (rc = set_name(&v->head_name, head_names[i])))
            return rc;
    /* V: the rows of the embedding known by name, else config vocab_size
     * when some tensor has that many rows */
    const fz_tensor *known = v->embed_name ? find_tensor(v, v->embed_name, NULL) : NULL;
    uint64_t V = known && known->ndim >= 1 ? known->shape[0] : 0;
    for (uint32_t f = 0; f < v->src.nfiles && !V && cfg_vocab > 0; f++)
        for (size_t i = 0; i < v->tensors[f].n && !V; i++)
            if (v->tensors[f].v[i].ndim >= 1 && v->tensors[f].v[i].shape[0] == (uint64_t)cfg_vocab)
                V = (uint64_t)cfg_vocab;
    uint64_t H = hidden > 0 ? (uint64_t)hidden : 0;
    if (known && known->ndim == 2)
        H = known->shape[1];
    bool order_known = v->src.kind == FZ_W_BIN || v->src.kind == FZ_W_BIN_INDEX;
    s.sharing = v->src.param_sharing;
    if (V == 0) {
        why = cfg_vocab > 0 ? "no tensor has config.json's vocab_size rows and no embedding has a "
                              "known name"
                            : "config.json has no vocab_size and no embedding has a known name";
        goto doubt;
    }
    if ((rc = collect(v, V, H, &s)))
        goto done;
    vtensor *e = by_name(&s, v->embed_name), *h = by_name(&s, v->head_name);
    vtensor *g[3];
    const char *alias = NULL, *halias = NULL;
    if (e)
        take_group(&s, e->group, e->t->name, h ? NULL : &alias);
    if (h)
        take_group(&s, h->group, h->t->name, e ? NULL : &halias);
    if (!e && !h) {
        size_t n = free_groups(&s, g, 3);
        if (n == 0) {
            why = "no [vocab_size, hidden] matrix";
            goto doubt;
        }
        if (n >= 3) {
            why = "more than two [vocab_size, hidden] matrices";
            goto doubt;
        }
        if (n == 1) {
            /* one matrix (maybe under several names): embedding and tied head */
            e = g[0];
            for (size_t i = 0; i < s.n; i++)
                if (s.v[i].group == g[0]->group && name_hint(s.v[i].t->name) > 0) {
                    e = &s.v[i];
                    break;
                }
        } else if (!(e = vote(v, g[0], g[1], order_known))) {
            why = "two [vocab_size, hidden] matrices and nothing tells which is the embedding";
            goto doubt;
        } else {
            h = e == g[0] ? g[1] : g[0];
            take_group(&s, h->group, h->t->name, NULL);
        }
        take_group(&s, e->group, e->t->name, h ? NULL : &alias);
        if ((rc = set_name(&v->embed_name, e->t->name)))
            goto done;
    } else if (!e) {
        if (halias) { /* another name over the head's storage: the tied embedding */
            e = by_name(&s, halias);
        } else if (free_groups(&s, g, 3) == 1) {
            e = g[0];
            take_group(&s, e->group, e->t->name, NULL);
        } else {
            why = "the head has a known name but no single [vocab_size, hidden] matrix is left "
                  "for the embedding";
            goto doubt;
        }
        if ((rc = set_name(&v->embed_name, e->t->name)))
            goto done;
    } else if (!h && !alias) {
        size_t n = free_groups(&s, g, 3);
        if (n > 1) {
            why = "the embedding has a known name but more than one other [vocab_size, hidden] "
                  "matrix could be the head";
            goto doubt;
        }
        if (n == 1) {
            h = g[0];
            take_group(&s, h->group, h->t->name, NULL);
        }
    }
    if (!v->head_name && (h || alias) && (rc = set_name(&v->head_name, h ? h->t->name : alias)))
        goto done;
    /* the head's bias: "X.bias" beside any name of the head (or of a lone
     * embedding: a Linear holding the one tied matrix) */
    const vtensor *hv = v->head_name ? by_name(&s, v->head_name) : e;
    for (size_t i = 0; hv && i < s.n && !v->head_bias_name; i++) {
        const vtensor *x = &s.v[i];
        if (x->matrix && x->group == hv->group)
            sibling_bias(v, x->t->name, V, &v->head_bias_name);
    }
    vtensor *b = by_name(&s, v->head_bias_name);
    if (b)
        b->taken = true;
    for (size_t i = 0; i < s.n; i++)
        if (!s.v[i].taken) {
            why = "a tensor with a vocab_size dimension is neither the embedding, the head nor "
                  "its bias";
            goto doubt;
        }
    v->roles_certain = true;
    goto done;
doubt:
    rc = describe_candidates(v, &s, V ? V : (uint64_t)(cfg_vocab > 0 ? cfg_vocab : 0), order_known,
                             why);
done:
    free(s.v);
    return rc;
}

/* Find the embedding, head and head bias, and whether embedding and head are
 * tied (see the search above; --embedding-tensors overrides it). */
int fz_view_find_roles(fz_view *v, const json_t *config, int *tie_out, uint64_t *embed_rows)
{
    const json_t *cfg_tie = json_object_get(config, "tie_word_embeddings");
    int rc = v->opts.embedding_tensors ? roles_from_option(v) : roles_by_search(v, config);
    if (rc)
        return rc;
    if (!v->roles_certain) {
        /* keep only what known names say (used when the vocabulary stays) */
        char *e = v->embed_name, *h = v->head_name;
        v->embed_name = v->head_name = NULL;
        for (int i = 0; embed_names[i] && e; i++)
            if (!strcmp(e, embed_names[i]))
                v->embed_name = e;
        for (int i = 0; head_names[i] && h; i++)
            if (!strcmp(h, head_names[i]))
                v->head_name = h;
        if (!v->embed_name)
            free(e);
        if (!v->head_name)
            free(h);
        free(v->head_bias_name);
        v->head_bias_name = NULL;
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
    *embed_rows = e && e->ndim ? e->shape[0] : 0;
    return 0;
}

int fz_view_check_roles(const fz_view *v)
{
    const fz_meta_out *m = &v->meta;
    if (!m->resize || v->roles_certain)
        return 0;
    fz_buf b = FZ_BUF_INIT;
    for (size_t i = 0; i < m->n_added_tokens && i < 4; i++)
        fz_buf_printf(&b, "%s%s", i ? ", " : " (", m->added_tokens[i]);
    if (m->n_added_tokens)
        fz_buf_printf(&b, "%s)", m->n_added_tokens > 4 ? ", ..." : "");
    int rc = fz_error_set(
        FZ_EINVAL,
        "%s: the vocabulary changes (%llu -> %llu tokens%s) but fzfs cannot tell which tensors "
        "are the input embedding and the output head: %s. Name them with --embedding-tensors "
        "EMB[,HEAD] (the head's bias is found by itself)%s",
        v->src.ckpt, (unsigned long long)m->old_vocab, (unsigned long long)m->new_vocab,
        b.data ? (char *)b.data : "", v->roles_doubt ? v->roles_doubt : "no candidates",
        m->n_role_added ? "; the tokenizer files name role tokens their vocabulary lacks, so "
                          "the vocabulary changes whatever the options"
                        : ", or keep the vocabulary (--skip-default-tokens, no --add-tokens)");
    fz_buf_free(&b);
    return rc;
}

/* Rules for a resized tensor with `src_rows` rows, from the token plan. A
 * head bias follows finalize (HF's resize): a new token's entry is the old
 * bias's mean whatever the token's init, and existing entries stay. */
static int rules_for(const fz_view *v, uint64_t src_rows, bool bias, fz_row_init **out, size_t *n)
{
    const fz_meta_out *m = &v->meta;
    fz_row_init *r = calloc(m->n_inits ? m->n_inits : 1, sizeof *r);
    if (!r)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < m->n_inits; i++) {
        const fz_row_init *in = &m->inits[i];
        if (in->row >= m->rows)
            continue;
        if (bias) {
            if (in->new_token && in->row < src_rows) /* a padding row taken by a new token */
                r[k++] = (fz_row_init){in->row, FZ_INIT_MEAN, 0, true};
        } else {
            if (in->kind == FZ_INIT_COPY && in->copy_from >= src_rows) {
                free(r);
                return fz_error_set(FZ_EINVAL,
                                    "init copy:%llu for token id %llu: the source row "
                                    "must be an existing token id (< %llu)",
                                    (unsigned long long)in->copy_from, (unsigned long long)in->row,
                                    (unsigned long long)src_rows);
            }
            r[k++] = *in;
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
fz_recipe *fz_view_new_recipe(fz_view *v, uint32_t f)
{
    v->recipe_file[v->nrecipes] = f;
    return &v->recipes[v->nrecipes++];
}

int fz_view_build_recipes(fz_view *v)
{
    size_t total = 0;
    int rc = 0;
    const char **recipe_role = NULL;
    fz_hindex views = {0};
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        total += v->tensors[f].n;
    /* a quantized weight becomes up to three tensors (recipes are ~450
     * bytes: no room for them without --quantize) */
    total = (v->quant ? 3 : 1) * total + 1;
    v->recipes = calloc(total, sizeof *v->recipes);
    v->outs = calloc(total, sizeof *v->outs);
    recipe_role = calloc(total, sizeof *recipe_role);
    uint32_t *rf = malloc(total * sizeof *rf);
    if (rf && fz_tree_keep(v, (uint8_t *)rf)) /* (which frees rf if it cannot keep it) */
        rf = NULL;
    v->recipe_file = rf;
    if (!v->recipes || !v->outs || !recipe_role || !rf || fz_hindex_init(&views, total)) {
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
            if (want != FZ_DT_COUNT && (t->dtype == FZ_DT_F32 || t->dtype == FZ_DT_F16 ||
                                        t->dtype == FZ_DT_BF16 || t->dtype == FZ_DT_F64))
                out = want;
            uint64_t rows = t->ndim ? t->shape[0] : 1;
            fz_row_init *rules = NULL;
            size_t nrules = 0;
            if (o->role && v->meta.resize && t->ndim >= 1) {
                if ((rc = rules_for(v, rows, !strcmp(o->role, "head bias"), &rules, &nrules)))
                    goto done;
                rows = v->meta.rows;
            }
            fz_recipe *rc_ = fz_view_new_recipe(v, f);
            rc = fz_recipe_init(rc_, v->files[f].fd, v->files[f].path, t, out, rows, rules, nrules);
            free(rules);
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
