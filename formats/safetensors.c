#include "formats/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/jsonout.h"
#include "formats/jsontok.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/io.h"
#include "util/vec.h"

/* Reading follows the reference reader (safetensors tensor.rs read_metadata /
 * validate, reference/hf-formats.md §1.4): header length <= 100 MB, a JSON
 * object, offsets tiling the buffer exactly, sizes = numel × element size with
 * the product checked left to right, no trailing bytes. Where we are stricter,
 * on purpose:
 * - duplicate keys are an error (serde keeps the last one silently);
 * - dtypes fzfs has no use for (F4, F6_*, U16, C64, ...) are an error naming
 *   the dtype; more than FZ_MAX_DIMS dimensions is an error;
 * - an empty tensor whose contiguous strides do not fit in int64 is an error.
 * Like serde, extra keys in a tensor entry are ignored and "__metadata__": null
 * is accepted as absent. */

/* The reference reader's limit (safetensors tensor.rs MAX_HEADER_SIZE). */
#define FZ_ST_MAX_HEADER 100000000u

/* One header entry while validating: where its bytes claim to be. */
typedef struct {
    uint64_t begin, end;
    size_t idx; /* position in the output list (header order) */
} st_span;

static uint64_t st_get_u64le(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

/* Value i (UINT32_MAX: absent) must be a non-negative integer (serde's usize). */
static int st_json_u64(const fz_jdoc *d, uint32_t i, uint64_t *out)
{
    int64_t v;
    if (i == UINT32_MAX || d->t[i].type != FZ_JT_INT || (v = fz_jtok_int(d, i)) < 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* At most 200 bytes of string token i, for a message ("%.*s"). */
static int st_shown(const fz_jdoc *d, uint32_t i)
{
    return d->t[i].len > 200 ? 200 : (int)d->t[i].len;
}

static int st_check_metadata(const fz_jdoc *d, uint32_t meta, const char *path)
{
    if (d->t[meta].type == FZ_JT_NULL) /* serde's Option<HashMap>: null means absent */
        return 0;
    if (d->t[meta].type != FZ_JT_OBJECT)
        return fz_error_set(FZ_EFORMAT, "%s: __metadata__ is not an object", path);
    for (uint32_t m = 0, k = meta + 1; m < d->t[meta].n; m++, k = d->t[k + 1].next)
        if (d->t[k + 1].type != FZ_JT_STRING)
            return fz_error_set(FZ_EFORMAT, "%s: __metadata__ value of '%.*s' is not a string",
                                path, st_shown(d, k), fz_jtok_str(d, k));
    return 0;
}

/* Parse entry v (the value of key `name`) into *t (name not set). */
static int st_parse_entry(const fz_jdoc *d, const char *name, uint32_t v, const char *path,
                          fz_tensor *t, st_span *span)
{
    uint32_t dt = UINT32_MAX, shape = UINT32_MAX, offs = UINT32_MAX;
    uint64_t numel, nbytes;
    size_t es;
    char dts[16];

    if (d->t[v].type != FZ_JT_OBJECT)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' is not an object", path, name);
    /* the three keys in one pass over the members (no key is there twice) */
    for (uint32_t m = 0, k = v + 1; m < d->t[v].n; m++, k = d->t[k + 1].next) {
        if (fz_jtok_streq(d, k, "dtype"))
            dt = k + 1;
        else if (fz_jtok_streq(d, k, "shape"))
            shape = k + 1;
        else if (fz_jtok_streq(d, k, "data_offsets"))
            offs = k + 1;
    }
    /* Extra keys are ignored, as the reference reader (serde) ignores them. */
    if (dt == UINT32_MAX || shape == UINT32_MAX || offs == UINT32_MAX)
        return fz_error_set(
            FZ_EFORMAT, "%s: tensor '%.200s' must have dtype, shape and data_offsets", path, name);
    if (d->t[dt].type != FZ_JT_STRING)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' dtype is not a string", path, name);
    size_t dl = d->t[dt].len;
    if (dl < sizeof dts) {
        memcpy(dts, fz_jtok_str(d, dt), dl);
        dts[dl] = '\0';
    }
    if (dl >= sizeof dts || fz_dtype_from_st_name(dts, &t->dtype) != 0)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' has unknown dtype '%.*s'", path, name,
                            st_shown(d, dt), fz_jtok_str(d, dt));
    if (d->t[shape].type != FZ_JT_ARRAY)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' shape is not an array", path, name);
    if (d->t[shape].n > FZ_MAX_DIMS)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' has %u dimensions (at most %d)", path,
                            name, d->t[shape].n, FZ_MAX_DIMS);
    t->ndim = (int)d->t[shape].n;
    for (uint32_t i = 0, k = shape + 1; i < d->t[shape].n; i++, k = d->t[k].next)
        if (st_json_u64(d, k, &t->shape[i]) != 0)
            return fz_error_set(FZ_EFORMAT,
                                "%s: tensor '%.200s' shape[%u] is not a non-negative integer", path,
                                name, i);
    if (d->t[offs].type != FZ_JT_ARRAY || d->t[offs].n != 2 ||
        st_json_u64(d, offs + 1, &span->begin) != 0 ||
        st_json_u64(d, d->t[offs + 1].next, &span->end) != 0)
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%.200s' data_offsets is not a pair of non-negative "
                            "integers",
                            path, name);
    if (span->end < span->begin)
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%.200s' data_offsets [%" PRIu64 ", %" PRIu64
                            "] end before begin",
                            path, name, span->begin, span->end);

    int rc = fz_tensor_check_shape(path, name, t->dtype, t->ndim, t->shape);
    if (rc)
        return rc;
    es = fz_dtype_size(t->dtype);
    if (!fz_tensor_numel(t, &numel) || !fz_mul_u64(numel, es, &nbytes))
        return fz_error_set(FZ_ERANGE, "%s: tensor '%.200s' byte size overflows", path, name);
    if (span->end - span->begin != nbytes) {
        char dims[FZ_MAX_DIMS * 22 + 3];
        size_t o = 0;
        dims[o++] = '[';
        for (int i = 0; i < t->ndim; i++)
            o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%" PRIu64, i ? ", " : "",
                                  t->shape[i]);
        snprintf(dims + o, sizeof dims - o, "]");
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%.200s' data_offsets [%" PRIu64 ", %" PRIu64
                            "] do not match shape %s \xc3\x97 %s",
                            path, name, span->begin, span->end, dims, fz_dtype_st_name(t->dtype));
    }

    /* Contiguous strides, checked: with a 0 dimension numel is 0 but the
     * product of the other dimensions can still overflow. */
    uint64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (st > INT64_MAX)
            return fz_error_set(FZ_ERANGE, "%s: tensor '%.200s' strides overflow", path, name);
        t->stride[i] = (int64_t)st;
        if (i > 0 && !fz_mul_u64(st, t->shape[i] ? t->shape[i] : 1, &st))
            return fz_error_set(FZ_ERANGE, "%s: tensor '%.200s' strides overflow", path, name);
    }
    t->storage_offset = 0;
    t->storage_nbytes = nbytes;
    return 0;
}

