/* The add-tokens YAML (FORMATS.md §6) and finalize's add_tokens_to_tokenizer
 * (reference/forgather-finalize.md §3.2). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "transform/meta_int.h"
#include "util/error.h"
#include "util/log.h"
#include "util/vec.h"

void fz_addtok_spec_free(fz_addtok_spec *spec)
{
    for (int r = 0; r < FZ_ROLE_N; r++)
        free(spec->roles[r].token);
    for (size_t i = 0; i < spec->n_special; i++)
        free(spec->special[i]);
    for (size_t i = 0; i < spec->n_regular; i++)
        free(spec->regular[i]);
    free(spec->special);
    free(spec->regular);
    memset(spec, 0, sizeof *spec);
}

int fz_addtok_default(fz_addtok_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    fz_role_spec *p = &spec->roles[FZ_ROLE_PAD];
    p->present = true;
    p->init = FZ_INIT_ZERO;
    p->if_missing = true;
    if (!(p->token = strdup("[PAD]")))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    return 0;
}

/* ---- YAML ------------------------------------------------------------ */

typedef enum { Y_STR, Y_NULL, Y_BOOL_T, Y_BOOL_F, Y_NUMBER } yscalar;

/* How PyYAML's (YAML 1.1) resolver would type a scalar: quoted scalars are
 * strings; plain ones may be null, bool or a number. */
static yscalar scalar_kind(const yaml_node_t *n)
{
    const char *s = (const char *)n->data.scalar.value;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return Y_STR;
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    static const char *const trues[] = {"true", "True", "TRUE", "yes", "Yes",
                                        "YES",  "on",   "On",   "ON"};
    static const char *const falses[] = {"false", "False", "FALSE", "no", "No",
                                         "NO",    "off",   "Off",   "OFF"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++)
        if (!strcmp(s, nulls[i]))
            return Y_NULL;
    for (size_t i = 0; i < sizeof trues / sizeof *trues; i++)
        if (!strcmp(s, trues[i]))
            return Y_BOOL_T;
    for (size_t i = 0; i < sizeof falses / sizeof *falses; i++)
        if (!strcmp(s, falses[i]))
            return Y_BOOL_F;
    if (!strcmp(s, ".inf") || !strcmp(s, "-.inf") || !strcmp(s, ".nan") || !strcmp(s, ".NaN"))
        return Y_NUMBER;
    char *end;
    if ((s[0] >= '0' && s[0] <= '9') || s[0] == '-' || s[0] == '+' || s[0] == '.') {
        strtod(s, &end);
        if (*end == '\0' && end != s)
            return Y_NUMBER;
    }
    return Y_STR;
}

typedef struct {
    yaml_document_t *doc;
    const char *path;
} yctx;

static yaml_node_t *node(yctx *c, int idx)
{
    return yaml_document_get_node(c->doc, idx);
}

