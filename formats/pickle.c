#include "formats/pickle.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "formats/pickle_vm.h"
#include "util/checked.h"
#include "util/error.h"

/* The restricted pickle machine: the opcode loop, stack, marks and memo.
 * What the objects mean (the allowlist of globals, persistent ids, the rebuild
 * functions) is in pickle_torch.c.
 *
 * Objects are values in flat arrays that refer to each other by index; the
 * machine loops over opcodes and never recurses, so input cannot drive C
 * stack depth. Every read is checked against the input, and the value stack,
 * mark stack and memo have fixed limits (pickle_vm.h). Python 3 semantics for
 * MARK: items above a mark cannot be popped by opcodes that do not consume it.
 *
 * What it deliberately does not do: protocol 0/1 text opcodes, NEWOBJ, sets,
 * LONG4, or any object that is not a flat str -> tensor dict at the top. */

int fz_pk_charge(pk_machine *m, size_t bytes)
{
    /* The machine's memory is bounded by a small multiple of the input
     * (PK_MEM_FACTOR): one-byte opcodes that each make an object or copy
     * a reference must not turn a 64 MB pickle into gigabytes. */
    if (bytes > m->mem_max - m->mem)
        return fz_error_set(FZ_ERANGE,
                            "%s: the pickle (%zu bytes) needs more than %zu bytes of memory to "
                            "unpickle (a state dict needs a few times its size): not a plain "
                            "state dict, or damaged",
                            m->path, m->len, m->mem_max);
    m->mem += bytes;
    return 0;
}

int fz_pk_grow(void *pp, size_t *cap, size_t need, size_t elsz, size_t limit, const char *what,
               pk_machine *m)
{
    void **p = pp;
    if (need <= *cap)
        return 0;
    if (need > limit)
        return fz_error_set(FZ_ERANGE, "%s: pickle %s exceeds %zu entries", m->path, what, limit);
    size_t c = *cap ? *cap * 2 : 16;
    while (c < need)
        c *= 2;
    if (c > limit)
        c = limit;
    int rc = fz_pk_charge(m, (c - *cap) * elsz);
    if (rc)
        return rc;
    void *n = realloc(*p, c * elsz);
    if (!n)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    *p = n;
    *cap = c;
    return 0;
}

int fz_pk_bad(pk_machine *m, const char *what)
{
    return fz_error_set(FZ_EFORMAT, "%s: bad pickle at offset %zu: %s", m->path, m->pos, what);
}

static int need(pk_machine *m, size_t n)
{
    return m->len - m->pos >= n ? 0 : fz_pk_bad(m, "truncated");
}

static size_t floor_sp(const pk_machine *m)
{
    return m->nmarks ? m->marks[m->nmarks - 1] : 0;
}

int fz_pk_push(pk_machine *m, pk_val v)
{
    int rc = fz_pk_grow(&m->stack, &m->scap, m->sp + 1, sizeof *m->stack, PK_MAX_STACK, "stack", m);
    if (rc)
        return rc;
    m->stack[m->sp++] = v;
    return 0;
}

int fz_pk_pop(pk_machine *m, pk_val *v)
{
    if (m->sp <= floor_sp(m))
        return fz_pk_bad(m, "stack underflow");
    *v = m->stack[--m->sp];
    return 0;
}

static int pop_mark(pk_machine *m, size_t *start)
{
    if (!m->nmarks)
        return fz_pk_bad(m, "no MARK on the stack");
    *start = m->marks[--m->nmarks];
    return 0;
}

int fz_pk_new_obj(pk_machine *m, uint8_t kind, const pk_val *items, size_t n, pk_val *out)
{
    int rc =
        fz_pk_grow(&m->objs, &m->ocap, m->nobjs + 1, sizeof *m->objs, PK_MAX_INPUT, "objects", m);
    if (rc)
        return rc;
    pk_obj *o = &m->objs[m->nobjs];
    o->n = o->cap = 0;
    o->items = NULL;
    if (n) {
        if ((rc = fz_pk_charge(m, n * sizeof *items)))
            return rc;
        if (!(o->items = malloc(n * sizeof *items)))
            return fz_error_set(FZ_ENOMEM, "out of memory");
        memcpy(o->items, items, n * sizeof *items);
        o->n = o->cap = (uint32_t)n;
    }
    out->kind = kind;
    out->u.obj = (uint32_t)m->nobjs++;
    return 0;
}

