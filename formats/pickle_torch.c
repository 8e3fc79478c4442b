#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "formats/pickle_vm.h"
#include "util/checked.h"
#include "util/error.h"

/* The torch meaning of a pickle: the allowlist and the symbolic calls.
 *
 * What it guarantees: nothing in the input is ever executed or imported.
 * GLOBAL / STACK_GLOBAL resolve to one of a fixed set of symbols and anything
 * else is refused (FZ_EDENIED, naming the global) before it can be used:
 *
 *   collections.OrderedDict                 REDUCE () -> empty dict
 *   torch._utils._rebuild_tensor_v2         REDUCE -> tensor descriptor
 *   torch._utils._rebuild_tensor_v3         (same, dtype as 7th argument)
 *   torch._utils._rebuild_parameter[_with_state]  REDUCE -> its tensor
 *   torch.<X>Storage, torch[.storage].UntypedStorage  only inside a persistent id
 *   torch.<dtype>                           only as _rebuild_tensor_v3's dtype
 *   torch.Size                              REDUCE (tuple,) -> the tuple
 *
 * REDUCE and BUILD apply these symbolically; BUILD's state is ignored (an
 * OrderedDict's _metadata). A storage class or dtype can only be an argument,
 * never called. The result must be a flat dict of str -> tensor with unique
 * names; nested containers (optimizer state) are "not a flat state dict". */

/* Resolve module.name against the allowlist (see the block comment above). */
int fz_pk_resolve_global(pk_machine *m, const uint8_t *mod, size_t ml, const uint8_t *nm, size_t nl,
                         pk_val *out)
{
    char a[128] = "", b[128] = "";
    fz_dtype dt;
    out->kind = V_GLOBAL;
    out->dt = 0;
    if (ml < sizeof a && nl < sizeof b && !memchr(mod, 0, ml) && !memchr(nm, 0, nl)) {
        memcpy(a, mod, ml);
        memcpy(b, nm, nl);
        static const struct {
            const char *mod, *name;
            uint8_t g;
        } fixed[] = {
            {"collections", "OrderedDict", G_ODICT},
            {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2},
            {"torch._utils", "_rebuild_tensor_v3", G_REBUILD_V3},
            {"torch._utils", "_rebuild_parameter", G_PARAM},
            {"torch._utils", "_rebuild_parameter_with_state", G_PARAM_STATE},
            {"torch", "UntypedStorage", G_UNTYPED},
            {"torch.storage", "UntypedStorage", G_UNTYPED},
            {"torch", "Size", G_SIZE},
        };
        for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
            if (!strcmp(a, fixed[i].mod) && !strcmp(b, fixed[i].name)) {
                out->g = fixed[i].g;
                return 0;
            }
        if (!strcmp(a, "torch")) {
            if (fz_dtype_from_storage_name(b, &dt) == 0) {
                out->g = G_STORAGE;
                out->dt = (uint8_t)dt;
                return 0;
            }
            if (fz_dtype_from_torch_name(b, &dt) == 0) {
                out->g = G_DTYPE;
                out->dt = (uint8_t)dt;
                return 0;
            }
            size_t bl = strlen(b);
            if (bl > 7 && !strcmp(b + bl - 7, "Storage"))
                return fz_error_set(FZ_EFORMAT, "%s: unsupported storage type 'torch.%s'", m->path,
                                    b);
        }
    }
    /* Every byte shown (a NUL must not make a refused name read as an allowed one). */
    char em[420], en[420];
    return fz_error_set(FZ_EDENIED,
                        "%s: pickle global '%s.%s' is not allowed (a state dict "
                        "pickle only needs torch's rebuild functions: the file is not a plain "
                        "checkpoint; do not load it)",
                        m->path, fz_escape(mod, ml, em, sizeof em),
                        fz_escape(nm, nl, en, sizeof en));
}