/* A string value: a scalar that resolves to a string. */
static int get_string(yctx *c, yaml_node_t *n, const char *key, char **out)
{
    if (!n || n->type != YAML_SCALAR_NODE || scalar_kind(n) != Y_STR)
        return fz_error_set(FZ_EINVAL, "%s: %s: must be a string", c->path, key);
    if (n->data.scalar.length == 0)
        return fz_error_set(FZ_EINVAL, "%s: %s: empty token", c->path, key);
    if (memchr(n->data.scalar.value, 0, n->data.scalar.length))
        return fz_error_set(FZ_EINVAL, "%s: %s: token contains a NUL character", c->path, key);
    if (!(*out = strdup((const char *)n->data.scalar.value)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    return 0;
}

static int parse_init(yctx *c, const char *key, const char *s, fz_role_spec *r)
{
    if (!strcmp(s, "mean")) {
        r->init = FZ_INIT_MEAN;
    } else if (!strcmp(s, "zero")) {
        r->init = FZ_INIT_ZERO;
    } else if (!strncmp(s, "copy:", 5) && s[5] >= '0' && s[5] <= '9') {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s + 5, &end, 10);
        if (*end)
            return fz_error_set(FZ_EINVAL, "%s: %s.init: bad init '%s' (mean, zero or copy:<id>)",
                                c->path, key, s);
        if (errno == ERANGE || v > INT64_MAX)
            return fz_error_set(FZ_EINVAL,
                                "%s: %s.init: '%s': the token id is too large (copy:<id> "
                                "takes an id of the existing vocabulary)",
                                c->path, key, s);
        r->init = FZ_INIT_COPY;
        r->copy_from = v;
    } else {
        return fz_error_set(FZ_EINVAL, "%s: %s.init: bad init '%s' (mean, zero or copy:<id>)",
                            c->path, key, s);
    }
    return 0;
}

static int parse_role(yctx *c, const char *key, yaml_node_t *v, int role, fz_role_spec *r)
{
    char sub[96];
    int rc;
    r->present = true;
    r->init = role == FZ_ROLE_PAD ? FZ_INIT_ZERO : FZ_INIT_MEAN;
    if (v->type == YAML_SCALAR_NODE)
        return get_string(c, v, key, &r->token);
    if (v->type != YAML_MAPPING_NODE)
        return fz_error_set(FZ_EINVAL,
                            "%s: %s: must be a string or a mapping {token, init, if_missing}",
                            c->path, key);
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(c, p->key), *val = node(c, p->value);
        if (!k || k->type != YAML_SCALAR_NODE)
            return fz_error_set(FZ_EINVAL, "%s: %s: keys must be strings", c->path, key);
        const char *ks = (const char *)k->data.scalar.value;
        snprintf(sub, sizeof sub, "%s.%s", key, ks);
        if (!strcmp(ks, "token")) {
            free(r->token);
            r->token = NULL;
            if ((rc = get_string(c, val, sub, &r->token)))
                return rc;
        } else if (!strcmp(ks, "init")) {
            if (!val || val->type != YAML_SCALAR_NODE || scalar_kind(val) != Y_STR)
                return fz_error_set(FZ_EINVAL, "%s: %s: must be a string (mean, zero or copy:<id>)",
                                    c->path, sub);
            if ((rc = parse_init(c, key, (const char *)val->data.scalar.value, r)))
                return rc;
        } else if (!strcmp(ks, "if_missing")) {
            yscalar kd = val && val->type == YAML_SCALAR_NODE ? scalar_kind(val) : Y_STR;
            if (kd != Y_BOOL_T && kd != Y_BOOL_F)
                return fz_error_set(FZ_EINVAL, "%s: %s: must be true or false", c->path, sub);
            r->if_missing = kd == Y_BOOL_T;
        } else {
            return fz_error_set(FZ_EINVAL, "%s: %s: unknown key (token, init, if_missing)", c->path,
                                sub);
        }
    }
    if (!r->token)
        return fz_error_set(FZ_EINVAL, "%s: %s: missing 'token'", c->path, key);
    return 0;
}

static int parse_list(yctx *c, const char *key, yaml_node_t *v, char ***out, size_t *n)
{
    char sub[96];
    if (v->type == YAML_SCALAR_NODE && scalar_kind(v) == Y_NULL)
        return 0; /* "special_tokens:" with nothing: an empty list */
    if (v->type != YAML_SEQUENCE_NODE)
        return fz_error_set(FZ_EINVAL, "%s: %s: must be a list of strings", c->path, key);
    size_t cnt = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (cnt == 0)
        return 0;
    if (!(*out = calloc(cnt, sizeof **out)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        snprintf(sub, sizeof sub, "%s[%zu]", key, i);
        int rc = get_string(c, node(c, v->data.sequence.items.start[i]), sub, &(*out)[i]);
        if (rc)
            return rc;
        (*n)++;
    }
    return 0;
}

/* An add-tokens file is a mapping of roles and two lists: a few levels
 * deep and a few KiB. libyaml's scanner costs O(depth^2) (100k levels: a
 * minute), so the depth is checked on the event stream, which stops at
 * the cap, before the document is loaded; the size before anything. */
#define FZ_ADDTOK_MAX_BYTES (1u << 20)
#define FZ_ADDTOK_MAX_DEPTH 64

static int check_shape(const char *text, size_t len, const char *path)
{
    yaml_parser_t p;
    yaml_event_t e;
    int depth = 0, rc = 0;
    if (len > FZ_ADDTOK_MAX_BYTES)
        return fz_error_set(FZ_EINVAL,
                            "%s: %zu bytes; an add-tokens file is at most 1 MiB (a mapping of "
                            "roles and two lists of tokens): is this the right file?",
                            path, len);
    if (!yaml_parser_initialize(&p))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    /* (A syntax error ends the walk: the load below reports it.) */
    while (rc == 0 && yaml_parser_parse(&p, &e)) {
        yaml_event_type_t t = e.type;
        if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT)
            depth++;
        else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT)
            depth--;
        if (depth > FZ_ADDTOK_MAX_DEPTH)
            rc = fz_error_set(FZ_EINVAL,
                              "%s: line %zu: nested deeper than %d levels; an add-tokens file "
                              "is a mapping of roles and two lists of tokens",
                              path, e.start_mark.line + 1, FZ_ADDTOK_MAX_DEPTH);
        yaml_event_delete(&e);
        if (t == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&p);
    return rc;
}