static int obj_append(pk_machine *m, pk_obj *o, const pk_val *items, size_t n)
{
    size_t cap = o->cap;
    if (n == 0)
        return 0;
    int rc =
        fz_pk_grow(&o->items, &cap, (size_t)o->n + n, sizeof *items, PK_MAX_INPUT, "container", m);
    if (rc)
        return rc;
    o->cap = (uint32_t)cap;
    memcpy(o->items + o->n, items, n * sizeof *items);
    o->n += (uint32_t)n;
    return 0;
}

static uint64_t rdle(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int push_str(pk_machine *m, uint8_t kind, uint64_t n)
{
    if (n > m->len - m->pos)
        return fz_pk_bad(m, "string runs past the end");
    pk_val v = {.kind = kind};
    v.u.s.off = (uint32_t)m->pos;
    v.u.s.len = (uint32_t)n;
    m->pos += n;
    return fz_pk_push(m, v);
}

bool fz_pk_str_is(const pk_machine *m, const pk_val *v, const char *s)
{
    return v->kind == V_STR && v->u.s.len == strlen(s) && !memcmp(m->d + v->u.s.off, s, v->u.s.len);
}

static int op_global(pk_machine *m)
{
    const uint8_t *p = m->d + m->pos, *end = m->d + m->len;
    const uint8_t *nl1 = memchr(p, '\n', (size_t)(end - p));
    const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
    pk_val v;
    if (!nl2)
        return fz_pk_bad(m, "unterminated GLOBAL");
    int rc = fz_pk_resolve_global(m, p, (size_t)(nl1 - p), nl1 + 1, (size_t)(nl2 - nl1 - 1), &v);
    if (rc)
        return rc;
    m->pos = (size_t)(nl2 + 1 - m->d);
    return fz_pk_push(m, v);
}

static int op_stack_global(pk_machine *m)
{
    pk_val mod = {0}, name = {0}, v;
    int rc;
    if ((rc = fz_pk_pop(m, &name)) || (rc = fz_pk_pop(m, &mod)))
        return rc;
    if (mod.kind != V_STR || name.kind != V_STR)
        return fz_pk_bad(m, "STACK_GLOBAL needs two strings");
    if ((rc = fz_pk_resolve_global(m, m->d + mod.u.s.off, mod.u.s.len, m->d + name.u.s.off,
                                   name.u.s.len, &v)))
        return rc;
    return fz_pk_push(m, v);
}

static int memo_put(pk_machine *m, uint64_t idx)
{
    if (m->sp <= floor_sp(m))
        return fz_pk_bad(m, "memo store from an empty stack");
    if (idx >= PK_MAX_MEMO)
        return fz_error_set(FZ_ERANGE, "%s: pickle memo index %llu exceeds %u", m->path,
                            (unsigned long long)idx, PK_MAX_MEMO);
    size_t old = m->memo_cap;
    int rc = fz_pk_grow(&m->memo, &m->memo_cap, idx + 1, sizeof *m->memo, PK_MAX_MEMO, "memo", m);
    if (rc)
        return rc;
    memset(m->memo + old, 0, (m->memo_cap - old) * sizeof *m->memo);
    if (m->memo[idx].kind == V_UNSET)
        m->memo_count++;
    m->memo[idx] = m->stack[m->sp - 1];
    return 0;
}

static int memo_get(pk_machine *m, uint64_t idx)
{
    if (idx >= m->memo_cap || m->memo[idx].kind == V_UNSET)
        return fz_error_set(FZ_EFORMAT, "%s: bad pickle at offset %zu: memo index %llu is not set",
                            m->path, m->pos, (unsigned long long)idx);
    return fz_pk_push(m, m->memo[idx]);
}

/* SETITEM(S) / APPEND(S): items stack[start..sp) go into the container
 * below them. */
static int fill(pk_machine *m, size_t start, uint8_t kind)
{
    size_t k = m->sp - start;
    if (start == 0 || start - 1 < floor_sp(m))
        return fz_pk_bad(m, "nothing to add items to");
    pk_val *c = &m->stack[start - 1];
    if (c->kind != kind)
        return fz_pk_bad(m, kind == V_DICT ? "SETITEM on a non-dict" : "APPEND on a non-list");
    if (kind == V_DICT && k % 2)
        return fz_pk_bad(m, "odd number of items for SETITEMS");
    int rc = obj_append(m, &m->objs[c->u.obj], m->stack + start, k);
    m->sp = start;
    return rc;
}

static int step(pk_machine *m, bool *stop)
{
    uint8_t op = m->d[m->pos++];
    pk_val v = {.kind = V_NONE}, tmp = {0};
    size_t start = 0;
    int rc;
    switch (op) {
    case 0x80: /* PROTO */
        if ((rc = need(m, 1)))
            return rc;
        if (m->d[m->pos] < 2 || m->d[m->pos] > 5)
            return fz_pk_bad(m, "unsupported protocol");
        m->pos++;
        return 0;
    case 0x95: /* FRAME: a length hint; the opcodes inside are read as usual */
        if ((rc = need(m, 8)))
            return rc;
        if (rdle(m->d + m->pos, 8) > m->len - m->pos - 8)
            return fz_pk_bad(m, "frame runs past the end");
        m->pos += 8;
        return 0;
    case '.':
        *stop = true;
        return 0;
    case '(':
        if ((rc = fz_pk_grow(&m->marks, &m->mcap, m->nmarks + 1, sizeof *m->marks, PK_MAX_MARKS,
                             "marks", m)))
            return rc;
        m->marks[m->nmarks++] = m->sp;
        return 0;
    case 'N':
        return fz_pk_push(m, v);
    case 0x88:
    case 0x89:
        v.kind = V_BOOL;
        v.u.i = op == 0x88;
        return fz_pk_push(m, v);
    case 'K':
    case 'M':
    case 'J': {
        int n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
        if ((rc = need(m, (size_t)n)))
            return rc;
        v.kind = V_INT;
        v.u.i = op == 'J' ? (int64_t)(int32_t)(uint32_t)rdle(m->d + m->pos, 4)
                          : (int64_t)rdle(m->d + m->pos, n);
        m->pos += (size_t)n;
        return fz_pk_push(m, v);
    }
    case 0x8a: { /* LONG1: n bytes of little-endian two's complement */
        if ((rc = need(m, 1)))
            return rc;
        int n = m->d[m->pos++];
        if ((rc = need(m, (size_t)n)))
            return rc;
        if (n > 8)
            return fz_error_set(FZ_ERANGE, "%s: pickle integer of %d bytes", m->path, n);
        uint64_t u = n ? rdle(m->d + m->pos, n) : 0;
        if (n && n < 8 && (u >> (8 * n - 1)) & 1)
            u |= ~0ull << (8 * n);
        v.kind = V_INT;
        memcpy(&v.u.i, &u, sizeof u);
        m->pos += (size_t)n;
        return fz_pk_push(m, v);
    }
    case 'G': {
        if ((rc = need(m, 8)))
            return rc;
        uint64_t u = 0;
        for (int i = 0; i < 8; i++)
            u = u << 8 | m->d[m->pos + (size_t)i];
        v.kind = V_FLOAT;
        memcpy(&v.u.f, &u, sizeof u);
        m->pos += 8;
        return fz_pk_push(m, v);
    }
    case 'X': /* BINUNICODE */
    case 'B': /* BINBYTES */
    case 'T': /* BINSTRING */
        if ((rc = need(m, 4)))
            return rc;
        m->pos += 4;
        return push_str(m, op == 'B' ? V_BYTES : V_STR, rdle(m->d + m->pos - 4, 4));
    case 0x8c: /* SHORT_BINUNICODE */
    case 'C':  /* SHORT_BINBYTES */
    case 'U':  /* SHORT_BINSTRING */
        if ((rc = need(m, 1)))
            return rc;
        m->pos++;
        return push_str(m, op == 'C' ? V_BYTES : V_STR, m->d[m->pos - 1]);
    case 0x8d: /* BINUNICODE8 */
        if ((rc = need(m, 8)))
            return rc;
        m->pos += 8;
        return push_str(m, V_STR, rdle(m->d + m->pos - 8, 8));
    case ')':
        return (rc = fz_pk_new_obj(m, V_TUPLE, NULL, 0, &v)) ? rc : fz_pk_push(m, v);
    case ']':
        return (rc = fz_pk_new_obj(m, V_LIST, NULL, 0, &v)) ? rc : fz_pk_push(m, v);
    case '}':
        return (rc = fz_pk_new_obj(m, V_DICT, NULL, 0, &v)) ? rc : fz_pk_push(m, v);
    case 0x85:
    case 0x86:
    case 0x87: {
        size_t n = (size_t)(op - 0x84);
        if (m->sp - floor_sp(m) < n)
            return fz_pk_bad(m, "stack underflow");
        m->sp -= n;
        if ((rc = fz_pk_new_obj(m, V_TUPLE, m->stack + m->sp, n, &v)))
            return rc;
        return fz_pk_push(m, v);
    }
    case 't':
        /* the stack may be unallocated (NULL) when the tuple is empty */
        if ((rc = pop_mark(m, &start)) ||
            (rc = fz_pk_new_obj(m, V_TUPLE, m->sp > start ? m->stack + start : NULL, m->sp - start,
                                &v)))
            return rc;
        m->sp = start;
        return fz_pk_push(m, v);
    case 's':
        if (m->sp - floor_sp(m) < 2)
            return fz_pk_bad(m, "stack underflow");
        return fill(m, m->sp - 2, V_DICT);
    case 'u':
        return pop_mark(m, &start) ? fz_pk_bad(m, "SETITEMS without MARK") : fill(m, start, V_DICT);
    case 'a':
        if (m->sp - floor_sp(m) < 1)
            return fz_pk_bad(m, "stack underflow");
        return fill(m, m->sp - 1, V_LIST);
    case 'e':
        return pop_mark(m, &start) ? fz_pk_bad(m, "APPENDS without MARK") : fill(m, start, V_LIST);
    case 'c':
        return op_global(m);
    case 0x93:
        return op_stack_global(m);
    case 'Q':
        return fz_pk_persid(m);
    case 'R':
        return fz_pk_reduce(m);
    case 'b':
        if ((rc = fz_pk_pop(m, &tmp)))
            return rc;
        if (m->sp <= floor_sp(m) ||
            (m->stack[m->sp - 1].kind != V_DICT && m->stack[m->sp - 1].kind != V_TENSOR))
            return fz_pk_bad(m, "BUILD on something other than a dict or tensor");
        return 0;
    case 'q':
    case 'h':
        if ((rc = need(m, 1)))
            return rc;
        m->pos++;
        return op == 'q' ? memo_put(m, m->d[m->pos - 1]) : memo_get(m, m->d[m->pos - 1]);
    case 'r':
    case 'j':
        if ((rc = need(m, 4)))
            return rc;
        m->pos += 4;
        return op == 'r' ? memo_put(m, rdle(m->d + m->pos - 4, 4))
                         : memo_get(m, rdle(m->d + m->pos - 4, 4));
    case 0x94:
        return memo_put(m, m->memo_count);
    default:
        m->pos--;
        return fz_error_set(FZ_EFORMAT, "%s: unsupported pickle opcode 0x%02x at offset %zu",
                            m->path, op, m->pos);
    }
}

int fz_pickle_read_state_dict(const uint8_t *data, size_t len, const char *path,
                              fz_pickle_dict *out)
{
    pk_machine m = {.d = data, .len = len, .path = path};
    m.mem_max = len > (SIZE_MAX - PK_MEM_BASE) / PK_MEM_FACTOR ? SIZE_MAX
                                                               : PK_MEM_FACTOR * len + PK_MEM_BASE;
    bool stop = false;
    pk_val top = {0};
    int rc = 0;
    out->v = NULL;
    out->n = 0;
    if (len > PK_MAX_INPUT)
        return fz_error_set(FZ_ERANGE, "%s: pickle of %zu bytes is too large", path, len);
    while (!stop) {
        if (m.pos >= m.len) {
            rc = fz_pk_bad(&m, "truncated (no STOP)");
            goto done;
        }
        if ((rc = step(&m, &stop)))
            goto done;
    }
    if ((rc = fz_pk_pop(&m, &top)))
        goto done;
    rc = fz_pk_collect(&m, &top, out);
done:
    for (size_t i = 0; i < m.nobjs; i++)
        free(m.objs[i].items);
    free(m.objs);
    free(m.stack);
    free(m.marks);
    free(m.memo);
    free(m.sto);
    free(m.ten);
    return rc;
}

void fz_pickle_dict_free(fz_pickle_dict *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].name);
        free(d->v[i].key);
    }
    free(d->v);
    d->v = NULL;
    d->n = 0;
}