/* BINPERSID: ('storage', <storage class>, key, location, numel). */
int fz_pk_persid(pk_machine *m)
{
    pk_val pid = {0};
    int rc = fz_pk_pop(m, &pid);
    if (rc)
        return rc;
    const pk_obj *t = pid.kind == V_TUPLE ? &m->objs[pid.u.obj] : NULL;
    if (!t || t->n != 5 || !fz_pk_str_is(m, &t->items[0], "storage"))
        return fz_pk_bad(m, "persistent id is not ('storage', ...)");
    const pk_val *cls = &t->items[1], *key = &t->items[2], *loc = &t->items[3], *num = &t->items[4];
    if (cls->kind != V_GLOBAL || (cls->g != G_STORAGE && cls->g != G_UNTYPED))
        return fz_pk_bad(m, "persistent id without a storage class");
    if (key->kind != V_STR || key->u.s.len == 0 || memchr(m->d + key->u.s.off, 0, key->u.s.len) ||
        loc->kind != V_STR || num->kind != V_INT || num->u.i < 0)
        return fz_pk_bad(m, "malformed persistent id");
    pk_storage s = {key->u.s.off, key->u.s.len, (fz_dtype)cls->dt, cls->g == G_UNTYPED, 0};
    uint64_t es = s.untyped ? 1 : fz_dtype_size(s.dt);
    if (!fz_mul_u64((uint64_t)num->u.i, es, &s.nbytes))
        return fz_error_set(FZ_ERANGE, "%s: storage '%.*s' size overflows", m->path,
                            (int)key->u.s.len, (const char *)m->d + key->u.s.off);
    if ((rc = fz_pk_grow(&m->sto, &m->stocap, m->nsto + 1, sizeof *m->sto, PK_MAX_INPUT, "storages",
                         m)))
        return rc;
    m->sto[m->nsto] = s;
    pk_val v = {.kind = V_STORAGE};
    v.u.obj = (uint32_t)m->nsto++;
    return fz_pk_push(m, v);
}

static int int_tuple(pk_machine *m, const pk_val *v, int *n, int64_t *out)
{
    if (v->kind != V_TUPLE)
        return fz_pk_bad(m, "tensor size/stride is not a tuple");
    const pk_obj *o = &m->objs[v->u.obj];
    if (o->n > FZ_MAX_DIMS)
        return fz_error_set(FZ_EFORMAT, "%s: tensor with %u dimensions (at most %d)", m->path, o->n,
                            FZ_MAX_DIMS);
    for (uint32_t i = 0; i < o->n; i++) {
        if (o->items[i].kind != V_INT)
            return fz_pk_bad(m, "tensor size/stride holds a non-integer");
        out[i] = o->items[i].u.i;
    }
    *n = (int)o->n;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]) */
static int rebuild_tensor(pk_machine *m, const pk_obj *a, bool v3, pk_val *out)
{
    pk_tensor t;
    int64_t size[FZ_MAX_DIMS], stride[FZ_MAX_DIMS];
    int nsize, nstride, rc;
    size_t want = v3 ? 7 : 6;
    if (a->n != want && a->n != want + 1)
        return fz_pk_bad(m, "wrong number of arguments to _rebuild_tensor");
    if (a->items[0].kind != V_STORAGE || a->items[1].kind != V_INT || a->items[1].u.i < 0 ||
        (a->items[4].kind != V_BOOL && a->items[4].kind != V_INT) || a->items[5].kind != V_DICT)
        return fz_pk_bad(m, "wrong argument types to _rebuild_tensor");
    if ((rc = int_tuple(m, &a->items[2], &nsize, size)) ||
        (rc = int_tuple(m, &a->items[3], &nstride, stride)))
        return rc;
    if (nsize != nstride)
        return fz_pk_bad(m, "tensor size and stride differ in length");
    const pk_storage *s = &m->sto[a->items[0].u.obj];
    if (v3) {
        const pk_val *d = &a->items[6];
        if (d->kind != V_GLOBAL || d->g != G_DTYPE)
            return fz_pk_bad(m, "_rebuild_tensor_v3 without a dtype");
        t.dt = (fz_dtype)d->dt;
        if (!s->untyped && s->dt != t.dt)
            return fz_pk_bad(m, "tensor dtype differs from its storage's");
    } else {
        if (s->untyped)
            return fz_pk_bad(m, "_rebuild_tensor_v2 on an untyped storage");
        t.dt = s->dt;
    }
    t.sto = a->items[0].u.obj;
    t.off = (uint64_t)a->items[1].u.i;
    t.ndim = nsize;
    for (int i = 0; i < nsize; i++) {
        if (size[i] < 0)
            return fz_pk_bad(m, "negative tensor size");
        t.shape[i] = (uint64_t)size[i];
        t.stride[i] = stride[i];
    }
    if ((rc = fz_pk_grow(&m->ten, &m->tencap, m->nten + 1, sizeof *m->ten, PK_MAX_INPUT, "tensors",
                         m)))
        return rc;
    m->ten[m->nten] = t;
    out->kind = V_TENSOR;
    out->u.obj = (uint32_t)m->nten++;
    return 0;
}