static int st_span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int fz_st_read(int fd, const char *path, uint64_t file_size, fz_tensor_list *out)
{
    return fz_st_read_info(fd, path, file_size, out, NULL);
}

int fz_st_read_info(int fd, const char *path, uint64_t file_size, fz_tensor_list *out,
                    fz_st_info *info)
{
    bool format_pt = true;
    uint8_t lenbuf[8];
    uint8_t *hbuf = NULL;
    fz_jdoc d = {0};
    st_span *spans = NULL;
    fz_tensor_list got = {0};
    uint64_t n, data_start, pos;
    size_t nt = 0, k, err_at;
    const char *why;
    int rc;

    if (file_size < 8)
        return fz_error_set(FZ_EFORMAT, "%s: file is %" PRIu64 " bytes, too short for a header",
                            path, file_size);
    if ((rc = fz_pread_exact(fd, lenbuf, 8, 0, path)) != 0)
        return rc;
    n = st_get_u64le(lenbuf);
    if (n > FZ_ST_MAX_HEADER)
        return fz_error_set(FZ_EFORMAT, "%s: header length %" PRIu64 " exceeds %u bytes", path, n,
                            FZ_ST_MAX_HEADER);
    data_start = 8 + n; /* cannot overflow: n <= 1e8 */
    if (data_start > file_size)
        return fz_error_set(FZ_EFORMAT,
                            "%s: header length %" PRIu64 " runs past the end of the file (%" PRIu64
                            " bytes)",
                            path, n, file_size);
    if (!(hbuf = malloc(n ? n : 1))) {
        rc = fz_error_set(FZ_ENOMEM, "%s: out of memory for a %" PRIu64 "-byte header", path, n);
        goto done;
    }
    if ((rc = fz_pread_exact(fd, hbuf, n, 8, path)) != 0)
        goto done;

    rc = fz_jtok_parse(&d, (const char *)hbuf, n, 0, &err_at, &why);
    if (rc == FZ_EFORMAT)
        rc = fz_error_set(FZ_EFORMAT, "%s: header is not valid JSON: %s (at byte %zu)", path, why,
                          err_at);
    if (rc)
        goto done;
    if (d.t[0].type != FZ_JT_OBJECT) {
        rc = fz_error_set(FZ_EFORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    if ((spans = calloc((size_t)d.t[0].n + 1, sizeof *spans)) == NULL) {
        rc = fz_error_set(FZ_ENOMEM, "%s: out of memory", path);
        goto done;
    }

    /* one array of the right size (the list otherwise doubles as it grows) */
    if ((rc = FZ_VEC_RESERVE(got.v, got.cap, (size_t)d.t[0].n)) != 0)
        goto done;
    /* Members in file order: keys at k, values at k + 1. */
    for (uint32_t m = 0, key = 1; m < d.t[0].n; m++, key = d.t[key + 1].next) {
        fz_tensor t = {0};
        if (fz_jtok_streq(&d, key, "__metadata__")) {
            if ((rc = st_check_metadata(&d, key + 1, path)) != 0)
                goto done;
            uint32_t fmt = fz_jtok_get(&d, key + 1, "format");
            format_pt = d.t[key + 1].type == FZ_JT_NULL ||
                        (fmt != UINT32_MAX && fz_jtok_streq(&d, fmt, "pt"));
            continue;
        }
        if (!(t.name = fz_jtok_strdup(&d, key))) {
            rc = fz_error_set(FZ_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        if ((rc = st_parse_entry(&d, t.name, key + 1, path, &t, &spans[nt])) != 0) {
            free(t.name);
            goto done;
        }
        t.storage_id = (uint32_t)nt; /* n <= 1e8 bytes, so fewer than 2^32 tensors */
        t.data_offset = data_start + spans[nt].begin; /* checked below via the tiling */
        spans[nt].idx = nt;
        if ((rc = fz_tensor_list_push(&got, &t)) != 0) {
            free(t.name);
            goto done;
        }
        nt++;
    }

    /* The reference rule: sorted by data_offsets, the entries tile the byte buffer
     * exactly from 0 (no gap, no overlap, no aliasing), and the buffer ends at EOF. */
    bool sorted = true; /* as writers write them: no sort needed */
    for (k = 1; k < nt && sorted; k++)
        sorted = st_span_cmp(&spans[k - 1], &spans[k]) < 0;
    if (!sorted)
        qsort(spans, nt, sizeof *spans, st_span_cmp);
    pos = 0;
    for (k = 0; k < nt; k++) {
        const st_span *s = &spans[k];
        if (s->begin != pos) {
            rc = fz_error_set(FZ_EFORMAT,
                              "%s: tensor '%.200s' data_offsets [%" PRIu64 ", %" PRIu64 "] %s: "
                              "expected it to begin at %" PRIu64,
                              path, got.v[s->idx].name, s->begin, s->end,
                              s->begin > pos ? "leave a gap" : "overlap another tensor", pos);
            goto done;
        }
        pos = s->end;
    }
    if (!fz_add_u64(pos, data_start, &pos) || pos != file_size) {
        rc = fz_error_set(
            FZ_EFORMAT,
            "%s: tensor data ends at byte %" PRIu64 " but the file has %" PRIu64 " bytes%s", path,
            pos, file_size, pos < file_size ? " (trailing bytes)" : " (truncated)");
        goto done;
    }

    rc = fz_tensor_list_append(out, &got);
    if (rc == 0 && info)
        info->format_pt = format_pt;

done:
    fz_tensor_list_free(&got);
    free(spans);
    fz_jtok_free(&d);
    free(hbuf);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Writer layout.
 *
 * The reference writer (safetensors tensor.rs `prepare`) sorts by its Dtype
 * enum in reverse declaration order, then by name in byte order. For the
 * dtypes fzfs knows, that enum order is
 *   BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < F16 < BF16 < I32 < F32 < F64 < I64
 * (checked against safetensors 0.8 save_file), so the file starts with I64
 * and ends with BOOL. With the header padded to a multiple of 8 this puts
 * every tensor at an offset aligned to its element size. */
static const int st_rank[FZ_DT_COUNT] = {
    [FZ_DT_BOOL] = 0,    [FZ_DT_U8] = 1,  [FZ_DT_I8] = 2,   [FZ_DT_F8_E5M2] = 3,
    [FZ_DT_F8_E4M3] = 4, [FZ_DT_I16] = 5, [FZ_DT_F16] = 6,  [FZ_DT_BF16] = 7,
    [FZ_DT_I32] = 8,     [FZ_DT_F32] = 9, [FZ_DT_F64] = 10, [FZ_DT_I64] = 11,
};

typedef struct {
    int rank;
    const char *name;
    size_t idx;
} st_key;

static int st_key_cmp(const void *a, const void *b)
{
    const st_key *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank > y->rank ? -1 : 1;
    return strcmp(x->name, y->name); /* strcmp compares as unsigned char: byte order */
}

/* One header entry, as the Rust writer writes it (compact, keys dtype, shape,
 * data_offsets): ,"NAME":{"dtype":"F32","shape":[2,3],"data_offsets":[B,E]} */
static int st_put_entry(fz_buf *b, const fz_st_entry *e, uint64_t begin, uint64_t end)
{
    int rc = fz_buf_putc(b, ',');
    if (!rc)
        rc = fz_json_emit_string(e->name, strlen(e->name), false, b);
    if (!rc)
        rc = fz_buf_puts(b, ":{\"dtype\":\"");
    if (!rc)
        rc = fz_buf_puts(b, fz_dtype_st_name(e->dtype));
    if (!rc)
        rc = fz_buf_puts(b, "\",\"shape\":[");
    for (int d = 0; d < e->ndim && !rc; d++)
        if (!(rc = d ? fz_buf_putc(b, ',') : 0))
            rc = fz_buf_put_dec(b, e->shape[d]);
    if (!rc)
        rc = fz_buf_puts(b, "],\"data_offsets\":[");
    if (!rc)
        rc = fz_buf_put_dec(b, begin);
    if (!rc)
        rc = fz_buf_putc(b, ',');
    if (!rc)
        rc = fz_buf_put_dec(b, end);
    return rc ? rc : fz_buf_puts(b, "]}");
}

typedef struct {
    const fz_st_entry *e;
    const char *name;
} st_name_ctx;

static bool st_same_name(const void *ctx, uint32_t i)
{
    const st_name_ctx *c = ctx;
    return strcmp(c->e[i].name, c->name) == 0;
}

int fz_st_layout(const fz_st_entry *e, size_t n, fz_buf *hdr, size_t *order, uint64_t *offset)
{
    st_key *keys = NULL;
    uint64_t *rel = NULL;
    fz_hindex names = {0};
    size_t base = hdr->len;
    uint64_t pos = 0, hlen;
    size_t j;
    int rc;

    if (n >= UINT32_MAX) {
        rc = fz_error_set(FZ_ERANGE, "safetensors layout: %zu tensors is too many", n);
        goto done;
    }
    if (!(keys = calloc(n + 1, sizeof *keys)) || !(rel = calloc(n + 1, sizeof *rel)) ||
        fz_hindex_init(&names, n)) {
        rc = fz_error_set(FZ_ENOMEM, "safetensors layout: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned)e[i].dtype >= FZ_DT_COUNT || e[i].ndim < 0 || e[i].ndim > FZ_MAX_DIMS) {
            rc = fz_error_set(FZ_EINVAL,
                              "safetensors layout: tensor '%.200s' has a bad dtype or rank",
                              e[i].name);
            goto done;
        }
        keys[i] = (st_key){st_rank[e[i].dtype], e[i].name, i};
    }
    qsort(keys, n, sizeof *keys, st_key_cmp);

    /* the length is filled in once the JSON is written */
    if ((rc = fz_buf_put_u64le(hdr, 0)) != 0 ||
        (rc = fz_buf_puts(hdr, "{\"__metadata__\":{\"format\":\"pt\"}")) != 0)
        goto done;
    for (j = 0; j < n; j++) {
        const fz_st_entry *t = &e[keys[j].idx];
        uint64_t numel, nbytes, end, h = fz_hindex_hash(t->name, strlen(t->name));
        st_name_ctx nc = {e, t->name};
        if (fz_hindex_find(&names, h, st_same_name, &nc) != UINT32_MAX) {
            rc = fz_error_set(FZ_EINVAL, "safetensors layout: tensor name '%.200s' appears twice",
                              t->name);
            goto done;
        }
        if ((rc = fz_hindex_put(&names, h, (uint32_t)keys[j].idx)) != 0)
            goto done;
        if (strcmp(t->name, "__metadata__") == 0) {
            rc = fz_error_set(FZ_EINVAL, "safetensors layout: '__metadata__' is reserved");
            goto done;
        }
        if (!fz_prod_u64(t->shape, t->ndim, &numel) ||
            !fz_mul_u64(numel, fz_dtype_size(t->dtype), &nbytes) ||
            !fz_add_u64(pos, nbytes, &end)) {
            rc = fz_error_set(FZ_ERANGE, "safetensors layout: tensor '%.200s' size overflows",
                              t->name);
            goto done;
        }
        /* the reader takes JSON integers as int64 */
        bool fits = end <= INT64_MAX;
        for (int d = 0; d < t->ndim; d++)
            fits = fits && t->shape[d] <= INT64_MAX;
        if (!fits) {
            rc = fz_error_set(FZ_ERANGE, "safetensors layout: tensor '%.200s' cannot be encoded",
                              t->name);
            goto done;
        }
        if (!fz_utf8_valid(t->name, strlen(t->name))) {
            rc = fz_error_set(
                FZ_EINVAL, "safetensors layout: tensor name '%.200s' is not valid UTF-8", t->name);
            goto done;
        }
        if ((rc = st_put_entry(hdr, t, pos, end)) != 0)
            goto done;
        order[j] = keys[j].idx;
        rel[keys[j].idx] = pos;
        pos = end;
    }
    if ((rc = fz_buf_putc(hdr, '}')) != 0)
        goto done;

    /* Padded with spaces to a multiple of 8, as the Rust writer pads it. */
    hlen = ((uint64_t)(hdr->len - base - 8) + 7) & ~(uint64_t)7;
    if (hlen > FZ_ST_MAX_HEADER) {
        rc = fz_error_set(FZ_ERANGE, "safetensors layout: header of %" PRIu64 " bytes exceeds %u",
                          hlen, FZ_ST_MAX_HEADER);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        if (!fz_add_u64(8 + hlen, rel[i], &offset[i])) {
            rc = fz_error_set(FZ_ERANGE, "safetensors layout: offsets overflow");
            goto done;
        }
    while (hdr->len - base - 8 < hlen)
        if ((rc = fz_buf_putc(hdr, ' ')) != 0)
            goto done;
    for (int i = 0; i < 8; i++)
        hdr->data[base + (size_t)i] = (uint8_t)(hlen >> (8 * i));
    rc = 0;

done:
    if (rc)
        hdr->len = base;
    fz_hindex_free(&names);
    free(rel);
    free(keys);
    return rc;
}