/* The file is one document (as yaml.safe_load requires): a second one,
 * even empty, is an error rather than silently ignored. */
static int no_second_document(yaml_parser_t *parser, const char *path)
{
    yaml_document_t next;
    if (!yaml_parser_load(parser, &next))
        return fz_error_set(FZ_EFORMAT, "%s: invalid YAML at line %zu column %zu: %s", path,
                            parser->problem_mark.line + 1, parser->problem_mark.column + 1,
                            parser->problem ? parser->problem : "parse error");
    yaml_node_t *root = yaml_document_get_root_node(&next);
    size_t line = next.start_mark.line + 1;
    yaml_document_delete(&next);
    if (root)
        return fz_error_set(FZ_EFORMAT,
                            "%s: a second YAML document starts at line %zu; the "
                            "file must hold one document (remove the '---' and what follows, "
                            "or merge it into the first)",
                            path, line);
    return 0;
}

int fz_addtok_parse(const char *text, size_t len, const char *path, fz_addtok_spec *spec)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    bool have_doc = false;
    int rc = 0;
    yctx c = {&doc, path};
    memset(spec, 0, sizeof *spec);
    if ((rc = check_shape(text, len, path)))
        return rc;
    if (!yaml_parser_initialize(&parser))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = fz_error_set(FZ_EFORMAT, "%s: invalid YAML at line %zu column %zu: %s", path,
                          parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                          parser.problem ? parser.problem : "parse error");
        goto done;
    }
    have_doc = true;
    if ((rc = no_second_document(&parser, path)))
        goto done;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || (root->type == YAML_SCALAR_NODE && scalar_kind(root) == Y_NULL))
        goto done; /* empty file: nothing to add */
    if (root->type != YAML_MAPPING_NODE) {
        rc = fz_error_set(FZ_EINVAL, "%s: the document must be a mapping", path);
        goto done;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
         rc == 0 && p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(&c, p->key), *v = node(&c, p->value);
        if (!k || k->type != YAML_SCALAR_NODE || !v) {
            rc = fz_error_set(FZ_EINVAL, "%s: keys must be strings", path);
            break;
        }
        const char *ks = (const char *)k->data.scalar.value;
        int role = -1;
        for (int r = 0; r < FZ_ROLE_N; r++)
            if (!strcmp(ks, fz_role_keys[r]))
                role = r;
        if (role >= 0) {
            if (spec->roles[role].present)
                rc = fz_error_set(FZ_EINVAL, "%s: %s: given twice", path, ks);
            else
                rc = parse_role(&c, ks, v, role, &spec->roles[role]);
        } else if (!strcmp(ks, "special_tokens")) {
            rc = spec->special ? fz_error_set(FZ_EINVAL, "%s: %s: given twice", path, ks)
                               : parse_list(&c, ks, v, &spec->special, &spec->n_special);
        } else if (!strcmp(ks, "regular_tokens")) {
            rc = spec->regular ? fz_error_set(FZ_EINVAL, "%s: %s: given twice", path, ks)
                               : parse_list(&c, ks, v, &spec->regular, &spec->n_regular);
        } else {
            rc = fz_error_set(FZ_EINVAL,
                              "%s: %s: unknown key (bos_token, eos_token, pad_token, unk_token, "
                              "special_tokens, regular_tokens)",
                              path, ks);
        }
    }
done:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc)
        fz_addtok_spec_free(spec);
    return rc;
}

/* ---- the algorithm --------------------------------------------------- */

typedef struct {
    fz_row_init *v; /* row = the token id; new_token unused */
    size_t n, cap;
} init_list;

/* token_inits[id] = init, with Python dict semantics (an update keeps the
 * entry's position). */