int fz_pk_reduce(pk_machine *m)
{
    pk_val args = {0}, fn = {0}, res = {.kind = V_NONE};
    int rc;
    if ((rc = fz_pk_pop(m, &args)) || (rc = fz_pk_pop(m, &fn)))
        return rc;
    if (fn.kind != V_GLOBAL || args.kind != V_TUPLE)
        return fz_pk_bad(m, "REDUCE needs an allowed callable and an argument tuple");
    const pk_obj *a = &m->objs[args.u.obj];
    switch (fn.g) {
    case G_ODICT:
        if (a->n != 0)
            return fz_pk_bad(m, "OrderedDict called with arguments");
        rc = fz_pk_new_obj(m, V_DICT, NULL, 0, &res);
        break;
    case G_SIZE:
        if (a->n != 1 || a->items[0].kind != V_TUPLE)
            return fz_pk_bad(m, "torch.Size needs one tuple");
        res = a->items[0];
        break;
    case G_REBUILD_V2:
    case G_REBUILD_V3:
        rc = rebuild_tensor(m, a, fn.g == G_REBUILD_V3, &res);
        break;
    case G_PARAM:
    case G_PARAM_STATE:
        if (a->n != (fn.g == G_PARAM ? 3u : 4u) || a->items[0].kind != V_TENSOR)
            return fz_pk_bad(m, "bad arguments to _rebuild_parameter");
        res = a->items[0];
        break;
    default:
        return fz_pk_bad(m, "a storage class or dtype is not callable");
    }
    return rc ? rc : fz_pk_push(m, res);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Turn the top-level object into the output table. */
int fz_pk_collect(pk_machine *m, const pk_val *top, fz_pickle_dict *out)
{
    char **sorted = NULL;
    int rc = 0;
    if (top->kind != V_DICT)
        return fz_error_set(FZ_EFORMAT,
                            "%s: pickle is not a flat state dict (top level is not "
                            "a dict)",
                            m->path);
    const pk_obj *o = &m->objs[top->u.obj];
    size_t n = o->n / 2;
    out->v = calloc(n ? n : 1, sizeof *out->v);
    sorted = calloc(n ? n : 1, sizeof *sorted);
    if (!out->v || !sorted) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const pk_val *k = &o->items[2 * i], *v = &o->items[2 * i + 1];
        if (k->kind != V_STR || v->kind != V_TENSOR) {
            rc = fz_error_set(FZ_EFORMAT,
                              "%s: pickle is not a flat state dict (entry %zu is not "
                              "name -> tensor)",
                              m->path, i);
            goto done;
        }
        const char *ks = (const char *)m->d + k->u.s.off;
        if (memchr(ks, 0, k->u.s.len) || !fz_utf8_valid(ks, k->u.s.len)) {
            char esc[420];
            rc = fz_error_set(FZ_EFORMAT,
                              "%s: tensor name '%s' is not NUL-free UTF-8 text (torch "
                              "writes names as UTF-8): the file is corrupt; re-save the "
                              "checkpoint",
                              m->path, fz_escape(ks, k->u.s.len, esc, sizeof esc));
            goto done;
        }
        const pk_tensor *t = &m->ten[v->u.obj];
        const pk_storage *s = &m->sto[t->sto];
        fz_pickle_tensor *p = &out->v[out->n++];
        p->name = strndup(ks, k->u.s.len);
        p->key = strndup((const char *)m->d + s->key_off, s->key_len);
        if (!p->name || !p->key) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        p->dtype = t->dt;
        p->storage_nbytes = s->nbytes;
        p->storage_offset = t->off;
        p->ndim = t->ndim;
        memcpy(p->shape, t->shape, sizeof p->shape);
        memcpy(p->stride, t->stride, sizeof p->stride);
        sorted[i] = p->name;
    }
    qsort(sorted, n, sizeof *sorted, cmp_names);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(sorted[i - 1], sorted[i])) {
            rc = fz_error_set(FZ_EFORMAT, "%s: tensor '%s' appears twice in the state dict",
                              m->path, sorted[i]);
            goto done;
        }
done:
    free(sorted);
    if (rc)
        fz_pickle_dict_free(out);
    return rc;
}
