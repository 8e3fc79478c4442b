/* The pickle writer half of pickle.h: a state dict as torch.save pickles it. */
#include "formats/pickle.h"

#include <string.h>

#include "util/checked.h"
#include "util/error.h"

/* Memo slots for the objects every tensor repeats (the globals, 'storage',
 * 'cpu'), as torch.save memoizes them: the first use stores the object with
 * BINPUT, later uses fetch it with BINGET. Slot value 0 means "not yet". */
typedef struct {
    fz_buf *b;
    uint32_t next;
    uint32_t odict, v2, v3, untyped, s_storage, s_cpu;
    uint32_t storage_cls[FZ_DT_COUNT], dtype[FZ_DT_COUNT];
} pw;

static int put_memo(pw *w, uint32_t *slot)
{
    uint32_t id = w->next++;
    *slot = id + 1;
    if (id < 256) {
        uint8_t op[2] = {'q', (uint8_t)id};
        return fz_buf_append(w->b, op, 2);
    }
    int rc = fz_buf_putc(w->b, 'r');
    return rc ? rc : fz_buf_put_u32le(w->b, id);
}

static int get_memo(pw *w, uint32_t slot)
{
    uint32_t id = slot - 1;
    if (id < 256) {
        uint8_t op[2] = {'h', (uint8_t)id};
        return fz_buf_append(w->b, op, 2);
    }
    int rc = fz_buf_putc(w->b, 'j');
    return rc ? rc : fz_buf_put_u32le(w->b, id);
}

/* GLOBAL module\nname\n, memoized in *slot. */
static int global(pw *w, uint32_t *slot, const char *mod, const char *name)
{
    if (*slot)
        return get_memo(w, *slot);
    int rc = fz_buf_printf(w->b, "c%s\n%s\n", mod, name);
    return rc ? rc : put_memo(w, slot);
}

static int str(pw *w, const char *s)
{
    size_t n = strlen(s);
    int rc;
    if (n > 0xFFFFFFFFu)
        return fz_error_set(FZ_EINVAL, "string too long for a pickle");
    if ((rc = fz_buf_putc(w->b, 'X')) || (rc = fz_buf_put_u32le(w->b, (uint32_t)n)))
        return rc;
    return fz_buf_append(w->b, s, n);
}

static int memo_str(pw *w, uint32_t *slot, const char *s)
{
    if (*slot)
        return get_memo(w, *slot);
    int rc = str(w, s);
    return rc ? rc : put_memo(w, slot);
}

/* The smallest integer opcode, as pickle's save_long picks it. */
static int integer(pw *w, int64_t v)
{
    int rc;
    if (v >= 0 && v < 256) {
        uint8_t op[2] = {'K', (uint8_t)v};
        return fz_buf_append(w->b, op, 2);
    }
    if (v >= 0 && v < 65536)
        return (rc = fz_buf_putc(w->b, 'M')) ? rc : fz_buf_put_u16le(w->b, (uint16_t)v);
    if (v >= INT32_MIN && v <= INT32_MAX)
        return (rc = fz_buf_putc(w->b, 'J')) ? rc : fz_buf_put_u32le(w->b, (uint32_t)(int32_t)v);
    /* LONG1: minimal little-endian two's complement. */
    uint8_t bytes[10];
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    int n = 8;
    while (n > 1) {
        uint8_t top = (uint8_t)(u >> (8 * (n - 1))), next_sign = (u >> (8 * (n - 1) - 1)) & 1;
        if ((top == 0x00 && !next_sign) || (top == 0xFF && next_sign))
            n--;
        else
            break;
    }
    bytes[0] = 0x8a;
    bytes[1] = (uint8_t)n;
    for (int i = 0; i < n; i++)
        bytes[2 + i] = (uint8_t)(u >> (8 * i));
    return fz_buf_append(w->b, bytes, (size_t)n + 2);
}

static int int_tuple(pw *w, const int64_t *v, int n)
{
    int rc;
    if (n == 0)
        return fz_buf_putc(w->b, ')');
    if (n > 3 && (rc = fz_buf_putc(w->b, '(')))
        return rc;
    for (int i = 0; i < n; i++)
        if ((rc = integer(w, v[i])))
            return rc;
    return fz_buf_putc(w->b, n > 3 ? 't' : (char)(0x84 + n));
}

static int tensor(pw *w, const fz_pickle_tensor *t)
{
    const char *cls = fz_dtype_storage_name(t->dtype);
    size_t es = fz_dtype_size(t->dtype);
    int64_t shape[FZ_MAX_DIMS];
    int rc;
    if (es == 0 || t->ndim < 0 || t->ndim > FZ_MAX_DIMS || t->storage_nbytes % es ||
        t->storage_nbytes > INT64_MAX || t->storage_offset > INT64_MAX)
        return fz_error_set(FZ_EINVAL, "tensor '%s': cannot be pickled (dtype, rank or size)",
                            t->name);
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] > INT64_MAX)
            return fz_error_set(FZ_EINVAL, "tensor '%s': dimension too large", t->name);
        shape[i] = (int64_t)t->shape[i];
    }
    if ((rc = str(w, t->name)))
        return rc;
    rc = cls ? global(w, &w->v2, "torch._utils", "_rebuild_tensor_v2")
             : global(w, &w->v3, "torch._utils", "_rebuild_tensor_v3");
    if (rc || (rc = fz_buf_append(w->b, "((", 2)) || (rc = memo_str(w, &w->s_storage, "storage")))
        return rc;
    rc = cls ? global(w, &w->storage_cls[t->dtype], "torch", cls)
             : global(w, &w->untyped, "torch.storage", "UntypedStorage");
    if (rc || (rc = str(w, t->key)) || (rc = memo_str(w, &w->s_cpu, "cpu")) ||
        (rc = integer(w, (int64_t)(cls ? t->storage_nbytes / es : t->storage_nbytes))) ||
        (rc = fz_buf_append(w->b, "tQ", 2)) || (rc = integer(w, (int64_t)t->storage_offset)) ||
        (rc = int_tuple(w, shape, t->ndim)) || (rc = int_tuple(w, t->stride, t->ndim)) ||
        (rc = fz_buf_putc(w->b, (char)0x89)) ||
        (rc = global(w, &w->odict, "collections", "OrderedDict")) ||
        (rc = fz_buf_append(w->b, ")R", 2)))
        return rc;
    if (!cls && (rc = global(w, &w->dtype[t->dtype], "torch", fz_dtype_torch_name(t->dtype))))
        return rc;
    return fz_buf_append(w->b, "tR", 2);
}

int fz_pickle_write_state_dict(const fz_pickle_tensor *t, size_t n, fz_buf *out)
{
    pw w = {.b = out};
    size_t start = out->len;
    int rc;
    if ((rc = fz_buf_append(out, "\x80\x02", 2)) ||
        (rc = global(&w, &w.odict, "collections", "OrderedDict")) ||
        (rc = fz_buf_append(out, ")R", 2)))
        goto done;
    /* SETITEMS in batches of 1000, as pickle's batch_setitems does. */
    for (size_t i = 0; i < n; i += 1000) {
        size_t end = n - i > 1000 ? i + 1000 : n;
        if ((rc = fz_buf_putc(out, '(')))
            goto done;
        for (size_t j = i; j < end; j++)
            if ((rc = tensor(&w, &t[j])))
                goto done;
        if ((rc = fz_buf_putc(out, 'u')))
            goto done;
    }
    rc = fz_buf_putc(out, '.');
done:
    if (rc)
        out->len = start;
    return rc;
}