static int init_set(init_list *l, int64_t id, fz_init_kind kind, uint64_t copy_from)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].row == (uint64_t)id) {
            l->v[i].kind = kind;
            l->v[i].copy_from = copy_from;
            return 0;
        }
    int rc = FZ_VEC_RESERVE(l->v, l->cap, l->n + 1);
    if (rc)
        return rc;
    l->v[l->n++] = (fz_row_init){(uint64_t)id, kind, copy_from, false};
    return 0;
}

/* finalize's add_tokens_to_tokenizer, step by step:
 *  1. each named role (fixed order bos, eos, pad, unk): skipped when
 *     if_missing and the role is set; reassigned to a string already in the
 *     vocabulary -> the YAML init applies to that existing row; reassigned to
 *     a new string -> the new row copies the old role's row (the YAML init is
 *     ignored); an unset role -> the YAML init; same string -> nothing.
 *  2. the changed roles are registered at once (add_special_tokens), new
 *     strings getting ids from next_id in role order;
 *  3. special_tokens not already in the additional-special list are added
 *     as special and replace that list;
 *  4. regular_tokens not in the vocabulary are added as regular tokens. */
int fz_addtok_apply(fz_tok *t, const fz_addtok_spec *spec, fz_row_init **inits, size_t *n_inits)
{
    init_list l = {0};
    bool named[FZ_ROLE_N] = {0}, has_named_init[FZ_ROLE_N] = {0};
    fz_row_init named_init[FZ_ROLE_N];
    int rc = 0;
    int64_t id;
    json_t *special = NULL;

    for (int r = 0; r < FZ_ROLE_N; r++) {
        const fz_role_spec *s = &spec->roles[r];
        const char *old = t->roles[r];
        if (!s->present)
            continue;
        if (s->if_missing && old) {
            fz_log(FZ_LOG_INFO, "%s already set to '%s' (if_missing=true)", fz_role_keys[r], old);
        } else if (old && strcmp(old, s->token) != 0) {
            int64_t old_id = fz_tok_role_id(t, r);
            named[r] = true;
            if ((id = fz_tok_id(t, s->token)) >= 0) {
                if ((rc = init_set(&l, id, s->init, s->copy_from)))
                    goto done;
            } else if (old_id >= 0) {
                has_named_init[r] = true;
                named_init[r] = (fz_row_init){0, FZ_INIT_COPY, (uint64_t)old_id, false};
            }
        } else if (!old) {
            named[r] = true;
            has_named_init[r] = true;
            named_init[r] = (fz_row_init){0, s->init, s->copy_from, false};
        }
    }
    for (int r = 0; r < FZ_ROLE_N; r++) {
        if (!named[r])
            continue;
        char *dup = strdup(spec->roles[r].token);
        if (!dup) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        free(t->roles[r]);
        t->roles[r] = dup;
        t->role_changed[r] = true;
        if ((rc = fz_tok_add(t, dup, true, &id)))
            goto done;
    }
    for (int r = 0; r < FZ_ROLE_N; r++)
        if (has_named_init[r] && (id = fz_tok_role_id(t, r)) >= 0)
            if ((rc = init_set(&l, id, named_init[r].kind, named_init[r].copy_from)))
                goto done;

    if (!(special = json_array())) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < spec->n_special; i++) {
        const char *s = spec->special[i];
        bool dup = fz_tok_in_extra(t, s);
        size_t j;
        json_t *v;
        json_array_foreach(special, j, v) dup = dup || !strcmp(json_string_value(v), s);
        if (!dup && json_array_append_new(special, json_string(s))) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
    }
    if (json_array_size(special) > 0) {
        json_decref(t->extra);
        t->extra = json_incref(special);
        t->extra_changed = true;
        for (size_t j = 0; j < json_array_size(special); j++)
            if ((rc = fz_tok_add(t, json_string_value(json_array_get(special, j)), true, &id)))
                goto done;
    }
    for (size_t i = 0; i < spec->n_regular; i++)
        if (fz_tok_id(t, spec->regular[i]) < 0 &&
            (rc = fz_tok_add(t, spec->regular[i], false, &id)))
            goto done;
done:
    json_decref(special);
    if (rc) {
        free(l.v);
        return rc;
    }
    *inits = l.v;
    *n_inits = l.n;
    return 0;
}
